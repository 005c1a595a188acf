//! Sync messages under a byte limit, one splitter for the device and the
//! relay.
//!
//! Automerge's `generate_sync_message` puts every change the peer lacks in
//! one message (or, for more than a third of the document, the whole
//! document as one V2 chunk), so a big case file made every sync of its
//! device fail at the relay's `--max-message-bytes` ("Message too long"),
//! other documents included. [`generate_sync_messages`] generates that one
//! message and cuts its changes, in the order Automerge gave them (causal),
//! into as many V1 messages as needed, each carrying the same heads, need
//! and have. Why the exchange still ends and nothing is resent:
//! `generate_sync_message` recorded every change in `sent_hashes` already, so
//! the receiver's answers to the first parts (which `need` our heads until
//! the last part arrives) do not make us send them again; the receiver
//! applies each part as it comes (a change whose dependency is in a later
//! part is queued by Automerge, not refused) and states its heads, and once
//! they equal ours neither side has anything more to say.
//!
//! A V2 message too big for the limit is generated again as V1 (the peer is
//! told nothing: V1 is what every peer reads). A single change larger than
//! the limit cannot be sent at all: the state is left as it was (nothing
//! marked as sent) and the caller reports that document and goes on with
//! the others.

use automerge::sync::{self, Capability, ChunkList, MessageVersion};

/// Room kept for the automerge-repo envelope around a sync message (CBOR
/// map, type, sender, target and document ids, the byte string's header).
/// Linkbook's ids are under 100 bytes each; peer ids of other clients are
/// typically UUIDs.
pub const ENVELOPE_BYTES: usize = 4 * 1024;

/// The smallest `--max-message-bytes` a relay accepts: a device sends its
/// first flight (before the relay's `peer` message states the limit) in
/// messages of at most this size.
pub const MIN_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The limit a device assumes with a server that states none (the
/// JavaScript sync server's `ws` accepts 100 MiB, samod's 64 MiB by
/// tungstenite's default): well below both, large enough that a normal
/// sync is one message per document.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A change bigger than the message limit: that document cannot be synced
/// through this peer until the limit is raised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a change of {change_bytes} bytes does not fit in a sync message of at most {max_message_bytes} bytes"
)]
pub struct ChangeTooLarge {
    pub change_bytes: usize,
    pub max_message_bytes: usize,
}

/// What [`generate_sync_messages`] returns.
pub type SplitMessages = Result<Vec<sync::Message>, ChangeTooLarge>;

/// The limit to split under with a peer that stated `stated` in its `peer`
/// message (Linkbook's relay does), or [`DEFAULT_MAX_MESSAGE_BYTES`].
pub fn message_limit(stated: Option<u64>) -> usize {
    match stated {
        Some(n) => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .max(MIN_MAX_MESSAGE_BYTES),
        None => DEFAULT_MAX_MESSAGE_BYTES,
    }
}

/// The sync messages to send now (none if there is nothing to say), each
/// of at most `max_message_bytes` with its envelope. `generate` is the
/// document's `generate_sync_message`.
pub fn generate_sync_messages(
    state: &mut sync::State,
    max_message_bytes: usize,
    mut generate: impl FnMut(&mut sync::State) -> Option<sync::Message>,
) -> SplitMessages {
    let before = state.clone();
    let Some(mut message) = generate(state) else {
        return Ok(Vec::new());
    };
    let limit = max_message_bytes.saturating_sub(ENVELOPE_BYTES);
    if encoded_len(&message) <= limit {
        return Ok(vec![message]);
    }
    if message.version == MessageVersion::V2 {
        // The whole document in one chunk: ask Automerge for the changes.
        *state = before.clone();
        let capabilities = state.their_capabilities.clone();
        state.their_capabilities = capabilities.as_ref().map(|caps| {
            caps.iter()
                .filter(|c| **c != Capability::MessageV2)
                .cloned()
                .collect()
        });
        let again = generate(state);
        state.their_capabilities = capabilities;
        match again {
            Some(m) => message = m,
            None => return Ok(Vec::new()),
        }
        if encoded_len(&message) <= limit {
            return Ok(vec![message]);
        }
    }
    let base = encoded_len(&without_changes(&message));
    let room = limit.saturating_sub(base);
    let mut parts: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut used = 0;
    for change in message.changes.iter() {
        let size = change.len() + leb128_len(change.len());
        if size > room {
            *state = before;
            return Err(ChangeTooLarge {
                change_bytes: change.len(),
                max_message_bytes,
            });
        }
        if used + size > room && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
            used = 0;
        }
        used += size;
        current.push(change.to_vec());
    }
    if !current.is_empty() {
        parts.push(current);
    }
    Ok(parts
        .into_iter()
        .map(|changes| sync::Message {
            changes: ChunkList::from(changes),
            ..without_changes(&message)
        })
        .collect())
}

