//! Column and table shapes shared by the migrations, so every backend gets the same guarantees.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// A non-null timestamp with microsecond precision on every backend.
///
/// PostgreSQL's `timestamptz` already keeps microseconds; MySQL's `TIMESTAMP` keeps whole seconds
/// and ends in 2038, so MySQL gets `DATETIME(6)` holding UTC (the service writes UTC only).
pub fn timestamp(backend: DbBackend, name: impl IntoIden) -> ColumnDef {
    let mut column = ColumnDef::new(name);
    match backend {
        DbBackend::MySql => column.custom(Alias::new("DATETIME(6)")),
        _ => column.timestamp_with_time_zone(),
    };
    column.not_null().take()
}

/// Text is compared byte for byte on MySQL (`utf8mb4_bin`), as on the other backends: SKUs that
/// differ only in case or accents are different SKUs.
pub fn table(backend: DbBackend, name: impl IntoIden + 'static) -> TableCreateStatement {
    let mut table = Table::create();
    table.table(name);
    if backend == DbBackend::MySql {
        table.character_set("utf8mb4").collate("utf8mb4_bin");
    }
    table
}

/// `column IN ('a', 'b', ...)`, for CHECK constraints on status columns.
pub fn one_of(column: impl IntoIden, values: &[&str]) -> SimpleExpr {
    Expr::col(column.into_iden()).is_in(values.iter().copied())
}
