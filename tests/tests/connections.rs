//! The HTTP connection itself: what a client may expect of a kept-alive connection.

use std::time::Duration;

use tests::{Backend, TestApp, run_with};

/// The body limit of this test's server: small, so that a body over it is cheap to send.
const LIMIT: usize = 64 * 1024;

/// An error answered before the request's body was read (401, 413, 415) leaves the connection
/// usable: the next request on it is answered, whether the server drained the body or said
/// `Connection: close`. The bodies are larger than the server's first read of a request, so
/// without either the server would close the connection behind the client's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_early_error_leaves_the_connection_usable() {
    run_with(
        Backend::Sqlite,
        |config| config.max_body_bytes = LIMIT,
        |app: TestApp| async move {
            // One connection, reused for every request while it stays open.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client");
            let bearer = format!("Bearer {}", app.admin_token);
            let under_limit = vec![b' '; LIMIT / 2];
            let over_limit = vec![b' '; LIMIT * 2];
            let follow_up = app.url(&format!("/v1/users/{}", app.admin_id));
            for round in 0..300 {
                let (expected, early) = match round % 3 {
                    0 => (
                        415,
                        client
                            .post(app.url("/v1/products"))
                            .header("authorization", &bearer)
                            .header("content-type", "text/plain")
                            .body(under_limit.clone()),
                    ),
                    1 => (
                        401,
                        client
                            .post(app.url("/v1/products"))
                            .header("content-type", "application/json")
                            .body(under_limit.clone()),
                    ),
                    _ => (
                        413,
                        client
                            .post(app.url("/v1/products"))
                            .header("authorization", &bearer)
                            .header("content-type", "application/json")
                            .body(over_limit.clone()),
                    ),
                };
                let answer = early
                    .send()
                    .await
                    .unwrap_or_else(|err| panic!("round {round}: the {expected} failed: {err:?}"));
                assert_eq!(answer.status().as_u16(), expected, "round {round}");
                answer.bytes().await.expect("the error's body");
                let next = client
                    .get(&follow_up)
                    .header("authorization", &bearer)
                    .send()
                    .await
                    .unwrap_or_else(|err| {
                        panic!("round {round}: the request after a {expected} failed: {err:?}")
                    });
                assert_eq!(next.status().as_u16(), 200, "round {round}");
                next.bytes().await.expect("the user's body");
            }
        },
    )
    .await;
}
