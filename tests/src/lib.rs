//! The test harness: `TestApp` starts the real server on a random port against a database of its
//! own (a new, uniquely named database on PostgreSQL and MariaDB, a temporary file on SQLite) and
//! drops that database afterwards. `on_every_backend!` runs one test body on each backend,
//! `on_backends!` on the backends it lists, and `for_backends!` runs a test function that takes
//! its database once per listed backend.
//!
//! Backends: SQLite always; PostgreSQL when `TEST_POSTGRES_URL` is set, directly and behind a
//! PgBouncer of the test's own, in session mode (`pgbouncer`) and in transaction mode
//! (`pgbouncer_txn`, PgBouncer 1.21 or later: see `pgbouncer`); MariaDB/MySQL when
//! `TEST_MYSQL_URL` is set; MongoDB when `TEST_MONGODB_URL` is set. A test on a backend that was
//! not configured when the tests were built is ignored, with the reason (`build.rs` sets a cfg per
//! backend, and `requires!` marks the test); a configured one that turns out unreachable is
//! skipped at run time with a line on stderr. With `REQUIRE_ALL_BACKENDS=1` nothing is ignored or
//! skipped: a missing or unreachable backend fails the test.

pub mod bench;
pub mod patroni;
pub mod pgbouncer;
mod process;
pub mod proxy;
pub mod replica;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::config::Config;
use api::startup::Application;
use api::state::AppState;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend};
use serde_json::Value;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
    Mongo,
}

impl Backend {
    fn admin_url(self) -> Option<String> {
        let var = match self {
            Backend::Sqlite => return None,
            Backend::Postgres => "TEST_POSTGRES_URL",
            Backend::MySql => "TEST_MYSQL_URL",
            Backend::Mongo => "TEST_MONGODB_URL",
        };
        std::env::var(var).ok().filter(|url| !url.is_empty())
    }
}

fn all_backends_required() -> bool {
    std::env::var("REQUIRE_ALL_BACKENDS").is_ok_and(|v| v == "1")
}

fn skip(backend: impl std::fmt::Debug, why: &str) -> Option<TestDb> {
    if all_backends_required() {
        panic!("{backend:?} is required (REQUIRE_ALL_BACKENDS=1) but {why}");
    }
    eprintln!("skipping {backend:?}: {why}");
    None
}

/// A database that exists for one test.
#[derive(Clone, Debug)]
pub struct TestDb {
    pub backend: Backend,
    /// The URL the service connects with.
    pub url: String,
    /// Behind PgBouncer: the database itself (`DATABASE_DIRECT_URL`); `url` is then PgBouncer.
    pub direct_url: Option<String>,
    admin_url: Option<String>,
    name: String,
    file: Option<PathBuf>,
    pooler: Option<Arc<pgbouncer::PgBouncer>>,
}

impl TestDb {
    /// A new, empty database; `None` when the backend is not configured (and not required).
    pub async fn create(backend: Backend) -> Option<Self> {
        let name = format!("sf_test_{}", Uuid::now_v7().simple());
        if backend == Backend::Sqlite {
            let file = std::env::temp_dir().join(format!("{name}.db"));
            return Some(Self {
                backend,
                url: format!("sqlite://{}?mode=rwc", file.display()),
                direct_url: None,
                admin_url: None,
                name,
                file: Some(file),
                pooler: None,
            });
        }
        let Some(admin_url) = backend.admin_url() else {
            return skip(backend, "its URL variable is not set");
        };
        if backend == Backend::Mongo {
            return Self::create_mongo(admin_url, name).await;
        }
        let admin = match Database::connect(admin_url.as_str()).await {
            Ok(admin) => admin,
            Err(err) => return skip(backend, &format!("it is unreachable: {err}")),
        };
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        Some(Self::on_server(backend, admin_url, name))
    }

    /// A new, empty PostgreSQL database on the server `admin_url` names (one the test started).
    pub async fn create_on(admin_url: &str) -> Self {
        let name = format!("sf_test_{}", Uuid::now_v7().simple());
        let admin = Database::connect(admin_url)
            .await
            .expect("reach the server");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        Self::on_server(Backend::Postgres, admin_url.to_owned(), name)
    }

