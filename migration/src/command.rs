//! The migration command (`cargo run -p migration -- up|down|status|fresh|…`, and `sea-orm-cli
//! migrate`, which runs this same binary): SeaORM's own command line, run under the migration lock
//! so that it never races the service's start-up or another migration command.
//!
//! SeaORM's `cli::run_cli` panics when `DATABASE_URL` is missing or the database cannot be reached;
//! here the command reads its arguments, checks the URL and connects itself, and hands SeaORM only
//! the connection, so that every failure is one line on stderr and exit status 1, as at the
//! service's start-up.

use std::process::ExitCode;

use clap::Parser;
use sea_orm_cli::MigrateSubcommands;
use sea_orm_migration::sea_orm::sqlx::{self, Connection as _};
use sea_orm_migration::sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::Migrator;
use crate::lock::{self, LockError, MigrationLock};

/// When `DATABASE_URL` names a transaction pooler, this names the database itself; the migration
/// command then connects there (a pooler would lose the lock, see `lock`).
pub const DIRECT_URL_VARIABLE: &str = "DATABASE_DIRECT_URL";

/// Where `init` and `generate` write: the migration crate, as `sea-orm-cli migrate` runs it.
const MIGRATION_DIR: &str = "./";

/// The arguments of SeaORM's own migration command, which `sea-orm-cli migrate` passes on.
#[derive(Parser, Debug)]
#[command(version, about = "Applies, reverts or lists the schema's migrations")]
struct Cli {
    #[arg(short = 'v', long, global = true, help = "Show debug messages")]
    verbose: bool,

    #[arg(
        global = true,
        short = 's',
        long,
        env = "DATABASE_SCHEMA",
        help = "PostgreSQL schema (default: public)"
    )]
    database_schema: Option<String>,

    #[arg(
        global = true,
        short = 'u',
        long,
        env = "DATABASE_URL",
        // --help would otherwise print the URL, password and all.
        hide_env_values = true,
        help = "Database URL"
    )]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Option<MigrateSubcommands>,
}

/// Why the command failed: each is one line.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(
        "DATABASE_URL is not set: name the database to migrate \
         (e.g. DATABASE_URL='sqlite://data.db?mode=rwc'), or pass --database-url"
    )]
    NoDatabaseUrl,
    #[error(
        "{url} is not a PostgreSQL, MariaDB/MySQL or SQLite URL; a MongoDB database is migrated \
         with `cargo run -p api -- migrate up`"
    )]
    NotSql { url: String },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0}")]
    Migration(String),
}

pub async fn main() -> ExitCode {
    // As SeaORM's command does: a `.env` file may name the database.
    dotenvy::dotenv().ok();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with success; a usage error is one line, status 2.
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            eprintln!(
                "migration: {}; see --help",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("migration: {}", one_line(&err.to_string()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CommandError> {
    let scaffolded = match &cli.command {
        Some(MigrateSubcommands::Init) => Some(sea_orm_cli::run_migrate_init(MIGRATION_DIR)),
        Some(MigrateSubcommands::Generate {
            migration_name,
            local_time,
            ..
        }) => Some(sea_orm_cli::run_migrate_generate(
            MIGRATION_DIR,
            migration_name,
            !*local_time,
        )),
        _ => None,
    };
    if let Some(outcome) = scaffolded {
        return outcome.map_err(|err| CommandError::Migration(err.to_string()));
    }
    let timeout = lock::timeout_from_env().map_err(CommandError::Settings)?;
    let direct_url = std::env::var(DIRECT_URL_VARIABLE).ok();
    let url = database_url(cli.database_url, direct_url)?;
    let schema = cli.database_schema.unwrap_or_else(|| "public".to_owned());
    let db = connect(&url, schema).await?;
    let notice = move || {
        eprintln!(
            "another process holds the migration lock; waiting for it (at most {} s)",
            timeout.as_secs()
        )
    };
    let held = match MigrationLock::acquire(&url, timeout, notice).await {
        Ok(held) => held,
        Err(err) => {
            let _ = db.close().await;
            return Err(err.into());
        }
    };
    let outcome =
        sea_orm_migration::cli::run_migrate(Migrator, &db, cli.command, cli.verbose).await;
    held.release().await;
    let _ = db.close().await;
    outcome.map_err(|err| CommandError::Migration(err.to_string()))
}

/// The database the command works on: `direct_url` (`DATABASE_DIRECT_URL`) when set, else `url`
/// (`--database-url` or `DATABASE_URL`), refused unless it is one SeaORM migrates.
pub fn database_url(
    url: Option<String>,
    direct_url: Option<String>,
) -> Result<String, CommandError> {
    let url = direct_url
        .filter(|url| !url.trim().is_empty())
        .or(url.filter(|url| !url.trim().is_empty()))
        .ok_or(CommandError::NoDatabaseUrl)?;
    let sql = [
        "postgres://",
        "postgresql://",
        "mysql://",
        "mariadb://",
        "sqlite:",
    ];
    if !sql.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(CommandError::NotSql {
            url: mask_password(&url),
        });
    }
    Ok(url)
}

async fn connect(url: &str, schema: String) -> Result<DatabaseConnection, CommandError> {
    let failed = |reason: String| CommandError::Connect {
        url: mask_password(url),
        reason,
    };
    probe(url).await.map_err(|err| failed(reason(&err)))?;
    let options = ConnectOptions::new(url)
        .set_schema_search_path(schema)
        .to_owned();
    Database::connect(options)
        .await
        .map_err(|err| failed(err.to_string()))
}

/// Opens and closes one connection of the command's own before the pool's: the driver's error
/// then says what is wrong (refused, no such database, wrong password), where a pool that cannot
/// connect only reports that it timed out.
async fn probe(url: &str) -> Result<(), sqlx::Error> {
    if url.starts_with("postgres") {
        sqlx::PgConnection::connect(url).await?.close().await
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        let url = url.replacen("mariadb://", "mysql://", 1);
        sqlx::MySqlConnection::connect(&url).await?.close().await
    } else {
        sqlx::SqliteConnection::connect(url).await?.close().await
    }
}

/// The server's own message, without what PostgreSQL adds for its developers (the line of its
/// source that raised it) or MySQL's error numbers.
fn reason(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(err) => err.message().to_owned(),
        err => err.to_string(),
    }
}

/// `url` with its password replaced by `***`; the service masks its single-host URLs with it too
/// (`api::config::mask_password`).
pub fn mask_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.into()
        }
        Ok(_) => url.to_owned(),
        // A password could be anywhere in what does not parse: show the scheme alone.
        Err(_) => match url.split_once(':') {
            Some((scheme, _)) => format!("{scheme}:…"),
            None => "<unparsable database URL>".to_owned(),
        },
    }
}

