//! Issue 12, finding 4: the relay's data is private at rest. Under the
//! usual umask 022, the data directory is 0700 and every file in it 0600,
//! and no file holds a family name or note text in the clear (SQLCipher);
//! the key is `relay.key`, `LINKBOOK_SERVER_KEY` or `--key-file`; a wrong
//! key is a clear error that changes nothing; a plaintext database made
//! before this is encrypted in place with nothing lost.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linkbook_core::{DocumentId, NewFamily, NoteCategory};
use linkbook_tests::{Device, Relay, Run, workspace_bin};

const FAMILY: &str = "Quillfeather-Ombasi";
const NOTE: &str = "Mother says Dariusz moved to HMP Wakefield; son Tomasz frightened of visits";

/// `linkbook-server` run through `sh` with umask 022, as a service
/// started from an ordinary shell would be.
fn under_umask_022() -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 022; exec "$0" "$@""#)
        .arg(workspace_bin("linkbook-server"));
    cmd
}

/// Every directory and file under `dir` (itself included), with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        assert!(out.len() < 10_000, "too many files under {}", dir.display());
        let meta = std::fs::symlink_metadata(&p).expect("metadata");
        out.push((p.clone(), meta.permissions().mode() & 0o7777, meta.is_dir()));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read dir") {
                todo.push(e.expect("entry").path());
            }
        }
    }
    out
}

/// Files under `dir` (recursively) whose raw bytes contain `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    modes(dir)
        .into_iter()
        .filter(|(p, _, is_dir)| {
            !is_dir
                && std::fs::read(p)
                    .unwrap_or_default()
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
        })
        .map(|(p, _, _)| p)
        .collect()
}

fn assert_private(dir: &Path) {
    let all = modes(dir);
    assert!(all.len() >= 3, "{all:?}");
    for (path, mode, is_dir) in all {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}, not {want:o}", path.display());
    }
}

fn add_family(device: &Device, name: &str, note: &str) -> DocumentId {
    let family = device
        .add_family(&NewFamily {
            name: name.into(),
            ..Default::default()
        })
        .expect("family");
    device
        .add_note(family, note, NoteCategory::Other)
        .expect("note");
    family
}

fn admin_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    Command::new(workspace_bin("linkbook-server"))
        .arg("--data")
        .arg(data)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run linkbook-server")
        .into()
}