    /// The database `name` on the server `admin_url` names.
    fn on_server(backend: Backend, admin_url: String, name: String) -> Self {
        let mut url = url::Url::parse(&admin_url).expect("a valid admin URL");
        url.set_path(&name);
        Self {
            backend,
            url: url.into(),
            direct_url: None,
            admin_url: Some(admin_url),
            name,
            file: None,
            pooler: None,
        }
    }

    /// A new, empty PostgreSQL database reached through a PgBouncer of its own in `pool_mode`
    /// (`url`), with `direct_url` naming the database itself.
    pub async fn behind_pgbouncer(pool_mode: pgbouncer::PoolMode) -> Option<Self> {
        let db = Self::create(Backend::Postgres).await?;
        match db.clone().behind(pool_mode).await {
            Ok(db) => Some(db),
            Err(pgbouncer::Unavailable(why)) => {
                db.drop_database().await;
                skip(format!("PgBouncer in {} mode", pool_mode.as_str()), &why)
            }
        }
    }

    /// This PostgreSQL database reached through a PgBouncer of its own in `pool_mode` (`url`),
    /// with `direct_url` naming what `url` named before (the database, or a proxy in front of it).
    pub async fn behind(
        mut self,
        pool_mode: pgbouncer::PoolMode,
    ) -> Result<Self, pgbouncer::Unavailable> {
        let direct: url::Url = self.url.parse().expect("a valid database URL");
        let pooler = pgbouncer::PgBouncer::start(&direct, &self.name, pool_mode).await?;
        let mut through = direct.clone();
        through.set_host(Some("127.0.0.1")).expect("a host");
        through.set_port(Some(pooler.port)).expect("a port");
        self.url = through.into();
        self.direct_url = Some(direct.into());
        self.pooler = Some(Arc::new(pooler));
        Ok(self)
    }

    /// A new, empty PostgreSQL database and the test binary's streaming replica of its server
    /// (`replica`), which has the database once it has replayed its creation.
    pub async fn with_replica() -> Option<(Self, &'static replica::Replica)> {
        let db = Self::create(Backend::Postgres).await?;
        let admin: url::Url = db
            .admin_url
            .as_deref()
            .unwrap_or_default()
            .parse()
            .expect("a valid admin URL");
        match replica::Replica::shared(&admin).await {
            Ok(replica) => Some((db, replica)),
            Err(replica::Unavailable(why)) => {
                db.drop_database().await;
                skip("a PostgreSQL replica", &why);
                None
            }
        }
    }

    /// PgBouncer's pool mode when the database is behind one.
    pub fn pool_mode(&self) -> Option<pgbouncer::PoolMode> {
        self.pooler.as_ref().map(|pooler| pooler.pool_mode)
    }

    /// MongoDB creates a database on its first write, so there is nothing to create: the test's
    /// database is a fresh name on a server that answers.
    async fn create_mongo(admin_url: String, name: String) -> Option<Self> {
        let client = match mongo_client(&admin_url).await {
            Ok(client) => client,
            Err(err) => return skip(Backend::Mongo, &format!("it is unreachable: {err}")),
        };
        client.shutdown().await;
        Some(Self::on_server(Backend::Mongo, admin_url, name))
    }

    /// The test's MongoDB database, through a client of the test's own.
    pub async fn mongo(&self) -> mongodb::Database {
        assert_eq!(self.backend, Backend::Mongo, "not a MongoDB test database");
        let client = mongo_client(&self.url).await.expect("connect to MongoDB");
        client.database(&self.name)
    }

    /// A connection of the test's own (for arranging data, holding locks, reading plans). SQL
    /// backends only: tests that need it run through `on_sql_backends!`.
    pub async fn connect(&self) -> DatabaseConnection {
        let url = self.direct_url.as_ref().unwrap_or(&self.url);
        Database::connect(url.as_str())
            .await
            .expect("connect to the test database")
    }

