//! A PostgreSQL function that fails the statement calling it with `serialization_failure`
//! (SQLSTATE 40001): how a statement that runs as its own transaction refuses to write over
//! rows that changed since the caller read them. The hold writer takes a batch's stock so, in
//! one statement, on the condition that no ticket type of the batch changed since its read (see
//! `hold_and_take_unchanged` in the service); a failed condition must undo the whole statement,
//! its holds too, which only an error does. SQLite, with one writer at a time, needs none.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATE: &str = "
    CREATE OR REPLACE FUNCTION tickethold_changed_since_read(ticket_type_id uuid)
    RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        RAISE EXCEPTION 'ticket type % changed since it was read', ticket_type_id
            USING ERRCODE = 'serialization_failure';
    END $$";

const DROP: &str = "DROP FUNCTION IF EXISTS tickethold_changed_since_read(uuid)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager.get_connection().execute_unprepared(CREATE).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager.get_connection().execute_unprepared(DROP).await?;
        }
        Ok(())
    }
}
