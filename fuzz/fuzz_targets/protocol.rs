//! One WebSocket message from any peer: decodes or refuses, never panics;
//! what decodes re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkbook_core::protocol::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(Message::decode(&m.encode()), Ok(m));
    }
});
