//! Connection limits before authentication (issue 11, finding 5).
//!
//! [`LimitAcceptor`] sits under TLS in the accept path. Every accepted TCP
//! connection is *unauthenticated* until the sync handler authenticates it
//! and calls [`Unauthenticated::authenticated`]; until then it counts against
//! a total cap and a cap per client address (IPv6 per /64, as
//! [`crate::ratelimit`] keys them). A connection beyond either cap is closed
//! at once, before the TLS handshake, and a rate-limited warning names only
//! the address kind. [`IdleStream`] closes any connection (HTTP keep-alive or
//! WebSocket) the client has sent nothing on for `read_idle`: the relay's
//! WebSocket pings (see [`crate::relay`]) make a live device answer well
//! within it, so only dead or silent peers hit it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Extension;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Limits on connections that have not authenticated yet.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Unauthenticated connections in total.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections per client address (IPv6: per /64).
    pub max_unauthenticated_per_address: usize,
    /// A connection the client sent nothing on for this long is closed.
    pub read_idle: Duration,
    /// Time a new connection has for its TLS handshake, and then again for
    /// its request headers (each request on a keep-alive connection).
    pub header_read_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_unauthenticated: 512,
            max_unauthenticated_per_address: 64,
            read_idle: Duration::from_secs(45),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    last_warning: Option<Instant>,
    refused_since_warning: u64,
}

/// Live unauthenticated connections, shared by the acceptor and its guards.
#[derive(Debug)]
pub struct Counter {
    limits: ConnLimits,
    counts: Mutex<Counts>,
}

impl Counter {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Counter {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Unauthenticated connections now (for tests and logs).
    pub fn unauthenticated(&self) -> usize {
        self.counts().total
    }

    /// Counts a new connection from `ip`, or `None` beyond a cap.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admission> {
        let key = crate::ratelimit::key(ip);
        let mut c = self.counts();
        let here = c.per_address.get(&key).copied().unwrap_or(0);
        let cap = if c.total >= self.limits.max_unauthenticated {
            Some("total")
        } else if here >= self.limits.max_unauthenticated_per_address {
            Some("per address")
        } else {
            None
        };
        if let Some(cap) = cap {
            c.refused_since_warning += 1;
            let now = Instant::now();
            if c.last_warning
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
            {
                tracing::warn!(
                    cap,
                    address_kind = if key.is_ipv4() { "ipv4" } else { "ipv6/64" },
                    open = c.total,
                    refused = c.refused_since_warning,
                    "unauthenticated connection cap reached: closing new connections"
                );
                c.last_warning = Some(now);
                c.refused_since_warning = 0;
            }
            return None;
        }
        c.total += 1;
        *c.per_address.entry(key).or_insert(0) += 1;
        Some(Admission {
            counter: self.clone(),
            key,
            released: AtomicBool::new(false),
        })
    }
}

/// Applies the header-read and first-request timeouts to a server, and logs
/// accept errors (EMFILE, handshakes that failed or timed out) as one
/// rate-limited warning with a count. axum-server's accept loop already
/// sleeps 50 ms after a failed `accept()`, so EMFILE neither spins nor ends it.
pub fn configure<Acc>(
    mut server: axum_server::Server<std::net::SocketAddr, Acc>,
    limits: &ConnLimits,
) -> axum_server::Server<std::net::SocketAddr, Acc> {
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    let last = Mutex::new((None::<Instant>, 0u64));
    server
        .first_request_timeout(limits.header_read_timeout)
        .accept_error_handler(move |_peer, e: &io::Error| {
            let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
            l.1 += 1;
            let now = Instant::now();
            if l.0.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                tracing::warn!(kind = ?e.kind(), error = %e, count = l.1, "connections failed before serving (accept error, cap, or TLS handshake)");
                *l = (Some(now), 0);
            }
        })
}

/// One counted connection; uncounted when authenticated or closed.
#[derive(Debug)]
struct Admission {
    counter: Arc<Counter>,
    key: IpAddr,
    released: AtomicBool,
}

