//! Fills a PostgreSQL database with users, products and orders for benchmarking.
//!
//! ```sh
//! cargo run --release -p bench --bin seed -- --database-url postgres://… \
//!     --users 100000 --products 1000 --orders 100000 --out-dir target/bench/ids
//! ```
//!
//! The schema comes from the service's own migrations (`migration::Migrator::up`), then every
//! table is loaded with `COPY … FROM STDIN` (text format) and `VACUUM (ANALYZE)`d, so the planner
//! and the visibility map look like those of a database that has been running for a while.
//!
//! What the rows look like:
//! - users: `user<N>@bench.example` (unique, lower case), statuses 80 % active, 15 % inactive,
//!   5 % suspended, `created_at` spread evenly (with jitter) over the past year, UUIDv7 ids built
//!   from `created_at`. Every row carries the same password hash: one real Argon2id PHC string
//!   (the service's parameters, `api::domain::Hasher::params`) computed once at start-up, for
//!   the password [`PASSWORD`].
//! - products: `BENCH-<N>` SKUs, prices 1.00–1,000.00, 100,000,000 in stock each.
//! - orders: each for a user who existed at the time, 1–3 distinct products, quantities 1–3,
//!   prices and totals consistent with the products, statuses mixed.
//!
//! With `--out-dir` it writes `users.txt` and `products.txt` (one id per line, oldest first) and,
//! for each `--cursor-depth D`, `cursors-D.txt`: the keyset cursors (as the service encodes them)
//! of the users at newest-first positions D, D+1, … (`--cursors-per-depth` of them), so a request
//! with one of them reads the page that starts right after that position.

use std::error::Error;
use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::time::Instant;

use api::domain::Hasher;
use api::http::pagination::encode_cursor;
use api::store::CursorKey;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Version};
use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::sqlx::PgPool;
use sea_orm::sqlx::postgres::PgPoolCopyExt;
use sea_orm::{ConnectionTrait, Database, DbBackend};
use uuid::{Builder, Uuid};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The password every seeded user has.
const PASSWORD: &str = "benchmark-password";
/// Stock per product: no benchmark run can exhaust it.
const STOCK: i64 = 100_000_000;
/// Bytes of COPY data buffered before they are sent.
const CHUNK: usize = 4 << 20;
const YEAR_MICROS: i64 = 365 * 24 * 3600 * 1_000_000;

const USAGE: &str = "usage: seed --database-url URL [--users N] [--products N] [--orders N] \
[--out-dir DIR] [--cursor-depth D]... [--cursors-per-depth N] [--seed N]";

struct Args {
    database_url: String,
    users: usize,
    products: usize,
    orders: usize,
    out_dir: Option<PathBuf>,
    cursor_depths: Vec<usize>,
    cursors_per_depth: usize,
    seed: u64,
}

impl Args {
    fn parse() -> Result<Self> {
        let mut args = Self {
            database_url: std::env::var("DATABASE_URL").unwrap_or_default(),
            users: 100_000,
            products: 1_000,
            orders: 100_000,
            out_dir: None,
            cursor_depths: Vec::new(),
            cursors_per_depth: 1_000,
            seed: 42,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = || -> Result<usize> {
                Ok(value
                    .replace('_', "")
                    .parse()
                    .map_err(|_| format!("{flag}: not a number: {value:?}"))?)
            };
            match flag.as_str() {
                "--database-url" => args.database_url = value.clone(),
                "--users" => args.users = number()?,
                "--products" => args.products = number()?,
                "--orders" => args.orders = number()?,
                "--out-dir" => args.out_dir = Some(PathBuf::from(&value)),
                "--cursor-depth" => args.cursor_depths.push(number()?),
                "--cursors-per-depth" => args.cursors_per_depth = number()?,
                "--seed" => args.seed = number()? as u64,
                _ => return Err(format!("unknown argument {flag:?}\n{USAGE}").into()),
            }
        }
        if !args.database_url.starts_with("postgres") {
            return Err(format!("--database-url must be a postgres:// URL\n{USAGE}").into());
        }
        if args.orders > 0 && (args.users == 0 || args.products == 0) {
            return Err("orders need at least one user and one product".into());
        }
        Ok(args)
    }
}

/// Microseconds since the Unix epoch, as stored (`timestamptz` keeps microseconds).
fn pg_timestamp(out: &mut Vec<u8>, micros: i64) {
    let at = DateTime::<Utc>::from_timestamp_micros(micros).expect("timestamp in range");
    write!(out, "{}", at.format("%Y-%m-%d %H:%M:%S%.6f+00")).expect("write to Vec");
}

/// Ends a row with its `created_at` and `updated_at`, both `micros`.
fn end_with_timestamps(out: &mut Vec<u8>, micros: i64) {
    pg_timestamp(out, micros);
    out.push(b'\t');
    pg_timestamp(out, micros);
    out.push(b'\n');
}

