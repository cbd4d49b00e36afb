//! A PostgreSQL high-availability cluster of the test's own, built the way production runs one:
//! etcd, two Patroni nodes in synchronous mode, and HAProxy in front of them, all on loopback
//! ports that were free when it started and in a temporary directory. HAProxy's primary port
//! leads to the node whose Patroni REST API answers `/primary`, its standby port to the one that
//! answers `/replica`; a node that stops answering has its sessions cut.
//!
//! One cluster per test (a failover leaves only one node): `Cluster::start` takes 10-15 s, most
//! of it Patroni's bootstrap and the standby's base backup. Dropping the cluster kills every
//! process and removes the directory; a watcher does the same if the test process dies first.
//!
//! Programs: `patroni`, `patronictl`, `etcd`, `haproxy` on the `PATH`, and PostgreSQL's server
//! binaries in `/usr/lib/postgresql/<major>/bin` (the newest major there; `PG_BINDIR` overrides).
//! As root, Patroni (and so PostgreSQL) runs as the `postgres` user.

use crate::process::{free_port, running_as_root};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};

/// Patroni's timing, kept low for a fast test but valid: Patroni requires
/// `loop_wait + 2 × retry_timeout <= ttl`. A lost leader is replaced within about `TTL`.
const TTL: u32 = 10;
const LOOP_WAIT: u32 = 2;
const RETRY_TIMEOUT: u32 = 4;

/// How long the cluster may take to come up, and a new leader to take over.
const COME_UP: Duration = Duration::from_secs(90);

/// How many new clusters `Cluster::start` tries before it fails the test.
const ATTEMPTS: u32 = 3;

/// How many clusters may be starting at once, across the tests of one process.
const STARTING_AT_ONCE: usize = 2;
static STARTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(STARTING_AT_ONCE);

const SUPERUSER_PASSWORD: &str = "postgres";

/// Why no cluster could be made (the test is then skipped, or fails when required).
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

#[derive(Debug)]
pub struct Node {
    pub name: &'static str,
    /// The node's PostgreSQL.
    pub pg_port: u16,
    /// The node's Patroni REST API.
    pub rest_port: u16,
    config: PathBuf,
    data: PathBuf,
    patroni: Mutex<Option<Child>>,
}

#[derive(Debug)]
pub struct Cluster {
    /// HAProxy's port to the current primary.
    pub primary_port: u16,
    /// HAProxy's port to a streaming standby.
    pub standby_port: u16,
    pub nodes: [Node; 2],
    dir: PathBuf,
    etcd: Mutex<Option<Child>>,
    haproxy: Mutex<Option<Child>>,
    patronictl: PathBuf,
    http: reqwest::Client,
}

/// The programs a cluster needs, or which one is missing.
struct Programs {
    patroni: PathBuf,
    patronictl: PathBuf,
    etcd: PathBuf,
    haproxy: PathBuf,
    pg_bin: PathBuf,
}

impl Programs {
    fn find() -> Result<Self, Unavailable> {
        let on_path = |name: &str| {
            let found = std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
                    .map(|dir| dir.join(name))
                    .find(|candidate| candidate.is_file())
            });
            found.ok_or_else(|| {
                Unavailable(format!(
                    "`{name}` is not installed (.ci/run installs patroni, etcd-server, haproxy)"
                ))
            })
        };
        let pg_bin = match std::env::var_os("PG_BINDIR") {
            Some(dir) => PathBuf::from(dir),
            None => newest_pg_bin().ok_or_else(|| {
                Unavailable("no PostgreSQL server binaries in /usr/lib/postgresql".to_owned())
            })?,
        };
        if !pg_bin.join("postgres").exists() || !pg_bin.join("pg_basebackup").exists() {
            return Err(Unavailable(format!(
                "no PostgreSQL server binaries in {}",
                pg_bin.display()
            )));
        }
        Ok(Self {
            patroni: on_path("patroni")?,
            patronictl: on_path("patronictl")?,
            etcd: on_path("etcd")?,
            haproxy: on_path("haproxy")?,
            pg_bin,
        })
    }
}

