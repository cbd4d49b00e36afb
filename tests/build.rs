//! Tells the tests which backends and tools this machine has, as cfgs, so that a test that cannot
//! run here is reported as ignored with its reason (`cargo test` counts it) instead of passing
//! without having run. `REQUIRE_ALL_BACKENDS=1` (and `REQUIRE_CHROMIUM=1` for the browser tests)
//! declares everything present: the tests then run, and whatever is missing fails them.
//!
//! What cannot be known here (a server that does not answer, a replica the server refuses) is
//! still found at run time: the test then says why on stderr and passes, or fails when required.

use std::path::PathBuf;

fn main() {
    let require_all = flag("REQUIRE_ALL_BACKENDS");
    emit("has_postgres", require_all || set("TEST_POSTGRES_URL"));
    emit("has_mysql", require_all || set("TEST_MYSQL_URL"));
    emit("has_mongo", require_all || set("TEST_MONGODB_URL"));
    emit("has_nats", require_all || set("TEST_NATS_URL"));
    emit("has_pgbouncer", require_all || pgbouncer_installed());
    emit(
        "has_pgbouncer_txn",
        require_all || pgbouncer_1_24_installed(),
    );
    emit("has_patroni", require_all || patroni_installed());
    let require_chromium = flag("REQUIRE_CHROMIUM");
    emit("has_chromium", require_chromium || chromium_installed());
    emit("has_ui_driver", require_chromium || ui_driver_installed());
}

fn emit(cfg: &str, present: bool) {
    println!("cargo::rustc-check-cfg=cfg({cfg})");
    if present {
        println!("cargo::rustc-cfg={cfg}");
    }
}

fn var(name: &str) -> Option<String> {
    println!("cargo::rerun-if-env-changed={name}");
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn set(name: &str) -> bool {
    var(name).is_some()
}

fn flag(name: &str) -> bool {
    var(name).as_deref() == Some("1")
}

/// `PGBOUNCER`, or `pgbouncer` on the `PATH`, as `tests/src/pgbouncer.rs` runs it.
fn pgbouncer_installed() -> bool {
    let program = var("PGBOUNCER").unwrap_or_else(|| "pgbouncer".to_owned());
    if program.contains('/') {
        return installed(&[PathBuf::from(program)]);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates: Vec<PathBuf> = std::env::split_paths(&path)
        .map(|dir| dir.join(&program))
        .collect();
    installed(&candidates)
}

/// `PGBOUNCER_1_24`, or where `scripts/pgbouncer-1.24.sh` builds it, as `tests/src/pgbouncer.rs`
/// runs it for transaction mode.
fn pgbouncer_1_24_installed() -> bool {
    let program =
        var("PGBOUNCER_1_24").unwrap_or_else(|| "/opt/pgbouncer-1.24/bin/pgbouncer".to_owned());
    installed(&[PathBuf::from(program)])
}

/// What `tests/src/patroni.rs` runs a cluster with: Patroni, etcd and HAProxy.
fn patroni_installed() -> bool {
    ["patroni", "patronictl", "etcd", "haproxy"]
        .iter()
        .all(|name| {
            installed(&[
                PathBuf::from("/usr/bin").join(name),
                PathBuf::from("/usr/sbin").join(name),
            ])
        })
}

/// Where `tests/tests/docs_ui.rs` looks for Debian's Chromium.
fn chromium_installed() -> bool {
    installed(&[
        PathBuf::from("/usr/bin/chromium"),
        PathBuf::from("/usr/bin/chromium-browser"),
    ])
}

/// The Swagger UI driver's packages, installed by `npm ci` in `tests/ui`.
fn ui_driver_installed() -> bool {
    installed(&[PathBuf::from(
        "ui/node_modules/playwright-core/package.json",
    )])
}

/// Whether one of `candidates` exists. Cargo runs this script again when the one found changes or
/// goes, or, when none is found, when a directory they would be in changes (an install adds an
/// entry): watching a path that does not exist would run it on every build.
fn installed(candidates: &[PathBuf]) -> bool {
    if let Some(found) = candidates.iter().find(|path| path.exists()) {
        println!("cargo::rerun-if-changed={}", found.display());
        return true;
    }
    for candidate in candidates {
        if let Some(dir) = candidate.ancestors().skip(1).find(|dir| dir.is_dir()) {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
    }
    false
}
