//! The device profile directory: where the database and its key live, and
//! how the key is found or made. The key comes from `LINKBOOK_KEY` or the key
//! file, never from argv (other users can read a process's arguments), and
//! is never printed.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;

use linkbook_core::{DatabaseKey, Error, Repo};

/// The database file inside the data directory.
const DB_FILE: &str = "linkbook.db";
/// The key file made when no `LINKBOOK_KEY` is given.
const KEY_FILE: &str = "key";
const KEY_ENV: &str = "LINKBOOK_KEY";

/// Opens the device store in `dir`, creating the directory and a key as
/// needed.
pub fn open(dir: &Path) -> Result<Repo, Error> {
    ensure_dir(dir)?;
    let key = database_key(dir, key_from_env()?.as_deref())?;
    Repo::open(dir.join(DB_FILE), &key)
}

/// After a revocation wipe: removes the database (its records are gone, and
/// without the key it could not be opened) and then the key file, so nothing
/// of the profile is left in `dir` and it works again as a new profile. The
/// database goes first: a key file without a database is harmless, a
/// database without its key would refuse every later run.
pub fn remove_wiped(dir: &Path) -> Result<(), Error> {
    for name in [
        format!("{DB_FILE}-wal"),
        format!("{DB_FILE}-shm"),
        DB_FILE.to_string(),
        KEY_FILE.to_string(),
    ] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("could not remove {}", path.display()))(e)),
        }
    }
    sync_dir(dir).map_err(io_error(format!("could not sync {}", dir.display())))
}

pub fn io_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Creates `dir` readable by its owner only; an existing one is left as it is.
fn ensure_dir(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        // At creation, not chmod after: no moment where others can look in.
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(io_error(format!("could not create {}", dir.display())))
}

/// `LINKBOOK_KEY` if set; an empty value counts as unset.
fn key_from_env() -> Result<Option<String>, Error> {
    match std::env::var(KEY_ENV) {
        Ok(key) if key.trim().is_empty() => Ok(None),
        Ok(key) => Ok(Some(key)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidInput {
            field: "database key",
            reason: format!("{KEY_ENV} must be 64 hexadecimal characters"),
        }),
    }
}

/// The database key: `from_env`, else the key file, else a new key written
/// to a new key file readable only by its owner.
fn database_key(dir: &Path, from_env: Option<&str>) -> Result<DatabaseKey, Error> {
    if let Some(hex_key) = from_env {
        return DatabaseKey::from_hex(hex_key);
    }
    let path = dir.join(KEY_FILE);
    if let Some(key) = read_key_file(&path)? {
        return Ok(key);
    }
    let db = dir.join(DB_FILE);
    if db.exists() {
        // A new key cannot open it; writing one would only leave a wrong key
        // file behind for every later run.
        return Err(Error::InvalidInput {
            field: "database key",
            reason: format!(
                "{} exists but there is no key for it: set {KEY_ENV} or restore {}",
                db.display(),
                path.display()
            ),
        });
    }
    create_key_file(dir, &path)
}

fn read_key_file(path: &Path) -> Result<Option<DatabaseKey>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => DatabaseKey::from_hex(&text)
            .map(Some)
            .map_err(|_| Error::InvalidInput {
                field: "database key",
                reason: format!("{} does not hold 64 hexadecimal characters", path.display()),
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(format!("could not read {}", path.display()))(e)),
    }
}

fn create_key_file(dir: &Path, path: &Path) -> Result<DatabaseKey, Error> {
    let key = DatabaseKey::generate();
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = match opts.open(path) {
        Ok(file) => file,
        // Another `linkbook` on this directory made one first: use it.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return read_key_file(path)?
                .ok_or_else(|| io_error(format!("could not read {}", path.display()))(e));
        }
        Err(e) => return Err(io_error(format!("could not create {}", path.display()))(e)),
    };
    let written = writeln!(file, "{}", key.to_hex())
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = written {
        // A half-written key file would refuse every later run.
        let _ = std::fs::remove_file(path);
        return Err(io_error(format!("could not write {}", path.display()))(e));
    }
    Ok(key)
}

/// Makes the key file's directory entry durable before any note is saved
/// under that key: losing it in a power cut would lose the whole store.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_file_is_private_and_read_back() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("profile");
        ensure_dir(&dir).expect("dir");
        let made = database_key(&dir, None).expect("made").to_hex();
        let read = database_key(&dir, None).expect("read").to_hex();
        assert_eq!(made, read);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
    }

    #[test]
    fn no_key_is_made_for_an_existing_database() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(DB_FILE), b"").expect("db");
        let e = database_key(dir.path(), None).expect_err("refused");
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
        assert!(!dir.path().join(KEY_FILE).exists());
    }
}
