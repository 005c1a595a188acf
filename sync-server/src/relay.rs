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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};
use axum::extract::ws::{Message as WsMessage, WebSocket};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use linkbook_core::DocumentId;
use linkbook_core::protocol::catch_automerge_panic;
use linkbook_core::protocol::{Message, PROTOCOL_VERSION, PeerMetadata};

use crate::outbox::{Outbox, Owed};
use crate::split::Sent;
use crate::storage::{
    AuditAction, AuditRecord, COMPACT_AFTER, Device, Storage, Upload as StorageUpload,
};

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

/// One loaded document.
struct Slot {
    team: String,
    doc: Automerge,
    /// Sync state per connection that has touched this document.
    states: HashMap<u64, (String, sync::State)>,
    last_used: u64,
    /// Its document holds changes that storage refused (a full disk), or
    /// was left half-changed by an Automerge panic. The slot is out of the
    /// map by then, but a connection that was waiting
    /// for its lock still holds it: that one must reload the document from
    /// storage, not build on (and answer with heads of) changes the relay
    /// does not have. See [`Hub::locked_slot`].
    unstored: bool,
    /// SHA-256 of the last reply sent to each connection: a peer repeating
    /// "I have nothing" is not sent the same whole document again (issue
    /// 11, finding 8; Automerge resets `sent_hashes` whenever the peer's
    /// heads are empty, so its state alone resends everything each time).
    last_reply: HashMap<u64, [u8; 32]>,
    /// What each connection was sent of this document (split.rs): replies
    /// proportional to the request.
    sent: HashMap<u64, Sent>,
    /// Bytes storage holds for it (snapshot and changes), against
    /// `max_document_bytes`.
    stored_bytes: u64,
    /// The cursor value of the latest stored change this copy holds, while
    /// it holds every stored change up to it (`None`: another writer
    /// appended meanwhile, so this copy must not compact).
    seq: Option<i64>,
}

struct Connection {
    device_id: String,
    outbox: Outbox,
    /// Ends the session when a newer connection of the device takes its place.
    kick: Arc<tokio::sync::Notify>,
}

/// A loaded document's key: its team and id.
type DocKey = (String, DocumentId);

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

/// Sent to a connection closed because a newer one of the device took its slot.
pub const REPLACED: &str =
    "closed: a newer connection of this device took its place (too many connections)";

/// Seconds a closing connection's writer has to deliver its last messages.
const WRITER_LINGER_SECS: u64 = 10;

/// Seconds a shut (revoked) connection's writer has to deliver its reason
/// before the socket is dropped: "closed within a few seconds" even for a
/// peer that does not read.
const SHUT_LINGER_SECS: u64 = 2;

/// Which of a device's uploads its `changed-since` leaves out: its own.
///
/// Copies of one device (a restored backup, a copied profile) share its id,
/// so "uploaded by this device" would hide each copy's uploads from the
/// other for good. A Linkbook device names each sync session
/// (`/v1/sync?since=N&session=S&after=P`: S random per session, P the
/// session of its last successful sync), the relay tags what the session
/// uploads `device/S`, and leaves out only what is tagged `device/P`: the
/// device's own last session, never a copy's. Without `session` (older
/// devices, other clients) uploads are tagged with the device id, as before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    /// This session's name (`session=`).
    pub this: Option<String>,
    /// The device's last successful session (`after=`).
    pub after: Option<String>,
}

impl Sessions {
    /// At most this many characters in a session name (hex digits).
    pub const MAX_LEN: usize = 32;

