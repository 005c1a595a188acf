//! Backups and restore of the embedded database (issue 14; docs/adr/0013).
//!
//! [`backup`] copies `relay.db` while the relay serves: `VACUUM INTO` on a
//! connection of its own is one read transaction (WAL: writers go on), so
//! the copy is one consistent state, and SQLCipher writes it encrypted with
//! the source's key (checked: the copy opens with the key and holds no
//! plaintext, `tests/tests/backup.rs`). It also leaves freed pages behind,
//! so a purged family's zeroed pages are not even copied. The copy is made
//! in a temporary 0600 file beside FILE, fsynced, checked, then linked into
//! place (hard link: an existing FILE is never replaced unless `--force`,
//! then renamed over it). The time is recorded in the database
//! (`relay_meta.last_backup_at`) for the `linkbook_backup_age_seconds`
//! gauge.
//!
//! [`restore`] puts a backup in place of a stopped relay's database (the
//! caller holds the data directory's lock): the file is copied beside
//! `relay.db`, opened with the key and checked to be a relay database
//! before anything is replaced; the copy is migrated, then [`after_restore`]:
//! given a new store id (devices key their sync states and change cursor by
//! it, so each device sends everything again: notes the backup lacks come
//! back), stripped of the relay's own sync states and its backup time, and
//! the erasure ledger replayed onto it; only then is it renamed over
//! `relay.db`. On PostgreSQL the database's own tools restore, and
//! `linkbook-server after-restore` does the rest.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use linkbook_core::DatabaseKey;

use crate::at_rest::{self, KeySource};
use crate::erasure_ledger::{self, ErasureLedger, Replayed};
use crate::error::{Error, Result};
use crate::storage::{DeviceStore, SqliteStorage, Storage};

/// What a backup wrote.
#[derive(Debug, Clone)]
pub struct BackedUp {
    pub file: PathBuf,
    pub bytes: u64,
    pub at: DateTime<Utc>,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The restored store's new id.
    pub store_id: String,
    /// Documents the backup held.
    pub documents: usize,
    pub replayed: Replayed,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Backs the database in `data` up to `file` (see the module doc).
pub fn backup(data: &Path, key: &KeySource, file: &Path, force: bool) -> Result<BackedUp> {
    let db = data.join(crate::DB_FILE);
    if !db.exists() {
        return Err(Error::Config(format!(
            "there is no relay database at {}: nothing to back up (is --data right?)",
            db.display()
        )));
    }
    if !force && file.exists() {
        return Err(Error::BackupExists {
            path: file.to_path_buf(),
        });
    }
    let storage = SqliteStorage::open_with_key(&db, key)?;
    let hex_key = at_rest::relay_key(&db, key)?;
    let tmp = at_rest::sibling(file, &format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let made = copy_into(&storage, &tmp, &hex_key).and_then(|()| {
        let placed = if force {
            std::fs::rename(&tmp, file)
        } else {
            // Fails if FILE appeared meanwhile: never replaced without --force.
            std::fs::hard_link(&tmp, file)
        };
        placed.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::BackupExists {
                path: file.to_path_buf(),
            },
            _ => Error::Io {
                context: format!("putting the backup in place at {}", file.display()),
                source: e,
            },
        })
    });
    let _ = std::fs::remove_file(&tmp);
    made?;
    at_rest::sync_parent(file);
    let at = Utc::now();
    let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    futures_util::FutureExt::now_or_never(storage.record_backup(at))
        .unwrap_or(Ok(()))
        .map_err(Error::from)?;
    Ok(BackedUp {
        file: file.to_path_buf(),
        bytes,
        at,
    })
}

/// `VACUUM INTO` a new 0600 file `tmp`, fsynced and checked with `key`.
fn copy_into(storage: &SqliteStorage, tmp: &Path, key: &DatabaseKey) -> Result<()> {
    let tmp_text = tmp
        .to_str()
        .ok_or_else(|| Error::Config(format!("{} is not a UTF-8 path", tmp.display())))?;
    // An empty file is what VACUUM INTO accepts as its target: made here,
    // so it is private from its first byte.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    storage.conn().execute("VACUUM INTO ?1", [tmp_text])?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    let copy = at_rest::open_keyed(tmp, key)?;
    check_relay_database(&copy).map_err(|reason| {
        Error::Config(format!(
            "the backup copy failed its check ({reason}); nothing was written"
        ))
    })
}

