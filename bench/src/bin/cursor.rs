//! Reads the service's keyset cursors, so scripts never decode them themselves.
//!
//! ```sh
//! cargo run --release -p bench --bin cursor -- decode users CURSOR
//! ```
//!
//! Prints the row the cursor points after: `<created_at, RFC 3339, microseconds> <id>`.

use std::process::ExitCode;

use api::http::pagination::decode_cursor;
use chrono::SecondsFormat;

const USAGE: &str = "usage: cursor decode RESOURCE CURSOR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [command, resource, cursor] = &args[..] else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if command != "decode" {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match decode_cursor(resource, cursor) {
        Some(key) => {
            let at = key.created_at.to_rfc3339_opts(SecondsFormat::Micros, true);
            println!("{at} {}", key.id);
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("cursor: not a {resource} cursor: {cursor}");
            ExitCode::FAILURE
        }
    }
}