impl Admission {
    fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut c = self.counter.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_address.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_address.remove(&self.key);
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request extension: lets the handler that authenticates a connection
/// take it out of the unauthenticated count.
#[derive(Debug, Clone)]
pub struct Unauthenticated(Arc<Admission>);

impl Unauthenticated {
    /// The connection authenticated: it no longer counts against the caps.
    pub fn authenticated(&self) {
        self.0.release();
    }
}

/// Counts connections and refuses those beyond the caps; sets `TCP_NODELAY`.
#[derive(Debug, Clone)]
pub struct LimitAcceptor {
    counter: Arc<Counter>,
}

impl LimitAcceptor {
    pub fn new(counter: Arc<Counter>) -> Self {
        LimitAcceptor { counter }
    }
}

impl<S> axum_server::accept::Accept<TcpStream, S> for LimitAcceptor {
    type Stream = IdleStream<TcpStream>;
    type Service = axum::middleware::AddExtension<S, Unauthenticated>;
    type Future = std::future::Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .ok()
            .and_then(|peer| self.counter.admit(peer.ip()));
        let Some(admission) = admitted else {
            // Dropping the stream closes it; axum-server ends the task.
            return std::future::ready(Err(io::Error::other("connection cap reached")));
        };
        // Small writes (a 101 then the first sync messages) go out at once:
        // Nagle held each behind the previous one's ACK (benchmark workload 3).
        let _ = stream.set_nodelay(true);
        let guard = Unauthenticated(Arc::new(admission));
        let service = tower::Layer::layer(&Extension(guard.clone()), service);
        std::future::ready(Ok((
            IdleStream::new(stream, self.counter.limits.read_idle, guard),
            service,
        )))
    }
}

/// A stream whose reads fail with `TimedOut` after `idle` without a byte
/// from the peer. Holds the connection's place in the count until closed.
#[derive(Debug)]
pub struct IdleStream<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _guard: Unauthenticated,
}

impl<T> IdleStream<T> {
    fn new(inner: T, idle: Duration, guard: Unauthenticated) -> Self {
        IdleStream {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            _guard: guard,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing received from the client in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The relay's ping timer (see `relay::Limits::ping_interval_secs`); `None`
/// when pings are off.
pub(crate) fn ping_timer(every: Duration) -> Option<tokio::time::Interval> {
    if every.is_zero() {
        return None;
    }
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(i)
}

/// The next tick, or never without a timer.
pub(crate) async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_address_and_release_once() {
        let counter = Counter::new(ConnLimits {
            max_unauthenticated: 3,
            max_unauthenticated_per_address: 2,
            read_idle: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(1),
        });
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let a2: IpAddr = "2001:db8::2".parse().expect("ip");
        let b: IpAddr = "192.0.2.1".parse().expect("ip");
        let one = counter.admit(a).expect("first");
        let _two = counter.admit(a2).expect("same /64, second");
        assert!(counter.admit(a).is_none(), "third from one /64");
        let _three = counter.admit(b).expect("other address");
        assert!(
            counter.admit("192.0.2.9".parse().expect("ip")).is_none(),
            "total"
        );
        one.release();
        one.release();
        assert_eq!(counter.unauthenticated(), 2);
        drop(one);
        assert_eq!(counter.unauthenticated(), 2, "released once only");
        assert!(counter.admit(a).is_some());
    }

    /// Reads fail with `TimedOut` after `read_idle` of silence, and every
    /// byte received restarts the clock; writes do not.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let counter = Counter::new(ConnLimits {
            read_idle: Duration::from_secs(10),
            ..ConnLimits::default()
        });
        let guard = Unauthenticated(Arc::new(
            counter
                .admit("192.0.2.1".parse().expect("ip"))
                .expect("admit"),
        ));
        let (server, mut client) = tokio::io::duplex(64);
        let mut s = IdleStream::new(server, Duration::from_secs(10), guard);
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            client.write_all(b"x").await.expect("write");
            assert_eq!(s.read(&mut buf).await.expect("read"), 1);
            s.write_all(b"ping").await.expect("server writes");
        }
        let started = tokio::time::Instant::now();
        let err = s.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(counter.unauthenticated(), 1);
        drop(s);
        assert_eq!(counter.unauthenticated(), 0, "closing uncounts");
    }
}
