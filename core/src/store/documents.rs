//! Documents at rest: snapshot + appended changes, loaded on demand into a
//! small cache, written only through [`WriteTxn`], which commits every
//! document's new changes and its projections in one SQLite transaction.

use std::collections::{HashMap, HashSet};

use automerge::{AutoCommit, ChangeHash, transaction::CommitOptions};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::projection;
use crate::error::{Error, Result};
use crate::ids::DocumentId;
use crate::model::{Author, DocumentType, am};

/// Changes appended before a document is compacted into a new snapshot.
pub(crate) const COMPACT_AFTER: i64 = 64;
/// Documents kept loaded; a caseload of hundreds is read from projections.
pub(crate) const CACHE_DOCS: usize = 32;
/// The cache version of a document created by the open transaction.
const NOT_STORED: i64 = 0;

pub(crate) struct Cached {
    pub doc: AutoCommit,
    pub kind: DocumentType,
    version: i64,
    last_used: u64,
}

/// Loaded documents, each tagged with the row version it was loaded at so a
/// write by another process (a second CLI) is noticed and reloaded.
pub(crate) struct DocCache {
    /// This opened store's own actor suffix (see [`session_actor`]): chosen
    /// when the store is opened, so two copies of one device's data never
    /// write under the same actor.
    session: [u8; SESSION_BYTES],
    docs: HashMap<DocumentId, Cached>,
    tick: u64,
    /// Documents the open write transaction touched or created: never
    /// evicted until it ends (their changes are not on disk yet), and ones it
    /// created are found before they have a row.
    pinned: HashSet<DocumentId>,
}

impl std::fmt::Debug for DocCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DocCache({} documents)", self.docs.len())
    }
}

impl Default for DocCache {
    fn default() -> Self {
        DocCache {
            session: rand::random(),
            docs: HashMap::new(),
            tick: 0,
            pinned: HashSet::new(),
        }
    }
}

impl DocCache {
    /// The actor this opened store writes with for `device_id`.
    pub(crate) fn actor(&self, device_id: &str) -> automerge::ActorId {
        session_actor(device_id, &self.session)
    }

    pub(crate) fn evict(&mut self, id: &DocumentId) {
        self.docs.remove(id);
    }

    /// Evicts the least recently used documents, but never one holding
    /// received changes that wait for their dependencies: those exist only
    /// in memory (nothing was committed), and the peer that sent them will
    /// not send them again in this session (automerge's `sent_hashes`).
    /// Dropping them made a device and the relay exchange the same `need`
    /// forever (found by the office-sync benchmark).
    fn make_room(&mut self) {
        while self.docs.len() >= CACHE_DOCS {
            let Some(oldest) = self
                .docs
                .iter()
                .filter(|(id, _)| !self.pinned.contains(id))
                .filter(|(_, c)| automerge::ReadDoc::get_missing_deps(&c.doc, &[]).is_empty())
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| *k)
            else {
                return;
            };
            self.docs.remove(&oldest);
        }
    }

    /// The document, loaded or revalidated against the database.
    pub(crate) fn get(
        &mut self,
        conn: &Connection,
        id: DocumentId,
        device_id: &str,
    ) -> Result<Option<&mut Cached>> {
        let actor = self.actor(device_id);
        let key = id.to_string();
        let row: Option<(String, i64)> = conn
            .query_row(
                "SELECT doc_type, version FROM documents WHERE id = ?1",
                [&key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let version = match row {
            Some((_, version)) => version,
            // Created by the open transaction: no row until it commits.
            None if self.pinned.contains(&id) && self.docs.contains_key(&id) => NOT_STORED,
            None => {
                self.docs.remove(&id);
                return Ok(None);
            }
        };
        let fresh = self.docs.get(&id).is_some_and(|c| c.version == version);
        if !fresh {
            self.make_room();
            let (doc, kind) = load(conn, id)?;
            let mut doc = doc;
            doc.set_actor(actor.clone());
            self.docs.insert(
                id,
                Cached {
                    doc,
                    kind,
                    version,
                    last_used: 0,
                },
            );
        }
        self.tick += 1;
        let tick = self.tick;
        let cached = self.docs.get_mut(&id);
        if let Some(c) = cached {
            c.last_used = tick;
            // The device id changes at enrolment: a cached document follows.
            if fresh && c.doc.get_actor() != &actor {
                c.doc.set_actor(actor);
            }
            return Ok(Some(c));
        }
        Ok(None)
    }
}

/// Reads a document from its snapshot and later changes.
pub(crate) fn load(conn: &Connection, id: DocumentId) -> Result<(AutoCommit, DocumentType)> {
    let key = id.to_string();
    let snapshot: Vec<u8> = conn
        .query_row(
            "SELECT snapshot FROM documents WHERE id = ?1",
            [&key],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| Error::not_found("document", id))?;
    let mut doc = crate::protocol::catch_automerge_panic(|| AutoCommit::load(&snapshot))??;
    let mut stmt =
        conn.prepare_cached("SELECT data FROM changes WHERE doc_id = ?1 ORDER BY seq")?;
    let mut rows = stmt.query([&key])?;
    // All the changes since the snapshot in one call: Automerge applies a
    // batch at once, where one call per change re-sorted its ops each time
    // (most of a sync's device CPU in the office-sync benchmark).
    let mut changes = Vec::new();
    while let Some(row) = rows.next()? {
        changes.extend_from_slice(row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?);
    }
    if !changes.is_empty() {
        crate::protocol::catch_automerge_panic(|| doc.load_incremental(&changes))??;
    }
    let kind = am::read_header(&doc, &key)?;
    Ok((doc, kind))
}

/// Every document id on the device, with its type.
pub(crate) fn all(conn: &Connection) -> Result<Vec<(DocumentId, DocumentType)>> {
    let mut stmt = conn.prepare_cached("SELECT id, doc_type FROM documents ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, kind) = row?;
        let id = DocumentId::parse(&id, "document id")?;
        let kind = DocumentType::parse(&kind)
            .ok_or_else(|| Error::InvalidDocument(format!("stored type '{kind}'")))?;
        out.push((id, kind));
    }
    Ok(out)
}

struct Touched {
    id: DocumentId,
    /// Heads before this transaction; `None` for a document it created.
    heads_before: Option<Vec<ChangeHash>>,
}

/// One atomic write over one or more documents. Nothing reaches the database
/// (or stays in the cache) unless [`WriteTxn::commit`] succeeds.
pub(crate) struct WriteTxn<'a> {
    tx: Transaction<'a>,
    cache: &'a mut DocCache,
    pub author: Author,
    actor: automerge::ActorId,
    touched: Vec<Touched>,
}

