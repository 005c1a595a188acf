//! [`AuditStore`] and [`SyncStateStore`] on PostgreSQL. The audit table is
//! append-only in the database itself (a trigger refuses UPDATE, DELETE
//! and TRUNCATE, migration 001).

use async_trait::async_trait;
use linkbook_core::DocumentId;
use tokio_postgres::IsolationLevel;

use super::{PostgresStorage, insert_audit};
use crate::storage::{
    AuditAction, AuditEntry, AuditRecord, AuditSearch, AuditStore, Device, DeviceId, ReadMarks,
    Result, SyncStateStore, Team,
};

#[async_trait]
impl AuditStore for PostgresStorage {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for r in records {
            insert_audit(&tx, r).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_reads(
        &self,
        device: &Device,
        reads: &[(String, String)],
        received_at: Option<&str>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO audit (at, device_id, worker, action, doc_id, received_at)
                 VALUES ($1, $2, $3, 'read', $4, $5)",
            )
            .await?;
        for (family, at) in reads {
            tx.execute(
                &insert,
                &[
                    at,
                    &device.id.as_str(),
                    &device.worker,
                    family,
                    &received_at,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reads_received_since(&self, device_id: &DeviceId, since: &str) -> Result<i64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT count(*) FROM audit
                 WHERE device_id = $1 AND action = 'read' AND received_at >= $2",
            )
            .await?;
        Ok(client
            .query_one(&stmt, &[&device_id.as_str(), &since])
            .await?
            .try_get(0)?)
    }

    async fn read_marks(
        &self,
        device_id: &DeviceId,
        received_before: Option<&str>,
    ) -> Result<ReadMarks> {
        let client = self.client().await?;
        // Both served by audit_reads_by_device (device_id, received_at).
        let received_before_sync = match received_before {
            Some(t) => {
                let stmt = client
                    .prepare_cached(
                        "SELECT max(received_at) FROM audit
                         WHERE device_id = $1 AND action = 'read' AND received_at < $2",
                    )
                    .await?;
                client
                    .query_one(&stmt, &[&device_id.as_str(), &t])
                    .await?
                    .try_get(0)?
            }
            None => None,
        };
        let stmt = client
            .prepare_cached(
                "SELECT at FROM audit
                 WHERE device_id = $1 AND action = 'read' AND received_at IS NOT NULL
                 ORDER BY received_at DESC, seq DESC LIMIT 1",
            )
            .await?;
        let latest_at = match client.query_opt(&stmt, &[&device_id.as_str()]).await? {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        };
        Ok(ReadMarks {
            received_before_sync,
            latest_at,
        })
    }

    async fn audit_log(
        &self,
        family: Option<&str>,
        device: Option<&DeviceId>,
        team: Option<&Team>,
    ) -> Result<Vec<AuditEntry>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT at, device_id, worker, action, doc_id, client, received_at, team FROM (
                     SELECT a.seq, a.at, a.device_id, a.worker, a.action, a.doc_id, a.client,
                            a.received_at, coalesce(a.team, d.team) AS team
                     FROM audit a LEFT JOIN devices d ON d.id = a.device_id
                     WHERE ($1::text IS NULL OR a.doc_id = $1)
                       AND ($2::text IS NULL OR a.device_id = $2)) records
                 WHERE $3::text IS NULL OR team = $3
                 ORDER BY seq",
            )
            .await?;
        client
            .query(
                &stmt,
                &[
                    &family,
                    &device.map(DeviceId::as_str),
                    &team.map(Team::as_str),
                ],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get(0)?,
                    device_id: r.try_get(1)?,
                    worker: r.try_get(2)?,
                    action: AuditAction::parse(r.try_get(3)?),
                    document_id: r.try_get(4)?,
                    client: r.try_get(5)?,
                    received_at: r.try_get(6)?,
                    team: r.try_get(7)?,
                })
            })
            .collect()
    }

    async fn audit_search(
        &self,
        query: &AuditSearch,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, u64)> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let worker = query.worker_pattern();
        let (from, to_before) = (query.at_from_text(), query.at_before_text());
        let mut client = self.client().await?;
        // One snapshot for both: the count and the rows agree while other
        // nodes append.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &query.family,
            &query.device.as_deref(),
            &query.team.as_deref(),
            &worker,
            &query.action,
            &from,
            &to_before,
        ];
        let total: i64 = tx
            .query_one(
                &tx.prepare_cached(&format!("SELECT count(*) FROM ({SEARCH}) found"))
                    .await?,
                &args,
            )
            .await?
            .try_get(0)?;
        let mut with_limit = args.to_vec();
        with_limit.push(&limit);
        // Newest first is the primary key backwards: no index needed.
        let rows = tx
            .query(
                &tx.prepare_cached(&format!(
                    "SELECT at, device_id, worker, action, doc_id, client, received_at, team
                     FROM ({SEARCH}) found ORDER BY seq DESC LIMIT $8"
                ))
                .await?,
                &with_limit,
            )
            .await?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get(0)?,
                    device_id: r.try_get(1)?,
                    worker: r.try_get(2)?,
                    action: AuditAction::parse(r.try_get(3)?),
                    document_id: r.try_get(4)?,
                    client: r.try_get(5)?,
                    received_at: r.try_get(6)?,
                    team: r.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }
}

