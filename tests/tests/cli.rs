//! The `linkbook` CLI end to end: two devices (data directories) edit
//! offline, exchange export files both ways and end with identical records.

use linkbook_tests::CliDevice;

#[test]
fn two_devices_exchange_exports_both_ways_and_agree() {
    let a = CliDevice::new("Asha");
    let b = CliDevice::new("Ben");

    let family = a.ok(&["family", "add", "--name", "Smith", "--address", "1 High St"]);
    a.ok(&[
        "member",
        "add",
        &family,
        "--name",
        "Lily",
        "--role",
        "child",
        "--dob",
        "2015-04-01",
        "--school",
        "Hill Primary",
    ]);
    a.ok(&[
        "prisoner",
        "link",
        &family,
        "--name",
        "John Smith",
        "--establishment",
        "HMP Leeds",
        "--number",
        "A1234BC",
        "--custody",
        "sentenced",
    ]);
    let note_a = a.ok(&[
        "note",
        "add",
        &family,
        "--text",
        "Home visit, Lily doing well at school",
        "--category",
        "visit",
    ]);
    let day = a.ok(&[
        "day",
        "create",
        "--prison",
        "HMP Leeds",
        "--date",
        "2026-11-20",
    ]);
    a.ok(&[
        "day",
        "checkin",
        &day,
        &family,
        "--adults",
        "1",
        "--children",
        "1",
    ]);

    let export_a = a.data().join("a.linkbook");
    a.ok(&["export", export_a.to_str().expect("path")]);
    b.ok(&["import", export_a.to_str().expect("path")]);
    assert_eq!(b.json(&["family", "list"]), a.json(&["family", "list"]));

    // Offline on both: a note each, and both rename the family.
    let note_b = b.ok(&[
        "note",
        "add",
        &family,
        "--text",
        "Phoned about the court date",
        "--category",
        "phone_call",
    ]);
    b.ok(&["family", "update", &family, "--name", "Smyth"]);
    a.ok(&["family", "update", &family, "--name", "Smith-Jones"]);
    b.ok(&[
        "day",
        "checkin",
        &day,
        &family,
        "--adults",
        "2",
        "--children",
        "1",
    ]);

    let export_b = b.data().join("b.linkbook");
    b.ok(&["export", export_b.to_str().expect("path")]);
    let summary = a.json(&["import", export_b.to_str().expect("path")]);
    // The family and the family day changed; the team directory, which
    // holds no names, did not (a rename is not a directory change).
    assert_eq!(summary["documents_updated"], 2, "{summary}");
    assert_eq!(summary["documents_unchanged"], 1, "{summary}");
    a.ok(&["export", export_a.to_str().expect("path")]);
    b.ok(&["import", export_a.to_str().expect("path")]);

    for args in [
        vec!["family", "list"],
        vec!["family", "show", family.as_str()],
        vec!["note", "list", family.as_str()],
        vec!["day", "show", day.as_str()],
        vec!["conflicts"],
    ] {
        assert_eq!(a.json(&args), b.json(&args), "devices differ on {args:?}");
    }
    let notes = a.json(&["note", "list", &family]);
    let ids: Vec<&str> = notes
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(
        ids.contains(&note_a.as_str()) && ids.contains(&note_b.as_str()),
        "{notes}"
    );

    let conflicts = a.json(&["conflicts"]);
    let paths: Vec<&str> = conflicts
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["path"].as_str())
        .collect();
    assert!(paths.contains(&"household/name"), "{conflicts}");
    a.ok(&["resolve", &family, "household/name", "Smith-Jones"]);
    let list = a.json(&["family", "list"]);
    assert_eq!(list[0]["name"], "Smith-Jones");

    let hits = b.json(&["search", "court"]);
    assert_eq!(hits.as_array().map(Vec::len), Some(1), "{hits}");
}

#[test]
fn errors_are_reported_on_stderr_with_distinct_exit_codes() {
    let a = CliDevice::new("Asha");
    let family = a.ok(&["family", "add", "--name", "Smith"]);

    let r = a.run(&["note", "add", &family, "--text", "   "]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("invalid note text: must not be empty"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());

    let r = a.run(&[
        "member",
        "add",
        &family,
        "--name",
        "Lily",
        "--role",
        "child",
        "--dob",
        "2999-01-01",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("in the future"), "{}", r.stderr);

    let r = a.run(&["note", "list", "automerge:2bnYJKUBqTvwxmpeAqcxyvbAmUPr"]);
    assert!(r.code == 2 || r.code == 3, "{r:?}");
    let r = a.run(&["family", "show", "not-an-id"]);
    assert_eq!(r.code, 2, "{r:?}");

    let other = CliDevice::new("Ben");
    let random_family = other.ok(&["family", "add", "--name", "Jones"]);
    let r = a.run(&["family", "show", &random_family]);
    assert_eq!(r.code, 3, "{r:?}");

    let wrong = CliDevice {
        dir: tempfile::tempdir().expect("dir"),
        key: Some("00".repeat(32)),
    };
    std::fs::copy(a.db_path(), wrong.db_path()).expect("copy db");
    let r = wrong.run(&["family", "list"]);
    assert_eq!(r.code, 4, "{r:?}");

    // Nothing of the refused calls was written.
    let notes = a.json(&["note", "list", &family]);
    assert_eq!(notes.as_array().map(Vec::len), Some(0));
    let shown = a.json(&["family", "show", &family]);
    assert_eq!(shown["members"].as_array().map(Vec::len), Some(0));
}

#[test]
fn without_a_key_the_cli_makes_a_private_key_file() {
    let d = CliDevice {
        dir: tempfile::tempdir().expect("dir"),
        key: None,
    };
    let family = d.ok(&["family", "add", "--name", "Patel"]);
    let key_file = d.data().join("key");
    let key = std::fs::read_to_string(&key_file).expect("key file");
    assert_eq!(key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The next run opens the same store with it.
    assert_eq!(d.json(&["family", "list"])[0]["id"], family);
    assert_eq!(d.integrity_check(), "ok");
}

#[test]
fn two_cli_devices_enrol_and_sync_through_the_relay() {
    let relay = linkbook_tests::Relay::start();
    let ca = relay.ca_path();
    let ca = ca.to_str().expect("path");
    let a = CliDevice::new("Asha");
    let b = CliDevice::new("Ben");
    for (device, worker) in [(&a, "Asha"), (&b, "Ben")] {
        let code = relay.enrol_code("north", worker);
        let out = device.ok(&["enrol", "--server", &relay.url, "--code", &code, "--ca", ca]);
        assert!(out.contains("team north"), "{out}");
    }
    let family = a.ok(&["family", "add", "--name", "Smith"]);
    let note = a.ok(&[
        "note",
        "add",
        &family,
        "--text",
        "Visit went well",
        "--category",
        "visit",
    ]);
    let summary = a.json(&["sync"]);
    assert_eq!(summary["documents_sent"], 2, "{summary}");
    let summary = b.json(&["sync"]);
    assert_eq!(summary["documents_received"], 2, "{summary}");
    assert_eq!(b.json(&["note", "list", &family])[0]["id"], note.as_str());
    assert_eq!(a.json(&["family", "list"]), b.json(&["family", "list"]));

    // A revoked device is told so, with its own exit code.
    let device_id = a.json(&["profile", "show"])["device_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(relay.admin(&["device", "revoke", &device_id]).code, 0);
    let r = a.run(&["sync"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    // A used code is refused.
    let r = CliDevice::new("Cara").run(&["sync"]);
    assert_eq!(r.code, 5, "not enrolled: {r:?}");
}
