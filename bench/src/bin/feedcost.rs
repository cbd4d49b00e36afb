//! What the change feed costs the order path, and how fast a reader drains it.
//!
//! ```sh
//! cargo run --release -p bench --bin feedcost -- [--admin-url postgres://…/postgres] \
//!     [--concurrency 32] [--seconds 10] [--rounds 3]
//! ```
//!
//! Runs the service in this process on a fresh PostgreSQL database per run, twice per round: once
//! as it always runs (every write records its event) and once with recording off
//! (`EventsConfig::record`), in alternating order, each with the same load: `POST /v1/orders`
//! over 1,000 products, and over 10 hot products (every order on one of ten rows, as in a flash
//! sale; stock enough that every order is a 201). Then it reads the recorded feed from the oldest
//! event with `limit=1000` pages and reports events per second. Prints one line per run and the
//! medians' ratios, events on against off.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::config::Config;
use api::startup::Application;
use rand::Rng;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use uuid::Uuid;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const ADMIN_EMAIL: &str = "bench-admin@storefront.test";
const ADMIN_PASSWORD: &str = "bench admin password";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("feedcost: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Options {
    admin_url: String,
    concurrency: usize,
    seconds: f64,
    rounds: usize,
}

fn options() -> Result<Options> {
    let mut options = Options {
        admin_url: "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned(),
        concurrency: 32,
        seconds: 10.0,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--admin-url" => options.admin_url = value,
            "--concurrency" => options.concurrency = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            _ => return Err(format!("unknown argument {flag:?}").into()),
        }
    }
    Ok(options)
}

/// Requests per second and the 99th percentile latency of one load.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    per_second: f64,
    p99_ms: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    spread: Load,
    hot: Load,
    /// Events a reader drained per second (recording on only).
    drained: Option<f64>,
}

async fn run() -> Result<()> {
    let options = options()?;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..options.rounds {
        // Alternate which goes first, so that neither always runs on a warmer machine.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for record in order {
            let run = measure(&options, record).await?;
            println!(
                "feedcost round={round} events={} spread_rps={:.1} spread_p99_ms={:.2} hot_rps={:.1} hot_p99_ms={:.2} drained_eps={}",
                if record { "on" } else { "off" },
                run.spread.per_second,
                run.spread.p99_ms,
                run.hot.per_second,
                run.hot.p99_ms,
                run.drained
                    .map_or("-".to_owned(), |eps| format!("{eps:.0}")),
            );
            if record { on.push(run) } else { off.push(run) }
        }
    }
    let median = |runs: &[Run], pick: fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let spread = (
        median(&on, |run| run.spread.per_second),
        median(&off, |run| run.spread.per_second),
    );
    let hot = (
        median(&on, |run| run.hot.per_second),
        median(&off, |run| run.hot.per_second),
    );
    println!(
        "feedcost median spread: on={:.1} off={:.1} ratio={:.3}",
        spread.0,
        spread.1,
        spread.0 / spread.1
    );
    println!(
        "feedcost median hot: on={:.1} off={:.1} ratio={:.3}",
        hot.0,
        hot.1,
        hot.0 / hot.1
    );
    println!(
        "feedcost median p99_ms: spread on={:.2} off={:.2}; hot on={:.2} off={:.2}",
        median(&on, |run| run.spread.p99_ms),
        median(&off, |run| run.spread.p99_ms),
        median(&on, |run| run.hot.p99_ms),
        median(&off, |run| run.hot.p99_ms),
    );
    println!(
        "feedcost median drain: {:.0} events/s",
        median(&on, |run| run.drained.unwrap_or(0.0))
    );
    Ok(())
}

/// One run on a database of its own.
async fn measure(options: &Options, record: bool) -> Result<Run> {
    let name = format!("sf_feedcost_{}", Uuid::now_v7().simple());
    let admin = Database::connect(options.admin_url.as_str()).await?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut url = url::Url::parse(&options.admin_url)?;
    url.set_path(&name);
    let outcome = measure_on(options, url.as_str(), record).await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    outcome
}

async fn measure_on(options: &Options, url: &str, record: bool) -> Result<Run> {
    let mut config = Config::from_vars(vec![
        ("ADMIN_EMAIL".to_owned(), ADMIN_EMAIL.to_owned()),
        ("ADMIN_PASSWORD".to_owned(), ADMIN_PASSWORD.to_owned()),
        ("DATABASE_URL".to_owned(), url.to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
    ])?;
    config.events.record = record;
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let outcome = drive(options, &base, record).await;
    let _ = stop.send(());
    let _ = server.await;
    outcome
}

async fn drive(options: &Options, base: &str, record: bool) -> Result<Run> {
    let anonymous = reqwest::Client::new();
    let session: Value = anonymous
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let token = session["token"].as_str().ok_or("no admin token")?;
    let user = session["user"]["id"].clone();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let mut products = Vec::new();
    for n in 0..1000 {
        let product: Value = client
            .post(format!("{base}/v1/products"))
            .json(&json!({"sku": format!("P{n}"), "name": "Bench", "price_cents": 100, "stock": 100_000_000}))
            .send()
            .await?
            .json()
            .await?;
        products.push(product["id"].clone());
    }
    let seconds = Duration::from_secs_f64(options.seconds);
    let spread = load(
        &client,
        base,
        &user,
        &products,
        options.concurrency,
        seconds,
    )
    .await?;
    let hot = load(
        &client,
        base,
        &user,
        &products[..10],
        options.concurrency,
        seconds,
    )
    .await?;
    let drained = if record {
        Some(drain(&client, base).await?)
    } else {
        None
    };
    Ok(Run {
        spread,
        hot,
        drained,
    })
}

/// `concurrency` clients placing one-line orders on random `products` for `duration`.
async fn load(
    client: &reqwest::Client,
    base: &str,
    user: &Value,
    products: &[Value],
    concurrency: usize,
    duration: Duration,
) -> Result<Load> {
    let done = Arc::new(AtomicBool::new(false));
    let products = Arc::new(products.to_vec());
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, done, products, user) =
            (client.clone(), done.clone(), products.clone(), user.clone());
        let url = format!("{base}/v1/orders");
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let product = products[rand::rng().random_range(0..products.len())].clone();
                let body =
                    json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]});
                let started = Instant::now();
                let status = client.post(&url).json(&body).send().await?.status();
                if status.as_u16() != 201 {
                    return Err(format!("an order was answered {status}").into());
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    done.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or_default();
    Ok(Load {
        per_second: latencies.len() as f64 / elapsed,
        p99_ms: p99.as_secs_f64() * 1000.0,
    })
}

/// Reads the whole feed from the oldest event; events per second.
async fn drain(client: &reqwest::Client, base: &str) -> Result<f64> {
    let started = Instant::now();
    let mut read = 0_usize;
    let mut query = "limit=1000".to_owned();
    loop {
        let page: Value = client
            .get(format!("{base}/v1/events?{query}"))
            .send()
            .await?
            .json()
            .await?;
        let items = page["items"].as_array().ok_or("no items")?.len();
        if items == 0 {
            break;
        }
        read += items;
        let cursor = page["next_cursor"].as_str().ok_or("no cursor")?;
        query = format!("after={cursor}&limit=1000");
    }
    Ok(read as f64 / started.elapsed().as_secs_f64())
}
