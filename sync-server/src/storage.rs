//! The relay's storage: devices, enrolment codes, documents (snapshot +
//! appended changes), sync states and the audit log. Behind the [`Storage`]
//! trait so another backend (PostgreSQL, to share one database between relay
//! nodes) can stand in; SQLite is the embedded default.
//!
//! Every write is one transaction; a change is acknowledged to a device only
//! after [`Storage::append_changes`] returned.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::error::{Error, Result};

/// Changes appended before the relay compacts a document into a snapshot.
pub const COMPACT_AFTER: i64 = 256;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/001_init.sql"),
    include_str!("../migrations/002_change_cursor.sql"),
    include_str!("../migrations/003_teams.sql"),
    include_str!("../migrations/004_last_device.sql"),
    include_str!("../migrations/005_purged.sql"),
    include_str!("../migrations/006_team_policy.sql"),
    include_str!("../migrations/007_audit_receipt.sql"),
    include_str!("../migrations/008_team_namespace.sql"),
    include_str!("../migrations/009_refused_documents.sql"),
    include_str!("../migrations/010_store_id.sql"),
    include_str!("../migrations/011_revocations.sql"),
];

/// A team's data-protection policy; `None` is no limit. The same type is
/// sent to devices in `/v1/changes` and `changed-since`.
pub use linkbook_core::protocol::dto::Policy as TeamPolicy;

/// One audit record: who did what to which document, when (never content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: String,
    pub device_id: Option<String>,
    pub worker: Option<String>,
    /// enrolled, connected, uploaded, received, read, purged, revoked
    pub action: String,
    pub document_id: Option<String>,
    /// A refused client's address (auth-refused, auth-lockout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// When the relay received an uploaded read (`at` is the device's
    /// claim, clamped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// The team the record is about: the one stated with it, else its
    /// device's (`None`: neither, e.g. older administrator records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// A document the office purged, as devices are told of it (no content).
pub use linkbook_core::protocol::dto::Purged;

/// An enrolled device as the administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: String,
    pub team: String,
    pub worker: String,
    pub device_name: String,
    pub enrolled_at: String,
    pub revoked_at: Option<String>,
    pub last_sync_at: Option<String>,
}

/// A device's earlier read uploads: the latest receipt before a time
/// (audit_upload.rs: shortly before its last sync's end) and the (clamped)
/// time of its latest recorded read.
#[derive(Debug, Clone, Default)]
pub struct ReadMarks {
    pub received_before_sync: Option<String>,
    pub latest_at: Option<String>,
}

/// A stored document: its team and the bytes to load it from.
#[derive(Debug, Clone)]
pub struct StoredDocument {
    pub team: String,
    pub snapshot: Option<Vec<u8>>,
    pub changes: Vec<Vec<u8>>,
}

/// What a new enrolment code is for.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub team: String,
    pub worker: String,
    pub expires_at: DateTime<Utc>,
}