/// Whether `conn` is a whole Linkbook relay database: `quick_check` ok, a
/// schema this relay knows, the relay's tables and a store id.
fn check_relay_database(conn: &rusqlite::Connection) -> std::result::Result<(), String> {
    let fail = |e: rusqlite::Error| e.to_string();
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(fail)?;
    if check != "ok" {
        return Err(format!("its pages are damaged: {check}"));
    }
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    let known = SqliteStorage::SCHEMA_VERSION;
    if version == 0 || version > known {
        return Err(format!(
            "schema {version}, and this linkbook-server knows 1 to {known}"
        ));
    }
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'
             AND name IN ('documents', 'changes', 'devices', 'purged', 'relay_meta', 'audit')",
            [],
            |r| r.get(0),
        )
        .map_err(fail)?;
    if tables != 6 {
        return Err("it lacks the relay's tables".into());
    }
    let store_id: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
        "SELECT value FROM relay_meta WHERE key = 'store_id'",
        [],
        |r| r.get(0),
    ))
    .map_err(fail)?;
    if store_id.is_none() {
        return Err("it has no store id".into());
    }
    Ok(())
}

/// The key a restore needs: the one the backup was made with. From the data
/// directory only if `relay.key` is there (never made anew: a new key
/// opens no backup).
fn restore_key(data: &Path, key: &KeySource) -> Result<DatabaseKey> {
    if matches!(key, KeySource::DataDir) && !data.join(at_rest::KEY_FILE).exists() {
        return Err(Error::Key(format!(
            "restoring needs the key the backup was made with: put its {} back in {}, or give it in {} or with --key-file",
            at_rest::KEY_FILE,
            data.display(),
            at_rest::KEY_ENV
        )));
    }
    at_rest::relay_key(&data.join(crate::DB_FILE), key)
}

/// Restores `file` into the data directory `data` (made 0700 if missing),
/// whose lock the caller holds (no relay serves it). See the module doc.
/// Nothing in `data` is changed unless the whole restore succeeds (a
/// `relay.db.restoring` left by a crash is deleted by the next restore).
pub async fn restore(
    data: &Path,
    key: &KeySource,
    file: &Path,
    ledger: &ErasureLedger,
) -> Result<Restored> {
    at_rest::prepare_data_dir(data)?;
    let key = restore_key(data, key)?;
    let not_backup = |reason: String| Error::NotARelayBackup {
        path: file.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(file).map_err(|e| not_backup(e.to_string()))?;
    if !meta.is_file() {
        return Err(not_backup("it is not a file".into()));
    }
    let db = data.join(crate::DB_FILE);
    let tmp = at_rest::sibling(&db, ".restoring");
    for stale in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(at_rest::sibling(&tmp, stale));
    }
    let restored = restore_into(&tmp, &key, file, ledger).await;
    let restored = match restored {
        Ok(r) => r,
        Err(e) => {
            for stale in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(at_rest::sibling(&tmp, stale));
            }
            return Err(e);
        }
    };
    // The old database's WAL must not be replayed onto the restored file.
    for stale in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(at_rest::sibling(&db, stale));
    }
    std::fs::rename(&tmp, &db).map_err(io(format!("replacing {}", db.display())))?;
    at_rest::sync_parent(&db);
    Ok(restored)
}

/// What a store restored from a backup needs before devices connect, on
/// any backend (`restore` here; `after-restore` after pg_restore): a new
/// store id, without the old one's sync states ([`DeviceStore::renew_store_id`]),
/// and the erasure ledger replayed. Returns the new id.
pub async fn after_restore(
    storage: &dyn Storage,
    ledger: &ErasureLedger,
) -> Result<(String, Replayed)> {
    let store_id = uuid::Uuid::new_v4().hyphenated().to_string();
    storage.renew_store_id(&store_id).await?;
    let replayed = erasure_ledger::replay(storage, ledger, Utc::now()).await?;
    Ok((store_id, replayed))
}

