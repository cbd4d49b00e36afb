//! Swagger UI renders the operations in a real browser, with every asset served by the service
//! (no network beyond it). Needs Debian's `chromium`; skipped without it unless
//! `REQUIRE_CHROMIUM=1`. Leaves a screenshot in `artifacts/docs.png`.

use std::path::PathBuf;
use std::process::Command;

use tests::{Backend, TestApp, run};

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

fn headless(browser: &PathBuf, profile: &std::path::Path) -> Command {
    let mut command = Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--virtual-time-budget=10000",
        "--window-size=1280,2400",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_chromium), ignore = "chromium is not installed")]
async fn swagger_ui_lists_every_operation_offline() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "chromium is required (REQUIRE_CHROMIUM=1) but not installed"
        );
        eprintln!("skipping: chromium is not installed");
        return;
    };
    run(Backend::Sqlite, move |app: TestApp| async move {
        let url = app.url("/docs");
        let profile = std::env::temp_dir().join(format!("sf-chromium-{}", uuid::Uuid::now_v7()));
        let dump = {
            let (browser, profile, url) = (browser.clone(), profile.clone(), url.clone());
            tokio::task::spawn_blocking(move || {
                headless(&browser, &profile)
                    .arg("--dump-dom")
                    .arg(url)
                    .output()
            })
            .await
            .unwrap()
            .expect("run chromium")
        };
        let dom = String::from_utf8_lossy(&dump.stdout);
        // Swagger UI gives each rendered operation the element id `operations-<tag>-<operationId>`.
        for operation in [
            "operations-Sessions-login",
            "operations-Sessions-logout",
            "operations-Users-createUser",
            "operations-Users-getUser",
            "operations-Users-listUsers",
            "operations-Users-updateUser",
            "operations-Users-deleteUser",
            "operations-Products-createProduct",
            "operations-Products-listProducts",
            "operations-Orders-placeOrder",
            "operations-Orders-listUserOrders",
            "operations-Operations-health",
        ] {
            assert!(
                dom.contains(operation),
                "{operation} is not on the rendered page"
            );
        }
        let artifacts = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../artifacts"));
        std::fs::create_dir_all(&artifacts).unwrap();
        let screenshot = artifacts.join("docs.png");
        let shot = tokio::task::spawn_blocking(move || {
            headless(&browser, &profile)
                .arg(format!("--screenshot={}", screenshot.display()))
                .arg(url)
                .output()
        })
        .await
        .unwrap()
        .expect("run chromium");
        assert!(
            shot.status.success(),
            "{}",
            String::from_utf8_lossy(&shot.stderr)
        );
        assert!(artifacts.join("docs.png").exists());
    })
    .await;
}

/// The directory of the Swagger UI driver (`tests/ui`, its packages installed by `npm ci`).
fn ui_driver() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/ui"));
    dir.join("node_modules/playwright-core")
        .exists()
        .then_some(dir)
}

/// Runs the driver against `/docs` and returns the status Swagger UI shows for `getUser`.
async fn status_shown(app: &TestApp, token: &str, browser: &std::path::Path) -> String {
    let dir = ui_driver().expect("the UI driver");
    let output = tokio::process::Command::new("node")
        .arg(dir.join("authorize.mjs"))
        .arg(app.url("/docs"))
        .arg(token)
        .arg(&app.admin_id)
        .env("CHROMIUM", browser)
        .output()
        .await
        .expect("run node");
    assert!(
        output.status.success(),
        "the UI driver failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Swagger UI's Authorize button works: with the token entered there, "Try it out" on a protected
/// operation gets a 200; without it, a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_chromium, has_ui_driver)),
    ignore = "chromium or the UI driver (npm ci in tests/ui) is not installed"
)]
async fn swagger_ui_authorize_reaches_protected_operations() {
    let (Some(browser), Some(_)) = (chromium(), ui_driver()) else {
        assert!(
            std::env::var("REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "chromium and the UI driver (npm ci in tests/ui) are required (REQUIRE_CHROMIUM=1)"
        );
        eprintln!("skipping: chromium or the UI driver (npm ci in tests/ui) is not installed");
        return;
    };
    run(Backend::Sqlite, move |app: TestApp| async move {
        assert_eq!(status_shown(&app, "", &browser).await, "401");
        assert_eq!(status_shown(&app, &app.admin_token, &browser).await, "200");
    })
    .await;
}
