//! A real SQLite relay store in a temporary directory, and documents to
//! put in it, for the admin unit tests.
#![allow(clippy::expect_used)]

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT};
use chrono::Utc;
use linkbook_core::DocumentId;

use crate::storage::{DocumentStore, SqliteStorage, Storage, Team, Upload};

pub struct Relay {
    _dir: tempfile::TempDir,
    storage: SqliteStorage,
}

impl Relay {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = SqliteStorage::open(&dir.path().join("relay.db")).expect("open");
        Relay { _dir: dir, storage }
    }

    pub fn storage(&self) -> &dyn Storage {
        &self.storage
    }

    /// Stores `bytes` as a new document of `team`; returns its id.
    pub fn store(&self, team: &str, bytes: &[u8]) -> DocumentId {
        let id = DocumentId::from_bytes(rand::random());
        self.store_as(team, id, bytes);
        id
    }

    pub fn store_as(&self, team: &str, id: DocumentId, bytes: &[u8]) {
        let team = Team::from(team);
        let upload = Upload {
            team: &team,
            doc_id: id,
            uploader: "device-1",
            changes: bytes,
            snapshot: Some(bytes),
            audit: &[],
            at: Utc::now(),
        };
        futures_util::FutureExt::now_or_never(self.storage.commit_upload(&upload))
            .expect("SQLite answers at once")
            .expect("store");
    }
}

/// A family case file naming `name`; closed on `closed` if given.
pub fn family(name: &str, closed: Option<&str>) -> Vec<u8> {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "type", "family").expect("put");
    let members = doc
        .put_object(ROOT, "members", ObjType::Map)
        .expect("members");
    let member = doc
        .put_object(&members, "m1", ObjType::Map)
        .expect("member");
    doc.put(&member, "name", name).expect("name");
    match closed {
        Some(date) => {
            doc.put(ROOT, "status", "closed").expect("status");
            let closure = doc
                .put_object(ROOT, "closure", ObjType::Map)
                .expect("closure");
            doc.put(&closure, "date", date).expect("date");
        }
        None => doc.put(ROOT, "status", "open").expect("status"),
    }
    doc.save()
}

/// A document of another type (a team directory).
pub fn directory() -> Vec<u8> {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "type", "directory").expect("put");
    doc.save()
}
