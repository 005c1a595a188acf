//! The erasure ledger (issue 14): every purge, kept outside the relay
//! database and its backups, so that restoring an older backup cannot bring
//! an erased family back (docs/adr/0013).
//!
//! One append-only file (`--erasure-ledger PATH` or `LINKBOOK_ERASURE_LEDGER`;
//! by default `<data directory>.erasures`, beside the data directory), 0600.
//! One line per purge: `{"at":…,"team":…,"id":…} <checksum>`, the checksum the
//! first 8 bytes of the SHA-256 of the JSON, in hex. Ids, team and time only:
//! no reason text, no names (the ledger outlives every backup and is copied
//! wherever the operator keeps it). A record is appended and fsynced *before*
//! the database purge ([`Ledgered`]): a purge the database never committed is
//! completed at the next replay; a purge the ledger does not hold cannot
//! happen.
//!
//! Reading: a last line that is torn (no newline, or failing its checksum: a
//! crash during its append, when the purge it announced had not started) is
//! ignored with a warning, and cut off by the next append; a damaged line
//! with records after it is [`LedgerError::Corrupt`]: the relay does not
//! start on a ledger it cannot trust to be whole.
//!
//! [`replay`] makes the database agree with the ledger: every ledgered
//! document not yet purged is purged again, and recorded as purged even if
//! the database does not hold it at all (a device that has not synced since
//! still holds it and must not upload it again). The relay replays at start
//! (both backends), `restore` on the restored copy before it is put in place,
//! `linkbook-server after-restore` after a PostgreSQL restore, and
//! `linkbook-server erasures replay` on demand.

mod ledgered;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use linkbook_core::DocumentId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use ledgered::Ledgered;

use crate::storage::{Storage, Team};

/// The environment variable naming the ledger (as `--erasure-ledger`).
pub const LEDGER_ENV: &str = "LINKBOOK_ERASURE_LEDGER";
/// Who a replayed purge is audited as.
pub const REPLAY_WORKER: &str = "erasure ledger replay";
/// The reason a replayed purge is recorded with (the ledger keeps none).
pub const REPLAY_REASON: &str = "purged again from the erasure ledger";

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the erasure ledger {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record that is not the last fails its checksum or does not parse.
    #[error(
        "the erasure ledger {} is damaged at line {line} (records follow it, so it is not a torn last write): restore the ledger from a copy; the relay does not start on a ledger it cannot read whole",
        path.display()
    )]
    Corrupt { path: PathBuf, line: usize },
}

/// One purge as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRecord {
    pub team: Team,
    pub id: DocumentId,
    pub at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    at: String,
    team: String,
    id: String,
}

/// The ledger file.
#[derive(Debug, Clone)]
pub struct ErasureLedger {
    path: PathBuf,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Records in the ledger.
    pub records: usize,
    /// Of those, the documents the database did not remember as purged,
    /// purged now.
    pub purged_again: usize,
}

impl ErasureLedger {
    /// The ledger at `path`.
    pub fn at(path: impl Into<PathBuf>) -> ErasureLedger {
        ErasureLedger { path: path.into() }
    }

