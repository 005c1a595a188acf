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

    /// Refuses access to records once this device has gone longer without
    /// syncing than its team's offline lease allows (a tablet lost in a
    /// prison locks itself); syncing unlocks it.
    fn check_lease(&self) -> Result<()> {
        let values = self.profile_values(&["lease_days", "last_sync_at"])?;
        let lease = values[0].as_deref().and_then(|d| d.parse::<i64>().ok());
        let last = values[1]
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        if let (Some(days), Some(last)) = (lease, last) {
            let since = (self.clock)() - last.with_timezone(&Utc);
            if since > chrono::Duration::days(days) {
                return Err(Error::Locked { days });
            }
        }
        Ok(())
    }

    /// Records the relay's team policy and the time of a successful sync.
    pub(crate) fn record_policy(
        &self,
        retention_days: Option<i64>,
        lease_days: Option<i64>,
    ) -> Result<()> {
        let r = retention_days.map(|d| d.to_string()).unwrap_or_default();
        let l = lease_days.map(|d| d.to_string()).unwrap_or_default();
        self.set_profile_values(&[("retention_days", r.as_str()), ("lease_days", l.as_str())])
    }

    pub(crate) fn record_sync(&self) -> Result<()> {
        let now = (self.clock)().to_rfc3339();
        self.set_profile_values(&[("last_sync_at", now.as_str())])
    }

    /// Drops closed cases whose retention (the team's policy: days after
    /// closure) has run out, as if purged: deleted and never taken back.
    pub(crate) fn apply_retention(&self) -> Result<Vec<DocumentId>> {
        let days = self.profile_values(&["retention_days"])?[0]
            .as_deref()
            .and_then(|d| d.parse::<i64>().ok());
        let Some(days) = days else {
            return Ok(Vec::new());
        };
        let today = (self.clock)().date_naive();
        let closed: Vec<DocumentId> = {
            let conn = lock(&self.reader);
            let mut stmt =
                conn.prepare_cached("SELECT id FROM families WHERE status = 'closed'")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut ids = Vec::new();
            for row in rows {
                ids.push(DocumentId::parse(&row?, "family id")?);
            }
            ids
        };
        let mut due = Vec::new();
        for id in closed {
            let closure = self.read(id, DocumentType::Family, "family", |doc| {
                family::read(doc, id).closure
            })?;
            if let Some(c) = closure
                && c.date + chrono::Duration::days(days) <= today
            {
                due.push((id, (self.clock)().to_rfc3339()));
            }
        }
        self.apply_purges(&due)
    }

    /// Deletes every record on this device and forgets its enrolment (what a
    /// revoked device does). Deleted pages are overwritten (`secure_delete`)
    /// and the WAL is truncated, so nothing stays readable with the key.
    pub(crate) fn wipe(&self) -> Result<()> {
        let ids = self.document_ids()?;
        self.write(|txn| {
            for (id, _) in &ids {
                txn.delete(*id)?;
            }
            Ok(())
        })?;
        self.with_writer_tx(|tx| {
            tx.execute(
                "DELETE FROM profile WHERE key IN ('token', 'server_url', 'server_ca', 'relay_peer')
                    OR key LIKE 'relay_cursor:%'",
                [],
            )?;
            // Whatever no document row points to any more: projections,
            // states and reads of documents deleted above or never stored.
            for sql in [
                "DELETE FROM skipped_documents",
                "DELETE FROM read_log",
                "DELETE FROM sync_states",
                "DELETE FROM conflicts",
                "DELETE FROM notes",
                "DELETE FROM families",
                "DELETE FROM family_days",
                "INSERT INTO notes_fts(notes_fts) VALUES ('delete-all')",
            ] {
                tx.execute(sql, [])?;
            }
            Ok(())
        })?;
        store::truncate_wal(&lock(&self.writer).conn)?;
        Ok(())
    }

    /// Moves every record on the device into `team` (at enrolment: a device
    /// may have been used before it was enrolled). The old team's directory
    /// is replaced by the new team's, listing the same records.
    pub(crate) fn rehome(&self, team: &str, directory: Option<DocumentId>) -> Result<()> {
        let team = required_text("team", team, MAX_NAME)?;
        let (old_team, old_dir) = {
            let p = lock(&self.profile);
            (p.team.clone(), p.directory_id)
        };
        let new_dir = directory.unwrap_or_else(|| DocumentId::team_directory(&team));
        if old_team == team && old_dir == new_dir {
            return Ok(());
        }
        let ids = self.document_ids()?;
        self.write(|txn| {
            if !txn.exists(new_dir)? {
                txn.create(
                    new_dir,
                    DocumentType::TeamDirectory,
                    directory::genesis(&team)?,
                )?;
            }
            for (id, kind) in &ids {
                match kind {
                    DocumentType::Family => {
                        let doc = txn.doc_of(*id, DocumentType::Family, "family")?;
                        doc.put(automerge::ROOT, "team", team.as_str())?;
                        let f = family::summary(doc, *id);
                        directory::put_family(
                            txn.doc_of(new_dir, DocumentType::TeamDirectory, "team directory")?,
                            &f,
                        )?;
                    }
                    DocumentType::FamilyDay => {
                        let doc = txn.doc_of(*id, DocumentType::FamilyDay, "family day")?;
                        doc.put(automerge::ROOT, "team", team.as_str())?;
                        let d = family_day::read(doc, *id);
                        directory::put_family_day(
                            txn.doc_of(new_dir, DocumentType::TeamDirectory, "team directory")?,
                            &d,
                        )?;
                    }
                    DocumentType::TeamDirectory => {}
                }
            }
            if old_dir != new_dir {
                txn.delete(old_dir)?;
            }
            Ok(())
        })?;
        self.set_profile_values(&[
            ("team", team.as_str()),
            ("directory_id", &new_dir.to_string()),
        ])
    }

    fn ensure_directory(&self) -> Result<()> {
        let id = self.directory_id();
        let team = lock(&self.profile).team.clone();
        self.write(|txn| {
            if !txn.exists(id)? {
                txn.create(id, DocumentType::TeamDirectory, directory::genesis(&team)?)?;
            }
            Ok(())
        })
    }

    fn rebuild_projections(&self) -> Result<()> {
        let mut guard = lock(&self.writer);
        let tx = guard.conn.transaction()?;
        for (id, _) in documents::all(&tx)? {
            let (doc, kind) = documents::load(&tx, id)?;
            projection::project(&tx, id, kind, &doc)?;
        }
        tx.commit()?;
        Ok(())
    }

    // ----- families -----

    /// Records a new family; returns its id.
    pub fn add_family(&self, new: &NewFamily) -> Result<DocumentId> {
        self.check_lease()?;
        let dir = self.directory_id();
        self.write(|txn| {
            let id = DocumentId::random();
            let author = txn.author.clone();
            let doc = txn.create(id, DocumentType::Family, AutoCommit::new())?;
            family::create(doc, new, &author)?;
            let f = family::summary(doc, id);
            directory::put_family(
                txn.doc_of(dir, DocumentType::TeamDirectory, "team directory")?,
                &f,
            )?;
            Ok(id)
        })
    }

    /// Changes a family's name, address or key worker.
    pub fn update_family(&self, id: DocumentId, update: &FamilyUpdate) -> Result<()> {
        self.family_write(id, |doc, _| family::update(doc, update))
    }

    /// Runs `f` on a family's document, then refreshes its directory entry.
    fn family_write<T>(
        &self,
        id: DocumentId,
        f: impl FnOnce(&mut AutoCommit, &Author) -> Result<T>,
    ) -> Result<T> {
        self.check_lease()?;
        let dir = self.directory_id();
        self.write(|txn| {
            let author = txn.author.clone();
            let doc = txn.doc_of(id, DocumentType::Family, "family")?;
            let out = f(doc, &author)?;
            let fam = family::summary(doc, id);
            directory::put_family(
                txn.doc_of(dir, DocumentType::TeamDirectory, "team directory")?,
                &fam,
            )?;
            Ok(out)
        })
    }

    /// The caseload, from the projection, by name.
    pub fn families(&self) -> Result<Vec<FamilySummary>> {
        self.check_lease()?;
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, status, key_worker, members, notes, safeguarding_flags, last_activity
             FROM families ORDER BY name COLLATE NOCASE, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, u32>(6)?,
                r.get::<_, String>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, status, key_worker, members, notes, flags, last) = row?;
            out.push(FamilySummary {
                id: DocumentId::parse(&id, "family id")?,
                name,
                status: FamilyStatus::parse(&status)?,
                key_worker,
                members,
                notes,
                safeguarding_flags: flags,
                last_activity: parse_time(&last),
            });
        }
        Ok(out)
    }

    /// A whole family case file.
    /// A whole case file. The read is logged for the relay's audit (who
    /// saw which family, when), uploaded at the next sync.
    pub fn family(&self, id: DocumentId) -> Result<Family> {
        self.check_lease()?;
        let family = self.read(id, DocumentType::Family, "family", |doc| {
            family::read(doc, id)
        })?;
        self.log_read(id)?;
        Ok(family)
    }

    fn log_read(&self, id: DocumentId) -> Result<()> {
        let now = (self.clock)().to_rfc3339();
        self.with_writer_tx(|tx| {
            tx.execute(
                "INSERT INTO read_log (family_id, at) VALUES (?1, ?2)",
                params![id.to_string(), now],
            )?;
            Ok(())
        })
    }

    /// Reads logged since the last upload: (seq, family id, at), oldest first.
    pub(crate) fn pending_reads(&self, limit: usize) -> Result<Vec<(i64, String, String)>> {
        let conn = lock(&self.reader);
        let mut stmt =
            conn.prepare_cached("SELECT seq, family_id, at FROM read_log ORDER BY seq LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets reads up to `seq` once the relay has stored them.
    pub(crate) fn reads_uploaded(&self, seq: i64) -> Result<()> {
        self.with_writer_tx(|tx| {
            tx.execute("DELETE FROM read_log WHERE seq <= ?1", [seq])?;
            Ok(())
        })
    }

    pub fn add_member(&self, family_id: DocumentId, member: &NewMember) -> Result<String> {
        self.family_write(family_id, |doc, by| family::add_member(doc, member, by))
    }

    pub fn update_member(
        &self,
        family_id: DocumentId,
        member_id: &str,
        update: &MemberUpdate,
    ) -> Result<()> {
        self.family_write(family_id, |doc, by| {
            family::update_member(doc, member_id, update, by)
        })
    }

    /// Marks the member removed (kept in the case file, no longer listed):
    /// an entry is never deleted, so a removal cannot erase it on other devices.
    pub fn remove_member(&self, family_id: DocumentId, member_id: &str) -> Result<()> {
        self.family_write(family_id, |doc, by| {
            family::remove_member(doc, member_id, by)
        })
    }

    pub fn link_prisoner(&self, family_id: DocumentId, prisoner: &NewPrisoner) -> Result<String> {
        self.family_write(family_id, |doc, _| family::link_prisoner(doc, prisoner))
    }

    pub fn record_consent(&self, family_id: DocumentId, consent: &Consent) -> Result<()> {
        self.family_write(family_id, |doc, by| {
            family::record_consent(doc, consent, by)
        })
    }

    pub fn raise_safeguarding_flag(&self, family_id: DocumentId, text: &str) -> Result<String> {
        self.family_write(family_id, |doc, by| family::raise_flag(doc, text, by))
    }

    pub fn clear_safeguarding_flag(&self, family_id: DocumentId, flag_id: &str) -> Result<()> {
        self.family_write(family_id, |doc, by| family::clear_flag(doc, flag_id, by))
    }

    /// Adds a case note; when this returns the note is on disk.
    pub fn add_note(
        &self,
        family_id: DocumentId,
        text: &str,
        category: NoteCategory,
    ) -> Result<String> {
        self.family_write(family_id, |doc, by| {
            family::add_note(doc, text, category, by)
        })
    }

    /// Replaces a note's text; the old text stays in the note's history.
    pub fn edit_note(&self, family_id: DocumentId, note_id: &str, text: &str) -> Result<()> {
        self.family_write(family_id, |doc, by| {
            family::edit_note(doc, note_id, text, by)
        })
    }

    /// A family's notes, oldest first, with their edit history.
    pub fn notes(&self, family_id: DocumentId) -> Result<Vec<CaseNote>> {
        Ok(self.family(family_id)?.notes)
    }

    pub fn add_referral(&self, family_id: DocumentId, referral: &NewReferral) -> Result<String> {
        self.family_write(family_id, |doc, _| family::add_referral(doc, referral))
    }

    pub fn set_referral_outcome(
        &self,
        family_id: DocumentId,
        referral_id: &str,
        outcome: &str,
    ) -> Result<()> {
        self.family_write(family_id, |doc, _| {
            family::set_referral_outcome(doc, referral_id, outcome)
        })
    }

    /// Closes the case on `date` for `reason`.
    pub fn close_family(&self, family_id: DocumentId, date: NaiveDate, reason: &str) -> Result<()> {
        self.family_write(family_id, |doc, by| family::close(doc, date, reason, by))
    }

    pub fn reopen_family(&self, family_id: DocumentId) -> Result<()> {
        self.family_write(family_id, |doc, _| family::reopen(doc))
    }

    /// Full-text search over every note on the device (best matches first, at
    /// most 100). Words are matched as words, all of them required; a word
    /// ending in `*` matches as a prefix.
    pub fn search(&self, query: &str) -> Result<Vec<NoteHit>> {
        self.check_lease()?;
        let fts = fts_query(query)?;
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(
            "SELECT n.id, n.family_id, coalesce(f.name, ''), n.category, n.created_at,
                    snippet(notes_fts, 0, '[', ']', '…', 16)
             FROM notes_fts JOIN notes n ON n.seq = notes_fts.rowid
             LEFT JOIN families f ON f.id = n.family_id
             WHERE notes_fts MATCH ?1 ORDER BY rank LIMIT 100",
        )?;
        let rows = stmt.query_map([fts], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (note_id, family_id, family_name, category, created_at, snippet) = row?;
            out.push(NoteHit {
                note_id,
                family_id: DocumentId::parse(&family_id, "family id")?,
                family_name,
                category: NoteCategory::parse(&category).unwrap_or(NoteCategory::Other),
                created_at: parse_time(&created_at),
                snippet,
            });
        }
        Ok(out)
    }

    // ----- family days -----

    pub fn create_family_day(&self, new: &NewFamilyDay) -> Result<DocumentId> {
        self.check_lease()?;
        let dir = self.directory_id();
        self.write(|txn| {
            let id = DocumentId::random();
            let author = txn.author.clone();
            let doc = txn.create(id, DocumentType::FamilyDay, AutoCommit::new())?;
            family_day::create(doc, new, &author)?;
            let day = family_day::read(doc, id);
            directory::put_family_day(
                txn.doc_of(dir, DocumentType::TeamDirectory, "team directory")?,
                &day,
            )?;
            Ok(id)
        })
    }

    fn day_write(
        &self,
        day_id: DocumentId,
        family_id: DocumentId,
        f: impl FnOnce(&mut AutoCommit, &Author) -> Result<()>,
    ) -> Result<()> {
        self.check_lease()?;
        self.write(|txn| {
            if txn.kind_of(family_id)? != Some(DocumentType::Family) {
                return Err(Error::not_found("family", family_id));
            }
            let author = txn.author.clone();
            f(
                txn.doc_of(day_id, DocumentType::FamilyDay, "family day")?,
                &author,
            )
        })
    }

    pub fn book(
        &self,
        day_id: DocumentId,
        family_id: DocumentId,
        adults: u32,
        children: u32,
    ) -> Result<()> {
        self.day_write(day_id, family_id, |doc, by| {
            family_day::book(doc, family_id, adults, children, by)
        })
    }

    /// Checks a family in at a family day (again: corrects the head count).
    pub fn check_in(
        &self,
        day_id: DocumentId,
        family_id: DocumentId,
        adults: u32,
        children: u32,
    ) -> Result<Attendance> {
        self.day_write(day_id, family_id, |doc, by| {
            family_day::check_in(doc, family_id, adults, children, by)
        })?;
        self.family_day(day_id)?
            .attendance
            .into_iter()
            .find(|a| a.family_id == family_id)
            .ok_or_else(|| Error::not_found("attendance", family_id))
    }

    pub fn family_day(&self, id: DocumentId) -> Result<FamilyDay> {
        self.check_lease()?;
        self.read(id, DocumentType::FamilyDay, "family day", |doc| {
            family_day::read(doc, id)
        })
    }

    pub fn family_days(&self) -> Result<Vec<FamilyDaySummary>> {
        self.check_lease()?;
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(
            "SELECT id, prison, date, capacity, families, adults, children FROM family_days ORDER BY date, prison, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<u32>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, u32>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, prison, date, capacity, families, adults, children) = row?;
            out.push(FamilyDaySummary {
                id: DocumentId::parse(&id, "family day id")?,
                prison,
                date: date.parse().unwrap_or_default(),
                capacity,
                families_attended: families,
                adults,
                children,
            });
        }
        Ok(out)
    }

    // ----- conflicts -----

    /// Every field on the device that holds concurrent values.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        self.check_lease()?;
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(
            "SELECT doc_id, doc_type, path, doc_values FROM conflicts ORDER BY doc_id, path",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, path, values) = row?;
            // Rows of an older Linkbook lack worker and time: `None`
            // until `refresh_old_conflicts` projects them again.
            let values: Vec<ConflictValue> = serde_json::from_str(&values).unwrap_or_default();
            out.push(Conflict {
                document_id: DocumentId::parse(&id, "document id")?,
                document_type: DocumentType::parse(&kind).unwrap_or(DocumentType::Family),
                path,
                values,
            });
        }
        Ok(out)
    }

    /// Settles a conflict: writes `value` at `path`, replacing every
    /// concurrent value there.
    pub fn resolve_conflict(
        &self,
        document_id: DocumentId,
        path: &str,
        value: &serde_json::Value,
    ) -> Result<()> {
        self.check_lease()?;
        let dir = self.directory_id();
        self.write(|txn| {
            let author = txn.author.clone();
            let (doc, kind) = txn.doc(document_id, "document")?;
            conflicts::resolve(doc, path, value, &author)?;
            if kind == DocumentType::Family {
                let fam = family::summary(doc, document_id);
                directory::put_family(
                    txn.doc_of(dir, DocumentType::TeamDirectory, "team directory")?,
                    &fam,
                )?;
            }
            Ok(())
        })
    }

    // ----- replicas: export, import, changes -----

    /// Every document on the device, with its type.
    pub fn document_ids(&self) -> Result<Vec<(DocumentId, DocumentType)>> {
        documents::all(&lock(&self.reader))
    }

    /// Every document the team directory names, whether or not this device
    /// holds it yet (the sync client fetches the ones it lacks).
    pub fn directory_listing(&self) -> Result<Vec<DocumentId>> {
        let dir = self.directory_id();
        let purged = self.purged_ids()?;
        let mut listed = self.read(
            dir,
            DocumentType::TeamDirectory,
            "team directory",
            directory::listed,
        )?;
        listed.retain(|id| !purged.contains(id));
        Ok(listed)
    }

    /// Documents the office purged: deleted here and refused from now on.
    pub fn purged_ids(&self) -> Result<BTreeSet<DocumentId>> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT doc_id FROM purged")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = BTreeSet::new();
        for row in rows {
            out.insert(DocumentId::parse(&row?, "document id")?);
        }
        Ok(out)
    }

    /// Deletes the documents the office purged, with their history (SQLite
    /// `secure_delete` overwrites the freed pages), removes them from the team
    /// directory, and remembers them so that no replica, import or sync can
    /// bring them back. Local edits not yet synced go too: that is what an
    /// erasure is. Returns the ones newly purged on this device.
    pub(crate) fn apply_purges(&self, purged: &[(DocumentId, String)]) -> Result<Vec<DocumentId>> {
        let known = self.purged_ids()?;
        let dir = self.directory_id();
        let new: Vec<&(DocumentId, String)> = purged
            .iter()
            .filter(|(id, _)| !known.contains(id) && *id != dir)
            .collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|txn| {
            for (id, purged_at) in &new {
                if txn.exists(*id)? {
                    txn.delete(*id)?;
                }
                if txn.exists(dir)? {
                    directory::remove(
                        txn.doc_of(dir, DocumentType::TeamDirectory, "team directory")?,
                        *id,
                    )?;
                }
                txn.record_purge(*id, purged_at)?;
            }
            Ok(())
        })?;
        store::truncate_wal(&lock(&self.writer).conn)?;
        Ok(new.into_iter().map(|(id, _)| *id).collect())
    }

    /// The whole document, as Automerge `save()` bytes.
    pub fn save_document(&self, id: DocumentId) -> Result<Vec<u8>> {
        let device = lock(&self.profile).device_id.clone();
        let mut guard = lock(&self.writer);
        let Writer { conn, cache } = &mut *guard;
        let cached = cache
            .get(conn, id, &device)?
            .ok_or_else(|| Error::not_found("document", id))?;
        Ok(cached.doc.save())
    }

    /// The document's current heads (hex change hashes).
    pub fn heads(&self, id: DocumentId) -> Result<Vec<String>> {
        let device = lock(&self.profile).device_id.clone();
        let mut guard = lock(&self.writer);
        let Writer { conn, cache } = &mut *guard;
        let cached = cache
            .get(conn, id, &device)?
            .ok_or_else(|| Error::not_found("document", id))?;
        let mut heads: Vec<String> = cached
            .doc
            .get_heads()
            .iter()
            .map(|h| h.to_string())
            .collect();
        heads.sort();
        Ok(heads)
    }

    /// Every document of this device in one export file's bytes.
    pub fn export(&self) -> Result<Vec<u8>> {
        self.check_lease()?;
        let ids = self.document_ids()?;
        let mut docs = Vec::with_capacity(ids.len());
        for (id, _) in ids {
            docs.push(ExportedDocument {
                id,
                data: self.save_document(id)?,
            });
        }
        bundle::encode(&lock(&self.profile).team, docs)
    }

    /// Merges an export file's documents into this device, all or nothing.
    pub fn import(&self, bytes: &[u8]) -> Result<ImportSummary> {
        self.check_lease()?;
        let (team, docs) = bundle::decode(bytes)?;
        let (ours, directory) = {
            let p = lock(&self.profile);
            (p.team.clone(), p.directory_id)
        };
        if team != ours {
            return Err(Error::invalid(
                "import file",
                format!("it holds team '{team}' records; this device is in team '{ours}'"),
            ));
        }
        self.write(|txn| {
            let mut summary = ImportSummary::default();
            for d in docs {
                // Purged by the office after this file was made: not again.
                if txn.is_purged(d.id)? {
                    summary.documents_purged += 1;
                    continue;
                }
                match merge_bytes(txn, d.id, &d.data, &ours, directory)? {
                    Merged::New => summary.documents_new += 1,
                    Merged::Updated => summary.documents_updated += 1,
                    Merged::Unchanged => summary.documents_unchanged += 1,
                }
            }
            Ok(summary)
        })
    }

    pub fn export_to_file(&self, path: &Path) -> Result<usize> {
        let bytes = self.export()?;
        write_private_file(path, &bytes)?;
        Ok(self.document_ids()?.len())
    }

    pub fn import_from_file(&self, path: &Path) -> Result<ImportSummary> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            context: format!("could not read {}", path.display()),
            source: e,
        })?;
        self.import(&bytes)
    }

    /// Applies Automerge changes (or a whole saved document) from another
    /// replica to one document, creating it if the device does not have it.
    /// Returns whether anything changed.
    pub fn apply_changes(&self, id: DocumentId, changes: &[u8]) -> Result<bool> {
        let team = lock(&self.profile).team.clone();
        let directory = self.directory_id();
        self.write(|txn| {
            if txn.is_purged(id)? {
                return Err(Error::invalid(
                    "document",
                    format!("{id} was purged by the office"),
                ));
            }
            Ok(merge_bytes(txn, id, changes, &team, directory)? != Merged::Unchanged)
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Merged {
    New,
    Updated,
    Unchanged,
}

/// Loads `bytes` into document `id` (new or existing), checking that what
/// arrives is a complete Linkbook document of this team.
fn merge_bytes(
    txn: &mut WriteTxn<'_>,
    id: DocumentId,
    bytes: &[u8],
    team: &str,
    directory: DocumentId,
) -> Result<Merged> {
    let key = id.to_string();
    // Automerge 0.12 loads without limit: check the bytes first (budget.rs).
    crate::budget::check(bytes, &crate::budget::Budget::default())
        .map_err(|e| Error::InvalidDocument(format!("{key}: {e}")))?;
    if txn.exists(id)? {
        let (doc, _) = txn.doc(id, "document")?;
        let before = doc.get_heads();
        // A panic leaves the cached document half-changed: the error drops it.
        crate::protocol::catch_automerge_panic(|| doc.load_incremental(bytes))??;
        if !doc.get_missing_deps(&[]).is_empty() {
            return Err(Error::InvalidDocument(format!(
                "changes for {key} depend on changes this device does not have"
            )));
        }
        return Ok(if doc.get_heads() == before {
            Merged::Unchanged
        } else {
            Merged::Updated
        });
    }
    let mut doc = AutoCommit::new();
    crate::protocol::catch_automerge_panic(|| doc.load_incremental(bytes))??;
    if doc.get_heads().is_empty() || !doc.get_missing_deps(&[]).is_empty() {
        return Err(Error::InvalidDocument(format!(
            "{key} is incomplete: it needs earlier changes"
        )));
    }
    let kind = am::read_header(&doc, &key)?;
    let doc_team = am::get_str(&doc, &automerge::ROOT, "team").unwrap_or_default();
    if doc_team != team {
        return Err(Error::invalid(
            "document",
            format!("{key} belongs to another team"),
        ));
    }
    if kind == DocumentType::TeamDirectory && id != directory {
        return Err(Error::InvalidDocument(format!(
            "{key} is not this team's directory"
        )));
    }
    txn.create(id, kind, doc)?;
    Ok(Merged::New)
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

/// Turns what a worker typed into an FTS5 query: each word quoted (so
/// punctuation is never FTS syntax), all required, `word*` as a prefix.
fn fts_query(query: &str) -> Result<String> {
    let terms: Vec<String> = query
        .split_whitespace()
        .filter_map(|w| {
            let prefix = w.ends_with('*');
            let word: String = w
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'' || *c == '-')
                .collect();
            let word = word.replace(['\'', '-'], " ");
            let word = word.trim();
            (!word.is_empty()).then(|| format!("\"{word}\"{}", if prefix { "*" } else { "" }))
        })
        .collect();
    if terms.is_empty() {
        return Err(Error::invalid(
            "search query",
            "type at least one word to search for",
        ));
    }
    Ok(terms.join(" "))
}

/// Writes a file only its owner can read (an export holds every record).
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::Io {
        context: format!("could not write {}", path.display()),
        source: e,
    };
    let tmp = path.with_extension("partial");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
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

    #[test]
    fn fts_query_quotes_words() -> Result<()> {
        assert_eq!(fts_query("school  visit")?, "\"school\" \"visit\"");
        assert_eq!(fts_query("Tom's sch*")?, "\"Tom s\" \"sch\"*");
        assert_eq!(fts_query("\"OR\" NEAR(")?, "\"OR\" \"NEAR\"");
        assert!(fts_query("  ** ").is_err());
        Ok(())
    }
}
