//! [`DocumentStore`] on SQLite.
//!
//! The change cursor is `changes.seq` (AUTOINCREMENT, never reused, even
//! after compaction deleted the row that held the highest value). SQLite
//! has one writer at a time and every upload takes the write lock first
//! (`BEGIN IMMEDIATE`), so a value is handed out and committed before the
//! next writer starts: sequence order is commit order here, which is what
//! makes `changed_since` commit-ordered.

use crate::storage::Team;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use linkbook_core::DocumentId;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{SqliteStorage, insert_audit};
use crate::refusals::{MAX_ROWS, Refusal, RefusedDocument};
use crate::storage::{
    AuditAction, AuditRecord, Committed, DocumentStore, Purged, Result, StorageError, Stored,
    StoredDocument, Upload,
};

#[async_trait]
impl DocumentStore for SqliteStorage {
    async fn document_exists(&self, team: &Team, doc_id: DocumentId) -> Result<bool> {
        self.with(|c| {
            Ok::<_, rusqlite::Error>(
                c.prepare_cached("SELECT 1 FROM documents WHERE team = ?1 AND id = ?2")?
                    .query_row(params![team, doc_id], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
    }

    async fn teams_holding(&self, doc_id: DocumentId) -> Result<Vec<Team>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT team FROM documents WHERE id = ?1 UNION SELECT team FROM purged WHERE doc_id = ?1 ORDER BY 1",
            )?;
            let rows = stmt.query_map([doc_id], |r| r.get(0))?;
            rows.collect()
        })
    }

