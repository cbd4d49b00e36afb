//! A PgBouncer of the test's own in front of the test PostgreSQL: its own port, configuration and
//! password file in a temporary directory, stopped with the test's database.
//!
//! Two set-ups are tested (the README's "Behind PgBouncer" explains both):
//! - session mode, on the PgBouncer named by `PGBOUNCER` (default: `pgbouncer` on the `PATH`;
//!   Debian 12 ships 1.18, which can serve this service in no other mode);
//! - transaction mode with `max_prepared_statements`, on PgBouncer 1.21 or later, which carries
//!   the driver's named prepared statements across server connections: the binary named by
//!   `PGBOUNCER_1_24`, default `/opt/pgbouncer-1.24/bin/pgbouncer` (what
//!   `scripts/pgbouncer-1.24.sh` builds).

use crate::process::{free_port, running_as_root};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The first PgBouncer that tracks prepared statements in transaction mode.
const PREPARED_STATEMENTS_SINCE: (u32, u32) = (1, 21);

/// Where `scripts/pgbouncer-1.24.sh` installs PgBouncer 1.24 by default.
const PGBOUNCER_1_24_PATH: &str = "/opt/pgbouncer-1.24/bin/pgbouncer";

/// How PgBouncer hands server connections to its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for as long as it is open.
    Session,
    /// A server connection per transaction (and per statement outside one).
    Transaction,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }

    /// The binary to run for this mode.
    fn binary(self) -> String {
        let (var, default) = match self {
            PoolMode::Session => ("PGBOUNCER", "pgbouncer"),
            PoolMode::Transaction => ("PGBOUNCER_1_24", PGBOUNCER_1_24_PATH),
        };
        std::env::var(var)
            .ok()
            .filter(|binary| !binary.is_empty())
            .unwrap_or_else(|| default.to_owned())
    }
}

#[derive(Debug)]
pub struct PgBouncer {
    pub port: u16,
    pub pool_mode: PoolMode,
    child: Mutex<Option<Child>>,
    dir: PathBuf,
}

/// Why no PgBouncer could be started (the test is then skipped, or fails when required).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl PgBouncer {
    /// Starts PgBouncer in `pool_mode` for `database` on the server of `upstream` (a URL with
    /// user and password).
    pub async fn start(
        upstream: &url::Url,
        database: &str,
        pool_mode: PoolMode,
    ) -> Result<Self, Unavailable> {
        let binary = pool_mode.binary();
        let version = version(&binary).await.map_err(|Unavailable(why)| {
            Unavailable(match pool_mode {
                PoolMode::Session => why,
                PoolMode::Transaction => format!(
                    "{why} (transaction mode needs PgBouncer 1.21 or later: build it with \
                     scripts/pgbouncer-1.24.sh or name it in PGBOUNCER_1_24)"
                ),
            })
        })?;
        if pool_mode == PoolMode::Transaction && version < PREPARED_STATEMENTS_SINCE {
            let (major, minor) = version;
            return Err(Unavailable(format!(
                "{binary} is PgBouncer {major}.{minor}; transaction mode needs 1.21 or later \
                 (max_prepared_statements)"
            )));
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pgbouncer-{database}"));
        std::fs::create_dir_all(&dir).map_err(|err| Unavailable(err.to_string()))?;
        let user = upstream.username();
        let password = upstream.password().unwrap_or_default();
        let host = upstream.host_str().unwrap_or("127.0.0.1");
        let upstream_port = upstream.port().unwrap_or(5432);
        // Transaction mode multiplexes onto fewer server connections than clients; session mode
        // needs one per client (two instances of 20, plus the tests' own).
        let (pool_size, prepared) = match pool_mode {
            PoolMode::Transaction => (10, "max_prepared_statements = 200\n"),
            PoolMode::Session => (60, ""),
        };
        // `server_login_retry`: a server that refused a login (no primary during a failover) is
        // tried again after a second, not the default 15.
        let ini = format!(
            "[databases]\n\
             {database} = host={host} port={upstream_port} dbname={database}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {auth}\n\
             pool_mode = {mode}\n\
             {prepared}\
             default_pool_size = {pool_size}\n\
             max_client_conn = 500\n\
             server_login_retry = 1\n",
            auth = dir.join("users.txt").display(),
            mode = pool_mode.as_str(),
        );
        let written = std::fs::write(dir.join("pgbouncer.ini"), ini).and_then(|()| {
            std::fs::write(
                dir.join("users.txt"),
                format!("\"{user}\" \"{password}\"\n"),
            )
        });
        written.map_err(|err| Unavailable(err.to_string()))?;
        let log = std::fs::File::create(dir.join("pgbouncer.log"))
            .map_err(|err| Unavailable(err.to_string()))?;
        let mut command = Command::new(&binary);
        // PgBouncer refuses to run as root.
        if running_as_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| Unavailable(format!("cannot run {binary}: {err}")))?;
        let bouncer = Self {
            port,
            pool_mode,
            child: Mutex::new(Some(child)),
            dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(bouncer);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default();
        bouncer.stop();
        Err(Unavailable(format!("PgBouncer did not come up: {log}")))
    }

    /// Stops PgBouncer and removes its directory.
    pub fn stop(&self) {
        if let Ok(mut child) = self.child.lock()
            && let Some(mut child) = child.take()
        {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `PgBouncer 1.18.0` → (1, 18).
async fn version(binary: &str) -> Result<(u32, u32), Unavailable> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .await
        .map_err(|err| Unavailable(format!("cannot run {binary}: {err}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed = text
        .split_whitespace()
        .nth(1)
        .and_then(|version| {
            let mut parts = version.split('.').map(str::parse::<u32>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        })
        .ok_or_else(|| Unavailable(format!("unexpected version line: {text}")))?;
    Ok(parsed)
}