    /// The default ledger of data directory `data`: `<data>.erasures` beside
    /// it (outside the directory, so it survives the directory's loss and is
    /// in no copy of it).
    pub fn beside(data: &Path) -> crate::Result<ErasureLedger> {
        let name = data.file_name().filter(|n| !n.is_empty()).ok_or_else(|| {
            crate::Error::Config(format!(
                "the data directory {} has no name to put the erasure ledger beside: give --erasure-ledger PATH",
                data.display()
            ))
        })?;
        let mut file = name.to_os_string();
        file.push(".erasures");
        Ok(ErasureLedger::at(data.with_file_name(file)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl Fn(std::io::Error) -> LedgerError + '_ {
        |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends one purge and fsyncs it (and, for a new file, its
    /// directory). Under an exclusive lock on the file: an admin command and
    /// the relay's retention sweep may append at once. A torn last line is
    /// cut off first, so it never becomes a damaged middle line.
    pub fn append(
        &self,
        team: &Team,
        id: DocumentId,
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let io = self.io();
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let is_new = !self.path.exists();
        let mut file = options.open(&self.path).map_err(&io)?;
        file.lock().map_err(&io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(&io)?;
        let read = parse(&bytes, &self.path)?;
        if read.whole < bytes.len() {
            tracing::warn!(ledger = %self.path.display(), "the erasure ledger's last record was torn (a write cut short): cut it off before appending");
            file.set_len(read.whole as u64).map_err(&io)?;
        }
        file.seek(SeekFrom::Start(read.whole as u64)).map_err(&io)?;
        file.write_all(&encode(team, id, at)).map_err(&io)?;
        file.sync_all().map_err(&io)?;
        if is_new {
            sync_dir_of(&self.path);
        }
        Ok(())
    }

    /// Every record, oldest first; none if the file does not exist. A torn
    /// last line is left out with a warning.
    pub fn records(&self) -> Result<Vec<LedgerRecord>, LedgerError> {
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(self.io())?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io()(e)),
        }
        let read = parse(&bytes, &self.path)?;
        if read.whole < bytes.len() {
            tracing::warn!(ledger = %self.path.display(), "the erasure ledger's last record is torn (a write cut short before its purge): ignored");
        }
        Ok(read.records)
    }
}

/// One record's line, newline included.
fn encode(team: &Team, id: DocumentId, at: DateTime<Utc>) -> Vec<u8> {
    let json = serde_json::to_string(&Line {
        at: at.to_rfc3339(),
        team: team.to_string(),
        id: id.to_string(),
    })
    .unwrap_or_default();
    format!("{json} {}\n", checksum(json.as_bytes())).into_bytes()
}

fn checksum(json: &[u8]) -> String {
    hex::encode(&Sha256::digest(json)[..8])
}

/// A line's record, if it is whole and its checksum holds.
fn decode(line: &[u8]) -> Option<LedgerRecord> {
    let line = std::str::from_utf8(line).ok()?;
    let (json, sum) = line.rsplit_once(' ')?;
    if sum != checksum(json.as_bytes()) {
        return None;
    }
    let l: Line = serde_json::from_str(json).ok()?;
    Some(LedgerRecord {
        team: Team::new(l.team),
        id: l.id.parse().ok()?,
        at: DateTime::parse_from_rfc3339(&l.at).ok()?.to_utc(),
    })
}

struct Parsed {
    records: Vec<LedgerRecord>,
    /// Bytes up to the end of the last good record.
    whole: usize,
}

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed, LedgerError> {
    let mut records = Vec::new();
    let mut whole = 0;
    let mut rest = bytes;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let (line, after, terminated) = match rest.iter().position(|&b| b == b'\n') {
            Some(n) => (&rest[..n], &rest[n + 1..], true),
            None => (rest, &rest[rest.len()..], false),
        };
        match decode(line).filter(|_| terminated) {
            Some(r) => {
                records.push(r);
                whole = bytes.len() - after.len();
            }
            // The last line: a write cut short.
            None if after.is_empty() => break,
            None => {
                return Err(LedgerError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_no,
                });
            }
        }
        rest = after;
    }
    Ok(Parsed { records, whole })
}

fn sync_dir_of(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Makes `storage` agree with `ledger`: every ledgered document it does not
/// remember as purged is purged now ([`crate::storage::DocumentStore::ensure_purged`]:
/// deleted if stored, remembered as purged either way, audited as the
/// replay's).
pub async fn replay(
    storage: &dyn Storage,
    ledger: &ErasureLedger,
    now: DateTime<Utc>,
) -> crate::Result<Replayed> {
    let records = ledger
        .records()
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    let mut replayed = Replayed {
        records: records.len(),
        purged_again: 0,
    };
    for r in &records {
        if storage
            .ensure_purged(&r.team, r.id, REPLAY_REASON, r.at, now)
            .await?
        {
            replayed.purged_again += 1;
        }
    }
    if replayed.purged_again > 0 {
        tracing::warn!(
            records = replayed.records,
            purged_again = replayed.purged_again,
            "the erasure ledger named purged documents the database did not: purged them again (audited)"
        );
    } else {
        tracing::info!(
            records = replayed.records,
            "the erasure ledger agrees with the database"
        );
    }
    Ok(replayed)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn id(n: u8) -> DocumentId {
        DocumentId::from_bytes([n; 16])
    }

    fn ledger() -> (tempfile::TempDir, ErasureLedger) {
        let dir = tempfile::tempdir().expect("dir");
        let l = ErasureLedger::at(dir.path().join("relay.erasures"));
        (dir, l)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").to_utc()
    }

    #[test]
    fn records_round_trip_in_order_and_the_file_is_private() {
        let (_dir, l) = ledger();
        assert!(l.records().expect("missing is empty").is_empty());
        l.append(&Team::from("north"), id(1), at("2026-12-01T10:00:00Z"))
            .expect("append");
        l.append(&Team::from("south side"), id(2), at("2026-12-02T11:00:00Z"))
            .expect("append");
        let r = l.records().expect("read");
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].team.as_str(), r[0].id), ("north", id(1)));
        assert_eq!((r[1].team.as_str(), r[1].id), ("south side", id(2)));
        assert_eq!(r[1].at, at("2026-12-02T11:00:00Z"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(l.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(l.path()).expect("text");
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains("reason"), "no reason text: {text}");
    }

    /// A crash during an append leaves a torn last line: ignored when read,
    /// cut off by the next append (which then reads whole).
    #[test]
    fn a_torn_last_line_is_ignored_and_cut_off_by_the_next_append() {
        let (_dir, l) = ledger();
        l.append(&Team::from("north"), id(1), Utc::now())
            .expect("append");
        let whole = std::fs::read(l.path()).expect("read");
        let torn_line = encode(&Team::from("north"), id(2), Utc::now());
        for cut in [1, torn_line.len() / 2, torn_line.len() - 1] {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(&torn_line[..cut]);
            std::fs::write(l.path(), &bytes).expect("write");
            let r = l.records().expect("a torn tail is tolerated");
            assert_eq!(r.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id(1)]);
        }
        l.append(&Team::from("north"), id(3), Utc::now())
            .expect("append");
        let r = l.records().expect("read");
        assert_eq!(
            r.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![id(1), id(3)]
        );
    }

