//! [`ConsoleStore`] on SQLite.
//!
//! Times are stored as the rest of the schema stores them, RFC 3339 text
//! of UTC times (`to_rfc3339`, always `+00:00`), so the conditions on them
//! (an unexpired set-up token, stale sessions) compare them as text.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use linkbook_core::DocumentId;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStorage;
use crate::storage::{
    ConsoleStore, DirtyProjection, ProjectionKind, Result, StaffAccount, StaffRole, StaffSession,
    StorageError, Team,
};

const ACCOUNT_COLUMNS: &str = "a.id, a.name, a.role, a.password_hash, a.totp_secret, \
     a.totp_last_step, a.setup_hash, a.setup_expires_at, a.created_at, a.disabled_at";

/// A stored time, read back: text that is not RFC 3339 is damaged data.
fn time(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = r.get(i)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.to_utc())
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        })
}

fn optional_time(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let text: Option<String> = r.get(i)?;
    text.map(|text| {
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.to_utc())
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            })
    })
    .transpose()
}

/// An account row ([`ACCOUNT_COLUMNS`] from `offset` on).
fn account_row(r: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<StaffAccount> {
    let role: String = r.get(offset + 2)?;
    let role = StaffRole::parse(&role).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            offset + 2,
            rusqlite::types::Type::Text,
            format!("unknown staff role {role:?}").into(),
        )
    })?;
    Ok(StaffAccount {
        id: r.get(offset)?,
        name: r.get(offset + 1)?,
        role,
        password_hash: r.get(offset + 3)?,
        totp_secret: r.get(offset + 4)?,
        totp_last_step: r.get(offset + 5)?,
        setup_hash: r.get(offset + 6)?,
        setup_expires_at: optional_time(r, offset + 7)?,
        created_at: time(r, offset + 8)?,
        disabled_at: optional_time(r, offset + 9)?,
    })
}

/// Deletes an account's sessions inside `tx`.
fn end_sessions_of(tx: &Connection, id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM staff_sessions WHERE account_id = ?1")?
        .execute([id])?;
    Ok(())
}

