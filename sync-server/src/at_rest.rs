//! The relay's data at rest (issue 12, finding 4): a private data
//! directory and an encrypted database.
//!
//! - The data directory is 0700 and every file the relay writes in it 0600,
//!   whatever the umask: set explicitly at creation ([`write_private`],
//!   [`create_private`]); looser modes found at start are tightened with a
//!   log line naming the file ([`prepare_data_dir`]); the process umask is
//!   077 on top ([`restrict_umask`]).
//! - `relay.db` is SQLCipher-encrypted (SQLCipher 4 defaults, keyed with
//!   `PRAGMA key = "x'<hex>'"`, as devices are). The key: `relay.key` in the
//!   data directory (64 hex characters, 0600, made once at random,
//!   atomically), or `LINKBOOK_SERVER_KEY` (64 hex) or `--key-file PATH`
//!   ([`KeySource`]). It is never logged. A lost key is lost data: the
//!   operator backs it up apart from the data.
//! - A plaintext `relay.db` (made before this) is encrypted in place the
//!   first time it is opened ([`encrypt_in_place`]); the original is
//!   replaced only once the encrypted copy is durable and checked.
//!
//! [`open_database`] is the one way the relay and every admin command open
//! the database.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use linkbook_core::DatabaseKey;
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// The key file in the data directory (when no key is given otherwise).
pub const KEY_FILE: &str = "relay.key";
/// The environment variable that may hold the key itself (64 hex).
pub const KEY_ENV: &str = "LINKBOOK_SERVER_KEY";

/// Where the database key comes from.
#[derive(Debug, Clone, Default)]
pub enum KeySource {
    /// `relay.key` in the data directory, made at random the first time.
    #[default]
    DataDir,
    /// A key given directly (from `LINKBOOK_SERVER_KEY`).
    Given(DatabaseKey),
    /// A file holding the key as 64 hex characters (`--key-file`).
    File(PathBuf),
}

impl KeySource {
    /// The source the command line and environment name: `--key-file`, or
    /// `LINKBOOK_SERVER_KEY`, else the data directory's key file.
    pub fn from_options(key_file: Option<PathBuf>) -> Result<KeySource> {
        let env = std::env::var(KEY_ENV).ok().filter(|v| !v.trim().is_empty());
        match (env, key_file) {
            (Some(_), Some(_)) => Err(Error::Key(format!(
                "give the relay's key either in {KEY_ENV} or with --key-file, not both"
            ))),
            (Some(hex), None) => Ok(KeySource::Given(parse_key(&hex).ok_or_else(|| {
                Error::Key(format!(
                    "{KEY_ENV} must be 64 hexadecimal characters (a 256-bit key)"
                ))
            })?)),
            (None, Some(path)) => Ok(KeySource::File(path)),
            (None, None) => Ok(KeySource::DataDir),
        }
    }
}

fn parse_key(hex: &str) -> Option<DatabaseKey> {
    DatabaseKey::from_hex(hex).ok()
}

/// Sets the process umask to 077: anything created without an explicit
/// mode is private too (belt and braces on top of the explicit modes).
pub fn restrict_umask() {
    #[cfg(unix)]
    {
        let _ = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    }
}

/// Creates the data directory 0700 if missing, and takes group and other
/// permissions off it and off every file in it (logging each, with its
/// name only).
pub fn prepare_data_dir(data: &Path) -> Result<()> {
    let io = |context: String| move |source| Error::Io { context, source };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(data)
        .map_err(io(format!("creating {}", data.display())))?;
    #[cfg(unix)]
    {
        tighten(data)?;
        let entries = std::fs::read_dir(data).map_err(io(format!("reading {}", data.display())))?;
        for entry in entries.flatten() {
            tighten(&entry.path())?;
        }
    }
    Ok(())
}

/// Takes group and other permissions off `path` (a symbolic link is left
/// alone: its target is not the relay's). The owner's bits stay as they
/// are, so a file made read-only stays read-only.
#[cfg(unix)]
fn tighten(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // gone meanwhile
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let private = mode & 0o700;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)).map_err(|source| {
        Error::Io {
            context: format!(
                "making {} private (it is readable by other accounts)",
                path.display()
            ),
            source,
        }
    })?;
    tracing::warn!(
        path = %path.display(),
        from = format!("{mode:o}"),
        to = format!("{private:o}"),
        "the relay's data was open to other local accounts: made it private"
    );
    Ok(())
}

