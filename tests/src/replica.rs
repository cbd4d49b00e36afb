//! A streaming replica of the test PostgreSQL, of the tests' own: a base backup of the server
//! (`pg_basebackup -R`) in a temporary directory, run by a second postmaster on a free port,
//! replaying with `recovery_min_apply_delay` so that a read from it right after a write is
//! reliably stale. One per test binary, made on first use (a base backup takes a second or
//! more), and shut down by a watcher once the test process has exited.
//!
//! The replica streams through a replication slot of its own, so that the primary keeps the WAL
//! it has not received yet (a busy server recycles segments within seconds, and the replica is
//! stopped and started again by a test). The watcher drops the slot with the replica; a slot
//! left behind by a test process that died before its watcher could act is dropped by the next
//! run (its name carries the process id).
//!
//! The server's binaries are Debian's (`/usr/lib/postgresql/<major>/bin`, the major version of the
//! running server; `PG_BINDIR` overrides). The server must accept replication connections from
//! 127.0.0.1 (`.ci/run` adds the pg_hba.conf entry). PostgreSQL refuses to run as root, so as
//! root the replica runs as the `postgres` user.

use crate::process::{free_port, running_as_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use tokio::sync::OnceCell;

/// How long the replica waits before applying each commit it receives.
pub const APPLY_DELAY: Duration = Duration::from_millis(300);

#[derive(Debug)]
pub struct Replica {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Serialises stopping and starting.
    lifecycle: Mutex<()>,
}

/// Why no replica could be made (the test is then skipped, or fails when required).
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

static SHARED: OnceCell<Result<Replica, Unavailable>> = OnceCell::const_new();

impl Replica {
    /// The replica of the server at `primary` (an admin URL with user and password), made once
    /// per test binary.
    pub async fn shared(primary: &url::Url) -> Result<&'static Replica, Unavailable> {
        let made = SHARED.get_or_init(|| Self::make(primary.clone())).await;
        made.as_ref().map_err(Clone::clone)
    }

    async fn make(primary: url::Url) -> Result<Self, Unavailable> {
        let fail = |what: &str, err: &dyn std::fmt::Display| Unavailable(format!("{what}: {err}"));
        let admin = Database::connect(primary.as_str())
            .await
            .map_err(|err| fail("the primary is unreachable", &err))?;
        // A hot standby needs at least the primary's values of these.
        let mut settings = Vec::new();
        for name in [
            "max_connections",
            "max_worker_processes",
            "max_wal_senders",
            "max_prepared_transactions",
            "max_locks_per_transaction",
        ] {
            let row = admin
                .query_one_raw(sea_orm::Statement::from_string(
                    admin.get_database_backend(),
                    format!("SELECT current_setting('{name}')"),
                ))
                .await
                .map_err(|err| fail("cannot read the primary's settings", &err))?
                .ok_or_else(|| Unavailable(format!("no value for {name}")))?;
            let value: String = row
                .try_get_by_index(0)
                .map_err(|err| fail("cannot read the primary's settings", &err))?;
            settings.push(format!("{name} = {value}"));
        }
        let version = admin
            .query_one_raw(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                "SELECT current_setting('server_version_num')::int / 10000",
            ))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get_by_index::<i32>(0).ok())
            .ok_or_else(|| Unavailable("cannot read the primary's version".to_owned()))?;
        drop_abandoned_slots(&admin).await;
        let _ = admin.close().await;
        let bin = std::env::var("PG_BINDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")));
        if !bin.join("postgres").exists() || !bin.join("pg_basebackup").exists() {
            return Err(Unavailable(format!(
                "no PostgreSQL {version} server binaries in {}",
                bin.display()
            )));
        }

        let dir =
            std::env::temp_dir().join(format!("sf-replica-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).map_err(|err| fail("cannot make a directory", &err))?;
        let data = dir.join("data");
        let port = free_port();
        let slot = format!(
            "{SLOT_PREFIX}{}_{}",
            std::process::id(),
            &uuid::Uuid::now_v7().simple().to_string()[24..]
        );
        watch_over(&dir, &slot, &primary);
        if running_as_root() {
            run("chown", &["postgres:postgres".as_ref(), dir.as_os_str()])?;
        }
        let host = primary.host_str().unwrap_or("127.0.0.1").to_owned();
        let primary_port = primary.port().unwrap_or(5432).to_string();
        let backup = as_postgres(&bin.join("pg_basebackup"))
            .args(["-R", "-C", "-S", &slot, "-X", "stream", "-c", "fast", "-D"])
            .arg(&data)
            .args(["-h", &host, "-p", &primary_port, "-U", primary.username()])
            .env("PGPASSWORD", primary.password().unwrap_or_default())
            .stdin(Stdio::null())
            .output()
            .map_err(|err| fail("cannot run pg_basebackup", &err))?;
        if !backup.status.success() {
            let said = String::from_utf8_lossy(&backup.stderr).trim().to_owned();
            return Err(Unavailable(format!(
                "the primary refused a base backup (is replication from 127.0.0.1 allowed in \
                 pg_hba.conf? .ci/run adds it): {said}"
            )));
        }
        let conf = format!(
            "port = {port}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{dir}'\n\
             hba_file = '{data}/pg_hba.conf'\n\
             ident_file = '{data}/pg_ident.conf'\n\
             hot_standby = on\n\
             recovery_min_apply_delay = '{delay}ms'\n\
             archive_mode = off\n\
             shared_buffers = '32MB'\n\
             logging_collector = off\n\
             {settings}\n",
            dir = dir.display(),
            data = data.display(),
            delay = APPLY_DELAY.as_millis(),
            settings = settings.join("\n"),
        );
        let hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n";
        let written = std::fs::write(data.join("postgresql.conf"), conf)
            .and_then(|()| std::fs::write(data.join("pg_hba.conf"), hba))
            .and_then(|()| std::fs::write(data.join("pg_ident.conf"), ""));
        written.map_err(|err| fail("cannot configure the replica", &err))?;
        if running_as_root() {
            run(
                "chown",
                &["-R".as_ref(), "postgres:postgres".as_ref(), dir.as_os_str()],
            )?;
        }
        let replica = Self {
            port,
            dir,
            bin,
            lifecycle: Mutex::new(()),
        };
        replica.start().await?;
        Ok(replica)
    }

    /// The URL of `database_url`'s database (on the primary) on this replica.
    pub fn url_for(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("a valid database URL");
        url.set_port(Some(self.port)).expect("a port");
        url.into()
    }

    /// Starts the postmaster and waits until it answers queries.
    pub async fn start(&self) -> Result<(), Unavailable> {
        {
            let _serial = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("replica.log"))
                .map_err(|err| Unavailable(format!("cannot open the replica's log: {err}")))?;
            as_postgres(&self.bin.join("postgres"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|err| Unavailable(format!("cannot start the replica: {err}")))?;
        }
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        for _ in 0..300 {
            if let Ok(conn) = Database::connect(url.as_str()).await {
                let answered = conn.execute_unprepared("SELECT 1").await.is_ok();
                let _ = conn.close().await;
                if answered {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("replica.log")).unwrap_or_default();
        Err(Unavailable(format!("the replica did not come up: {log}")))
    }

    /// Stops the postmaster (fast shutdown: open connections are closed) and waits until it has.
    pub async fn stop(&self) {
        {
            let _serial = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pid) = self.postmaster_pid() {
                let _ = Command::new("kill").args(["-INT", &pid]).status();
            }
        }
        for _ in 0..300 {
            if self.postmaster_pid().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the replica did not stop");
    }

    fn postmaster_pid(&self) -> Option<String> {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        pidfile.lines().next().map(str::to_owned)
    }
}

/// `program`, run as the `postgres` user when this process is root.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), Unavailable> {
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|err| Unavailable(format!("cannot run {program}: {err}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Unavailable(format!("{program} failed: {status}")))
    }
}

/// Names the slots of these replicas: `sf_replica_<pid>_<random>`.
const SLOT_PREFIX: &str = "sf_replica_";

/// Drops the inactive slots of test processes that no longer run.
async fn drop_abandoned_slots(admin: &sea_orm::DatabaseConnection) {
    let backend = admin.get_database_backend();
    let Ok(rows) = admin
        .query_all_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT slot_name::text FROM pg_replication_slots WHERE NOT active",
        ))
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get_by_index::<String>(0) else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(SLOT_PREFIX)
            .and_then(|rest| rest.split('_').next())
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = admin
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                "SELECT pg_drop_replication_slot($1)",
                [name.into()],
            ))
            .await;
    }
}

/// Once this process has exited, stops the replica, drops its slot on the primary and removes its
/// directory: statics are never dropped, so nothing in this process could.
fn watch_over(dir: &Path, slot: &str, primary: &url::Url) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
         pid=$(head -n 1 '{dir}/data/postmaster.pid' 2>/dev/null) && kill -INT \"$pid\"; \
         for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e '{dir}/data/postmaster.pid' ] || break; sleep 1; done; \
         psql -qtAX -h '{host}' -p {port} -U '{user}' -d postgres \
           -c \"SELECT pg_drop_replication_slot('{slot}')\"; \
         rm -rf '{dir}'",
        me = std::process::id(),
        dir = dir.display(),
        host = primary.host_str().unwrap_or("127.0.0.1"),
        port = primary.port().unwrap_or(5432),
        user = primary.username(),
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .env("PGPASSWORD", primary.password().unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
