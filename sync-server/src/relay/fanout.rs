//! The answer to an applied sync message: the reply to the sender (deferred
//! while its send queue is over half full, not repeated when identical) and
//! the live fan-out of new changes to every other connection syncing the
//! document, with every recipient of changes audited in one transaction
//! before any is sent.

use linkbook_core::protocol::Message;

use super::slots::Slot;
use super::{Hub, lock};
use crate::outbox::{Outbox, Owed};
use crate::storage::Device;

impl Hub {
    /// Replies to `conn_id`'s message about `document_id` and, when it
    /// `changed` the document, fans the changes out to the other
    /// connections syncing it.
    pub(super) async fn reply_and_fan_out(
        &self,
        s: &mut Slot,
        (conn_id, device, outbox): (u64, &Device, &Outbox),
        owed: &mut Owed,
        document_id: &str,
        changed: bool,
    ) {
        let Slot { doc, states, .. } = s;
        // The reply and the live fan-out are gathered first, so that every
        // device they carry changes to is audited in one transaction (one
        // fsync) before any is sent: one commit per recipient made fifty
        // devices on one document cost 50 x 50 fsyncs, under the slot's lock.
        let mut outgoing: Vec<(Outbox, Vec<Message>)> = Vec::new();
        let mut received: Vec<String> = Vec::new();
        let max = self.limits.max_message_bytes;
        let envelope = |to: &str, data: Vec<u8>| self.sync_message(to, document_id, data);
        // With the queue over half full the reply waits (outbox.rs): it is
        // generated, from the state as it is then, once the queue drained.
        let replies = match states.get_mut(&conn_id) {
            Some(_) if !outbox.has_room() => {
                owed.owe(document_id);
                None
            }
            Some((_, state)) => {
                let kind = linkbook_core::Outgoing::Reply;
                let parts = crate::split::outgoing(doc, state, kind, max, &device.id, document_id);
                // The same bytes already went to this connection, which reads
                // in order, so it has them: an identical reply is not sent
                // again (issue 11, finding 8).
                Some(parts.map(|parts| {
                    let encoded = parts.iter().map(|p| p.data.as_slice());
                    match state.repeats_last_reply(encoded, changed) {
                        true => Vec::new(),
                        false => parts,
                    }
                }))
            }
            None => None,
        };
        match replies {
            Some(Some(parts)) => {
                if parts.iter().any(|p| p.carries_changes) {
                    received.push(device.id.to_string());
                }
                outgoing.push((
                    outbox.clone(),
                    parts
                        .into_iter()
                        .map(|p| envelope(outbox.peer(), p.data))
                        .collect(),
                ));
            }
            Some(None) => outgoing.push((
                outbox.clone(),
                vec![self.unavailable_message(outbox.peer(), document_id)],
            )),
            None => {}
        }
        if changed {
            self.gather_fan_out(
                (doc, states),
                Some(conn_id),
                document_id,
                (&mut outgoing, &mut received),
            );
        }
        self.audit_then_send(&received, document_id, outgoing).await;
    }

    /// Audits every device the gathered messages carry changes to (one
    /// transaction), then queues them: nobody is sent changes the audit
    /// does not name.
    pub(super) async fn audit_then_send(
        &self,
        received: &[String],
        document_id: &str,
        outgoing: Vec<(Outbox, Vec<Message>)>,
    ) {
        self.audit_received(received, document_id).await;
        for (to, messages) in outgoing {
            to.offer_all(messages);
        }
    }

    /// Gathers the live fan-out of a document's new changes to every
    /// connection syncing it (but `except`, the one that sent them): the
    /// messages into `outgoing`, and each device they carry changes to into
    /// `received` (audited before they are sent). A queue already over its
    /// limit refuses them and that connection is closed (outbox.rs).
    pub(super) fn gather_fan_out(
        &self,
        (doc, states): (&automerge::Automerge, &mut super::slots::States),
        except: Option<u64>,
        document_id: &str,
        (outgoing, received): (&mut Vec<(Outbox, Vec<Message>)>, &mut Vec<String>),
    ) {
        let max = self.limits.max_message_bytes;
        let connections = lock(&self.connections);
        for (other, (other_device, state)) in states.iter_mut().filter(|(c, _)| Some(**c) != except)
        {
            let Some(conn) = connections.get(other) else {
                continue;
            };
            if !conn.outbox.accepts() {
                continue;
            }
            let kind = linkbook_core::Outgoing::Unasked;
            let parts = crate::split::outgoing(doc, state, kind, max, other_device, document_id);
            let parts = parts.unwrap_or_default();
            if parts.is_empty() {
                continue;
            }
            if parts.iter().any(|p| p.carries_changes)
                && !received.iter().any(|r| r == other_device.as_str())
            {
                received.push(other_device.to_string());
            }
            outgoing.push((
                conn.outbox.clone(),
                parts
                    .into_iter()
                    .map(|p| self.sync_message(conn.outbox.peer(), document_id, p.data))
                    .collect(),
            ));
        }
    }
}
