//! Backups that lose nothing and honour erasure (issue 14): `linkbook-server
//! backup` while devices sync, `restore` into a stopped relay's data
//! directory, and the erasure ledger beside it that keeps a restored backup
//! from bringing a purged family back. Real relay processes, real files.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use linkbook_core::*;
use linkbook_tests::pages::{occurrences, plaintext_pages};
use linkbook_tests::{
    Device, Relay, erasure_ledger_of as ledger_of, http_get, metric_sample, metrics_addr, relay_db,
    workspace_bin,
};

/// The relay's dev certificate files: kept across a lost data directory as
/// an operator keeps their certificate (devices pin the CA).
const CERTIFICATES: [&str; 3] = ["dev-ca.pem", "dev-cert.pem", "dev-key.pem"];

fn family(d: &Device, name: &str, note: &str) -> Result<DocumentId> {
    let id = d.add_family(&NewFamily {
        name: name.into(),
        ..Default::default()
    })?;
    d.add_note(id, note, NoteCategory::Visit)?;
    Ok(id)
}

fn note_texts(d: &Device, family: DocumentId) -> Vec<String> {
    let mut texts: Vec<String> = d
        .notes(family)
        .expect("notes")
        .into_iter()
        .map(|n| n.text)
        .collect();
    texts.sort();
    texts
}