    /// Parses `session=` and `after=` from a query string: each, when
    /// present, 1-32 hex digits; anything else is refused.
    pub fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut out = Sessions::default();
        for kv in query.unwrap_or_default().split('&') {
            let (slot, value) = match kv.split_once('=') {
                Some(("session", v)) => (&mut out.this, v),
                Some(("after", v)) => (&mut out.after, v),
                _ => continue,
            };
            if value.is_empty()
                || value.len() > Self::MAX_LEN
                || !value.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(format!(
                    "a sync session name is 1 to {} hexadecimal digits",
                    Self::MAX_LEN
                ));
            }
            *slot = Some(value.to_ascii_lowercase());
        }
        if out.this.is_none() && out.after.is_some() {
            return Err("`after` needs a `session`".into());
        }
        Ok(out)
    }

    /// What this connection's uploads are tagged with.
    pub fn upload_tag(&self, device_id: &str) -> String {
        match &self.this {
            Some(s) => format!("{device_id}/{s}"),
            None => device_id.to_string(),
        }
    }

    /// The tag of the uploads `changed-since` leaves out. A device's first
    /// session with session names leaves out its untagged older uploads.
    pub fn excluded_tag(&self, device_id: &str) -> String {
        match (&self.this, &self.after) {
            (Some(_), Some(a)) => format!("{device_id}/{a}"),
            _ => device_id.to_string(),
        }
    }
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

    /// Admits a new connection of `device_id`: at the cap, its oldest
    /// connection is closed with [`REPLACED`] (a phone that lost signal, or
    /// a stale copy). The count and the insert are one critical section, so
    /// two connections of one device arriving at once cannot both pass the
    /// check. A thief holding a copied token can kick the real device this
    /// way too, and vice versa: revoking the device ends that (its token
    /// stops authenticating and its open connections are cut:
    /// [`Hub::cut_revoked`]).
    fn admit(&self, conn_id: u64, connection: Connection) {
        let cap = self.limits.max_connections_per_device.max(1);
        let mut conns = lock(&self.connections);
        let mut mine: Vec<u64> = conns
            .iter()
            .filter(|(_, c)| c.device_id == connection.device_id)
            .map(|(id, _)| *id)
            .collect();
        if mine.len() >= cap {
            mine.sort_unstable();
            let excess = mine.len() + 1 - cap;
            for id in mine.into_iter().take(excess) {
                if let Some(old) = conns.remove(&id) {
                    tracing::warn!(device = %connection.device_id, "connection cap reached: closing the device's oldest connection");
                    old.kick.notify_one();
                }
            }
        }
        if lock(&self.revoked).contains(&connection.device_id) {
            connection.outbox.shut(crate::revocation::REVOKED);
        }
        conns.insert(conn_id, connection);
    }

    /// The one place the relay is told a device was revoked (by the
    /// watcher on storage, or an in-process admin path: revocation.rs).
    /// Every connection of the device is shut at once (outbox.rs: nothing
    /// more is sent to it, and it is closed with [`crate::revocation::REVOKED`]),
    /// and so is any it opens later in this process. Returns how many were
    /// open.
    pub fn cut_revoked(&self, device_id: &str) -> usize {
        let conns = lock(&self.connections);
        lock(&self.revoked).insert(device_id.to_string());
        let mut cut = 0;
        for c in conns.values().filter(|c| c.device_id == device_id) {
            c.outbox.shut(crate::revocation::REVOKED);
            cut += 1;
        }
        drop(conns);
        tracing::warn!(device = %device_id, connections = cut, "device revoked: its connections are closed");
        cut
    }

    /// Registers a connection of `device_id` without a socket: its send
    /// queue, for tests of the registry (revocation.rs).
    #[cfg(test)]
    pub(crate) fn register_for_test(&self, device_id: &str) -> Outbox {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbox, _writer) = Outbox::new(self.limits.max_queued_bytes, device_id);
        let connection = Connection {
            device_id: device_id.to_string(),
            outbox: outbox.clone(),
            kick: Default::default(),
        };
        self.admit(conn_id, connection);
        outbox
    }

    /// Live connections of a device.
    pub fn connections_of(&self, device_id: &str) -> usize {
        lock(&self.connections)
            .values()
            .filter(|c| c.device_id == device_id)
            .count()
    }

    /// Documents currently loaded.
    pub fn loaded_documents(&self) -> usize {
        lock(&self.docs).len()
    }

    /// Serves one authenticated device's WebSocket until it closes. With
    /// `since` (the device's change cursor, `/v1/sync?since=N`), the relay
    /// tells the device what changed since then and sends those documents
    /// without being asked (see [`Hub::push_changed`]).
    pub async fn serve(
        self: Arc<Self>,
        device: Device,
        socket: WebSocket,
        (since, sessions): (Option<i64>, Sessions),
    ) {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (mut sink, mut stream) = socket.split();
        let queue_limit = self
            .limits
            .max_queued_bytes
            .max(2 * self.limits.max_message_bytes);
        let (outbox, mut outgoing) = Outbox::new(queue_limit, &device.id);
        let kick = Arc::new(tokio::sync::Notify::new());
        self.admit(
            conn_id,
            Connection {
                device_id: device.id.clone(),
                outbox: outbox.clone(),
                kick: kick.clone(),
            },
        );
        let ping_every = std::time::Duration::from_secs(self.limits.ping_interval_secs);
        let mut writer = tokio::spawn(async move {
            let mut ping = crate::conn_limits::ping_timer(ping_every);
            loop {
                let frame = tokio::select! {
                    biased;
                    reason = outgoing.shut_down() => {
                        say_shut(&mut sink, reason).await;
                        break;
                    }
                    f = outgoing.recv() => match f { Some(f) => f, None => break },
                    () = crate::conn_limits::tick(&mut ping) => {
                        if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                if outgoing.is_full() {
                    break;
                }
                // Checked before every send: once shut (revoked), what is
                // still queued is dropped.
                if let Some(reason) = outgoing.shut_reason() {
                    outgoing.sent(frame.bytes.len());
                    say_shut(&mut sink, reason.to_string()).await;
                    break;
                }
                let last = frame.last;
                let len = frame.bytes.len();
                let sent = sink.send(WsMessage::Binary(frame.bytes.into())).await;
                outgoing.sent(len);
                if sent.is_err() {
                    break;
                }
                if last {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    break;
                }
            }
        });
        let outcome = self
            .session(
                conn_id,
                &device,
                &outbox,
                (&mut stream, &kick),
                (since, &sessions),
            )
            .await;
        if let Err(Close(why)) = &outcome {
            tracing::warn!(device = %device.id, reason = %why, "closing sync connection");
            outbox.last(Message::Error {
                message: why.clone(),
            });
        }
        let overflowed = outbox.is_full();
        let shut = outbox.is_shut();
        drop(outbox);
        self.disconnect(conn_id).await;
        // A peer that does not read would keep the writer waiting on its
        // socket for ever: an overflowed queue is dropped at once, a shut
        // one (revoked) gets a moment for its reason, anything else a few
        // seconds to deliver its last messages.
        let linger = if overflowed {
            std::time::Duration::ZERO
        } else if shut {
            std::time::Duration::from_secs(SHUT_LINGER_SECS)
        } else {
            std::time::Duration::from_secs(WRITER_LINGER_SECS)
        };
        if tokio::time::timeout(linger, &mut writer).await.is_err() {
            writer.abort();
        }
        let _ = self.storage.touch_device(&device.id, Utc::now()).await;
        tracing::info!(device = %device.id, "sync connection ended");
    }

    async fn session(
        &self,
        conn_id: u64,
        device: &Device,
        outbox: &Outbox,
        (stream, kick): (
            &mut futures_util::stream::SplitStream<WebSocket>,
            &tokio::sync::Notify,
        ),
        (since, sessions): (Option<i64>, &Sessions),
    ) -> Result<(), Close> {
        let tag = sessions.upload_tag(&device.id);
        // Replaced only while waiting for the device (next_or_closed), never inside a sync.
        let timeout = std::time::Duration::from_secs(self.limits.join_timeout_secs);
        let first = match tokio::time::timeout(timeout, next_or_closed(stream, kick, outbox)).await
        {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(close)) => return Err(close),
            Err(_) => return Err(Close("no join message received in time".into())),
        };
        let Message::Join {
            sender_id,
            supported_protocol_versions,
            ..
        } = first
        else {
            return Err(Close(format!(
                "expected a join message, got '{}'",
                first.message_type()
            )));
        };
        if !supported_protocol_versions
            .iter()
            .any(|v| v == PROTOCOL_VERSION)
        {
            return Err(Close(format!(
                "unsupported protocol versions {supported_protocol_versions:?}: this relay speaks version 1"
            )));
        }
        // The client's own peer id is accepted (a stock automerge-repo
        // picks a random one); who it is comes from its token alone: the
        // peer id only addresses the messages sent to this connection
        // (docs/adr/0008).
        check_peer_id(&sender_id, &device.id).map_err(Close)?;
        outbox.set_peer(&sender_id);
        outbox.offer(Message::Peer {
            sender_id: self.peer_id.clone(),
            target_id: sender_id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: Some(self.storage_id.clone()),
                is_ephemeral: false,
                max_message_bytes: Some(self.limits.max_message_bytes as u64),
            },
            selected_protocol_version: PROTOCOL_VERSION.into(),
        });
        let mut owed: Owed = match since {
            Some(since) => {
                let mine = sessions.excluded_tag(&device.id);
                self.changed_since(device, outbox, (since, &mine))
                    .await?
                    .into()
            }
            None => Owed::default(),
        };
        tracing::info!(device = %device.id, team = %device.team, "device joined");
        let _ = self
            .storage
            .audit(Some(device), AuditAction::Connected, None, Utc::now())
            .await;
        loop {
            // Pushes (and replies deferred while the send queue was over
            // half full: outbox.rs) go out between the device's messages,
            // not before them all: a fresh device answers each push, and a
            // relay that did not read meanwhile would leave it blocked on a
            // full socket.
            let next = if owed.is_empty() {
                next_or_closed(stream, kick, outbox).await?
            } else {
                tokio::select! {
                    biased;
                    m = next_or_closed(stream, kick, outbox) => m?,
                    () = outbox.drained() => {
                        if let Some(document_id) = owed.next() {
                            self.push(conn_id, device, outbox, document_id).await?;
                        }
                        continue;
                    }
                }
            };
            let Some(m) = next else {
                return Ok(());
            };
            // Checked before acting on every message: a revoked device's
            // message is not answered, stored or relayed.
            if let Some(reason) = outbox.shut_reason() {
                return Err(Close(reason));
            }
            match m {
                Message::Sync {
                    sender_id: from, ..
                }
                | Message::Request {
                    sender_id: from, ..
                } if from != sender_id => {
                    return Err(Close(
                        "a message's senderId must be the peer id this connection joined with"
                            .into(),
                    ));
                }
                Message::Sync {
                    document_id, data, ..
                } => {
                    self.sync(
                        conn_id,
                        (device, &tag),
                        outbox,
                        &mut owed,
                        (&document_id, &data),
                        false,
                    )
                    .await?
                }
                Message::Request {
                    document_id, data, ..
                } => {
                    self.sync(
                        conn_id,
                        (device, &tag),
                        outbox,
                        &mut owed,
                        (&document_id, &data),
                        true,
                    )
                    .await?
                }
                Message::Leave { .. } => return Ok(()),
                // Presence and heads gossip are not relayed: the relay is a store, not a room.
                Message::Ephemeral { .. }
                | Message::RemoteSubscriptionChange { .. }
                | Message::RemoteHeadsChanged { .. } => {}
                Message::DocUnavailable { .. } => {}
                Message::Error { message } => {
                    tracing::info!(device = %device.id, len = message.len(), "device reported an error");
                    return Ok(());
                }
                other => {
                    return Err(Close(format!(
                        "unexpected '{}' message",
                        other.message_type()
                    )));
                }
            }
        }
    }

    /// Drops a slot's loaded document (refused, half-applied or not
    /// stored): it leaves the map, and a connection already waiting for its
    /// lock reloads it from storage (`Slot::unstored`).
    fn forget(&self, s: &mut Slot, team: &str, id: DocumentId) {
        s.unstored = true;
        lock(&self.docs).remove(&(team.to_string(), id));
    }

    /// Refuses what a device sent (door, rules, size cap): neither stored
    /// nor kept in memory, recorded for the administrator (refusals.rs).
    /// Returns the close that tells the device why.
    fn refuse(
        &self,
        s: &mut Slot,
        device: &Device,
        key: &str,
        id: DocumentId,
        kind: crate::refusals::RefusalKind,
        reason: String,
    ) -> Close {
        self.refusals
            .note(&self.storage, device, key, kind, &reason);
        self.forget(s, &device.team, id);
        Close(reason)
    }

    /// Refuses one document of a connection that goes on (an actor
    /// sequence clash, `protocol::ACTOR_CLASH`): recorded as other refusals
    /// are, the loaded copy dropped (Automerge refused the whole batch, but
    /// the sync state may have moved), this connection's state for it
    /// forgotten, and the device told in a `doc-refused` message.
    fn refuse_document(
        &self,
        s: &mut Slot,
        conn_id: u64,
        device: &Device,
        outbox: &Outbox,
        key: &str,
        id: DocumentId,
    ) {
        let reason = linkbook_core::protocol::ACTOR_CLASH;
        let kind = crate::refusals::RefusalKind::ActorClash;
        self.refusals.note(&self.storage, device, key, kind, reason);
        s.states.remove(&conn_id);
        s.sent.remove(&conn_id);
        s.last_reply.remove(&conn_id);
        self.forget(s, &device.team, id);
        outbox.offer(Message::DocRefused {
            sender_id: self.peer_id.clone(),
            target_id: outbox.peer().to_string(),
            document_id: key.to_string(),
            reason: reason.to_string(),
        });
    }

    fn unavailable(&self, _device: &Device, outbox: &Outbox, document_id: &str) {
        outbox.offer(Message::DocUnavailable {
            sender_id: self.peer_id.clone(),
            target_id: outbox.peer().to_string(),
            document_id: document_id.to_string(),
        });
    }

    /// The loaded slot of `team`'s document `id`; `None`: the team has no
    /// such document (whether or not another team has one: namespaced).
    async fn slot(
        &self,
        id: DocumentId,
        team: &str,
        create: bool,
    ) -> Result<Option<Arc<tokio::sync::Mutex<Slot>>>, Close> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let map_key: DocKey = (team.to_string(), id);
        let loaded = lock(&self.docs).get(&map_key).cloned();
        if let Some(slot) = loaded {
            let mut s = slot.lock().await;
            s.last_used = tick;
            drop(s);
            return Ok(Some(slot));
        }
        let key = id.to_string();
        // Only the team's own document is looked at: another team's large
        // document costs what a missing id costs (issue 11, finding 6).
        let stored = self.storage.load_document(team, &key).await.map_err(|e| {
            tracing::error!(error = %e, "loading a document failed");
            Close("the relay could not load a document".into())
        })?;
        let slot = match stored {
            Some(stored) => {
                let stored_bytes = crate::documents::stored_bytes(&stored);
                // Stored bytes go through the budget too (doc_cap.rs): a
                // poison stored before it existed must not abort the relay;
                // Automerge's panics are caught (documents.rs).
                let budget = crate::doc_cap::load_budget(self.limits.max_document_ops);
                let doc = match crate::documents::load(&stored, &budget) {
                    Ok(doc) => doc,
                    Err(e) => {
                        tracing::error!(doc = %key, bytes = stored_bytes, reason = %e, "a stored document is damaged; not loaded");
                        return Err(Close("a stored document is damaged".into()));
                    }
                };
                Slot {
                    team: stored.team,
                    doc,
                    states: HashMap::new(),
                    last_used: tick,
                    unstored: false,
                    last_reply: HashMap::new(),
                    sent: HashMap::new(),
                    stored_bytes: u64::try_from(stored_bytes).unwrap_or(u64::MAX),
                    seq: Some(stored.seq),
                }
            }
            None if create => Slot {
                team: team.to_string(),
                doc: Automerge::new(),
                states: HashMap::new(),
                last_used: tick,
                unstored: false,
                last_reply: HashMap::new(),
                sent: HashMap::new(),
                stored_bytes: 0,
                seq: Some(0),
            },
            None => return Ok(None),
        };
        let slot = {
            let mut docs = lock(&self.docs);
            // Another connection may have loaded it meanwhile: keep theirs.
            docs.entry(map_key)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(slot)))
                .clone()
        };
        self.evict_idle().await;
        Ok(Some(slot))
    }

    /// The document's slot, locked (see [`Hub::slot`]); one left behind by
    /// a failed write is passed over and the document loaded again.
    async fn locked_slot(
        &self,
        id: DocumentId,
        team: &str,
        create: bool,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<Slot>>, Close> {
        loop {
            let Some(slot) = self.slot(id, team, create).await? else {
                return Ok(None);
            };
            let s = slot.lock_owned().await;
            // Removed from the map before its lock was released, so the
            // next `slot` call loads from storage: this loop ends.
            if !s.unstored {
                return Ok(Some(s));
            }
        }
    }

    /// Drops the least recently used documents nobody is syncing.
    async fn evict_idle(&self) {
        let mut saved = Vec::new();
        {
            let mut docs = lock(&self.docs);
            if docs.len() <= self.limits.max_loaded_docs {
                return;
            }
            // Not in use by any request right now (the map holds the only
            // reference and nobody holds the lock), and holding no received
            // changes that wait for their dependencies: those are only in
            // memory, and their sender will not send them again this session.
            let mut idle: Vec<(u64, DocKey)> = docs
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .filter_map(|(key, slot)| slot.try_lock().ok().map(|s| (s, key.clone())))
                .filter(|(s, _)| s.doc.get_missing_deps(&[]).is_empty())
                .map(|(s, id)| (s.last_used, id))
                .collect();
            idle.sort();
            let excess = docs.len() - self.limits.max_loaded_docs;
            for (_, (team, id)) in idle.into_iter().take(excess) {
                if let Some(slot) = docs.remove(&(team.clone(), id))
                    && let Ok(mut s) = slot.try_lock()
                {
                    // A connection still syncing it reloads this state from
                    // storage, as after a reconnect.
                    for (_, (device, state)) in s.states.drain() {
                        saved.push((team.clone(), id.to_string(), device, state.encode()));
                    }
                }
            }
        }
        if let Err(e) = self.storage.save_sync_states(&saved).await {
            tracing::warn!(error = %e, "saving sync states of evicted documents failed");
        }
    }

    async fn sync(
        &self,
        conn_id: u64,
        (device, tag): (&Device, &str),
        outbox: &Outbox,
        owed: &mut Owed,
        (document_id, data): (&str, &[u8]),
        is_request: bool,
    ) -> Result<(), Close> {
        let Ok(id) = DocumentId::parse(document_id, "document id") else {
            self.unavailable(device, outbox, document_id);
            return Ok(());
        };
        // Never `sync::Message::decode` alone: see protocol::decode_sync_message.
        let message = self.decode_within_budget(device, document_id, data)?;
        tracing::trace!(device = %device.id, doc = %document_id, m = %brief(&message), "receive");
        // A purged document is gone, also from memory, and never taken again
        // (the administrator purges from another process: checked each time).
        let key = id.to_string();
        let purged = self
            .storage
            .is_purged(&device.team, &key)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "checking for a purge failed");
                Close("the relay could not read its storage".into())
            })?;
        if purged {
            lock(&self.docs).remove(&(device.team.clone(), id));
            self.unavailable(device, outbox, document_id);
            return Ok(());
        }
        let Some(mut s) = self.locked_slot(id, &device.team, !is_request).await? else {
            // The team has no such document (another team's id included:
            // namespaced). Audited, if another team holds it, afterwards.
            self.unavailable(device, outbox, document_id);
            crate::oracle::note_cross_team(&self.storage, device, &key);
            return Ok(());
        };
        // The slot's lock may have been a wait: revoked meanwhile, nothing
        // of this message is applied.
        if let Some(reason) = outbox.shut_reason() {
            return Err(Close(reason));
        }
        self.load_state(&mut s, &key, conn_id, device).await;
        let before = s.doc.get_heads();
        if before.is_empty() {
            // New to this team: another team may hold the id (audited only).
            crate::oracle::note_cross_team(&self.storage, device, &key);
        }
        // At most heavy::PERMITS messages are applied at once (heavy.rs).
        let turn = crate::heavy::permit().await;
        let applied = {
            let Slot { doc, states, .. } = &mut *s;
            let (_, state) = states
                .get_mut(&conn_id)
                .ok_or_else(|| Close("internal state lost".into()))?;
            catch_automerge_panic(|| doc.receive_sync_message(state, message))
        };
        if applied.is_err() {
            // Automerge panicked half-way: forget the loaded copy.
            self.forget(&mut s, &device.team, id);
        }
        match applied {
            Ok(Ok(())) => {}
            // A copy of this device (or a hostile peer) reused an actor's
            // sequence numbers: this document is refused, not the session.
            Ok(Err(e)) if linkbook_core::protocol::is_actor_clash(&e) => {
                drop(turn);
                self.refuse_document(&mut s, conn_id, device, outbox, &key, id);
                return Ok(());
            }
            _ => {
                return Err(Close(
                    "the Automerge sync message could not be applied".into(),
                ));
            }
        }
        let after = s.doc.get_heads();
        // The door asks whether a directory entry's family was purged.
        let purged: std::collections::HashSet<String> = if before != after {
            self.storage
                .purged(&device.team)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "reading the purged documents failed");
                    Close("the relay could not read its storage".into())
                })?
                .into_iter()
                .map(|p| p.id)
                .collect()
        } else {
            Default::default()
        };
        if before != after
            && let Err(reason) = crate::door::check(&s.doc, &before, &|id| purged.contains(id))
        {
            let kind = crate::refusals::RefusalKind::Door;
            return Err(self.refuse(&mut s, device, &key, id, kind, reason));
        }
        let upload = (before != after).then(|| crate::doc_cap::Upload::of(&s.doc, &before));
        if let Some(upload) = &upload
            && let Err(reason) =
                crate::doc_cap::check(s.stored_bytes, upload, self.limits.max_document_bytes)
        {
            tracing::warn!(device = %device.id, doc = %key,
                stored = s.stored_bytes, adding = upload.stored_bytes(), cap = self.limits.max_document_bytes,
                "the document's sizes at the cap");
            let kind = crate::refusals::RefusalKind::OverSizeCap;
            return Err(self.refuse(&mut s, device, &key, id, kind, reason));
        }
        // The rules' diff and the cap are heavy work too (heavy.rs); storing is not.
        drop(turn);
        if let Some(upload) = upload
            && let Err(close) = self.store(&key, &mut s, upload, (device, tag)).await
        {
            // Not stored, so not kept: reload from storage next time.
            self.forget(&mut s, &device.team, id);
            return Err(close);
        }
        if is_request && s.doc.get_heads().is_empty() {
            s.states.remove(&conn_id);
            drop(s);
            self.unavailable(device, outbox, document_id);
            crate::oracle::note_cross_team(&self.storage, device, &key);
            return Ok(());
        }
        let Slot {
            doc,
            states,
            last_reply,
            sent,
            ..
        } = &mut *s;
        // The reply and the live fan-out are gathered first, so that every
        // device they carry changes to is audited in one transaction (one
        // fsync) before any is sent: one commit per recipient made fifty
        // devices on one document cost 50 x 50 fsyncs, under the slot's lock.
        let mut outgoing: Vec<(Outbox, Vec<Message>)> = Vec::new();
        let mut received: Vec<String> = Vec::new();
        let max = self.limits.max_message_bytes;
        let envelope = |to: &str, data: Vec<u8>| Message::Sync {
            sender_id: self.peer_id.clone(),
            target_id: to.to_string(),
            document_id: document_id.to_string(),
            data,
        };
        // With the queue over half full the reply waits (outbox.rs): it is
        // generated, from the state as it is then, once the queue drained.
        let replies = match states.get_mut(&conn_id) {
            Some(_) if !outbox.has_room() => {
                owed.owe(document_id);
                None
            }
            Some((_, state)) => Some(crate::split::outgoing(
                doc,
                state,
                sent.entry(conn_id).or_default(),
                max,
                &device.id,
                document_id,
            )),
            None => None,
        };
        // The same bytes already went to this connection, which reads in
        // order, so it has them: an identical reply is not sent again.
        let replies = replies.map(|parts| {
            parts.map(|parts| {
                use sha2::Digest;
                let mut hasher = sha2::Sha256::new();
                for part in &parts {
                    hasher.update(&part.data);
                }
                let digest: [u8; 32] = hasher.finalize().into();
                let repeat = before == after && last_reply.get(&conn_id) == Some(&digest);
                last_reply.insert(conn_id, digest);
                if repeat { Vec::new() } else { parts }
            })
        });
        match replies {
            Some(Some(parts)) => {
                if parts.iter().any(|p| p.carries_changes) {
                    received.push(device.id.clone());
                }
                outgoing.push((
                    outbox.clone(),
                    parts
                        .into_iter()
                        .map(|p| envelope(outbox.peer(), p.data))
                        .collect(),
                ));
            }
            Some(None) => outgoing.push((
                outbox.clone(),
                vec![Message::DocUnavailable {
                    sender_id: self.peer_id.clone(),
                    target_id: outbox.peer().to_string(),
                    document_id: document_id.to_string(),
                }],
            )),
            None => {}
        }
        if before != after {
            // Live fan-out to the other devices syncing this document now.
            // A queue already over its limit refuses it and that connection
            // is closed (outbox.rs): not this one, which is reading.
            let connections = lock(&self.connections);
            for (other, (other_device, state)) in states.iter_mut().filter(|(c, _)| **c != conn_id)
            {
                let Some(conn) = connections.get(other) else {
                    continue;
                };
                if !conn.outbox.accepts() {
                    continue;
                }
                let parts = crate::split::outgoing(
                    doc,
                    state,
                    sent.entry(*other).or_default(),
                    max,
                    other_device,
                    document_id,
                );
                let parts = parts.unwrap_or_default();
                if parts.is_empty() {
                    continue;
                }
                if parts.iter().any(|p| p.carries_changes) && !received.contains(other_device) {
                    received.push(other_device.clone());
                }
                outgoing.push((
                    conn.outbox.clone(),
                    parts
                        .into_iter()
                        .map(|p| envelope(conn.outbox.peer(), p.data))
                        .collect(),
                ));
            }
        }
        self.audit_received(&received, document_id).await;
        for (to, messages) in outgoing {
            to.offer_all(messages);
        }
        Ok(())
    }

    /// The connection's sync state for a document, from storage the first time.
    async fn load_state(&self, s: &mut Slot, key: &str, conn_id: u64, device: &Device) {
        if let std::collections::hash_map::Entry::Vacant(e) = s.states.entry(conn_id) {
            let saved = self
                .storage
                .sync_state(&device.team, key, &device.id)
                .await
                .ok()
                .flatten();
            let state = saved
                .and_then(|b| sync::State::decode(&b).ok())
                .unwrap_or_default();
            e.insert((device.id.clone(), state));
        }
    }

    /// The pipelined session (a device that connected with its change
    /// cursor): `peer`, then `changed-since` naming the team's documents
    /// changed since the cursor (not counting the device's own uploads), then
    /// one `sync` per document carrying the changes made since the heads
    /// this device and the relay last shared. Plain Automerge sync would
    /// first trade heads and Bloom filters and only then changes; assuming
    /// the last shared heads saves that round trip (if the device lacks
    /// something after all, its answer says so and the usual exchange
    /// follows). The device pipelines its own documents the same way, so a
    /// sync takes one round trip after TLS (docs/adr/0005).
    /// Tells the device what changed since its cursor (`changed-since`):
    /// the documents the relay will send it unasked.
    async fn changed_since(
        &self,
        device: &Device,
        outbox: &Outbox,
        (since, mine): (i64, &str),
    ) -> Result<Vec<String>, Close> {
        let read = async {
            Ok::<_, crate::storage::StorageError>((
                self.storage
                    .changed_since(&device.team, since, mine)
                    .await?,
                self.storage.purged(&device.team).await?,
                self.storage.team_policy(&device.team).await?,
            ))
        };
        let ((cursor, changed), purged, policy) = read.await.map_err(|e| {
            tracing::error!(error = %e, "reading the change cursor failed");
            Close("the relay could not read what changed".into())
        })?;
        outbox.offer(Message::ChangedSince {
            cursor,
            document_ids: changed.clone(),
            purged,
            retention_days: policy.retention_days,
            lease_days: policy.lease_days,
        });
        Ok(changed)
    }

    /// Sends one changed document unasked: the changes made since the heads
    /// this device and the relay last shared. Plain Automerge sync would
    /// first trade heads and Bloom filters and only then changes; assuming
    /// the last shared heads saves that round trip (if the device lacks
    /// something after all, its answer says so and the usual exchange
    /// follows). The device pipelines its own documents the same way, so a
    /// sync takes one round trip after TLS (docs/adr/0005). A reply
    /// deferred while the send queue was over half full goes out this way
    /// too (the device spoke first, so nothing is assumed).
    async fn push(
        &self,
        conn_id: u64,
        device: &Device,
        outbox: &Outbox,
        document_id: String,
    ) -> Result<(), Close> {
        let Ok(id) = DocumentId::parse(&document_id, "document id") else {
            return Ok(());
        };
        let Some(mut s) = self.locked_slot(id, &device.team, false).await? else {
            self.unavailable(device, outbox, &document_id);
            return Ok(());
        };
        self.load_state(&mut s, &document_id, conn_id, device).await;
        let Slot {
            doc, states, sent, ..
        } = &mut *s;
        let Some((_, state)) = states.get_mut(&conn_id) else {
            return Ok(());
        };
        // Not if the device spoke about this document first: then the usual
        // exchange is under way.
        if state.their_heads.is_none() {
            linkbook_core::protocol::assume_shared_heads(state);
        }
        let max = self.limits.max_message_bytes;
        let sent = sent.entry(conn_id).or_default();
        let Some(parts) = crate::split::outgoing(doc, state, sent, max, &device.id, &document_id)
        else {
            drop(s);
            self.unavailable(device, outbox, &document_id);
            return Ok(());
        };
        if parts.iter().any(|p| p.carries_changes) {
            self.audit_received(std::slice::from_ref(&device.id), &document_id)
                .await;
        }
        outbox.offer_all(parts.into_iter().map(|p| Message::Sync {
            sender_id: self.peer_id.clone(),
            target_id: outbox.peer().to_string(),
            document_id: document_id.clone(),
            data: p.data,
        }));
        Ok(())
    }

    /// Audits that devices were sent changes of a document, in one
    /// transaction. The audit is best effort here: failing to write it must
    /// not stop the sync.
    /// Decodes a sync message within the relay's budget; bytes over it are
    /// refused before Automerge loads them, logged and audited (ids only).
    fn decode_within_budget(
        &self,
        device: &Device,
        document_id: &str,
        data: &[u8],
    ) -> Result<automerge::sync::Message, Close> {
        let budget = linkbook_core::budget::Budget {
            max_rows: self.limits.max_document_ops,
            ..Default::default()
        };
        linkbook_core::protocol::decode_sync_message_within(data, &budget).map_err(|e| {
            if let linkbook_core::protocol::SyncMessageError::OverBudget(_) = e {
                tracing::warn!(device = %device.id, doc = %document_id, bytes = data.len(), "sync message over budget refused");
                let kind = crate::refusals::RefusalKind::OverBudget;
                self.refusals.note(&self.storage, device, document_id, kind, &e.to_string());
            }
            Close(e.to_string())
        })
    }

    async fn audit_received(&self, device_ids: &[String], document_id: &str) {
        if device_ids.is_empty() {
            return;
        }
        let now = Utc::now();
        let records: Vec<AuditRecord> = device_ids
            .iter()
            .map(|id| {
                AuditRecord::new(AuditAction::Received, now)
                    .device(id)
                    .in_document(document_id)
            })
            .collect();
        if let Err(e) = self.storage.append_audit(&records).await {
            tracing::error!(error = %e, "writing the audit failed");
        }
    }

    /// Commits an applied message's changes (doc_cap::Upload), compacting
    /// now and then.
    /// Its changes, the cursor advance and the `uploaded` audit record are
    /// one transaction (`commit_upload`); a compaction follows only while
    /// this copy holds every stored change (nobody else appended since it
    /// was loaded), and replaces only the changes it covers.
    async fn store(
        &self,
        key: &str,
        s: &mut Slot,
        upload: crate::doc_cap::Upload,
        (device, tag): (&Device, &str),
    ) -> Result<(), Close> {
        let now = Utc::now();
        let audit = [AuditRecord::by(
            Some(device),
            AuditAction::Uploaded,
            Some(key),
            now,
        )];
        let committed = self
            .storage
            .commit_upload(&StorageUpload {
                team: &s.team,
                doc_id: key,
                uploader: tag,
                changes: &upload.changes,
                snapshot: upload.snapshot.as_deref(),
                audit: &audit,
                at: now,
            })
            .await;
        let result = match committed {
            Ok(c) => {
                s.stored_bytes = upload.stored_after(s.stored_bytes);
                s.seq = s
                    .seq
                    .filter(|known| *known == c.previous_seq)
                    .map(|_| c.seq);
                if c.change_count >= COMPACT_AFTER
                    && let Some(through) = s.seq
                {
                    let snapshot = s.doc.save();
                    match self.storage.compact(&s.team, key, &snapshot, through).await {
                        Ok(true) => {
                            s.stored_bytes = u64::try_from(snapshot.len()).unwrap_or(u64::MAX);
                        }
                        Ok(false) => {}
                        // The changes are stored; compaction tries again later.
                        Err(e) => {
                            tracing::warn!(error = %e, doc = %key, "compacting a document failed")
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(crate::Error::from(e)),
        };
        result.map_err(|e| {
            // The transaction was rolled back and the device keeps its
            // changes; it sends them again at its next sync.
            if e.is_disk_problem() {
                tracing::error!(error = %e, device = %device.id, doc = %key,
                    "storing changes failed: the relay's disk is full or not writable; free space (or fix the data directory) and devices' next syncs deliver their changes");
            } else {
                tracing::error!(error = %e, device = %device.id, doc = %key, "storing changes failed");
            }
            Close("the relay could not store your changes; try again later".into())
        })
    }

    /// Saves the connection's sync states and forgets it.
    async fn disconnect(&self, conn_id: u64) {
        lock(&self.connections).remove(&conn_id);
        let slots: Vec<(DocKey, Arc<tokio::sync::Mutex<Slot>>)> = lock(&self.docs)
            .iter()
            .map(|(key, s)| (key.clone(), s.clone()))
            .collect();
        let mut states = Vec::new();
        for ((team, id), slot) in slots {
            let mut slot = slot.lock().await;
            slot.last_reply.remove(&conn_id);
            slot.sent.remove(&conn_id);
            if let Some((device, state)) = slot.states.remove(&conn_id) {
                states.push((team, id.to_string(), device, state.encode()));
            }
        }
        if let Err(e) = self.storage.save_sync_states(&states).await {
            tracing::warn!(error = %e, "saving sync states failed; the next sync will exchange more");
        }
    }
}

/// Most characters in a peer id a client announces at `join`.
pub const MAX_PEER_ID_CHARS: usize = 128;

/// Refused: a peer id that names another device.
pub const PEER_ID_OF_ANOTHER_DEVICE: &str = "the peer id must be this device's id";

/// A client's own peer id (`join`'s `senderId`): 1 to
/// [`MAX_PEER_ID_CHARS`] printable characters (no control characters or
/// whitespace). It names nobody: the device is the token's (docs/adr/0008).
/// One shaped like a device id (a UUID) must be `device_id` itself, so no
/// peer id ever names another device, in logs or to another peer.
pub(crate) fn check_peer_id(peer_id: &str, device_id: &str) -> Result<(), String> {
    if uuid::Uuid::try_parse(peer_id).is_ok() && !peer_id.eq_ignore_ascii_case(device_id) {
        return Err(PEER_ID_OF_ANOTHER_DEVICE.into());
    }
    let n = peer_id.chars().count();
    if n == 0
        || n > MAX_PEER_ID_CHARS
        || peer_id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "the peer id must be 1 to {MAX_PEER_ID_CHARS} printable characters without spaces"
        ));
    }
    Ok(())
}

