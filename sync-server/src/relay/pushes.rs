//! The pipelined session (a device that connected with its change
//! cursor): `peer`, then `changed-since` naming the team's documents
//! changed since the cursor (not counting the device's own uploads), then
//! one `sync` per document carrying the changes made since the heads
//! this device and the relay last shared. Plain Automerge sync would
//! first trade heads and Bloom filters and only then changes; assuming
//! the last shared heads saves that round trip (if the device lacks
//! something after all, its answer says so and the usual exchange
//! follows). The device pipelines its own documents the same way, so a
//! sync takes one round trip after TLS (docs/adr/0005).

use linkbook_core::DocumentId;
use linkbook_core::protocol::Message;

use super::slots::Slot;
use super::{Close, Hub};
use crate::outbox::Outbox;
use crate::storage::Device;

impl Hub {
    /// Tells the device what changed since its cursor (`changed-since`):
    /// the documents the relay will send it unasked.
    pub(super) async fn changed_since(
        &self,
        device: &Device,
        outbox: &Outbox,
        (since, mine): (i64, &str),
    ) -> Result<Vec<(String, i64)>, Close> {
        let read = async {
            Ok::<_, crate::storage::StorageError>((
                self.storage
                    .changed_since(&device.team, since, mine)
                    .await?,
                self.storage.purged(&device.team).await?,
                self.storage.team_policy(&device.team).await?,
            ))
        };
        let ((cursor, changed), purged, policy) = read.await.map_err(|e| {
            tracing::error!(error = %e, "reading the change cursor failed");
            Close("the relay could not read what changed".into())
        })?;
        let changed: Vec<(String, i64)> = changed
            .iter()
            .map(|(id, seq)| (id.to_string(), *seq))
            .collect();
        outbox.offer(Message::ChangedSince {
            cursor,
            document_ids: changed.iter().map(|(id, _)| id.clone()).collect(),
            purged,
            retention_days: policy.retention_days,
            lease_days: policy.lease_days,
        });
        Ok(changed)
    }

    /// Sends one changed document unasked: the changes made since the heads
    /// this device and the relay last shared (see the module's doc). A reply
    /// deferred while the send queue was over half full goes out this way
    /// too (the device spoke first, so nothing is assumed). `seq`: the
    /// document's cursor value `changed-since` was read at; a loaded copy
    /// below it (another relay node stored more, and its notification has
    /// not arrived) is refreshed first (nodes.rs).
    pub(super) async fn push(
        &self,
        conn_id: u64,
        device: &Device,
        outbox: &Outbox,
        (document_id, seq): (String, Option<i64>),
    ) -> Result<(), Close> {
        let Ok(id) = DocumentId::parse(&document_id, "document id") else {
            return Ok(());
        };
        let mut s = loop {
            let Some(mut s) = self.locked_slot(id, &device.team, false).await? else {
                self.unavailable(outbox, &document_id);
                return Ok(());
            };
            if seq.is_none_or(|seq| s.holds_through(seq)) {
                break s;
            }
            // Refreshed, or dropped (purged meanwhile, or damaged): then
            // the next look says so.
            if self
                .refresh_and_fan_out(&mut s, &device.team, id, Some(conn_id))
                .await
                .is_ok()
            {
                break s;
            }
        };
        self.load_state(&mut s, id, conn_id, device).await;
        let Slot { doc, states, .. } = &mut *s;
        let Some((_, state)) = states.get_mut(&conn_id) else {
            return Ok(());
        };
        // Not if the device spoke about this document first: then the usual
        // exchange is under way.
        if state.their_heads().is_none() {
            state.assume_shared_heads();
        }
        let max = self.limits.max_message_bytes;
        let kind = linkbook_core::Outgoing::Unasked;
        let Some(parts) = crate::split::outgoing(doc, state, kind, max, &device.id, &document_id)
        else {
            drop(s);
            self.unavailable(outbox, &document_id);
            return Ok(());
        };
        if parts.iter().any(|p| p.carries_changes) {
            self.audit_received(&[device.id.to_string()], &document_id)
                .await;
        }
        outbox.offer_all(
            parts
                .into_iter()
                .map(|p| self.sync_message(outbox.peer(), &document_id, p.data)),
        );
        Ok(())
    }
}