impl<'a> WriteTxn<'a> {
    pub(crate) fn begin(
        conn: &'a mut Connection,
        cache: &'a mut DocCache,
        author: Author,
    ) -> Result<Self> {
        let actor = cache.actor(&author.device_id);
        // A transaction that never ended (a panic inside it) left its
        // documents pinned, possibly with uncommitted changes: drop them.
        for id in std::mem::take(&mut cache.pinned) {
            cache.docs.remove(&id);
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(WriteTxn {
            tx,
            cache,
            author,
            actor,
            touched: Vec::new(),
        })
    }

    /// Whether the device holds this document.
    pub(crate) fn exists(&self, id: DocumentId) -> Result<bool> {
        Ok(self.kind_of(id)?.is_some())
    }

    /// The type of a document the device holds.
    pub(crate) fn kind_of(&self, id: DocumentId) -> Result<Option<DocumentType>> {
        let kind: Option<String> = self
            .tx
            .query_row(
                "SELECT doc_type FROM documents WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(kind.as_deref().and_then(DocumentType::parse))
    }

    /// The document, to change; `what` names it in a not-found error.
    pub(crate) fn doc(
        &mut self,
        id: DocumentId,
        what: &'static str,
    ) -> Result<(&mut AutoCommit, DocumentType)> {
        self.cache.pinned.insert(id);
        let cached = self
            .cache
            .get(&self.tx, id, &self.author.device_id)?
            .ok_or_else(|| Error::not_found(what, id))?;
        if !self.touched.iter().any(|t| t.id == id) {
            let heads = cached.doc.get_heads();
            self.touched.push(Touched {
                id,
                heads_before: Some(heads),
            });
        }
        Ok((&mut cached.doc, cached.kind))
    }

    /// The document, which must be of type `kind`.
    pub(crate) fn doc_of(
        &mut self,
        id: DocumentId,
        kind: DocumentType,
        what: &'static str,
    ) -> Result<&mut AutoCommit> {
        let (doc, actual) = self.doc(id, what)?;
        if actual != kind {
            return Err(Error::not_found(what, id));
        }
        Ok(doc)
    }

    /// Whether the office purged this document (it must not come back).
    pub(crate) fn is_purged(&self, id: DocumentId) -> Result<bool> {
        Ok(self
            .tx
            .query_row(
                "SELECT 1 FROM purged WHERE doc_id = ?1",
                [id.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Remembers that the office purged `id` at `purged_at`.
    pub(crate) fn record_purge(&mut self, id: DocumentId, purged_at: &str) -> Result<()> {
        self.tx.execute(
            "INSERT OR IGNORE INTO purged (doc_id, purged_at) VALUES (?1, ?2)",
            params![id.to_string(), purged_at],
        )?;
        Ok(())
    }

    /// Removes a document, its changes, projections, sync states and the
    /// reads of it not yet uploaded. With `secure_delete` and the FTS index's
    /// `secure-delete` (schema 7) no term or row of it stays in a page; the
    /// caller truncates the WAL after the commit (`store::truncate_wal`).
    pub(crate) fn delete(&mut self, id: DocumentId) -> Result<()> {
        let key = id.to_string();
        for sql in [
            "DELETE FROM read_log WHERE family_id = ?1",
            "DELETE FROM changes WHERE doc_id = ?1",
            "DELETE FROM documents WHERE id = ?1",
            "DELETE FROM sync_states WHERE doc_id = ?1",
            "DELETE FROM conflicts WHERE doc_id = ?1",
            "DELETE FROM notes WHERE family_id = ?1",
            "DELETE FROM families WHERE id = ?1",
            "DELETE FROM family_days WHERE id = ?1",
            "DELETE FROM skipped_documents WHERE doc_id = ?1",
        ] {
            self.tx.execute(sql, [&key])?;
        }
        self.touched.retain(|t| t.id != id);
        self.cache.evict(&id);
        Ok(())
    }

    /// Adds a new document (its content may still be uncommitted).
    pub(crate) fn create(
        &mut self,
        id: DocumentId,
        kind: DocumentType,
        mut doc: AutoCommit,
    ) -> Result<&mut AutoCommit> {
        if self.exists(id)? {
            return Err(Error::invalid(
                "document id",
                format!("document {id} already exists"),
            ));
        }
        doc.set_actor(self.actor.clone());
        self.cache.make_room();
        self.cache.pinned.insert(id);
        self.cache.docs.insert(
            id,
            Cached {
                doc,
                kind,
                version: NOT_STORED,
                last_used: 0,
            },
        );
        self.touched.push(Touched {
            id,
            heads_before: None,
        });
        self.cache
            .docs
            .get_mut(&id)
            .map(|c| &mut c.doc)
            .ok_or_else(|| Error::not_found("document", id))
    }

    /// Commits every touched document's new changes, the projections and the
    /// SQLite transaction. On any failure the touched documents are dropped
    /// from the cache and reloaded from disk next time.
    pub(crate) fn commit(mut self) -> Result<()> {
        let ids: Vec<DocumentId> = self.touched.iter().map(|t| t.id).collect();
        match self.write_all() {
            Ok(versions) => match self.tx.commit() {
                Ok(()) => {
                    self.cache.pinned.clear();
                    for (id, v) in versions {
                        if let Some(c) = self.cache.docs.get_mut(&id) {
                            c.version = v;
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    self.cache.pinned.clear();
                    ids.iter().for_each(|id| self.cache.evict(id));
                    Err(e.into())
                }
            },
            Err(e) => {
                self.cache.pinned.clear();
                ids.iter().for_each(|id| self.cache.evict(id));
                Err(e)
            }
        }
    }

    /// Drops whatever the transaction changed in memory.
    pub(crate) fn abort(self) {
        self.cache.pinned.clear();
        for t in &self.touched {
            self.cache.evict(&t.id);
        }
    }

    fn write_all(&mut self) -> Result<Vec<(DocumentId, i64)>> {
        let time = self.author.now.timestamp_millis();
        let message = am::change_message(&self.author.worker);
        let mut versions = Vec::new();
        for t in &self.touched {
            let key = t.id.to_string();
            let cached = self
                .cache
                .docs
                .get_mut(&t.id)
                .ok_or_else(|| Error::not_found("document", t.id))?;
            // The worker's name goes with every change, so a conflict can
            // name who wrote each value on any device it reaches; the team
            // directory holds no names (directory.rs), not even this one.
            cached
                .doc
                .commit_with(if cached.kind == DocumentType::TeamDirectory {
                    CommitOptions::default().with_time(time)
                } else {
                    CommitOptions::default()
                        .with_time(time)
                        .with_message(message.clone())
                });
            // Checked after every write, so a refused shape never reaches disk.
            let kind = am::read_header(&cached.doc, &key)?;
            if kind != cached.kind {
                return Err(Error::InvalidDocument(format!(
                    "document {key} changed its type"
                )));
            }
            let version = match &t.heads_before {
                None => {
                    let snapshot = cached.doc.save();
                    self.tx.execute(
                        "INSERT INTO documents (id, doc_type, snapshot, version, change_count) VALUES (?1, ?2, ?3, 1, 0)",
                        params![key, kind.as_str(), snapshot],
                    )?;
                    1
                }
                Some(before) => {
                    let bytes = cached.doc.save_after(before);
                    if bytes.is_empty() {
                        continue;
                    }
                    self.tx.execute(
                        "INSERT INTO changes (doc_id, data) VALUES (?1, ?2)",
                        params![key, bytes],
                    )?;
                    let (version, count): (i64, i64) = self.tx.query_row(
                        "UPDATE documents SET version = version + 1, change_count = change_count + 1
                         WHERE id = ?1 RETURNING version, change_count",
                        [&key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    if count >= COMPACT_AFTER {
                        let snapshot = cached.doc.save();
                        self.tx.execute(
                            "UPDATE documents SET snapshot = ?2, change_count = 0 WHERE id = ?1",
                            params![key, snapshot],
                        )?;
                        self.tx
                            .execute("DELETE FROM changes WHERE doc_id = ?1", [&key])?;
                    }
                    version
                }
            };
            projection::project(&self.tx, t.id, kind, &cached.doc)?;
            versions.push((t.id, version));
        }
        Ok(versions)
    }
}

/// Random bytes after the device id in an actor: 8 bytes make two opened
/// stores of one device collide with odds of 2^-64 per pair, and keep each
/// new entry in a document's actor table at 24 bytes (docs/adr/0007).
pub(crate) const SESSION_BYTES: usize = 8;

/// An Automerge actor id: the device id's 16 bytes, so any op names the
/// device that wrote it with no look-up, then `session`, chosen each time a
/// store is opened. A copy of a device's data directory (a restored phone
/// backup, a copied CLI profile, a VM snapshot) then never continues the
/// same actor's sequence with different changes, which Automerge refuses
/// (`DuplicateSeqNumber`) on every peer that has the other copy's.
pub(crate) fn session_actor(device_id: &str, session: &[u8]) -> automerge::ActorId {
    let mut bytes = match uuid::Uuid::parse_str(device_id) {
        Ok(u) => u.as_bytes().to_vec(),
        Err(_) => device_id.as_bytes().to_vec(),
    };
    bytes.extend_from_slice(session);
    automerge::ActorId::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Author, NewFamily, NoteCategory, family};

    /// A family of `notes` notes written by `sessions` opened stores of one
    /// device (each its own actor), saved: (bytes, load time).
    fn family_by_sessions(notes: usize, sessions: usize) -> (usize, std::time::Duration) {
        let device = uuid::Uuid::new_v4().hyphenated().to_string();
        let by = Author {
            device_id: device.clone(),
            worker: "Asha".into(),
            team: "north".into(),
            now: chrono::Utc::now(),
        };
        let mut doc =
            AutoCommit::new().with_actor(session_actor(&device, &rand::random::<[u8; 8]>()));
        family::create(
            &mut doc,
            &NewFamily {
                name: "Smith".into(),
                ..Default::default()
            },
            &by,
        )
        .expect("family");
        doc.commit();
        for i in 0..notes {
            if i % (notes / sessions).max(1) == 0 {
                doc.set_actor(session_actor(
                    &device,
                    &rand::random::<[u8; SESSION_BYTES]>(),
                ));
            }
            family::add_note(
                &mut doc,
                &format!("note {i}: a home visit, all well"),
                NoteCategory::Visit,
                &by,
            )
            .expect("note");
            doc.commit_with(CommitOptions::default().with_message(am::change_message("Asha")));
        }
        let bytes = doc.save();
        let start = std::time::Instant::now();
        AutoCommit::load(&bytes).expect("load");
        (bytes.len(), start.elapsed())
    }

    /// What one actor per opened store costs (docs/adr/0007): printed.
    #[test]
    fn an_actor_per_opened_store_costs_bytes_per_session() {
        let (one, one_load) = family_by_sessions(1_000, 1);
        let (daily, daily_load) = family_by_sessions(1_000, 100);
        let (every, every_load) = family_by_sessions(1_000, 1_000);
        println!(
            "1,000 notes: 1 session {one} B (load {one_load:?}), 100 sessions {daily} B ({daily_load:?}), \
             1,000 sessions {every} B ({every_load:?}); +{} B per session",
            (every - one) / 999
        );
        assert!(every < one * 3, "{one} vs {every}");
    }

    #[test]
    fn actors_start_with_the_device_and_differ_per_session() {
        let device = "0b3e0d4c-5a8f-4f3e-9a57-2f7f2f1b9a11";
        let (a, b) = (DocCache::default(), DocCache::default());
        assert_ne!(a.actor(device), b.actor(device));
        for actor in [a.actor(device), b.actor(device)] {
            assert_eq!(actor.to_bytes().len(), 16 + SESSION_BYTES);
            assert_eq!(am::device_of(&actor), device);
        }
        // Actors written before (the device id alone) still read as the device.
        let old = automerge::ActorId::from(
            uuid::Uuid::parse_str(device)
                .expect("uuid")
                .as_bytes()
                .as_slice(),
        );
        assert_eq!(am::device_of(&old), device);
    }
}
