//! The engine without sockets: two engines (or an engine and a plain
//! Automerge peer) over an in-memory network that can drop, duplicate and
//! reorder messages.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use super::*;
use crate::protocol::split;
use automerge::ChangeHash;
use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};

/// A replica in memory with a check at the door like the device's: a new
/// document needs a root `type`.
#[derive(Default)]
struct Memory {
    docs: HashMap<DocumentId, AutoCommit>,
    states: HashMap<(String, DocumentId), Vec<u8>>,
    /// Writes that changed a document.
    writes: usize,
}

impl Replica for Memory {
    fn read<T>(
        &mut self,
        id: DocumentId,
        f: impl FnOnce(&mut AutoCommit) -> T,
    ) -> Result<Option<T>> {
        Ok(self.docs.get_mut(&id).map(f))
    }

    fn write(
        &mut self,
        id: DocumentId,
        apply: impl FnOnce(&mut AutoCommit) -> Result<()>,
    ) -> Result<bool> {
        // A copy stands for the transaction: a failure keeps nothing.
        let held = self.docs.get(&id).cloned();
        let is_new = held.is_none();
        let mut doc = held.unwrap_or_default();
        let before = doc.get_heads();
        apply(&mut doc)?;
        if is_new && doc.get_heads().is_empty() {
            return Ok(false);
        }
        if is_new && doc.get(ROOT, "type").ok().flatten().is_none() {
            return Err(Error::InvalidDocument(format!(
                "document {id} has no Linkbook type"
            )));
        }
        let changed = doc.get_heads() != before;
        self.docs.insert(id, doc);
        self.writes += usize::from(changed);
        Ok(changed)
    }

    fn sync_state(&mut self, peer: &str, id: DocumentId) -> Result<Option<Vec<u8>>> {
        Ok(self.states.get(&(peer.to_string(), id)).cloned())
    }
}

impl Memory {
    fn keep(&mut self, peer: &str, engine: &PeerSync) {
        for s in engine.states() {
            self.states.insert((peer.to_string(), s.id), s.state);
        }
    }

    fn heads(&mut self, id: DocumentId) -> Vec<ChangeHash> {
        self.read(id, |d| d.get_heads())
            .expect("read")
            .unwrap_or_default()
    }
}

/// Text that does not compress.
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

fn family(notes: usize, text_len: usize, seed: u64) -> AutoCommit {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "type", "family").expect("put");
    doc.commit();
    add_notes(&mut doc, notes, text_len, seed);
    doc
}

fn add_notes(doc: &mut AutoCommit, notes: usize, text_len: usize, seed: u64) {
    for i in 0..notes {
        let seed = seed * 10_000 + i as u64;
        doc.put(ROOT, format!("note{seed}"), noise(text_len, seed))
            .expect("put");
        doc.commit();
    }
}

fn engine(me: &str, them: &str, max_message_bytes: usize) -> PeerSync {
    PeerSync::new(PeerConfig {
        our_id: me.into(),
        their_id: them.into(),
        max_message_bytes,
        answers_everything: false,
    })
}

/// A deterministic network's faults.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Per mille of messages dropped, duplicated; reorder each flight.
    drop: u64,
    duplicate: u64,
    reorder: bool,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Moves messages between the two sides until neither has anything to
/// send; every message goes through its bytes and the bounded decoder.
/// Returns the largest message sent, in bytes.
fn run(
    (a, ra): (&mut PeerSync, &mut Memory),
    (b, rb): (&mut PeerSync, &mut Memory),
    faults: Faults,
    rng: &mut Rng,
) -> usize {
    let mut largest = 0;
    for _ in 0..10_000 {
        let from_a = a.take_outgoing();
        let from_b = b.take_outgoing();
        if from_a.is_empty() && from_b.is_empty() {
            return largest;
        }
        for (flight, to, replica) in [(from_a, &mut *b, &mut *rb), (from_b, &mut *a, &mut *ra)] {
            let mut wire: Vec<Vec<u8>> = Vec::new();
            for m in flight {
                let bytes = m.encode();
                largest = largest.max(bytes.len());
                if rng.next() % 1000 < faults.drop {
                    continue;
                }
                if rng.next() % 1000 < faults.duplicate {
                    wire.push(bytes.clone());
                }
                wire.push(bytes);
            }
            if faults.reorder {
                for i in (1..wire.len()).rev() {
                    wire.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                }
            }
            for bytes in wire {
                let m = PeerSync::decode(&bytes).expect("our own bytes decode");
                to.on_message(replica, m).expect("a sync message");
            }
        }
    }
    panic!("the two sides never fell quiet");
}