async fn restore_into(
    tmp: &Path,
    key: &DatabaseKey,
    file: &Path,
    ledger: &ErasureLedger,
) -> Result<Restored> {
    let not_backup = |reason: String| Error::NotARelayBackup {
        path: file.to_path_buf(),
        reason,
    };
    // A copy (0600) to work on: the backup file itself is never changed.
    {
        let mut from = File::open(file).map_err(|e| not_backup(e.to_string()))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut to = options
            .open(tmp)
            .map_err(io(format!("creating {}", tmp.display())))?;
        std::io::copy(&mut from, &mut to)
            .and_then(|_| to.sync_all())
            .map_err(io(format!(
                "copying {} to {}",
                file.display(),
                tmp.display()
            )))?;
    }
    {
        let conn = at_rest::open_keyed(tmp, key).map_err(|e| match e {
            Error::WrongKey => not_backup(
                "it is not an encrypted SQLite database, or it was made with another key".into(),
            ),
            e => not_backup(e.to_string()),
        })?;
        check_relay_database(&conn).map_err(not_backup)?;
    }
    let storage = SqliteStorage::open_with_key(tmp, &KeySource::Given(key.clone()))?;
    let (store_id, replayed) = after_restore(&storage, ledger).await?;
    let documents = {
        let conn = storage.conn();
        conn.query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0))?
    };
    {
        let conn = storage.conn();
        // Everything in the file itself before it is renamed into place.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let _: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    }
    drop(storage);
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    Ok(Restored {
        store_id,
        documents: usize::try_from(documents).unwrap_or(0),
        replayed,
    })
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use crate::storage::{DocumentStore, Team, Upload};
    use linkbook_core::DocumentId;

    const SECRET: &[u8] = b"Quagmirefamily lives at 12 Oakfield Road";

    /// A data directory with a relay database holding `SECRET`, keyed with
    /// a given key; returns the key source.
    fn relay_with_secret(data: &Path) -> KeySource {
        let key = KeySource::Given(DatabaseKey::generate());
        let s = SqliteStorage::open_with_key(&data.join(crate::DB_FILE), &key).expect("open");
        fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
            futures_util::FutureExt::now_or_never(f).expect("ready")
        }
        ready(s.store_id("old-store")).expect("id");
        ready(s.commit_upload(&Upload {
            team: &Team::from("north"),
            doc_id: DocumentId::from_bytes([7; 16]),
            uploader: "d1",
            changes: SECRET,
            snapshot: None,
            audit: &[],
            at: Utc::now(),
        }))
        .expect("upload");
        key
    }

    #[tokio::test]
    async fn a_backup_is_encrypted_private_and_restores_with_a_new_store_id() {
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        let key = relay_with_secret(&data);
        let file = dir.path().join("relay.backup");
        let done = backup(&data, &key, &file, false).expect("backup");
        assert!(done.bytes > 0);
        let bytes = std::fs::read(&file).expect("read");
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET),
            "no plaintext"
        );
        assert!(!bytes.starts_with(b"SQLite format 3"), "encrypted");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            backup(&data, &key, &file, false),
            Err(Error::BackupExists { .. })
        ));
        backup(&data, &key, &file, true).expect("--force replaces it");
        let ledger = ErasureLedger::at(dir.path().join("ledger"));
        let gone = DocumentId::from_bytes([9; 16]);
        ledger
            .append(&Team::from("north"), gone, Utc::now())
            .expect("ledger");
        let restored_dir = dir.path().join("restored");
        let r = restore(&restored_dir, &key, &file, &ledger)
            .await
            .expect("restore");
        assert_ne!(r.store_id, "old-store");
        assert_eq!(r.documents, 1);
        assert_eq!(r.replayed.purged_again, 1);
        let s =
            SqliteStorage::open_with_key(&restored_dir.join(crate::DB_FILE), &key).expect("reopen");
        assert!(
            s.is_purged(&Team::from("north"), gone)
                .await
                .expect("purged")
        );
        assert_eq!(s.store_id("x").await.expect("id"), r.store_id);
        assert_eq!(s.last_backup().await.expect("backup"), None);
    }

    #[tokio::test]
    async fn a_restore_of_a_wrong_file_changes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        let key = relay_with_secret(&data);
        let file = dir.path().join("relay.backup");
        backup(&data, &key, &file, false).expect("backup");
        let before = std::fs::read(data.join(crate::DB_FILE)).expect("db");
        let ledger = ErasureLedger::at(dir.path().join("ledger"));
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, vec![0x5a_u8; 8192]).expect("garbage");
        let truncated = dir.path().join("truncated");
        let whole = std::fs::read(&file).expect("backup");
        std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("truncated");
        let other_key = KeySource::Given(DatabaseKey::generate());
        for (what, f, k) in [
            ("garbage", &garbage, &key),
            ("truncated", &truncated, &key),
            ("wrong key", &file, &other_key),
            ("missing", &dir.path().join("nothing"), &key),
        ] {
            let e = restore(&data, k, f, &ledger).await.expect_err(what);
            assert!(matches!(e, Error::NotARelayBackup { .. }), "{what}: {e}");
            assert_eq!(
                std::fs::read(data.join(crate::DB_FILE)).expect("db"),
                before,
                "{what}"
            );
            assert!(!data.join("relay.db.restoring").exists(), "{what}");
        }
    }
}