/// `linkbook-server ARGS` (no relay needed), with `env`, optionally under an
/// address-space cap (hostile input): (exit code, stdout, stderr).
fn server(args: &[&str], env: &[(&str, &str)], cap_memory: bool) -> (i32, String, String) {
    let mut cmd = if cap_memory {
        let mut c = Command::new("prlimit");
        c.arg("--as=1500000000")
            .arg(workspace_bin("linkbook-server"));
        c
    } else {
        Command::new(workspace_bin("linkbook-server"))
    };
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .env_remove("LINKBOOK_SERVER_KEY")
        .output()
        .expect("run linkbook-server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// `linkbook_backup_age_seconds` as `/metrics` says it now.
fn backup_age(addr: &str) -> i64 {
    let (_, metrics) = http_get(addr, "/metrics");
    metric_sample(&metrics, "linkbook_backup_age_seconds")
        .unwrap_or_else(|| panic!("no backup age gauge: {metrics}")) as i64
}

/// (a) A backup taken while two devices write and sync is one consistent,
/// encrypted, private file: it opens with the relay's key, its integrity
/// check passes, it holds the notes (decrypted) and no note text in its
/// bytes; the serving relay exports its age.
#[test]
fn a_backup_while_devices_sync_is_consistent_encrypted_and_private() -> Result<()> {
    let relay = Relay::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&relay);
    assert_eq!(backup_age(&addr), -1, "no backup yet");
    let devices = [
        Device::enrolled(&relay, "north", "Asha"),
        Device::enrolled(&relay, "north", "Ben"),
    ];
    let families = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            family(
                d,
                &format!("Family{i}"),
                &format!("firstnote{i} backupmarker"),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    for d in &devices {
        d.sync(None)?;
    }
    let out = tempfile::tempdir().expect("backup dir");
    let file = out.path().join("relay.backup");
    let file_text = file.to_str().expect("utf-8");
    let data = relay.data.path().to_str().expect("utf-8").to_string();
    let key = relay.key();
    // The devices write and sync until the three backups are done (at least
    // three rounds each), so every backup is taken mid-sync.
    let backups_done = std::sync::atomic::AtomicBool::new(false);
    let synced = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (backups_done, synced) = (&backups_done, &synced);
        let writers: Vec<_> = devices
            .iter()
            .zip(&families)
            .enumerate()
            .map(|(i, (d, &f))| {
                s.spawn(move || -> Result<()> {
                    let mut n = 0;
                    while n < 3 || !backups_done.load(std::sync::atomic::Ordering::SeqCst) {
                        d.add_note(
                            f,
                            &format!("concurrent{i}x{n} backupmarker"),
                            NoteCategory::Visit,
                        )?;
                        d.sync(None)?;
                        synced.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        n += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        for round in 0..3 {
            let force: &[&str] = if round == 0 { &[] } else { &["--force"] };
            let mut args = vec!["--data", &data, "backup", file_text];
            args.extend_from_slice(force);
            let (code, stdout, stderr) = server(&args, &[], false);
            assert_eq!(code, 0, "backup {round}: {stderr}");
            assert!(stdout.contains("backed up"), "{stdout}");
            // The backup is consistent whenever it was taken.
            let copy = linkbook_tests::open_keyed(&file, &key);
            let check: String = copy
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("check");
            assert_eq!(check, "ok", "round {round}");
        }
        backups_done.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in writers {
            w.join().expect("writer thread")?;
        }
        assert!(synced.load(std::sync::atomic::Ordering::SeqCst) >= 6);
        Ok::<_, Error>(())
    })?;
    assert_eq!(mode(&file), 0o600);
    let bytes = std::fs::read(&file).expect("backup");
    assert_eq!(occurrences(&bytes, b"backupmarker"), 0, "no plaintext note");
    assert_eq!(occurrences(&bytes, b"Family0"), 0, "no plaintext name");
    assert!(
        !bytes.starts_with(b"SQLite format 3"),
        "not a plain database"
    );
    // The check above means something: decrypted, the notes are there.
    let key_bytes: [u8; 32] = hex::decode(&key)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    assert!(occurrences(&plaintext_pages(&file, Some(&key_bytes)), b"firstnote0") > 0);
    let copy = linkbook_tests::open_keyed(&file, &key);
    let documents: i64 = copy
        .query_row("SELECT count(*) FROM documents", [], |r| r.get(0))
        .expect("documents");
    assert!(
        documents >= 3,
        "the directory and both families: {documents}"
    );
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(out.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("relay.backup")]);
    let age = backup_age(&addr);
    assert!((0..120).contains(&age), "backup age {age}");
    Ok(())
}

/// (b) The issue's test: back up; devices sync more notes; purge two
/// families (one in the backup, one made after it); stop the relay; lose
/// the data directory; restore the backup; start the relay. The purged
/// families are gone again (not on the relay; a device that never heard
/// of the purges deletes them and cannot upload them), and once the
/// devices synced the relay holds every note they hold.
#[test]
fn a_restored_backup_honours_later_purges_and_gets_back_every_note() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let kept = family(&a, "Keptfamily", "before the backup")?;
    let purged_old = family(
        &a,
        "Oldpurgefamily",
        "oldsecret disclosed before the backup",
    )?;
    a.sync(None)?;
    b.sync(None)?;

    let out = tempfile::tempdir().expect("backup dir");
    let file = out.path().join("relay.backup");
    let r = relay.admin(&["backup", file.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // After the backup: notes from both devices, a new family, and a family
    // made and purged after it (the backup never held it).
    a.add_note(kept, "after the backup, from Asha", NoteCategory::Visit)?;
    let later = family(&a, "Laterfamily", "a family the backup lacks")?;
    let purged_new = family(&a, "Newpurgefamily", "newsecret made after the backup")?;
    a.sync(None)?;
    b.add_note(kept, "after the backup, from Ben", NoteCategory::PhoneCall)?;
    b.sync(None)?;
    a.sync(None)?;
    assert_eq!(b.notes(purged_new)?.len(), 1);
    for id in [purged_old, purged_new] {
        let r = relay.admin(&[
            "family",
            "purge",
            &id.to_string(),
            "--reason",
            "erasure request",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    // Asha hears of the purges; Ben does not sync again before the loss.
    assert_eq!(a.sync(None)?.purged.len(), 2);
    let ledger = ledger_of(relay.data.path());
    assert_eq!(mode(&ledger), 0o600);
    let ledger_text = std::fs::read_to_string(&ledger).expect("ledger");
    assert_eq!(ledger_text.lines().count(), 2, "{ledger_text}");
    assert!(!ledger_text.contains("erasure request"), "no reason text");

    // The data directory is lost; the operator kept the key and the
    // certificate apart, and the backup.
    let saved = tempfile::tempdir().expect("saved");
    let key_file = saved.path().join("relay.key");
    std::fs::write(&key_file, relay.key()).expect("key");
    for f in CERTIFICATES {
        std::fs::copy(relay.data.path().join(f), saved.path().join(f)).expect("certificate");
    }
    let data = relay.stop();
    std::fs::remove_dir_all(data.path()).expect("lose the data directory");

    let data_text = data.path().to_str().expect("utf-8");
    let key_text = key_file.to_str().expect("utf-8");
    let (code, stdout, stderr) = server(
        &[
            "--data",
            data_text,
            "--key-file",
            key_text,
            "restore",
            file.to_str().expect("utf-8"),
        ],
        &[],
        false,
    );
    assert_eq!(code, 0, "restore: {stderr}");
    assert!(stdout.contains("2 purged again"), "{stdout}");
    assert_eq!(
        mode(data.path()),
        0o700,
        "the data directory is made private"
    );
    assert_eq!(mode(&data.path().join("relay.db")), 0o600);
    std::fs::copy(&key_file, data.path().join("relay.key")).expect("key back");
    for f in CERTIFICATES {
        std::fs::copy(saved.path().join(f), data.path().join(f)).expect("certificate back");
    }

    let relay = Relay::start_in(data);
    // What the backup held: the kept family as it was, without the later one.
    let early = Device::enrolled(&relay, "north", "Dana");
    early.sync(None)?;
    assert_eq!(note_texts(&early, kept), ["before the backup"]);
    assert!(matches!(early.family(later), Err(Error::NotFound { .. })));
    {
        let db = relay_db(relay.data.path());
        let count = |sql: &str, id: DocumentId| -> i64 {
            db.query_row(sql, [id.to_string()], |r| r.get(0))
                .expect(sql)
        };
        for id in [purged_old, purged_new] {
            assert_eq!(
                count("SELECT count(*) FROM purged WHERE doc_id = ?1", id),
                1
            );
            assert_eq!(count("SELECT count(*) FROM documents WHERE id = ?1", id), 0);
        }
        let replays: i64 = db
            .query_row(
                "SELECT count(*) FROM audit WHERE action = 'purged' AND worker = 'erasure ledger replay'",
                [],
                |r| r.get(0),
            )
            .expect("audit");
        assert_eq!(replays, 2, "each replayed purge is audited");
    }

    // Ben, who still holds both purged families, syncs with the restored
    // relay: he is told of both purges and deletes them; nothing of them is
    // stored again.
    let s = b.sync_through(&relay.url, None)?;
    let mut told = s.purged.clone();
    told.sort();
    let mut expected = vec![purged_old.to_string(), purged_new.to_string()];
    expected.sort();
    assert_eq!(told, expected, "{s:?}");
    for id in [purged_old, purged_new] {
        assert!(matches!(b.family(id), Err(Error::NotFound { .. })));
    }
    // The restored store has a new id, so each device's first sync with it
    // sends everything it holds (the team directory, the kept and the later
    // family), not only what changed since its last sync: with the old id
    // the devices sent 0 and 1 documents here, trusting sync states the
    // backup is older than.
    assert_eq!(s.documents_sent, 3, "{s:?}");
    let s = a.sync_through(&relay.url, None)?;
    assert_eq!(s.documents_sent, 3, "{s:?}");
    b.sync(None)?;
    a.sync(None)?;
    {
        let db = relay_db(relay.data.path());
        for id in [purged_old, purged_new] {
            let stored: i64 = db
                .query_row(
                    "SELECT count(*) FROM documents WHERE id = ?1",
                    [id.to_string()],
                    |r| r.get(0),
                )
                .expect("documents");
            assert_eq!(stored, 0, "{id} was not uploaded again");
        }
    }
    // Everything the devices hold is on the relay again: a fresh device of
    // the team gets every family and every note, the purged ones not.
    let fresh = Device::enrolled(&relay, "north", "Cleo");
    fresh.sync(None)?;
    let mut families: Vec<DocumentId> = fresh.families()?.into_iter().map(|f| f.id).collect();
    families.sort_by_key(|id| id.to_string());
    let mut expected = vec![kept, later];
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(families, expected);
    assert_eq!(note_texts(&fresh, kept), note_texts(&a, kept));
    assert_eq!(
        note_texts(&fresh, kept).len(),
        3,
        "{:?}",
        note_texts(&fresh, kept)
    );
    assert_eq!(note_texts(&fresh, later), note_texts(&a, later));
    assert_eq!(note_texts(&a, kept), note_texts(&b, kept));
    Ok(())
}

/// (c) Hostile and mistaken input: a garbage file, a backup made with
/// another key, a truncated backup, a running relay are refused with a
/// clear error and leave the data directory as it was; a backup never
/// overwrites a file without --force; a torn ledger tail is tolerated, a
/// damaged middle line is not; PostgreSQL's backups are pg_dump's.
#[test]
fn a_restore_refuses_what_is_not_its_backup_and_changes_nothing() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    family(&a, "Family", "a note")?;
    a.sync(None)?;
    let out = tempfile::tempdir().expect("out");
    let file = out.path().join("relay.backup");
    let file_text = file.to_str().expect("utf-8");
    assert_eq!(relay.admin(&["backup", file_text]).code, 0);

    // A backup to an existing file is refused; the file is untouched.
    let before = std::fs::read(&file).expect("backup");
    let r = relay.admin(&["backup", file_text]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(std::fs::read(&file).expect("backup"), before);

    // A restore while the relay serves is refused.
    let r = relay.admin(&["restore", file_text]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already serving"), "{}", r.stderr);

    // Hostile files, each refused by a memory-capped process.
    let garbage = out.path().join("garbage");
    let mut noise = vec![0_u8; 64 * 1024];
    rand::Rng::fill(&mut rand::rng(), noise.as_mut_slice());
    std::fs::write(&garbage, &noise).expect("garbage");
    let truncated = out.path().join("truncated");
    std::fs::write(&truncated, &before[..before.len() / 3]).expect("truncated");
    let header_only = out.path().join("header-only");
    std::fs::write(&header_only, &before[..before.len().min(4096)]).expect("header");
    let other = Relay::start();
    let foreign = out.path().join("foreign.backup");
    assert_eq!(
        other
            .admin(&["backup", foreign.to_str().expect("utf-8")])
            .code,
        0
    );
    drop(other);
    let empty = out.path().join("empty");
    std::fs::write(&empty, b"").expect("empty");

    let data = relay.stop();
    let snapshot = |dir: &Path| -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name() != "relay.lock" && e.file_name() != "relay.log")
            .map(|e| (e.file_name(), std::fs::read(e.path()).expect("read")))
            .collect();
        files.sort();
        files
    };
    let intact = snapshot(data.path());
    let data_text = data.path().to_str().expect("utf-8");
    for (what, f) in [
        ("garbage", &garbage),
        ("truncated", &truncated),
        ("header only", &header_only),
        ("another relay's key", &foreign),
        ("empty", &empty),
        ("missing", &out.path().join("nothing")),
    ] {
        let (code, _, stderr) = server(
            &["--data", data_text, "restore", f.to_str().expect("utf-8")],
            &[],
            true,
        );
        assert_ne!(code, 0, "{what} refused");
        assert!(
            stderr.contains("is not a Linkbook relay backup this key opens"),
            "{what}: {stderr}"
        );
        assert!(stderr.contains("nothing was changed"), "{what}: {stderr}");
        assert!(
            snapshot(data.path()) == intact,
            "{what}: the data directory is intact"
        );
    }

    // A torn last ledger record (a crash mid-append) is tolerated with a
    // warning, and the next purge appends after cutting it off.
    let ledger = ledger_of(data.path());
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&ledger)
        .expect("ledger");
    torn.write_all(br#"{"at":"2026-12-03T10:00:00+00:00","team":"north","id":"#)
        .expect("torn");
    drop(torn);
    let relay = Relay::start_in(data);
    assert!(relay.log().contains("torn"), "{}", relay.log());
    let doomed = family(&a, "Doomed", "to be purged")?;
    a.sync_through(&relay.url, None)?;
    let r = relay.admin(&["family", "purge", &doomed.to_string(), "--reason", "asked"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = relay.admin(&["erasures", "replay"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("1 records, 0 purged again"),
        "{}",
        r.stdout
    );
    // A damaged record with others after it is an error naming the line.
    let text = std::fs::read_to_string(&ledger).expect("ledger");
    std::fs::write(&ledger, format!("garbage\n{text}")).expect("damage");
    let r = relay.admin(&["erasures", "replay"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("damaged at line 1"), "{}", r.stderr);
    drop(relay);

    // On PostgreSQL, backups are the database's own tools' job.
    let (code, _, stderr) = server(
        &[
            "--database-url",
            "postgres://127.0.0.1:1/none",
            "backup",
            file_text,
        ],
        &[],
        false,
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    Ok(())
}
