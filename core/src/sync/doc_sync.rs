//! One document's sync with one peer: the unit the engine is built of, and
//! what the relay keeps per document and connection (issue 13, ADR 0010).
//!
//! [`PeerSync`](super::peer::PeerSync) holds one [`DocSync`] per document
//! for its one peer (the device's session, later a tablet's); the relay's
//! hub holds one per connection in each loaded document, because its
//! documents are shared by every connection syncing them and the live
//! fan-out reads all of their states under the document's lock. Either way
//! a peer's changes reach a document and an answer is generated only here:
//!
//! - [`DocSync::receive`] applies a peer's sync message with Automerge's
//!   panics caught, and says an actor sequence clash apart from other
//!   refusals;
//! - [`DocSync::generate`] cuts what to send under the peer's message limit
//!   (`protocol::split`), proportional to what was asked: Automerge forgets
//!   what it sent (`sent_hashes`) whenever the peer states empty heads, and
//!   answers empty heads with the whole document (a V2 message) whatever it
//!   sent before, so a peer repeating "I have nothing", or alternating two
//!   messages, was sent the whole document each time (issue 11, finding 8).
//!   A link reads in order and a peer that fails to apply a change closes
//!   it, so whatever one link carried, its peer has: those hashes are kept,
//!   added to Automerge's `sent_hashes` before each message is generated,
//!   and once anything was sent the message is generated as V1 (V2's whole
//!   document ignores `sent_hashes`). A new link starts afresh. A peer's
//!   sync reset (it lost what it was sent) is honoured [`MAX_RESETS`]
//!   times: each costs at most the document once more;
//! - [`DocSync::reply`], the answer to what was received, also asks the
//!   peer for a sync reset when the changes we need do not come;
//! - [`DocSync::repeats_last_reply`] spots an answer identical to the last
//!   one sent, which the peer has (a link reads in order).
//!
//! No socket, no storage, no clock: the caller stores what changed and
//! keeps [`DocSync::encode`]'s bytes at rest.

use std::collections::HashSet;

use automerge::sync::{self, Capability, MessageFlags, SyncDoc};
use automerge::{AutomergeError, ChangeHash};
use sha2::Digest;

use crate::protocol::split::{SplitMessages, generate_sync_messages};
use crate::protocol::{self, catch_automerge_panic};

/// Sync resets one peer may ask for about one document on one link; each
/// makes us forget what we sent, so the next answer may carry the whole
/// document again.
pub const MAX_RESETS: u8 = 3;

/// Answers without the changes we asked for, after which we ask the peer
/// for a sync reset (one change-less answer is normal: it crossed our
/// request).
const UNANSWERED_NEEDS: u8 = 3;

/// Why a peer's sync message was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Automerge panicked half-way: the document may be half-changed and
    /// must be dropped (reloaded from storage).
    #[error("Automerge could not apply the sync message")]
    Panicked,
    /// Automerge refused the changes; nothing of them was applied.
    #[error("Automerge refused the changes: {0}")]
    Refused(#[from] AutomergeError),
}

impl ApplyError {
    /// An actor sequence clash (`protocol::ACTOR_CLASH`): a restored or
    /// copied device; only this document is refused, not the link.
    pub fn is_actor_clash(&self) -> bool {
        matches!(self, ApplyError::Refused(e) if protocol::is_actor_clash(e))
    }
}

/// What a message to the peer is: the answer to the one just received
/// ([`DocSync::reply`]), or sent unasked (an opening, a fan-out, a push:
/// [`DocSync::generate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    Reply,
    Unasked,
}

/// One document's sync with one peer. See the module doc.
#[derive(Debug, Default)]
pub struct DocSync {
    state: sync::State,
    /// Every change hash this link carried of the document.
    sent: HashSet<ChangeHash>,
    resets: u8,
    /// SHA-256 of the last answer sent.
    last_reply: Option<[u8; 32]>,
    /// Our last answer asked for changes (`need`): how many answers since
    /// came without any.
    needing: Option<u8>,
    /// What `needing` came to with the last received message.
    unanswered: u8,
}

