//! The service's user-by-id query through SeaORM's pool, without HTTP: how fast the database
//! path alone goes, and what the pool's per-checkout health check costs.
//!
//! ```sh
//! cargo run --release -p bench --bin poolprobe -- --database-url postgres://… \
//!     --ids target/bench/…/main/users.txt [--concurrency 32] [--seconds 10] \
//!     [--max-connections 20] [--test-before-acquire true|false]
//! ```
//!
//! The pool is built as `api/src/store/sql/pool.rs` builds it (same pool size, SeaORM's defaults
//! otherwise): with `--test-before-acquire false`, a checkout pings only a connection idle for
//! `PING_IF_IDLE_FOR`, as the service's does; `true` pings on every checkout, SeaORM's default
//! (sqlx also pings on every release, which no option turns off). Each task runs
//! `SELECT … FROM users WHERE id = $1 LIMIT $2` for random ids, as `find_by_id(..).one(..)` does.
//! Prints `poolprobe test_before_acquire=… queries=… qps=… p50_ms=… p99_ms=…`.

use std::error::Error;
use std::time::{Duration, Instant};

use rand::Rng;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};
use uuid::Uuid;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const QUERY: &str = r#"SELECT "users"."id", "users"."name", "users"."email", "users"."password_hash", "users"."status", "users"."created_at", "users"."updated_at" FROM "users" WHERE "users"."id" = $1 LIMIT $2"#;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("poolprobe: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let mut url = std::env::var("DATABASE_URL").unwrap_or_default();
    let mut ids_path = String::new();
    let mut concurrency = 32_usize;
    let mut seconds = 10.0_f64;
    let mut max_connections = 20_u32;
    let mut test_before_acquire = true;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--database-url" => url = value,
            "--ids" => ids_path = value,
            "--concurrency" => concurrency = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--max-connections" => max_connections = value.parse()?,
            "--test-before-acquire" => test_before_acquire = value.parse()?,
            _ => return Err(format!("unknown argument {flag:?}").into()),
        }
    }
    let ids: Vec<Uuid> = std::fs::read_to_string(&ids_path)
        .map_err(|err| format!("--ids {ids_path:?}: {err}"))?
        .lines()
        .filter(|line| !line.is_empty())
        .map(Uuid::parse_str)
        .collect::<std::result::Result<_, _>>()?;
    if ids.is_empty() {
        return Err("no ids".into());
    }

    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .idle_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if test_before_acquire {
        options.test_before_acquire(true);
    } else {
        options.test_before_acquire_if_idle_for(api::store::sql::pool::PING_IF_IDLE_FOR);
    }
    let db = Database::connect(options).await?;

    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (db, ids) = (db.clone(), ids.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let id = ids[rand::rng().random_range(0..ids.len())];
                    let statement = Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        QUERY,
                        [id.into(), 1_u64.into()],
                    );
                    let began = Instant::now();
                    db.query_one_raw(statement)
                        .await?
                        .ok_or("a seeded user is missing")?;
                    latencies.push(began.elapsed());
                }
                Ok::<_, Box<dyn Error + Send + Sync>>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?.map_err(|err| err.to_string())?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    println!(
        "poolprobe test_before_acquire={test_before_acquire} queries={} qps={:.1} p50_ms={:.3} p99_ms={:.3}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(0.50),
        percentile(0.99),
    );
    db.close().await?;
    Ok(())
}
