//! The service straight on PostgreSQL against the same service through PgBouncer in transaction
//! mode: a cold read and an order, one run.
//!
//! ```sh
//! cargo run --release -p tests --bin poolerbench -- [--clients 32] [--seconds 10] [--rounds 3]
//! ```
//!
//! Needs `TEST_POSTGRES_URL` (a server where it may create a database) and PgBouncer 1.21 or later
//! (`PGBOUNCER_1_24`, or what `scripts/pgbouncer-1.24.sh` builds), as the tests do. On one fresh
//! database it starts two servers in this process: one on the database itself, one on a
//! PgBouncer of its own in front of it (`max_prepared_statements = 200`, 10 server connections),
//! both with the entity cache off (`CACHE_TTL_SECS=0`; the caller's session stays cached, as in
//! any deployment), so every read goes to the database. Then, in alternating order for each
//! round, `--clients` clients for `--seconds`: `GET /v1/users/{id}` over 100 users, and one-line
//! `POST /v1/orders` over 100 products. Prints requests/s and p99 per run, and the medians' ratio,
//! through PgBouncer against direct.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::bench::{Options, median};
use tests::pgbouncer::PoolMode;
use tests::{Backend, TestApp, TestDb, id_of, test_config};

/// What a client sends: a read of a random user, or an order of a random product.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Load {
    ColdRead,
    Order,
}

/// One run: requests/s of the expected status and the p99 in ms; panics on any other status.
async fn run(
    app: &TestApp,
    load: Load,
    users: &[String],
    products: &[String],
    options: &Options,
) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let users = Arc::new(users.to_vec());
    let products = Arc::new(products.to_vec());
    let started = Instant::now();
    let clients: Vec<_> = (0..options.clients)
        .map(|client| {
            let (app, stop) = (app.clone(), stop.clone());
            let (users, products) = (users.clone(), products.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let user = &users[(n >> 33) % users.len()];
                    let request = match load {
                        Load::ColdRead => app.client.get(app.url(&format!("/v1/users/{user}"))),
                        Load::Order => {
                            let product = &products[(n >> 17) % products.len()];
                            app.client.post(app.url("/v1/orders")).json(&json!({
                                "user_id": user,
                                "items": [{"product_id": product, "quantity": 1}],
                            }))
                        }
                    };
                    let sent = Instant::now();
                    let status = request.send().await.map(|reply| reply.status().as_u16());
                    let expected = if load == Load::Order { 201 } else { 200 };
                    assert_eq!(status.ok(), Some(expected), "{load:?}");
                    took.push(sent.elapsed());
                }
                took
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut took = Vec::new();
    for client in clients {
        took.extend(client.await.expect("a client ran to its end"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    took.sort_unstable();
    let p99 = took[(took.len() * 99 / 100).min(took.len() - 1)].as_secs_f64() * 1000.0;
    (took.len() as f64 / elapsed, p99)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let defaults = Options {
        clients: 32,
        seconds: 10,
        rounds: 3,
    };
    let options = match Options::from_args(defaults) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("poolerbench: {err}");
            std::process::exit(2);
        }
    };
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        eprintln!("poolerbench: no PostgreSQL (TEST_POSTGRES_URL)");
        std::process::exit(1);
    };
    let pooled_db = match db.clone().behind(PoolMode::Transaction).await {
        Ok(pooled) => pooled,
        Err(why) => {
            eprintln!("poolerbench: no PgBouncer in transaction mode: {why:?}");
            db.drop_database().await;
            std::process::exit(1);
        }
    };
    let start = |db: &TestDb| {
        let mut config = test_config(db);
        config.cache.ttl = Duration::ZERO;
        config.cache.session_ttl = Some(Duration::from_secs(3600));
        TestApp::start(db.clone(), config)
    };
    let direct = start(&db).await;
    let pooled = start(&pooled_db).await;

    let mut users = Vec::new();
    for n in 0..100 {
        let user = direct
            .create_user(&format!("User {n}"), &format!("user{n}@example.com"))
            .await;
        users.push(id_of(&user));
    }
    let mut products = Vec::new();
    for n in 0..100 {
        let product = direct
            .create_product(&format!("SKU-{n}"), 100, 100_000_000)
            .await;
        products.push(id_of(&product));
    }

    // Warm-up: connections, prepared statements, PgBouncer's server connections.
    let warm = Options {
        seconds: 2,
        ..options
    };
    for app in [&direct, &pooled] {
        for load in [Load::ColdRead, Load::Order] {
            run(app, load, &users, &products, &warm).await;
        }
    }

    let mut results: BTreeMap<(Load, &str), Vec<(f64, f64)>> = BTreeMap::new();
    for round in 0..options.rounds {
        let order = if round % 2 == 0 {
            [("direct", &direct), ("PgBouncer", &pooled)]
        } else {
            [("PgBouncer", &pooled), ("direct", &direct)]
        };
        for load in [Load::ColdRead, Load::Order] {
            for (name, app) in order {
                let (rate, p99) = run(app, load, &users, &products, &options).await;
                println!(
                    "round {} {load:?} {name:>9}: {rate:8.1} requests/s  p99 {p99:6.2} ms",
                    round + 1
                );
                results.entry((load, name)).or_default().push((rate, p99));
            }
        }
    }
    for load in [Load::ColdRead, Load::Order] {
        let medians = |name: &str| {
            let runs = &results[&(load, name)];
            let mut rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let mut p99s: Vec<f64> = runs.iter().map(|r| r.1).collect();
            (median(&mut rates), median(&mut p99s))
        };
        let (direct_rate, direct_p99) = medians("direct");
        let (pooled_rate, pooled_p99) = medians("PgBouncer");
        println!(
            "median {load:?}: direct {direct_rate:.1}/s p99 {direct_p99:.2} ms; \
             PgBouncer {pooled_rate:.1}/s p99 {pooled_p99:.2} ms; PgBouncer / direct {:.3}x",
            pooled_rate / direct_rate
        );
    }
    let _ = pooled.stop().await;
    let _ = direct.stop().await;
    db.drop_database().await;
}
