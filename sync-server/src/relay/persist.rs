//! What the relay keeps of a session: changes stored before they are
//! answered (compacted now and then), each connection's sync states loaded
//! on first use and saved when it ends, and the audit of which devices were
//! sent changes.

use std::sync::Arc;

use chrono::Utc;
use linkbook_core::{DocSync, DocumentId};

use super::slots::Slot;
use super::{Close, DocKey, Hub, lock};
use crate::storage::{AuditAction, AuditRecord, COMPACT_AFTER, Device, Upload as StorageUpload};

impl Hub {
    /// The connection's sync state for a document, from storage the first time.
    pub(super) async fn load_state(
        &self,
        s: &mut Slot,
        id: DocumentId,
        conn_id: u64,
        device: &Device,
    ) {
        if let std::collections::hash_map::Entry::Vacant(e) = s.states.entry(conn_id) {
            let saved = self
                .storage
                .sync_state(&device.team, id, &device.id)
                .await
                .ok()
                .flatten();
            e.insert((device.id.clone(), DocSync::from_saved(saved.as_deref())));
        }
    }

    /// Audits that devices were sent changes of a document, in one
    /// transaction. The audit is best effort here: failing to write it must
    /// not stop the sync.
    pub(super) async fn audit_received(&self, device_ids: &[String], document_id: &str) {
        if device_ids.is_empty() {
            return;
        }
        let now = Utc::now();
        let records: Vec<AuditRecord> = device_ids
            .iter()
            .map(|id| {
                AuditRecord::new(AuditAction::Received, now)
                    .device(id)
                    .in_document(document_id)
            })
            .collect();
        if let Err(e) = self.storage.append_audit(&records).await {
            tracing::error!(error = %e, "writing the audit failed");
        }
    }

    /// Commits an applied message's changes (doc_cap::Upload), compacting
    /// now and then.
    /// Its changes, the cursor advance and the `uploaded` audit record are
    /// one transaction (`commit_upload`); a compaction follows only while
    /// this copy holds every stored change (nobody else appended since it
    /// was loaded), and replaces only the changes it covers.
    pub(super) async fn store(
        &self,
        id: DocumentId,
        s: &mut Slot,
        upload: crate::doc_cap::Upload,
        (device, tag): (&Device, &str),
    ) -> Result<(), Close> {
        let now = Utc::now();
        let key = &id.to_string();
        let audit = [AuditRecord::by(
            Some(device),
            AuditAction::Uploaded,
            Some(key),
            now,
        )];
        let started = std::time::Instant::now();
        let committed = self
            .storage
            .commit_upload(&StorageUpload {
                team: &s.team,
                doc_id: id,
                uploader: tag,
                changes: &upload.changes,
                snapshot: upload.snapshot.as_deref(),
                audit: &audit,
                at: now,
            })
            .await;
        crate::metrics::metrics().committed(started.elapsed());
        let result = match committed {
            Ok(c) => {
                s.stored_bytes = upload.stored_after(s.stored_bytes);
                s.seq = s
                    .seq
                    .filter(|known| *known == c.previous_seq)
                    .map(|_| c.seq);
                if c.change_count >= COMPACT_AFTER
                    && let Some(through) = s.seq
                {
                    let snapshot = s.doc.save();
                    match self.storage.compact(&s.team, id, &snapshot, through).await {
                        Ok(true) => {
                            s.stored_bytes = u64::try_from(snapshot.len()).unwrap_or(u64::MAX);
                        }
                        Ok(false) => {}
                        // The changes are stored; compaction tries again later.
                        Err(e) => {
                            tracing::warn!(error = %e, doc = %key, "compacting a document failed")
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(crate::Error::from(e)),
        };
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
            if let Some((device, state)) = slot.states.remove(&conn_id) {
                states.push((team, id, device, state.encode()));
            }
        }
        if let Err(e) = self.storage.save_sync_states(&states).await {
            tracing::warn!(error = %e, "saving sync states failed; the next sync will exchange more");
        }
    }
}
