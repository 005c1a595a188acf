//! Refused documents, listed for the administrator (issue 11, "documents
//! are checked at the door"): every document or change the relay refuses —
//! at the door (`door::check`: no Linkbook type, an unsupported schema, a
//! rewritten type, and the change rules that come through it) or over the
//! Automerge budget (`Hub::decode_within_budget`) — is recorded in
//! `refused_documents` and shown by `linkbook-server document refused`.
//!
//! Ids, the team, a reason and counts only, never content. One row per
//! (document, device, reason), with a count and the first and last time, so
//! a device repeating a refusal raises a count instead of adding rows; at
//! most [`MAX_ROWS`] rows (the oldest go first). Each new row is audited
//! (`refused-at-door` or `refused-over-budget`), a repeat is not: the audit
//! is append-only and must not be flooded.
//!
//! The refusing connection never waits for the write: [`Recorder::note`]
//! adds to an in-memory batch (capped) and one blocking task writes whatever
//! gathered in one transaction, so a flood of refusals costs one commit per
//! batch, not one fsync per refusal on the path of the async workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::Serialize;

use crate::error::Result;
use crate::storage::{AuditAction, Device, Storage, Team};

/// Rows kept in `refused_documents`.
pub const MAX_ROWS: i64 = 10_000;
/// Distinct (document, device, reason) waiting for the writer; beyond,
/// refusals are counted only in a warning (the writer is behind).
const MAX_PENDING: usize = 10_000;

/// What was refused (also the `kind` label of the refusal metric).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelValue,
)]
pub enum RefusalKind {
    /// `door::check` refused the document or the change.
    Door,
    /// The sync message was over the Automerge budget.
    OverBudget,
    /// The document would have grown past `--max-document-bytes`.
    OverSizeCap,
    /// The device's changes reuse an actor and sequence number the document
    /// holds with other content: a device copied before Linkbook gave each
    /// opened store its own actor (docs/adr/0007), or a hostile peer. Only
    /// that document is refused; the connection goes on.
    ActorClash,
}

impl RefusalKind {
    /// The log line of a refusal.
    fn log_line(self) -> &'static str {
        match self {
            RefusalKind::Door => "refused at the door",
            RefusalKind::OverBudget => "refused over the Automerge budget",
            RefusalKind::OverSizeCap => "refused over the document size cap",
            RefusalKind::ActorClash => {
                "refused: the changes clash with an earlier copy of the device"
            }
        }
    }

    /// The audit action of a new refusal.
    pub(crate) fn action(self) -> AuditAction {
        match self {
            RefusalKind::Door => AuditAction::RefusedAtDoor,
            RefusalKind::OverBudget => AuditAction::RefusedOverBudget,
            RefusalKind::OverSizeCap => AuditAction::RefusedOverSizeCap,
            RefusalKind::ActorClash => AuditAction::RefusedActorClash,
        }
    }
}

/// Refusals of one (document, device, reason) gathered since the last write.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub doc_id: String,
    pub device_id: String,
    pub worker: String,
    pub team: Team,
    pub reason: String,
    pub kind: RefusalKind,
    pub count: i64,
    pub first_at: String,
    pub last_at: String,
}

/// A row of `document refused`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedDocument {
    pub document_id: String,
    pub team: Team,
    pub device_id: String,
    pub reason: String,
    pub count: i64,
    pub first_at: String,
    pub last_at: String,
}

#[derive(Default)]
struct Pending {
    batch: HashMap<(String, String, String), Refusal>,
    writing: bool,
    dropped: u64,
}

