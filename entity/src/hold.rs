//! A hold, kept forever: its status (`ACTIVE`, `RELEASED`, `EXPIRED`, `CONFIRMED`) changes once,
//! from `ACTIVE`, and `ended_at` records when.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "holds")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub event_id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Raised by the Redis flow at every change; a journal entry never lowers it.
    pub revision: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