pub trait Storage: Send + Sync + 'static {
    fn add_enrolment_code(
        &self,
        code_hash: &[u8],
        grant: &CodeGrant,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Uses up a code and records the device, atomically: a code enrols one device.
    fn redeem_enrolment_code(
        &self,
        code_hash: &[u8],
        device_id: &str,
        device_name: &str,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Device>;
    fn device_by_token(&self, token_hash: &[u8]) -> Result<Option<Device>>;
    /// The team's directory document id, chosen at random the first time.
    fn team_directory_id(&self, team: &str, now: DateTime<Utc>) -> Result<String>;
    fn devices(&self) -> Result<Vec<Device>>;
    /// Sets a team's policy (creating the team if new); `None` lifts a limit.
    fn set_team_policy(&self, team: &str, policy: TeamPolicy, now: DateTime<Utc>) -> Result<()>;
    /// A team's policy (no limits for a team the relay does not know).
    fn team_policy(&self, team: &str) -> Result<TeamPolicy>;
    /// Every team with a retention period.
    fn retention_policies(&self) -> Result<Vec<(String, i64)>>;
    /// Revokes a device and audits it once, naming `by` (who revoked it),
    /// in one transaction; revoking it again changes and audits nothing.
    /// Returns false if there is no such device.
    fn revoke_device(&self, device_id: &str, by: Option<&str>, now: DateTime<Utc>) -> Result<bool>;
    fn touch_device(&self, device_id: &str, now: DateTime<Utc>) -> Result<()>;

    /// Documents are namespaced per team: `(team, id)` is a document, and
    /// the same id in two teams is two documents (issue 11, finding 6).
    fn document_exists(&self, team: &str, doc_id: &str) -> Result<bool>;
    /// The teams holding a document (or a purged one) with this id: the
    /// cross-team audit and the admin commands that take an id.
    fn teams_holding(&self, doc_id: &str) -> Result<Vec<String>>;
    fn load_document(&self, team: &str, doc_id: &str) -> Result<Option<StoredDocument>>;
    /// Appends changes `device` sent to `team`'s document (creating it if
    /// new); with `snapshot`, the stored changes (these included) are then
    /// replaced by it. Returns the changes stored beside the snapshot.
    fn append_changes(
        &self,
        doc_id: &str,
        team: &str,
        device: &str,
        changes: &[u8],
        snapshot: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<i64>;
    /// The team's documents changed after cursor `since`, except those whose
    /// latest change is `device`'s own, and the cursor to ask from next time.
    fn changed_since(&self, team: &str, since: i64, device: &str) -> Result<(i64, Vec<String>)>;
    /// Deletes every stored change, snapshot and sync state of `team`'s
    /// document and remembers it as purged; false if it is not stored.
    fn purge_document(
        &self,
        team: &str,
        doc_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    fn is_purged(&self, team: &str, doc_id: &str) -> Result<bool>;
    /// Appends one record about a client address (a refused token, a lockout).
    fn audit_client(&self, action: &str, client: &str, at: &str) -> Result<()>;
    /// Case-file reads a device uploaded since `since` (receipt time).
    fn reads_received_since(&self, device_id: &str, since: &str) -> Result<i64>;
    /// What the relay knows of a device's earlier read uploads
    /// (audit_upload.rs clamps new claims to it).
    fn read_marks(&self, device_id: &str, received_before: Option<&str>) -> Result<ReadMarks>;
    /// Appends a device's reads: `(family id, claimed at, clamped at)`,
    /// the relay's receipt time beside them.
    fn record_reads_received(
        &self,
        device: &Device,
        reads: &[(String, String)],
        received_at: &str,
    ) -> Result<()>;
    /// Every stored document: (id, team).
    fn document_ids(&self) -> Result<Vec<(String, String)>>;
    /// Every document of `team` that was purged.
    fn purged(&self, team: &str) -> Result<Vec<Purged>>;
    fn sync_state(&self, team: &str, doc_id: &str, device_id: &str) -> Result<Option<Vec<u8>>>;
    fn save_sync_state(
        &self,
        team: &str,
        doc_id: &str,
        device_id: &str,
        state: &[u8],
    ) -> Result<()>;

    fn audit(
        &self,
        device: Option<&Device>,
        action: &str,
        doc_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.audit_as(
            device.map(|d| d.id.as_str()),
            device.map(|d| d.worker.as_str()),
            action,
            doc_id,
            &now.to_rfc3339(),
        )
    }
    /// Appends one audit record (`at` as RFC 3339).
    fn audit_as(
        &self,
        device_id: Option<&str>,
        worker: Option<&str>,
        action: &str,
        doc_id: Option<&str>,
        at: &str,
    ) -> Result<()>;
    /// Appends one record about `team`'s document `doc_id` (an
    /// administrator's export, a device's cross-team request: the team is
    /// the one holding the document).
    fn audit_for_team(
        &self,
        team: &str,
        device_id: Option<&str>,
        worker: Option<&str>,
        action: &str,
        doc_id: &str,
        at: &str,
    ) -> Result<()>;
    /// Appends one `received` record per device (sent changes of
    /// `doc_id`), in one transaction.
    fn audit_received(&self, device_ids: &[String], doc_id: &str, at: &str) -> Result<()>;
    /// Appends a device's case-file reads (`(family id, at)`) in one go.
    fn record_reads(&self, device: &Device, reads: &[(String, String)]) -> Result<()>;
    /// The audit, oldest first, about one family and/or one device and/or
    /// one team (a record's team: its own, else its device's).
    fn audit_log(
        &self,
        family: Option<&str>,
        device: Option<&str>,
        team: Option<&str>,
    ) -> Result<Vec<AuditEntry>>;
    /// Records refusals (refusals.rs), auditing each new (document, device,
    /// reason), in one transaction.
    fn record_refusals(&self, refusals: &[crate::refusals::Refusal]) -> Result<()>;
    /// Refused documents, latest first, of one team or all.
    fn refused_documents(
        &self,
        team: Option<&str>,
    ) -> Result<Vec<crate::refusals::RefusedDocument>>;
    /// This store's id (`relay_meta.store_id`): `proposed` becomes it if it
    /// has none yet. A store restored from a backup must be given a new one
    /// (devices then send it everything they hold again).
    fn store_id(&self, proposed: &str) -> Result<String>;
    /// Devices revoked after `cursor` (by any process), oldest first, at
    /// most `limit`; moves the cursor past them. A fresh cursor starts at
    /// the latest revocation (earlier ones are refused at authentication).
    /// Cheap when nothing was written (revocation.rs polls it).
    fn revocations_since(&self, cursor: &mut RevocationCursor, limit: usize)
    -> Result<Vec<String>>;
}

/// Where a relay's revocation watcher has read up to (revocation.rs).
#[derive(Debug, Clone, Default)]
pub struct RevocationCursor {
    /// The last revocation seen (`revocations.seq`); `None`: not yet placed.
    seq: Option<i64>,
    /// A backend's "nothing was written since" marker (SQLite: `PRAGMA
    /// data_version` of the relay's connection, which changes only when
    /// another connection, e.g. the admin command's, committed).
    written: Option<i64>,
}

/// The embedded default: one SQLite file.
pub struct SqliteStorage {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStorage")
    }
}

impl SqliteStorage {
    /// Opens (creating) the database at `path`, keyed with the data
    /// directory's `relay.key` (made if new): what unit tests use.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_key(path, &crate::at_rest::KeySource::DataDir)
    }

    /// Opens (creating, encrypting a plaintext one in place) the database
    /// at `path` with the key from `key` (at_rest.rs), then migrates it.
    pub fn open_with_key(path: &Path, key: &crate::at_rest::KeySource) -> Result<Self> {
        let mut conn = crate::at_rest::open_database(path, key)?;
        let before: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let before = before as usize;
        if before > MIGRATIONS.len() {
            return Err(Error::Config(format!(
                "the relay database has schema {before}, newer than this linkbook-server: update it"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(before) {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)?;
            tx.commit()?;
        }
        Ok(SqliteStorage {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: r.get(0)?,
        team: r.get(1)?,
        worker: r.get(2)?,
        device_name: r.get(3)?,
        enrolled_at: r.get(4)?,
        revoked_at: r.get(5)?,
        last_sync_at: r.get(6)?,
    })
}

const DEVICE_COLUMNS: &str = "id, team, worker, device_name, enrolled_at, revoked_at, last_sync_at";

impl Storage for SqliteStorage {
    fn revocations_since(
        &self,
        cursor: &mut RevocationCursor,
        limit: usize,
    ) -> Result<Vec<String>> {
        let conn = self.conn();
        let written: i64 = conn.pragma_query_value(None, "data_version", |r| r.get(0))?;
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
        let rows: Vec<(i64, String)> = stmt
            .query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if let Some((seq, _)) = rows.last() {
            cursor.seq = Some(*seq);
        }
        // A full batch may have more behind it: look again next time even
        // if nothing else is written.
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < limit {
            cursor.written = Some(written);
        }
        Ok(rows.into_iter().map(|(_, id)| id).collect())
    }

    fn record_refusals(&self, refusals: &[crate::refusals::Refusal]) -> Result<()> {
        crate::refusals::record(&mut self.conn(), refusals)
    }

    fn refused_documents(
        &self,
        team: Option<&str>,
    ) -> Result<Vec<crate::refusals::RefusedDocument>> {
        crate::refusals::list(&self.conn(), team)
    }

    fn add_enrolment_code(
        &self,
        code_hash: &[u8],
        grant: &CodeGrant,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO enrolment_codes (code_hash, team, worker, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![code_hash, grant.team, grant.worker, now.to_rfc3339(), grant.expires_at.to_rfc3339()],
        )?;
        Ok(())
    }

    fn redeem_enrolment_code(
        &self,
        code_hash: &[u8],
        device_id: &str,
        device_name: &str,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Device> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(String, String, String, Option<String>)> = tx
            .query_row(
                "SELECT team, worker, expires_at, used_at FROM enrolment_codes WHERE code_hash = ?1",
                [code_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((team, worker, expires_at, used_at)) = row else {
            return Err(Error::EnrolmentRefused("unknown enrolment code"));
        };
        if used_at.is_some() {
            return Err(Error::EnrolmentRefused("enrolment code already used"));
        }
        let expired = DateTime::parse_from_rfc3339(&expires_at)
            .map(|e| e <= now)
            .unwrap_or(true);
        if expired {
            return Err(Error::EnrolmentRefused("enrolment code expired"));
        }
        tx.execute(
            "UPDATE enrolment_codes SET used_at = ?2, device_id = ?3 WHERE code_hash = ?1",
            params![code_hash, now.to_rfc3339(), device_id],
        )?;
        tx.execute(
            "INSERT INTO devices (id, team, worker, device_name, token_hash, enrolled_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![device_id, team, worker, device_name, token_hash, now.to_rfc3339()],
        )?;
        tx.execute(
            "INSERT INTO audit (at, device_id, worker, action) VALUES (?1, ?2, ?3, 'enrolled')",
            params![now.to_rfc3339(), device_id, worker],
        )?;
        let device = tx.query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
            [device_id],
            device_row,
        )?;
        tx.commit()?;
        Ok(device)
    }

    fn device_by_token(&self, token_hash: &[u8]) -> Result<Option<Device>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = ?1"),
                [token_hash],
                device_row,
            )
            .optional()?)
    }

    fn team_directory_id(&self, team: &str, now: DateTime<Utc>) -> Result<String> {
        let conn = self.conn();
        let fresh = linkbook_core::DocumentId::random().to_string();
        conn.execute(
            "INSERT INTO teams (name, directory_id, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
            params![team, fresh, now.to_rfc3339()],
        )?;
        Ok(conn.query_row(
            "SELECT directory_id FROM teams WHERE name = ?1",
            [team],
            |r| r.get(0),
        )?)
    }

    fn set_team_policy(&self, team: &str, policy: TeamPolicy, now: DateTime<Utc>) -> Result<()> {
        self.team_directory_id(team, now)?;
        self.conn().execute(
            "UPDATE teams SET retention_days = ?2, lease_days = ?3 WHERE name = ?1",
            params![team, policy.retention_days, policy.lease_days],
        )?;
        Ok(())
    }

    fn team_policy(&self, team: &str) -> Result<TeamPolicy> {
        Ok(self
            .conn()
            .query_row(
                "SELECT retention_days, lease_days FROM teams WHERE name = ?1",
                [team],
                |r| {
                    Ok(TeamPolicy {
                        retention_days: r.get(0)?,
                        lease_days: r.get(1)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    fn retention_policies(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT name, retention_days FROM teams WHERE retention_days IS NOT NULL ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn devices(&self) -> Result<Vec<Device>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY team, worker, enrolled_at"
        ))?;
        let rows = stmt.query_map([], device_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revoke_device(&self, device_id: &str, by: Option<&str>, now: DateTime<Utc>) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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
            tx.execute(
                "INSERT INTO audit (at, device_id, worker, action) VALUES (?1, ?2, ?3, 'revoked')",
                params![now.to_rfc3339(), device_id, by],
            )?;
        }
        tx.commit()?;
        Ok(exists)
    }

    fn touch_device(&self, device_id: &str, now: DateTime<Utc>) -> Result<()> {
        self.conn().execute(
            "UPDATE devices SET last_sync_at = ?2 WHERE id = ?1",
            params![device_id, now.to_rfc3339()],
        )?;
        Ok(())
    }

    fn document_exists(&self, team: &str, doc_id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM documents WHERE team = ?1 AND id = ?2")?
            .query_row([team, doc_id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn teams_holding(&self, doc_id: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT team FROM documents WHERE id = ?1 UNION SELECT team FROM purged WHERE doc_id = ?1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([doc_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn load_document(&self, team: &str, doc_id: &str) -> Result<Option<StoredDocument>> {
        let conn = self.conn();
        let row: Option<(String, Option<Vec<u8>>)> = conn
            .prepare_cached("SELECT team, snapshot FROM documents WHERE team = ?1 AND id = ?2")?
            .query_row([team, doc_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((team, snapshot)) = row else {
            return Ok(None);
        };
        let mut stmt = conn.prepare_cached(
            "SELECT data FROM changes WHERE team = ?1 AND doc_id = ?2 ORDER BY seq",
        )?;
        let changes = stmt
            .query_map([&team, doc_id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<Vec<u8>>>>()?;
        Ok(Some(StoredDocument {
            team,
            snapshot,
            changes,
        }))
    }

    fn append_changes(
        &self,
        doc_id: &str,
        team: &str,
        device: &str,
        changes: &[u8],
        snapshot: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Checked in the same transaction as the write: a purge by the
        // administrator (another process) cannot be raced.
        let purged = tx
            .query_row(
                "SELECT 1 FROM purged WHERE team = ?1 AND doc_id = ?2",
                [team, doc_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if purged {
            return Err(Error::Purged);
        }
        tx.execute(
            "INSERT INTO documents (id, team, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(team, id) DO NOTHING",
            params![doc_id, team, now.to_rfc3339()],
        )?;
        let mut count = 0;
        if !changes.is_empty() {
            tx.execute(
                "INSERT INTO changes (team, doc_id, data) VALUES (?1, ?2, ?3)",
                params![team, doc_id, changes],
            )?;
            let seq = tx.last_insert_rowid();
            count = tx.query_row(
                "UPDATE documents SET change_count = change_count + 1, seq = ?3, last_device = ?4
                 WHERE team = ?1 AND id = ?2 RETURNING change_count",
                params![team, doc_id, seq, device],
                |r| r.get(0),
            )?;
        }
        if let Some(snap) = snapshot {
            tx.execute(
                "DELETE FROM changes WHERE team = ?1 AND doc_id = ?2",
                [team, doc_id],
            )?;
            tx.execute(
                "UPDATE documents SET snapshot = ?3, change_count = 0 WHERE team = ?1 AND id = ?2",
                params![team, doc_id, snap],
            )?;
            count = 0;
        }
        tx.commit()?;
        Ok(count)
    }

    fn changed_since(&self, team: &str, since: i64, device: &str) -> Result<(i64, Vec<String>)> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, seq, last_device FROM documents WHERE team = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![team, since], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        let mut cursor = since;
        let mut ids = Vec::new();
        for row in rows {
            let (id, seq, last_device) = row?;
            cursor = cursor.max(seq);
            if last_device.as_deref() != Some(device) {
                ids.push(id);
            }
        }
        Ok((cursor, ids))
    }

    fn purge_document(
        &self,
        team: &str,
        doc_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let stored = tx
            .query_row(
                "SELECT 1 FROM documents WHERE team = ?1 AND id = ?2",
                [team, doc_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !stored {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM changes WHERE team = ?1 AND doc_id = ?2",
            "DELETE FROM sync_states WHERE team = ?1 AND doc_id = ?2",
            "DELETE FROM documents WHERE team = ?1 AND id = ?2",
            // Ids and reasons only, but of a family that no longer exists.
            "DELETE FROM refused_documents WHERE team = ?1 AND doc_id = ?2",
        ] {
            tx.execute(sql, [team, doc_id])?;
        }
        tx.execute(
            "INSERT INTO purged (doc_id, team, reason, purged_at) VALUES (?1, ?2, ?3, ?4)",
            params![doc_id, team, reason, now.to_rfc3339()],
        )?;
        tx.execute(
            "INSERT INTO audit (at, device_id, worker, action, doc_id, team) VALUES (?1, NULL, 'office administrator', 'purged', ?2, ?3)",
            params![now.to_rfc3339(), doc_id, team],
        )?;
        tx.commit()?;
        // Older page images of the document are still in the WAL: fold it
        // into the (secure-deleted) database file and truncate it. Busy if a
        // reader holds an old snapshot; the next checkpoint then does it.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(true)
    }

    fn document_ids(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id, team FROM documents ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn is_purged(&self, team: &str, doc_id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM purged WHERE team = ?1 AND doc_id = ?2")?
            .query_row([team, doc_id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn audit_client(&self, action: &str, client: &str, at: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (at, action, client) VALUES (?1, ?2, ?3)",
            params![at, action, client],
        )?;
        Ok(())
    }

    fn reads_received_since(&self, device_id: &str, since: &str) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM audit
             WHERE device_id = ?1 AND action = 'read' AND received_at >= ?2",
            [device_id, since],
            |r| r.get(0),
        )?)
    }

    fn read_marks(&self, device_id: &str, received_before: Option<&str>) -> Result<ReadMarks> {
        let conn = self.conn();
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
        Ok(ReadMarks {
            received_before_sync,
            latest_at,
        })
    }

    fn record_reads_received(
        &self,
        device: &Device,
        reads: &[(String, String)],
        received_at: &str,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (at, device_id, worker, action, doc_id, received_at)
                 VALUES (?1, ?2, ?3, 'read', ?4, ?5)",
            )?;
            for (family, at) in reads {
                insert.execute(params![at, device.id, device.worker, family, received_at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn purged(&self, team: &str) -> Result<Vec<Purged>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT doc_id, purged_at FROM purged WHERE team = ?1 ORDER BY purged_at",
        )?;
        let rows = stmt.query_map([team], |r| {
            Ok(Purged {
                id: r.get(0)?,
                purged_at: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn sync_state(&self, team: &str, doc_id: &str, device_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT state FROM sync_states WHERE team = ?1 AND doc_id = ?2 AND device_id = ?3",
            )?
            .query_row([team, doc_id, device_id], |r| r.get(0))
            .optional()?)
    }

    fn save_sync_state(
        &self,
        team: &str,
        doc_id: &str,
        device_id: &str,
        state: &[u8],
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO sync_states (team, doc_id, device_id, state) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(team, doc_id, device_id) DO UPDATE SET state = excluded.state",
            params![team, doc_id, device_id, state],
        )?;
        Ok(())
    }

    fn audit_as(
        &self,
        device_id: Option<&str>,
        worker: Option<&str>,
        action: &str,
        doc_id: Option<&str>,
        at: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (at, device_id, worker, action, doc_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![at, device_id, worker, action, doc_id],
        )?;
        Ok(())
    }

    fn audit_for_team(
        &self,
        team: &str,
        device_id: Option<&str>,
        worker: Option<&str>,
        action: &str,
        doc_id: &str,
        at: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (at, device_id, worker, action, doc_id, team) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![at, device_id, worker, action, doc_id, team],
        )?;
        Ok(())
    }

    fn audit_received(&self, device_ids: &[String], doc_id: &str, at: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (at, device_id, worker, action, doc_id) VALUES (?1, ?2, NULL, 'received', ?3)",
            )?;
            for device_id in device_ids {
                insert.execute(params![at, device_id, doc_id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn record_reads(&self, device: &Device, reads: &[(String, String)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (at, device_id, worker, action, doc_id) VALUES (?1, ?2, ?3, 'read', ?4)",
            )?;
            for (family, at) in reads {
                insert.execute(params![at, device.id, device.worker, family])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn audit_log(
        &self,
        family: Option<&str>,
        device: Option<&str>,
        team: Option<&str>,
    ) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
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
                action: r.get(3)?,
                document_id: r.get(4)?,
                client: r.get(5)?,
                received_at: r.get(6)?,
                team: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn store_id(&self, proposed: &str) -> Result<String> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO relay_meta (key, value) VALUES ('store_id', ?1)",
            [proposed],
        )?;
        Ok(conn.query_row(
            "SELECT value FROM relay_meta WHERE key = 'store_id'",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device is told its change is stored only after the commit; with
    /// `synchronous=FULL` the WAL is fsynced at that commit, so the change
    /// survives a power cut too (WAL with `NORMAL` survives a process kill
    /// but may lose the last commits to a power cut). Guards against a
    /// speed-up that quietly weakens it.
    #[test]
    fn every_commit_is_fsynced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = SqliteStorage::open(&dir.path().join("relay.db")).expect("open");
        let conn = storage.conn();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous");
        assert_eq!((mode.as_str(), synchronous), ("wal", 2), "2 is FULL");
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    /// The same id in two teams is two documents: appending, loading,
    /// sync states and purging one never touch the other.
    #[test]
    fn documents_are_namespaced_per_team() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = SqliteStorage::open(&dir.path().join("relay.db")).expect("open");
        s.append_changes("doc", "north", "n1", b"north-1", Some(b"north-snap"), now())
            .expect("north");
        s.append_changes("doc", "south", "s1", b"south-1", Some(b"south-snap"), now())
            .expect("south: its own document, not refused");
        s.append_changes("doc", "south", "s1", b"south-2", None, now())
            .expect("south appends");
        let north = s
            .load_document("north", "doc")
            .expect("load")
            .expect("north's");
        let south = s
            .load_document("south", "doc")
            .expect("load")
            .expect("south's");
        assert_eq!(north.snapshot.as_deref(), Some(&b"north-snap"[..]));
        assert!(north.changes.is_empty());
        assert_eq!(south.changes, vec![b"south-2".to_vec()]);
        assert!(s.load_document("east", "doc").expect("load").is_none());
        assert!(!s.document_exists("east", "doc").expect("exists"));
        assert_eq!(s.teams_holding("doc").expect("teams"), ["north", "south"]);
        s.save_sync_state("north", "doc", "n1", b"n")
            .expect("state");
        s.save_sync_state("south", "doc", "n1", b"s")
            .expect("state");
        assert_eq!(
            s.sync_state("south", "doc", "n1")
                .expect("state")
                .as_deref(),
            Some(&b"s"[..])
        );
        assert!(
            s.purge_document("south", "doc", "test", now())
                .expect("purge")
        );
        assert!(s.is_purged("south", "doc").expect("purged"));
        assert!(!s.is_purged("north", "doc").expect("purged"));
        assert!(s.load_document("north", "doc").expect("load").is_some());
        assert_eq!(
            s.sync_state("north", "doc", "n1")
                .expect("state")
                .as_deref(),
            Some(&b"n"[..])
        );
        assert!(s.sync_state("south", "doc", "n1").expect("state").is_none());
        assert!(matches!(
            s.append_changes("doc", "south", "s1", b"again", None, now()),
            Err(Error::Purged)
        ));
        s.append_changes("doc", "north", "n1", b"north-2", None, now())
            .expect("north's document is not purged");
        assert_eq!(
            s.changed_since("south", 0, "x").expect("changed").1,
            Vec::<String>::new()
        );
        assert_eq!(
            s.changed_since("north", 0, "x").expect("changed").1,
            ["doc"]
        );
        assert_eq!(s.purged("north").expect("purged"), vec![]);
        assert_eq!(s.purged("south").expect("purged").len(), 1);
    }

    /// A schema-7 database keeps every document, change, sync state and
    /// purge through migration 8, and the change cursor never goes back
    /// (compaction had deleted the change with the highest seq).
    #[test]
    fn schema_7_data_migrates_to_team_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relay.db");
        {
            let mut conn = Connection::open(&path).expect("open");
            for (i, sql) in MIGRATIONS.iter().take(7).enumerate() {
                let tx = conn.transaction().expect("tx");
                tx.execute_batch(sql).expect("migration");
                tx.pragma_update(None, "user_version", (i + 1) as u32)
                    .expect("version");
                tx.commit().expect("commit");
            }
            conn.execute_batch(
                "INSERT INTO devices (id, team, worker, device_name, token_hash, enrolled_at)
                     VALUES ('n1', 'north', 'Asha', 'tablet', x'01', 't'),
                            ('s1', 'south', 'Ben', 'phone', x'02', 't');
                 INSERT INTO documents (id, team, snapshot, change_count, created_at, seq, last_device)
                     VALUES ('a', 'north', x'aa', 1, 't', 0, 'n1'),
                            ('b', 'south', NULL, 1, 't', 0, 's1');
                 INSERT INTO changes (doc_id, data) VALUES ('a', x'a1'), ('b', x'b1'), ('a', x'a2');
                 UPDATE documents SET seq = 3 WHERE id = 'a';
                 UPDATE documents SET seq = 2 WHERE id = 'b';
                 DELETE FROM changes WHERE seq = 3;
                 INSERT INTO sync_states (doc_id, device_id, state) VALUES ('a', 'n1', x'5a'), ('b', 's1', x'5b');
                 INSERT INTO purged (doc_id, team, reason, purged_at) VALUES ('p', 'north', 'r', 't');",
            )
            .expect("schema-7 rows");
        }
        let s = SqliteStorage::open(&path).expect("migrates");
        let a = s.load_document("north", "a").expect("load").expect("a");
        assert_eq!(a.snapshot.as_deref(), Some(&[0xaa][..]));
        assert_eq!(a.changes, vec![vec![0xa1]]);
        assert!(s.load_document("south", "a").expect("load").is_none());
        let b = s.load_document("south", "b").expect("load").expect("b");
        assert_eq!(b.changes, vec![vec![0xb1]]);
        assert_eq!(
            s.sync_state("north", "a", "n1").expect("state"),
            Some(vec![0x5a])
        );
        assert_eq!(
            s.sync_state("south", "b", "s1").expect("state"),
            Some(vec![0x5b])
        );
        assert!(s.is_purged("north", "p").expect("purged"));
        assert!(!s.is_purged("south", "p").expect("purged"));
        // The next change's seq is past every cursor handed out (3).
        s.append_changes("b", "south", "s1", b"b2", None, now())
            .expect("append");
        let (cursor, ids) = s.changed_since("south", 3, "other").expect("changed");
        assert!(cursor > 3, "{cursor}");
        assert_eq!(ids, ["b"]);
        let conn = s.conn();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity");
        assert_eq!(check, "ok");
        let fk: Vec<String> = conn
            .prepare("PRAGMA foreign_key_check")
            .expect("fk")
            .query_map([], |r| r.get(0))
            .expect("fk rows")
            .collect::<rusqlite::Result<_>>()
            .expect("fk");
        assert!(fk.is_empty(), "{fk:?}");
    }

    #[test]
    fn a_revocation_is_audited_once_naming_who_revoked() {
        let dir = tempfile::tempdir().expect("dir");
        let s = SqliteStorage::open(&dir.path().join("relay.db")).expect("open");
        s.conn()
            .execute_batch(
                "INSERT INTO devices (id, team, worker, device_name, token_hash, enrolled_at)
                     VALUES ('n1', 'north', 'Asha', 'tablet', x'01', 't')",
            )
            .expect("device");
        assert!(
            s.revoke_device("n1", Some("office administrator"), now())
                .expect("revoke")
        );
        // Again: the device exists, nothing changes, nothing more is audited.
        assert!(
            s.revoke_device("n1", Some("someone else"), now())
                .expect("again")
        );
        assert!(!s.revoke_device("nobody", None, now()).expect("unknown"));
        let rows: Vec<(Option<String>, String)> = s
            .conn()
            .prepare("SELECT worker, at FROM audit WHERE action = 'revoked'")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].0.as_deref(), Some("office administrator"));
        let revoked_at: String = s
            .conn()
            .query_row("SELECT revoked_at FROM devices WHERE id = 'n1'", [], |r| {
                r.get(0)
            })
            .expect("revoked_at");
        assert_eq!(revoked_at, rows[0].1, "the first revocation's time is kept");
    }
}