/// One sync between `a` and `b` with fresh engines from their saved
/// states, each side opening every document it holds; returns whether both
/// ended done (after the quiet that follows the last message).
fn session(ra: &mut Memory, rb: &mut Memory, limit: usize, faults: Faults, rng: &mut Rng) -> bool {
    let (mut a, mut b) = (engine("a", "b", limit), engine("b", "a", limit));
    let mut ids: Vec<DocumentId> = ra.docs.keys().copied().collect();
    ids.sort();
    for id in ids {
        a.open(ra, id).expect("open");
    }
    let mut ids: Vec<DocumentId> = rb.docs.keys().copied().collect();
    ids.sort();
    for id in ids {
        b.open(rb, id).expect("open");
    }
    run((&mut a, ra), (&mut b, rb), faults, rng);
    let done = a.on_quiet() & b.on_quiet();
    ra.keep("b", &a);
    rb.keep("a", &b);
    done
}

fn two_replicas() -> (Memory, Memory, [DocumentId; 3]) {
    let (only_a, only_b, both) = (
        DocumentId::random(),
        DocumentId::random(),
        DocumentId::random(),
    );
    let (mut ra, mut rb) = (Memory::default(), Memory::default());
    ra.docs.insert(only_a, family(5, 100, 1));
    rb.docs.insert(only_b, family(5, 100, 2));
    let mut shared = family(3, 100, 3);
    let mut theirs = shared.fork();
    let mut ours = shared;
    add_notes(&mut ours, 4, 100, 4);
    add_notes(&mut theirs, 4, 100, 5);
    ra.docs.insert(both, ours);
    rb.docs.insert(both, theirs);
    (ra, rb, [only_a, only_b, both])
}

fn converged(ra: &mut Memory, rb: &mut Memory, ids: &[DocumentId]) -> bool {
    ids.iter().all(|id| {
        let h = ra.heads(*id);
        !h.is_empty() && h == rb.heads(*id)
    })
}

#[test]
fn two_engines_converge_and_a_second_sync_says_nothing() {
    let (mut ra, mut rb, ids) = two_replicas();
    let mut rng = Rng(7);
    assert!(session(
        &mut ra,
        &mut rb,
        64 * 1024,
        Faults::default(),
        &mut rng
    ));
    assert!(converged(&mut ra, &mut rb, &ids));
    assert_eq!(ra.docs[&ids[2]].length(ROOT), 1 + 3 + 8);
    // From the saved states, nothing is sent again but heads.
    let writes = (ra.writes, rb.writes);
    assert!(session(
        &mut ra,
        &mut rb,
        64 * 1024,
        Faults::default(),
        &mut rng
    ));
    assert_eq!(writes, (ra.writes, rb.writes), "nothing new was written");
}

#[test]
fn duplicated_and_reordered_messages_still_converge() {
    for seed in 1..=8 {
        let (mut ra, mut rb, ids) = two_replicas();
        let mut rng = Rng(seed);
        let faults = Faults {
            duplicate: 300,
            reorder: true,
            ..Faults::default()
        };
        assert!(
            session(&mut ra, &mut rb, 64 * 1024, faults, &mut rng),
            "seed {seed}"
        );
        assert!(converged(&mut ra, &mut rb, &ids), "seed {seed}");
    }
}

#[test]
fn dropped_messages_cost_a_sync_not_the_data() {
    let mut bitten = 0;
    for seed in 1..=8 {
        let (mut ra, mut rb, ids) = two_replicas();
        let mut rng = Rng(seed);
        let lossy = Faults {
            drop: 300,
            ..Faults::default()
        };
        let done = session(&mut ra, &mut rb, 64 * 1024, lossy, &mut rng);
        if !(done && converged(&mut ra, &mut rb, &ids)) {
            bitten += 1;
        }
        // The next syncs start from the states kept: each converges what
        // the lossy one left.
        let mut syncs = 0;
        while !(session(&mut ra, &mut rb, 64 * 1024, Faults::default(), &mut rng)
            && converged(&mut ra, &mut rb, &ids))
        {
            syncs += 1;
            assert!(
                syncs < 2,
                "seed {seed}: not converged after {syncs} clean syncs"
            );
        }
    }
    assert!(
        bitten > 0,
        "the drops never mattered: the test proves nothing"
    );
}

