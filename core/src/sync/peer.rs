//! The sans-I/O document sync engine: one peer, many documents, automerge-repo
//! messages in, messages out (issue 13, docs/adr/0010).
//!
//! [`PeerSync`] owns what a sync with one peer has to remember per document:
//! the Automerge `sync::State`, whether the document is still pending (not
//! yet known to be at the same heads on both sides), whether our last
//! message demands an answer, how often we asked for changes that did not
//! come, and how it ended (in sync, unavailable, too big to send, skipped,
//! refused). It owns the protections every copy of this loop needs, once:
//! bounded decoding of the peer's bytes ([`PeerSync::decode`], then
//! `protocol::decode_sync_message`), Automerge's panics caught, a cap on the
//! messages one peer may send about one document, every outgoing sync
//! message split under the peer's message limit (`protocol::split`), and a
//! document the caller's check at the door refuses skipped and reported,
//! not the whole sync.
//!
//! It has no socket, no database and no clock. The documents are the
//! caller's, reached through [`Replica`] (the device's store, the relay's
//! loaded slots, or a map in tests), and so are sync states at rest: the
//! engine takes their bytes from [`Replica::sync_state`] when it first meets
//! a document and hands every state back from [`PeerSync::states`]. What the
//! caller must act on comes out as [`Event`]s.

use std::collections::{BTreeSet, HashMap};

use automerge::AutoCommit;
use automerge::sync;

use super::doc_sync::{ApplyError, DocSync, Outgoing};
use super::skipped;
use crate::error::{Error, Result};
use crate::ids::DocumentId;
use crate::protocol::split::SplitMessages;
use crate::protocol::{self, DecodeError, Message};

/// Messages one sync takes from its peer about one document: a 64 MiB
/// document in the smallest parts (64 KiB) is ~1,000; a peer that sends more
/// never lets the sync end (tests/tests/malicious_relay.rs).
pub(crate) const MAX_MESSAGES_PER_DOCUMENT: u32 = 10_000;

/// The documents on this side of the sync, and their sync states at rest.
/// Implementations do the I/O; the engine only says what to run.
pub(crate) trait Replica {
    /// `f` on the document held as `id`; `None` if none is held.
    fn read<T>(
        &mut self,
        id: DocumentId,
        f: impl FnOnce(&mut AutoCommit) -> T,
    ) -> Result<Option<T>>;

    /// Changes document `id` in one transaction: `apply` runs on the held
    /// document, or on a new empty one if none is held. If `apply` fails,
    /// or the result does not pass the caller's check at the door (a new
    /// document's type and team, the change rules), nothing is kept and
    /// the error says why; otherwise the change is stored before this
    /// returns. Returns whether the document's heads changed (a new
    /// document left empty is not kept and did not change).
    fn write(
        &mut self,
        id: DocumentId,
        apply: impl FnOnce(&mut AutoCommit) -> Result<()>,
    ) -> Result<bool>;

    /// The sync state last saved for (`peer`, `id`), encoded.
    fn sync_state(&mut self, peer: &str, id: DocumentId) -> Result<Option<Vec<u8>>>;
}

/// Something the caller has to act on, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The peer's changes changed the document (stored by [`Replica::write`]).
    Changed(DocumentId),
    /// The peer does not have the document, or will not serve it to us.
    Unavailable(DocumentId),
    /// The document cannot be taken (a refusal at the door, a sync message
    /// refused before Automerge saw it, changes Automerge refused): nothing
    /// of it was kept and the rest of the peer's messages about it are
    /// ignored. Said once per document; the reason quotes no content.
    Skipped { id: DocumentId, reason: String },
    /// The peer refused our changes to the document (`doc-refused`).
    Refused { id: DocumentId, reason: String },
    /// A change of the document is larger than the peer's message limit:
    /// it is not sent, and the document is no longer awaited.
    TooLarge(DocumentId),
}

/// Why the engine ends a sync.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    /// The peer's bytes are not a protocol message.
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    /// The peer sent more than [`MAX_MESSAGES_PER_DOCUMENT`] messages about
    /// one document (`None`: about documents this sync did not open).
    #[error("more than {MAX_MESSAGES_PER_DOCUMENT} messages about one document")]
    Chatter(Option<DocumentId>),
    /// The replica failed for a reason that is not the document's (storage).
    #[error(transparent)]
    Replica(#[from] Error),
}