/// Creates a missing file readable by its owner only (SQLite gives the
/// `-wal` and `-shm` files the database file's permissions).
pub fn create_private(path: &Path) {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    // It exists already, or cannot be made: the caller's open says why.
    let _ = options.open(path);
}

/// Writes `bytes` to `path` as a 0600 file, replacing it atomically (a
/// temporary file beside it, fsynced, renamed over it).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, &format!(".tmp-{}", std::process::id()));
    let io = |source| Error::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = new_private_file(&tmp).map_err(io)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    sync_parent(path);
    Ok(())
}

fn new_private_file(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes a rename or new file in `path`'s directory durable (best effort:
/// not every file system syncs directories).
pub(crate) fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = dir.sync_all();
    }
}

/// What a database file holds, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum FileState {
    /// Missing or empty: a new database.
    New,
    /// A plaintext SQLite database (made before encryption at rest).
    Plaintext,
    /// Anything else: SQLCipher's pages are indistinguishable from noise.
    Encrypted,
}

fn file_state(db: &Path) -> Result<FileState> {
    let mut file = match File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::New),
        Err(source) => {
            return Err(Error::Io {
                context: format!("reading {}", db.display()),
                source,
            });
        }
    };
    let mut header = [0_u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading {}", db.display()),
                    source,
                });
            }
        }
    }
    Ok(match read {
        0 => FileState::New,
        _ if &header[..read] == b"SQLite format 3\0" => FileState::Plaintext,
        _ => FileState::Encrypted,
    })
}

/// The database key from `source`. For [`KeySource::DataDir`], a missing
/// `relay.key` is made (random, 0600, atomically: two processes starting
/// at once agree on one key), but only for a database that is new or
/// plaintext: an encrypted database without its key is the operator's to
/// restore, not to replace.
pub fn relay_key(db: &Path, source: &KeySource) -> Result<DatabaseKey> {
    match source {
        KeySource::Given(key) => Ok(key.clone()),
        KeySource::File(path) => {
            let hex = std::fs::read_to_string(path).map_err(|e| {
                Error::Key(format!(
                    "the key file {} could not be read: {e}",
                    path.display()
                ))
            })?;
            #[cfg(unix)]
            if let Ok(meta) = std::fs::metadata(path) {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the relay's key file is readable by other local accounts: chmod 600 it"
                    );
                }
            }
            parse_key(&hex).ok_or_else(|| {
                Error::Key(format!(
                    "the key file {} must hold 64 hexadecimal characters (a 256-bit key)",
                    path.display()
                ))
            })
        }
        KeySource::DataDir => {
            let path = db.with_file_name(KEY_FILE);
            match std::fs::read_to_string(&path) {
                Ok(hex) => parse_key(&hex).ok_or_else(|| damaged_key(&path)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if file_state(db)? == FileState::Encrypted {
                        return Err(Error::Key(format!(
                            "{} is encrypted but its key file {} is missing: restore the key from your backup (or give it in {KEY_ENV} or with --key-file)",
                            db.display(),
                            path.display()
                        )));
                    }
                    create_key_file(&path)
                }
                Err(e) => Err(Error::Key(format!(
                    "the key file {} could not be read: {e}",
                    path.display()
                ))),
            }
        }
    }
}

fn damaged_key(path: &Path) -> Error {
    Error::Key(format!(
        "the key file {} is damaged (it must hold 64 hexadecimal characters): restore it from your backup",
        path.display()
    ))
}

/// Writes a new random key to `path` unless one appeared meanwhile, and
/// returns the key in the file. The key is written in full to a temporary
/// file, fsynced, then hard-linked into place: the link fails if another
/// process made the file first (then its key is used), and nobody ever
/// reads a half-written key.
fn create_key_file(path: &Path) -> Result<DatabaseKey> {
    let key = DatabaseKey::generate();
    let tmp = sibling(path, &format!(".tmp-{}", std::process::id()));
    let io = |source| Error::Io {
        context: format!("writing the key file {}", path.display()),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = new_private_file(&tmp).map_err(io)?;
    let linked = file
        .write_all(key.to_hex().as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_parent(path);
            tracing::info!(
                path = %path.display(),
                "made a new key for the relay database: back it up apart from the data (a lost key is lost data)"
            );
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let hex = std::fs::read_to_string(path).map_err(io)?;
            parse_key(&hex).ok_or_else(|| damaged_key(path))
        }
        Err(e) => Err(io(e)),
    }
}