#[test]
fn a_document_over_the_message_limit_goes_in_parts() {
    let id = DocumentId::random();
    let (mut ra, mut rb) = (Memory::default(), Memory::default());
    ra.docs.insert(id, family(300, 1_000, 9));
    let limit = split::MIN_MAX_MESSAGE_BYTES;
    let (mut a, mut b) = (engine("a", "b", limit), engine("b", "a", limit));
    a.open(&mut ra, id).expect("open");
    let largest = run(
        (&mut a, &mut ra),
        (&mut b, &mut rb),
        Faults::default(),
        &mut Rng(3),
    );
    assert!(largest <= limit, "{largest} bytes");
    assert!(a.done() && a.counts().sent == 1, "{:?}", a.counts());
    assert_eq!(ra.heads(id), rb.heads(id));
    assert_eq!(rb.docs[&id].length(ROOT), 301);
}

#[test]
fn a_change_over_the_limit_is_reported_and_its_state_not_kept() {
    let (big, small) = (DocumentId::random(), DocumentId::random());
    let (mut ra, mut rb) = (Memory::default(), Memory::default());
    ra.docs.insert(big, family(1, 300_000, 11));
    ra.docs.insert(small, family(2, 100, 12));
    let limit = split::MIN_MAX_MESSAGE_BYTES;
    let (mut a, mut b) = (engine("a", "b", limit), engine("b", "a", limit));
    a.open(&mut ra, big).expect("open");
    a.open(&mut ra, small).expect("open");
    run(
        (&mut a, &mut ra),
        (&mut b, &mut rb),
        Faults::default(),
        &mut Rng(5),
    );
    assert!(a.take_events().contains(&Event::TooLarge(big)));
    assert!(a.done());
    assert_eq!(ra.heads(small), rb.heads(small));
    assert!(rb.heads(big).len() <= 1);
    let saved = a.states();
    assert!(saved.iter().all(|s| s.id != big), "the big one tries again");
    assert!(saved.iter().any(|s| s.id == small && s.in_sync));
}

#[test]
fn a_malformed_message_is_a_typed_error() {
    for bytes in [
        &b"\xff\x00garbage"[..],
        &[0xa1, 0x61, 0x78, 0x01][..],
        &[][..],
    ] {
        match PeerSync::decode(bytes) {
            Err(SyncError::Malformed(_)) => {}
            other => panic!("{bytes:?}: {other:?}"),
        }
    }
}

fn sync_to(id: DocumentId, data: Vec<u8>) -> Message {
    Message::Sync {
        sender_id: "b".into(),
        target_id: "a".into(),
        document_id: id.to_string(),
        data,
    }
}

