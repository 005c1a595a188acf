//! Helpers shared by the core's integration tests.
#![allow(dead_code)]

use linkbook_core::{DatabaseKey, DocumentId, Repo, Result};
use tempfile::TempDir;

#[allow(missing_debug_implementations)]
pub struct Device {
    pub repo: Repo,
    pub key: DatabaseKey,
    pub dir: TempDir,
}

pub fn device(worker: &str) -> Device {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = DatabaseKey::generate();
    let repo = Repo::open(dir.path().join("linkbook.db"), &key).expect("open repo");
    repo.set_worker(worker).expect("set worker");
    Device { repo, key, dir }
}

/// Copies every document `from` holds into `to` (a sync by hand).
pub fn sync_into(from: &Repo, to: &Repo) -> Result<()> {
    to.import(&from.export()?)?;
    Ok(())
}

/// Copies one document.
pub fn send_doc(from: &Repo, to: &Repo, id: DocumentId) -> Result<()> {
    to.apply_changes(id, &from.save_document(id)?)?;
    Ok(())
}