    /// A whole last line whose checksum fails is torn too (its bytes may be
    /// garbage after a crash); a damaged line before others is an error.
    #[test]
    fn a_damaged_middle_line_is_a_typed_error() {
        let (_dir, l) = ledger();
        for n in 1..=3 {
            l.append(&Team::from("north"), id(n), Utc::now())
                .expect("append");
        }
        let text = std::fs::read_to_string(l.path()).expect("text");
        let lines: Vec<&str> = text.lines().collect();
        // A flipped character in the second record's id.
        let damaged = lines[1].replacen("\"id\":\"", "\"id\":\"x", 1);
        std::fs::write(l.path(), format!("{}\n{damaged}\n{}\n", lines[0], lines[2]))
            .expect("write");
        match l.records() {
            Err(LedgerError::Corrupt { line: 2, .. }) => {}
            other => panic!("expected Corrupt at line 2, got {other:?}"),
        }
        assert!(matches!(
            l.append(&Team::from("north"), id(4), Utc::now()),
            Err(LedgerError::Corrupt { .. })
        ));
        // The same damage on the last line is a torn write.
        std::fs::write(l.path(), format!("{}\n{}\n{damaged}\n", lines[0], lines[2]))
            .expect("write");
        assert_eq!(l.records().expect("torn tail").len(), 2);
    }

    #[test]
    fn the_default_ledger_is_beside_the_data_directory() {
        let l = ErasureLedger::beside(Path::new("/srv/linkbook/data")).expect("beside");
        assert_eq!(l.path(), Path::new("/srv/linkbook/data.erasures"));
        let l = ErasureLedger::beside(Path::new("/srv/linkbook/data/")).expect("beside");
        assert_eq!(l.path(), Path::new("/srv/linkbook/data.erasures"));
        assert!(ErasureLedger::beside(Path::new("/")).is_err());
    }

    /// Replay purges what is stored, records as purged what is not, and
    /// does nothing the second time.
    #[tokio::test]
    async fn replay_purges_stored_and_unstored_documents_once() {
        use crate::storage::{AuditStore, DocumentStore, MemoryStorage};
        let (_dir, l) = ledger();
        let s = MemoryStorage::new();
        let team = Team::from("north");
        l.append(&team, id(1), Utc::now()).expect("append");
        l.append(&team, id(2), Utc::now()).expect("append");
        let replayed = replay(&s, &l, Utc::now()).await.expect("replay");
        assert_eq!(
            replayed,
            Replayed {
                records: 2,
                purged_again: 2
            }
        );
        assert!(s.is_purged(&team, id(1)).await.expect("purged"));
        assert!(s.is_purged(&team, id(2)).await.expect("purged"));
        let again = replay(&s, &l, Utc::now()).await.expect("replay");
        assert_eq!(
            again,
            Replayed {
                records: 2,
                purged_again: 0
            }
        );
        let audit = s.audit_log(None, None, Some(&team)).await.expect("audit");
        let replays = audit
            .iter()
            .filter(|e| e.worker.as_deref() == Some(REPLAY_WORKER))
            .count();
        assert_eq!(replays, 2, "{audit:?}");
    }
}