    pub async fn drop_database(&self) {
        if let Some(pooler) = &self.pooler {
            pooler.stop();
        }
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm", ".migration-lock"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            return;
        }
        let Some(admin_url) = &self.admin_url else {
            return;
        };
        if self.backend == Backend::Mongo {
            if let Ok(client) = mongo_client(admin_url).await {
                if let Err(err) = client.database(&self.name).drop().await {
                    eprintln!("could not drop {}: {err}", self.name);
                }
                client.shutdown().await;
            }
            return;
        }
        // One connection, so that a session setting holds for the drop.
        let mut options = sea_orm::ConnectOptions::new(admin_url.as_str());
        options.max_connections(1).sqlx_logging(false);
        let Ok(admin) = Database::connect(options).await else {
            return;
        };
        let sql = match self.backend {
            Backend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        if self.backend == Backend::MySql {
            // A connection a test left open holds a metadata lock the drop would wait for as
            // long as the server's default allows (a year): give up on it within a minute.
            let _ = admin
                .execute_unprepared("SET SESSION lock_wait_timeout = 60")
                .await;
        }
        if let Err(err) = admin.execute_unprepared(&sql).await {
            eprintln!("could not drop {}: {err}", self.name);
        }
        let _ = admin.close().await;
    }

    /// What the database keeps of every session's token, read around the service.
    pub async fn stored_session_hashes(&self) -> Vec<String> {
        if self.backend == Backend::Mongo {
            use futures::TryStreamExt;
            let sessions: Vec<bson::Document> = self
                .mongo()
                .await
                .collection::<bson::Document>("sessions")
                .find(bson::doc! {})
                .await
                .expect("read sessions")
                .try_collect()
                .await
                .expect("read sessions");
            return sessions
                .iter()
                .map(|session| session.get_str("_id").expect("a text hash").to_owned())
                .collect();
        }
        let conn = self.connect().await;
        let rows = conn
            .query_all_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                "SELECT token_hash FROM sessions",
            ))
            .await
            .expect("read sessions");
        let _ = conn.close().await;
        rows.iter()
            .map(|row| row.try_get_by_index::<String>(0).expect("a text hash"))
            .collect()
    }

    /// The password hash stored for the user with this email, read around the service.
    pub async fn stored_password_hash(&self, email: &str) -> String {
        if self.backend == Backend::Mongo {
            let user = self
                .mongo()
                .await
                .collection::<bson::Document>("users")
                .find_one(bson::doc! {"email": email})
                .await
                .expect("read the hash")
                .expect("one user");
            return user
                .get_str("password_hash")
                .expect("a text hash")
                .to_owned();
        }
        let conn = self.connect().await;
        let row = conn
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                conn.get_database_backend(),
                match self.backend {
                    Backend::Postgres => "SELECT password_hash FROM users WHERE email = $1",
                    _ => "SELECT password_hash FROM users WHERE email = ?",
                },
                [email.into()],
            ))
            .await
            .expect("read the hash")
            .expect("one user");
        let hash = row.try_get_by_index::<String>(0).expect("a text hash");
        let _ = conn.close().await;
        hash
    }

    pub fn db_backend(&self) -> DbBackend {
        match self.backend {
            Backend::Sqlite => DbBackend::Sqlite,
            Backend::Postgres => DbBackend::Postgres,
            Backend::MySql => DbBackend::MySql,
            Backend::Mongo => panic!("MongoDB has no SQL backend"),
        }
    }
}

/// A client that has answered a ping.
async fn mongo_client(url: &str) -> mongodb::error::Result<mongodb::Client> {
    let mut options = mongodb::options::ClientOptions::parse(url).await?;
    options.server_selection_timeout = Some(std::time::Duration::from_secs(3));
    let client = mongodb::Client::with_options(options)?;
    client
        .database("admin")
        .run_command(bson::doc! {"ping": 1})
        .await?;
    Ok(client)
}

/// The admin every test server makes sure of (`ADMIN_EMAIL`/`ADMIN_PASSWORD`); the harness logs
/// in as them, so `app.get(…)` and friends act as an admin unless a test says otherwise.
pub const ADMIN_EMAIL: &str = "admin@storefront.test";
pub const ADMIN_PASSWORD: &str = "admin password 1";

