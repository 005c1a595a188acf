//! A connection's send queue, bounded in bytes by the relay's own code
//! (issue 11, finding 2).
//!
//! Before, every connection had an unbounded channel: a peer that joined,
//! asked for big documents (or got live fan-out from a writing device) and
//! never read its socket made the relay hold every message for it, without
//! end. Now every message is encoded when it is queued and its bytes are
//! counted until the writer task has handed them to the socket. Two rules
//! keep the count bounded:
//!
//! - Traffic a connection causes itself (replies, unasked pushes) is only
//!   generated while its queue is at most half the limit
//!   ([`Outbox::has_room`]); otherwise the session defers it and generates it
//!   when the queue has drained ([`Outbox::drained`]). Automerge sync is
//!   state-based, so a reply generated later says the same, newer things.
//!   The session keeps reading meanwhile: a device blocked on writing its
//!   own upload must not wait for a relay that waits for it.
//! - Anything offered to a queue already over the limit (another device's
//!   live fan-out, a small answer) closes that connection: it has not read
//!   `limit` bytes. Never the sender's connection, never the relay.
//!
//! So a connection holds at most the limit plus one burst (one reply or one
//! fan-out, at most one document: see `--max-document-bytes`).
//!
//! A queue can also be shut ([`Outbox::shut`], a revoked device:
//! revocation.rs): from then on nothing is queued, the writer drops what is
//! still queued and sends only the reason and the close. Every send goes
//! through here, so this one flag is the check "before every send".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use linkbook_core::protocol::Message;
use tokio::sync::{Notify, mpsc};

/// One encoded WebSocket message; `last` ends the connection after it.
pub(crate) struct Frame {
    pub(crate) bytes: Vec<u8>,
    pub(crate) last: bool,
}

struct Shared {
    queued: AtomicUsize,
    limit: usize,
    full: AtomicBool,
    /// Wakes the session when the queue overflowed.
    overflowed: Notify,
    /// Wakes the session when the writer took the queue to half the limit.
    drained: Notify,
    device: String,
    /// The peer id the connection announced in its `join` (the client's
    /// own: a stock automerge-repo picks a random one): what every message
    /// to it names as `targetId`. Identity is the token's device id, never
    /// this (docs/adr/0008).
    peer: std::sync::OnceLock<String>,
    /// Why the queue was shut; set once (an atomic load to check).
    shut: std::sync::OnceLock<String>,
    /// Wakes the session and the writer when the queue was shut.
    shut_notify: Notify,
}

/// The sending half, shared by the connection's session and other
/// connections' fan-out.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Frame>,
    shared: Arc<Shared>,
}

/// The writer task's half.
pub(crate) struct Outgoing {
    rx: mpsc::UnboundedReceiver<Frame>,
    shared: Arc<Shared>,
}

/// Why a connection was closed when its queue overflowed.
pub(crate) fn overflow_reason(limit: usize) -> String {
    format!("closed: this connection did not read what the relay sent (over {limit} bytes queued)")
}

