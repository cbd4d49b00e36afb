//! How many Argon2id hashes per second this machine computes with the service's parameters
//! (`api::domain::Hasher::params`: OWASP's recommendation).
//!
//! ```sh
//! cargo run --release -p bench --bin hashrate -- [--seconds 5] [--threads 1]
//! ```
//!
//! Each thread hashes one password after another with a fresh random salt, as `POST /v1/users`
//! does, until the time is up. Prints `hashrate threads=… hashes=… seconds=… per_second=…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Version};

fn main() {
    let mut seconds = 5.0_f64;
    let mut threads = 1_usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--seconds" => seconds = value.parse().expect("--seconds: a number"),
            "--threads" => threads = value.parse().expect("--threads: a number"),
            _ => {
                eprintln!("usage: hashrate [--seconds S] [--threads N]");
                std::process::exit(2);
            }
        }
    }
    let params = api::domain::Hasher::params().expect("valid Argon2 parameters");
    let stop = Arc::new(AtomicBool::new(false));
    let hashes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, hashes, params) = (stop.clone(), hashes.clone(), params.clone());
            std::thread::spawn(move || {
                let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                while !stop.load(Ordering::Relaxed) {
                    let salt = SaltString::generate(&mut OsRng);
                    argon2
                        .hash_password(b"correct horse battery staple", &salt)
                        .expect("hashing succeeds");
                    hashes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker thread");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = hashes.load(Ordering::Relaxed);
    println!(
        "hashrate threads={threads} hashes={count} seconds={elapsed:.2} per_second={:.1}",
        count as f64 / elapsed
    );
}
