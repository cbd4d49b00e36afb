//! Login timing parity: a wrong password and an unknown email must cost the same, so the time of
//! an answer says nothing about whether an account exists.
//!
//! ```sh
//! LOGIN_MAX_FAILURES=100000 LOGIN_MAX_FAILURES_PER_ADDRESS=100000 cargo run -p api &
//! cargo run --release -p bench --bin logintiming -- [--base http://127.0.0.1:8080] [--rounds 200]
//! ```
//!
//! Signs one user up, then alternates failed logins of the two kinds, one at a time, and prints
//! the median and 90th percentile of each and their ratio:
//! `logintiming rounds=… unknown_p50_ms=… wrong_p50_ms=… ratio_p50=… unknown_p90_ms=… wrong_p90_ms=…`.

use std::time::{Duration, Instant};

fn main() {
    let mut base = "http://127.0.0.1:8080".to_owned();
    let mut rounds = 200_usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--base" => base = value,
            "--rounds" => rounds = value.parse().expect("--rounds: a number"),
            _ => {
                eprintln!("usage: logintiming [--base URL] [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(measure(&base, rounds));
}

async fn measure(base: &str, rounds: usize) {
    let client = reqwest::Client::new();
    let email = format!("timing-{}@example.com", uuid::Uuid::now_v7().simple());
    let password = "the right password";
    let created = client
        .post(format!("{base}/v1/users"))
        .json(&serde_json::json!({"name": "Timing", "email": email, "password": password}))
        .send()
        .await
        .expect("sign up");
    assert_eq!(created.status().as_u16(), 201, "sign-up failed");
    let mut unknown = Vec::with_capacity(rounds);
    let mut wrong = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let stranger = format!(
            "nobody-{round}-{}@example.com",
            uuid::Uuid::now_v7().simple()
        );
        unknown.push(attempt(&client, base, &stranger, password).await);
        wrong.push(attempt(&client, base, &email, "not the password").await);
    }
    let (unknown_p50, unknown_p90) = percentiles(&mut unknown);
    let (wrong_p50, wrong_p90) = percentiles(&mut wrong);
    println!(
        "logintiming rounds={rounds} unknown_p50_ms={:.2} wrong_p50_ms={:.2} ratio_p50={:.3} unknown_p90_ms={:.2} wrong_p90_ms={:.2}",
        ms(unknown_p50),
        ms(wrong_p50),
        wrong_p50.as_secs_f64() / unknown_p50.as_secs_f64(),
        ms(unknown_p90),
        ms(wrong_p90),
    );
}

/// One failed login; panics on anything but the 401 every failed login must get.
async fn attempt(client: &reqwest::Client, base: &str, email: &str, password: &str) -> Duration {
    let started = Instant::now();
    let reply = client
        .post(format!("{base}/v1/sessions"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .expect("a login is answered");
    let status = reply.status().as_u16();
    let _ = reply.bytes().await;
    let elapsed = started.elapsed();
    assert_eq!(
        status, 401,
        "a failed login answered {status} (raise the login limits)"
    );
    elapsed
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
