//! [`DeviceStore`] on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use super::{DEVICE_COLUMNS, PostgresStorage, device_row, insert_audit};
use crate::storage::{
    AuditAction, AuditRecord, CodeGrant, Device, DeviceId, DeviceStore, Result, RevocationCursor,
    StorageError, Team, TeamPolicy,
};

#[async_trait]
impl DeviceStore for PostgresStorage {
    async fn add_enrolment_code(
        &self,
        code_hash: &[u8],
        grant: &CodeGrant,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO enrolment_codes (code_hash, team, worker, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &code_hash,
                    &grant.team.as_str(),
                    &grant.worker,
                    &now.to_rfc3339(),
                    &grant.expires_at.to_rfc3339(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn redeem_enrolment_code(
        &self,
        code_hash: &[u8],
        device_id: &DeviceId,
        device_name: &str,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Device> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Locked until the commit: a second redemption of the code waits,
        // then finds it used.
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT team, worker, expires_at, used_at FROM enrolment_codes
                     WHERE code_hash = $1 FOR UPDATE",
                )
                .await?,
                &[&code_hash],
            )
            .await?;
        let Some(row) = row else {
            return Err(StorageError::EnrolmentRefused("unknown enrolment code"));
        };
        let team: String = row.try_get(0)?;
        let worker: String = row.try_get(1)?;
        let expires_at: String = row.try_get(2)?;
        let used_at: Option<String> = row.try_get(3)?;
        if used_at.is_some() {
            return Err(StorageError::EnrolmentRefused(
                "enrolment code already used",
            ));
        }
        let expired = DateTime::parse_from_rfc3339(&expires_at)
            .map(|e| e <= now)
            .unwrap_or(true);
        if expired {
            return Err(StorageError::EnrolmentRefused("enrolment code expired"));
        }
        tx.execute(
            &tx.prepare_cached(
                "UPDATE enrolment_codes SET used_at = $2, device_id = $3 WHERE code_hash = $1",
            )
            .await?,
            &[&code_hash, &now.to_rfc3339(), &device_id.as_str()],
        )
        .await?;
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO devices (id, team, worker, device_name, token_hash, enrolled_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?,
            &[
                &device_id.as_str(),
                &team,
                &worker,
                &device_name,
                &token_hash,
                &now.to_rfc3339(),
            ],
        )
        .await?;
        insert_audit(
            &tx,
            &AuditRecord::new(AuditAction::Enrolled, now)
                .device(device_id)
                .worker(&worker),
        )
        .await?;
        let device = device_row(
            &tx.query_one(
                &tx.prepare_cached(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
                ))
                .await?,
                &[&device_id.as_str()],
            )
            .await?,
        )?;
        tx.commit().await?;
        Ok(device)
    }

