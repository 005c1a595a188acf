//! [`DocumentStore`] on PostgreSQL.
//!
//! The change cursor is the team's row in `team_cursor`, not a sequence: a
//! sequence hands out values in the order transactions ask, not the order
//! they commit, so a reader could see value 11 committed, move its cursor
//! there, and never see 10 when it commits after. Every upload and purge of
//! a team first locks the team's row ([`lock_team`]) and advances it inside
//! its transaction; the lock is released only after the commit is visible,
//! so the next writer of the team gets a larger value and commits later.
//! The same lock orders a purge and an upload of the document: whichever
//! comes second sees the other's commit.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use linkbook_core::DocumentId;
use tokio_postgres::IsolationLevel;

use super::{PostgresStorage, document_id, insert_audit, watch};
use crate::refusals::{MAX_ROWS, Refusal, RefusedDocument};
use crate::storage::{
    AuditAction, AuditRecord, Committed, DocumentStore, Purged, Result, StorageError, Stored,
    StoredDocument, Team, Upload,
};

#[async_trait]
impl DocumentStore for PostgresStorage {
    async fn document_exists(&self, team: &Team, doc_id: DocumentId) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT 1 FROM documents WHERE team = $1 AND id = $2")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&team.as_str(), &doc_id.to_string()])
            .await?
            .is_some())
    }

    async fn teams_holding(&self, doc_id: DocumentId) -> Result<Vec<Team>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT team FROM documents WHERE id = $1
                 UNION SELECT team FROM purged WHERE doc_id = $1 ORDER BY 1",
            )
            .await?;
        client
            .query(&stmt, &[&doc_id.to_string()])
            .await?
            .iter()
            .map(|r| Ok(Team::new(r.try_get::<_, String>(0)?)))
            .collect()
    }

    async fn load_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
    ) -> Result<Option<StoredDocument>> {
        let mut client = self.client().await?;
        // One snapshot for both reads: the snapshot, the changes and the
        // cursor value agree even while another node writes. (Read
        // committed would give each statement its own.)
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let id = doc_id.to_string();
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT team, snapshot, seq FROM documents WHERE team = $1 AND id = $2",
                )
                .await?,
                &[&team.as_str(), &id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let changes = tx
            .query(
                &tx.prepare_cached(
                    "SELECT data FROM changes WHERE team = $1 AND doc_id = $2 ORDER BY seq",
                )
                .await?,
                &[&team.as_str(), &id],
            )
            .await?
            .iter()
            .map(|r| r.try_get::<_, Vec<u8>>(0))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let document = StoredDocument {
            team: Team::new(row.try_get::<_, String>(0)?),
            snapshot: row.try_get(1)?,
            changes,
            seq: row.try_get(2)?,
        };
        tx.commit().await?;
        Ok(Some(document))
    }

    async fn commit_upload(&self, upload: &Upload<'_>) -> Result<Committed> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let committed = commit_upload(&tx, upload).await?;
        notify(
            &tx,
            &watch::changed(upload.team, upload.doc_id, committed.seq),
        )
        .await?;
        tx.commit().await?;
        Ok(committed)
    }

    async fn compact(
        &self,
        team: &Team,
        doc_id: DocumentId,
        snapshot: &[u8],
        through: i64,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = doc_id.to_string();
        // The row lock this takes holds off uploads of the document (they
        // update the same row) and other compactions until the commit.
        let replaced = tx
            .execute(
                &tx.prepare_cached(
                    "UPDATE documents SET snapshot = $3, compacted_through = $4
                     WHERE team = $1 AND id = $2 AND compacted_through <= $4",
                )
                .await?,
                &[&team.as_str(), &id, &snapshot, &through],
            )
            .await?
            > 0;
        if !replaced {
            return Ok(false);
        }
        tx.execute(
            &tx.prepare_cached("DELETE FROM changes WHERE team = $1 AND doc_id = $2 AND seq <= $3")
                .await?,
            &[&team.as_str(), &id, &through],
        )
        .await?;
        tx.execute(
            &tx.prepare_cached(
                "UPDATE documents SET change_count =
                     (SELECT count(*) FROM changes WHERE team = $1 AND doc_id = $2)
                 WHERE team = $1 AND id = $2",
            )
            .await?,
            &[&team.as_str(), &id],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn changed_since(
        &self,
        team: &Team,
        since: i64,
        uploader: &str,
    ) -> Result<(i64, Vec<(DocumentId, i64)>)> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, seq, last_device FROM documents WHERE team = $1 AND seq > $2 ORDER BY seq",
            )
            .await?;
        let mut cursor = since;
        let mut ids = Vec::new();
        for row in client.query(&stmt, &[&team.as_str(), &since]).await? {
            let seq: i64 = row.try_get(1)?;
            let last_device: Option<String> = row.try_get(2)?;
            cursor = cursor.max(seq);
            if last_device.as_deref() != Some(uploader) {
                ids.push((document_id(row.try_get(0)?)?, seq));
            }
        }
        Ok((cursor, ids))
    }

    async fn purge_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.purge(team, doc_id, reason, (now, now), Purge::IfStored(by))
            .await
    }

    async fn ensure_purged(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        purged_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.purge(team, doc_id, reason, (purged_at, now), Purge::Always)
            .await
    }

    async fn is_purged(&self, team: &Team, doc_id: DocumentId) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT 1 FROM purged WHERE team = $1 AND doc_id = $2")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&team.as_str(), &doc_id.to_string()])
            .await?
            .is_some())
    }

    async fn purged(&self, team: &Team) -> Result<Vec<Purged>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT doc_id, purged_at FROM purged WHERE team = $1 ORDER BY purged_at, doc_id",
            )
            .await?;
        client
            .query(&stmt, &[&team.as_str()])
            .await?
            .iter()
            .map(|r| {
                Ok(Purged {
                    id: r.try_get(0)?,
                    purged_at: r.try_get(1)?,
                })
            })
            .collect()
    }

    async fn document_ids(&self) -> Result<Vec<(DocumentId, Team)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, team FROM documents ORDER BY id, team")
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| {
                Ok((
                    document_id(r.try_get(0)?)?,
                    Team::new(r.try_get::<_, String>(1)?),
                ))
            })
            .collect()
    }

    async fn record_refusals(&self, refusals: &[Refusal]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        record_refusals(&tx, refusals).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn refused_documents(&self, team: Option<&Team>) -> Result<Vec<RefusedDocument>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT doc_id, team, device_id, reason, count, first_at, last_at
                 FROM refused_documents
                 WHERE $1::text IS NULL OR team = $1
                 ORDER BY last_at DESC, doc_id",
            )
            .await?;
        client
            .query(&stmt, &[&team.map(Team::as_str)])
            .await?
            .iter()
            .map(|r| {
                Ok(RefusedDocument {
                    document_id: r.try_get(0)?,
                    team: Team::new(r.try_get::<_, String>(1)?),
                    device_id: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    count: r.try_get(4)?,
                    first_at: r.try_get(5)?,
                    last_at: r.try_get(6)?,
                })
            })
            .collect()
    }

    async fn watch_documents(&self) -> Result<Option<crate::storage::DocumentEvents>> {
        Ok(Some(self.watch()))
    }
}

