//! What the relay keeps of a session: changes stored before they are
//! answered (compacted now and then), each connection's sync states loaded
//! on first use and saved when it ends, and the audit of which devices were
//! sent changes.

use std::sync::Arc;

use automerge::sync;
use chrono::Utc;

use super::slots::Slot;
use super::{Close, DocKey, Hub, blocking, lock};
use crate::storage::{COMPACT_AFTER, Device};

impl Hub {
    /// The connection's sync state for a document, from storage the first time.
    pub(super) fn load_state(&self, s: &mut Slot, key: &str, conn_id: u64, device: &Device) {
        if let std::collections::hash_map::Entry::Vacant(e) = s.states.entry(conn_id) {
            let saved = blocking(|| self.storage.sync_state(&device.team, key, &device.id))
                .ok()
                .flatten();
            let state = saved
                .and_then(|b| sync::State::decode(&b).ok())
                .unwrap_or_default();
            e.insert((device.id.clone(), state));
        }
    }

    /// Audits that devices were sent changes of a document, in one
    /// transaction. The audit is best effort here: failing to write it must
    /// not stop the sync.
    pub(super) fn audit_received(&self, device_ids: &[String], document_id: &str) {
        if device_ids.is_empty() {
            return;
        }
        let result = blocking(|| {
            self.storage
                .audit_received(device_ids, document_id, &Utc::now().to_rfc3339())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the audit failed");
        }
    }

    /// Commits an applied message's changes (doc_cap::Upload), compacting
    /// now and then.
    pub(super) fn store(
        &self,
        key: &str,
        s: &mut Slot,
        upload: crate::doc_cap::Upload,
        (device, tag): (&Device, &str),
    ) -> Result<(), Close> {
        let now = Utc::now();
        let result = blocking(|| -> crate::error::Result<u64> {
            let count = self.storage.append_changes(
                key,
                &s.team,
                tag,
                &upload.changes,
                upload.snapshot.as_deref(),
                now,
            )?;
            let mut stored = upload.stored_after(s.stored_bytes);
            if count >= COMPACT_AFTER {
                let snapshot = s.doc.save();
                self.storage
                    .append_changes(key, &s.team, tag, &[], Some(&snapshot), now)?;
                stored = u64::try_from(snapshot.len()).unwrap_or(u64::MAX);
            }
            self.storage
                .audit(Some(device), "uploaded", Some(key), now)?;
            Ok(stored)
        });
        let result = result.map(|stored| s.stored_bytes = stored);
        result.map_err(|e| {
            // The transaction was rolled back and the device keeps its
            // changes; it sends them again at its next sync.
            if e.is_disk_problem() {
                tracing::error!(error = %e, device = %device.id, doc = %key,
                    "storing changes failed: the relay's disk is full or not writable; free space (or fix the data directory) and devices' next syncs deliver their changes");
            } else {
                tracing::error!(error = %e, device = %device.id, doc = %key, "storing changes failed");
            }
            Close("the relay could not store your changes; try again later".into())
        })
    }

    /// Saves the connection's sync states and forgets it.
    pub(super) async fn disconnect(&self, conn_id: u64) {
        lock(&self.connections).remove(&conn_id);
        let slots: Vec<(DocKey, Arc<tokio::sync::Mutex<Slot>>)> = lock(&self.docs)
            .iter()
            .map(|(key, s)| (key.clone(), s.clone()))
            .collect();
        let mut states = Vec::new();
        for ((team, id), slot) in slots {
            let mut slot = slot.lock().await;
            slot.last_reply.remove(&conn_id);
            slot.sent.remove(&conn_id);
            if let Some((device, state)) = slot.states.remove(&conn_id) {
                states.push((team, id.to_string(), device, state.encode()));
            }
        }
        let saved = blocking(|| {
            states.iter().try_for_each(|(team, doc, device, state)| {
                self.storage.save_sync_state(team, doc, device, state)
            })
        });
        if let Err(e) = saved {
            tracing::warn!(error = %e, "saving sync states failed; the next sync will exchange more");
        }
    }
}
