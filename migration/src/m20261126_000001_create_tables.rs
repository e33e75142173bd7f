//! The first schema: events, ticket types with their stock counters, holds with their items,
//! and orders with theirs. Instants are `BIGINT` milliseconds since the Unix epoch, the same
//! on SQLite and PostgreSQL, so that comparisons with `now` are plain integer comparisons.
//!
//! Nothing is ever deleted: a hold keeps its row and its status after it ends (the audit
//! trail), and the counters of a ticket type are checked by the database itself.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Event::Table)
                    .col(uuid(Event::Id).primary_key())
                    .col(string(Event::Name))
                    .col(big_integer(Event::CreatedAt))
                    .to_owned(),
            )
            .await?;

        // `sold` and `held` are counters kept in step with the holds and orders in the same
        // transactions; the CHECK makes overselling impossible even for a buggy writer.
        manager
            .create_table(
                Table::create()
                    .table(TicketType::Table)
                    .col(uuid(TicketType::Id).primary_key())
                    .col(uuid(TicketType::EventId))
                    .col(string(TicketType::Name))
                    .col(big_integer(TicketType::PriceCents))
                    .col(integer(TicketType::Capacity))
                    .col(integer_null(TicketType::MaxPerCustomer))
                    .col(integer(TicketType::Sold).default(0))
                    .col(integer(TicketType::Held).default(0))
                    .col(big_integer(TicketType::Version).default(0))
                    .col(big_integer(TicketType::CreatedAt))
                    .check(Expr::col(TicketType::Sold).gte(0))
                    .check(Expr::col(TicketType::Held).gte(0))
                    .check(
                        Expr::col(TicketType::Sold)
                            .add(Expr::col(TicketType::Held))
                            .lte(Expr::col(TicketType::Capacity)),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TicketType::Table, TicketType::EventId)
                            .to(Event::Table, Event::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_ticket_types_event_id")
                    .table(TicketType::Table)
                    .col(TicketType::EventId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Hold::Table)
                    .col(uuid(Hold::Id).primary_key())
                    .col(uuid(Hold::EventId))
                    .col(string(Hold::CustomerId))
                    .col(string(Hold::Status))
                    .col(big_integer(Hold::CreatedAt))
                    .col(big_integer(Hold::ExpiresAt))
                    .col(big_integer_null(Hold::EndedAt))
                    .col(string_null(Hold::IdempotencyKey))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Hold::Table, Hold::EventId)
                            .to(Event::Table, Event::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // The expiry timer's index on `expires_at`, led by `status` so that finding the active holds
        // that are due reads only those, not the ever-growing history of ended ones.
        manager
            .create_index(
                Index::create()
                    .name("idx_holds_status_expires_at")
                    .table(Hold::Table)
                    .col(Hold::Status)
                    .col(Hold::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        // One hold per (customer, idempotency key); also serves the per-customer limit query.
        manager
            .create_index(
                Index::create()
                    .name("uq_holds_customer_idempotency_key")
                    .table(Hold::Table)
                    .col(Hold::CustomerId)
                    .col(Hold::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(HoldItem::Table)
                    .col(uuid(HoldItem::HoldId))
                    .col(uuid(HoldItem::TicketTypeId))
                    .col(integer(HoldItem::Quantity))
                    .check(Expr::col(HoldItem::Quantity).gt(0))
                    .primary_key(
                        Index::create()
                            .col(HoldItem::HoldId)
                            .col(HoldItem::TicketTypeId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(HoldItem::Table, HoldItem::HoldId)
                            .to(Hold::Table, Hold::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(HoldItem::Table, HoldItem::TicketTypeId)
                            .to(TicketType::Table, TicketType::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_hold_items_ticket_type_id")
                    .table(HoldItem::Table)
                    .col(HoldItem::TicketTypeId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Order::Table)
                    .col(uuid(Order::Id).primary_key())
                    .col(uuid_uniq(Order::HoldId))
                    .col(string(Order::CustomerId))
                    .col(string(Order::PaymentReference))
                    .col(string_null(Order::IdempotencyKey))
                    .col(big_integer(Order::TotalCents))
                    .col(big_integer(Order::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Order::Table, Order::HoldId)
                            .to(Hold::Table, Hold::Id),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OrderItem::Table)
                    .col(uuid(OrderItem::OrderId))
                    .col(uuid(OrderItem::TicketTypeId))
                    .col(integer(OrderItem::Quantity))
                    .col(big_integer(OrderItem::UnitPriceCents))
                    .check(Expr::col(OrderItem::Quantity).gt(0))
                    .primary_key(
                        Index::create()
                            .col(OrderItem::OrderId)
                            .col(OrderItem::TicketTypeId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(OrderItem::Table, OrderItem::OrderId)
                            .to(Order::Table, Order::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(OrderItem::Table, OrderItem::TicketTypeId)
                            .to(TicketType::Table, TicketType::Id),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            OrderItem::Table.into_iden(),
            Order::Table.into_iden(),
            HoldItem::Table.into_iden(),
            Hold::Table.into_iden(),
            TicketType::Table.into_iden(),
            Event::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Event {
    #[sea_orm(iden = "events")]
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum TicketType {
    #[sea_orm(iden = "ticket_types")]
    Table,
    Id,
    EventId,
    Name,
    PriceCents,
    Capacity,
    MaxPerCustomer,
    Sold,
    Held,
    Version,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Hold {
    #[sea_orm(iden = "holds")]
    Table,
    Id,
    EventId,
    CustomerId,
    Status,
    CreatedAt,
    ExpiresAt,
    EndedAt,
    IdempotencyKey,
}

#[derive(DeriveIden)]
enum HoldItem {
    #[sea_orm(iden = "hold_items")]
    Table,
    HoldId,
    TicketTypeId,
    Quantity,
}

#[derive(DeriveIden)]
enum Order {
    #[sea_orm(iden = "orders")]
    Table,
    Id,
    HoldId,
    CustomerId,
    PaymentReference,
    IdempotencyKey,
    TotalCents,
    CreatedAt,
}

#[derive(DeriveIden)]
enum OrderItem {
    #[sea_orm(iden = "order_items")]
    Table,
    OrderId,
    TicketTypeId,
    Quantity,
    UnitPriceCents,
}
