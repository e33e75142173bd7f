//! A revision number per hold, raised by the Redis flow at every change of the hold, so that
//! journal entries written by several instances, in any order, never put an older state over a
//! newer one. The database flow writes hold rows in its own transactions and leaves it at 0.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Hold::Table)
                    .add_column(big_integer(Hold::Revision).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Hold::Table)
                    .drop_column(Hold::Revision)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Hold {
    #[sea_orm(iden = "holds")]
    Table,
    Revision,
}