/// A UUIDv7 whose timestamp is `micros` (to the millisecond), as the service would have made it.
fn uuid_v7_at(rng: &mut StdRng, micros: i64) -> Uuid {
    let random: [u8; 10] = rng.random();
    Builder::from_unix_timestamp_millis((micros / 1000) as u64, &random).into_uuid()
}

/// `count` strictly increasing timestamps spread over the year before `now`, with jitter.
fn spread_over_year(rng: &mut StdRng, count: usize, now: i64) -> Vec<i64> {
    let start = now - YEAR_MICROS;
    let step = (YEAR_MICROS / count.max(1) as i64).max(1);
    (0..count as i64)
        .map(|i| start + i * step + rng.random_range(0..step))
        .collect()
}

/// Streams rows into `COPY <table> FROM STDIN` in chunks of about `CHUNK` bytes.
async fn copy_rows(
    pool: &PgPool,
    statement: &str,
    rows: usize,
    mut write_row: impl FnMut(usize, &mut Vec<u8>),
) -> Result<u64> {
    let mut copy = pool.copy_in_raw(statement).await?;
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    for i in 0..rows {
        write_row(i, &mut buf);
        if buf.len() >= CHUNK {
            if let Err(err) = copy.send(buf.as_slice()).await {
                let _ = copy.abort(err.to_string()).await;
                return Err(err.into());
            }
            buf.clear();
        }
    }
    if !buf.is_empty()
        && let Err(err) = copy.send(buf.as_slice()).await
    {
        let _ = copy.abort(err.to_string()).await;
        return Err(err.into());
    }
    Ok(copy.finish().await?)
}

fn argon2id_hash() -> Result<String> {
    let params = Hasher::params()?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::encode_b64(b"bench-fixed-salt").map_err(|e| e.to_string())?;
    Ok(argon2
        .hash_password(PASSWORD.as_bytes(), &salt)
        .map_err(|e| e.to_string())?
        .to_string())
}

struct Users {
    ids: Vec<Uuid>,
    created: Vec<i64>,
}

struct Products {
    ids: Vec<Uuid>,
    prices: Vec<i64>,
}

async fn seed_users(pool: &PgPool, rng: &mut StdRng, n: usize, now: i64) -> Result<Users> {
    let hash = argon2id_hash()?;
    let created = spread_over_year(rng, n, now);
    let ids: Vec<Uuid> = created.iter().map(|&at| uuid_v7_at(rng, at)).collect();
    let statement = "COPY users (id, name, email, password_hash, status, created_at, updated_at) \
                     FROM STDIN";
    copy_rows(pool, statement, n, |i, out| {
        // 16 of 20 active, 3 inactive, 1 suspended, interleaved over time.
        let status = match i % 20 {
            0..16 => "active",
            16..19 => "inactive",
            _ => "suspended",
        };
        write!(
            out,
            "{}\tBench User {i}\tuser{i}@bench.example\t{hash}\t{status}\t",
            ids[i]
        )
        .expect("write to Vec");
        end_with_timestamps(out, created[i]);
    })
    .await?;
    Ok(Users { ids, created })
}

async fn seed_products(pool: &PgPool, rng: &mut StdRng, n: usize, now: i64) -> Result<Products> {
    let created = spread_over_year(rng, n, now);
    let ids: Vec<Uuid> = created.iter().map(|&at| uuid_v7_at(rng, at)).collect();
    let prices: Vec<i64> = (0..n).map(|_| rng.random_range(100..=100_000)).collect();
    let statement = "COPY products (id, sku, name, price_cents, stock, created_at, updated_at) \
                     FROM STDIN";
    copy_rows(pool, statement, n, |i, out| {
        write!(
            out,
            "{}\tBENCH-{i:07}\tBench product {i}\t{}\t{STOCK}\t",
            ids[i], prices[i]
        )
        .expect("write to Vec");
        end_with_timestamps(out, created[i]);
    })
    .await?;
    Ok(Products { ids, prices })
}

