//! The embedded default: one SQLCipher file in the data directory.
//!
//! Every operation is one statement or one transaction on the relay's one
//! connection. They are synchronous underneath: an async method runs its
//! SQL on the calling worker under `block_in_place` (tokio moves the
//! worker's other tasks elsewhere meanwhile), or inline on a
//! current-thread runtime. A local file's latency is that of an fsync; a
//! hand-off to a blocking thread per call would cost more than it saves
//! (docs/adr/0009).

mod audit;
mod console;
mod devices;
mod documents;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;

use super::{Device, Result};
use crate::error::Error;

pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/001_init.sql"),
    include_str!("../../../migrations/002_change_cursor.sql"),
    include_str!("../../../migrations/003_teams.sql"),
    include_str!("../../../migrations/004_last_device.sql"),
    include_str!("../../../migrations/005_purged.sql"),
    include_str!("../../../migrations/006_team_policy.sql"),
    include_str!("../../../migrations/007_audit_receipt.sql"),
    include_str!("../../../migrations/008_team_namespace.sql"),
    include_str!("../../../migrations/009_refused_documents.sql"),
    include_str!("../../../migrations/010_store_id.sql"),
    include_str!("../../../migrations/011_revocations.sql"),
    include_str!("../../../migrations/012_compaction.sql"),
    include_str!("../../../migrations/013_console.sql"),
];

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
    /// The schema this relay migrates a database to.
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    /// Opens (creating) the database at `path`, keyed with the data
    /// directory's `relay.key` (made if new): what unit tests use.
    pub fn open(path: &Path) -> crate::error::Result<Self> {
        Self::open_with_key(path, &crate::at_rest::KeySource::DataDir)
    }

    /// Opens (creating, encrypting a plaintext one in place) the database
    /// at `path` with the key from `key` (at_rest.rs), then migrates it.
    pub fn open_with_key(
        path: &Path,
        key: &crate::at_rest::KeySource,
    ) -> crate::error::Result<Self> {
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

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection without stalling the async workers.
    fn with<T, E: Into<super::StorageError>>(
        &self,
        f: impl FnOnce(&mut Connection) -> std::result::Result<T, E>,
    ) -> Result<T> {
        let run = || f(&mut self.conn()).map_err(Into::into);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        }
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
        last_address_kind: r.get(7)?,
    })
}

const DEVICE_COLUMNS: &str =
    "id, team, worker, device_name, enrolled_at, revoked_at, last_sync_at, last_address_kind";

/// Appends one audit record inside `tx`.
fn insert_audit(tx: &Connection, r: &super::AuditRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit (at, device_id, worker, action, doc_id, team, client)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        r.at_text(),
        r.device_id,
        r.worker,
        r.action.as_str(),
        r.document_id,
        r.team,
        r.client
    ])?;
    Ok(())
}