fn without_changes(m: &sync::Message) -> sync::Message {
    sync::Message {
        heads: m.heads.clone(),
        need: m.need.clone(),
        have: m.have.clone(),
        changes: ChunkList::empty(),
        flags: m.flags,
        version: MessageVersion::V1,
    }
}

/// The encoded size without encoding the changes: heads, need and have
/// (small) are encoded; each change adds its length and a LEB128 prefix.
fn encoded_len(m: &sync::Message) -> usize {
    let mut base = without_changes(m);
    base.version = m.version.clone();
    let changes: usize = m
        .changes
        .iter()
        .map(|c| c.len() + leb128_len(c.len()))
        .sum();
    // The change count's prefix: `base` encodes a count of 0 (one byte).
    base.encode().len() + changes + leb128_len(m.changes.len()) - 1
}

fn leb128_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};

    /// Text that does not compress (so V2's whole-document message is big).
    fn noise(len: usize, seed: u64) -> String {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    }

    fn doc_with(n: usize, text_len: usize) -> AutoCommit {
        let mut doc = AutoCommit::new();
        for i in 0..n {
            doc.put(ROOT, format!("note{i}"), noise(text_len, i as u64 + 1))
                .expect("test");
            doc.commit();
        }
        doc
    }

    /// Syncs two documents through the splitter until neither has
    /// anything to say; returns the number of messages a sent to b.
    fn sync_split(a: &mut AutoCommit, b: &mut AutoCommit, limit: usize) -> usize {
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        let mut sent = 0;
        for _ in 0..200 {
            let from_a =
                generate_sync_messages(&mut sa, limit, |s| a.sync().generate_sync_message(s))
                    .expect("test");
            for m in &from_a {
                assert!(m.clone().encode().len() + ENVELOPE_BYTES <= limit);
            }
            sent += from_a.len();
            let from_b =
                generate_sync_messages(&mut sb, limit, |s| b.sync().generate_sync_message(s))
                    .expect("test");
            if from_a.is_empty() && from_b.is_empty() {
                return sent;
            }
            for m in from_a {
                b.sync().receive_sync_message(&mut sb, m).expect("test");
            }
            for m in from_b {
                a.sync().receive_sync_message(&mut sa, m).expect("test");
            }
        }
        panic!("the exchange did not end");
    }

    #[test]
    fn a_big_document_syncs_in_many_messages_and_the_exchange_ends() {
        let mut a = doc_with(300, 1_000);
        let mut b = AutoCommit::new();
        let sent = sync_split(&mut a, &mut b, 64 * 1024);
        assert!(sent >= 5, "{sent} messages");
        assert_eq!(a.get_heads(), b.get_heads());
    }

    #[test]
    fn both_ways_with_a_common_history() {
        let mut a = doc_with(50, 1_000);
        let mut b = AutoCommit::new();
        sync_split(&mut a, &mut b, 64 * 1024);
        for i in 0..200 {
            a.put(ROOT, format!("a{i}"), noise(900, 1000 + i))
                .expect("test");
            a.commit();
            b.put(ROOT, format!("b{i}"), noise(900, 5000 + i))
                .expect("test");
            b.commit();
        }
        sync_split(&mut a, &mut b, 64 * 1024);
        assert_eq!(a.get_heads(), b.get_heads());
        assert_eq!(a.length(ROOT), 450);
    }

    #[test]
    fn a_change_over_the_limit_is_refused_and_nothing_is_marked_sent() {
        let mut a = doc_with(1, 100_000);
        let mut state = sync::State::new();
        // First round: heads only.
        let first =
            generate_sync_messages(&mut state, 32 * 1024, |s| a.sync().generate_sync_message(s))
                .expect("test");
        assert_eq!(first.len(), 1);
        let mut b = AutoCommit::new();
        let mut sb = sync::State::new();
        b.sync()
            .receive_sync_message(&mut sb, first.into_iter().next().expect("test"))
            .expect("test");
        let reply = b.sync().generate_sync_message(&mut sb).expect("test");
        a.sync()
            .receive_sync_message(&mut state, reply)
            .expect("test");
        let before = state.clone();
        let err =
            generate_sync_messages(&mut state, 32 * 1024, |s| a.sync().generate_sync_message(s))
                .expect_err("too large");
        assert!(err.change_bytes > 32 * 1024 - ENVELOPE_BYTES);
        assert_eq!(state, before);
    }

    #[test]
    fn encoded_len_is_exact() {
        let mut a = doc_with(20, 300);
        let mut s = sync::State::new();
        let _ = a.sync().generate_sync_message(&mut s);
        s.their_heads = Some(vec![]);
        s.their_have = Some(vec![]);
        s.their_need = Some(vec![]);
        s.in_flight = false;
        let m = a.sync().generate_sync_message(&mut s).expect("test");
        assert_eq!(encoded_len(&m), m.clone().encode().len());
        assert_eq!(leb128_len(0), 1);
        assert_eq!(leb128_len(127), 1);
        assert_eq!(leb128_len(128), 2);
    }
}