#[test]
fn unreadable_documents_are_skipped_and_reported_not_the_sync() {
    let (bad_bytes, foreign, good) = (
        DocumentId::random(),
        DocumentId::random(),
        DocumentId::random(),
    );
    let mut ra = Memory::default();
    let mut a = engine("a", "b", split::DEFAULT_MAX_MESSAGE_BYTES);
    // Not an Automerge sync message at all.
    a.on_message(&mut ra, sync_to(bad_bytes, vec![0x42, 1, 2, 3]))
        .expect("skipped, not an error");
    // A document without a Linkbook type: refused at the door.
    let mut poison = AutoCommit::new();
    poison.put(ROOT, "hello", "world").expect("put");
    let mut state = sync::State::new();
    protocol::assume_shared_heads(&mut state);
    let m = poison
        .sync()
        .generate_sync_message(&mut state)
        .expect("m")
        .encode();
    a.on_message(&mut ra, sync_to(foreign, m.clone()))
        .expect("skipped");
    // Again: ignored, said once.
    a.on_message(&mut ra, sync_to(foreign, m)).expect("ignored");
    let mut fine = family(1, 10, 13);
    let mut state = sync::State::new();
    protocol::assume_shared_heads(&mut state);
    let m = fine.sync().generate_sync_message(&mut state).expect("m");
    a.on_message(&mut ra, sync_to(good, m.encode()))
        .expect("taken");
    let events = a.take_events();
    let skipped: Vec<(DocumentId, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Skipped { id, reason } => Some((*id, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(skipped.len(), 2, "{events:?}");
    assert_eq!(skipped[0].0, bad_bytes);
    assert!(skipped[0].1.contains("refused"), "{skipped:?}");
    assert_eq!(skipped[1].0, foreign);
    assert!(skipped[1].1.contains("no Linkbook type"), "{skipped:?}");
    assert!(!format!("{events:?}").contains("world"));
    assert!(events.contains(&Event::Changed(good)));
    assert_eq!(ra.docs.len(), 1, "only the readable one is kept");
    assert!(a.states().iter().all(|s| s.id == good));
}

#[test]
fn a_peer_that_never_ends_a_documents_sync_is_cut_off() {
    let id = DocumentId::random();
    let mut ra = Memory::default();
    ra.docs.insert(id, family(1, 10, 14));
    let mut a = engine("a", "b", split::DEFAULT_MAX_MESSAGE_BYTES);
    a.open(&mut ra, id).expect("open");
    let heads_only = sync::Message {
        heads: vec![],
        need: vec![],
        have: vec![],
        changes: Vec::<Vec<u8>>::new().into(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode();
    let mut result = Ok(());
    for _ in 0..=MAX_MESSAGES_PER_DOCUMENT {
        result = a.on_message(&mut ra, sync_to(id, heads_only.clone()));
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(SyncError::Chatter(Some(d))) if d == id));
}

/// A relay made of Automerge alone (what sync-server's Hub does per
/// document): the engine speaking the pipelined way (assumed shared heads,
/// every message answered) converges with it in one round trip per
/// document.
#[test]
fn the_pipelined_opening_converges_with_a_plain_automerge_peer() {
    let (mut ra, _, ids) = two_replicas();
    let mut relay: HashMap<String, (AutoCommit, sync::State)> = HashMap::new();
    let mut a = PeerSync::new(PeerConfig {
        our_id: "a".into(),
        their_id: "relay".into(),
        max_message_bytes: split::MIN_MAX_MESSAGE_BYTES,
        answers_everything: true,
    });
    for id in [ids[0], ids[2]] {
        a.open(&mut ra, id).expect("open");
    }
    let mut flights = 0;
    loop {
        let out = a.take_outgoing();
        if out.is_empty() {
            break;
        }
        flights += 1;
        assert!(flights < 20, "no end");
        for m in out {
            let Message::Sync {
                document_id, data, ..
            } = PeerSync::decode(&m.encode()).expect("decode")
            else {
                panic!("the device holds these");
            };
            let (doc, state) = relay.entry(document_id.clone()).or_default();
            let m = protocol::decode_sync_message(&data).expect("bounded");
            doc.sync().receive_sync_message(state, m).expect("apply");
            // Our relay answers every message, if only with its heads.
            let heads = doc.get_heads();
            let reply = doc
                .sync()
                .generate_sync_message(state)
                .unwrap_or(sync::Message {
                    heads,
                    need: vec![],
                    have: vec![],
                    changes: Vec::<Vec<u8>>::new().into(),
                    flags: None,
                    version: sync::MessageVersion::V1,
                });
            a.on_message(&mut ra, sync_to_from_relay(&document_id, reply.encode()))
                .expect("answer");
        }
    }
    assert!(a.done(), "{:?}", a.counts());
    assert_eq!(flights, 1, "one flight with the changes, answered");
    for id in [ids[0], ids[2]] {
        let (doc, _) = relay.get_mut(&id.to_string()).expect("the relay has it");
        assert_eq!(doc.get_heads(), ra.heads(id));
    }
    assert!(a.states().iter().all(|s| s.in_sync));
}

fn sync_to_from_relay(document_id: &str, data: Vec<u8>) -> Message {
    Message::Sync {
        sender_id: "relay".into(),
        target_id: "a".into(),
        document_id: document_id.into(),
        data,
    }
}
