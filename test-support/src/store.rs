//! Device stores for tests and benchmarks: [`Device`], an opened `Repo` in
//! its own temp directory with a known key (dropped with it), and [`Store`],
//! a closed store in a directory of the caller's (reopened, copied as a new
//! device, measured); plus syncs by hand between two repos.

use std::path::{Path, PathBuf};

use linkbook_core::{DatabaseKey, DocumentId, Repo};
use tempfile::TempDir;

use crate::Result;
use crate::relay::Relay;

/// A Linkbook device store (core `Repo`) in its own temp directory, opened
/// with a known key (erasure tests decrypt its pages; reopening tests drop
/// `repo` and open `dir` again with `key`).
#[derive(Debug)]
pub struct Device {
    pub repo: Repo,
    pub key: DatabaseKey,
    pub dir: TempDir,
}

impl Device {
    /// A new, unenrolled device with a fresh key and no worker set.
    pub fn new() -> Device {
        Device::in_dir(tempfile::tempdir().expect("device dir"))
    }

    /// A new, unenrolled device with a fresh key in `dir` (dropped with it).
    pub fn in_dir(dir: TempDir) -> Device {
        let key = DatabaseKey::generate();
        let repo = Repo::open(dir.path().join("linkbook.db"), &key).expect("open device store");
        Device { repo, key, dir }
    }

    /// A new device whose profile names `worker`.
    pub fn of_worker(worker: &str) -> Device {
        let d = Device::new();
        d.repo.set_worker(worker).expect("set worker");
        d
    }

    /// A new device enrolled with `relay` as `worker` of `team`, through the
    /// relay's real enrolment (a one-time code exchanged for a token).
    pub fn enrolled(relay: &Relay, team: &str, worker: &str) -> Device {
        let d = Device::new();
        let code = relay.enrol_code(team, worker);
        let e = d
            .repo
            .enrol(
                &relay.url,
                &code,
                Some(&relay.ca_pem()),
                &format!("{worker}'s tablet"),
            )
            .expect("enrol");
        assert_eq!(e.team, team);
        d
    }
}

impl Default for Device {
    fn default() -> Self {
        Device::new()
    }
}

impl std::ops::Deref for Device {
    type Target = Repo;
    fn deref(&self) -> &Repo {
        &self.repo
    }
}

/// A new device whose profile names `worker` (see [`Device::of_worker`]).
pub fn device(worker: &str) -> Device {
    Device::of_worker(worker)
}

/// Copies every document `from` holds into `to` (a sync by hand).
pub fn sync_into(from: &Repo, to: &Repo) -> linkbook_core::Result<()> {
    to.import(&from.export()?)?;
    Ok(())
}

/// Copies one document.
pub fn send_doc(from: &Repo, to: &Repo, id: DocumentId) -> linkbook_core::Result<()> {
    to.apply_changes(id, &from.save_document(id)?)?;
    Ok(())
}

/// A device store: an encrypted SQLite file in its own directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    pub key: DatabaseKey,
}

impl Store {
    pub fn new(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| format!("store dir: {e}"))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            key: DatabaseKey::generate(),
        })
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("linkbook.db")
    }

    pub fn open(&self) -> Result<Repo> {
        Ok(Repo::open(self.db(), &self.key)?)
    }

    /// A copy of this (closed) store in `dir` that is a different device:
    /// a fresh device id (its Automerge actor), everything else the same,
    /// as if it had synced the same documents before going offline.
    pub fn clone_as_new_device(&self, dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| format!("clone dir: {e}"))?;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| format!("read dir: {e}"))? {
            let entry = entry.map_err(|e| format!("read dir: {e}"))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("linkbook.db") {
                std::fs::copy(entry.path(), dir.join(&name))
                    .map_err(|e| format!("copying the store: {e}"))?;
            }
        }
        let store = Store {
            dir: dir.to_path_buf(),
            key: self.key.clone(),
        };
        let conn = rusqlite::Connection::open(store.db())?;
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", store.key.to_hex()))?;
        conn.execute(
            "UPDATE profile SET value = ?1 WHERE key = 'device_id'",
            [uuid::Uuid::new_v4().hyphenated().to_string()],
        )?;
        Ok(store)
    }

    /// Bytes on disk (database, WAL).
    pub fn size(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}