/// The password `create_user` and `sign_up` give their users.
pub const USER_PASSWORD: &str = "correct horse battery";

/// The configuration a test server starts with: defaults, its database, a random port, an admin.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::from_vars(vec![
        ("ADMIN_EMAIL".to_owned(), ADMIN_EMAIL.to_owned()),
        ("ADMIN_PASSWORD".to_owned(), ADMIN_PASSWORD.to_owned()),
    ])
    .expect("default configuration");
    config.database.url = db.url.parse().expect("a database URL");
    config.database.direct_url = db
        .direct_url
        .as_deref()
        .map(|url| url.parse().expect("a database URL"));
    config.port = 0;
    config
}

struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// A running server and its database.
#[derive(Clone)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub db: TestDb,
    pub state: Arc<AppState>,
    /// Sends the admin's bearer token with every request.
    pub client: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    /// The admin's user id (the admin is a user too: listings include them).
    pub admin_id: String,
    pub admin_token: String,
    running: Arc<Mutex<Running>>,
}

/// A signed-up, logged-in customer.
#[derive(Clone)]
pub struct Customer {
    pub id: String,
    pub token: String,
    /// Sends this customer's bearer token with every request.
    pub client: reqwest::Client,
}

/// A client that sends `token` as its bearer token with every request.
pub fn authorized_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .expect("a valid header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json error with this status and code, and returns the problem.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["code"], code, "body: {}", self.text);
        assert_eq!(body["status"], status);
        assert!(body["title"].is_string() && body["type"].is_string());
        body
    }

    /// Asserts the status and an empty body (204, 304).
    #[track_caller]
    pub fn expect_empty(&self, status: u16) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert!(self.text.is_empty(), "a body with {status}: {}", self.text);
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self.json()
    }
}

impl TestApp {
    /// Starts a server with the default test configuration.
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts a server after `configure` has adjusted its configuration.
    pub async fn spawn_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Option<Self> {
        let db = TestDb::create(backend).await?;
        Some(Self::spawn_on(db, configure).await)
    }

    /// Starts a server on `db` after `configure` has adjusted its configuration.
    pub async fn spawn_on(db: TestDb, configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config(&db);
        configure(&mut config);
        Self::start(db, config).await
    }

    pub async fn start(db: TestDb, config: Config) -> Self {
        capture_server_log();
        let app = Application::build(config).await.expect("the server starts");
        let addr = app.local_addr();
        let state = app.state();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stop.await;
        }));
        let base = format!("http://{addr}");
        let anonymous = reqwest::Client::new();
        let login = anonymous
            .post(format!("{base}/v1/sessions"))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            .send()
            .await
            .expect("the admin login is answered");
        assert_eq!(login.status().as_u16(), 201, "the admin logs in");
        let session: Value = login.json().await.expect("a session");
        let admin_token = session["token"].as_str().expect("a token").to_owned();
        let admin_id = session["user"]["id"]
            .as_str()
            .expect("a user id")
            .to_owned();
        Self {
            addr,
            base,
            db,
            state,
            client: authorized_client(&admin_token),
            anonymous,
            admin_id,
            admin_token,
            running: Arc::new(Mutex::new(Running {
                shutdown: Some(shutdown),
                server: Some(server),
            })),
        }
    }

    /// Signs up a customer and logs them in.
    pub async fn sign_up(&self, name: &str, email: &str) -> Customer {
        let reply = self
            .send(
                self.anonymous
                    .post(self.url("/v1/users"))
                    .json(&json!({"name": name, "email": email, "password": USER_PASSWORD})),
            )
            .await;
        let user = reply.expect(201);
        let token = self.log_in(email, USER_PASSWORD).await;
        Customer {
            id: id_of(&user),
            client: authorized_client(&token),
            token,
        }
    }

    /// Logs in and returns the bearer token.
    pub async fn log_in(&self, email: &str, password: &str) -> String {
        let reply = self
            .send(
                self.anonymous
                    .post(self.url("/v1/sessions"))
                    .json(&json!({"email": email, "password": password})),
            )
            .await;
        reply.expect(201)["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a readable body");
        Reply {
            status,
            headers,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.patch(self.url(path)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path))).await
    }

    /// Sends raw bytes with the given content type.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let request = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        self.send(request).await
    }

    /// Creates a user and returns its JSON.
    pub async fn create_user(&self, name: &str, email: &str) -> Value {
        self.post(
            "/v1/users",
            &json!({"name": name, "email": email, "password": USER_PASSWORD}),
        )
        .await
        .expect(201)
    }

    /// Creates a product and returns its JSON.
    /// A product's stock as `GET /v1/products/{id}` answers it (which caches the product).
    pub async fn stock_of(&self, product: &Value) -> i64 {
        self.get(&format!("/v1/products/{}", id_of(product)))
            .await
            .expect(200)["stock"]
            .as_i64()
            .expect("stock is an integer")
    }

    pub async fn create_product(&self, sku: &str, price_cents: i64, stock: i64) -> Value {
        self.post(
            "/v1/products",
            &json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "stock": stock}),
        )
        .await
        .expect(201)
    }

    /// Stops the server (as SIGTERM would) and waits until it has drained and closed its pool.
    pub async fn stop(&self) -> std::io::Result<()> {
        let mut running = self.running.lock().await;
        if let Some(shutdown) = running.shutdown.take() {
            let _ = shutdown.send(());
        }
        match running.server.take() {
            Some(server) => server.await.expect("the server task ends"),
            None => Ok(()),
        }
    }

    /// Stops the server and drops its database.
    pub async fn teardown(&self) {
        let _ = self.stop().await;
        self.db.drop_database().await;
    }
}