#[async_trait]
impl ConsoleStore for SqliteStorage {
    async fn add_account(&self, a: &StaffAccount) -> Result<()> {
        self.with(|conn| -> Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let taken = tx
                .prepare_cached("SELECT 1 FROM staff_accounts WHERE name = ?1")?
                .query_row([&a.name], |_| Ok(()))
                .optional()?
                .is_some();
            if taken {
                return Err(StorageError::Conflict("the account name is taken".into()));
            }
            tx.prepare_cached(
                "INSERT INTO staff_accounts (id, name, role, password_hash, totp_secret,
                     totp_last_step, setup_hash, setup_expires_at, created_at, disabled_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                a.id,
                a.name,
                a.role.as_str(),
                a.password_hash,
                a.totp_secret,
                a.totp_last_step,
                a.setup_hash,
                a.setup_expires_at.map(|t| t.to_rfc3339()),
                a.created_at.to_rfc3339(),
                a.disabled_at.map(|t| t.to_rfc3339()),
            ])?;
            tx.commit()?;
            Ok(())
        })
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<StaffAccount>> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM staff_accounts a WHERE a.name = ?1"
            ))?
            .query_row([name], |r| account_row(r, 0))
            .optional()
        })
    }

    async fn account(&self, id: &str) -> Result<Option<StaffAccount>> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM staff_accounts a WHERE a.id = ?1"
            ))?
            .query_row([id], |r| account_row(r, 0))
            .optional()
        })
    }

    async fn account_by_setup(
        &self,
        setup_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<StaffAccount>> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM staff_accounts a
                 WHERE a.setup_hash = ?1 AND a.setup_expires_at > ?2 AND a.disabled_at IS NULL"
            ))?
            .query_row(params![setup_hash, now.to_rfc3339()], |r| account_row(r, 0))
            .optional()
        })
    }

    async fn complete_setup(
        &self,
        id: &str,
        setup_hash: &[u8],
        password_hash: &str,
        totp_secret: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // One conditional statement: of two uses of the token, one finds
        // it and the other finds it gone.
        let updated = self.with(|c| {
            c.prepare_cached(
                "UPDATE staff_accounts SET password_hash = ?3, totp_secret = ?4,
                     totp_last_step = NULL, setup_hash = NULL, setup_expires_at = NULL
                 WHERE id = ?1 AND setup_hash = ?2 AND setup_expires_at > ?5
                     AND disabled_at IS NULL",
            )?
            .execute(params![
                id,
                setup_hash,
                password_hash,
                totp_secret,
                now.to_rfc3339()
            ])
        })?;
        Ok(updated > 0)
    }

    async fn reset_account(
        &self,
        id: &str,
        setup_hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let updated = tx
                .prepare_cached(
                    "UPDATE staff_accounts SET password_hash = NULL, totp_secret = NULL,
                         totp_last_step = NULL, setup_hash = ?2, setup_expires_at = ?3
                     WHERE id = ?1",
                )?
                .execute(params![id, setup_hash, expires_at.to_rfc3339()])?
                > 0;
            if !updated {
                return Ok(false);
            }
            end_sessions_of(&tx, id)?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(true)
        })
    }

    async fn disable_account(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Disabled once: a second call keeps the first time.
            let exists = tx
                .prepare_cached(
                    "UPDATE staff_accounts SET disabled_at = coalesce(disabled_at, ?2)
                     WHERE id = ?1",
                )?
                .execute(params![id, now.to_rfc3339()])?
                > 0;
            if !exists {
                return Ok(false);
            }
            end_sessions_of(&tx, id)?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(true)
        })
    }

    async fn accounts(&self) -> Result<Vec<StaffAccount>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM staff_accounts a ORDER BY a.name"
            ))?;
            let rows = stmt.query_map([], |r| account_row(r, 0))?;
            rows.collect()
        })
    }

    async fn accept_totp_step(&self, id: &str, step: i64) -> Result<bool> {
        // One conditional statement: a code raced from two sign-ins is
        // accepted once.
        let updated = self.with(|c| {
            c.prepare_cached(
                "UPDATE staff_accounts SET totp_last_step = ?2
                 WHERE id = ?1 AND (totp_last_step IS NULL OR totp_last_step < ?2)",
            )?
            .execute(params![id, step])
        })?;
        Ok(updated > 0)
    }

    async fn create_session(&self, session_hash: &[u8], session: &StaffSession) -> Result<()> {
        // One statement: the account is checked as the row is written, so
        // a disable or reset is wholly before it (no session) or after it
        // (the session ended with the others).
        let created = self.with(|c| {
            c.prepare_cached(
                "INSERT INTO staff_sessions (hash, account_id, csrf, created_at, last_seen_at)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (
                     SELECT 1 FROM staff_accounts WHERE id = ?2
                         AND disabled_at IS NULL AND password_hash IS NOT NULL)",
            )?
            .execute(params![
                session_hash,
                session.account_id,
                session.csrf,
                session.created_at.to_rfc3339(),
                session.last_seen_at.to_rfc3339(),
            ])
        })?;
        if created == 0 {
            return Err(StorageError::Conflict(
                "the account is disabled, reset or not set up".into(),
            ));
        }
        Ok(())
    }

    async fn session(&self, session_hash: &[u8]) -> Result<Option<(StaffSession, StaffAccount)>> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT s.account_id, s.csrf, s.created_at, s.last_seen_at, {ACCOUNT_COLUMNS}
                 FROM staff_sessions s JOIN staff_accounts a ON a.id = s.account_id
                 WHERE s.hash = ?1 AND a.disabled_at IS NULL"
            ))?
            .query_row([session_hash], |r| {
                Ok((
                    StaffSession {
                        account_id: r.get(0)?,
                        csrf: r.get(1)?,
                        created_at: time(r, 2)?,
                        last_seen_at: time(r, 3)?,
                    },
                    account_row(r, 4)?,
                ))
            })
            .optional()
        })
    }

    async fn touch_session(&self, session_hash: &[u8], now: DateTime<Utc>) -> Result<()> {
        self.with(|c| {
            c.prepare_cached("UPDATE staff_sessions SET last_seen_at = ?2 WHERE hash = ?1")?
                .execute(params![session_hash, now.to_rfc3339()])
        })?;
        Ok(())
    }

    async fn end_session(&self, session_hash: &[u8]) -> Result<()> {
        self.with(|c| {
            c.prepare_cached("DELETE FROM staff_sessions WHERE hash = ?1")?
                .execute([session_hash])
        })?;
        Ok(())
    }

    async fn end_stale_sessions(
        &self,
        idle_before: DateTime<Utc>,
        created_before: DateTime<Utc>,
    ) -> Result<u64> {
        let ended = self.with(|c| {
            c.prepare_cached(
                "DELETE FROM staff_sessions WHERE last_seen_at < ?1 OR created_at < ?2",
            )?
            .execute(params![
                idle_before.to_rfc3339(),
                created_before.to_rfc3339()
            ])
        })?;
        Ok(u64::try_from(ended).unwrap_or(u64::MAX))
    }

    async fn dirty_projections(&self, limit: usize) -> Result<Vec<DirtyProjection>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT team, id, generation FROM projection_dirty LIMIT ?1")?;
            let rows = stmt.query_map([limit], |r| {
                Ok(DirtyProjection {
                    team: r.get(0)?,
                    id: r.get(1)?,
                    generation: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    async fn put_projection(
        &self,
        team: &Team,
        id: DocumentId,
        generation: i64,
        kind: Option<ProjectionKind>,
        body: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.with(|conn| {
            // Immediate: a purge (another process) cannot come between the
            // check and the write.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let purged = tx
                .prepare_cached("SELECT 1 FROM purged WHERE team = ?1 AND doc_id = ?2")?
                .query_row(params![team, id], |_| Ok(()))
                .optional()?
                .is_some();
            let stored = tx
                .prepare_cached("SELECT 1 FROM documents WHERE team = ?1 AND id = ?2")?
                .query_row(params![team, id], |_| Ok(()))
                .optional()?
                .is_some();
            if purged || !stored {
                // Nothing is kept of a purged document (nor of one not stored).
                tx.prepare_cached("DELETE FROM projections WHERE team = ?1 AND id = ?2")?
                    .execute(params![team, id])?;
                tx.prepare_cached("DELETE FROM projection_dirty WHERE team = ?1 AND id = ?2")?
                    .execute(params![team, id])?;
                return tx.commit();
            }
            match kind {
                Some(kind) => {
                    tx.prepare_cached(
                        "INSERT INTO projections (team, id, kind, body, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(team, id) DO UPDATE SET kind = excluded.kind,
                             body = excluded.body, updated_at = excluded.updated_at",
                    )?
                    .execute(params![
                        team,
                        id,
                        kind.as_str(),
                        body,
                        now.to_rfc3339()
                    ])?;
                }
                None => {
                    tx.prepare_cached("DELETE FROM projections WHERE team = ?1 AND id = ?2")?
                        .execute(params![team, id])?;
                }
            }
            // A commit after the one this projection was made from keeps
            // the mark.
            tx.prepare_cached(
                "DELETE FROM projection_dirty WHERE team = ?1 AND id = ?2 AND generation = ?3",
            )?
            .execute(params![team, id, generation])?;
            tx.commit()
        })
    }

    async fn projections(
        &self,
        team: &Team,
        kind: ProjectionKind,
    ) -> Result<Vec<(DocumentId, String)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, body FROM projections WHERE team = ?1 AND kind = ?2 ORDER BY id",
            )?;
            let rows =
                stmt.query_map(params![team, kind.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    async fn projected_teams(&self) -> Result<Vec<Team>> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT DISTINCT team FROM projections ORDER BY team")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }
}