/// How the engine speaks to its peer.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerConfig {
    /// Our peer id (`senderId` of what we send).
    pub our_id: String,
    /// The peer's id (`targetId`); may be learnt later ([`PeerSync::set_peer`]).
    pub their_id: String,
    /// The largest message to send, envelope included (`protocol::split`).
    pub max_message_bytes: usize,
    /// The peer answers every message and starts from the heads both sides
    /// last shared (Linkbook's relay, docs/adr/0005): a document we hold is
    /// opened with `protocol::assume_shared_heads`, and every opened
    /// document awaits an answer. Otherwise (any automerge-repo peer) a
    /// heads announcement may go unanswered.
    pub answers_everything: bool,
}

/// The per-document sync with one peer. See the module doc.
#[derive(Default)]
pub(crate) struct PeerSync {
    config: PeerConfig,
    /// Each document's sync with the peer (doc_sync.rs).
    states: HashMap<DocumentId, DocSync>,
    /// Every document this sync opened or was told to expect.
    all: BTreeSet<DocumentId>,
    /// Documents not yet known to be in sync.
    pending: BTreeSet<DocumentId>,
    /// Pending documents whose last message asks for an answer (it carried
    /// changes or needs, or was a request); the others are heads
    /// announcements, which a peer with nothing to add may leave unanswered.
    demanding: BTreeSet<DocumentId>,
    /// Documents that changed here since the last sync with this peer: a
    /// peer must hear back about them even with nothing to add.
    changed_here: BTreeSet<DocumentId>,
    sent_changes: BTreeSet<DocumentId>,
    received: BTreeSet<DocumentId>,
    unavailable: BTreeSet<DocumentId>,
    too_large: BTreeSet<DocumentId>,
    skipped: BTreeSet<DocumentId>,
    refused: BTreeSet<DocumentId>,
    /// Messages heard per document of this sync (`None`: any other).
    heard: HashMap<Option<DocumentId>, u32>,
    outbox: Vec<Message>,
    events: Vec<Event>,
}

/// A sync state to keep, encoded, and whether the document ended this sync
/// in sync (so the caller can skip it next time unless it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavedState {
    pub id: DocumentId,
    pub state: Vec<u8>,
    pub in_sync: bool,
}

impl PeerSync {
    pub(crate) fn new(config: PeerConfig) -> Self {
        PeerSync {
            config,
            ..Default::default()
        }
    }

    /// Decodes the peer's bytes within the protocol's bounds (CBOR items,
    /// then per field): the only way outside bytes become a [`Message`].
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Message, SyncError> {
        Ok(Message::decode(bytes)?)
    }

    /// The peer's id and message limit, once it stated them (`peer`).
    pub(crate) fn set_peer(&mut self, their_id: String, max_message_bytes: usize) {
        self.config.their_id = their_id;
        self.config.max_message_bytes = max_message_bytes;
    }

    pub(crate) fn their_id(&self) -> &str {
        &self.config.their_id
    }

    /// Marks documents that changed here since the last sync with this
    /// peer: their heads announcements await an answer.
    pub(crate) fn changed_here(&mut self, ids: impl IntoIterator<Item = DocumentId>) {
        self.changed_here.extend(ids);
    }

    /// Opens the sync of one document (once; again is a no-op): the first
    /// message(s) about it go to [`PeerSync::take_outgoing`].
    pub(crate) fn open(&mut self, replica: &mut impl Replica, id: DocumentId) -> Result<()> {
        if !self.all.insert(id) {
            return Ok(());
        }
        self.pending.insert(id);
        let mut state = self.state(replica, id)?;
        if self.config.answers_everything && replica.read(id, |_| ())?.is_some() {
            state.assume_shared_heads();
        }
        let (messages, held) = generate(
            replica,
            id,
            &mut state,
            self.config.max_message_bytes,
            Outgoing::Unasked,
        )?;
        self.states.insert(id, state);
        let Some(messages) = self.sendable(id, messages) else {
            return Ok(());
        };
        if messages.is_empty() {
            // Nothing to say: we already know they have what we have.
            self.pending.remove(&id);
            return Ok(());
        }
        for message in messages {
            if held && !message.changes.is_empty() {
                self.sent_changes.insert(id);
            }
            if self.config.answers_everything
                || !held
                || !message.changes.is_empty()
                || !message.need.is_empty()
                || self.changed_here.contains(&id)
            {
                self.demanding.insert(id);
            }
            self.push(id, message, held);
        }
        Ok(())
    }

    /// A document the peer will send without being asked (`changed-since`):
    /// awaited like an opened one.
    pub(crate) fn expect(&mut self, id: DocumentId) {
        self.all.insert(id);
        self.pending.insert(id);
        self.demanding.insert(id);
    }

    /// Stops syncing a document (deleted here during the sync: purged).
    pub(crate) fn forget(&mut self, id: DocumentId) {
        self.all.remove(&id);
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        self.changed_here.remove(&id);
        self.sent_changes.remove(&id);
    }

