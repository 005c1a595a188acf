//! A stored document (snapshot, then appended changes) as the relay and the
//! device load it: through `protocol::catch_automerge_panic`, since Automerge
//! 0.12 panics on some malformed chunks (tests/fuzz-crashers/automerge-load/).
//! What this looks for now: hangs, unbounded memory, and panics the guard
//! would not catch. Set LINKBOOK_FUZZ_UNGUARDED=1 to fuzz Automerge bare.
#![no_main]

use automerge::Automerge;
use libfuzzer_sys::fuzz_target;
use linkbook_core::protocol::catch_automerge_panic;

fn load(data: &[u8]) {
    let (snapshot, changes) = data.split_at(data.len() / 2);
    if let Ok(mut doc) = Automerge::load(snapshot) {
        if doc.load_incremental(changes).is_ok() {
            let _ = doc.save();
        }
    }
    let mut doc = Automerge::new();
    let _ = doc.load_incremental(data);
}

fuzz_target!(|data: &[u8]| {
    static QUIET: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("LINKBOOK_FUZZ_UNGUARDED").is_some() {
        load(data);
        return;
    }
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let _ = catch_automerge_panic(|| load(data));
});