/// Tells the other relay nodes (their document watch, watch.rs) at commit.
async fn notify(tx: &Transaction<'_>, payload: &str) -> Result<()> {
    tx.execute(
        &tx.prepare_cached("SELECT pg_notify($1, $2)").await?,
        &[&watch::CHANNEL, &payload],
    )
    .await?;
    Ok(())
}

/// Locks `team`'s cursor row (making it if the team has none) until the
/// transaction ends. Under read committed, the statements after it see
/// every commit of the team's writers before it.
pub(super) async fn lock_team(tx: &Transaction<'_>, team: &Team) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO team_cursor (team, seq) VALUES ($1, 0)
             ON CONFLICT (team) DO UPDATE SET seq = team_cursor.seq",
        )
        .await?;
    tx.execute(&stmt, &[&team.as_str()]).await?;
    Ok(())
}

pub(super) async fn is_purged(
    tx: &Transaction<'_>,
    team: &Team,
    doc_id: DocumentId,
) -> Result<bool> {
    let stmt = tx
        .prepare_cached("SELECT 1 FROM purged WHERE team = $1 AND doc_id = $2")
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&team.as_str(), &doc_id.to_string()])
        .await?
        .is_some())
}

async fn commit_upload(tx: &Transaction<'_>, u: &Upload<'_>) -> Result<Committed> {
    lock_team(tx, u.team).await?;
    // Checked under the team's lock, which a purge takes too: a purge by
    // the administrator (another process) cannot be raced.
    if is_purged(tx, u.team, u.doc_id).await? {
        return Err(StorageError::Purged);
    }
    let team = u.team.as_str();
    let id = u.doc_id.to_string();
    let created = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO documents (id, team, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (team, id) DO NOTHING",
            )
            .await?,
            &[&id, &team, &u.at.to_rfc3339()],
        )
        .await?
        > 0;
    let row = tx
        .query_one(
            &tx.prepare_cached(
                "SELECT seq, change_count FROM documents WHERE team = $1 AND id = $2",
            )
            .await?,
            &[&team, &id],
        )
        .await?;
    let previous_seq: i64 = row.try_get(0)?;
    let mut change_count: i64 = row.try_get(1)?;
    let mut seq = previous_seq;
    let stored = u.stored(created);
    if !matches!(stored, Stored::Nothing) {
        seq = tx
            .query_one(
                &tx.prepare_cached(
                    "UPDATE team_cursor SET seq = seq + 1 WHERE team = $1 RETURNING seq",
                )
                .await?,
                &[&team],
            )
            .await?
            .try_get(0)?;
    }
    match stored {
        Stored::Snapshot(snap) => {
            // As on SQLite, where the snapshot's value comes from a change
            // row deleted at once: a new document has no changes, but a
            // snapshot stands for all of them.
            tx.execute(
                &tx.prepare_cached("DELETE FROM changes WHERE team = $1 AND doc_id = $2")
                    .await?,
                &[&team, &id],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE documents SET snapshot = $3, compacted_through = $4, change_count = 0,
                         seq = $4, last_device = $5
                     WHERE team = $1 AND id = $2",
                )
                .await?,
                &[&team, &id, &snap, &seq, &u.uploader],
            )
            .await?;
            change_count = 0;
        }
        Stored::Append(data) => {
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO changes (team, doc_id, seq, data) VALUES ($1, $2, $3, $4)",
                )
                .await?,
                &[&team, &id, &seq, &data],
            )
            .await?;
            change_count = tx
                .query_one(
                    &tx.prepare_cached(
                        "UPDATE documents SET change_count = change_count + 1, seq = $3, last_device = $4
                         WHERE team = $1 AND id = $2 RETURNING change_count",
                    )
                    .await?,
                    &[&team, &id, &seq, &u.uploader],
                )
                .await?
                .try_get(0)?;
        }
        Stored::Nothing => {}
    }
    if !matches!(stored, Stored::Nothing) {
        // The document's projection is out of date from this commit on,
        // marked in the same transaction (console.rs clears it). A new
        // mark starts at the commit's cursor value, which no earlier
        // generation of the document reached (each commit adds one to a
        // generation and at least one to the team's cursor): a projector
        // that read a cleared mark never clears a later one.
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO projection_dirty (team, id, generation) VALUES ($1, $2, $3)
                 ON CONFLICT (team, id) DO UPDATE SET generation = projection_dirty.generation + 1",
            )
            .await?,
            &[&team, &id, &seq],
        )
        .await?;
    }
    for record in u.audit {
        insert_audit(tx, record).await?;
    }
    Ok(Committed {
        seq,
        previous_seq,
        change_count,
    })
}

