//! The store side of a sync: the device's documents as the engine's
//! [`Replica`] (a peer's changes taken in one write transaction, behind the
//! check at the door), and the saved sync states per peer.

use automerge::AutoCommit;

use super::peer::{Replica, SavedState};
use crate::error::{Error, Result};
use crate::ids::DocumentId;
use crate::model::{DocumentType, am};
use crate::repo::{DeviceProfile, Repo};

/// The device's documents, for one sync.
pub(super) struct Store<'a> {
    repo: &'a Repo,
}

impl<'a> Store<'a> {
    pub(super) fn new(repo: &'a Repo) -> Self {
        Store { repo }
    }
}

impl Replica for Store<'_> {
    fn read<T>(
        &mut self,
        id: DocumentId,
        f: impl FnOnce(&mut AutoCommit) -> T,
    ) -> Result<Option<T>> {
        self.repo.with_doc(id, |doc, _| f(doc))
    }

    /// The door: a document new to this device must be a Linkbook type of
    /// this team (and a team directory this team's own); what the change
    /// brought is committed with its projections, or nothing is (the write
    /// transaction rolls back and drops the document from the cache).
    fn write(
        &mut self,
        id: DocumentId,
        apply: impl FnOnce(&mut AutoCommit) -> Result<()>,
    ) -> Result<bool> {
        let DeviceProfile {
            team,
            directory_id: directory,
            ..
        } = self.repo.profile();
        self.repo.write(|txn| {
            if txn.exists(id)? {
                let (doc, _) = txn.doc(id, "document")?;
                let before = doc.get_heads();
                apply(doc)?;
                return Ok(doc.get_heads() != before);
            }
            let mut doc = AutoCommit::new();
            apply(&mut doc)?;
            if doc.get_heads().is_empty() {
                return Ok(false);
            }
            let key = id.to_string();
            let kind = am::read_header(&doc, &key)?;
            if am::get_str(&doc, &automerge::ROOT, "team").as_deref() != Some(team.as_str()) {
                return Err(Error::InvalidDocument(format!(
                    "{key} belongs to another team"
                )));
            }
            if kind == DocumentType::TeamDirectory && id != directory {
                return Err(Error::InvalidDocument(format!(
                    "{key} is not this team's directory"
                )));
            }
            txn.create(id, kind, doc)?;
            Ok(true)
        })
    }

    fn sync_state(&mut self, peer: &str, id: DocumentId) -> Result<Option<Vec<u8>>> {
        self.repo.query_row_opt(
            "SELECT state FROM sync_states WHERE doc_id = ?1 AND peer_id = ?2",
            &[&id.to_string(), &peer],
        )
    }
}

impl Repo {
    /// Applies a sync message, committing what it brought before returning.
    #[cfg(test)]
    pub(crate) fn receive_sync_message(
        &self,
        id: DocumentId,
        state: &mut super::DocSync,
        message: automerge::sync::Message,
    ) -> Result<bool> {
        Store::new(self).write(id, |doc| super::peer::apply(doc, state, message))
    }

    /// Saves sync states; a document left in sync also records the version
    /// it was in sync at, so the next sync skips it unless it changes.
    pub(crate) fn save_sync_states(&self, peer: &str, states: &[SavedState]) -> Result<()> {
        if peer.is_empty() || states.is_empty() {
            return Ok(());
        }
        self.with_writer_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO sync_states (doc_id, peer_id, state, doc_version)
                 VALUES (?1, ?2, ?3, CASE WHEN ?4 THEN coalesce((SELECT version FROM documents WHERE id = ?1), -1) ELSE -1 END)
                 ON CONFLICT(doc_id, peer_id) DO UPDATE SET state = excluded.state, doc_version = excluded.doc_version",
            )?;
            for s in states {
                stmt.execute(rusqlite::params![s.id.to_string(), peer, s.state, s.in_sync])?;
            }
            Ok(())
        })
    }

    /// Documents changed on this device since they were last in sync with
    /// `peer` (or never synced with it).
    pub(crate) fn changed_since_sync(&self, peer: &str) -> Result<Vec<DocumentId>> {
        self.with_writer_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT d.id FROM documents d
                 LEFT JOIN sync_states s ON s.doc_id = d.id AND s.peer_id = ?1
                 WHERE s.doc_id IS NULL OR s.doc_version != d.version",
            )?;
            let ids = stmt.query_map([peer], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for id in ids {
                out.push(DocumentId::parse(&id?, "document id")?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Author, family};
    use crate::{DatabaseKey, NewFamily, NoteCategory};
    use automerge::sync;

    pub(super) fn with_changes(
        heads: Vec<automerge::ChangeHash>,
        changes: Vec<u8>,
    ) -> sync::Message {
        sync::Message {
            heads,
            need: vec![],
            have: vec![],
            changes: changes.into(),
            flags: None,
            version: sync::MessageVersion::V1,
        }
    }

    /// A change that arrives before its dependency waits in the document's
    /// queue, in memory only; the relay will not send it again this session.
    /// The document cache must not drop it while the session touches more
    /// documents than the cache holds (the office-sync benchmark livelocked
    /// on exactly that: the device asked for the change forever).
    #[test]
    pub(super) fn a_change_waiting_for_its_dependency_survives_cache_eviction() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let repo = Repo::open(dir.path().join("device.db"), &DatabaseKey::generate())?;
        let family_id = repo.add_family(&NewFamily {
            name: "Smith".into(),
            ..Default::default()
        })?;
        // Another replica writes two notes, the second depending on the first.
        let mut other = AutoCommit::load(&repo.save_document(family_id)?)?
            .with_actor(automerge::ActorId::random());
        let author = Author {
            device_id: uuid::Uuid::new_v4().to_string(),
            worker: "Jo".into(),
            team: repo.profile().team,
            now: chrono::Utc::now(),
        };
        let h0 = other.get_heads();
        family::add_note(&mut other, "first", NoteCategory::Visit, &author)?;
        other.commit();
        let first = other.save_after(&h0);
        let h1 = other.get_heads();
        family::add_note(&mut other, "second", NoteCategory::Visit, &author)?;
        other.commit();
        let second = other.save_after(&h1);

        let mut state = super::super::DocSync::default();
        let changed = repo.receive_sync_message(
            family_id,
            &mut state,
            with_changes(other.get_heads(), second),
        )?;
        assert!(!changed, "the second note cannot apply before the first");
        // The session goes on to other documents, more than the cache holds.
        let others = (0..2 * crate::store::documents::CACHE_DOCS)
            .map(|i| {
                repo.add_family(&NewFamily {
                    name: format!("Family {i}"),
                    ..Default::default()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for id in others {
            repo.heads(id)?;
        }
        let changed = repo.receive_sync_message(
            family_id,
            &mut state,
            with_changes(other.get_heads(), first),
        )?;
        assert!(changed);
        let mut texts: Vec<String> = repo.notes(family_id)?.into_iter().map(|n| n.text).collect();
        texts.sort();
        assert_eq!(texts, ["first", "second"]);
        assert_eq!(repo.heads(family_id)?.len(), 1);
        Ok(())
    }
}
