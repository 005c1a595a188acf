//! [`ConsoleStore`] on PostgreSQL: accounts and sessions every node of the
//! database shares.
//!
//! Times are RFC 3339 text of UTC times, as in the rest of the schema
//! (001_init.sql), COLLATE "C", so the conditions on them (an unexpired
//! set-up token, stale sessions) compare them as text. What SQLite gets
//! from its single writer this gets from row locks:
//! - consuming a set-up token and accepting a TOTP step are each one
//!   conditional `UPDATE` (a second writer waits on the row, then finds
//!   the condition false);
//! - a new session locks its account's row (`FOR SHARE`), which a disable
//!   or reset (`UPDATE` of the row, then deleting its sessions) waits for,
//!   and the other way round: no session outlives either;
//! - a projection is written under the team's cursor lock, which every
//!   purge and upload of the team takes first (documents.rs): a purge
//!   committed before it is seen, and one after it deletes what it wrote.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use linkbook_core::DocumentId;
use tokio_postgres::Row;

use super::documents::{is_purged, lock_team};
use super::{PostgresStorage, document_id};
use crate::storage::{
    ConsoleStore, DirtyProjection, ProjectionKind, Result, StaffAccount, StaffRole, StaffSession,
    StorageError, Team,
};

const ACCOUNT_COLUMNS: &str = "a.id, a.name, a.role, a.password_hash, a.totp_secret, \
     a.totp_last_step, a.setup_hash, a.setup_expires_at, a.created_at, a.disabled_at";

/// A stored time, read back: text that is not RFC 3339 is damaged data.
fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(|e| StorageError::Corrupt(format!("a stored time: {e}")))
}

fn time(r: &Row, i: usize) -> Result<DateTime<Utc>> {
    parse_time(&r.try_get::<_, String>(i)?)
}

fn optional_time(r: &Row, i: usize) -> Result<Option<DateTime<Utc>>> {
    r.try_get::<_, Option<String>>(i)?
        .as_deref()
        .map(parse_time)
        .transpose()
}

/// An account row ([`ACCOUNT_COLUMNS`] from `offset` on).
fn account_row(r: &Row, offset: usize) -> Result<StaffAccount> {
    let role: String = r.try_get(offset + 2)?;
    let role = StaffRole::parse(&role)
        .ok_or_else(|| StorageError::Corrupt(format!("unknown staff role {role:?}")))?;
    Ok(StaffAccount {
        id: r.try_get(offset)?,
        name: r.try_get(offset + 1)?,
        role,
        password_hash: r.try_get(offset + 3)?,
        totp_secret: r.try_get(offset + 4)?,
        totp_last_step: r.try_get(offset + 5)?,
        setup_hash: r.try_get(offset + 6)?,
        setup_expires_at: optional_time(r, offset + 7)?,
        created_at: time(r, offset + 8)?,
        disabled_at: optional_time(r, offset + 9)?,
    })
}

/// Deletes an account's sessions inside `tx`.
async fn end_sessions_of(tx: &Transaction<'_>, id: &str) -> Result<()> {
    tx.execute(
        &tx.prepare_cached("DELETE FROM staff_sessions WHERE account_id = $1")
            .await?,
        &[&id],
    )
    .await?;
    Ok(())
}

impl PostgresStorage {
    /// The one account matching `condition` (SQL over `a`, `$1`...).
    async fn account_where(
        &self,
        condition: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<StaffAccount>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM staff_accounts a WHERE {condition}"
            ))
            .await?;
        client
            .query_opt(&stmt, params)
            .await?
            .map(|r| account_row(&r, 0))
            .transpose()
    }
}

#[async_trait]
impl ConsoleStore for PostgresStorage {
    async fn add_account(&self, a: &StaffAccount) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO staff_accounts (id, name, role, password_hash, totp_secret,
                     totp_last_step, setup_hash, setup_expires_at, created_at, disabled_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (name) DO NOTHING",
            )
            .await?;
        let added = client
            .execute(
                &stmt,
                &[
                    &a.id,
                    &a.name,
                    &a.role.as_str(),
                    &a.password_hash,
                    &a.totp_secret,
                    &a.totp_last_step,
                    &a.setup_hash,
                    &a.setup_expires_at.map(|t| t.to_rfc3339()),
                    &a.created_at.to_rfc3339(),
                    &a.disabled_at.map(|t| t.to_rfc3339()),
                ],
            )
            .await?;
        if added == 0 {
            return Err(StorageError::Conflict("the account name is taken".into()));
        }
        Ok(())
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<StaffAccount>> {
        self.account_where("a.name = $1", &[&name]).await
    }

