//! [`Repo`]: the device store's typed API, the one entry point the bindings
//! and the CLI use. Every mutating call commits its Automerge change and the
//! projections it affects in one SQLite transaction before it returns.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ReadDoc};
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::bundle::{self, ExportedDocument};
use crate::error::{Error, Result};
use crate::ids::DocumentId;
use crate::model::validate::{MAX_NAME, required_text};
use crate::model::*;
use crate::store::documents::{self, DocCache, WriteTxn};
use crate::store::{self, DatabaseKey, projection};

mod concurrent_edits;
mod families;
mod family_days;
mod lifecycle;
mod replicas;

/// Where the time comes from; tests inject a fixed or stepping clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The team a device is in before it is enrolled.
pub const LOCAL_TEAM: &str = "local";

struct Writer {
    conn: Connection,
    cache: DocCache,
}

/// Who this device is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceProfile {
    pub device_id: String,
    pub team: String,
    pub worker: String,
    /// The team directory: given by the relay at enrolment (random, so no
    /// other team can guess it), derived from the team name before.
    pub directory_id: DocumentId,
}

/// One device's store of Linkbook documents.
pub struct Repo {
    path: PathBuf,
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
    profile: Mutex<DeviceProfile>,
    clock: Clock,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the connection usable: SQLite
    // rolled the transaction back when the Transaction was dropped.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Repo {
    /// Opens the device store at `path`, creating it (and this device's
    /// identity) if it does not exist. Fails with [`Error::WrongKey`] if `key`
    /// does not open it.
    pub fn open(path: impl AsRef<Path>, key: &DatabaseKey) -> Result<Repo> {
        Self::open_with_clock(path, key, Arc::new(Utc::now))
    }

    /// [`Repo::open`] with a clock of the caller's (for tests).
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        key: &DatabaseKey,
        clock: Clock,
    ) -> Result<Repo> {
        let path = path.as_ref().to_path_buf();
        let mut conn = store::open_connection(&path, key)?;
        let before = store::migrate(&mut conn)?;
        let profile = load_or_create_profile(&conn)?;
        let reader = store::open_connection(&path, key)?;
        let repo = Repo {
            path,
            writer: Mutex::new(Writer {
                conn,
                cache: DocCache::default(),
            }),
            reader: Mutex::new(reader),
            profile: Mutex::new(profile),
            clock,
        };
        if before == 1 {
            // Schema 2 added the projections: derive them from the documents.
            repo.rebuild_projections()?;
        }
        // Conflicts gained their worker and time (docs/adr/0007).
        projection::refresh_old_conflicts(&lock(&repo.writer).conn)?;
        repo.ensure_directory()?;
        Ok(repo)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn profile(&self) -> DeviceProfile {
        lock(&self.profile).clone()
    }

    /// Sets the worker name stamped on this device's notes.
    pub fn set_worker(&self, worker: &str) -> Result<()> {
        let worker = required_text("worker name", worker, MAX_NAME)?;
        lock(&self.writer).conn.execute(
            "INSERT OR REPLACE INTO profile (key, value) VALUES ('worker', ?1)",
            [&worker],
        )?;
        lock(&self.profile).worker = worker;
        Ok(())
    }

    /// Moves the device into `team`. Only a device that holds no records yet
    /// can change team: records belong to the team they were made in.
    pub fn set_team(&self, team: &str) -> Result<()> {
        let team = required_text("team", team, MAX_NAME)?;
        {
            let w = lock(&self.writer);
            let records: i64 = w.conn.query_row(
                "SELECT count(*) FROM documents WHERE doc_type != 'team_directory'",
                [],
                |r| r.get(0),
            )?;
            let current = lock(&self.profile).team.clone();
            if records > 0 && current != team {
                return Err(Error::invalid(
                    "team",
                    format!("this device already holds records of team '{current}'"),
                ));
            }
            let enrolled: Option<String> = w
                .conn
                .query_row("SELECT value FROM profile WHERE key = 'token'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            if enrolled.is_some() {
                return Err(Error::invalid(
                    "team",
                    "this device is enrolled: its team comes from the relay",
                ));
            }
        }
        self.set_profile_values(&[("team", team.as_str()), ("directory_id", "")])?;
        self.ensure_directory()
    }

    /// The id of this device's team directory.
    pub fn directory_id(&self) -> DocumentId {
        lock(&self.profile).directory_id
    }

    /// The time by this store's clock (injected in tests): every time the
    /// store or the sync writes comes from here.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    fn author(&self) -> Author {
        let p = lock(&self.profile).clone();
        Author {
            device_id: p.device_id,
            worker: p.worker,
            team: p.team,
            now: (self.clock)(),
        }
    }

    /// Runs `f` in one write transaction and commits it.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>) -> Result<T> {
        let author = self.author();
        let mut guard = lock(&self.writer);
        let Writer { conn, cache } = &mut *guard;
        let mut txn = WriteTxn::begin(conn, cache, author)?;
        match f(&mut txn) {
            Ok(value) => {
                txn.commit()?;
                Ok(value)
            }
            Err(e) => {
                txn.abort();
                Err(e)
            }
        }
    }

    /// Reads a loaded document.
    fn read<T>(
        &self,
        id: DocumentId,
        kind: DocumentType,
        what: &'static str,
        f: impl FnOnce(&AutoCommit) -> T,
    ) -> Result<T> {
        let device = lock(&self.profile).device_id.clone();
        let mut guard = lock(&self.writer);
        let Writer { conn, cache } = &mut *guard;
        let cached = cache
            .get(conn, id, &device)?
            .ok_or_else(|| Error::not_found(what, id))?;
        if cached.kind != kind {
            return Err(Error::not_found(what, id));
        }
        Ok(f(&cached.doc))
    }

    /// Runs `f` on a held document (mutably, without writing); `None` if
    /// this device does not hold it.
    pub(crate) fn with_doc<T>(
        &self,
        id: DocumentId,
        f: impl FnOnce(&mut AutoCommit, DocumentType) -> T,
    ) -> Result<Option<T>> {
        let device = lock(&self.profile).device_id.clone();
        let mut guard = lock(&self.writer);
        let Writer { conn, cache } = &mut *guard;
        Ok(cache.get(conn, id, &device)?.map(|c| f(&mut c.doc, c.kind)))
    }

    pub(crate) fn query_row_opt<T: rusqlite::types::FromSql>(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Option<T>> {
        Ok(lock(&self.reader)
            .query_row(sql, params, |r| r.get(0))
            .optional()?)
    }

    /// Runs plain SQL on the writer connection in one transaction.
    pub(crate) fn with_writer_tx<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut guard = lock(&self.writer);
        let tx = guard
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub(crate) fn profile_values(&self, keys: &[&str]) -> Result<Vec<Option<String>>> {
        keys.iter()
            .map(|k| self.query_row_opt("SELECT value FROM profile WHERE key = ?1", &[k]))
            .collect()
    }

    /// Writes profile values together and reloads the profile.
    pub(crate) fn set_profile_values(&self, values: &[(&str, &str)]) -> Result<()> {
        self.with_writer_tx(|tx| {
            for (k, v) in values {
                tx.execute(
                    "INSERT OR REPLACE INTO profile (key, value) VALUES (?1, ?2)",
                    params![k, v],
                )?;
            }
            Ok(())
        })?;
        let fresh = load_or_create_profile(&lock(&self.writer).conn)?;
        *lock(&self.profile) = fresh;
        Ok(())
    }
}

