//! A TCP proxy on 127.0.0.1 between the devices and a server: counts the
//! bytes on the wire and the client's flights (round trips), and can model a
//! slow link (a delay per direction, a bandwidth, the TCP handshake's round
//! trip).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Result;

/// The link the proxy models.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// Added to every byte, each direction.
    pub one_way_delay: Duration,
    /// Bytes per second each direction; 0 is unlimited.
    pub bytes_per_second: u64,
}

impl Link {
    pub fn round_trip(&self) -> Duration {
        self.one_way_delay * 2
    }

    /// Time to put `bytes` on the link.
    pub fn transfer(&self, bytes: u64) -> Duration {
        if self.bytes_per_second == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64)
        }
    }

    fn is_instant(&self) -> bool {
        self.one_way_delay.is_zero() && self.bytes_per_second == 0
    }
}

/// What passed through the proxy.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    /// Client to server bytes (TLS records, HTTP, WebSocket frames: all of it).
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Client-to-server flights: bytes the client sent after the server had
    /// last spoken (or first on a connection). A request-response
    /// protocol makes one per round trip; a client that keeps writing while
    /// answers arrive makes more than its round trips.
    pub flights: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.connections.load(Ordering::SeqCst),
            self.bytes_up.load(Ordering::SeqCst),
            self.bytes_down.load(Ordering::SeqCst),
            self.flights.load(Ordering::SeqCst),
        )
    }
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

const UP: u8 = 1;
const DOWN: u8 = 2;

impl Proxy {
    pub fn start(target: SocketAddr, link: Link) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy bind: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("proxy addr: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (stopping, c) = (stop.clone(), counters.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                c.connections.fetch_add(1, Ordering::SeqCst);
                let last = Arc::new(AtomicU8::new(0));
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let up = Pipe {
                    dir: UP,
                    last: last.clone(),
                    counters: c.clone(),
                    link,
                    // The TCP handshake: the client's first bytes reach the
                    // server one round trip later than a connected socket's.
                    first_extra: link.round_trip(),
                };
                let down = Pipe {
                    dir: DOWN,
                    last,
                    counters: c.clone(),
                    link,
                    first_extra: Duration::ZERO,
                };
                std::thread::spawn(move || up.run(client, server));
                std::thread::spawn(move || down.run(server2, client2));
            }
        });
        Ok(Proxy {
            addr,
            counters,
            stop,
        })
    }

    /// The proxy's address with the scheme of `server_url`.
    pub fn url_for(&self, server_url: &str) -> String {
        let scheme = server_url.split("://").next().unwrap_or("https");
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// One direction of one connection.
struct Pipe {
    dir: u8,
    last: Arc<AtomicU8>,
    counters: Arc<Counters>,
    link: Link,
    first_extra: Duration,
}

impl Pipe {
    fn count(&self, n: usize) {
        let bytes = if self.dir == UP {
            &self.counters.bytes_up
        } else {
            &self.counters.bytes_down
        };
        bytes.fetch_add(n as u64, Ordering::SeqCst);
        if self.last.swap(self.dir, Ordering::SeqCst) != self.dir && self.dir == UP {
            self.counters.flights.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn run(self, mut from: TcpStream, to: TcpStream) {
        let mut buf = vec![0u8; 64 * 1024];
        if self.link.is_instant() {
            let mut to = to;
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                self.count(n);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        // A slow link: a writer thread delivers each chunk when the link
        // would have (serialised at the bandwidth, then delayed).
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let link = self.link;
        let first_extra = self.first_extra;
        let writer = std::thread::spawn(move || {
            let mut to = to;
            let mut link_free = Instant::now();
            let mut first = true;
            for (arrived, chunk) in rx {
                let start = link_free.max(arrived);
                let sent = start + link.transfer(chunk.len() as u64);
                link_free = sent;
                let mut deliver = sent + link.one_way_delay;
                if first {
                    deliver += first_extra;
                    first = false;
                }
                let now = Instant::now();
                if deliver > now {
                    std::thread::sleep(deliver - now);
                }
                if to.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.count(n);
            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
        drop(tx);
        let _ = writer.join();
    }
}
