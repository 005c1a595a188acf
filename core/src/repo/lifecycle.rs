//! The device's life with its team: the offline lease, the team policy and
//! its retention drop, purges from the office, wipe on revocation and
//! rehoming to another team.

use super::*;

impl Repo {
    /// Refuses access to records once this device has gone longer without
    /// syncing than its team's offline lease allows (a tablet lost in a
    /// prison locks itself); syncing unlocks it.
    pub(super) fn check_lease(&self) -> Result<()> {
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
    /// The device is left as a new one is, unenrolled in the local team
    /// (found by the simulation: it used to keep its old team and the id of
    /// the directory it had just deleted, so every later write failed with
    /// "team directory not found").
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
        self.rehome(LOCAL_TEAM, None)?;
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
        if old_team != team {
            // A relay's change cursor counts one team's changes (per team
            // on PostgreSQL): kept, it could pass over the new team's older
            // documents.
            self.with_writer_tx(|tx| {
                tx.execute("DELETE FROM profile WHERE key LIKE 'relay_cursor:%'", [])?;
                Ok(())
            })?;
        }
        self.set_profile_values(&[
            ("team", team.as_str()),
            ("directory_id", &new_dir.to_string()),
        ])
    }

    pub(super) fn ensure_directory(&self) -> Result<()> {
        let id = self.directory_id();
        let team = lock(&self.profile).team.clone();
        self.write(|txn| {
            if !txn.exists(id)? {
                txn.create(id, DocumentType::TeamDirectory, directory::genesis(&team)?)?;
            }
            Ok(())
        })
    }

    pub(super) fn rebuild_projections(&self) -> Result<()> {
        let mut guard = lock(&self.writer);
        let tx = guard.conn.transaction()?;
        for (id, _) in documents::all(&tx)? {
            let (doc, kind) = documents::load(&tx, id)?;
            projection::project(&tx, id, kind, &doc)?;
        }
        tx.commit()?;
        Ok(())
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
}
