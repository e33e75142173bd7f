//! A ticket type with its stock counters: `sold` and `held` move only inside the transactions
//! that change orders and holds, and `sold + held <= capacity` is a CHECK constraint.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ticket_types")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub event_id: Uuid,
    pub name: String,
    pub price_cents: i64,
    pub capacity: i32,
    pub max_per_customer: Option<i32>,
    pub sold: i32,
    pub held: i32,
    /// Raised by every change of `sold` or `held`, so that readers can order snapshots.
    pub version: i64,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
