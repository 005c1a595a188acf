//! The relay's side of `linkbook_core::protocol::split`: its replies,
//! live fan-out and unasked pushes are cut under its own
//! `--max-message-bytes` (what it accepts is what it sends), so a case file
//! of any size reaches every device.
//!
//! Replies proportional to the request (issue 11, finding 8): Automerge
//! forgets what it sent (`sent_hashes`) whenever the peer states empty
//! heads, and answers empty heads with the whole document (a V2 message)
//! whatever it sent before, so a peer repeating "I have nothing", or
//! alternating two messages, was sent the whole document each time. A
//! connection reads in order and a peer that fails to apply a change closes
//! it, so whatever one connection was sent, its peer has: [`Sent`] keeps
//! those hashes per (connection, document), they are added to Automerge's
//! `sent_hashes` before each message is generated, and once anything was
//! sent the message is generated as V1 (V2's whole document ignores
//! `sent_hashes`). A reconnect starts afresh.

use std::collections::HashSet;

use automerge::sync::{self, Capability, SyncDoc};
use automerge::{Automerge, ChangeHash};
use linkbook_core::protocol::split::generate_sync_messages;

/// One encoded sync message (the `data` of a `sync` envelope).
pub(crate) struct Part {
    pub(crate) data: Vec<u8>,
    /// It carries changes (audited as "received").
    pub(crate) carries_changes: bool,
}

/// The change hashes one connection was sent of one document (32 bytes
/// each; dropped with the connection or the slot).
#[derive(Debug, Default)]
pub(crate) struct Sent(HashSet<ChangeHash>);

/// The sync messages for one connection's state, encoded once, or `None`
/// when a change of the document is larger than the limit (logged; the
/// state is left as it was, and the caller tells the device the document
/// is unavailable so its session goes on with the others).
pub(crate) fn outgoing(
    doc: &Automerge,
    state: &mut sync::State,
    sent: &mut Sent,
    max_message_bytes: usize,
    device: &str,
    document_id: &str,
) -> Option<Vec<Part>> {
    let capabilities = state.their_capabilities.clone();
    if !sent.0.is_empty() {
        state.sent_hashes.extend(sent.0.iter().copied());
        state.their_capabilities = capabilities.as_ref().map(|caps| {
            caps.iter()
                .filter(|c| **c != Capability::MessageV2)
                .cloned()
                .collect()
        });
    }
    let generated =
        generate_sync_messages(state, max_message_bytes, |s| doc.generate_sync_message(s));
    state.their_capabilities = capabilities;
    match generated {
        Ok(messages) => {
            sent.0.extend(state.sent_hashes.iter().copied());
            Some(
                messages
                    .into_iter()
                    .map(|m| {
                        tracing::trace!(device = %device, doc = %document_id, m = %crate::relay::brief(&m), "sync out");
                        Part {
                            carries_changes: !m.changes.is_empty(),
                            data: m.encode(),
                        }
                    })
                    .collect(),
            )
        }
        Err(e) => {
            tracing::warn!(device = %device, doc = %document_id, change_bytes = e.change_bytes, limit = e.max_message_bytes, "a change is larger than the message limit; not sent");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

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

    fn nothing() -> sync::Message {
        // What a fresh automerge-repo peer says: empty heads, need and have.
        let mut empty = AutoCommit::new();
        empty
            .sync()
            .generate_sync_message(&mut sync::State::new())
            .expect("a message")
    }

    fn bytes(parts: &[Part]) -> usize {
        parts.iter().map(|p| p.data.len()).sum()
    }

    #[test]
    fn repeated_nothing_gets_the_document_once() {
        let mut doc = document(200, 1_000);
        let (mut state, mut sent) = (sync::State::new(), Sent::default());
        let mut total = 0;
        let mut first = 0;
        for i in 0..50 {
            doc.receive_sync_message(&mut state, nothing())
                .expect("receive");
            let parts = outgoing(&doc, &mut state, &mut sent, 1 << 20, "d", "doc").expect("parts");
            if i == 0 {
                first = bytes(&parts);
            }
            total += bytes(&parts);
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
    fn a_real_peer_still_gets_everything() {
        let mut doc = document(100, 500);
        let mut peer = AutoCommit::new();
        let (mut ours, mut theirs, mut sent) =
            (sync::State::new(), sync::State::new(), Sent::default());
        for _ in 0..20 {
            if let Some(m) = peer.sync().generate_sync_message(&mut theirs) {
                doc.receive_sync_message(&mut ours, m).expect("receive");
            }
            let parts = outgoing(&doc, &mut ours, &mut sent, 64 * 1024, "d", "doc").expect("parts");
            for p in parts {
                let m = sync::Message::decode(&p.data).expect("decode");
                peer.sync()
                    .receive_sync_message(&mut theirs, m)
                    .expect("apply");
            }
        }
        assert_eq!(peer.get_heads(), doc.get_heads());
    }
}
