//! Copies of a device (issue 12, finding 3): a restored phone backup, a
//! copied CLI profile or a VM snapshot shares the original's history. Each
//! opened store writes with its own Automerge actor (docs/adr/0007), so the
//! two never write clashing changes: both sync, a third device holds
//! everything either wrote, and conflicts name the device, the worker and
//! the time of each value. A clash made the old way (two stores writing
//! under one actor) is refused by the relay for that document only, with
//! its own error, and the device's other documents still sync.

use std::path::Path;
use std::time::{Duration, Instant};

use automerge::{ReadDoc, transaction::Transactable};
use chrono::{DateTime, Utc};
use linkbook_core::{DatabaseKey, DocumentId, Repo, protocol::ACTOR_CLASH};
use linkbook_tests::{CliDevice, Relay};

fn enrol(relay: &Relay, device: &CliDevice, worker: &str) {
    device.enrol(relay, "north", worker);
}

/// A byte copy of a profile directory, as a backup restore makes it.
fn copy_profile(from: &CliDevice) -> CliDevice {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(from.data(), dir.path());
    CliDevice {
        dir,
        key: from.key.clone(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read profile") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Runs `args` and returns the clock window it ran in.
fn timed(device: &CliDevice, args: &[&str]) -> (DateTime<Utc>, DateTime<Utc>) {
    let before = Utc::now();
    device.ok(args);
    (before, Utc::now())
}

fn note_texts(device: &CliDevice, family: &str) -> Vec<String> {
    let notes = device.json(&["note", "list", family]);
    notes
        .as_array()
        .expect("notes")
        .iter()
        .map(|n| n["text"].as_str().expect("text").to_string())
        .collect()
}

#[test]
fn a_copied_device_and_its_original_both_sync_and_conflicts_name_worker_and_time() {
    let relay = Relay::start();
    let a = CliDevice::new("Asha");
    enrol(&relay, &a, "Asha");
    let family = a.ok(&["family", "add", "--name", "Smith"]);
    for text in ["first visit: mum and two boys", "school called about Tommy"] {
        a.ok(&[
            "note",
            "add",
            &family,
            "--text",
            text,
            "--category",
            "visit",
        ]);
    }
    assert_eq!(a.run(&["sync"]).code, 0);
    let device_id = a.json(&["profile", "show"])["device_id"]
        .as_str()
        .expect("device id")
        .to_string();

    // The backup restored onto a second phone, used by a colleague.
    let a2 = copy_profile(&a);
    assert_eq!(
        a2.json(&["profile", "show"])["device_id"],
        device_id.as_str()
    );
    a2.ok(&["profile", "set", "--worker", "Bea"]);

    // Divergent offline work on both.
    a.ok(&[
        "note",
        "add",
        &family,
        "--text",
        "original: home visit booked",
    ]);
    let a_edit = timed(&a, &["family", "update", &family, "--name", "Smith-Jones"]);
    a2.ok(&[
        "note",
        "add",
        &family,
        "--text",
        "copy: helpline call from gran",
    ]);
    let a2_edit = timed(&a2, &["family", "update", &family, "--name", "Smyth"]);
    let patel = a2.ok(&["family", "add", "--name", "Patel"]);
    a2.ok(&[
        "note",
        "add",
        &patel,
        "--text",
        "copy: first contact, Patel family",
    ]);

    for (who, device) in [("original", &a), ("copy", &a2)] {
        let r = device.run(&["sync"]);
        assert_eq!(r.code, 0, "the {who} syncs: {r:?}");
        assert!(!r.stderr.contains("error"), "the {who}: {}", r.stderr);
    }

    // A third device holds every note and field edit of both.
    let c = CliDevice::new("Cara");
    enrol(&relay, &c, "Cara");
    assert_eq!(c.run(&["sync"]).code, 0);
    let mut notes = note_texts(&c, &family);
    notes.sort();
    assert_eq!(
        notes,
        [
            "copy: helpline call from gran",
            "first visit: mum and two boys",
            "original: home visit booked",
            "school called about Tommy",
        ]
    );
    assert_eq!(
        note_texts(&c, &patel),
        ["copy: first contact, Patel family"]
    );

    // The clashing name is a conflict naming device, worker and time of each.
    let conflicts = c.json(&["conflicts"]);
    let conflicts = conflicts.as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["document_id"], family.as_str());
    assert_eq!(conflicts[0]["path"], "household/name");
    let values = conflicts[0]["values"].as_array().expect("values");
    assert_eq!(values.len(), 2, "{values:?}");
    for (value, worker, (before, after)) in
        [("Smith-Jones", "Asha", a_edit), ("Smyth", "Bea", a2_edit)]
    {
        let v = values
            .iter()
            .find(|v| v["value"] == value)
            .unwrap_or_else(|| panic!("{value} among {values:?}"));
        assert_eq!(v["device"], device_id.as_str(), "{v}");
        assert_eq!(v["worker"], worker, "{v}");
        let time: DateTime<Utc> = v["time"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a time in {v}"));
        let slack = chrono::Duration::seconds(1);
        assert!(
            time >= before - slack && time <= after + slack,
            "{value} written between {before} and {after}, shown as {time}"
        );
    }
    let text = c.ok(&["conflicts"]);
    for part in [
        "Smith-Jones",
        "Smyth",
        "by Asha at",
        "by Bea at",
        &device_id,
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    // The original learns of the copy's work at its next sync, though the
    // copy uploaded it under the same device id and token: the relay leaves
    // out of `changed-since` only what the original's own last session
    // uploaded (relay::Sessions), so a copy's uploads are never hidden.
    assert_eq!(a.run(&["sync"]).code, 0);
    let mut on_original = note_texts(&a, &family);
    on_original.sort();
    assert_eq!(on_original, notes, "the original holds the copy's note");
    assert_eq!(
        note_texts(&a, &patel),
        ["copy: first contact, Patel family"],
        "the original holds the copy's new family"
    );
    // And the other way round: the copy hears of the original's next note.
    a.ok(&["note", "add", &family, "--text", "original: after the copy"]);
    assert_eq!(a.run(&["sync"]).code, 0);
    assert_eq!(a2.run(&["sync"]).code, 0);
    assert!(
        note_texts(&a2, &family).contains(&"original: after the copy".to_string()),
        "the copy holds the original's later note"
    );
}

/// The device store of a CLI device, opened in this process.
fn open_store(device: &CliDevice) -> Repo {
    let key = DatabaseKey::from_hex(device.key.as_deref().expect("key")).expect("key");
    Repo::open(device.db_path(), &key).expect("open the store")
}

/// Two changes to `family`'s household name under ONE actor, seq 1 each,
/// different content: what two copies of a device wrote before each opened
/// store had its own actor.
fn clashing_changes(saved: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let actor = automerge::ActorId::from([0x5a; 16].as_slice());
    let mut base = automerge::AutoCommit::load(saved).expect("load");
    let heads = base.get_heads();
    let household = match base.get(automerge::ROOT, "household").expect("get") {
        Some((automerge::Value::Object(_), id)) => id,
        other => panic!("household: {other:?}"),
    };
    let mut one = |name: &str| {
        let mut fork = base.fork().with_actor(actor.clone());
        fork.put(&household, "name", name).expect("put");
        fork.commit_with(
            automerge::transaction::CommitOptions::default()
                .with_time(Utc::now().timestamp_millis()),
        );
        fork.save_after(&heads)
    };
    (one("Smith (tablet)"), one("Smith (restored phone)"))
}

fn refused_rows(relay: &Relay, doc: &str) -> Vec<serde_json::Value> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = relay.admin(&["document", "refused", "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).expect("JSON");
        let mine: Vec<serde_json::Value> = rows
            .into_iter()
            .filter(|row| row["document_id"] == doc)
            .collect();
        if !mine.is_empty() || Instant::now() >= until {
            return mine;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_clash_made_before_the_fix_is_refused_for_that_document_only_and_said_so() {
    let relay = Relay::start();
    let tablet = CliDevice::new("Asha");
    enrol(&relay, &tablet, "Asha");
    let smith = tablet.ok(&["family", "add", "--name", "Smith"]);
    let okafor = tablet.ok(&["family", "add", "--name", "Okafor"]);
    assert_eq!(tablet.run(&["sync"]).code, 0);
    let phone = CliDevice::new("Asha");
    enrol(&relay, &phone, "Asha");
    assert_eq!(phone.run(&["sync"]).code, 0);

    // One actor, seq 1, two contents: the tablet's reaches the relay first.
    let smith_id = DocumentId::parse(&smith, "id").expect("id");
    let saved = open_store(&tablet).save_document(smith_id).expect("save");
    let (theirs, ours) = clashing_changes(&saved);
    assert!(
        open_store(&tablet)
            .apply_changes(smith_id, &theirs)
            .expect("apply")
    );
    assert_eq!(tablet.run(&["sync"]).code, 0);
    assert!(
        open_store(&phone)
            .apply_changes(smith_id, &ours)
            .expect("apply")
    );

    // The phone's other work: a note on another family and a new family.
    phone.ok(&["note", "add", &okafor, "--text", "phone: court date moved"]);
    let new_family = phone.ok(&["family", "add", "--name", "Nowak"]);

    for attempt in 1..=2 {
        let r = phone.run(&["sync"]);
        assert_eq!(
            r.code, 9,
            "attempt {attempt}: the clash has its own exit code: {r:?}"
        );
        assert!(
            r.stderr.contains(&smith) && r.stderr.contains(ACTOR_CLASH),
            "attempt {attempt}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("network"), "{}", r.stderr);
    }
    let summary = phone.run(&["sync", "--json"]);
    assert_eq!(summary.code, 9, "{summary:?}");
    let summary: serde_json::Value = serde_json::from_str(&summary.stdout).expect("JSON");
    assert_eq!(summary["refused"][0]["id"], smith.as_str(), "{summary}");
    assert_eq!(summary["refused"][0]["reason"], ACTOR_CLASH, "{summary}");

    // Recorded for the administrator like any refusal.
    let rows = refused_rows(&relay, &smith);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["reason"], ACTOR_CLASH);
    let phone_id = phone.json(&["profile", "show"])["device_id"].clone();
    assert_eq!(rows[0]["device_id"], phone_id);

    // Everything else of the phone reached the team; the refused change did not.
    assert_eq!(tablet.run(&["sync"]).code, 0);
    assert_eq!(note_texts(&tablet, &okafor), ["phone: court date moved"]);
    assert!(
        tablet
            .json(&["family", "list"])
            .as_array()
            .expect("families")
            .iter()
            .any(|f| f["id"] == new_family.as_str()),
        "the phone's new family reached the tablet"
    );
    let name = open_store(&tablet).family(smith_id).expect("family").name;
    assert_eq!(name, "Smith (tablet)");
    assert!(
        relay.log().contains("clash"),
        "the relay logs the refusal: {}",
        relay.log()
    );
}