/// A sync message for trace logs: heads, need, have and changes counts.
pub(crate) fn brief(m: &sync::Message) -> String {
    let short = |h: &[ChangeHash]| {
        h.iter()
            .map(|h| h.to_string()[..6].to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "heads=[{}] need=[{}] have={:?} changes={}",
        short(&m.heads),
        short(&m.need),
        m.have
            .iter()
            .map(|h| short(&h.last_sync))
            .collect::<Vec<_>>(),
        m.changes.len()
    )
}

/// The next message, or the reason the connection is closed: shut (its
/// device revoked: revocation.rs), [`REPLACED`] when a newer connection took
/// the slot, or the overflow reason when its send queue overflowed. Those
/// come first when several are ready (each ends the session).
async fn next_or_closed(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    kick: &tokio::sync::Notify,
    outbox: &Outbox,
) -> Result<Option<Message>, Close> {
    tokio::select! {
        biased;
        reason = outbox.shut_down() => Err(Close(reason)),
        () = kick.notified() => Err(Close(REPLACED.into())),
        () = outbox.overflowed() => Err(Close(crate::outbox::overflow_reason(outbox.limit()))),
        m = next_message(stream) => m,
    }
}

/// Tells a shut connection why (an `error` message, then a close frame
/// with code 1008, policy), best effort: the socket is dropped after.
async fn say_shut(
    sink: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
    reason: String,
) {
    let error = Message::Error {
        message: reason.clone(),
    };
    if sink
        .send(WsMessage::Binary(error.encode().into()))
        .await
        .is_ok()
    {
        // A close frame's reason has at most 123 bytes.
        let mut short = reason;
        while short.len() > 123 {
            short.pop();
        }
        let frame = axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::POLICY,
            reason: short.into(),
        };
        let _ = sink.send(WsMessage::Close(Some(frame))).await;
    }
}

