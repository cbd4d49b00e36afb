//! A TCP proxy between the service and its database that a test can cut and restore, to make the
//! database unreachable without stopping a server other tests share, or arm to lose the answer to
//! one message (a COMMIT whose outcome the client never hears).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes whose next sighting towards the server loses the server's answer, bytes whose every
/// sighting does, and how many answers were lost so.
#[derive(Default)]
struct Trap {
    needle: Option<&'static [u8]>,
    every: Option<&'static [u8]>,
    sprung: usize,
}

impl Trap {
    /// Whether `sent` springs the trap (and disarms a one-shot needle).
    fn springs(&mut self, sent: &[u8]) -> bool {
        let found = |needle: &[u8]| sent.windows(needle.len()).any(|w| w == needle);
        if self.needle.is_some_and(found) {
            self.needle = None;
        } else if !self.every.is_some_and(found) {
            return false;
        }
        self.sprung += 1;
        true
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped on every cut, so open connections close.
    cuts: watch::Sender<u64>,
    trap: Arc<Mutex<Trap>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards connections on a random local port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let trap = Arc::new(Mutex::new(Trap::default()));
        let task = {
            let up = up.clone();
            let cuts = cuts.clone();
            let trap = Arc::clone(&trap);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client); // refused, as far as the client can tell
                        continue;
                    }
                    let mut cut = cuts.subscribe();
                    let trap = Arc::clone(&trap);
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            () = forward(client, server, trap) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            addr,
            up,
            cuts,
            trap,
            task,
        }
    }

    /// The next message towards the server that contains `needle` reaches the server, whose
    /// answer is then dropped and the connection closed: the client cannot tell whether it was
    /// carried out. The client must not use TLS (`sslmode=disable`), or nothing matches.
    pub fn lose_answer_to(&self, needle: &'static [u8]) {
        self.trap.lock().unwrap_or_else(|e| e.into_inner()).needle = Some(needle);
    }

    /// Every message towards the server that contains `needle` loses its answer, as
    /// `lose_answer_to` does once, until `answer_again`.
    pub fn lose_every_answer_to(&self, needle: &'static [u8]) {
        self.trap.lock().unwrap_or_else(|e| e.into_inner()).every = Some(needle);
    }

    pub fn answer_again(&self) {
        self.trap.lock().unwrap_or_else(|e| e.into_inner()).every = None;
    }

    /// How many answers `lose_answer_to` and `lose_every_answer_to` have lost.
    pub fn answers_lost(&self) -> usize {
        self.trap.lock().unwrap_or_else(|e| e.into_inner()).sprung
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes, or until the server has answered a trapped message
/// (that answer is not passed on).
async fn forward(client: TcpStream, server: TcpStream, trap: Arc<Mutex<Trap>>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let deaf = AtomicBool::new(false);
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Ok(n @ 1..) = from_client.read(&mut buf).await else {
                return;
            };
            let sent = &buf[..n];
            if trap.lock().unwrap_or_else(|e| e.into_inner()).springs(sent) {
                // Before the server can answer, so that no part of the answer gets through.
                deaf.store(true, Ordering::SeqCst);
            }
            if to_server.write_all(sent).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Ok(n @ 1..) = from_server.read(&mut buf).await else {
                return;
            };
            if deaf.load(Ordering::SeqCst) || to_client.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
