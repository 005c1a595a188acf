//! [`AuditStore`] and [`SyncStateStore`] on SQLite. The audit table is
//! append-only in the database itself (triggers refuse UPDATE and DELETE,
//! migration 001).

use crate::storage::{DeviceId, Team};
use async_trait::async_trait;
use linkbook_core::DocumentId;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{SqliteStorage, insert_audit};
use crate::storage::{
    AuditAction, AuditEntry, AuditRecord, AuditSearch, AuditStore, Device, ReadMarks, Result,
    SyncStateStore,
};

#[async_trait]
impl AuditStore for SqliteStorage {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for r in records {
                insert_audit(&tx, r)?;
            }
            tx.commit()
        })
    }

    async fn record_reads(
        &self,
        device: &Device,
        reads: &[(String, String)],
        received_at: Option<&str>,
    ) -> Result<()> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO audit (at, device_id, worker, action, doc_id, received_at)
                     VALUES (?1, ?2, ?3, 'read', ?4, ?5)",
                )?;
                for (family, at) in reads {
                    insert.execute(params![at, device.id, device.worker, family, received_at])?;
                }
            }
            tx.commit()
        })
    }

    async fn reads_received_since(&self, device_id: &DeviceId, since: &str) -> Result<i64> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT COUNT(*) FROM audit
                 WHERE device_id = ?1 AND action = 'read' AND received_at >= ?2",
            )?
            .query_row([device_id, since], |r| r.get(0))
        })
    }

    async fn read_marks(
        &self,
        device_id: &DeviceId,
        received_before: Option<&str>,
    ) -> Result<ReadMarks> {
        self.with(|conn| {
            // Both served by audit_reads_by_device (device_id, received_at).
            let received_before_sync = match received_before {
                Some(t) => conn.query_row(
                    "SELECT max(received_at) FROM audit
                     WHERE device_id = ?1 AND action = 'read' AND received_at < ?2",
                    [device_id, t],
                    |r| r.get(0),
                )?,
                None => None,
            };
            let latest_at = conn
                .query_row(
                    "SELECT at FROM audit
                     WHERE device_id = ?1 AND action = 'read' AND received_at IS NOT NULL
                     ORDER BY received_at DESC, seq DESC LIMIT 1",
                    [device_id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok::<_, rusqlite::Error>(ReadMarks {
                received_before_sync,
                latest_at,
            })
        })
    }

    async fn audit_log(
        &self,
        family: Option<&str>,
        device: Option<&DeviceId>,
        team: Option<&Team>,
    ) -> Result<Vec<AuditEntry>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT at, device_id, worker, action, doc_id, client, received_at, team FROM (
                     SELECT a.seq, a.at, a.device_id, a.worker, a.action, a.doc_id, a.client,
                            a.received_at, coalesce(a.team, d.team) AS team
                     FROM audit a LEFT JOIN devices d ON d.id = a.device_id
                     WHERE (?1 IS NULL OR a.doc_id = ?1) AND (?2 IS NULL OR a.device_id = ?2))
                 WHERE ?3 IS NULL OR team = ?3
                 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![family, device, team], |r| {
                Ok(AuditEntry {
                    at: r.get(0)?,
                    device_id: r.get(1)?,
                    worker: r.get(2)?,
                    action: AuditAction::parse(&r.get::<_, String>(3)?),
                    document_id: r.get(4)?,
                    client: r.get(5)?,
                    received_at: r.get(6)?,
                    team: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    async fn audit_search(
        &self,
        query: &AuditSearch,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, u64)> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let worker = query.worker_pattern();
        let (from, to_before) = (query.at_from_text(), query.at_before_text());
        self.with(|conn| {
            // One read transaction: the count and the rows agree.
            let tx = conn.transaction()?;
            let args = params![
                query.family,
                query.device,
                query.team,
                worker,
                query.action,
                from,
                to_before
            ];
            let total: i64 = tx
                .prepare_cached(&format!("SELECT count(*) FROM ({SEARCH})"))?
                .query_row(args, |r| r.get(0))?;
            // Newest first is the primary key backwards: no index needed.
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT at, device_id, worker, action, doc_id, client, received_at, team
                 FROM ({SEARCH}) ORDER BY seq DESC LIMIT ?8"
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        query.family,
                        query.device,
                        query.team,
                        worker,
                        query.action,
                        from,
                        to_before,
                        limit
                    ],
                    entry,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            tx.commit()?;
            Ok::<_, rusqlite::Error>((rows, u64::try_from(total).unwrap_or(0)))
        })
    }
}

/// The records `audit_search` matches, with `seq`: ?1 family, ?2 device,
/// ?3 team (the record's own, else its device's), ?4 worker `LIKE` pattern,
/// ?5 action, ?6 from and ?7 before (`at` text).
const SEARCH: &str = "SELECT seq, at, device_id, worker, action, doc_id, client, received_at, team
     FROM (SELECT a.seq, a.at, a.device_id, a.worker, a.action, a.doc_id, a.client,
                  a.received_at, coalesce(a.team, d.team) AS team
           FROM audit a LEFT JOIN devices d ON d.id = a.device_id
           WHERE (?1 IS NULL OR a.doc_id = ?1) AND (?2 IS NULL OR a.device_id = ?2)
             AND (?4 IS NULL OR lower(a.worker) LIKE ?4 ESCAPE '\\')
             AND (?5 IS NULL OR a.action = ?5)
             AND (?6 IS NULL OR a.at >= ?6) AND (?7 IS NULL OR a.at < ?7))
     WHERE ?3 IS NULL OR team = ?3";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        at: r.get(0)?,
        device_id: r.get(1)?,
        worker: r.get(2)?,
        action: AuditAction::parse(&r.get::<_, String>(3)?),
        document_id: r.get(4)?,
        client: r.get(5)?,
        received_at: r.get(6)?,
        team: r.get(7)?,
    })
}

#[async_trait]
impl SyncStateStore for SqliteStorage {
    async fn sync_state(
        &self,
        team: &Team,
        doc_id: DocumentId,
        device_id: &DeviceId,
    ) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT state FROM sync_states WHERE team = ?1 AND doc_id = ?2 AND device_id = ?3",
            )?
            .query_row(params![team, doc_id, device_id], |r| r.get(0))
            .optional()
        })
    }

    async fn save_sync_states(
        &self,
        states: &[(Team, DocumentId, DeviceId, Vec<u8>)],
    ) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO sync_states (team, doc_id, device_id, state) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(team, doc_id, device_id) DO UPDATE SET state = excluded.state",
                )?;
                for (team, doc, device, state) in states {
                    upsert.execute(params![team, doc, device, state])?;
                }
            }
            tx.commit()
        })
    }
}
