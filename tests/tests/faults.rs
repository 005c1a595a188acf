//! Faults on the relay, with real processes and files: the relay killed with
//! SIGKILL in the middle of fifty devices' syncs, its disk full, and a second
//! relay started on the same data directory.
//!
//! What a user would notice is what is checked: a note a device's sync said
//! was delivered is on the relay after a crash; devices end with the same
//! records, none lost and none twice; a full disk gives the worker a clear
//! "try again later", keeps everything on the device and heals by itself.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use linkbook_core::*;
use linkbook_tests::{Backend, Device, Relay, workspace_bin};

const TEAM: &str = "north";

/// The relay's count of stored uploads (its audit), read from its storage
/// while it runs: how the test knows the relay is mid-way.
fn uploads(backend: &Backend, relay: &Relay) -> i64 {
    backend.count(
        relay,
        "SELECT count(*) FROM audit WHERE action = 'uploaded'",
    )
}

/// Every family a device holds and its note ids, sorted (a note held twice
/// would show twice).
fn records(repo: &Repo) -> BTreeMap<DocumentId, Vec<String>> {
    repo.families()
        .expect("families")
        .into_iter()
        .map(|f| {
            let mut notes: Vec<String> = repo
                .notes(f.id)
                .expect("notes")
                .into_iter()
                .map(|n| n.id)
                .collect();
            notes.sort();
            (f.id, notes)
        })
        .collect()
}

/// The notes the relay holds in `families` of `team`, as a new device of
/// that team receives them.
fn relay_notes(
    relay: &Relay,
    team: &str,
    families: &[DocumentId],
) -> BTreeMap<DocumentId, Vec<String>> {
    let checker = Device::enrolled(relay, team, "Checker");
    checker
        .sync_documents(families, None)
        .expect("a fresh device syncs from the restarted relay");
    families
        .iter()
        .map(|f| {
            // A family the relay lacks altogether holds no notes.
            let held = match checker.notes(*f) {
                Ok(notes) => notes.into_iter().map(|n| n.id).collect(),
                Err(Error::NotFound { .. }) => Vec::new(),
                Err(e) => panic!("reading {f} on the checking device: {e}"),
            };
            (*f, held)
        })
        .collect()
}

/// One worker's device and every note it wrote: (family, note id).
struct Worker {
    team: usize,
    device: Device,
    family: DocumentId,
    written: Vec<(DocumentId, String)>,
}

/// How a round of syncs interrupted by a SIGKILL ended.
struct Killed {
    data: tempfile::TempDir,
    /// Per device: its sync returned Ok before the relay died.
    ok: Vec<bool>,
    uploads_at_kill: i64,
}

/// When to kill the relay, as something observable (no guessing with sleeps).
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Once it has stored this many uploads of the round (its audit).
    Uploads(i64),
    /// Once this many devices' syncs have returned Ok.
    Acknowledged(usize),
}

/// Starts every device's sync at once and kills the relay (SIGKILL) at
/// `kill_at`.
fn sync_all_and_kill(
    backend: &Backend,
    workers: &[Worker],
    relay: Relay,
    kill_at: KillPoint,
) -> Killed {
    let start = uploads(backend, &relay);
    let barrier = Barrier::new(workers.len() + 1);
    let (finished, acknowledged) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let syncs: Vec<_> = workers
            .iter()
            .map(|w| {
                let (barrier, finished, acknowledged) = (&barrier, &finished, &acknowledged);
                s.spawn(move || {
                    barrier.wait();
                    let r = w.device.sync(None);
                    if r.is_ok() {
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    r
                })
            })
            .collect();
        barrier.wait();
        let deadline = Instant::now() + Duration::from_secs(120);
        let uploads_at_kill = loop {
            let n = uploads(backend, &relay) - start;
            let reached = match kill_at {
                KillPoint::Uploads(k) => n >= k,
                KillPoint::Acknowledged(k) => acknowledged.load(Ordering::SeqCst) >= k,
            };
            if reached {
                break n;
            }
            // Checked after reading the count: every sync ended before the
            // kill point would make this round test nothing.
            assert!(
                finished.load(Ordering::SeqCst) < workers.len(),
                "all {} syncs ended after {n} uploads, before the kill point {kill_at:?}",
                workers.len()
            );
            assert!(
                Instant::now() < deadline,
                "the relay stored only {n} uploads in 120 s"
            );
            std::thread::sleep(Duration::from_millis(2)); // polling interval
        };
        let data = relay.kill();
        let ok = syncs
            .into_iter()
            .enumerate()
            .map(|(i, h)| match h.join().expect("sync thread") {
                Ok(_) => true,
                // A cut sync says so, as a network error the worker can
                // retry; nothing else.
                Err(Error::Network(_)) => false,
                Err(other) => panic!("device {i}'s sync cut by the crash failed oddly: {other:?}"),
            })
            .collect();
        Killed {
            data,
            ok,
            uploads_at_kill,
        }
    })
}

