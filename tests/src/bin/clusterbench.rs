//! Orders on a Patroni cluster: what synchronous replication costs, and what a failover looks
//! like from the clients' side.
//!
//! ```sh
//! cargo run --release -p tests --bin clusterbench -- [--clients 16] [--seconds 10] [--rounds 3]
//! ```
//!
//! Starts the failover tests' cluster (`tests::patroni`: etcd, two Patroni nodes, HAProxy; the
//! same programs they need) and the service in this process on HAProxy's primary port. Then, in
//! alternating order for each round, `synchronous_mode` on and off, `--clients` clients placing
//! one-line orders without a key for `--seconds`: requests/s and p50/p99 of each run, and the
//! medians' ratio. Last, with synchronous mode on, the same load through a `kill -9` of the
//! primary's Patroni and postmaster: kill → promotion, promotion → first 201, the answers by
//! status while no primary answered, and how many acknowledged orders the database lacks
//! afterwards (the contract: none).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use tests::bench::{Options, median};
use tests::patroni::Cluster;
use tests::{TestApp, TestDb, id_of, test_config};

/// One answer: its status (0 for no answer), when it came, how long it took, the order's id.
struct Answer {
    status: u16,
    at: Instant,
    took: Duration,
    order_id: Option<String>,
}

/// `clients` clients placing `body` through `app` until `stop` is set.
async fn load(app: &TestApp, body: &Value, clients: usize, stop: Arc<AtomicBool>) -> Vec<Answer> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (app, body, stop) = (app.clone(), body.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let sent = app
                        .client
                        .post(app.url("/v1/orders"))
                        .json(&body)
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await;
                    let (status, order_id) = match sent {
                        Ok(reply) => {
                            let status = reply.status().as_u16();
                            let json: Value = reply.json().await.unwrap_or(Value::Null);
                            (status, json["id"].as_str().map(str::to_owned))
                        }
                        Err(_) => (0, None),
                    };
                    answers.push(Answer {
                        status,
                        at: Instant::now(),
                        took: started.elapsed(),
                        order_id: order_id.filter(|_| status == 201),
                    });
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("a client ran to its end"));
    }
    answers
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// One measured run: requests/s of 201s, p50 and p99 in ms.
async fn measure(app: &TestApp, body: &Value, options: &Options) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let (app, body, stop) = (app.clone(), body.clone(), stop.clone());
        let clients = options.clients;
        tokio::spawn(async move { load(&app, &body, clients, stop).await })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = running.await.expect("the load ran");
    let elapsed = started.elapsed().as_secs_f64();
    let others = answers.iter().filter(|a| a.status != 201).count();
    assert_eq!(others, 0, "only 201s were expected without a failure");
    let mut took: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    took.sort_unstable();
    (
        answers.len() as f64 / elapsed,
        percentile(&took, 0.5),
        percentile(&took, 0.99),
    )
}

async fn stored_orders(db: &TestDb) -> HashSet<String> {
    let conn = db.connect().await;
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id::text FROM orders",
        ))
        .await
        .expect("read the orders");
    let _ = conn.close().await;
    rows.iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("an id"))
        .collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let defaults = Options {
        clients: 16,
        seconds: 10,
        rounds: 3,
    };
    let options = match Options::from_args(defaults) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("clusterbench: {err}");
            std::process::exit(2);
        }
    };
    let Some(cluster) = Cluster::start().await else {
        eprintln!("clusterbench: no cluster could be started (see above)");
        std::process::exit(1);
    };
    let db = TestDb::create_on(&cluster.primary_url()).await;
    let mut config = test_config(&db);
    config.database.connect_timeout = Duration::from_millis(1_000);
    config.database.acquire_timeout = Duration::from_millis(1_000);
    let app = TestApp::start(db.clone(), config).await;
    let product = app.create_product("CLUSTER", 100, 100_000_000).await;
    let user = app.create_user("Buyer", "buyer@example.com").await;
    let body =
        json!({"user_id": user["id"], "items": [{"product_id": id_of(&product), "quantity": 1}]});

    // Warm-up: connections, prepared statements, caches.
    cluster.set_synchronous(true).await;
    measure(
        &app,
        &body,
        &Options {
            seconds: 2,
            ..options
        },
    )
    .await;

    let mut runs: BTreeMap<bool, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for round in 0..options.rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for synchronous in order {
            cluster.set_synchronous(synchronous).await;
            let (rate, p50, p99) = measure(&app, &body, &options).await;
            let mode = if synchronous {
                "synchronous"
            } else {
                "asynchronous"
            };
            println!(
                "round {} {mode:>12}: {rate:8.1} orders/s  p50 {p50:6.2} ms  p99 {p99:6.2} ms",
                round + 1
            );
            runs.entry(synchronous).or_default().push((rate, p50, p99));
        }
    }
    let summary = |synchronous: bool| {
        let results = &runs[&synchronous];
        let mut rates: Vec<f64> = results.iter().map(|r| r.0).collect();
        let mut p50s: Vec<f64> = results.iter().map(|r| r.1).collect();
        let mut p99s: Vec<f64> = results.iter().map(|r| r.2).collect();
        (median(&mut rates), median(&mut p50s), median(&mut p99s))
    };
    let (sync_rate, sync_p50, sync_p99) = summary(true);
    let (async_rate, async_p50, async_p99) = summary(false);
    println!(
        "median synchronous: {sync_rate:.1} orders/s, p50 {sync_p50:.2} ms, p99 {sync_p99:.2} ms"
    );
    println!(
        "median asynchronous: {async_rate:.1} orders/s, p50 {async_p50:.2} ms, p99 {async_p99:.2} ms"
    );
    println!("synchronous / asynchronous: {:.3}x", sync_rate / async_rate);

    // The failover, in synchronous mode.
    cluster.set_synchronous(true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let (app, body, stop) = (app.clone(), body.clone(), stop.clone());
        let clients = options.clients;
        tokio::spawn(async move { load(&app, &body, clients, stop).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader().await.expect("a leader");
    let survivor = cluster.other(leader);
    let killed = Instant::now();
    cluster.kill(leader);
    let promoted = cluster.wait_for_leader(survivor).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = running.await.expect("the load ran");

    let first_after = answers
        .iter()
        .filter(|a| a.status == 201 && a.at >= promoted)
        .map(|a| a.at)
        .min();
    let mut during: BTreeMap<u16, usize> = BTreeMap::new();
    for answer in answers.iter().filter(|a| a.at >= killed && a.at < promoted) {
        *during.entry(answer.status).or_default() += 1;
    }
    let mut all: BTreeMap<u16, usize> = BTreeMap::new();
    for answer in &answers {
        *all.entry(answer.status).or_default() += 1;
    }
    let acknowledged: HashSet<String> = answers.iter().filter_map(|a| a.order_id.clone()).collect();
    let stored = stored_orders(&db).await;
    let lost = acknowledged.difference(&stored).count();
    println!(
        "failover: promotion {:.1} s after the kill; first 201 {} after the promotion",
        (promoted - killed).as_secs_f64(),
        first_after.map_or("never".to_owned(), |at| format!(
            "{:.2} s",
            (at - promoted).as_secs_f64()
        )),
    );
    println!("failover: answers between the kill and the promotion, by status: {during:?}");
    println!("failover: all answers of the run, by status: {all:?}");
    println!(
        "failover: {} orders acknowledged, {lost} of them missing from the database",
        acknowledged.len()
    );
    let _ = app.stop().await;
}
