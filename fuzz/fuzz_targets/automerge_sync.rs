//! A device's `sync` data at the relay: decoded as the relay and device do
//! (`protocol::decode_sync_message`, which refuses the Bloom filters that
//! crash Automerge 0.12), then applied to a document.
#![no_main]

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sync::State::decode(data);
    let Ok(message) = linkbook_core::protocol::decode_sync_message(data) else {
        return;
    };
    let mut doc = AutoCommit::new();
    let _ = doc.put(ROOT, "type", "family");
    let mut state = sync::State::new();
    let _ = doc.sync().receive_sync_message(&mut state, message);
    let _ = doc.sync().generate_sync_message(&mut state);
});
