//! One line of a hold: a quantity of one ticket type.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "hold_items")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub hold_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub ticket_type_id: Uuid,
    pub quantity: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::hold::Entity",
        from = "Column::HoldId",
        to = "super::hold::Column::Id"
    )]
    Hold,
}

impl Related<super::hold::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Hold.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
