//! Whole documents in and out: ids, heads, export and import bundles, and
//! raw Automerge changes merged under the door check.

use super::*;

impl Repo {
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