/// Opens the relay database `db` (creating it, 0600, in a private data
/// directory), keyed from `source`; a plaintext database is encrypted in
/// place first. The one way the relay and the admin commands open it.
pub fn open_database(db: &Path, source: &KeySource) -> Result<Connection> {
    if let Some(data) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_data_dir(data)?;
    }
    let key = relay_key(db, source)?;
    if file_state(db)? == FileState::Plaintext {
        encrypt_in_place(db, &key)?;
    }
    create_private(db);
    let conn = open_keyed(db, &key)?;
    // SQLite opens a file it may not write read-only, without a word:
    // the relay would start and then refuse every upload.
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(Error::Config(format!(
            "the relay database {} is read-only (its permissions, or a read-only mount): the relay must be able to write it",
            db.display()
        )));
    }
    // secure_delete: a purged document's pages are overwritten, not left
    // readable in the free list.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON; PRAGMA temp_store = 2;",
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// A connection to `path` unlocked with `key` (no other pragma set): a
/// wrong key is [`Error::WrongKey`], and nothing is written. The devices'
/// opener (`linkbook_core::open_keyed`), so both key SQLCipher one way.
pub(crate) fn open_keyed(path: &Path, key: &DatabaseKey) -> Result<Connection> {
    linkbook_core::open_keyed(path, key).map_err(|e| match e {
        linkbook_core::Error::WrongKey => Error::WrongKey,
        linkbook_core::Error::Storage(e) => Error::Storage(e.into()),
        other => Error::Config(format!("opening {}: {other}", path.display())),
    })
}

/// Encrypts the plaintext database `db` in place with `key`.
///
/// `sqlcipher_export` copies it into `relay.db.encrypting` (0600), which
/// is fsynced and checked (it opens with the key, `quick_check` is ok, the
/// schema version and each table's row count match) before it is renamed
/// over the original. Until that rename the original is untouched (its
/// WAL folded in and its journal mode set to DELETE, so no `-wal` is left
/// to be replayed onto the encrypted file); a process that dies before it
/// leaves a stale `.encrypting` file that the next start deletes, and
/// starts again. After the rename the old plaintext file's blocks are
/// overwritten with zeros (best effort: a copy-on-write file system or an
/// SSD may keep old blocks). Two processes converting at once are
/// serialised by an advisory lock on the original file.
pub fn encrypt_in_place(db: &Path, key: &DatabaseKey) -> Result<()> {
    let started = std::time::Instant::now();
    let io = |context: &str| {
        let context = format!("{context} {}", db.display());
        move |source| Error::Io { context, source }
    };
    // The original, held open: for the lock, and to wipe it afterwards.
    let mut original = OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .map_err(io("opening"))?;
    original.lock().map_err(io("locking"))?;
    // Another process may have converted it while this one waited.
    if file_state(db)? != FileState::Plaintext {
        return Ok(());
    }
    let tmp = sibling(db, ".encrypting");
    // Left by a conversion that died: the original is whole, start again.
    let _ = std::fs::remove_file(&tmp);
    let plain = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    plain.busy_timeout(std::time::Duration::from_secs(10))?;
    let (busy, _, _): (i64, i64, i64) =
        plain.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let mode: String =
        plain.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))?;
    if busy != 0 || !mode.eq_ignore_ascii_case("delete") {
        return Err(Error::Config(format!(
            "{} is plaintext and must be encrypted, but another process has it open: stop it (an older linkbook-server?) and start again",
            db.display()
        )));
    }
    let version: u32 = plain.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: Vec<String> = plain
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let counts = |conn: &Connection, schema: &str| -> rusqlite::Result<Vec<i64>> {
        tables
            .iter()
            .map(|t| {
                conn.query_row(
                    &format!(
                        "SELECT count(*) FROM {schema}.\"{}\"",
                        t.replace('"', "\"\"")
                    ),
                    [],
                    |r| r.get(0),
                )
            })
            .collect()
    };
    let before = counts(&plain, "main")?;
    create_private(&tmp);
    let tmp_str = tmp
        .to_str()
        .ok_or_else(|| Error::Config(format!("{} is not a UTF-8 path", tmp.display())))?;
    plain.execute_batch("PRAGMA cipher_log_level = NONE;")?;
    plain.execute(
        &format!(
            "ATTACH DATABASE ?1 AS encrypted KEY \"x'{}'\"",
            key.to_hex()
        ),
        [tmp_str],
    )?;
    plain.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
    plain.execute_batch(&format!("PRAGMA encrypted.user_version = {version};"))?;
    plain.execute_batch("DETACH DATABASE encrypted;")?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("making the encrypted copy of"))?;
    {
        let copy = open_keyed(&tmp, key)?;
        let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        let copied: u32 = copy.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let after = counts(&copy, "main")?;
        if check != "ok" || copied != version || after != before {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Config(format!(
                "encrypting {} failed its check (nothing was changed): {check}",
                db.display()
            )));
        }
    }
    drop(plain);
    for stale in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(sibling(db, stale));
    }
    std::fs::rename(&tmp, db).map_err(io("replacing"))?;
    sync_parent(db);
    // The plaintext is no longer reachable by name; overwrite its blocks.
    let size = original.metadata().map(|m| m.len()).unwrap_or(0);
    let wiped = wipe(&mut original, size);
    tracing::info!(
        bytes = size,
        ms = started.elapsed().as_millis() as u64,
        old_copy_overwritten = wiped.is_ok(),
        "the relay database was plaintext: encrypted it in place"
    );
    Ok(())
}