    /// Takes one message from the peer: its sync messages are applied
    /// through `replica` and answered (see [`PeerSync::take_outgoing`]).
    /// Messages that are not about documents are only counted; the caller
    /// handles those it knows (`peer`, `error`, …).
    pub(crate) fn on_message(
        &mut self,
        replica: &mut impl Replica,
        message: Message,
    ) -> std::result::Result<(), SyncError> {
        let about = match &message {
            Message::Sync { document_id, .. }
            | Message::Request { document_id, .. }
            | Message::DocUnavailable { document_id, .. } => {
                DocumentId::parse(document_id, "document id")
                    .ok()
                    .filter(|id| self.all.contains(id))
            }
            _ => None,
        };
        let count = self.heard.entry(about).or_default();
        *count += 1;
        if *count > MAX_MESSAGES_PER_DOCUMENT {
            return Err(SyncError::Chatter(about));
        }
        // An answer (a request is the peer's own question).
        if let Message::Sync { document_id, .. } | Message::DocUnavailable { document_id, .. } =
            &message
            && let Ok(id) = DocumentId::parse(document_id, "document id")
        {
            self.demanding.remove(&id);
        }
        match message {
            Message::Sync {
                document_id, data, ..
            }
            | Message::Request {
                document_id, data, ..
            } => {
                let Ok(id) = DocumentId::parse(&document_id, "document id") else {
                    return Ok(());
                };
                if self.skipped.contains(&id) || self.refused.contains(&id) {
                    return Ok(());
                }
                // Refused before Automerge sees it (the budget, a bad Bloom
                // filter): that document is skipped, not the sync.
                match protocol::decode_sync_message(&data) {
                    Ok(m) => self.receive(replica, id, m)?,
                    Err(e) => self.skip(id, skipped::refused_message(&e)),
                }
            }
            Message::DocUnavailable { document_id, .. } => {
                if let Ok(id) = DocumentId::parse(&document_id, "document id") {
                    if self.pending.remove(&id) {
                        self.unavailable.insert(id);
                    }
                    self.events.push(Event::Unavailable(id));
                }
            }
            Message::DocRefused {
                document_id,
                reason,
                ..
            } => {
                if let Ok(id) = DocumentId::parse(&document_id, "document id")
                    && self.all.contains(&id)
                {
                    self.refuse(id, reason);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// What to send to the peer now, in order.
    pub(crate) fn take_outgoing(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbox)
    }

    /// What happened since the last call, in order.
    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Every opened document is known to be in sync (or ended otherwise).
    pub(crate) fn done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the peer owes us an answer: a pending document's last
    /// message asked for one. A peer quiet while this is false had nothing
    /// to add ([`PeerSync::on_quiet`]).
    pub(crate) fn awaits_answer(&self) -> bool {
        self.pending.iter().any(|id| self.demanding.contains(id))
    }

    /// The peer has been quiet: with no answer owed, the documents still
    /// pending are heads announcements it had nothing to add to, so they
    /// are in sync. Returns whether the sync is done.
    pub(crate) fn on_quiet(&mut self) -> bool {
        if !self.awaits_answer() {
            self.pending.clear();
        }
        self.done()
    }

    /// The sync states to keep (documents skipped, refused or too large
    /// keep the last saved one: the next sync tries them again).
    pub(crate) fn states(&self) -> Vec<SavedState> {
        self.states
            .iter()
            .map(|(id, state)| SavedState {
                id: *id,
                state: state.encode(),
                in_sync: self.all.contains(id)
                    && !self.pending.contains(id)
                    && !self.unavailable.contains(id)
                    && !self.too_large.contains(id),
            })
            .collect()
    }

    /// Documents opened or expected (their count), pending, sent, received
    /// and unavailable, for the caller's summary and progress.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            total: self.all.len(),
            pending: self.pending.len(),
            sent: self.sent_changes.len(),
            received: self.received.len(),
            unavailable: self.unavailable.len(),
        }
    }

    fn state(&mut self, replica: &mut impl Replica, id: DocumentId) -> Result<DocSync> {
        if let Some(s) = self.states.remove(&id) {
            return Ok(s);
        }
        let saved = replica.sync_state(&self.config.their_id, id)?;
        Ok(DocSync::from_saved(saved.as_deref()))
    }

    fn receive(
        &mut self,
        replica: &mut impl Replica,
        id: DocumentId,
        message: sync::Message,
    ) -> Result<()> {
        let mut state = self.state(replica, id)?;
        let applied = replica.write(id, |doc| apply(doc, &mut state, message));
        let changed = match applied {
            Ok(changed) => changed,
            // Nothing of it was kept.
            Err(e) => match skipped::reason(&e) {
                Some(reason) => {
                    self.skip(id, reason);
                    return Ok(());
                }
                None => return Err(e),
            },
        };
        if changed {
            self.received.insert(id);
            self.events.push(Event::Changed(id));
        }
        let (replies, _) = generate(
            replica,
            id,
            &mut state,
            self.config.max_message_bytes,
            Outgoing::Reply,
        )?;
        let Some(replies) = self.sendable(id, replies) else {
            return Ok(());
        };
        for reply in replies {
            if !reply.changes.is_empty() {
                self.sent_changes.insert(id);
            }
            if !reply.changes.is_empty() || !reply.need.is_empty() {
                self.demanding.insert(id);
            }
            self.push(id, reply, true);
        }
        // In sync once the peer's last stated heads are ours: whatever we
        // just sent is only an acknowledgement, which needs no answer.
        let in_sync = match replica.read(id, |doc| doc.get_heads())? {
            Some(ours) => state.their_heads_are(&ours),
            None => state.their_heads().is_some_and(|theirs| theirs.is_empty()),
        };
        self.states.insert(id, state);
        if in_sync {
            self.pending.remove(&id);
        }
        Ok(())
    }

    /// The messages to send, or `None` for a document with a change larger
    /// than the message limit: reported, and no longer awaited, so the sync
    /// goes on with the other documents.
    fn sendable(&mut self, id: DocumentId, messages: SplitMessages) -> Option<Vec<sync::Message>> {
        match messages {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(document = %id, change_bytes = e.change_bytes, limit = e.max_message_bytes, "a change is larger than the peer's message limit; this document is not synced");
                self.pending.remove(&id);
                self.demanding.remove(&id);
                // Not kept: the last saved state still says what the peer
                // lacks, so the next sync tries (and reports) it again.
                self.states.remove(&id);
                if self.too_large.insert(id) {
                    self.events.push(Event::TooLarge(id));
                }
                None
            }
        }
    }

