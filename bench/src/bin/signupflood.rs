//! Does a flood of sign-ups (Argon2id on a bounded queue) leave the rest of the API its latency?
//!
//! ```sh
//! ADMIN_EMAIL=bench-admin@storefront.test ADMIN_PASSWORD=bench-admin-password cargo run -p api &
//! cargo run --release -p bench --bin signupflood -- [--base URL] [--seconds 10] [--readers 16] [--signups 64]
//! ```
//!
//! Phase 1: `readers` loops read `GET /v1/users/{id}` as the admin for `seconds`. Phase 2: the same
//! reads while `signups` loops sign users up without pause (but for the `Retry-After` a 503 asks). Prints the reads' p50/p99 in each
//! phase, their ratio, and how the sign-ups were answered (201 created, 503 `busy`):
//! `signupflood read_p99_ms=… flood_read_p99_ms=… ratio_p99=… signups_201=… signups_503=… other=…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let mut base = "http://127.0.0.1:8080".to_owned();
    let (mut seconds, mut readers, mut signups) = (10_u64, 16_usize, 64_usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--base" => base = value,
            "--seconds" => seconds = value.parse().expect("--seconds: a number"),
            "--readers" => readers = value.parse().expect("--readers: a number"),
            "--signups" => signups = value.parse().expect("--signups: a number"),
            _ => {
                eprintln!(
                    "usage: signupflood [--base URL] [--seconds S] [--readers N] [--signups N]"
                );
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(run(base, Duration::from_secs(seconds), readers, signups));
}

async fn run(base: String, period: Duration, readers: usize, signups: usize) {
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("{base}/v1/sessions"))
        .json(&serde_json::json!({"email": "bench-admin@storefront.test", "password": "bench-admin-password"}))
        .send()
        .await
        .expect("log in")
        .json()
        .await
        .expect("a session");
    let token = login["token"]
        .as_str()
        .expect("a token (ADMIN_EMAIL/ADMIN_PASSWORD set?)")
        .to_owned();
    let path = format!(
        "{base}/v1/users/{}",
        login["user"]["id"].as_str().expect("an id")
    );
    let (p50, p99) = percentiles(reads(&client, &path, &token, readers, period).await);
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let deadline = Instant::now() + period;
    let flood: Vec<_> = (0..signups)
        .map(|worker| {
            let (client, base, counts) = (client.clone(), base.clone(), counts.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    n += 1;
                    let email = format!("flood-{worker}-{n}-{}@example.com", uuid::Uuid::now_v7().simple());
                    let reply = client
                        .post(format!("{base}/v1/users"))
                        .json(&serde_json::json!({"name": "Flood", "email": email, "password": "correct horse battery"}))
                        .send()
                        .await;
                    let status = reply.as_ref().map_or(0, |reply| reply.status().as_u16());
                    // A refused sign-up waits as long as `Retry-After` asks, as a client should.
                    let retry_after = reply
                        .ok()
                        .and_then(|reply| reply.headers().get("retry-after")?.to_str().ok()?.parse().ok())
                        .map(Duration::from_secs);
                    let slot = match status {
                        201 => 0,
                        503 => 1,
                        _ => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                    if let Some(wait) = retry_after {
                        tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
                    }
                }
            })
        })
        .collect();
    let (flood_p50, flood_p99) = percentiles(reads(&client, &path, &token, readers, period).await);
    for worker in flood {
        let _ = worker.await;
    }
    println!(
        "signupflood read_p50_ms={:.2} read_p99_ms={:.2} flood_read_p50_ms={:.2} flood_read_p99_ms={:.2} ratio_p99={:.3} signups_201={} signups_503={} other={}",
        ms(p50),
        ms(p99),
        ms(flood_p50),
        ms(flood_p99),
        flood_p99.as_secs_f64() / p99.as_secs_f64(),
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
        counts[2].load(Ordering::Relaxed),
    );
}

/// `readers` loops of `GET path` for `period`; every latency, and a panic on anything but 200.
async fn reads(
    client: &reqwest::Client,
    path: &str,
    token: &str,
    readers: usize,
    period: Duration,
) -> Vec<Duration> {
    let deadline = Instant::now() + period;
    let loops: Vec<_> = (0..readers)
        .map(|_| {
            let (client, path, token) = (client.clone(), path.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let reply = client
                        .get(&path)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("a read is answered");
                    assert_eq!(reply.status().as_u16(), 200, "a read failed");
                    let _ = reply.bytes().await;
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for latencies in loops {
        all.extend(latencies.await.expect("a reader"));
    }
    all
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