    async fn device_by_token(&self, token_hash: &[u8]) -> Result<Option<Device>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = $1"
            ))
            .await?;
        match client.query_opt(&stmt, &[&token_hash]).await? {
            Some(row) => Ok(Some(device_row(&row)?)),
            None => Ok(None),
        }
    }

    async fn devices(&self) -> Result<Vec<Device>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY team, worker, enrolled_at"
            ))
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| Ok(device_row(r)?))
            .collect()
    }

    async fn revoke_device(
        &self,
        device_id: &DeviceId,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt(
                &tx.prepare_cached("SELECT 1 FROM devices WHERE id = $1")
                    .await?,
                &[&device_id.as_str()],
            )
            .await?
            .is_some();
        // Row-locked: of two concurrent revocations one updates (and the
        // trigger logs it in `revocations`), the other finds it revoked.
        let revoked_now = tx
            .execute(
                &tx.prepare_cached(
                    "UPDATE devices SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .await?,
                &[&device_id.as_str(), &now.to_rfc3339()],
            )
            .await?
            > 0;
        if revoked_now {
            let mut record = AuditRecord::new(AuditAction::Revoked, now).device(device_id);
            record.worker = by.map(str::to_string);
            insert_audit(&tx, &record).await?;
        }
        tx.commit().await?;
        Ok(exists)
    }

    async fn touch_device(
        &self,
        device_id: &DeviceId,
        now: DateTime<Utc>,
        address_kind: &str,
    ) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE devices SET last_sync_at = $2, last_address_kind = $3 WHERE id = $1",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[&device_id.as_str(), &now.to_rfc3339(), &address_kind],
            )
            .await?;
        Ok(())
    }

    async fn revocations_since(
        &self,
        cursor: &mut RevocationCursor,
        limit: usize,
    ) -> Result<Vec<DeviceId>> {
        // No "nothing written" marker here: the query is a range scan of
        // the primary key past the cursor, empty when nothing is new.
        let client = self.client().await?;
        let Some(after) = cursor.seq else {
            let stmt = client
                .prepare_cached("SELECT coalesce(max(seq), 0) FROM revocations")
                .await?;
            cursor.seq = Some(client.query_one(&stmt, &[]).await?.try_get(0)?);
            return Ok(Vec::new());
        };
        let stmt = client
            .prepare_cached(
                "SELECT seq, device_id FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&stmt, &[&after, &limit]).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            cursor.seq = Some(row.try_get(0)?);
            ids.push(DeviceId::new(row.try_get::<_, String>(1)?));
        }
        Ok(ids)
    }

    async fn team_directory_id(&self, team: &Team, now: DateTime<Utc>) -> Result<String> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = directory_id(&tx, team, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn set_team_policy(
        &self,
        team: &Team,
        policy: TeamPolicy,
        audit: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        directory_id(&tx, team, now).await?;
        tx.execute(
            &tx.prepare_cached(
                "UPDATE teams SET retention_days = $2, lease_days = $3 WHERE name = $1",
            )
            .await?,
            &[&team.as_str(), &policy.retention_days, &policy.lease_days],
        )
        .await?;
        for record in audit {
            insert_audit(&tx, record).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn team_policy(&self, team: &Team) -> Result<TeamPolicy> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT retention_days, lease_days FROM teams WHERE name = $1")
            .await?;
        match client.query_opt(&stmt, &[&team.as_str()]).await? {
            Some(row) => Ok(TeamPolicy {
                retention_days: row.try_get(0)?,
                lease_days: row.try_get(1)?,
            }),
            None => Ok(TeamPolicy::default()),
        }
    }

    async fn retention_policies(&self) -> Result<Vec<(Team, i64)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT name, retention_days FROM teams WHERE retention_days IS NOT NULL ORDER BY name",
            )
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| Ok((Team::new(r.try_get::<_, String>(0)?), r.try_get(1)?)))
            .collect()
    }

    async fn store_id(&self, proposed: &str) -> Result<String> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO relay_meta (key, value) VALUES ('store_id', $1)
                 ON CONFLICT (key) DO NOTHING",
            )
            .await?,
            &[&proposed],
        )
        .await?;
        let id = tx
            .query_one(
                &tx.prepare_cached("SELECT value FROM relay_meta WHERE key = 'store_id'")
                    .await?,
                &[],
            )
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(id)
    }

    async fn claim_job(&self, job: &str, period: &str) -> Result<bool> {
        let client = self.client().await?;
        // Two nodes at once: the second's insert waits for the first's
        // commit, then finds the period claimed and updates nothing.
        let stmt = client
            .prepare_cached(
                "INSERT INTO relay_meta (key, value) VALUES ('job:' || $1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value
                 WHERE relay_meta.value < excluded.value",
            )
            .await?;
        Ok(client.execute(&stmt, &[&job, &period]).await? == 1)
    }

    async fn renew_store_id(&self, new_id: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for sql in [
            "DELETE FROM sync_states",
            "DELETE FROM relay_meta WHERE key = 'last_backup_at'",
        ] {
            tx.execute(&tx.prepare_cached(sql).await?, &[]).await?;
        }
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO relay_meta (key, value) VALUES ('store_id', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .await?,
            &[&new_id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_backup(&self, at: DateTime<Utc>) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO relay_meta (key, value) VALUES ('last_backup_at', $1)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )
                    .await?,
                &[&at.to_rfc3339()],
            )
            .await?;
        Ok(())
    }

    async fn last_backup(&self) -> Result<Option<DateTime<Utc>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT value FROM relay_meta WHERE key = 'last_backup_at'")
                    .await?,
                &[],
            )
            .await?;
        let text: Option<String> = row.map(|r| r.try_get(0)).transpose()?;
        Ok(text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok().map(|t| t.to_utc())))
    }
}

/// The team's directory id, made at random if the team is new. Two nodes
/// making the same team at once: the second's insert waits for the first's
/// commit and does nothing; both read the first's id.
async fn directory_id(tx: &Transaction<'_>, team: &Team, now: DateTime<Utc>) -> Result<String> {
    let fresh = linkbook_core::DocumentId::random().to_string();
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO teams (name, directory_id, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .await?,
        &[&team.as_str(), &fresh, &now.to_rfc3339()],
    )
    .await?;
    Ok(tx
        .query_one(
            &tx.prepare_cached("SELECT directory_id FROM teams WHERE name = $1")
                .await?,
            &[&team.as_str()],
        )
        .await?
        .try_get(0)?)
}