/// The records `audit_search` matches, with `seq`: $1 family, $2 device,
/// $3 team (the record's own, else its device's), $4 worker `LIKE` pattern
/// (`lower` folds ASCII under the audit's `C` collation), $5 action, $6
/// from and $7 before. `at` is `text COLLATE "C"` (RFC 3339 in UTC), so it
/// compares bytewise, in time order, with the bounds' text.
const SEARCH: &str = "SELECT seq, at, device_id, worker, action, doc_id, client, received_at, team
     FROM (SELECT a.seq, a.at, a.device_id, a.worker, a.action, a.doc_id, a.client,
                  a.received_at, coalesce(a.team, d.team) AS team
           FROM audit a LEFT JOIN devices d ON d.id = a.device_id
           WHERE ($1::text IS NULL OR a.doc_id = $1)
             AND ($2::text IS NULL OR a.device_id = $2)
             AND ($4::text IS NULL OR lower(a.worker) LIKE $4 ESCAPE '\\')
             AND ($5::text IS NULL OR a.action = $5)
             AND ($6::text IS NULL OR a.at >= $6)
             AND ($7::text IS NULL OR a.at < $7)) records
     WHERE $3::text IS NULL OR team = $3";

#[async_trait]
impl SyncStateStore for PostgresStorage {
    async fn sync_state(
        &self,
        team: &Team,
        doc_id: DocumentId,
        device_id: &DeviceId,
    ) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT state FROM sync_states WHERE team = $1 AND doc_id = $2 AND device_id = $3",
            )
            .await?;
        match client
            .query_opt(
                &stmt,
                &[&team.as_str(), &doc_id.to_string(), &device_id.as_str()],
            )
            .await?
        {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Ok(None),
        }
    }

    async fn save_sync_states(
        &self,
        states: &[(Team, DocumentId, DeviceId, Vec<u8>)],
    ) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        // In key order, so two nodes saving overlapping batches lock the
        // rows in the same order (no deadlock); a stable sort, so a key
        // given twice still ends with its last state.
        let mut states: Vec<_> = states
            .iter()
            .map(|(team, doc, device, state)| {
                (team.as_str(), doc.to_string(), device.as_str(), state)
            })
            .collect();
        states.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let upsert = tx
            .prepare_cached(
                "INSERT INTO sync_states (team, doc_id, device_id, state) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (team, doc_id, device_id) DO UPDATE SET state = excluded.state",
            )
            .await?;
        for (team, doc, device, state) in &states {
            tx.execute(&upsert, &[team, doc, device, state]).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
