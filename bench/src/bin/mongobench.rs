//! MongoDB's own limit for the service's MongoDB store: the driver alone (the official `mongodb`
//! crate, as the service uses it), no HTTP, at a given concurrency for a given time.
//!
//! ```sh
//! mongobench seed  --url mongodb://…/db --users 20000 --products 1000 --out-dir DIR
//! mongobench get   --url mongodb://…/db --users DIR/users.txt [--concurrency 32] [--seconds 10]
//! mongobench order --url mongodb://…/db --users DIR/users.txt --products DIR/products.txt
//! mongobench drop  --url mongodb://…/db
//! mongobench version --url mongodb://…/db    # the server's version, for the report
//! ```
//!
//! `seed` writes users and products shaped as the service writes them
//! (`api/src/store/mongo/{users,products}.rs`: ids as BSON UUIDs, times as BSON dates, integers
//! as 64-bit) and their ids to `DIR/users.txt` and `DIR/products.txt`. `get` is the service's
//! read by id (`find_one` on `_id`); `order` is the placement transaction without its
//! idempotency key and without the service's user and product reads: in a snapshot transaction
//! with majority writes, a conditional `$inc` per line (1–3 distinct random products, ascending
//! id, quantity 1) and the order's insert, retried on transient errors as the service retries.
//! Both print `BENCH requests=… duration_s=… rps=… p50_ms=… p99_ms=… errors=… retries=…`.

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, doc};
use chrono::Utc;
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database};
use rand::Rng;
use uuid::Uuid;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Transient errors (write conflicts) abort a transaction at once; the service retries such a
/// transaction up to ten times with a short backoff, and so does this.
const MAX_ATTEMPTS: u32 = 10;

struct Args {
    url: String,
    users: usize,
    products: usize,
    out_dir: Option<PathBuf>,
    user_ids: Option<PathBuf>,
    product_ids: Option<PathBuf>,
    concurrency: usize,
    seconds: f64,
    warmup: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mongobench: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    let command = argv
        .next()
        .ok_or("usage: mongobench seed|get|order|drop|version --url URL …")?;
    let mut args = Args {
        url: String::new(),
        users: 20_000,
        products: 1_000,
        out_dir: None,
        user_ids: None,
        product_ids: None,
        concurrency: 32,
        seconds: 10.0,
        warmup: 2.0,
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => args.url = value,
            "--users" if command == "seed" => args.users = value.parse()?,
            "--products" if command == "seed" => args.products = value.parse()?,
            "--out-dir" => args.out_dir = Some(value.into()),
            "--users" => args.user_ids = Some(value.into()),
            "--products" => args.product_ids = Some(value.into()),
            "--concurrency" => args.concurrency = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--warmup" => args.warmup = value.parse()?,
            _ => return Err(format!("unknown argument {flag:?}").into()),
        }
    }
    let client = Client::with_uri_str(&args.url).await?;
    let db = client
        .default_database()
        .ok_or("the URL names no database")?;
    match command.as_str() {
        "seed" => seed(&db, &args).await,
        "get" => get(&db, &args).await,
        "order" => order(&client, &db, &args).await,
        "drop" => Ok(db.drop().await?),
        "version" => {
            let info = db.run_command(doc! {"buildInfo": 1}).await?;
            println!("{}", info.get_str("version").unwrap_or("unknown version"));
            Ok(())
        }
        _ => Err(format!("unknown command {command:?}").into()),
    }
}

fn id(value: Uuid) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: value.as_bytes().to_vec(),
    })
}

fn now() -> Bson {
    Bson::DateTime(bson::DateTime::from_millis(Utc::now().timestamp_millis()))
}