async fn record_refusals(tx: &Transaction<'_>, refusals: &[Refusal]) -> Result<()> {
    let upsert = tx
        .prepare_cached(
            "INSERT INTO refused_documents (doc_id, device_id, team, reason, first_at, last_at, count)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (doc_id, device_id, reason) DO UPDATE SET
                 count = refused_documents.count + excluded.count,
                 last_at = excluded.last_at,
                 team = excluded.team
             RETURNING count",
        )
        .await?;
    let audit = tx
        .prepare_cached(
            "INSERT INTO audit (at, device_id, worker, action, doc_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    let mut added = false;
    for r in refusals {
        let count: i64 = tx
            .query_one(
                &upsert,
                &[
                    &r.doc_id,
                    &r.device_id,
                    &r.team.as_str(),
                    &r.reason,
                    &r.first_at,
                    &r.last_at,
                    &r.count,
                ],
            )
            .await?
            .try_get(0)?;
        // A new row's count is this batch's alone.
        if count == r.count {
            added = true;
            tx.execute(
                &audit,
                &[
                    &r.first_at,
                    &r.device_id,
                    &r.worker,
                    &r.kind.action().as_str(),
                    &r.doc_id,
                ],
            )
            .await?;
        }
    }
    if added {
        // Past the cap, the rows last refused longest ago go.
        tx.execute(
            &tx.prepare_cached(
                "DELETE FROM refused_documents r USING (
                     SELECT doc_id, device_id, reason FROM refused_documents
                     ORDER BY last_at DESC OFFSET $1) old
                 WHERE r.doc_id = old.doc_id AND r.device_id = old.device_id
                     AND r.reason = old.reason",
            )
            .await?,
            &[&MAX_ROWS],
        )
        .await?;
    }
    Ok(())
}

