//! The relay's side of `linkbook_core::protocol::split`: its replies,
//! live fan-out and unasked pushes are cut under its own
//! `--max-message-bytes` (what it accepts is what it sends), so a case file
//! of any size reaches every device. The engine's per-document unit
//! (`linkbook_core::DocSync`) generates them, proportional to what was
//! asked (issue 11, finding 8); this encodes them once for the wire.

use automerge::Automerge;
use linkbook_core::{DocSync, Outgoing};

/// One encoded sync message (the `data` of a `sync` envelope).
pub(crate) struct Part {
    pub(crate) data: Vec<u8>,
    /// It carries changes (audited as "received").
    pub(crate) carries_changes: bool,
}

/// The sync messages for one connection's sync of `doc`, encoded once, or
/// `None` when a change of the document is larger than the limit (logged;
/// the state is left as it was, and the caller tells the device the
/// document is unavailable so its session goes on with the others).
pub(crate) fn outgoing(
    doc: &Automerge,
    sync: &mut DocSync,
    kind: Outgoing,
    max_message_bytes: usize,
    device: &str,
    document_id: &str,
) -> Option<Vec<Part>> {
    let generated = sync.outgoing(kind, doc, max_message_bytes);
    match generated {
        Ok(messages) => Some(
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
        ),
        Err(e) => {
            tracing::warn!(device = %device, doc = %document_id, change_bytes = e.change_bytes, limit = e.max_message_bytes, "a change is larger than the message limit; not sent");
            None
        }
    }
}