fn read_ids(path: &Option<PathBuf>) -> Result<Vec<Uuid>> {
    let path = path.as_ref().ok_or("an id file is required")?;
    let ids: Vec<Uuid> = std::fs::read_to_string(path)
        .map_err(|err| format!("{}: {err}", path.display()))?
        .lines()
        .filter(|line| !line.is_empty())
        .map(Uuid::parse_str)
        .collect::<std::result::Result<_, _>>()?;
    if ids.is_empty() {
        return Err(format!("no ids in {}", path.display()).into());
    }
    Ok(ids)
}

async fn seed(db: &Database, args: &Args) -> Result<()> {
    let started = Instant::now();
    let dir = args.out_dir.as_ref().ok_or("--out-dir is required")?;
    std::fs::create_dir_all(dir)?;
    // The hash is never checked by these scenarios; it only has to be a string, as stored.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$YmVuY2htYXJrc2FsdA$0000000000000000000000000000000000000000000";
    let statuses = ["active", "active", "active", "inactive", "suspended"];
    let mut user_ids = Vec::with_capacity(args.users);
    let users: Collection<Document> = db.collection("users");
    for chunk in (0..args.users).collect::<Vec<_>>().chunks(5_000) {
        let docs: Vec<Document> = chunk
            .iter()
            .map(|&i| {
                let user = Uuid::now_v7();
                user_ids.push(user);
                doc! {
                    "_id": id(user),
                    "name": format!("Bench User {i}"),
                    "email": format!("bench-{i}-{}@storefront.test", user.simple()),
                    "password_hash": hash,
                    "status": statuses[i % statuses.len()],
                    "role": "customer",
                    "version": 1_i64,
                    "created_at": now(),
                    "updated_at": now(),
                }
            })
            .collect();
        users.insert_many(docs).await?;
    }
    let mut product_ids = Vec::with_capacity(args.products);
    let docs: Vec<Document> = (0..args.products)
        .map(|i| {
            let product = Uuid::now_v7();
            product_ids.push(product);
            doc! {
                "_id": id(product),
                "sku": format!("BENCH-{i:06}-{}", product.simple()),
                "name": format!("Bench product {i}"),
                "price_cents": 100_i64 + (i as i64 % 1000),
                "stock": 100_000_000_i64,
                "version": 1_i64,
                "created_at": now(),
                "updated_at": now(),
            }
        })
        .collect();
    db.collection::<Document>("products")
        .insert_many(docs)
        .await?;
    let lines = |ids: &[Uuid]| ids.iter().map(|id| format!("{id}\n")).collect::<String>();
    std::fs::write(dir.join("users.txt"), lines(&user_ids))?;
    std::fs::write(dir.join("products.txt"), lines(&product_ids))?;
    println!(
        "seeded users={} products={} elapsed_s={:.2}",
        args.users,
        args.products,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What one task measured: the latency of each finished operation, failed ones, retries.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    retries: u64,
}

/// Runs `op` from `concurrency` tasks for `warmup` seconds unmeasured, then `seconds` measured,
/// and prints the summary line.
async fn drive<F, Fut>(args: &Args, op: F) -> Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u32>> + Send,
{
    let op = Arc::new(op);
    let run = |seconds: f64| {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| {
                let op = Arc::clone(&op);
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while Instant::now() < deadline {
                        let began = Instant::now();
                        match op().await {
                            Ok(retries) => {
                                tally.latencies.push(began.elapsed());
                                tally.retries += u64::from(retries);
                            }
                            Err(_) => tally.errors += 1,
                        }
                    }
                    tally
                })
            })
            .collect();
        async move {
            let started = Instant::now();
            let mut all = Tally::default();
            for task in tasks {
                let tally = task.await?;
                all.latencies.extend(tally.latencies);
                all.errors += tally.errors;
                all.retries += tally.retries;
            }
            Ok::<_, Box<dyn Error + Send + Sync>>((all, started.elapsed().as_secs_f64()))
        }
    };
    if args.warmup > 0.0 {
        run(args.warmup).await?;
    }
    let (mut tally, elapsed) = run(args.seconds).await?;
    if tally.latencies.is_empty() {
        return Err(format!("no operation succeeded ({} errors)", tally.errors).into());
    }
    tally.latencies.sort_unstable();
    let percentile = |p: f64| {
        let n = tally.latencies.len();
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        tally.latencies[i].as_secs_f64() * 1000.0
    };
    let done = tally.latencies.len();
    println!(
        "BENCH requests={done} duration_s={elapsed:.3} rps={:.1} p50_ms={:.3} p99_ms={:.3} errors={} retries={}",
        done as f64 / elapsed,
        percentile(0.50),
        percentile(0.99),
        tally.errors,
        tally.retries,
    );
    Ok(())
}

