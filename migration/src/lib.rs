//! The schema of tickethold, as sea-orm-migration migrations. `tickethold serve` runs them at
//! start-up; `Migrator` is also what the tests use to set up a fresh database.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_tables;
mod m20261126_000002_hold_revision;
mod m20261127_000003_holds_customer_event;
mod m20261128_000004_changed_since_read;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_tables::Migration),
            Box::new(m20261126_000002_hold_revision::Migration),
            Box::new(m20261127_000003_holds_customer_event::Migration),
            Box::new(m20261128_000004_changed_since_read::Migration),
        ]
    }
}