/// Returns the number of order items written.
async fn seed_orders(
    pool: &PgPool,
    rng: &mut StdRng,
    n: usize,
    now: i64,
    users: &Users,
    products: &Products,
) -> Result<u64> {
    struct Order {
        id: Uuid,
        user: usize,
        status: &'static str,
        total: i64,
        created: i64,
        /// (product index, quantity); up to three distinct products.
        items: Vec<(usize, i64)>,
    }
    let created = spread_over_year(rng, n, now);
    let mut orders = Vec::with_capacity(n);
    for &at in &created {
        // Someone who had signed up by then (or the first user, for the very earliest orders).
        let existing = users.created.partition_point(|&c| c <= at).max(1);
        let user = rng.random_range(0..existing);
        let created_at = at.max(users.created[user]);
        let lines = rng.random_range(1..=3usize).min(products.ids.len());
        let mut items: Vec<(usize, i64)> = Vec::with_capacity(lines);
        while items.len() < lines {
            let product = rng.random_range(0..products.ids.len());
            if items.iter().all(|&(p, _)| p != product) {
                items.push((product, rng.random_range(1..=3)));
            }
        }
        let total = items.iter().map(|&(p, q)| products.prices[p] * q).sum();
        let status = match rng.random_range(0..10) {
            0..4 => "pending",
            4..7 => "paid",
            7..9 => "shipped",
            _ => "cancelled",
        };
        orders.push(Order {
            id: uuid_v7_at(rng, created_at),
            user,
            status,
            total,
            created: created_at,
            items,
        });
    }
    let statement =
        "COPY orders (id, user_id, status, total_cents, created_at, updated_at) FROM STDIN";
    copy_rows(pool, statement, n, |i, out| {
        let order = &orders[i];
        write!(
            out,
            "{}\t{}\t{}\t{}\t",
            order.id, users.ids[order.user], order.status, order.total
        )
        .expect("write to Vec");
        end_with_timestamps(out, order.created);
    })
    .await?;
    let lines: Vec<(usize, usize)> = orders
        .iter()
        .enumerate()
        .flat_map(|(o, order)| (0..order.items.len()).map(move |l| (o, l)))
        .collect();
    let statement =
        "COPY order_items (order_id, product_id, quantity, unit_price_cents) FROM STDIN";
    copy_rows(pool, statement, lines.len(), |i, out| {
        let (o, l) = lines[i];
        let (product, quantity) = orders[o].items[l];
        writeln!(
            out,
            "{}\t{}\t{quantity}\t{}",
            orders[o].id, products.ids[product], products.prices[product]
        )
        .expect("write to Vec");
    })
    .await?;
    Ok(lines.len() as u64)
}

fn write_ids(path: PathBuf, ids: &[Uuid]) -> Result<()> {
    let mut out = BufWriter::new(fs::File::create(&path)?);
    for id in ids {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    Ok(())
}

/// The service's cursor for "after this user".
fn user_cursor(created: i64, id: Uuid) -> String {
    let at = DateTime::<Utc>::from_timestamp_micros(created).expect("timestamp in range");
    encode_cursor(
        "users",
        CursorKey {
            created_at: at.fixed_offset(),
            id,
        },
    )
}

fn write_cursors(args: &Args, dir: &std::path::Path, users: &Users) -> Result<()> {
    let n = users.ids.len();
    for &depth in &args.cursor_depths {
        let mut out = BufWriter::new(fs::File::create(dir.join(format!("cursors-{depth}.txt")))?);
        let mut written = 0;
        // Newest-first position p is the user at index n - 1 - p (users are oldest first).
        for position in depth..(depth + args.cursors_per_depth).min(n) {
            let i = n - 1 - position;
            let mut line = user_cursor(users.created[i], users.ids[i]);
            line.push('\n');
            out.write_all(line.as_bytes())?;
            written += 1;
        }
        out.flush()?;
        if written == 0 {
            return Err(format!("--cursor-depth {depth} is past the {n} users").into());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("seed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let args = Args::parse()?;
    let started = Instant::now();
    let db = Database::connect(&args.database_url).await?;
    if db.get_database_backend() != DbBackend::Postgres {
        return Err("seed supports PostgreSQL only".into());
    }
    Migrator::up(&db, None).await?;
    let pool = db.get_postgres_connection_pool().clone();
    let existing: i64 = sea_orm::sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await?;
    if existing > 0 {
        return Err(format!("the database already has {existing} users; seed a fresh one").into());
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let now = Utc::now().timestamp_micros();
    let mut phase = started;
    let mut lap = |what: &str| {
        eprintln!("seed: {what} in {:.2} s", phase.elapsed().as_secs_f64());
        phase = Instant::now();
    };
    lap("migrations applied");

    // Users and products do not depend on each other: load them side by side.
    let mut product_rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let (users, products) = tokio::try_join!(
        seed_users(&pool, &mut rng, args.users, now),
        seed_products(&pool, &mut product_rng, args.products, now),
    )?;
    lap(&format!(
        "{} users and {} products copied",
        args.users, args.products
    ));
    let items = if args.orders > 0 {
        seed_orders(&pool, &mut rng, args.orders, now, &users, &products).await?
    } else {
        0
    };
    lap(&format!("{} orders with {items} items copied", args.orders));
    db.execute_unprepared("VACUUM (ANALYZE) users, products, orders, order_items")
        .await?;
    lap("vacuumed and analyzed");

    if let Some(dir) = &args.out_dir {
        fs::create_dir_all(dir)?;
        write_ids(dir.join("users.txt"), &users.ids)?;
        write_ids(dir.join("products.txt"), &products.ids)?;
        write_cursors(&args, dir, &users)?;
        lap(&format!("ids and cursors written to {}", dir.display()));
    }
    db.close().await?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "seeded users={} products={} orders={} order_items={items} elapsed_s={elapsed:.2}",
        args.users, args.products, args.orders
    );
    Ok(())
}