/// Which documents a purge applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purge<'a> {
    /// Only a stored document ([`DocumentStore::purge_document`]), by
    /// whom the audit names.
    IfStored(&'a str),
    /// Any document not purged yet, stored or not
    /// ([`DocumentStore::ensure_purged`]).
    Always,
}

impl PostgresStorage {
    /// The one purge: deletes what is stored of the document, remembers it
    /// as purged at `at.0` and audits it at `at.1`, in one transaction.
    async fn purge(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        at: (DateTime<Utc>, DateTime<Utc>),
        which: Purge<'_>,
    ) -> Result<bool> {
        let (purged_at, now) = at;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // After any upload of the team in flight has committed; uploads
        // after this one see the purge.
        lock_team(&tx, team).await?;
        let id = doc_id.to_string();
        // The document's row first, as a compaction takes it: a purge and a
        // compaction of the document then queue instead of deadlocking
        // over its change rows.
        let stored = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT 1 FROM documents WHERE team = $1 AND id = $2 FOR UPDATE",
                )
                .await?,
                &[&team.as_str(), &id],
            )
            .await?
            .is_some();
        let applies = match which {
            Purge::IfStored(_) => stored,
            // Under the team's lock: two replays cannot both insert it.
            Purge::Always => tx
                .query_opt(
                    &tx.prepare_cached("SELECT 1 FROM purged WHERE team = $1 AND doc_id = $2")
                        .await?,
                    &[&team.as_str(), &id],
                )
                .await?
                .is_none(),
        };
        if !applies {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM changes WHERE team = $1 AND doc_id = $2",
            "DELETE FROM sync_states WHERE team = $1 AND doc_id = $2",
            "DELETE FROM documents WHERE team = $1 AND id = $2",
            // Ids and reasons only, but of a family that no longer exists.
            "DELETE FROM refused_documents WHERE team = $1 AND doc_id = $2",
            // What the console's reports kept of it.
            "DELETE FROM projections WHERE team = $1 AND id = $2",
            "DELETE FROM projection_dirty WHERE team = $1 AND id = $2",
        ] {
            tx.execute(&tx.prepare_cached(sql).await?, &[&team.as_str(), &id])
                .await?;
        }
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO purged (doc_id, team, reason, purged_at) VALUES ($1, $2, $3, $4)",
            )
            .await?,
            &[&id, &team.as_str(), &reason, &purged_at.to_rfc3339()],
        )
        .await?;
        let worker = match which {
            Purge::IfStored(by) => by,
            Purge::Always => crate::erasure_ledger::REPLAY_WORKER,
        };
        insert_audit(
            &tx,
            &AuditRecord::new(AuditAction::Purged, now)
                .worker(worker)
                .document(team, &id),
        )
        .await?;
        notify(&tx, &watch::purged(team, doc_id)).await?;
        tx.commit().await?;
        Ok(true)
    }
}