impl DocSync {
    /// A sync that starts from the state kept at rest (`None`, or bytes
    /// that do not decode: from nothing, which costs only a longer
    /// exchange).
    pub fn from_saved(saved: Option<&[u8]>) -> Self {
        DocSync {
            state: saved
                .and_then(|b| sync::State::decode(b).ok())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    /// The state to keep at rest.
    pub fn encode(&self) -> Vec<u8> {
        self.state.encode()
    }

    /// Opens with the changes made since the heads both sides last shared
    /// (docs/adr/0005): see `protocol::assume_shared_heads`.
    pub fn assume_shared_heads(&mut self) {
        protocol::assume_shared_heads(&mut self.state);
    }

    /// The heads the peer last stated (`None`: it has not spoken about the
    /// document on this link).
    pub fn their_heads(&self) -> Option<&[ChangeHash]> {
        self.state.their_heads.as_deref()
    }

    /// Applies the peer's sync message to `doc` (for an `AutoCommit`, its
    /// `sync()`), Automerge's panics caught: the one way a peer's changes
    /// reach a document. On [`ApplyError::Panicked`] the caller drops the
    /// document.
    pub fn receive(
        &mut self,
        doc: &mut impl SyncDoc,
        message: sync::Message,
    ) -> Result<(), ApplyError> {
        let brought_changes = !message.changes.is_empty();
        let reset = message
            .flags
            .is_some_and(|f| f.contains(MessageFlags::SYNC_RESET));
        if reset && self.resets < MAX_RESETS {
            self.resets += 1;
            self.sent.clear();
        }
        self.unanswered = match self.needing.take() {
            Some(n) if !brought_changes => n.saturating_add(1),
            _ => 0,
        };
        catch_automerge_panic(|| doc.receive_sync_message(&mut self.state, message))
            .map_err(|_| ApplyError::Panicked)??;
        Ok(())
    }

    /// What to send the peer now, cut under `max_message_bytes` (none if
    /// there is nothing to say), proportional to what it asked for (see
    /// the module doc). On a change over the limit the state is left as it
    /// was.
    pub fn generate(&mut self, doc: &impl SyncDoc, max_message_bytes: usize) -> SplitMessages {
        let capabilities = self.state.their_capabilities.clone();
        if !self.sent.is_empty() {
            self.state.sent_hashes.extend(self.sent.iter().copied());
            self.state.their_capabilities = capabilities.as_ref().map(|caps| {
                caps.iter()
                    .filter(|c| **c != Capability::MessageV2)
                    .cloned()
                    .collect()
            });
        }
        let generated = generate_sync_messages(&mut self.state, max_message_bytes, |s| {
            doc.generate_sync_message(s)
        });
        self.state.their_capabilities = capabilities;
        if generated.is_ok() {
            self.sent.extend(self.state.sent_hashes.iter().copied());
        }
        generated
    }

    /// The answer to the message just received ([`DocSync::generate`]):
    /// when we asked for changes and answers keep coming without them, the
    /// peer thinks it sent them already (its `sent_hashes`; we lost them)
    /// and will not send them again, so the two sides would trade the same
    /// `need` forever: the answer asks the peer to forget what it sent.
    pub fn reply(&mut self, doc: &impl SyncDoc, max_message_bytes: usize) -> SplitMessages {
        let reset = self.unanswered >= UNANSWERED_NEEDS;
        if reset {
            tracing::debug!("the changes we need do not come; asking for a sync reset");
            self.state.needs_reset = true;
        }
        let replies = self.generate(doc, max_message_bytes)?;
        if replies.iter().any(|m| !m.need.is_empty()) {
            self.needing = Some(if reset { 0 } else { self.unanswered });
        }
        Ok(replies)
    }

    /// [`DocSync::reply`] or [`DocSync::generate`], as `kind` says.
    pub fn outgoing(
        &mut self,
        kind: Outgoing,
        doc: &impl SyncDoc,
        max_message_bytes: usize,
    ) -> SplitMessages {
        match kind {
            Outgoing::Reply => self.reply(doc, max_message_bytes),
            Outgoing::Unasked => self.generate(doc, max_message_bytes),
        }
    }

    /// Whether `encoded` (an answer's messages, encoded) is the answer last
    /// sent, which the peer has: with `changed` (the document changed
    /// since) it never is. Remembers `encoded` as the last answer.
    pub fn repeats_last_reply<'a>(
        &mut self,
        encoded: impl IntoIterator<Item = &'a [u8]>,
        changed: bool,
    ) -> bool {
        let mut hasher = sha2::Sha256::new();
        for part in encoded {
            hasher.update(part);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        let repeat = !changed && self.last_reply == Some(digest);
        self.last_reply = Some(digest);
        repeat
    }

    /// Whether the peer's last stated heads are exactly `ours`.
    pub fn their_heads_are(&self, ours: &[ChangeHash]) -> bool {
        let Some(theirs) = &self.state.their_heads else {
            return false;
        };
        let mut theirs = theirs.clone();
        let mut ours = ours.to_vec();
        theirs.sort();
        ours.sort();
        theirs == ours
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, Automerge, ROOT};

    fn document(notes: usize, len: usize) -> Automerge {
        let mut doc = AutoCommit::new();
        for i in 0..notes {
            // Noise: text that does not compress, so sizes are what they seem.
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let text: String = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            doc.put(ROOT, format!("note{i}"), text).expect("put");
            doc.commit();
        }
        doc.document().clone()
    }

    /// What a fresh automerge-repo peer says: empty heads, need and have
    /// (with `reset`, also "forget what you sent me").
    fn nothing(reset: bool) -> sync::Message {
        let mut state = sync::State::new();
        state.needs_reset = reset;
        state.their_capabilities = Some(vec![Capability::MessageV2, Capability::SyncReset]);
        AutoCommit::new()
            .sync()
            .generate_sync_message(&mut state)
            .expect("a message")
    }

    fn bytes(messages: &[sync::Message]) -> usize {
        messages.iter().map(|m| m.clone().encode().len()).sum()
    }

    #[test]
    fn repeated_nothing_gets_the_document_once() {
        let mut doc = document(200, 1_000);
        let mut sync = DocSync::default();
        let mut total = 0;
        let mut first = 0;
        for i in 0..50 {
            sync.receive(&mut doc, nothing(false)).expect("receive");
            let answer = sync.reply(&doc, 1 << 20).expect("fits");
            if i == 0 {
                first = bytes(&answer);
            }
            total += bytes(&answer);
        }
        assert!(
            first > 100_000,
            "the first answer carries the document: {first}"
        );
        assert!(
            total < first * 2,
            "50 'nothing' messages cost {total} bytes for a {first}-byte answer"
        );
    }

    #[test]
    fn a_sync_reset_is_honoured_a_bounded_number_of_times() {
        let mut doc = document(100, 1_000);
        let mut sync = DocSync::default();
        sync.receive(&mut doc, nothing(false)).expect("receive");
        let first = bytes(&sync.reply(&doc, 1 << 20).expect("fits"));
        let mut whole = 0;
        for _ in 0..20 {
            sync.receive(&mut doc, nothing(true)).expect("receive");
            if bytes(&sync.reply(&doc, 1 << 20).expect("fits")) * 2 > first {
                whole += 1;
            }
        }
        assert_eq!(
            whole, MAX_RESETS,
            "each honoured reset resends the document, no more"
        );
    }

    #[test]
    fn a_real_peer_still_gets_everything() {
        let mut doc = document(100, 500);
        let mut peer = AutoCommit::new();
        let (mut ours, mut theirs) = (DocSync::default(), sync::State::new());
        for _ in 0..20 {
            if let Some(m) = peer.sync().generate_sync_message(&mut theirs) {
                ours.receive(&mut doc, m).expect("receive");
            }
            for m in ours.reply(&doc, 64 * 1024).expect("fits") {
                let m = sync::Message::decode(&m.encode()).expect("decode");
                peer.sync()
                    .receive_sync_message(&mut theirs, m)
                    .expect("apply");
            }
        }
        assert_eq!(peer.get_heads(), doc.get_heads());
        assert!(ours.their_heads_are(&doc.get_heads()));
    }

    #[test]
    fn an_identical_answer_is_a_repeat_unless_the_document_changed() {
        let mut sync = DocSync::default();
        let answer: [&[u8]; 2] = [b"first part", b"second"];
        assert!(!sync.repeats_last_reply(answer, false));
        assert!(sync.repeats_last_reply(answer, false));
        assert!(!sync.repeats_last_reply(answer, true));
        assert!(!sync.repeats_last_reply([b"other".as_slice()], false));
    }
}