async fn get(db: &Database, args: &Args) -> Result<()> {
    let ids = Arc::new(read_ids(&args.user_ids)?);
    let users: Collection<Document> = db.collection("users");
    drive(args, move || {
        let (ids, users) = (Arc::clone(&ids), users.clone());
        async move {
            let user = ids[rand::rng().random_range(0..ids.len())];
            users
                .find_one(doc! {"_id": id(user)})
                .await?
                .ok_or("a seeded user is missing")?;
            Ok(0)
        }
    })
    .await
}

async fn order(client: &Client, db: &Database, args: &Args) -> Result<()> {
    let users = Arc::new(read_ids(&args.user_ids)?);
    let products = Arc::new(read_ids(&args.product_ids)?);
    let (client, db) = (client.clone(), db.clone());
    drive(args, move || {
        let (client, db) = (client.clone(), db.clone());
        let (users, products) = (Arc::clone(&users), Arc::clone(&products));
        async move {
            let (user, mut lines) = {
                let mut rng = rand::rng();
                let user = users[rng.random_range(0..users.len())];
                let count = rng.random_range(1..=3).min(products.len());
                let mut lines: Vec<Uuid> = Vec::with_capacity(count);
                while lines.len() < count {
                    let product = products[rng.random_range(0..products.len())];
                    if !lines.contains(&product) {
                        lines.push(product);
                    }
                }
                (user, lines)
            };
            lines.sort_unstable();
            let mut attempt = 0;
            loop {
                attempt += 1;
                match place(&client, &db, user, &lines).await {
                    Ok(()) => return Ok(attempt - 1),
                    Err(err)
                        if attempt < MAX_ATTEMPTS
                            && err.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) =>
                    {
                        let backoff = 5_u64 << (attempt - 1).min(5);
                        tokio::time::sleep(Duration::from_millis(backoff.min(200))).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
    })
    .await
}

/// One placement: the stock of each line, then the order, in one transaction.
async fn place(
    client: &Client,
    db: &Database,
    user: Uuid,
    lines: &[Uuid],
) -> mongodb::error::Result<()> {
    let mut session = client.start_session().await?;
    session
        .start_transaction()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::majority())
        .await?;
    let products: Collection<Document> = db.collection("products");
    let mut items = Vec::with_capacity(lines.len());
    for &product in lines {
        let taken = products
            .update_one(
                doc! {"_id": id(product), "stock": {"$gte": 1_i64}},
                doc! {
                    "$inc": {"stock": -1_i64, "version": 1_i64},
                    "$set": {"updated_at": now(), "ordered": true},
                },
            )
            .session(&mut session)
            .await?;
        if taken.matched_count != 1 {
            session.abort_transaction().await?;
            return Ok(());
        }
        items.push(Bson::Document(doc! {
            "product_id": id(product),
            "quantity": 1_i64,
            "unit_price_cents": 100_i64,
        }));
    }
    let total = 100_i64 * lines.len() as i64;
    db.collection::<Document>("orders")
        .insert_one(doc! {
            "_id": id(Uuid::now_v7()),
            "user_id": id(user),
            "status": "pending",
            "total_cents": total,
            "items": items,
            "version": 1_i64,
            "created_at": now(),
            "updated_at": now(),
        })
        .session(&mut session)
        .await?;
    session.commit_transaction().await
}
