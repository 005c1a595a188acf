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
use tokio::sync::mpsc;

use crate::storage::{COMPACT_AFTER, Device, Storage};

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
}

struct Connection {
    device_id: String,
    tx: mpsc::UnboundedSender<Message>,
    /// Ends the session when a newer connection of the device takes its place.
    kick: Arc<tokio::sync::Notify>,
}

/// Everything connections share.
pub struct Hub {
    storage: Arc<dyn Storage>,
    peer_id: String,
    storage_id: String,
    limits: Limits,
    docs: Mutex<HashMap<DocumentId, Arc<tokio::sync::Mutex<Slot>>>>,
    connections: Mutex<HashMap<u64, Connection>>,
    next_conn: AtomicU64,
    tick: AtomicU64,
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

/// Why a connection is being closed: the text the device is sent.
#[derive(Debug)]
pub(crate) struct Close(pub(crate) String);

/// Runs blocking storage work without stalling the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Hub {
    pub fn new(storage: Arc<dyn Storage>, storage_id: String, limits: Limits) -> Self {
        Hub {
            storage,
            peer_id: format!("linkbook-relay-{storage_id}"),
            storage_id,
            limits,
            docs: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            tick: AtomicU64::new(1),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Makes room for a new connection of `device_id`: at the cap, its
    /// oldest connection is closed with [`REPLACED`] (a phone that lost
    /// signal, or a stale copy). A thief holding a copied token can kick the
    /// real device this way too, and vice versa: revoking the device ends
    /// that (its token stops authenticating).
    pub fn make_room(&self, device_id: &str) {
        let mut conns = lock(&self.connections);
        let mut mine: Vec<u64> = conns
            .iter()
            .filter(|(_, c)| c.device_id == device_id)
            .map(|(id, _)| *id)
            .collect();
        if mine.len() < self.limits.max_connections_per_device.max(1) {
            return;
        }
        mine.sort_unstable();
        let excess = mine.len() + 1 - self.limits.max_connections_per_device.max(1);
        for id in mine.into_iter().take(excess) {
            if let Some(old) = conns.remove(&id) {
                tracing::warn!(device = %device_id, "connection cap reached: closing the device's oldest connection");
                old.kick.notify_one();
            }
        }
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
    pub async fn serve(self: Arc<Self>, device: Device, socket: WebSocket, since: Option<i64>) {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let kick = Arc::new(tokio::sync::Notify::new());
        lock(&self.connections).insert(
            conn_id,
            Connection {
                device_id: device.id.clone(),
                tx: tx.clone(),
                kick: kick.clone(),
            },
        );
        let ping_every = std::time::Duration::from_secs(self.limits.ping_interval_secs);
        let writer = tokio::spawn(async move {
            let mut ping = crate::conn_limits::ping_timer(ping_every);
            loop {
                let m = tokio::select! {
                    m = rx.recv() => match m { Some(m) => m, None => break },
                    () = crate::conn_limits::tick(&mut ping) => {
                        if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let close = matches!(m, Message::Error { .. });
                if sink
                    .send(WsMessage::Binary(m.encode().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                if close {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    break;
                }
            }
        });
        let outcome = self
            .session(conn_id, &device, &tx, (&mut stream, &kick), since)
            .await;
        if let Err(Close(why)) = &outcome {
            tracing::warn!(device = %device.id, reason = %why, "closing sync connection");
            let _ = tx.send(Message::Error {
                message: why.clone(),
            });
        }
        drop(tx);
        self.disconnect(conn_id).await;
        let _ = writer.await;
        let _ = blocking(|| self.storage.touch_device(&device.id, Utc::now()));
        tracing::info!(device = %device.id, "sync connection ended");
    }

    async fn session(
        &self,
        conn_id: u64,
        device: &Device,
        tx: &mpsc::UnboundedSender<Message>,
        (stream, kick): (
            &mut futures_util::stream::SplitStream<WebSocket>,
            &tokio::sync::Notify,
        ),
        since: Option<i64>,
    ) -> Result<(), Close> {
        // Replaced only while waiting for the device (next_or_replaced), never inside a sync.
        let timeout = std::time::Duration::from_secs(self.limits.join_timeout_secs);
        let first = match tokio::time::timeout(timeout, next_or_replaced(stream, kick)).await {
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
        if sender_id != device.id {
            return Err(Close("the peer id must be this device's id".into()));
        }
        let _ = tx.send(Message::Peer {
            sender_id: self.peer_id.clone(),
            target_id: device.id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: Some(self.storage_id.clone()),
                is_ephemeral: false,
                max_message_bytes: Some(self.limits.max_message_bytes as u64),
            },
            selected_protocol_version: PROTOCOL_VERSION.into(),
        });
        let mut to_push = match since {
            Some(since) => self.changed_since(device, tx, since)?,
            None => std::collections::VecDeque::new(),
        };
        tracing::info!(device = %device.id, team = %device.team, "device joined");
        let _ = blocking(|| {
            self.storage
                .audit(Some(device), "connected", None, Utc::now())
        });
        loop {
            // Pushes go out between the device's messages, not before them
            // all: a fresh device answers each push, and a relay that did not
            // read meanwhile would leave it blocked on a full socket.
            let next = if to_push.is_empty() {
                next_or_replaced(stream, kick).await?
            } else {
                tokio::select! {
                    biased;
                    m = next_or_replaced(stream, kick) => m?,
                    () = std::future::ready(()) => {
                        if let Some(document_id) = to_push.pop_front() {
                            self.push(conn_id, device, tx, document_id).await?;
                        }
                        continue;
                    }
                }
            };
            let Some(m) = next else {
                return Ok(());
            };
            match m {
                Message::Sync {
                    document_id, data, ..
                } => {
                    self.sync(conn_id, device, tx, &document_id, &data, false)
                        .await?
                }
                Message::Request {
                    document_id, data, ..
                } => {
                    self.sync(conn_id, device, tx, &document_id, &data, true)
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

    fn unavailable(&self, device: &Device, tx: &mpsc::UnboundedSender<Message>, document_id: &str) {
        let _ = tx.send(Message::DocUnavailable {
            sender_id: self.peer_id.clone(),
            target_id: device.id.clone(),
            document_id: document_id.to_string(),
        });
    }

    /// The loaded slot of a document the device's team may see; `None` is
    /// "unavailable" whether the document is missing or another team's.
    async fn slot(
        &self,
        id: DocumentId,
        team: &str,
        create: bool,
    ) -> Result<Option<Arc<tokio::sync::Mutex<Slot>>>, Close> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let loaded = lock(&self.docs).get(&id).cloned();
        if let Some(slot) = loaded {
            let mut s = slot.lock().await;
            if s.team != team {
                return Ok(None);
            }
            s.last_used = tick;
            drop(s);
            return Ok(Some(slot));
        }
        let key = id.to_string();
        // The team first, from its index, before any document is loaded:
        // another team's large document must cost what a missing id costs,
        // or the answer's time tells that the id exists (issue 11).
        let owner = blocking(|| self.storage.document_team(&key)).map_err(|e| {
            tracing::error!(error = %e, "reading a document's team failed");
            Close("the relay could not load a document".into())
        })?;
        if owner.as_deref().is_some_and(|t| t != team) {
            return Ok(None);
        }
        let stored = blocking(|| self.storage.load_document(&key)).map_err(|e| {
            tracing::error!(error = %e, "loading a document failed");
            Close("the relay could not load a document".into())
        })?;
        let slot = match stored {
            Some(stored) => {
                if stored.team != team {
                    return Ok(None);
                }
                // Automerge panics on some malformed bytes: see
                // protocol::catch_automerge_panic.
                let mut doc = match &stored.snapshot {
                    Some(s) => match catch_automerge_panic(|| Automerge::load(s)) {
                        Ok(Ok(doc)) => doc,
                        _ => return Err(Close("a stored document is damaged".into())),
                    },
                    None => Automerge::new(),
                };
                // One batch: Automerge applies it at once (per-change calls
                // re-sort the ops each time).
                let changes = stored.changes.concat();
                if !changes.is_empty()
                    && !matches!(
                        catch_automerge_panic(|| doc.load_incremental(&changes)),
                        Ok(Ok(_))
                    )
                {
                    return Err(Close("a stored document is damaged".into()));
                }
                Slot {
                    team: stored.team,
                    doc,
                    states: HashMap::new(),
                    last_used: tick,
                    unstored: false,
                    last_reply: HashMap::new(),
                }
            }
            None if create => Slot {
                team: team.to_string(),
                doc: Automerge::new(),
                states: HashMap::new(),
                last_used: tick,
                unstored: false,
                last_reply: HashMap::new(),
            },
            None => return Ok(None),
        };
        let slot = {
            let mut docs = lock(&self.docs);
            // Another connection may have loaded it meanwhile: keep theirs.
            docs.entry(id)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(slot)))
                .clone()
        };
        self.evict_idle();
        let s = slot.lock().await;
        if s.team != team {
            return Ok(None);
        }
        drop(s);
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
    fn evict_idle(&self) {
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
            let mut idle: Vec<(u64, DocumentId)> = docs
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .filter_map(|(id, slot)| slot.try_lock().ok().map(|s| (s, *id)))
                .filter(|(s, _)| s.doc.get_missing_deps(&[]).is_empty())
                .map(|(s, id)| (s.last_used, id))
                .collect();
            idle.sort();
            let excess = docs.len() - self.limits.max_loaded_docs;
            for (_, id) in idle.into_iter().take(excess) {
                if let Some(slot) = docs.remove(&id)
                    && let Ok(mut s) = slot.try_lock()
                {
                    // A connection still syncing it reloads this state from
                    // storage, as after a reconnect.
                    for (_, (device, state)) in s.states.drain() {
                        saved.push((id.to_string(), device, state.encode()));
                    }
                }
            }
        }
        let result = blocking(|| {
            saved.iter().try_for_each(|(doc, device, state)| {
                self.storage.save_sync_state(doc, device, state)
            })
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "saving sync states of evicted documents failed");
        }
    }

    async fn sync(
        &self,
        conn_id: u64,
        device: &Device,
        tx: &mpsc::UnboundedSender<Message>,
        document_id: &str,
        data: &[u8],
        is_request: bool,
    ) -> Result<(), Close> {
        let Ok(id) = DocumentId::parse(document_id, "document id") else {
            self.unavailable(device, tx, document_id);
            return Ok(());
        };
        // Never `sync::Message::decode` alone: see protocol::decode_sync_message.
        let message = self.decode_within_budget(device, document_id, data)?;
        tracing::trace!(device = %device.id, doc = %document_id, m = %brief(&message), "receive");
        // A purged document is gone, also from memory, and never taken again
        // (the administrator purges from another process: checked each time).
        let key = id.to_string();
        let purged = blocking(|| self.storage.purged_team(&key)).map_err(|e| {
            tracing::error!(error = %e, "checking for a purge failed");
            Close("the relay could not read its storage".into())
        })?;
        if let Some(purged_team) = purged {
            lock(&self.docs).remove(&id);
            if purged_team == device.team || is_request {
                self.unavailable(device, tx, document_id);
                return Ok(());
            }
            // Another team's purged id: answered as a never-stored one.
            return crate::oracle::answer_as_new(&self.peer_id, device, tx, document_id, message);
        }
        let Some(mut s) = self.locked_slot(id, &device.team, !is_request).await? else {
            if is_request {
                // Missing or another team's: the same answer.
                self.unavailable(device, tx, document_id);
                return Ok(());
            }
            // With `create`, `None` is only ever another team's document.
            crate::oracle::note_cross_team(&self.storage, device, &key);
            return crate::oracle::answer_as_new(&self.peer_id, device, tx, document_id, message);
        };
        self.load_state(&mut s, &key, conn_id, device);
        let before = s.doc.get_heads();
        // At most heavy::PERMITS messages are applied at once (heavy.rs).
        let turn = crate::heavy::permit().await;
        let applied = {
            let Slot { doc, states, .. } = &mut *s;
            let (_, state) = states
                .get_mut(&conn_id)
                .ok_or_else(|| Close("internal state lost".into()))?;
            catch_automerge_panic(|| doc.receive_sync_message(state, message))
        };
        drop(turn);
        if applied.is_err() {
            // Automerge panicked half-way: forget the loaded copy, and make a
            // connection already waiting for this slot reload it too.
            s.unstored = true;
            lock(&self.docs).remove(&id);
        }
        if !matches!(applied, Ok(Ok(()))) {
            return Err(Close(
                "the Automerge sync message could not be applied".into(),
            ));
        }
        let after = s.doc.get_heads();
        if before != after
            && let Err(reason) = crate::door::check(&s.doc, &before, &|id| {
                blocking(|| self.storage.is_purged(id)).unwrap_or(false)
            })
        {
            // Refused at the door: neither stored nor kept in memory.
            tracing::warn!(device = %device.id, team = %device.team, doc = %key, reason = %reason, "refused at the door");
            s.unstored = true;
            lock(&self.docs).remove(&id);
            return Err(Close(reason));
        }
        if before != after
            && let Err(close) = self.store(&key, &mut s, &before, device)
        {
            // Not stored, so not kept: reload from storage next time.
            s.unstored = true;
            lock(&self.docs).remove(&id);
            return Err(close);
        }
        if is_request && s.doc.get_heads().is_empty() {
            s.states.remove(&conn_id);
            drop(s);
            self.unavailable(device, tx, document_id);
            return Ok(());
        }
        let Slot {
            doc,
            states,
            last_reply,
            ..
        } = &mut *s;
        // The reply and the live fan-out are gathered first, so that every
        // device they carry changes to is audited in one transaction (one
        // fsync) before any is sent: one commit per recipient made fifty
        // devices on one document cost 50 x 50 fsyncs, under the slot's lock.
        let mut outgoing: Vec<(mpsc::UnboundedSender<Message>, Message)> = Vec::new();
        let mut received: Vec<String> = Vec::new();
        let max = self.limits.max_message_bytes;
        let replies = states
            .get_mut(&conn_id)
            .map(|(_, state)| crate::split::outgoing(doc, state, max, &device.id, document_id));
        // Encoded once: the bytes are both sent and compared with the last
        // reply. The same bytes already went to this connection, which reads
        // in order, so it has them: repeated "nothing" messages do not each
        // cost the whole document (Automerge clears `sent_hashes` whenever
        // the peer's heads are empty).
        let replies = replies.map(|parts| {
            parts.map(|parts| {
                use sha2::Digest;
                let parts: Vec<(bool, Vec<u8>)> = parts
                    .into_iter()
                    .map(|reply| {
                        tracing::trace!(device = %device.id, doc = %document_id, m = %brief(&reply), "reply");
                        (!reply.changes.is_empty(), reply.encode())
                    })
                    .collect();
                let mut hasher = sha2::Sha256::new();
                for (_, bytes) in &parts {
                    hasher.update(bytes);
                }
                let digest: [u8; 32] = hasher.finalize().into();
                let repeat = before == after && last_reply.get(&conn_id) == Some(&digest);
                last_reply.insert(conn_id, digest);
                if repeat { Vec::new() } else { parts }
            })
        });
        match replies {
            Some(Some(parts)) => {
                if parts.iter().any(|(changes, _)| *changes) {
                    received.push(device.id.clone());
                }
                outgoing.extend(parts.into_iter().map(|(_, data)| {
                    (
                        tx.clone(),
                        Message::Sync {
                            sender_id: self.peer_id.clone(),
                            target_id: device.id.clone(),
                            document_id: document_id.to_string(),
                            data,
                        },
                    )
                }))
            }
            Some(None) => outgoing.push((
                tx.clone(),
                Message::DocUnavailable {
                    sender_id: self.peer_id.clone(),
                    target_id: device.id.clone(),
                    document_id: document_id.to_string(),
                },
            )),
            None => {}
        }
        if before != after {
            // Live fan-out to the other devices syncing this document now.
            let connections = lock(&self.connections);
            for (other, (other_device, state)) in states.iter_mut().filter(|(c, _)| **c != conn_id)
            {
                let Some(conn) = connections.get(other) else {
                    continue;
                };
                let parts = crate::split::outgoing(doc, state, max, other_device, document_id);
                for m in parts.into_iter().flatten() {
                    tracing::trace!(device = %other_device, doc = %document_id, m = %brief(&m), "fan-out");
                    if !m.changes.is_empty() && !received.contains(other_device) {
                        received.push(other_device.clone());
                    }
                    outgoing.push((
                        conn.tx.clone(),
                        Message::Sync {
                            sender_id: self.peer_id.clone(),
                            target_id: other_device.clone(),
                            document_id: document_id.to_string(),
                            data: m.encode(),
                        },
                    ));
                }
            }
        }
        self.audit_received(&received, document_id);
        for (to, message) in outgoing {
            let _ = to.send(message);
        }
        Ok(())
    }

    /// The connection's sync state for a document, from storage the first time.
    fn load_state(&self, s: &mut Slot, key: &str, conn_id: u64, device: &Device) {
        if let std::collections::hash_map::Entry::Vacant(e) = s.states.entry(conn_id) {
            let saved = blocking(|| self.storage.sync_state(key, &device.id))
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
    fn changed_since(
        &self,
        device: &Device,
        tx: &mpsc::UnboundedSender<Message>,
        since: i64,
    ) -> Result<std::collections::VecDeque<String>, Close> {
        let ((cursor, changed), purged, policy) = blocking(|| {
            Ok::<_, crate::error::Error>((
                self.storage
                    .changed_since(&device.team, since, &device.id)?,
                self.storage.purged(&device.team)?,
                self.storage.team_policy(&device.team)?,
            ))
        })
        .map_err(|e| {
            tracing::error!(error = %e, "reading the change cursor failed");
            Close("the relay could not read what changed".into())
        })?;
        let _ = tx.send(Message::ChangedSince {
            cursor,
            document_ids: changed.clone(),
            purged: purged.into_iter().map(|p| p.id).collect(),
            retention_days: policy.retention_days,
            lease_days: policy.lease_days,
        });
        Ok(changed.into())
    }

    /// Sends one changed document unasked: the changes made since the heads
    /// this device and the relay last shared. Plain Automerge sync would
    /// first trade heads and Bloom filters and only then changes; assuming
    /// the last shared heads saves that round trip (if the device lacks
    /// something after all, its answer says so and the usual exchange
    /// follows). The device pipelines its own documents the same way, so a
    /// sync takes one round trip after TLS (docs/adr/0005).
    async fn push(
        &self,
        conn_id: u64,
        device: &Device,
        tx: &mpsc::UnboundedSender<Message>,
        document_id: String,
    ) -> Result<(), Close> {
        let Ok(id) = DocumentId::parse(&document_id, "document id") else {
            return Ok(());
        };
        let Some(mut s) = self.locked_slot(id, &device.team, false).await? else {
            self.unavailable(device, tx, &document_id);
            return Ok(());
        };
        self.load_state(&mut s, &document_id, conn_id, device);
        let Slot { doc, states, .. } = &mut *s;
        let Some((_, state)) = states.get_mut(&conn_id) else {
            return Ok(());
        };
        // Not if the device spoke about this document first: then the usual
        // exchange is under way.
        if state.their_heads.is_none() {
            linkbook_core::protocol::assume_shared_heads(state);
        }
        let max = self.limits.max_message_bytes;
        let Some(parts) = crate::split::outgoing(doc, state, max, &device.id, &document_id) else {
            drop(s);
            self.unavailable(device, tx, &document_id);
            return Ok(());
        };
        if parts.iter().any(|m| !m.changes.is_empty()) {
            self.audit_received(std::slice::from_ref(&device.id), &document_id);
        }
        for m in parts {
            tracing::trace!(device = %device.id, doc = %document_id, m = %brief(&m), "push");
            let _ = tx.send(Message::Sync {
                sender_id: self.peer_id.clone(),
                target_id: device.id.clone(),
                document_id: document_id.clone(),
                data: m.encode(),
            });
        }
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
                let _ = blocking(|| {
                    self.storage
                        .audit(Some(device), "refused-over-budget", Some(document_id), Utc::now())
                });
            }
            Close(e.to_string())
        })
    }

    fn audit_received(&self, device_ids: &[String], document_id: &str) {
        if device_ids.is_empty() {
            return;
        }
        let result = blocking(|| {
            self.storage
                .audit_received(device_ids, document_id, &Utc::now().to_rfc3339())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the audit failed");
        }
    }

    /// Commits the changes made since `before`, compacting now and then.
    fn store(
        &self,
        key: &str,
        s: &mut Slot,
        before: &[ChangeHash],
        device: &Device,
    ) -> Result<(), Close> {
        let changes = s.doc.save_after(before);
        // A document new to the relay is stored as a whole (Automerge's
        // compressed save), not as the list of its changes: it loads in half
        // the time, and first uploads are most of what a relay loads.
        let snapshot = before.is_empty().then(|| s.doc.save());
        let now = Utc::now();
        let result = blocking(|| -> crate::error::Result<()> {
            let count = self.storage.append_changes(
                key,
                &s.team,
                &device.id,
                &changes,
                snapshot.as_deref(),
                now,
            )?;
            if count >= COMPACT_AFTER {
                let snapshot = s.doc.save();
                self.storage
                    .append_changes(key, &s.team, &device.id, &[], Some(&snapshot), now)?;
            }
            self.storage
                .audit(Some(device), "uploaded", Some(key), now)?;
            Ok(())
        });
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
        let slots: Vec<(DocumentId, Arc<tokio::sync::Mutex<Slot>>)> = lock(&self.docs)
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        let mut states = Vec::new();
        for (id, slot) in slots {
            let mut slot = slot.lock().await;
            slot.last_reply.remove(&conn_id);
            if let Some((device, state)) = slot.states.remove(&conn_id) {
                states.push((id.to_string(), device, state.encode()));
            }
        }
        let saved = blocking(|| {
            states.iter().try_for_each(|(doc, device, state)| {
                self.storage.save_sync_state(doc, device, state)
            })
        });
        if let Err(e) = saved {
            tracing::warn!(error = %e, "saving sync states failed; the next sync will exchange more");
        }
    }
}

/// A sync message for trace logs: heads, need, have and changes counts.
fn brief(m: &sync::Message) -> String {
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

/// The next message, or [`REPLACED`] when a newer connection took the slot.
async fn next_or_replaced(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    kick: &tokio::sync::Notify,
) -> Result<Option<Message>, Close> {
    tokio::select! {
        m = next_message(stream) => m,
        () = kick.notified() => Err(Close(REPLACED.into())),
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