impl Outbox {
    /// A queue of at most `limit` bytes (plus one burst) for `device`.
    pub(crate) fn new(limit: usize, device: &str) -> (Outbox, Outgoing) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            limit,
            full: AtomicBool::new(false),
            overflowed: Notify::new(),
            drained: Notify::new(),
            device: device.to_string(),
            peer: std::sync::OnceLock::new(),
            shut: std::sync::OnceLock::new(),
            shut_notify: Notify::new(),
        });
        (
            Outbox {
                tx,
                shared: shared.clone(),
            },
            Outgoing { rx, shared },
        )
    }

    /// Records the peer id the connection announced (once, at `join`).
    pub(crate) fn set_peer(&self, peer_id: &str) {
        let _ = self.shared.peer.set(peer_id.to_string());
    }

    /// The `targetId` of messages to this connection: the peer id it
    /// announced, or its device id before it joined.
    pub(crate) fn peer(&self) -> &str {
        self.shared
            .peer
            .get()
            .map_or(self.shared.device.as_str(), String::as_str)
    }

    /// Bytes queued and not yet handed to the socket.
    pub(crate) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    pub(crate) fn limit(&self) -> usize {
        self.shared.limit
    }

    /// The queue overflowed: the connection is being closed.
    pub(crate) fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Acquire)
    }

    /// Room for traffic this connection causes itself (at most half full).
    pub(crate) fn has_room(&self) -> bool {
        !self.is_full() && !self.is_shut() && self.queued() <= self.shared.limit / 2
    }

    /// Shuts the queue for good: nothing more is queued or written but
    /// `reason` (as an `error` message) and the close, which the writer
    /// sends at once. False if it was shut already.
    pub(crate) fn shut(&self, reason: &str) -> bool {
        let first = self.shared.shut.set(reason.to_string()).is_ok();
        if first {
            self.shared.shut_notify.notify_waiters();
        }
        first
    }

    pub(crate) fn is_shut(&self) -> bool {
        self.shared.shut.get().is_some()
    }

    /// Why the queue was shut, if it was (an atomic load when it was not).
    pub(crate) fn shut_reason(&self) -> Option<String> {
        self.shared.shut.get().cloned()
    }

    /// Resolves with the reason once the queue was shut.
    pub(crate) async fn shut_down(&self) -> String {
        shut_down(&self.shared).await
    }

    /// Queues one message (see [`Outbox::offer_all`]).
    pub(crate) fn offer(&self, message: Message) -> bool {
        self.offer_all(std::iter::once(message))
    }

    /// Queues a burst of messages, all or none: `false` (and the connection
    /// is closed by its session) when the queue already held more than the
    /// limit, or the connection is gone.
    pub(crate) fn offer_all(&self, messages: impl IntoIterator<Item = Message>) -> bool {
        if !self.accepts() {
            return false;
        }
        for m in messages {
            if !self.enqueue(m.encode(), false) {
                return false;
            }
        }
        true
    }

    /// Whether a burst offered now would be queued; a queue already over
    /// its limit is marked full here (its session closes the connection).
    /// Fan-out asks before generating anything for the connection.
    pub(crate) fn accepts(&self) -> bool {
        let s = &self.shared;
        if s.full.load(Ordering::Acquire) || s.shut.get().is_some() {
            return false;
        }
        let queued = s.queued.load(Ordering::Acquire);
        if queued > s.limit {
            if !s.full.swap(true, Ordering::AcqRel) {
                tracing::warn!(device = %s.device, queued, limit = s.limit,
                    "send queue full: the device does not read what the relay sends; closing its connection");
                s.overflowed.notify_one();
            }
            return false;
        }
        true
    }

    /// Queues the connection's last message (its closing error), whatever
    /// the count: it is small and there is one.
    pub(crate) fn last(&self, message: Message) {
        // A shut queue's writer sends the shut reason itself.
        if !self.is_shut() {
            let _ = self.enqueue(message.encode(), true);
        }
    }

    fn enqueue(&self, bytes: Vec<u8>, last: bool) -> bool {
        let len = bytes.len();
        self.shared.queued.fetch_add(len, Ordering::AcqRel);
        if self.tx.send(Frame { bytes, last }).is_err() {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Resolves once the queue overflowed.
    pub(crate) async fn overflowed(&self) {
        loop {
            let notified = self.shared.overflowed.notified();
            if self.is_full() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once there is room again ([`Outbox::has_room`]); never, if
    /// the queue overflowed ([`Outbox::overflowed`] says so).
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }
}

/// Resolves with the reason once the queue was shut. `notify_waiters`
/// reaches every `Notified` created before it, polled or not, so creating
/// it before the check loses no wake-up.
async fn shut_down(shared: &Shared) -> String {
    loop {
        let notified = shared.shut_notify.notified();
        if let Some(reason) = shared.shut.get() {
            return reason.clone();
        }
        notified.await;
    }
}

impl Outgoing {
    /// Why the queue was shut, if it was: checked before writing each frame.
    pub(crate) fn shut_reason(&self) -> Option<&str> {
        self.shared.shut.get().map(String::as_str)
    }

    /// Resolves with the reason once the queue was shut (owns what it
    /// needs, so the writer can wait on it and on `recv` at once).
    pub(crate) fn shut_down(&self) -> impl std::future::Future<Output = String> + use<> {
        let shared = self.shared.clone();
        async move { shut_down(&shared).await }
    }

    /// The next frame to write; `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }

    /// The writer handed a frame of `len` bytes to the socket.
    pub(crate) fn sent(&self, len: usize) {
        let s = &self.shared;
        let before = s.queued.fetch_sub(len, Ordering::AcqRel);
        let now = before.saturating_sub(len);
        if now <= s.limit / 2 {
            s.drained.notify_waiters();
        }
    }

    /// The queue overflowed: what is left is not worth writing.
    pub(crate) fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Acquire)
    }
}

