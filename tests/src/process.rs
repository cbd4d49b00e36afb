//! What the harness's helper servers (PgBouncer, the streaming replica) need of the machine.

/// A port free right now, for a server the harness starts and tells which port to use.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound address").port()
}

/// PostgreSQL and PgBouncer refuse to run as root: the harness then runs them as `postgres`.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .and_then(|line| line.split_whitespace().nth(1))
            == Some("0")
    })
}
