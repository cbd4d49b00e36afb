//! The change feed published to NATS JetStream by the real binary, as operators run it: killed
//! with `kill -9` in a burst of orders and restarted, and two instances of which one publishes
//! and the other takes over when it dies. Needs a NATS server with JetStream (`TEST_NATS_URL`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::Value;
use tests::{ADMIN_EMAIL, ADMIN_PASSWORD, TestDb, authorized_client, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Declares `$name` (taking its database) once per backend, each ignored, with its reason, when
/// its backend or NATS is not configured.
macro_rules! with_nats {
    ([$($backend:ident),+] fn $name:ident) => {
        mod $name {
            $(with_nats! { @test $backend $name })+
        }
    };
    (@test sqlite $name:ident) => {
        #[cfg_attr(not(has_nats), ignore = "TEST_NATS_URL is not set")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn sqlite() {
            super::$name(tests::test_db!(sqlite)).await
        }
    };
    (@test postgres $name:ident) => {
        with_nats! { @on postgres has_postgres "TEST_POSTGRES_URL is not set" $name }
    };
    (@test mysql $name:ident) => {
        with_nats! { @on mysql has_mysql "TEST_MYSQL_URL is not set" $name }
    };
    (@test mongo $name:ident) => {
        with_nats! { @on mongo has_mongo "TEST_MONGODB_URL is not set" $name }
    };
    (@on $backend:ident $has:ident $why:literal $name:ident) => {
        #[cfg_attr(not($has), ignore = $why)]
        #[cfg_attr(all($has, not(has_nats)), ignore = "TEST_NATS_URL is not set")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $backend() {
            super::$name(tests::test_db!($backend)).await
        }
    };
}

/// Guards against a hung process or a relay that never publishes; nothing here depends on speed.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn nats_url() -> Option<String> {
    let url = std::env::var("TEST_NATS_URL")
        .ok()
        .filter(|url| !url.is_empty());
    if url.is_none() {
        assert!(
            std::env::var("REQUIRE_ALL_BACKENDS").as_deref() != Ok("1"),
            "NATS is required (REQUIRE_ALL_BACKENDS=1) but TEST_NATS_URL is not set"
        );
        eprintln!("skipping: TEST_NATS_URL is not set");
    }
    url
}