/// Runs `serve` on `data` expecting it to refuse to start; its stderr.
fn refused_serve(data: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(workspace_bin("linkbook-server"))
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start linkbook-server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the relay started: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn random_hex_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[test]
fn under_umask_022_the_relays_files_are_private_and_hold_no_family_name_or_note_text() {
    // An existing directory made under umask 022 (0755), as `mkdir` by an
    // operator leaves it: the relay tightens it, and says so.
    let data = tempfile::tempdir().expect("relay dir");
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let relay = Relay::start_command(data, &[], &[], under_umask_022());
    let asha = Device::enrolled(&relay, "north", "Asha");
    let family = add_family(&asha, FAMILY, NOTE);
    asha.sync(None).expect("Asha syncs");
    let ben = Device::enrolled(&relay, "north", "Ben");
    ben.sync(None).expect("Ben syncs");
    assert_eq!(ben.family(family).expect("Ben has it").name, FAMILY);
    // The admin commands work on the encrypted database beside the relay.
    let r = relay.admin(&["device", "list"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("Asha") && r.stdout.contains("Ben"),
        "{r:?}"
    );
    let r = relay.admin(&["audit", "--family", &family.to_string()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("uploaded"), "{r:?}");
    let r = relay.admin(&["document", "refused"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = relay.admin(&["export-person", "--name", "quillfeather"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(NOTE), "the export reads the note back");

    // While it runs (WAL and SHM present) and after it stopped.
    let dir = relay.data.path().to_path_buf();
    assert_private(&dir);
    for needle in [FAMILY, NOTE, "Wakefield", "Quillfeather"] {
        assert_eq!(
            files_holding(&dir, needle),
            Vec::<PathBuf>::new(),
            "{needle}"
        );
    }
    let names: Vec<String> = modes(&dir)
        .iter()
        .filter_map(|(p, _, _)| Some(p.file_name()?.to_str()?.to_string()))
        .collect();
    for f in [
        "relay.db",
        "relay.db-wal",
        "relay.db-shm",
        "relay.key",
        "relay.lock",
        "dev-key.pem",
        "dev-cert.pem",
        "dev-ca.pem",
    ] {
        assert!(names.iter().any(|n| n == f), "{f} missing: {names:?}");
    }
    assert!(
        relay.log().contains("made it private"),
        "the loosened directory is reported: {}",
        relay.log()
    );

    // With the key the data is there: decrypted to plaintext, the same
    // grep finds it (so the grep above could fail).
    let plain = tempfile::tempdir().expect("plain dir");
    let plain_db = plain.path().join("plain.db");
    // Attached databases open with the connection's flags (no CREATE).
    std::fs::File::create(&plain_db).expect("plain file");
    let db = relay.db();
    db.execute(
        "ATTACH DATABASE ?1 AS plain KEY ''",
        [plain_db.to_str().expect("utf-8")],
    )
    .expect("attach");
    db.query_row("SELECT sqlcipher_export('plain')", [], |_| Ok(()))
        .expect("export");
    db.execute_batch("DETACH DATABASE plain").expect("detach");
    assert_eq!(files_holding(plain.path(), FAMILY), vec![plain_db.clone()]);
    assert_eq!(files_holding(plain.path(), "Wakefield"), vec![plain_db]);

    let data = relay.stop();
    assert_private(data.path());
    for needle in [FAMILY, NOTE, "Wakefield"] {
        assert_eq!(
            files_holding(data.path(), needle),
            Vec::<PathBuf>::new(),
            "{needle}"
        );
    }
}

#[test]
fn a_fresh_data_directory_is_made_private_and_a_wrong_key_is_a_clear_error_that_changes_nothing() {
    let parent = tempfile::tempdir().expect("parent");
    let data = parent.path().join("relay-data");
    // Any command makes the directory: an admin command under umask 022.
    let out = under_umask_022()
        .arg("--data")
        .arg(&data)
        .args(["device", "enrol", "--team", "north", "--worker", "Asha"])
        .output()
        .expect("enrol");
    assert!(out.status.success(), "{out:?}");
    assert_private(&data);
    let key = linkbook_tests::relay_key(&data);
    let before = std::fs::read(data.join("relay.db")).expect("db");
    assert_ne!(&before[..16], b"SQLite format 3\0", "encrypted");

    // A wrong key: every command, and the relay, refuse with the typed
    // error, non-zero, and the files are unchanged.
    let wrong = random_hex_key();
    let r = admin_env(
        &data,
        &["device", "list"],
        &[("LINKBOOK_SERVER_KEY", &wrong)],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("the relay database could not be opened with this key"),
        "{r:?}"
    );
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains(&wrong),
        "{r:?}"
    );
    let stderr = refused_serve(&data, &[], &[("LINKBOOK_SERVER_KEY", &wrong)]);
    assert!(
        stderr.contains("the relay database could not be opened with this key"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&wrong) && !stderr.contains(&key),
        "no key in the log"
    );
    let wrong_file = parent.path().join("wrong.key");
    std::fs::write(&wrong_file, &wrong).expect("key file");
    let r = admin_env(
        &data,
        &["--key-file", wrong_file.to_str().expect("utf-8"), "audit"],
        &[],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("could not be opened with this key"),
        "{r:?}"
    );
    // Malformed keys are named as such.
    let r = admin_env(
        &data,
        &["device", "list"],
        &[("LINKBOOK_SERVER_KEY", "abc")],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("64 hexadecimal characters"), "{r:?}");
    assert_eq!(std::fs::read(data.join("relay.db")).expect("db"), before);
    assert_eq!(linkbook_tests::relay_key(&data), key);

    // The right key, given in the environment, works; a lost relay.key is
    // not silently replaced.
    let r = admin_env(&data, &["device", "list"], &[("LINKBOOK_SERVER_KEY", &key)]);
    assert_eq!(r.code, 0, "{r:?}");
    std::fs::rename(data.join("relay.key"), parent.path().join("backup.key")).expect("mv");
    let r = admin_env(&data, &["device", "list"], &[]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("restore the key from your backup"),
        "{r:?}"
    );
    assert!(!data.join("relay.key").exists());
}

#[test]
fn a_key_file_outside_the_data_directory_keys_the_relay_and_its_admin_commands() {
    let keys = tempfile::tempdir().expect("key dir");
    let key_file = keys.path().join("relay.key");
    let key = random_hex_key();
    std::fs::write(&key_file, &key).expect("key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let key_path = key_file.to_str().expect("utf-8");

    let data = tempfile::tempdir().expect("relay dir");
    let relay = Relay::start_command(
        data,
        &["--key-file", key_path],
        &[],
        Command::new(workspace_bin("linkbook-server")),
    );
    // Admin commands need the key too: without it, the encrypted database
    // is not theirs to open (and no key file is invented for it).
    let r = relay.admin(&["device", "list"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("restore the key"), "{r:?}");
    let r = relay.admin(&[
        "--key-file",
        key_path,
        "device",
        "enrol",
        "--team",
        "north",
        "--worker",
        "Asha",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let asha = Device::new();
    asha.enrol(
        &relay.url,
        r.stdout.trim(),
        Some(&relay.ca_pem()),
        "Asha's tablet",
    )
    .expect("enrol");
    let family = add_family(&asha, FAMILY, NOTE);
    asha.sync(None).expect("sync");
    assert!(!relay.data.path().join("relay.key").exists());
    let conn = linkbook_tests::open_keyed(&relay.db_path(), &key);
    let documents: i64 = conn
        .query_row("SELECT count(*) FROM documents", [], |r| r.get(0))
        .expect("readable with the file's key");
    assert!(documents >= 2, "{documents}");
    drop(conn);

    // Restarted with the same key in the environment: everything is there.
    let data = relay.stop();
    let relay = Relay::start_command(
        data,
        &[],
        &[("LINKBOOK_SERVER_KEY", &key)],
        Command::new(workspace_bin("linkbook-server")),
    );
    let r = admin_env(
        relay.data.path(),
        &[
            "--key-file",
            key_path,
            "device",
            "enrol",
            "--team",
            "north",
            "--worker",
            "Ben",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let ben = Device::new();
    ben.enrol(
        &relay.url,
        r.stdout.trim(),
        Some(&relay.ca_pem()),
        "Ben's tablet",
    )
    .expect("enrol");
    ben.sync(None).expect("Ben syncs");
    assert_eq!(ben.notes(family).expect("notes")[0].text, NOTE);
}

#[test]
fn a_plaintext_relay_database_is_encrypted_in_place_on_start_with_nothing_lost() {
    let relay = Relay::start();
    let asha = Device::enrolled(&relay, "north", "Asha");
    let ben = Device::enrolled(&relay, "north", "Ben");
    let family = add_family(&asha, FAMILY, NOTE);
    // Synced on its own, the first note is one small change the relay
    // stores as it came (no compressed column), so a plaintext file shows it.
    asha.sync(None).expect("Asha syncs");
    for i in 0..20 {
        asha.add_note(family, &format!("visit {i} went well"), NoteCategory::Visit)
            .expect("note");
    }
    asha.sync(None).expect("Asha syncs");
    ben.sync(None).expect("Ben syncs");
    let devices = relay.admin(&["device", "list"]).stdout;

    // What a relay from before encryption left: the same rows in a
    // plaintext relay.db, in WAL mode with its last commit still in the
    // WAL (a relay killed before a checkpoint), and no relay.key.
    let data = relay.stop();
    let old = tempfile::tempdir().expect("old");
    let old_db = old.path().join("relay.db");
    {
        std::fs::File::create(&old_db).expect("plain file");
        let db = linkbook_tests::relay_db(data.path());
        let version: u32 = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        db.execute(
            "ATTACH DATABASE ?1 AS plain KEY ''",
            [old_db.to_str().expect("utf-8")],
        )
        .expect("attach");
        db.query_row("SELECT sqlcipher_export('plain')", [], |_| Ok(()))
            .expect("export");
        db.execute_batch(&format!(
            "PRAGMA plain.user_version = {version}; DETACH DATABASE plain;"
        ))
        .expect("version");
    }
    let plain = rusqlite::Connection::open(&old_db).expect("plain");
    plain
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             INSERT INTO audit (at, action) VALUES ('2026-11-30T00:00:00Z', 'written-before-the-upgrade');",
        )
        .expect("a commit left in the WAL");
    for f in ["relay.db", "relay.db-wal", "relay.db-shm", "relay.key"] {
        let _ = std::fs::remove_file(data.path().join(f));
    }
    std::fs::copy(&old_db, data.path().join("relay.db")).expect("copy db");
    std::fs::copy(
        old.path().join("relay.db-wal"),
        data.path().join("relay.db-wal"),
    )
    .expect("copy wal");
    drop(plain);
    assert_eq!(
        &std::fs::read(data.path().join("relay.db")).expect("db")[..16],
        b"SQLite format 3\0"
    );
    assert!(
        !files_holding(data.path(), "Wakefield").is_empty(),
        "the old database is plaintext"
    );

    let started = Instant::now();
    let relay = Relay::start_in(data);
    let conversion = started.elapsed();
    assert!(
        relay.log().contains("encrypted it in place"),
        "{}",
        relay.log()
    );
    eprintln!(
        "relay start with in-place conversion: {conversion:?}; {}",
        relay
            .log()
            .lines()
            .find(|l| l.contains("encrypted it in place"))
            .unwrap_or("")
    );
    let raw = std::fs::read(relay.db_path()).expect("db");
    assert_ne!(&raw[..16], b"SQLite format 3\0");
    for needle in [FAMILY, NOTE, "Wakefield", "visit 3 went well"] {
        assert_eq!(
            files_holding(relay.data.path(), needle),
            Vec::<PathBuf>::new(),
            "{needle}"
        );
    }
    assert!(!relay.data.path().join("relay.db.encrypting").exists());
    assert_eq!(relay.integrity_check(), "ok");
    let kept: i64 = relay
        .db()
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'written-before-the-upgrade'",
            [],
            |r| r.get(0),
        )
        .expect("audit");
    assert_eq!(kept, 1, "the WAL's last commit was kept");
    assert_eq!(relay.admin(&["device", "list"]).stdout, devices);

    // Every device and document still works: the old tokens, the stored
    // family with all its notes, new notes both ways, a new device.
    for d in [&asha, &ben] {
        d.set_server_url(&relay.url)
            .expect("the restarted relay's port");
    }
    ben.add_note(family, "Ben's note after the upgrade", NoteCategory::Other)
        .expect("note");
    ben.sync(None).expect("Ben syncs after the upgrade");
    asha.sync(None).expect("Asha syncs after the upgrade");
    assert!(
        asha.notes(family)
            .expect("notes")
            .iter()
            .any(|n| n.text == "Ben's note after the upgrade")
    );
    let cara = Device::enrolled(&relay, "north", "Cara");
    cara.sync(None).expect("Cara syncs");
    let notes = cara.notes(family).expect("Cara has the family");
    assert_eq!(notes.len(), 22, "{notes:?}");
    assert!(notes.iter().any(|n| n.text == NOTE));
    assert_private(relay.data.path());
}

/// The relay's CPU cost of encryption, a figure for the record (run by
/// hand with `--ignored`, against this build and an older
/// one): 60 syncs, each one new note, and what the relay spent on them.
/// A figure, not a check: `cargo test --test at_rest -- --ignored`.
#[test]
#[ignore = "a figure for the record, run by hand"]
fn figure_relay_cpu_per_sync() {
    let relay = Relay::start();
    let asha = Device::enrolled(&relay, "north", "Asha");
    let family = add_family(&asha, FAMILY, NOTE);
    asha.sync(None).expect("sync");
    let (ticks, started) = (linkbook_tests::cpu_ticks(relay.pid()), Instant::now());
    for i in 0..60 {
        asha.add_note(family, &format!("note {i} {NOTE}"), NoteCategory::Other)
            .expect("note");
        asha.sync(None).expect("sync");
    }
    eprintln!(
        "60 syncs: relay CPU {} ticks (1/100 s), wall {:?}",
        linkbook_tests::cpu_ticks(relay.pid()) - ticks,
        started.elapsed()
    );
}
