//! A stored document (snapshot, then appended changes) as the relay and the
//! device load it.
#![no_main]

use automerge::Automerge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (snapshot, changes) = data.split_at(data.len() / 2);
    if let Ok(mut doc) = Automerge::load(snapshot) {
        let _ = doc.load_incremental(changes);
        let _ = doc.save();
    }
    let mut doc = Automerge::new();
    let _ = doc.load_incremental(data);
});