/// Syncs every device at once; every sync must succeed.
fn sync_all(devices: &[&Device]) {
    std::thread::scope(|s| {
        let syncs: Vec<_> = devices
            .iter()
            .map(|d| s.spawn(move || d.sync(None)))
            .collect();
        for (i, h) in syncs.into_iter().enumerate() {
            if let Err(e) = h.join().expect("sync thread") {
                panic!("device {i} could not sync: {e}");
            }
        }
    });
}

/// After a crash: every note of every device whose sync had returned Ok is
/// on the restarted relay; devices whose sync was cut still hold all theirs.
fn check_after_crash(relay: &Relay, workers: &[Worker], ok: &[bool]) {
    for team in 0..TEAMS {
        let mut families: Vec<DocumentId> = workers
            .iter()
            .zip(ok)
            .filter(|(w, ok)| **ok && w.team == team)
            .flat_map(|(w, _)| w.written.iter().map(|(f, _)| *f))
            .collect();
        if families.is_empty() {
            continue;
        }
        families.sort();
        families.dedup();
        let held = relay_notes(relay, &team_name(team), &families);
        for (i, w) in workers
            .iter()
            .enumerate()
            .filter(|(i, w)| ok[*i] && w.team == team)
        {
            for (family, note) in &w.written {
                assert!(
                    held.get(family).is_some_and(|n| n.contains(note)),
                    "device {i}'s sync returned Ok, but its note {note} in {family} is not on the relay after the crash"
                );
            }
        }
    }
    for (i, w) in workers.iter().enumerate().filter(|(i, _)| !ok[*i]) {
        for (family, note) in &w.written {
            assert!(
                note_ids(&w.device, *family).contains(note),
                "device {i} lost its own note {note} when its sync was cut"
            );
        }
    }
}

/// Restarts the killed relay on the same directory (SQLite recovers its
/// own WAL; `Backend::restart` checks the database) and points every
/// device at it.
fn restart(backend: &Backend, data: tempfile::TempDir, devices: &[&Device]) -> Relay {
    let relay = backend.restart(data);
    for d in devices {
        d.set_server_url(&relay.url)
            .expect("point at the restarted relay");
    }
    relay
}

/// Five teams of ten: fifty devices sync at once, and each device receives
/// its own team's records only (as in an office), which keeps the test's
/// work (every device applies every teammate's changes) within CI's time.
const TEAMS: usize = 5;
const DEVICES: usize = 50;

/// Every device: the workers' and the offices'.
fn all<'a>(workers: &'a [Worker], offices: &'a [Device]) -> Vec<&'a Device> {
    workers.iter().map(|w| &w.device).chain(offices).collect()
}

fn team_name(team: usize) -> String {
    format!("team-{team}")
}

#[test]
fn the_relay_killed_during_fifty_syncs_keeps_every_acknowledged_note_on_sqlite() -> Result<()> {
    killed_during_fifty_syncs(&Backend::sqlite())
}

/// The same on PostgreSQL: a relay node killed mid-commit leaves the
/// database whole (its open transactions roll back when the connections
/// drop) and every acknowledged note committed.
#[test]
fn the_relay_killed_during_fifty_syncs_keeps_every_acknowledged_note_on_postgresql() -> Result<()> {
    killed_during_fifty_syncs(&Backend::postgres())
}