/// The next protocol message, `None` at a clean close.
async fn next_message(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Result<Option<Message>, Close> {
    loop {
        match stream.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(Close(format!("bad WebSocket frame: {e}"))),
            Some(Ok(WsMessage::Binary(bytes))) => {
                return Message::decode(&bytes)
                    .map(Some)
                    .map_err(|e| Close(format!("malformed message: {e}")));
            }
            Some(Ok(WsMessage::Text(_))) => {
                return Err(Close(
                    "text frames are not part of the protocol: send CBOR in binary frames".into(),
                ));
            }
            Some(Ok(WsMessage::Close(_))) => return Ok(None),
            Some(Ok(_)) => continue, // ping/pong
        }
    }
}

#[cfg(test)]
mod session_tests {
    use super::{MAX_PEER_ID_CHARS, PEER_ID_OF_ANOTHER_DEVICE, Sessions};

    fn check_peer_id(peer_id: &str) -> Result<(), String> {
        super::check_peer_id(peer_id, "0f8e2d9c-6a1b-4c3d-9e8f-7a6b5c4d3e2f")
    }

    #[test]
    fn a_clients_own_peer_id_is_accepted_within_bounds() {
        for ok in [
            "peer-4fzyo82mvyr",
            "0f8e2d9c-6a1b-4c3d-9e8f-7a6b5c4d3e2f",
            "storage-server-host",
        ] {
            assert_eq!(check_peer_id(ok), Ok(()), "{ok}");
        }
        let long = "p".repeat(MAX_PEER_ID_CHARS + 1);
        for bad in ["", "a b", "a\nb", "\u{0}", long.as_str()] {
            assert!(check_peer_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_peer_id(&"p".repeat(MAX_PEER_ID_CHARS)), Ok(()));
        assert_eq!(
            check_peer_id("1f8e2d9c-6a1b-4c3d-9e8f-7a6b5c4d3e2f"),
            Err(PEER_ID_OF_ANOTHER_DEVICE.into())
        );
    }

    #[test]
    fn session_names_are_short_hex_and_tag_uploads_per_session() {
        let s = Sessions::from_query(Some("since=4&session=ab12&after=CD34")).expect("valid");
        assert_eq!(s.upload_tag("dev"), "dev/ab12");
        assert_eq!(s.excluded_tag("dev"), "dev/cd34");
        // A device's first named session leaves out its untagged uploads;
        // an older device is tagged by its id alone, as before.
        let first = Sessions::from_query(Some("since=4&session=ab12")).expect("valid");
        assert_eq!(first.excluded_tag("dev"), "dev");
        let old = Sessions::from_query(Some("since=4")).expect("valid");
        assert_eq!(
            (old.upload_tag("dev"), old.excluded_tag("dev")),
            ("dev".into(), "dev".into())
        );
        assert_eq!(Sessions::from_query(None), Ok(Sessions::default()));
        let long = format!("session={}", "a".repeat(Sessions::MAX_LEN + 1));
        for bad in [
            "session=",
            "session=xyz",
            "session=ab/cd",
            "session=ab%2Fcd",
            long.as_str(),
            "after=ab12",
            "session=ab&after=",
        ] {
            assert!(Sessions::from_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
