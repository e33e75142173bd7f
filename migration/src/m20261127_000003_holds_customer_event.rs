//! An index on `(customer_id, event_id)` of holds, for the per-customer limit: what a customer
//! already has of a ticket type is read from their holds of its event alone, not from every
//! hold they ever made (a customer's history grows with every sale they join).
//!
//! On PostgreSQL it is built `CONCURRENTLY`, so that upgrading a database with a large `holds`
//! table does not block holds while it builds; that is refused inside a transaction block, so
//! this migration runs outside one. A concurrent build that fails leaves an invalid index of
//! that name behind: the next start drops it and builds it again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_holds_customer_id_event_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            let drop_invalid = format!(
                "DO $$ BEGIN
                     IF EXISTS (SELECT 1 FROM pg_index
                                WHERE indexrelid = to_regclass('{INDEX}') AND NOT indisvalid)
                     THEN DROP INDEX {INDEX};
                     END IF;
                 END $$"
            );
            manager
                .get_connection()
                .execute_unprepared(&drop_invalid)
                .await?;
            let build = format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON holds (customer_id, event_id)"
            );
            manager.get_connection().execute_unprepared(&build).await?;
            return Ok(());
        }
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