fn load_or_create_profile(conn: &Connection) -> Result<DeviceProfile> {
    let get = |k: &str| -> Result<Option<String>> {
        Ok(conn
            .query_row("SELECT value FROM profile WHERE key = ?1", [k], |r| {
                r.get(0)
            })
            .optional()?)
    };
    let set = |k: &str, v: &str| -> Result<String> {
        conn.execute(
            "INSERT INTO profile (key, value) VALUES (?1, ?2)",
            params![k, v],
        )?;
        Ok(v.to_string())
    };
    let device_id = match get("device_id")? {
        Some(d) => d,
        None => set("device_id", &uuid::Uuid::new_v4().hyphenated().to_string())?,
    };
    let team = match get("team")? {
        Some(t) => t,
        None => set("team", LOCAL_TEAM)?,
    };
    let worker = match get("worker")? {
        Some(w) => w,
        None => set("worker", "unnamed worker")?,
    };
    let directory_id = match get("directory_id")?.filter(|d| !d.is_empty()) {
        Some(d) => DocumentId::parse(&d, "directory id")?,
        None => DocumentId::team_directory(&team),
    };
    Ok(DeviceProfile {
        device_id,
        team,
        worker,
        directory_id,
    })
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(conn: &Connection) -> Result<Vec<(String, String, Option<String>)>> {
        let mut stmt =
            conn.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A schema-1 store (documents, no projections) migrates to the current
    /// schema identical to a fresh one, with its projections rebuilt.
    #[test]
    fn schema_1_store_migrates_to_the_current_schema() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let key = DatabaseKey::generate();
        let old = dir.path().join("old.db");
        let family_id = DocumentId::random();
        {
            let conn = store::open_connection(&old, &key)?;
            conn.execute_batch(store::MIGRATIONS[0])?;
            conn.pragma_update(None, "user_version", 1)?;
            let author = Author {
                device_id: uuid::Uuid::new_v4().to_string(),
                worker: "Asha".into(),
                team: LOCAL_TEAM.into(),
                now: Utc::now(),
            };
            let mut doc = AutoCommit::new();
            family::create(
                &mut doc,
                &NewFamily {
                    name: "Okafor".into(),
                    ..Default::default()
                },
                &author,
            )?;
            family::add_note(
                &mut doc,
                "kept across the migration",
                NoteCategory::Visit,
                &author,
            )?;
            conn.execute(
                "INSERT INTO documents (id, doc_type, snapshot) VALUES (?1, 'family', ?2)",
                params![family_id.to_string(), doc.save()],
            )?;
        }
        let migrated = Repo::open(&old, &key)?;
        assert_eq!(
            migrated
                .families()?
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["Okafor"]
        );
        assert_eq!(migrated.search("migration")?.len(), 1);
        let fresh = Repo::open(dir.path().join("fresh.db"), &key)?;
        assert_eq!(
            schema(&lock(&migrated.reader))?,
            schema(&lock(&fresh.reader))?
        );
        let version = |r: &Repo| -> Result<u32> {
            Ok(lock(&r.reader).pragma_query_value(None, "user_version", |r| r.get(0))?)
        };
        assert_eq!(version(&migrated)?, store::MIGRATIONS.len() as u32);
        assert_eq!(version(&fresh)?, store::MIGRATIONS.len() as u32);
        Ok(())
    }
}