/// One instance of the real binary, publishing to NATS.
struct Instance {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Instance {
    async fn start(db: &TestDb, nats: &str) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_storefront"));
        command
            .env("DATABASE_URL", &db.url)
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .env("EVENTS_NATS_URL", nats)
            .env("ADMIN_EMAIL", ADMIN_EMAIL)
            .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("DATABASE_DIRECT_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the server starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let addr = tokio::time::timeout(HANG_GUARD, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let addr = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("addr="));
                if line.contains("listening")
                    && let Some(addr) = addr
                {
                    return Some(addr.to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("the instance says where it listens");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let base = format!("http://{addr}");
        let login = reqwest::Client::new()
            .post(format!("{base}/v1/sessions"))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            .send()
            .await
            .expect("a login");
        let session: Value = login.json().await.expect("a session");
        let token = session["token"].as_str().expect("a token");
        Self {
            child,
            base,
            client: authorized_client(token),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Result<(u16, Value)> {
        let reply = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await?;
        let status = reply.status().as_u16();
        Ok((status, reply.json().await.unwrap_or(Value::Null)))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let reply = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("an answer");
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    async fn create_product(&self, sku: &str, stock: i64) -> String {
        let (status, product) = self
            .post(
                "/v1/products",
                &json!({"sku": sku, "name": sku, "price_cents": 100, "stock": stock}),
            )
            .await
            .expect("an answer");
        assert_eq!(status, 201, "{product}");
        product["id"].as_str().expect("an id").to_owned()
    }

    /// `kill -9`: no shutdown, no last words.
    async fn kill(mut self) {
        self.kill_now();
        let _ = self.child.wait().await;
    }

    /// `kill -9` while requests are in flight.
    fn kill_now(&self) {
        let pid = self.child.id().expect("a running instance");
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Every event in the feed, from the oldest.
    async fn feed(&self) -> Vec<Value> {
        let (status, mut page) = self.get("/v1/events?limit=1000").await;
        assert_eq!(status, 200, "{page}");
        let mut events = Vec::new();
        loop {
            let items = page["items"].as_array().expect("items").clone();
            if items.is_empty() {
                return events;
            }
            events.extend(items);
            let cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();
            page = self
                .get(&format!("/v1/events?after={cursor}&limit=1000"))
                .await
                .1;
        }
    }
}

/// JetStream's `STOREFRONT` stream, and where it ends now: the messages of this test come after.
async fn stream_end(nats: &str) -> (jetstream::Context, u64) {
    let client = async_nats::connect(nats).await.expect("NATS answers");
    let context = jetstream::new(client);
    let mut stream = context
        .get_or_create_stream(jetstream::stream::Config {
            name: api::relay::STREAM.to_owned(),
            subjects: vec![format!("{}.>", api::relay::SUBJECT_PREFIX)],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("the stream");
    let end = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    (context, end)
}

/// How many times each `Nats-Msg-Id` was stored after `end`.
async fn stored_ids(context: &jetstream::Context, end: u64) -> HashMap<String, usize> {
    let stream = context
        .get_stream(api::relay::STREAM)
        .await
        .expect("the stream");
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: end + 1,
            },
            ..Default::default()
        })
        .await
        .expect("a consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut ids: HashMap<String, usize> = HashMap::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(1500), messages.next()).await
    {
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(NATS_MESSAGE_ID))
            .map(|id| id.as_str().to_owned())
            .expect("every message names its event");
        *ids.entry(id).or_default() += 1;
    }
    ids
}

/// Waits until JetStream holds every event of `events`, then asserts each is stored once.
async fn assert_all_published(context: &jetstream::Context, end: u64, events: &[Value]) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let stored = stored_ids(context, end).await;
        let missing: Vec<&str> = events
            .iter()
            .map(|event| event["id"].as_str().expect("an id"))
            .filter(|id| !stored.contains_key(*id))
            .collect();
        if missing.is_empty() {
            for event in events {
                let id = event["id"].as_str().unwrap();
                assert_eq!(stored[id], 1, "JetStream de-duplicates re-sends of {id}");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never reached JetStream",
            missing.len(),
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn every_committed_order_is_published_once_across_a_kill_9(db: Option<TestDb>) {
    let Some(db) = db else { return };
    let Some(nats) = nats_url() else {
        db.drop_database().await;
        return;
    };
    let (context, end) = stream_end(&nats).await;
    let first = Instance::start(&db, &nats).await;
    let (_, user) = first
        .post(
            "/v1/users",
            &json!({"name": "Buyer", "email": "buyer@example.com", "password": "long enough"}),
        )
        .await
        .expect("an answer");
    let product = first.create_product("BURST", 1_000_000).await;
    let order = json!({"user_id": user["id"], "items": [{"product_id": product, "quantity": 1}]});

    let placed = Arc::new(Mutex::new(Vec::new()));
    let first = Arc::new(first);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (first, order, placed) = (first.clone(), order.clone(), placed.clone());
        clients.push(tokio::spawn(async move {
            // Until the instance is gone.
            while let Ok((status, body)) = first.post("/v1/orders", &order).await {
                assert!(status == 201 || status == 503, "{status}: {body}");
                // An answer cut off by the kill was never acknowledged.
                if status == 201
                    && let Some(id) = body["id"].as_str()
                {
                    placed.lock().unwrap().push(id.to_owned());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill_now();
    for client in clients {
        client.await.expect("a client");
    }
    let placed = placed.lock().unwrap().clone();
    assert!(!placed.is_empty(), "orders were placed before the kill");

    let second = Instance::start(&db, &nats).await;
    let events = second.feed().await;
    let mut per_order: HashMap<&str, usize> = HashMap::new();
    for event in events
        .iter()
        .filter(|event| event["type"] == "order.created")
    {
        *per_order
            .entry(event["resource_id"].as_str().unwrap())
            .or_default() += 1;
    }
    for id in &placed {
        assert_eq!(
            per_order.get(id.as_str()),
            Some(&1),
            "one event for order {id}"
        );
    }
    for id in per_order.keys() {
        let (status, _) = second.get(&format!("/v1/orders/{id}")).await;
        assert_eq!(status, 200, "an event only for an order that committed");
    }
    assert_all_published(&context, end, &events).await;
    second.kill().await;
    db.drop_database().await;
}

// Not on MongoDB here: the MongoDB-wire server the tests run on keeps the transactions of a client
// killed mid-order open, and other operations then wait behind them indefinitely; a real
// MongoDB aborts them after `transactionLifetimeLimitSeconds`. The publisher's death is covered on
// MongoDB by the takeover test below.
with_nats!([sqlite, postgres, mysql] fn every_committed_order_is_published_once_across_a_kill_9);

async fn another_instance_takes_over_publishing_when_the_publisher_dies(db: Option<TestDb>) {
    let Some(db) = db else { return };
    let Some(nats) = nats_url() else {
        db.drop_database().await;
        return;
    };
    let (context, end) = stream_end(&nats).await;
    let publisher = Instance::start(&db, &nats).await;
    for n in 0..5 {
        publisher.create_product(&format!("A-{n}"), 1).await;
    }
    // The first instance holds the lease once its events are out.
    assert_all_published(&context, end, &publisher.feed().await).await;
    let standby = Instance::start(&db, &nats).await;
    for n in 0..5 {
        standby.create_product(&format!("B-{n}"), 1).await;
    }
    publisher.kill().await;
    for n in 0..5 {
        standby.create_product(&format!("C-{n}"), 1).await;
    }
    let events = standby.feed().await;
    assert_eq!(
        events
            .iter()
            .filter(|event| event["type"] == "product.created")
            .count(),
        15
    );
    assert_all_published(&context, end, &events).await;
    standby.kill().await;
    db.drop_database().await;
}

with_nats!([sqlite, postgres, mysql, mongo] fn another_instance_takes_over_publishing_when_the_publisher_dies);
