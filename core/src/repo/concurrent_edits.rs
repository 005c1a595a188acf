//! Concurrent edits of one field on two devices, and their resolution.

use super::*;

impl Repo {
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
}
