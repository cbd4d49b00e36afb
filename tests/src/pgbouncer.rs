//! A PgBouncer of the test's own in front of the test PostgreSQL: its own port, configuration and
//! password file in a temporary directory, stopped with the test's database.
//!
//! PgBouncer 1.21 and later carry protocol-level prepared statements across server connections
//! (`max_prepared_statements`), which the service's driver needs in transaction mode; with such a
//! PgBouncer the tests run in transaction mode. An older one (Debian 12 ships 1.18) can only
//! serve this service in session mode, so that is what runs there (the README explains why).
//! `PGBOUNCER` names the binary (default: `pgbouncer` on the `PATH`).

use crate::process::{free_port, running_as_root};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The first PgBouncer that tracks prepared statements in transaction mode.
const PREPARED_STATEMENTS_SINCE: (u32, u32) = (1, 21);

#[derive(Debug)]
pub struct PgBouncer {
    pub port: u16,
    pub pool_mode: &'static str,
    child: Mutex<Option<Child>>,
    dir: PathBuf,
}

/// Why no PgBouncer could be started (the test is then skipped, or fails when required).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl PgBouncer {
    /// Starts PgBouncer for `database` on the server of `upstream` (a URL with user and password).
    pub async fn start(upstream: &url::Url, database: &str) -> Result<Self, Unavailable> {
        let binary = std::env::var("PGBOUNCER").unwrap_or_else(|_| "pgbouncer".to_owned());
        let version = version(&binary).await?;
        let pool_mode = if version >= PREPARED_STATEMENTS_SINCE {
            "transaction"
        } else {
            "session"
        };
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pgbouncer-{database}"));
        std::fs::create_dir_all(&dir).map_err(|err| Unavailable(err.to_string()))?;
        let user = upstream.username();
        let password = upstream.password().unwrap_or_default();
        let host = upstream.host_str().unwrap_or("127.0.0.1");
        let upstream_port = upstream.port().unwrap_or(5432);
        // Transaction mode multiplexes onto fewer server connections than clients; session mode
        // needs one per client (two instances of 20, plus the tests' own).
        let pool_size = if pool_mode == "transaction" { 10 } else { 60 };
        let prepared = if pool_mode == "transaction" {
            "max_prepared_statements = 200\n"
        } else {
            ""
        };
        let ini = format!(
            "[databases]\n\
             {database} = host={host} port={upstream_port} dbname={database}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {auth}\n\
             pool_mode = {pool_mode}\n\
             {prepared}\
             default_pool_size = {pool_size}\n\
             max_client_conn = 500\n",
            auth = dir.join("users.txt").display(),
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