/// Runs `body` against a fresh server on `backend` (skipping an unconfigured backend), then tears
/// it down — also when the body panics, whose panic is then resumed.
pub async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_with(backend, |_| {}, body).await
}

/// `run` with an adjusted configuration.
pub async fn run_with<F, Fut>(backend: Backend, configure: impl FnOnce(&mut Config), body: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_on(TestDb::create(backend).await, configure, body).await
}

/// `run_with` on a database made by the caller (`None`: skipped), e.g. by `test_db!`.
pub async fn run_on<F, Fut>(db: Option<TestDb>, configure: impl FnOnce(&mut Config), body: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = db else {
        return;
    };
    let app = TestApp::spawn_on(db, configure).await;
    let outcome = tokio::spawn(body(app.clone())).await;
    app.teardown().await;
    if let Err(err) = outcome {
        if err.is_panic() {
            std::panic::resume_unwind(err.into_panic());
        }
        panic!("test body was cancelled");
    }
}

/// Stops `app` while a PATCH renaming the resource at `path` is held up by the test, and asserts
/// that the stop waits for it: `release` lets the PATCH go on once the stop is seen waiting.
pub async fn stop_while_a_rename_is_in_flight(
    app: &TestApp,
    path: String,
    release: impl Future<Output = ()>,
) {
    let in_flight = {
        let app = app.clone();
        tokio::spawn(async move { app.patch(&path, &json!({"name": "Renamed"})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = {
        let app = app.clone();
        tokio::spawn(async move { app.stop().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the server stopped before its in-flight request finished"
    );
    release.await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.expect(200)["name"], "Renamed");
    stopping.await.unwrap().expect("a clean stop");
}

/// The `id` of a resource's JSON.
#[track_caller]
pub fn id_of(resource: &Value) -> String {
    resource["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {resource}"))
        .to_owned()
}

/// The ids of a page's items, in order.
#[track_caller]
pub fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(id_of)
        .collect()
}

/// The fields a 422 problem names, in order.
#[track_caller]
pub fn fields_of(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("a 422 without errors: {problem}"))
        .iter()
        .map(|error| error["field"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Declares each test once and runs it on SQLite, PostgreSQL, MariaDB/MySQL and MongoDB:
///
/// ```text
/// on_every_backend! {
///     async fn creating_a_user_answers_201(app) { ... }
///
///     #[configure(|config| config.cache.ttl = Duration::ZERO)]
///     async fn reads_without_the_cache(app) { ... }
/// }
/// ```
///
/// Each becomes a module with one `#[tokio::test]` per backend (`sqlite`, `postgres`, `mysql`,
/// `pgbouncer` and `pgbouncer_txn`: PostgreSQL behind PgBouncer in session and in transaction
/// mode, and `mongo`). `#[configure(…)]` adjusts the test
/// server's configuration before it starts (see `run_with`).
#[macro_export]
macro_rules! on_every_backend {
    ($($tests:tt)*) => {
        $crate::on_backends! { [sqlite, postgres, mysql, pgbouncer, pgbouncer_txn, mongo] $($tests)* }
    };
}

/// Like `on_every_backend!`, for tests that reach into the database through SQL (fault injection,
/// seeding with SQL, query plans): SQLite, PostgreSQL and MariaDB/MySQL.
#[macro_export]
macro_rules! on_sql_backends {
    ($($tests:tt)*) => {
        $crate::on_backends! { [sqlite, postgres, mysql, pgbouncer, pgbouncer_txn] $($tests)* }
    };
}

/// Like `on_every_backend!`, on the backends listed first (names as in `test_db!`):
///
/// ```text
/// on_backends! {
///     [postgres, pgbouncer, mysql]
///     #[configure(|config| config.database.statement_timeout = Duration::from_millis(300))]
///     async fn the_statement_timeout_answers_504(app) { ... }
/// }
/// ```
#[macro_export]
macro_rules! on_backends {
    ($backends:tt $($(#[$($attr:tt)*])* async fn $name:ident($app:ident) $body:block)*) => {$(
        $crate::__on_backends! { $backends [] (|_| {}) [$([$($attr)*])*] $name $app $body }
    )*};
}

/// One test of `on_backends!`: sorts its attributes (`#[configure(…)]` is the configuration, the
/// rest go to its module), then declares it. A muncher, because `#[configure(…)]` and
/// `#[$meta:meta]` cannot be told apart in one matcher.
#[doc(hidden)]
#[macro_export]
macro_rules! __on_backends {
    ($backends:tt $meta:tt $configure:tt [[configure($new:expr)] $($attrs:tt)*]
        $name:ident $app:ident $body:block) => {
        $crate::__on_backends! { $backends $meta ($new) [$($attrs)*] $name $app $body }
    };
    ($backends:tt [$($meta:tt)*] $configure:tt [[$($attr:tt)*] $($attrs:tt)*]
        $name:ident $app:ident $body:block) => {
        $crate::__on_backends! {
            $backends [$($meta)* #[$($attr)*]] $configure [$($attrs)*] $name $app $body
        }
    };
    ([$($backend:ident),+ $(,)?] [$($meta:tt)*] ($configure:expr) []
        $name:ident $app:ident $body:block) => {
        $($meta)*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($app: $crate::TestApp) $body

            $($crate::requires! { $backend
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $backend() {
                    $crate::run_on($crate::test_db!($backend), $configure, body).await
                }
            })+
        }
    };
}

/// Runs a test function that takes the test's database (`Option<TestDb>`, `None` when the backend
/// is skipped) once per listed backend, as a module with one `#[tokio::test]` per backend:
///
/// ```text
/// async fn migrations_round_trip(db: Option<TestDb>) { ... }
/// for_backends!([sqlite, postgres, mysql] fn migrations_round_trip);
/// ```
///
/// The tests run on a four-thread runtime unless a test attribute comes first, e.g.
/// `for_backends!(#[tokio::test] [sqlite] fn name)`.
#[macro_export]
macro_rules! for_backends {
    (#[$test:meta] [$($backend:ident),+ $(,)?] fn $name:ident) => {
        mod $name {
            $($crate::requires! { $backend
                #[$test]
                async fn $backend() {
                    super::$name($crate::test_db!($backend)).await
                }
            })+
        }
    };
    ([$($backend:ident),+ $(,)?] fn $name:ident) => {
        $crate::for_backends!(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)] [$($backend),+] fn $name
        );
    };
}

/// A new database for a test on the named backend (`None`: skipped): `sqlite`, `postgres`,
/// `mysql`, `mongo`, or `pgbouncer` (session mode) and `pgbouncer_txn` (transaction mode) for
/// PostgreSQL behind a PgBouncer of the test's own.
#[macro_export]
macro_rules! test_db {
    (sqlite) => {
        $crate::TestDb::create($crate::Backend::Sqlite).await
    };
    (postgres) => {
        $crate::TestDb::create($crate::Backend::Postgres).await
    };
    (mysql) => {
        $crate::TestDb::create($crate::Backend::MySql).await
    };
    (mongo) => {
        $crate::TestDb::create($crate::Backend::Mongo).await
    };
    (pgbouncer) => {
        $crate::TestDb::behind_pgbouncer($crate::pgbouncer::PoolMode::Session).await
    };
    (pgbouncer_txn) => {
        $crate::TestDb::behind_pgbouncer($crate::pgbouncer::PoolMode::Transaction).await
    };
}

/// Like `on_every_backend!`, for tests that need a server database but not SQLite (e.g. fault
/// injection through `pg_terminate_backend`). Each test keeps its own name: one backend, no module.
#[macro_export]
macro_rules! on_postgres {
    ($($tests:tt)*) => {
        $crate::__on_one_backend! { postgres $($tests)* }
    };
}

/// Like `on_postgres!`, for tests of what only MongoDB has (its transactions, its query plans).
#[macro_export]
macro_rules! on_mongo {
    ($($tests:tt)*) => {
        $crate::__on_one_backend! { mongo $($tests)* }
    };
}

/// The tests of `on_postgres!` and `on_mongo!`, on the backend named first (as in `test_db!`).
#[doc(hidden)]
#[macro_export]
macro_rules! __on_one_backend {
    ($backend:ident $($(#[$meta:meta])* async fn $name:ident($app:ident) $body:block)*) => {$(
        $crate::requires! { $backend
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                async fn body($app: $crate::TestApp) $body
                $crate::run_on($crate::test_db!($backend), |_| {}, body).await
            }
        }
    )*};
}

/// Marks the test that follows as ignored, with the reason, when the backend it runs on (named as
/// in `test_db!`) was not configured when the tests were built (see `build.rs`):
///
/// ```text
/// requires! { postgres
///     #[tokio::test]
///     async fn reads_from_postgres() { ... }
/// }
/// ```
///
/// The macros above mark what they generate. A test written by hand is wrapped in it, or states
/// the same attribute itself:
/// `#[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]`.
#[macro_export]
macro_rules! requires {
    (sqlite $($test:tt)*) => {
        $($test)*
    };
    (postgres $($test:tt)*) => {
        #[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
        $($test)*
    };
    (mysql $($test:tt)*) => {
        #[cfg_attr(not(has_mysql), ignore = "TEST_MYSQL_URL is not set")]
        $($test)*
    };
    (mongo $($test:tt)*) => {
        #[cfg_attr(not(has_mongo), ignore = "TEST_MONGODB_URL is not set")]
        $($test)*
    };
    (pgbouncer $($test:tt)*) => {
        #[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
        #[cfg_attr(
            all(has_postgres, not(has_pgbouncer)),
            ignore = "pgbouncer is not installed (or PGBOUNCER does not name it)"
        )]
        $($test)*
    };
    (pgbouncer_txn $($test:tt)*) => {
        #[cfg_attr(not(has_postgres), ignore = "TEST_POSTGRES_URL is not set")]
        #[cfg_attr(
            all(has_postgres, not(has_pgbouncer_txn)),
            ignore = "no PgBouncer 1.21 or later (PGBOUNCER_1_24, or scripts/pgbouncer-1.24.sh)"
        )]
        $($test)*
    };
}

/// The servers' warnings and errors, in the output of the test that ran them: a failing test
/// shows why its server answered as it did. `TEST_SERVER_LOG` sets another filter (`RUST_LOG`'s
/// syntax); the drivers' own statement logging stays off.
fn capture_server_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned());
        let filter = tracing_subscriber::EnvFilter::new(format!("{filter},sqlx=off,sea_orm=off"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    });
}
