//! The relay: per-document Automerge sync between connected devices, with
//! every document kept in storage so devices never need to be online at the
//! same time.
//!
//! Documents are loaded on demand into [`Slot`]s and evicted when idle (least
//! recently used, beyond `max_loaded_docs`). Each connection has its own
//! `sync::State` per document; states are loaded from storage on first use
//! and saved when the connection ends, so a reconnect only exchanges what
//! changed. A change a device sent is acknowledged (answered) only after
//! storage committed it.
//!
//! By concern: this file holds the [`Hub`] (what connections share) and its
//! [`Limits`]; `registry.rs` the live connections (the per-device cap,
//! revocation); `connection.rs` one WebSocket (its writer task, reading
//! messages, closing); `session.rs` the session on it (`join`/`peer`, the
//! message loop) and [`Sessions`]; `slots.rs` the loaded documents (load on
//! demand, LRU eviction); `apply.rs` applying a device's sync message (budget,
//! purge, door, size cap, refusals); `fanout.rs` the reply to it and the live
//! fan-out to other connections; `pushes.rs` the pipelined session's
//! `changed-since` and unasked pushes; `persist.rs` storing changes, sync
//! states and the audit of what devices were sent; `nodes.rs` keeping
//! loaded copies fresh when several relay nodes share one database.

mod apply;
mod connection;
mod fanout;
mod nodes;
mod persist;
mod pushes;
mod registry;
mod session;
mod slots;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use linkbook_core::DocumentId;
use linkbook_core::protocol::Message;

use crate::storage::Storage;

pub(crate) use apply::brief;
pub use connection::{FrameSink, Frames};
pub use nodes::Follower;
pub use registry::{REPLACED, RESTARTING};
pub use session::{MAX_PEER_ID_CHARS, PEER_ID_OF_ANOTHER_DEVICE, Sessions};

use registry::Connection;
use slots::Slot;

/// Tunable limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Live connections one device may hold.
    pub max_connections_per_device: usize,
    /// Documents kept loaded; idle ones beyond this are evicted.
    pub max_loaded_docs: usize,
    /// Seconds a new connection has to send its `join`.
    pub join_timeout_secs: u64,
    /// Seconds between WebSocket pings to each device (0: none). A live
    /// device's pong keeps its connection inside the read-idle timeout
    /// (conn_limits.rs); a dead one is closed by it.
    pub ping_interval_secs: u64,
    /// Rows (ops) any column of one sync message may declare (budget.rs).
    pub max_document_ops: u64,
    /// Bytes one connection's send queue may hold before a message offered
    /// to it closes it (outbox.rs); at least twice `max_message_bytes`.
    pub max_queued_bytes: usize,
    /// Bytes one stored document may reach (its stored snapshot and
    /// changes); a change beyond is refused (doc_cap.rs).
    pub max_document_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 * 1024 * 1024,
            max_connections_per_device: 4,
            max_loaded_docs: 5_000,
            join_timeout_secs: 10,
            ping_interval_secs: 15,
            max_document_ops: linkbook_core::budget::Budget::default().max_rows,
            max_queued_bytes: 4 * 16 * 1024 * 1024,
            max_document_bytes: crate::doc_cap::DEFAULT_MAX_DOCUMENT_BYTES,
        }
    }
}

/// A loaded document's key: its team and id.
type DocKey = (crate::storage::Team, DocumentId);

/// Everything connections share.
pub struct Hub {
    storage: Arc<dyn Storage>,
    peer_id: String,
    storage_id: String,
    limits: Limits,
    /// Keyed by (team, id): documents are namespaced per team (oracle.rs).
    docs: Mutex<HashMap<DocKey, Arc<tokio::sync::Mutex<Slot>>>>,
    connections: Mutex<HashMap<u64, Connection>>,
    /// Devices revoked while this relay runs (revocation.rs): a connection
    /// that authenticated just before is cut when admitted. Locked inside
    /// `connections`, never the other way round.
    revoked: Mutex<std::collections::HashSet<String>>,
    next_conn: AtomicU64,
    tick: AtomicU64,
    /// Refused documents for the administrator (refusals.rs).
    refusals: crate::refusals::Recorder,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a connection is being closed: the text the device is sent.
#[derive(Debug)]
pub(crate) struct Close(pub(crate) String);

impl Hub {
    pub fn new(storage: Arc<dyn Storage>, storage_id: String, limits: Limits) -> Self {
        Hub {
            storage,
            peer_id: format!("linkbook-relay-{storage_id}"),
            storage_id,
            limits,
            refusals: Default::default(),
            docs: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Default::default()),
            next_conn: AtomicU64::new(1),
            tick: AtomicU64::new(1),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Documents currently loaded.
    pub fn loaded_documents(&self) -> usize {
        lock(&self.docs).len()
    }

    /// A `sync` message from this relay to the peer `to`.
    fn sync_message(&self, to: &str, document_id: &str, data: Vec<u8>) -> Message {
        Message::Sync {
            sender_id: self.peer_id.clone(),
            target_id: to.to_string(),
            document_id: document_id.to_string(),
            data,
        }
    }

    /// A `doc-unavailable` message from this relay to the peer `to`.
    fn unavailable_message(&self, to: &str, document_id: &str) -> Message {
        Message::DocUnavailable {
            sender_id: self.peer_id.clone(),
            target_id: to.to_string(),
            document_id: document_id.to_string(),
        }
    }
}