    /// Skips a document that cannot be taken: no longer awaited, its sync
    /// state not kept (the next sync asks again from the last good one).
    fn skip(&mut self, id: DocumentId, reason: String) {
        tracing::warn!(document = %id, reason = %reason, "skipping a document this app cannot read");
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        self.received.remove(&id);
        if self.skipped.insert(id) {
            self.events.push(Event::Skipped { id, reason });
        }
    }

    /// The peer refused our changes to `id`: no longer awaited, its sync
    /// state not kept (the next sync offers the same changes), said once.
    fn refuse(&mut self, id: DocumentId, reason: String) {
        tracing::warn!(document = %id, "the peer refused this side's changes to a document");
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        if self.refused.insert(id) {
            self.events.push(Event::Refused {
                id,
                reason: reason.chars().take(1_000).collect(),
            });
        }
    }

    /// Queues one sync message: `sync` for a document we hold, `request`
    /// for one we lack.
    fn push(&mut self, id: DocumentId, message: sync::Message, held: bool) {
        let (sender_id, target_id) = (self.config.our_id.clone(), self.config.their_id.clone());
        let (document_id, data) = (id.to_string(), message.encode());
        self.outbox.push(match held {
            true => Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            },
            false => Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            },
        });
    }
}

/// How many documents stand where, for summaries and progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub total: usize,
    pub pending: usize,
    pub sent: usize,
    pub received: usize,
    pub unavailable: usize,
}

/// Applies a peer's sync message to a document ([`DocSync::receive`]). On
/// an error the caller must drop the document: after a panic it may be
/// half-changed.
pub(crate) fn apply(
    doc: &mut AutoCommit,
    state: &mut DocSync,
    message: sync::Message,
) -> Result<()> {
    state
        .receive(&mut doc.sync(), message)
        .map_err(|e| match e {
            ApplyError::Panicked => Error::from(protocol::AutomergePanicked),
            ApplyError::Refused(e) => Error::from(e),
        })
}

/// One document's sync messages under the limit (from an empty document if
/// the replica does not hold it); the flag says whether it does.
fn generate(
    replica: &mut impl Replica,
    id: DocumentId,
    state: &mut DocSync,
    max_message_bytes: usize,
    kind: Outgoing,
) -> Result<(SplitMessages, bool)> {
    let mut run = |doc: &mut AutoCommit| state.outgoing(kind, &doc.sync(), max_message_bytes);
    Ok(match replica.read(id, &mut run)? {
        Some(m) => (m, true),
        None => (run(&mut AutoCommit::new()), false),
    })
}

#[cfg(test)]
#[path = "peer_tests.rs"]
mod tests;
