//! The relay's side of `linkbook_core::protocol::split`: its replies,
//! live fan-out and unasked pushes are cut under its own
//! `--max-message-bytes` (what it accepts is what it sends), so a case file
//! of any size reaches every device.

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use linkbook_core::protocol::split::generate_sync_messages;

/// The sync messages for one connection's state, or `None` when a change
/// of the document is larger than the limit (logged; the state is left as
/// it was, and the caller tells the device the document is unavailable so
/// its session goes on with the others).
pub(crate) fn outgoing(
    doc: &Automerge,
    state: &mut sync::State,
    max_message_bytes: usize,
    device: &str,
    document_id: &str,
) -> Option<Vec<sync::Message>> {
    match generate_sync_messages(state, max_message_bytes, |s| doc.generate_sync_message(s)) {
        Ok(messages) => Some(messages),
        Err(e) => {
            tracing::warn!(device = %device, doc = %document_id, change_bytes = e.change_bytes, limit = e.max_message_bytes, "a change is larger than the message limit; not sent");
            None
        }
    }
}