    async fn load_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
    ) -> Result<Option<StoredDocument>> {
        self.with(|conn| {
            // One read transaction: the snapshot, the changes and the cursor
            // value agree even while another process writes.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let row: Option<(Team, Option<Vec<u8>>, i64)> = tx
                .prepare_cached(
                    "SELECT team, snapshot, seq FROM documents WHERE team = ?1 AND id = ?2",
                )?
                .query_row(params![team, doc_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let Some((team, snapshot, seq)) = row else {
                return Ok(None);
            };
            let changes = tx
                .prepare_cached(
                    "SELECT data FROM changes WHERE team = ?1 AND doc_id = ?2 ORDER BY seq",
                )?
                .query_map(params![team, doc_id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<Vec<u8>>>>()?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(Some(StoredDocument {
                team,
                snapshot,
                changes,
                seq,
            }))
        })
    }

    async fn commit_upload(&self, upload: &Upload<'_>) -> Result<Committed> {
        self.with(|conn| commit_upload(conn, upload))
    }

    async fn compact(
        &self,
        team: &Team,
        doc_id: DocumentId,
        snapshot: &[u8],
        through: i64,
    ) -> Result<bool> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let replaced = tx
                .prepare_cached(
                    "UPDATE documents SET snapshot = ?3, compacted_through = ?4
                     WHERE team = ?1 AND id = ?2 AND compacted_through <= ?4",
                )?
                .execute(params![team, doc_id, snapshot, through])?
                > 0;
            if !replaced {
                return Ok(false);
            }
            tx.prepare_cached("DELETE FROM changes WHERE team = ?1 AND doc_id = ?2 AND seq <= ?3")?
                .execute(params![team, doc_id, through])?;
            tx.prepare_cached(
                "UPDATE documents SET change_count =
                     (SELECT count(*) FROM changes WHERE team = ?1 AND doc_id = ?2)
                 WHERE team = ?1 AND id = ?2",
            )?
            .execute(params![team, doc_id])?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(true)
        })
    }

    async fn changed_since(
        &self,
        team: &Team,
        since: i64,
        uploader: &str,
    ) -> Result<(i64, Vec<(DocumentId, i64)>)> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, seq, last_device FROM documents WHERE team = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![team, since], |r| {
                Ok((
                    r.get::<_, DocumentId>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?;
            let mut cursor = since;
            let mut ids = Vec::new();
            for row in rows {
                let (id, seq, last_device) = row?;
                cursor = cursor.max(seq);
                if last_device.as_deref() != Some(uploader) {
                    ids.push((id, seq));
                }
            }
            Ok::<_, rusqlite::Error>((cursor, ids))
        })
    }

    async fn purge_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.purge(team, doc_id, reason, now, now, Purge::IfStored(by))
    }

    async fn ensure_purged(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        purged_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.purge(team, doc_id, reason, purged_at, now, Purge::Always)
    }

    async fn is_purged(&self, team: &Team, doc_id: DocumentId) -> Result<bool> {
        self.with(|c| is_purged(c, team, doc_id))
    }

    async fn purged(&self, team: &Team) -> Result<Vec<Purged>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT doc_id, purged_at FROM purged WHERE team = ?1 ORDER BY purged_at",
            )?;
            let rows = stmt.query_map([team], |r| {
                Ok(Purged {
                    id: r.get(0)?,
                    purged_at: r.get(1)?,
                })
            })?;
            rows.collect()
        })
    }

    async fn document_ids(&self) -> Result<Vec<(DocumentId, Team)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT id, team FROM documents ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    async fn record_refusals(&self, refusals: &[Refusal]) -> Result<()> {
        self.with(|conn| record_refusals(conn, refusals))
    }

    /// One serving relay per data directory (its lock): nobody else writes
    /// documents but the admin commands' purges, which uploads check.
    async fn watch_documents(&self) -> Result<Option<crate::storage::DocumentEvents>> {
        Ok(None)
    }

    async fn refused_documents(&self, team: Option<&Team>) -> Result<Vec<RefusedDocument>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT doc_id, team, device_id, reason, count, first_at, last_at FROM refused_documents
                 WHERE ?1 IS NULL OR team = ?1 ORDER BY last_at DESC, doc_id",
            )?;
            let rows = stmt.query_map([team], |r| {
                Ok(RefusedDocument {
                    document_id: r.get(0)?,
                    team: r.get(1)?,
                    device_id: r.get(2)?,
                    reason: r.get(3)?,
                    count: r.get(4)?,
                    first_at: r.get(5)?,
                    last_at: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }
}

fn is_purged(c: &Connection, team: &str, doc_id: DocumentId) -> rusqlite::Result<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM purged WHERE team = ?1 AND doc_id = ?2")?
            .query_row(params![team, doc_id], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

fn commit_upload(conn: &mut Connection, u: &Upload<'_>) -> Result<Committed> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Checked in the same transaction as the write: a purge by the
    // administrator (another process) cannot be raced.
    if is_purged(&tx, u.team, u.doc_id)? {
        return Err(StorageError::Purged);
    }
    let created = tx
        .prepare_cached(
            "INSERT INTO documents (id, team, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(team, id) DO NOTHING",
        )?
        .execute(params![u.doc_id, u.team, u.at.to_rfc3339()])?
        > 0;
    let (previous_seq, mut change_count): (i64, i64) = tx
        .prepare_cached("SELECT seq, change_count FROM documents WHERE team = ?1 AND id = ?2")?
        .query_row(params![u.team, u.doc_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut seq = previous_seq;
    let stored = u.stored(created);
    // A snapshot takes its cursor value from a row deleted at once.
    let data = match stored {
        Stored::Snapshot(_) => Some(&[][..]),
        Stored::Append(data) => Some(data),
        Stored::Nothing => None,
    };
    if let Some(data) = data {
        tx.prepare_cached("INSERT INTO changes (team, doc_id, data) VALUES (?1, ?2, ?3)")?
            .execute(params![u.team, u.doc_id, data])?;
        seq = tx.last_insert_rowid();
    }
    if let Stored::Snapshot(snap) = stored {
        tx.prepare_cached("DELETE FROM changes WHERE team = ?1 AND doc_id = ?2")?
            .execute(params![u.team, u.doc_id])?;
        tx.prepare_cached(
            "UPDATE documents SET snapshot = ?3, compacted_through = ?4, change_count = 0,
                 seq = ?4, last_device = ?5
             WHERE team = ?1 AND id = ?2",
        )?
        .execute(params![u.team, u.doc_id, snap, seq, u.uploader])?;
        change_count = 0;
    } else if let Stored::Append(_) = stored {
        change_count = tx
            .prepare_cached(
                "UPDATE documents SET change_count = change_count + 1, seq = ?3, last_device = ?4
                 WHERE team = ?1 AND id = ?2 RETURNING change_count",
            )?
            .query_row(params![u.team, u.doc_id, seq, u.uploader], |r| r.get(0))?;
    }
    if stored != Stored::Nothing {
        // The document's projection is out of date from this commit on,
        // marked in the same transaction (console.rs clears it). A new
        // mark starts at the commit's cursor value, which no earlier
        // generation of the document reached (each commit adds one to a
        // generation and at least one to the cursor): a projector that
        // read a cleared mark never clears a later one.
        tx.prepare_cached(
            "INSERT INTO projection_dirty (team, id, generation) VALUES (?1, ?2, ?3)
             ON CONFLICT(team, id) DO UPDATE SET generation = generation + 1",
        )?
        .execute(params![u.team, u.doc_id, seq])?;
    }
    for record in u.audit {
        insert_audit(&tx, record)?;
    }
    tx.commit()?;
    Ok(Committed {
        seq,
        previous_seq,
        change_count,
    })
}

fn record_refusals(conn: &mut Connection, refusals: &[Refusal]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut added = false;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO refused_documents (doc_id, device_id, team, reason, first_at, last_at, count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(doc_id, device_id, reason) DO UPDATE SET
                 count = count + excluded.count, last_at = excluded.last_at, team = excluded.team
             RETURNING count",
        )?;
        let mut audit = tx.prepare_cached(
            "INSERT INTO audit (at, device_id, worker, action, doc_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for r in refusals {
            let count: i64 = upsert.query_row(
                params![
                    r.doc_id,
                    r.device_id,
                    r.team,
                    r.reason,
                    r.first_at,
                    r.last_at,
                    r.count
                ],
                |row| row.get(0),
            )?;
            // A new row's count is this batch's alone.
            if count == r.count {
                added = true;
                audit.execute(params![
                    r.first_at,
                    r.device_id,
                    r.worker,
                    r.kind.action().as_str(),
                    r.doc_id
                ])?;
            }
        }
    }
    if added {
        // Past the cap, the rows last refused longest ago go.
        tx.execute(
            "DELETE FROM refused_documents WHERE rowid IN (
                 SELECT rowid FROM refused_documents ORDER BY last_at DESC LIMIT -1 OFFSET ?1)",
            [MAX_ROWS],
        )?;
    }
    tx.commit()
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

impl SqliteStorage {
    /// The one purge: deletes what is stored of the document, remembers it
    /// as purged and audits it, in one transaction, then truncates the WAL.
    fn purge(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        purged_at: DateTime<Utc>,
        now: DateTime<Utc>,
        which: Purge<'_>,
    ) -> Result<bool> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let applies = match which {
                Purge::IfStored(_) => tx
                    .query_row(
                        "SELECT 1 FROM documents WHERE team = ?1 AND id = ?2",
                        params![team, doc_id],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some(),
                Purge::Always => !is_purged(&tx, team, doc_id)?,
            };
            if !applies {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM changes WHERE team = ?1 AND doc_id = ?2",
                "DELETE FROM sync_states WHERE team = ?1 AND doc_id = ?2",
                "DELETE FROM documents WHERE team = ?1 AND id = ?2",
                // Ids and reasons only, but of a family that no longer exists.
                "DELETE FROM refused_documents WHERE team = ?1 AND doc_id = ?2",
                // What the console's reports kept of it.
                "DELETE FROM projections WHERE team = ?1 AND id = ?2",
                "DELETE FROM projection_dirty WHERE team = ?1 AND id = ?2",
            ] {
                tx.execute(sql, params![team, doc_id])?;
            }
            tx.execute(
                "INSERT INTO purged (doc_id, team, reason, purged_at) VALUES (?1, ?2, ?3, ?4)",
                params![doc_id, team, reason, purged_at.to_rfc3339()],
            )?;
            insert_audit(
                &tx,
                &AuditRecord::new(AuditAction::Purged, now)
                    .worker(match which {
                        Purge::IfStored(by) => by,
                        Purge::Always => crate::erasure_ledger::REPLAY_WORKER,
                    })
                    .document(team, &doc_id.to_string()),
            )?;
            tx.commit()?;
            // Older page images of the document are still in the WAL: fold
            // it into the (secure-deleted) database file and truncate it.
            // Busy if a reader holds an old snapshot; the next checkpoint
            // then does it.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            Ok::<_, rusqlite::Error>(true)
        })
    }
}