/// The relay killed three times during fifty devices' syncs keeps every
/// acknowledged note and the devices converge.
fn killed_during_fifty_syncs(backend: &Backend) -> Result<()> {
    let t0 = Instant::now();
    // The relay's files in memory (/dev/shm) where there is one: a process
    // kill loses nothing SQLite wrote, fsynced or not (only a power cut
    // needs the fsyncs of synchronous=FULL, which keeps acknowledged
    // changes then too), and on a shared disk each fsync took ~4 ms, which
    // made fifty devices' syncs take minutes.
    let relay = backend.start_in_memory();
    // Per team, an office device with a family all its workers write in.
    let mut offices = Vec::new();
    let mut shared = Vec::new();
    let mut office_notes = Vec::new();
    for team in 0..TEAMS {
        let office = Device::enrolled(&relay, &team_name(team), "Office");
        let family = office.add_family(&NewFamily {
            name: format!("Shared family of team {team}"),
            ..Default::default()
        })?;
        office_notes.push((
            family,
            office.add_note(family, "referral", NoteCategory::Other)?,
        ));
        office.sync(None)?;
        offices.push(office);
        shared.push(family);
    }
    // Fifty workers, enrolled four at a time (each enrolment is an admin
    // process), each with a family of their own.
    let devices: Vec<(usize, Device)> = std::thread::scope(|s| {
        let chunks: Vec<_> = (0..4)
            .map(|c| {
                let relay = &relay;
                s.spawn(move || {
                    (c * DEVICES / 4..(c + 1) * DEVICES / 4)
                        .map(|i| {
                            let team = i % TEAMS;
                            (
                                team,
                                Device::enrolled(relay, &team_name(team), &format!("Worker {i}")),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks
            .into_iter()
            .flat_map(|h| h.join().expect("enrol thread"))
            .collect()
    });
    let mut workers: Vec<Worker> = devices
        .into_iter()
        .enumerate()
        .map(|(i, (team, device))| {
            let family = device.add_family(&NewFamily {
                name: format!("Family of worker {i}"),
                ..Default::default()
            })?;
            Ok(Worker {
                team,
                device,
                family,
                written: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;
    sync_all(&all(&workers, &offices));
    let setup = t0.elapsed();

    // Three crashes at different points: early (a few uploads stored), once
    // some devices were told their sync succeeded, and in between.
    let mut relay = relay;
    let mut faults = Vec::new();
    for (round, kill_at) in [
        (0, KillPoint::Uploads(8)),
        (1, KillPoint::Acknowledged(5)),
        (2, KillPoint::Uploads(40)),
    ] {
        // Offline work on the team's shared family and the worker's own.
        for (i, w) in workers.iter_mut().enumerate() {
            for f in [shared[w.team], w.family] {
                let text = format!("round {round}: worker {i} visit notes {}", "x".repeat(300));
                let note = w.device.add_note(f, &text, NoteCategory::Visit)?;
                w.written.push((f, note));
            }
        }
        let t = Instant::now();
        let Killed {
            data,
            ok,
            uploads_at_kill,
        } = sync_all_and_kill(backend, &workers, relay, kill_at);
        let synced = t.elapsed();
        relay = restart(backend, data, &all(&workers, &offices));
        check_after_crash(&relay, &workers, &ok);
        let acknowledged = ok.iter().filter(|ok| **ok).count();
        faults.push((uploads_at_kill, acknowledged, synced));
    }
    // At least one crash must have cut syncs and one have come after some
    // were acknowledged, or the checks above proved nothing.
    assert!(
        faults.iter().any(|(_, acked, _)| *acked < DEVICES),
        "no sync was cut by the crashes: {faults:?}"
    );
    assert!(
        faults.iter().any(|(_, acked, _)| *acked > 0),
        "no sync was acknowledged before a crash: {faults:?}"
    );

    // Everyone syncs again (twice: the second pass brings each device what
    // its teammates uploaded during the first) and each team's devices hold
    // the same records: every note written, none twice.
    let t = Instant::now();
    sync_all(&all(&workers, &offices));
    sync_all(&all(&workers, &offices));
    let resynced = t.elapsed();
    let mut notes_written = 0;
    for team in 0..TEAMS {
        let mut expected: BTreeMap<DocumentId, Vec<String>> = BTreeMap::new();
        expected.insert(shared[team], vec![office_notes[team].1.clone()]);
        for w in workers.iter().filter(|w| w.team == team) {
            expected.entry(w.family).or_default();
            for (family, note) in &w.written {
                expected.entry(*family).or_default().push(note.clone());
            }
        }
        for notes in expected.values_mut() {
            notes.sort();
        }
        notes_written += expected.values().map(Vec::len).sum::<usize>();
        let office = &offices[team];
        assert_eq!(records(office), expected, "team {team}'s office device");
        for (i, w) in workers.iter().enumerate().filter(|(_, w)| w.team == team) {
            assert_eq!(records(&w.device), expected, "device {i} of team {team}");
            for f in expected.keys() {
                assert_eq!(
                    w.device.heads(*f)?,
                    office.heads(*f)?,
                    "device {i} differs on {f}"
                );
            }
        }
    }
    if let Backend::Sqlite = backend {
        assert_eq!(relay.integrity_check(), "ok");
    }
    eprintln!(
        "{}: {DEVICES} devices in {TEAMS} teams, {notes_written} notes; SIGKILLs at (uploads stored, syncs acknowledged, after): {faults:?}; setup {setup:?}, final syncs {resynced:?}, total {:?}",
        backend.name(),
        t0.elapsed()
    );
    Ok(())
}

/// The size of a file in the relay's data directory (0 if absent).
fn file_size(relay: &Relay, name: &str) -> u64 {
    std::fs::metadata(relay.data.path().join(name)).map_or(0, |m| m.len())
}

fn add_family_with_notes(device: &Device, name: &str, notes: usize) -> Result<DocumentId> {
    let family = device.add_family(&NewFamily {
        name: name.into(),
        ..Default::default()
    })?;
    for i in 0..notes {
        let text = format!("{name} note {i}: {}", "y".repeat(500));
        device.add_note(family, &text, NoteCategory::Visit)?;
    }
    Ok(family)
}

fn note_ids(device: &Device, family: DocumentId) -> Vec<String> {
    let mut ids: Vec<String> = device
        .notes(family)
        .expect("notes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_full_disk_on_the_relay_gives_a_clear_error_loses_nothing_and_heals_when_space_returns()
-> Result<()> {
    let relay = Relay::start_fillable(tempfile::tempdir().expect("relay dir"));
    let asha = Device::enrolled(&relay, TEAM, "Asha");
    let ben = Device::enrolled(&relay, TEAM, "Ben");
    let smith = add_family_with_notes(&asha, "Smith", 5)?;
    asha.sync(None)?;
    ben.sync(None)?;

    // The disk fills up: no file of the relay may grow any more. SQLite's
    // WAL only grows here (this fresh relay never reached a checkpoint that
    // restarts it), so the next write fails.
    let wal = file_size(&relay, "relay.db-wal");
    assert!(
        file_size(&relay, "relay.log") < wal,
        "the relay's log must stay writable to say what failed"
    );
    relay.limit_file_size(Some(wal));

    let jones = add_family_with_notes(&asha, "Jones", 30)?;
    let written = note_ids(&asha, jones);
    for attempt in 0..2 {
        match asha.sync(None) {
            Err(Error::Network(m))
                if m.contains("could not store your changes; try again later") => {}
            other => {
                panic!("attempt {attempt} on a full disk: expected a clear error, got {other:?}")
            }
        }
        // Nothing is lost on the device.
        assert_eq!(note_ids(&asha, jones), written);
    }
    let log = relay.log();
    assert!(
        log.contains("storing changes failed: the relay's disk is full or not writable"),
        "the relay's log does not say its disk failed:\n{log}"
    );
    // Still serving: a device with nothing to upload syncs (reading needs no
    // space), and the database is sound.
    let s = ben.sync(None)?;
    assert_eq!(s.documents_sent, 0, "{s:?}");
    assert!(matches!(ben.notes(jones), Err(Error::NotFound { .. })));
    assert_eq!(relay.integrity_check(), "ok");

    // Space returns: the next sync delivers everything, without restarting
    // the relay.
    relay.limit_file_size(None);
    asha.sync(None)?;
    ben.sync(None)?;
    assert_eq!(note_ids(&ben, jones), written);
    assert_eq!(note_ids(&ben, smith).len(), 5);
    assert_eq!(relay.integrity_check(), "ok");

    // Committed, not only held in memory: a restarted relay has it all.
    let relay = Relay::start_in(relay.stop());
    let carl = Device::enrolled(&relay, TEAM, "Carl");
    carl.sync(None)?;
    assert_eq!(note_ids(&carl, jones), written);
    Ok(())
}

#[test]
fn a_second_relay_on_the_same_data_directory_refuses_to_start_and_the_first_keeps_serving()
-> Result<()> {
    let relay = Relay::start();
    let asha = Device::enrolled(&relay, TEAM, "Asha");
    let smith = add_family_with_notes(&asha, "Smith", 3)?;
    asha.sync(None)?;

    let second = Command::new(workspace_bin("linkbook-server"))
        .arg("--data")
        .arg(relay.data.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second linkbook-server");
    let out = wait_for_exit(second, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second relay did not fail: {stderr}"
    );
    assert!(
        stderr.contains("another linkbook-server")
            && stderr.contains(&format!("process {}", relay.pid()))
            && stderr.contains("already serving"),
        "unclear refusal: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));

    // The first keeps serving, and the admin commands (which open the
    // database directly) work beside it.
    let ben = Device::enrolled(&relay, TEAM, "Ben");
    ben.sync(None)?;
    assert_eq!(note_ids(&ben, smith).len(), 3);
    let list = relay.admin(&["device", "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains("Ben"));
    let audit = relay.admin(&["audit", "--json"]);
    assert_eq!(audit.code, 0, "{}", audit.stderr);

    // A crashed relay leaves no stale lock: one starts at once on the same
    // directory.
    let relay = Relay::start_in(relay.kill());
    ben.set_server_url(&relay.url)?;
    asha.add_note(smith, "after the crash", NoteCategory::Other)?;
    asha.set_server_url(&relay.url)?;
    asha.sync(None)?;
    ben.sync(None)?;
    assert_eq!(note_ids(&ben, smith).len(), 4);
    Ok(())
}

/// Waits (bounded) for a process to exit and collects what it printed.
fn wait_for_exit(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("poll the process") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "still running after {limit:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether this process runs as root (chmod does not stop root).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_relay_whose_database_is_read_only_refuses_to_start_instead_of_refusing_every_upload() {
    let data = tempfile::tempdir().expect("relay dir");
    let code = Command::new(workspace_bin("linkbook-server"))
        .arg("--data")
        .arg(data.path())
        .args(["device", "enrol", "--team", TEAM, "--worker", "Asha"])
        .output()
        .expect("run linkbook-server");
    assert!(code.status.success(), "{code:?}");
    let db = data.path().join("relay.db");
    let mut perms = std::fs::metadata(&db).expect("relay.db").permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&db, perms).expect("chmod");
    // Root writes read-only files anyway: then the relay runs as nobody
    // (util-linux setpriv, no unsafe code), owning the directory.
    let mut relay = if running_as_root() {
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(data.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(workspace_bin("linkbook-server"));
        c
    } else {
        Command::new(workspace_bin("linkbook-server"))
    };
    let child = relay
        .arg("--data")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start linkbook-server");
    let out = wait_for_exit(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("relay.db is read-only") && stderr.contains("must be able to write it"),
        "unclear refusal: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

/// Random cut points (printed when it fails) beside `sync.rs`'s fixed
/// ones: a cut anywhere, in the TLS handshake, the pipelined opening, or a
/// reply, costs only a retry.
#[test]
fn syncs_cut_at_random_points_lose_nothing_and_two_devices_converge() -> Result<()> {
    let relay = Relay::start();
    let asha = Device::enrolled(&relay, TEAM, "Asha");
    let ben = Device::enrolled(&relay, TEAM, "Ben");
    let mut written: Vec<(DocumentId, String)> = Vec::new();
    let mut families = Vec::new();
    for (who, device) in [("Asha", &asha), ("Ben", &ben)] {
        for f in 0..2 {
            let family = device.add_family(&NewFamily {
                name: format!("{who}'s family {f}"),
                ..Default::default()
            })?;
            families.push(family);
        }
    }
    let (mut cuts, mut cut_points) = (0, Vec::new());
    for round in 0..8 {
        // Both write offline, into their own families and each other's
        // (once they have them), then sync through a network that drops
        // after a random number of bytes.
        for (who, device) in [("Asha", &asha), ("Ben", &ben)] {
            for family in &families {
                if device.notes(*family).is_ok() {
                    let text = format!("round {round}: {who} {}", "z".repeat(400));
                    written.push((
                        *family,
                        device.add_note(*family, &text, NoteCategory::Visit)?,
                    ));
                }
            }
        }
        for device in [&asha, &ben] {
            let cut_after = rand::random_range(200..16_000usize);
            cut_points.push(cut_after);
            let proxy = linkbook_tests::CutProxy::start(relay.addr(), cut_after);
            device.set_server_url(&proxy.url())?;
            match device.sync(None) {
                Ok(_) => {}
                Err(Error::Network(_)) => cuts += 1,
                Err(other) => panic!(
                    "cut at {cut_after} bytes: unexpected error {other:?} (cut points so far {cut_points:?})"
                ),
            }
        }
    }
    assert!(
        cuts >= 2,
        "only {cuts} of 16 syncs were cut: {cut_points:?}"
    );
    for device in [&asha, &ben, &asha] {
        device.set_server_url(&relay.url)?;
        device.sync(None)?;
    }
    for (family, note) in &written {
        for (who, device) in [("Asha", &asha), ("Ben", &ben)] {
            assert!(
                note_ids(device, *family).contains(note),
                "{who} lacks note {note} (cut points {cut_points:?})"
            );
        }
    }
    assert_eq!(records(&asha), records(&ben), "cut points {cut_points:?}");
    assert_eq!(relay.integrity_check(), "ok");
    eprintln!(
        "{cuts} of 16 syncs cut at random points {cut_points:?}; {} notes",
        written.len()
    );
    Ok(())
}