/// Documents a connection is owed a message about: the unasked pushes of
/// the pipelined session and replies deferred while its queue was over half
/// full, in order, each once (at most the team's document count).
#[derive(Debug, Default)]
pub(crate) struct Owed {
    order: std::collections::VecDeque<String>,
    ids: std::collections::HashSet<String>,
}

impl Owed {
    pub(crate) fn owe(&mut self, document_id: &str) {
        if self.ids.insert(document_id.to_string()) {
            self.order.push_back(document_id.to_string());
        }
    }

    pub(crate) fn next(&mut self) -> Option<String> {
        let id = self.order.pop_front()?;
        self.ids.remove(&id);
        Some(id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl From<Vec<String>> for Owed {
    fn from(ids: Vec<String>) -> Self {
        let mut owed = Owed::default();
        for id in &ids {
            owed.owe(id);
        }
        owed
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn big(n: usize) -> Message {
        Message::Error {
            message: "x".repeat(n),
        }
    }

    #[tokio::test]
    async fn a_queue_over_its_limit_refuses_and_says_so() {
        let (outbox, mut outgoing) = Outbox::new(1_000, "device");
        assert!(outbox.has_room());
        // One burst is taken whole even past the limit.
        assert!(outbox.offer_all([big(600), big(600)]));
        assert!(outbox.queued() > 1_000);
        assert!(!outbox.has_room());
        assert!(!outbox.offer(big(10)), "over the limit: refused");
        assert!(outbox.is_full());
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.overflowed())
            .await
            .expect("overflow is signalled");
        // Refused for good, even after the writer drained.
        while let Ok(Some(frame)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), outgoing.recv()).await
        {
            outgoing.sent(frame.bytes.len());
        }
        assert_eq!(outbox.queued(), 0);
        assert!(!outbox.offer(big(10)));
    }

    #[tokio::test]
    async fn a_shut_queue_takes_nothing_more_and_says_why() {
        let (outbox, outgoing) = Outbox::new(1_000, "device");
        assert!(outbox.offer(big(10)));
        let waiters = [outbox.clone(), outbox.clone()]
            .map(|o| tokio::spawn(async move { o.shut_down().await }));
        tokio::task::yield_now().await;
        assert!(outbox.shut("closed: revoked"));
        assert!(!outbox.shut("again"), "shut once");
        for w in waiters {
            let reason = tokio::time::timeout(std::time::Duration::from_secs(1), w)
                .await
                .expect("woken")
                .expect("joined");
            assert_eq!(reason, "closed: revoked");
        }
        assert!(!outbox.accepts() && !outbox.has_room());
        assert!(!outbox.offer(big(10)), "nothing queued after the shut");
        assert_eq!(outgoing.shut_reason(), Some("closed: revoked"));
        // Resolves at once for a waiter that comes later.
        tokio::time::timeout(std::time::Duration::from_secs(1), outgoing.shut_down())
            .await
            .expect("already shut");
    }

    #[test]
    fn a_document_is_owed_once_in_order() {
        let mut owed = Owed::from(vec!["a".to_string(), "b".to_string(), "a".to_string()]);
        owed.owe("b");
        owed.owe("c");
        assert_eq!(owed.next().as_deref(), Some("a"));
        owed.owe("a");
        let rest: Vec<String> = std::iter::from_fn(|| owed.next()).collect();
        assert_eq!(rest, ["b", "c", "a"]);
        assert!(owed.is_empty());
    }

    #[tokio::test]
    async fn drained_wakes_when_the_writer_catches_up() {
        let (outbox, mut outgoing) = Outbox::new(1_000, "device");
        assert!(outbox.offer(big(900)));
        assert!(!outbox.has_room());
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.drained().await })
        };
        let frame = outgoing.recv().await.expect("a frame");
        assert!(!frame.last);
        outgoing.sent(frame.bytes.len());
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert!(outbox.has_room());
    }
}