/// The relay's refusal recorder (one per `Hub`).
#[derive(Default, Clone)]
pub struct Recorder {
    pending: Arc<Mutex<Pending>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    /// Records that `device` had `doc_id` refused for `reason` (ids and a
    /// reason without content), off the caller's path.
    pub fn note(
        &self,
        storage: &Arc<dyn Storage>,
        device: &Device,
        doc_id: &str,
        kind: RefusalKind,
        reason: &str,
    ) {
        crate::metrics::metrics().refused(kind);
        tracing::warn!(device = %device.id, team = %device.team, doc = %doc_id, reason = %reason, "{}", kind.log_line());
        let now = Utc::now().to_rfc3339();
        let start_writer = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let key = (
                doc_id.to_string(),
                device.id.to_string(),
                reason.to_string(),
            );
            let full = p.batch.len() >= MAX_PENDING;
            match p.batch.get_mut(&key) {
                Some(r) => {
                    r.count += 1;
                    r.last_at = now;
                }
                None if full => {
                    p.dropped += 1;
                    if p.dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped = p.dropped,
                            "refusals arrive faster than they are written; some are not recorded"
                        );
                    }
                }
                None => {
                    p.batch.insert(
                        key,
                        Refusal {
                            doc_id: doc_id.to_string(),
                            device_id: device.id.to_string(),
                            worker: device.worker.clone(),
                            team: device.team.clone(),
                            reason: reason.to_string(),
                            kind,
                            count: 1,
                            first_at: now.clone(),
                            last_at: now,
                        },
                    );
                }
            }
            !std::mem::replace(&mut p.writing, true)
        };
        if start_writer {
            let pending = self.pending.clone();
            let storage = storage.clone();
            tokio::spawn(async move { write_batches(&pending, &*storage).await });
        }
    }
}

/// Writes batches until none is left (then lets the next `note` start a
/// writer again).
async fn write_batches(pending: &Mutex<Pending>, storage: &dyn Storage) {
    loop {
        let batch: Vec<Refusal> = {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.batch.is_empty() {
                p.writing = false;
                return;
            }
            p.batch.drain().map(|(_, r)| r).collect()
        };
        if let Err(e) = storage.record_refusals(&batch).await {
            tracing::error!(error = %e, refusals = batch.len(), "recording refused documents failed");
        }
    }
}

/// `linkbook-server document refused [--team T] [--json]`.
pub(crate) async fn print(storage: &dyn Storage, team: Option<&str>, json: bool) -> Result<()> {
    let team = team.map(Team::from);
    let rows = storage.refused_documents(team.as_ref()).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    for r in &rows {
        println!(
            "{}  {:<36} {:<12} {:<36} {:>6}x  {}",
            r.last_at, r.document_id, r.team, r.device_id, r.count, r.reason
        );
    }
    eprintln!("{} refused document(s)", rows.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SqliteStorage;
    use crate::storage::prelude::*;

    fn refusal(doc: &str, device: &str, at: &str) -> Refusal {
        Refusal {
            doc_id: doc.into(),
            device_id: device.into(),
            worker: "Mallory".into(),
            team: "north".into(),
            reason: "document refused: it has no Linkbook type".into(),
            kind: RefusalKind::Door,
            count: 1,
            first_at: at.into(),
            last_at: at.into(),
        }
    }

    #[tokio::test]
    async fn repeats_count_in_one_row_and_the_total_is_capped() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let storage = SqliteStorage::open(&dir.path().join("relay.db"))?;
        for _ in 0..3 {
            storage
                .record_refusals(&[refusal("doc-a", "dev-1", "2026-12-01T00:00:00Z")])
                .await?;
        }
        let rows = storage.refused_documents(None).await?;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].count, 3);
        let audited = storage
            .audit_log(Some("doc-a"), None, None)
            .await?
            .into_iter()
            .filter(|e| e.action == "refused-at-door")
            .count();
        assert_eq!(audited, 1, "a repeat is counted, not audited again");
        assert!(
            storage
                .refused_documents(Some(&Team::from("south")))
                .await?
                .is_empty()
        );

        let many: Vec<Refusal> = (0..MAX_ROWS + 5)
            .map(|i| refusal(&format!("doc-{i:06}"), "dev-2", "2026-12-02T00:00:00Z"))
            .collect();
        storage.record_refusals(&many).await?;
        let rows = storage.refused_documents(None).await?;
        assert_eq!(rows.len() as i64, MAX_ROWS);
        assert!(
            rows.iter().all(|r| r.document_id != "doc-a"),
            "the oldest row goes first"
        );
        Ok(())
    }
}