    async fn account(&self, id: &str) -> Result<Option<StaffAccount>> {
        self.account_where("a.id = $1", &[&id]).await
    }

    async fn account_by_setup(
        &self,
        setup_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<StaffAccount>> {
        self.account_where(
            "a.setup_hash = $1 AND a.setup_expires_at > $2 AND a.disabled_at IS NULL",
            &[&setup_hash, &now.to_rfc3339()],
        )
        .await
    }

    async fn complete_setup(
        &self,
        id: &str,
        setup_hash: &[u8],
        password_hash: &str,
        totp_secret: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE staff_accounts SET password_hash = $3, totp_secret = $4,
                     totp_last_step = NULL, setup_hash = NULL, setup_expires_at = NULL
                 WHERE id = $1 AND setup_hash = $2 AND setup_expires_at > $5
                     AND disabled_at IS NULL",
            )
            .await?;
        let updated = client
            .execute(
                &stmt,
                &[
                    &id,
                    &setup_hash,
                    &password_hash,
                    &totp_secret,
                    &now.to_rfc3339(),
                ],
            )
            .await?;
        Ok(updated > 0)
    }

    async fn reset_account(
        &self,
        id: &str,
        setup_hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute(
                &tx.prepare_cached(
                    "UPDATE staff_accounts SET password_hash = NULL, totp_secret = NULL,
                         totp_last_step = NULL, setup_hash = $2, setup_expires_at = $3
                     WHERE id = $1",
                )
                .await?,
                &[&id, &setup_hash, &expires_at.to_rfc3339()],
            )
            .await?
            > 0;
        if !updated {
            return Ok(false);
        }
        end_sessions_of(&tx, id).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn disable_account(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Disabled once: a second call keeps the first time.
        let exists = tx
            .execute(
                &tx.prepare_cached(
                    "UPDATE staff_accounts SET disabled_at = coalesce(disabled_at, $2)
                     WHERE id = $1",
                )
                .await?,
                &[&id, &now.to_rfc3339()],
            )
            .await?
            > 0;
        if !exists {
            return Ok(false);
        }
        end_sessions_of(&tx, id).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn accounts(&self) -> Result<Vec<StaffAccount>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM staff_accounts a ORDER BY a.name"
            ))
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| account_row(r, 0))
            .collect()
    }

    async fn accept_totp_step(&self, id: &str, step: i64) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE staff_accounts SET totp_last_step = $2
                 WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
            )
            .await?;
        Ok(client.execute(&stmt, &[&id, &step]).await? > 0)
    }

    async fn create_session(&self, session_hash: &[u8], session: &StaffSession) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The account's row stays share-locked until the commit: a disable
        // or reset waits for this session, then ends it, or comes first and
        // this finds it.
        let usable = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT 1 FROM staff_accounts
                     WHERE id = $1 AND disabled_at IS NULL AND password_hash IS NOT NULL
                     FOR SHARE",
                )
                .await?,
                &[&session.account_id],
            )
            .await?
            .is_some();
        if !usable {
            return Err(StorageError::Conflict(
                "the account is disabled, reset or not set up".into(),
            ));
        }
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO staff_sessions (hash, account_id, csrf, created_at, last_seen_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await?,
            &[
                &session_hash,
                &session.account_id,
                &session.csrf,
                &session.created_at.to_rfc3339(),
                &session.last_seen_at.to_rfc3339(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, session_hash: &[u8]) -> Result<Option<(StaffSession, StaffAccount)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT s.account_id, s.csrf, s.created_at, s.last_seen_at, {ACCOUNT_COLUMNS}
                 FROM staff_sessions s JOIN staff_accounts a ON a.id = s.account_id
                 WHERE s.hash = $1 AND a.disabled_at IS NULL"
            ))
            .await?;
        let Some(r) = client.query_opt(&stmt, &[&session_hash]).await? else {
            return Ok(None);
        };
        let session = StaffSession {
            account_id: r.try_get(0)?,
            csrf: r.try_get(1)?,
            created_at: time(&r, 2)?,
            last_seen_at: time(&r, 3)?,
        };
        Ok(Some((session, account_row(&r, 4)?)))
    }

    async fn touch_session(&self, session_hash: &[u8], now: DateTime<Utc>) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("UPDATE staff_sessions SET last_seen_at = $2 WHERE hash = $1")
            .await?;
        client
            .execute(&stmt, &[&session_hash, &now.to_rfc3339()])
            .await?;
        Ok(())
    }

    async fn end_session(&self, session_hash: &[u8]) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM staff_sessions WHERE hash = $1")
            .await?;
        client.execute(&stmt, &[&session_hash]).await?;
        Ok(())
    }

    async fn end_stale_sessions(
        &self,
        idle_before: DateTime<Utc>,
        created_before: DateTime<Utc>,
    ) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM staff_sessions WHERE last_seen_at < $1 OR created_at < $2")
            .await?;
        Ok(client
            .execute(
                &stmt,
                &[&idle_before.to_rfc3339(), &created_before.to_rfc3339()],
            )
            .await?)
    }

    async fn dirty_projections(&self, limit: usize) -> Result<Vec<DirtyProjection>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT team, id, generation FROM projection_dirty LIMIT $1")
            .await?;
        client
            .query(&stmt, &[&limit])
            .await?
            .iter()
            .map(|r| {
                Ok(DirtyProjection {
                    team: Team::new(r.try_get::<_, String>(0)?),
                    id: document_id(r.try_get(1)?)?,
                    generation: r.try_get(2)?,
                })
            })
            .collect()
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
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // After any purge or upload of the team in flight has committed;
        // a purge after this one deletes what it writes.
        lock_team(&tx, team).await?;
        let text = id.to_string();
        let stored = tx
            .query_opt(
                &tx.prepare_cached("SELECT 1 FROM documents WHERE team = $1 AND id = $2")
                    .await?,
                &[&team.as_str(), &text],
            )
            .await?
            .is_some();
        if is_purged(&tx, team, id).await? || !stored {
            // Nothing is kept of a purged document (nor of one not stored).
            for sql in [
                "DELETE FROM projections WHERE team = $1 AND id = $2",
                "DELETE FROM projection_dirty WHERE team = $1 AND id = $2",
            ] {
                tx.execute(&tx.prepare_cached(sql).await?, &[&team.as_str(), &text])
                    .await?;
            }
            tx.commit().await?;
            return Ok(());
        }
        match kind {
            Some(kind) => {
                tx.execute(
                    &tx.prepare_cached(
                        "INSERT INTO projections (team, id, kind, body, updated_at)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (team, id) DO UPDATE SET kind = excluded.kind,
                             body = excluded.body, updated_at = excluded.updated_at",
                    )
                    .await?,
                    &[
                        &team.as_str(),
                        &text,
                        &kind.as_str(),
                        &body,
                        &now.to_rfc3339(),
                    ],
                )
                .await?;
            }
            None => {
                tx.execute(
                    &tx.prepare_cached("DELETE FROM projections WHERE team = $1 AND id = $2")
                        .await?,
                    &[&team.as_str(), &text],
                )
                .await?;
            }
        }
        // A commit after the one this projection was made from keeps the
        // mark.
        tx.execute(
            &tx.prepare_cached(
                "DELETE FROM projection_dirty WHERE team = $1 AND id = $2 AND generation = $3",
            )
            .await?,
            &[&team.as_str(), &text, &generation],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn projections(
        &self,
        team: &Team,
        kind: ProjectionKind,
    ) -> Result<Vec<(DocumentId, String)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, body FROM projections WHERE team = $1 AND kind = $2 ORDER BY id",
            )
            .await?;
        client
            .query(&stmt, &[&team.as_str(), &kind.as_str()])
            .await?
            .iter()
            .map(|r| Ok((document_id(r.try_get(0)?)?, r.try_get(1)?)))
            .collect()
    }

    async fn projected_teams(&self) -> Result<Vec<Team>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT DISTINCT team FROM projections ORDER BY team")
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| Ok(Team::new(r.try_get::<_, String>(0)?)))
            .collect()
    }
}
