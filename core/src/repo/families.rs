//! Families and their case files: members, prisoners, consent,
//! safeguarding flags, notes, referrals, the read log and note search.

use super::*;

impl Repo {
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
    pub(super) fn family_write<T>(
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

    pub(super) fn log_read(&self, id: DocumentId) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_query_quotes_words() -> Result<()> {
        assert_eq!(fts_query("school  visit")?, "\"school\" \"visit\"");
        assert_eq!(fts_query("Tom's sch*")?, "\"Tom s\" \"sch\"*");
        assert_eq!(fts_query("\"OR\" NEAR(")?, "\"OR\" \"NEAR\"");
        assert!(fts_query("  ** ").is_err());
        Ok(())
    }
}