/// A message on one line: drivers' messages may span several.
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(url: &str) -> Option<String> {
        Some(url.to_owned())
    }

    #[test]
    fn a_missing_or_empty_url_says_which_variable_to_set() {
        for (url, direct) in [(None, None), (some(""), None), (some("  "), some(""))] {
            let err = database_url(url, direct).unwrap_err();
            assert!(matches!(err, CommandError::NoDatabaseUrl), "{err:?}");
            assert!(err.to_string().starts_with("DATABASE_URL is not set"));
        }
    }

    #[test]
    fn the_direct_url_wins_over_the_pooled_one() {
        let url = database_url(
            some("postgres://app:pw@pgbouncer:6432/shop"),
            some("postgres://app:pw@db:5432/shop"),
        );
        assert_eq!(url.unwrap(), "postgres://app:pw@db:5432/shop");
        let url = database_url(some("sqlite://data.db?mode=rwc"), None);
        assert_eq!(url.unwrap(), "sqlite://data.db?mode=rwc");
    }

    #[test]
    fn a_url_of_another_engine_is_refused_with_its_password_masked() {
        let err = database_url(some("mongodb://app:s3cret@db:27017/shop"), None).unwrap_err();
        let line = err.to_string();
        assert!(line.contains("mongodb://app:***@db:27017/shop"), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
        assert!(line.contains("cargo run -p api -- migrate up"), "{line}");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://app:secret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(
            mask_password("sqlite://data.db?mode=rwc"),
            "sqlite://data.db?mode=rwc"
        );
        assert_eq!(
            mask_password("postgres://app:se cret@db:bad/shop"),
            "postgres:…"
        );
    }

    #[test]
    fn a_message_of_several_lines_becomes_one() {
        assert_eq!(
            one_line("error returned from database:\n  database \"x\" does not exist\n"),
            "error returned from database: database \"x\" does not exist"
        );
    }

    #[test]
    fn the_arguments_sea_orm_cli_passes_are_understood() {
        let cli = Cli::try_parse_from(["migration", "up", "-n", "2", "-v"]).unwrap();
        assert!(cli.verbose);
        assert!(matches!(
            cli.command,
            Some(MigrateSubcommands::Up { num: Some(2) })
        ));
        let cli = Cli::try_parse_from(["migration", "down"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(MigrateSubcommands::Down { num: 1 })
        ));
        let cli = Cli::try_parse_from(["migration", "status", "-u", "sqlite::memory:"]).unwrap();
        assert!(matches!(cli.command, Some(MigrateSubcommands::Status)));
        assert_eq!(cli.database_url.as_deref(), Some("sqlite::memory:"));
    }
}