fn wipe(file: &mut File, size: u64) -> std::io::Result<()> {
    use std::io::Seek;
    file.rewind()?;
    let zeros = vec![0_u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key of one source opens what it made; another key gets the typed
    /// error, and the file is not changed by the attempt.
    #[test]
    fn a_wrong_key_is_a_typed_error_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("relay.db");
        let key = KeySource::Given(DatabaseKey::generate());
        open_database(&db, &key)
            .expect("new")
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .expect("write");
        let bytes = std::fs::read(&db).expect("read");
        let other = KeySource::Given(DatabaseKey::generate());
        assert!(matches!(open_database(&db, &other), Err(Error::WrongKey)));
        assert_eq!(std::fs::read(&db).expect("read"), bytes);
        assert!(!dir.path().join(KEY_FILE).exists(), "no key file made");
    }

    /// An encrypted database without its key file is not given a new key.
    #[test]
    fn a_missing_key_file_is_not_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("relay.db");
        open_database(&db, &KeySource::DataDir)
            .expect("new")
            .execute_batch("CREATE TABLE t (x);")
            .expect("write");
        let hex = std::fs::read_to_string(dir.path().join(KEY_FILE)).expect("key");
        assert_eq!(hex.len(), 64);
        std::fs::remove_file(dir.path().join(KEY_FILE)).expect("rm");
        let err = open_database(&db, &KeySource::DataDir).expect_err("no key");
        assert!(err.to_string().contains("restore the key"), "{err}");
        assert!(!dir.path().join(KEY_FILE).exists());
    }

    /// A conversion that died before its rename left a partial
    /// `.encrypting` file: the plaintext original is whole, and the next
    /// open converts it.
    #[test]
    fn a_conversion_cut_short_is_redone_from_the_intact_original() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("relay.db");
        {
            let c = Connection::open(&db).expect("plain");
            c.execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES ('Okonkwo'); PRAGMA user_version = 9;",
            )
            .expect("plain rows");
        }
        std::fs::write(sibling(&db, ".encrypting"), b"half a copy").expect("stale");
        let conn = open_database(&db, &KeySource::DataDir).expect("converts");
        let x: String = conn
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .expect("row");
        assert_eq!(x, "Okonkwo");
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, 9);
        drop(conn);
        assert!(!sibling(&db, ".encrypting").exists());
        assert_eq!(file_state(&db).expect("state"), FileState::Encrypted);
        let raw = std::fs::read(&db).expect("raw");
        assert!(!raw.windows(7).any(|w| w == b"Okonkwo"));
    }
}