fn newest_pg_bin() -> Option<PathBuf> {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    let major = majors.pop()?;
    Some(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")))
}

impl Cluster {
    /// A new cluster with a leader, a synchronous standby and HAProxy routing to both; `None`
    /// (skipped, or a failure under `REQUIRE_ALL_BACKENDS=1`) when a program is missing.
    ///
    /// At most `STARTING_AT_ONCE` clusters start at a time, as bootstrap and base backup are the
    /// heaviest part of a cluster's life. A cluster that has not settled (one leader, the other
    /// node its synchronous standby, HAProxy routing to both) within `COME_UP` is printed with
    /// its logs, torn down, and started afresh, up to `ATTEMPTS` times: a loaded machine can
    /// leave a new Patroni cluster stuck in its bootstrap, which is Patroni's start-up and not
    /// what a test asks about.
    pub async fn start() -> Option<Self> {
        let programs = match Programs::find() {
            Ok(programs) => programs,
            Err(Unavailable(why)) => {
                crate::skip("a Patroni cluster", &why);
                return None;
            }
        };
        let _turn = STARTING
            .acquire()
            .await
            .expect("the semaphore is never closed");
        for attempt in 1..=ATTEMPTS {
            let cluster = Self::launch(&programs).await;
            match cluster.settle(COME_UP).await {
                Ok(()) => return Some(cluster),
                Err(missing) if attempt < ATTEMPTS => {
                    eprintln!(
                        "a new Patroni cluster did not settle in {COME_UP:?} (no {missing}); \
                         starting another{}",
                        cluster.logs()
                    );
                }
                Err(missing) => panic!(
                    "{ATTEMPTS} Patroni clusters in turn did not settle in {COME_UP:?}; the last \
                     had no {missing}{}",
                    cluster.logs()
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts etcd, both Patroni nodes and HAProxy, in a directory of their own.
    async fn launch(programs: &Programs) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sf-patroni-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(dir.join("pids")).expect("make the cluster's directory");
        watch_over(&dir);
        let owner = postgres_owner();
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown the cluster's directory: {status}");
        }

        let etcd_port = free_port();
        let etcd = spawn(
            Command::new(&programs.etcd)
                .args(["--name", "sf", "--data-dir"])
                .arg(dir.join("etcd"))
                .args(etcd_urls(etcd_port, free_port())),
            &dir,
            "etcd",
        );
        let nodes = ["n1", "n2"].map(|name| {
            let node = Node {
                name,
                pg_port: free_port(),
                rest_port: free_port(),
                config: dir.join(format!("{name}.yml")),
                data: dir.join(name),
                patroni: Mutex::new(None),
            };
            let yaml = patroni_config(&node, etcd_port, &dir, &programs.pg_bin);
            std::fs::write(&node.config, yaml).expect("write Patroni's configuration");
            node
        });
        let cluster = Self {
            primary_port: free_port(),
            standby_port: free_port(),
            nodes,
            dir,
            etcd: Mutex::new(Some(etcd)),
            haproxy: Mutex::new(None),
            patronictl: programs.patronictl.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .expect("an HTTP client"),
        };
        cluster.wait_for_etcd(etcd_port).await;
        for node in &cluster.nodes {
            let mut command = Command::new(&programs.patroni);
            command.arg(&node.config).env("HOME", &cluster.dir);
            if let Some((uid, gid)) = owner {
                command.uid(uid).gid(gid);
            }
            let child = spawn(&mut command, &cluster.dir, node.name);
            *node.patroni.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        }
        let haproxy_cfg = cluster.dir.join("haproxy.cfg");
        std::fs::write(&haproxy_cfg, cluster.haproxy_config()).expect("write HAProxy's config");
        let haproxy = spawn(
            Command::new(&programs.haproxy)
                .arg("-db")
                .arg("-f")
                .arg(&haproxy_cfg),
            &cluster.dir,
            "haproxy",
        );
        *cluster.haproxy.lock().unwrap_or_else(|e| e.into_inner()) = Some(haproxy);
        cluster
    }

    /// Waits until one node leads, the other is its synchronous standby, and HAProxy routes to
    /// both, asking afresh each time which node leads; after `within`, names what is missing.
    async fn settle(&self, within: Duration) -> Result<(), &'static str> {
        let started = Instant::now();
        loop {
            let missing = match self.leader().await {
                None => "leader",
                Some(leader) if !self.answers(self.other(leader), "/sync").await => {
                    "synchronous standby"
                }
                Some(_) => {
                    let routed = self.in_recovery(self.primary_port).await == Some(false)
                        && self.in_recovery(self.standby_port).await == Some(true);
                    if routed {
                        return Ok(());
                    }
                    "HAProxy route to both nodes"
                }
            };
            if started.elapsed() > within {
                return Err(missing);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The superuser's URL of `database` through `port`.
    pub fn url(&self, port: u16, database: &str) -> String {
        format!("postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/{database}")
    }

    /// The superuser's URL through HAProxy's primary port.
    pub fn primary_url(&self) -> String {
        self.url(self.primary_port, "postgres")
    }

    /// `database_url` (on the primary port) through HAProxy's standby port instead.
    pub fn standby_url_for(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("a valid database URL");
        url.set_port(Some(self.standby_port)).expect("a port");
        url.into()
    }

    /// The node whose Patroni answers `/primary` now, if any.
    pub async fn leader(&self) -> Option<&Node> {
        for node in &self.nodes {
            if self.answers(node, "/primary").await {
                return Some(node);
            }
        }
        None
    }

    pub fn other(&self, node: &Node) -> &Node {
        if node.name == self.nodes[0].name {
            &self.nodes[1]
        } else {
            &self.nodes[0]
        }
    }

    /// Kills the node's Patroni and its postmaster at once (SIGKILL), as a machine failing would.
    pub fn kill(&self, node: &Node) {
        let postmaster = node.postmaster_pid();
        if let Some(mut patroni) = node
            .patroni
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = patroni.kill();
            let _ = patroni.wait();
        }
        if let Some(pid) = postmaster {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }

    /// Waits until `node`'s Patroni answers `/primary`; returns when it was first seen doing so.
    pub async fn wait_for_leader(&self, node: &Node) -> Instant {
        self.wait_until(
            COME_UP,
            &format!("{} to become the leader", node.name),
            || self.answers(node, "/primary"),
        )
        .await;
        Instant::now()
    }

    /// A planned switchover to `candidate` (`patronictl switchover --force`), which returns once
    /// Patroni has scheduled it; `wait_for_leader` sees it done.
    pub async fn switchover(&self, candidate: &Node) {
        let leader = self.other(candidate);
        let args = ["switchover", "--force", "--leader", leader.name];
        self.patronictl(leader, &args, &["--candidate", candidate.name])
            .await;
    }

    /// Turns Patroni's `synchronous_mode` on or off (`patronictl edit-config`), and waits until
    /// the standby replicates that way.
    pub async fn set_synchronous(&self, synchronous: bool) {
        let leader = self.leader().await.expect("a leader");
        let setting = format!("synchronous_mode={synchronous}");
        self.patronictl(leader, &["edit-config", "--force", "--set"], &[&setting])
            .await;
        let standby = self.other(leader);
        let (path, what) = if synchronous {
            ("/sync", "the standby to become synchronous")
        } else {
            ("/async", "the standby to become asynchronous")
        };
        self.wait_until(COME_UP, what, || self.answers(standby, path))
            .await;
    }

    /// Runs `patronictl` with `node`'s configuration and `args` then `more`; fails the test when
    /// it fails.
    async fn patronictl(&self, node: &Node, args: &[&str], more: &[&str]) {
        let output = tokio::process::Command::new(&self.patronictl)
            .arg("-c")
            .arg(&node.config)
            .args(args)
            .args(more)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run patronictl");
        assert!(
            output.status.success(),
            "patronictl {} failed: {}{}",
            args[0],
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Whether `node`'s Patroni answers `path` with 200.
    async fn answers(&self, node: &Node, path: &str) -> bool {
        let url = format!("http://127.0.0.1:{}{path}", node.rest_port);
        self.http
            .get(url)
            .send()
            .await
            .is_ok_and(|reply| reply.status().as_u16() == 200)
    }

    /// `pg_is_in_recovery()` of the server behind `port`, if one answers.
    async fn in_recovery(&self, port: u16) -> Option<bool> {
        let url = self.url(port, "postgres");
        let conn = tokio::time::timeout(Duration::from_secs(2), Database::connect(url.as_str()))
            .await
            .ok()?
            .ok()?;
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                "SELECT pg_is_in_recovery()",
            ))
            .await;
        let _ = conn.close().await;
        row.ok()??.try_get_by_index::<bool>(0).ok()
    }

    async fn wait_for_etcd(&self, port: u16) {
        let url = format!("http://127.0.0.1:{port}/health");
        self.wait_until(COME_UP, "etcd to answer", || async {
            self.http
                .get(&url)
                .send()
                .await
                .is_ok_and(|reply| reply.status().is_success())
        })
        .await;
    }

    /// Polls `done` every 50 ms; panics with the cluster's logs after `within`.
    async fn wait_until<F, Fut>(&self, within: Duration, what: &str, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        while !done().await {
            if started.elapsed() > within {
                panic!("timed out waiting for {what}{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of each process's log, for a failure message.
    fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["etcd", "n1", "n2", "haproxy"] {
            let log =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!("\n--- {name}.log (last lines)\n"));
            for line in tail.iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// Health checks every 500 ms, two failures to mark a node down, one success to mark it up;
    /// a node marked down has its sessions cut, so no client keeps writing to a demoted primary.
    fn haproxy_config(&self) -> String {
        let servers = |path: &str| {
            let mut lines = format!(
                "  option httpchk GET {path}\n  http-check expect status 200\n  \
                 default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
            );
            for node in &self.nodes {
                lines.push_str(&format!(
                    "  server {} 127.0.0.1:{} check port {}\n",
                    node.name, node.pg_port, node.rest_port
                ));
            }
            lines
        };
        format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  \
             timeout server 1h\n  timeout check 1s\n\
             listen primary\n  bind 127.0.0.1:{primary}\n{to_primary}\
             listen standby\n  bind 127.0.0.1:{standby}\n{to_standby}",
            primary = self.primary_port,
            standby = self.standby_port,
            to_primary = servers("/primary"),
            to_standby = servers("/replica"),
        )
    }

    fn stop(&self) {
        for child in [&self.haproxy, &self.etcd]
            .into_iter()
            .chain(self.nodes.iter().map(|node| &node.patroni))
        {
            if let Some(mut child) = child.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Patroni starts each postmaster in a session of its own: it outlives Patroni unless
        // stopped itself (SIGQUIT: immediate shutdown, which takes its backends with it).
        let postmasters: Vec<String> = self.nodes.iter().filter_map(Node::postmaster_pid).collect();
        for pid in &postmasters {
            let _ = Command::new("kill").args(["-QUIT", pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && postmasters.iter().any(|pid| alive(pid)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Node {
    fn postmaster_pid(&self) -> Option<String> {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pidfile
            .lines()
            .next()
            .map(str::to_owned)
            .filter(|pid| alive(pid))
    }
}

fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// etcd of one member, listening for clients and peers on loopback only.
fn etcd_urls(client: u16, peer: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client}");
    let peer = format!("http://127.0.0.1:{peer}");
    [
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("sf={peer}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// One node's Patroni configuration. `synchronous_mode`: a commit is acknowledged only once the
/// synchronous standby has it, and only that standby may be promoted, so a failover loses no
/// acknowledged write.
fn patroni_config(node: &Node, etcd_port: u16, dir: &Path, pg_bin: &Path) -> String {
    format!(
        "scope: sf\n\
         name: {name}\n\
         restapi:\n  listen: 127.0.0.1:{rest}\n  connect_address: 127.0.0.1:{rest}\n\
         etcd3:\n  hosts: 127.0.0.1:{etcd_port}\n\
         bootstrap:\n  dcs:\n    ttl: {TTL}\n    loop_wait: {LOOP_WAIT}\n    \
         retry_timeout: {RETRY_TIMEOUT}\n    synchronous_mode: true\n  \
         initdb:\n  - encoding: UTF8\n  - locale: C\n  \
         pg_hba:\n  - local all all trust\n  \
         - host replication replicator 127.0.0.1/32 scram-sha-256\n  \
         - host all all 127.0.0.1/32 scram-sha-256\n\
         postgresql:\n  listen: 127.0.0.1:{pg}\n  connect_address: 127.0.0.1:{pg}\n  \
         data_dir: {data}\n  bin_dir: {bin}\n  pgpass: {dir}/{name}.pgpass\n  \
         authentication:\n    superuser:\n      username: postgres\n      \
         password: {SUPERUSER_PASSWORD}\n    \
         replication:\n      username: replicator\n      password: replicator\n  \
         parameters:\n    unix_socket_directories: '{dir}'\n    shared_buffers: 32MB\n",
        name = node.name,
        rest = node.rest_port,
        pg = node.pg_port,
        data = node.data.display(),
        bin = pg_bin.display(),
        dir = dir.display(),
    )
}

/// The `postgres` user's ids when this process is root: PostgreSQL refuses to run as root.
fn postgres_owner() -> Option<(u32, u32)> {
    if !running_as_root() {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Starts `command` with its output in `<dir>/<name>.log`, and notes its pid for the watcher.
fn spawn(command: &mut Command, dir: &Path, name: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("create a log");
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
    let _ = std::fs::write(dir.join("pids").join(name), child.id().to_string());
    child
}

/// Once this process has exited without dropping the cluster (a panic in a test's setup that
/// aborted, a kill), stops what it started and removes its directory.
fn watch_over(dir: &Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null && [ -d '{dir}' ]; do sleep 1; done; \
         [ -d '{dir}' ] || exit 0; \
         for f in '{dir}'/pids/*; do kill -KILL \"$(cat \"$f\")\"; done; \
         for n in n1 n2; do pid=$(head -n 1 '{dir}'/$n/postmaster.pid 2>/dev/null) \
           && kill -QUIT \"$pid\"; done; \
         sleep 3; rm -rf '{dir}'",
        me = std::process::id(),
        dir = dir.display(),
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
