//! [`DeviceStore`] on SQLite.

use crate::storage::{DeviceId, Team};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{DEVICE_COLUMNS, SqliteStorage, device_row, insert_audit};
use crate::storage::{
    AuditAction, AuditRecord, CodeGrant, Device, DeviceStore, Result, RevocationCursor,
    StorageError, TeamPolicy,
};

#[async_trait]
impl DeviceStore for SqliteStorage {
    async fn add_enrolment_code(
        &self,
        code_hash: &[u8],
        grant: &CodeGrant,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO enrolment_codes (code_hash, team, worker, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![code_hash, grant.team, grant.worker, now.to_rfc3339(), grant.expires_at.to_rfc3339()],
            )
        })?;
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
        self.with(|conn| -> Result<Device> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let row: Option<(String, String, String, Option<String>)> = tx
                .query_row(
                    "SELECT team, worker, expires_at, used_at FROM enrolment_codes WHERE code_hash = ?1",
                    [code_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((team, worker, expires_at, used_at)) = row else {
                return Err(StorageError::EnrolmentRefused("unknown enrolment code"));
            };
            if used_at.is_some() {
                return Err(StorageError::EnrolmentRefused("enrolment code already used"));
            }
            let expired = DateTime::parse_from_rfc3339(&expires_at)
                .map(|e| e <= now)
                .unwrap_or(true);
            if expired {
                return Err(StorageError::EnrolmentRefused("enrolment code expired"));
            }
            tx.execute(
                "UPDATE enrolment_codes SET used_at = ?2, device_id = ?3 WHERE code_hash = ?1",
                params![code_hash, now.to_rfc3339(), device_id],
            )?;
            tx.execute(
                "INSERT INTO devices (id, team, worker, device_name, token_hash, enrolled_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![device_id, team, worker, device_name, token_hash, now.to_rfc3339()],
            )?;
            insert_audit(
                &tx,
                &AuditRecord::new(AuditAction::Enrolled, now)
                    .device(device_id)
                    .worker(&worker),
            )?;
            let device = tx.query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
                [device_id],
                device_row,
            )?;
            tx.commit()?;
            Ok(device)
        })
    }

    async fn device_by_token(&self, token_hash: &[u8]) -> Result<Option<Device>> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = ?1"
            ))?
            .query_row([token_hash], device_row)
            .optional()
        })
    }

    async fn devices(&self) -> Result<Vec<Device>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY team, worker, enrolled_at"
            ))?;
            let rows = stmt.query_map([], device_row)?;
            rows.collect()
        })
    }

    async fn revoke_device(
        &self,
        device_id: &DeviceId,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let exists = tx
                .query_row("SELECT 1 FROM devices WHERE id = ?1", [device_id], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            let revoked_now = tx.execute(
                "UPDATE devices SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![device_id, now.to_rfc3339()],
            )? > 0;
            if revoked_now {
                let mut record = AuditRecord::new(AuditAction::Revoked, now).device(device_id);
                record.worker = by.map(str::to_string);
                insert_audit(&tx, &record)?;
            }
            tx.commit()?;
            Ok::<_, rusqlite::Error>(exists)
        })
    }

    async fn touch_device(
        &self,
        device_id: &DeviceId,
        now: DateTime<Utc>,
        address_kind: &str,
    ) -> Result<()> {
        self.with(|c| {
            c.prepare_cached(
                "UPDATE devices SET last_sync_at = ?2, last_address_kind = ?3 WHERE id = ?1",
            )?
            .execute(params![device_id, now.to_rfc3339(), address_kind])
        })?;
        Ok(())
    }

    async fn revocations_since(
        &self,
        cursor: &mut RevocationCursor,
        limit: usize,
    ) -> Result<Vec<DeviceId>> {
        self.with(|conn| {
            let others: i64 = conn.pragma_query_value(None, "data_version", |r| r.get(0))?;
            let written = (others, conn.total_changes());
            let Some(after) = cursor.seq else {
                cursor.seq = Some(conn.query_row(
                    "SELECT coalesce(max(seq), 0) FROM revocations",
                    [],
                    |r| r.get(0),
                )?);
                cursor.written = Some(written);
                return Ok(Vec::new());
            };
            if cursor.written == Some(written) {
                return Ok(Vec::new());
            }
            let mut stmt = conn.prepare_cached(
                "SELECT seq, device_id FROM revocations WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows: Vec<(i64, DeviceId)> = stmt
                .query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            if let Some((seq, _)) = rows.last() {
                cursor.seq = Some(*seq);
            }
            // A full batch may have more behind it: look again next time
            // even if nothing else is written.
            if i64::try_from(rows.len()).unwrap_or(i64::MAX) < limit {
                cursor.written = Some(written);
            }
            Ok::<_, rusqlite::Error>(rows.into_iter().map(|(_, id)| id).collect())
        })
    }

    async fn team_directory_id(&self, team: &Team, now: DateTime<Utc>) -> Result<String> {
        self.with(|c| directory_id(c, team, now))
    }

    async fn set_team_policy(
        &self,
        team: &Team,
        policy: TeamPolicy,
        audit: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            directory_id(&tx, team, now)?;
            tx.execute(
                "UPDATE teams SET retention_days = ?2, lease_days = ?3 WHERE name = ?1",
                params![team, policy.retention_days, policy.lease_days],
            )?;
            for record in audit {
                insert_audit(&tx, record)?;
            }
            tx.commit()
        })
    }

    async fn team_policy(&self, team: &Team) -> Result<TeamPolicy> {
        self.with(|c| {
            c.prepare_cached("SELECT retention_days, lease_days FROM teams WHERE name = ?1")?
                .query_row([team], |r| {
                    Ok(TeamPolicy {
                        retention_days: r.get(0)?,
                        lease_days: r.get(1)?,
                    })
                })
                .optional()
                .map(Option::unwrap_or_default)
        })
    }

    async fn retention_policies(&self) -> Result<Vec<(Team, i64)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, retention_days FROM teams WHERE retention_days IS NOT NULL ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    async fn store_id(&self, proposed: &str) -> Result<String> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO relay_meta (key, value) VALUES ('store_id', ?1)",
                [proposed],
            )?;
            c.query_row(
                "SELECT value FROM relay_meta WHERE key = 'store_id'",
                [],
                |r| r.get(0),
            )
        })
    }

    async fn claim_job(&self, job: &str, period: &str) -> Result<bool> {
        self.with(|c| {
            let claimed = c
                .prepare_cached(
                    "INSERT INTO relay_meta (key, value) VALUES ('job:' || ?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value
                     WHERE relay_meta.value < excluded.value",
                )?
                .execute([job, period])?;
            Ok::<_, rusqlite::Error>(claimed == 1)
        })
    }
    async fn renew_store_id(&self, new_id: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(
                "DELETE FROM sync_states; DELETE FROM relay_meta WHERE key = 'last_backup_at';",
            )?;
            tx.execute(
                "INSERT INTO relay_meta (key, value) VALUES ('store_id', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [new_id],
            )?;
            tx.commit()
        })
    }

    async fn record_backup(&self, at: DateTime<Utc>) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO relay_meta (key, value) VALUES ('last_backup_at', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [at.to_rfc3339()],
            )
            .map(drop)
        })
    }

    async fn last_backup(&self) -> Result<Option<DateTime<Utc>>> {
        let text: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT value FROM relay_meta WHERE key = 'last_backup_at'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok().map(|t| t.to_utc())))
    }
}

/// The team's directory id, made at random if the team is new.
fn directory_id(
    c: &rusqlite::Connection,
    team: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<String> {
    let fresh = linkbook_core::DocumentId::random().to_string();
    c.prepare_cached(
        "INSERT INTO teams (name, directory_id, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
    )?
    .execute(params![team, fresh, now.to_rfc3339()])?;
    c.prepare_cached("SELECT directory_id FROM teams WHERE name = ?1")?
        .query_row([team], |r| r.get(0))
}
