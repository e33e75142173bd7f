//! An index on `(customer_id, event_id)` of holds, for the per-customer limit: what a customer
//! already has of a ticket type is read from their holds of its event alone, not from every
//! hold they ever made (a customer's history grows with every sale they join). Skipped where the
//! index exists: on a large PostgreSQL, create it first without blocking writes,
//! `CREATE INDEX CONCURRENTLY idx_holds_customer_id_event_id ON holds (customer_id, event_id)`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_holds_customer_id_event_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(INDEX)
                    .table(Hold::Table)
                    .col(Hold::CustomerId)
                    .col(Hold::EventId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Hold::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Hold {
    #[sea_orm(iden = "holds")]
    Table,
    CustomerId,
    EventId,
}
