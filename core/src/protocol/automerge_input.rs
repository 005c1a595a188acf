//! Automerge bytes from outside, taken with care: sync messages decoded
//! within bounds (`MAX_HAVES`, Bloom filter probes), Automerge's panics
//! turned into errors, and the actor-clash refusal said in words.

use super::*;

/// Why the relay refuses a device's changes to a document that clash with
/// changes it already holds: the same actor and sequence number, different
/// content. Linkbook actors are fresh per opened store (docs/adr/0007), so
/// this is a device copied before that (a restored backup, a copied
/// profile, a VM snapshot) or a hostile peer.
pub const ACTOR_CLASH: &str = "this device's changes to this document clash with changes an earlier copy of this device made (the same change numbers, other content): was it restored from a backup or copied from another device? Nothing of this document was taken; its other documents synced. Tell the office before recording more on it";

/// Whether Automerge refused changes as an actor sequence clash (a change
/// whose actor and sequence number the document holds with other content;
/// Automerge 0.12 refuses the whole batch with `DuplicateSeqNumber`,
/// applying none of it).
pub fn is_actor_clash(e: &automerge::AutomergeError) -> bool {
    matches!(e, automerge::AutomergeError::DuplicateSeqNumber(..))
}

/// Why an Automerge sync message from a peer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncMessageError {
    #[error("malformed Automerge sync message")]
    Malformed,
    #[error("Automerge sync message with an unusable Bloom filter")]
    BadBloomFilter,
    #[error("Automerge sync message refused before loading: {0}")]
    OverBudget(#[from] crate::budget::OverBudget),
}

/// `have` entries accepted in one sync message (Automerge sends one).
const MAX_HAVES: usize = 64;
/// Probes per Bloom filter entry accepted (Automerge writes 7).
const MAX_BLOOM_PROBES: u64 = 64;

/// Decodes a peer's Automerge sync message (the `data` of `sync` and
/// `request`) and refuses one whose Bloom filters Automerge 0.12 cannot use
/// safely: with entries but no bits it divides by zero (a panic in
/// `generate_sync_message`, found by core/tests/fuzz.rs; kept in
/// tests/fuzz-crashers/automerge-sync/), and with billions of probes it
/// allocates and loops without bound. Both the relay and the device decode
/// every peer's sync message through this, never with
/// `sync::Message::decode` alone.
pub fn decode_sync_message(data: &[u8]) -> Result<automerge::sync::Message, SyncMessageError> {
    decode_sync_message_within(data, &crate::budget::Budget::default())
}

/// [`decode_sync_message`] with the caller's [`crate::budget::Budget`] for
/// the changes it carries (V1 change chunks or V2's one whole document):
/// Automerge 0.12 loads them without limit, so each is checked first.
pub fn decode_sync_message_within(
    data: &[u8],
    budget: &crate::budget::Budget,
) -> Result<automerge::sync::Message, SyncMessageError> {
    // Automerge makes a `Vec` entry per declared have and change.
    bounded::sync_counts_within(data, MAX_HAVES, budget)?;
    let message =
        automerge::sync::Message::decode(data).map_err(|_| SyncMessageError::Malformed)?;
    if message.have.len() > MAX_HAVES {
        return Err(SyncMessageError::BadBloomFilter);
    }
    for have in &message.have {
        check_bloom_filter(&have.bloom.to_bytes())?;
    }
    for chunk in message.changes.iter() {
        crate::budget::check(chunk, budget)?;
    }
    Ok(message)
}

/// A Bloom filter's wire form: empty (no entries), or LEB128 entries, bits
/// per entry and probes, then the bits.
fn check_bloom_filter(bytes: &[u8]) -> Result<(), SyncMessageError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut rest = bytes;
    let mut leb128 = || -> Result<u64, SyncMessageError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, tail) = rest.split_first().ok_or(SyncMessageError::BadBloomFilter)?;
            rest = tail;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SyncMessageError::BadBloomFilter)
    };
    let _entries = leb128()?;
    let _bits_per_entry = leb128()?;
    let probes = leb128()?;
    if rest.is_empty() || probes == 0 || probes > MAX_BLOOM_PROBES {
        return Err(SyncMessageError::BadBloomFilter);
    }
    Ok(())
}

/// Automerge panicked on bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Automerge could not read the bytes (it panicked on them)")]
pub struct AutomergePanicked;

/// Runs an Automerge call on bytes from a peer, a file or storage, and turns
/// a panic inside Automerge into an error. catch_unwind is the only option:
/// Automerge 0.12's column decoder (hexane) unwraps on malformed input, so an
/// 18-byte document chunk (tests/fuzz-crashers/automerge-load/, found by
/// cargo-fuzz) panics in `load` and `load_incremental`, and bytes cannot be
/// checked for that before Automerge parses them. The caller must drop the
/// document the call was changing: after a panic it may be half-changed.
/// (With `panic = "abort"` this cannot help; no Linkbook profile sets it.)
pub fn catch_automerge_panic<T>(f: impl FnOnce() -> T) -> Result<T, AutomergePanicked> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| AutomergePanicked)
}

/// Makes the next Automerge sync message carry the changes made since the
/// heads both sides last shared, as if the peer had just said it has exactly
/// those (an empty Bloom filter) and needs nothing else; with no shared heads
/// at all, the whole document, compressed. Plain Automerge sync trades heads
/// and filters first and sends changes only in its second round trip;
/// Linkbook's device and relay both start this way instead (if the peer
/// lacks something after all, its answer says so and the usual exchange
/// follows). See docs/adr/0005.
pub fn assume_shared_heads(state: &mut automerge::sync::State) {
    use automerge::sync;
    state.their_have = Some(vec![sync::Have {
        last_sync: state.shared_heads.clone(),
        bloom: sync::BloomFilter::default(),
    }]);
    state.their_need = Some(Vec::new());
    if state.shared_heads.is_empty() {
        state.their_heads = Some(Vec::new());
        state.their_capabilities = Some(vec![sync::Capability::MessageV2]);
    }
}
