//! The audit answers "who saw which family, when" — and no log line holds
//! personal data: names, note text or enrolment codes (tokens: hostile.rs).

use linkbook_tests::{CliDevice, Relay};

/// Runs a CLI command with the most verbose logging, keeping its stderr.
fn cli(device: &CliDevice, logs: &mut String, args: &[&str]) -> String {
    let out = device
        .command(args)
        .env("RUST_LOG", "trace")
        .output()
        .expect("run linkbook");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    logs.push_str(&stderr);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn audit(relay: &Relay, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let r = relay.admin(&all);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str::<serde_json::Value>(&r.stdout)
        .expect("audit JSON")
        .as_array()
        .expect("list")
        .clone()
}

fn actions(entries: &[serde_json::Value], device: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["device_id"] == device)
        .map(|e| e["action"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_audit_shows_who_uploaded_received_and_read_a_family_and_logs_hold_no_personal_data() {
    let relay = Relay::start_with_env(&[("RUST_LOG", "trace")]);
    let ca = relay.ca_path().display().to_string();
    let (asha, ben) = (CliDevice::new("Asha"), CliDevice::new("Ben"));
    let mut logs = String::new();
    let mut codes = Vec::new();
    for (device, worker) in [(&asha, "Asha Quartermain"), (&ben, "Ben Xylophone")] {
        let code = relay.enrol_code("north", worker);
        cli(
            device,
            &mut logs,
            &[
                "enrol", "--server", &relay.url, "--code", &code, "--ca", &ca,
            ],
        );
        codes.push(code);
    }
    let family = cli(
        &asha,
        &mut logs,
        &["family", "add", "--name", "Zanzibarfamily"],
    );
    cli(
        &asha,
        &mut logs,
        &[
            "note",
            "add",
            &family,
            "--text",
            "Quokkasecret disclosed at the visit",
        ],
    );
    cli(&asha, &mut logs, &["sync"]);
    cli(&ben, &mut logs, &["sync"]);
    // Ben opens the case file, then syncs: the read reaches the audit.
    let shown = cli(&ben, &mut logs, &["family", "show", &family]);
    assert!(shown.contains("Zanzibarfamily"));
    cli(&ben, &mut logs, &["sync"]);

    let asha_id = asha.json(&["profile", "show"])["device_id"]
        .as_str()
        .expect("id")
        .to_string();
    let ben_id = ben.json(&["profile", "show"])["device_id"]
        .as_str()
        .expect("id")
        .to_string();
    let about_family = audit(&relay, &["--family", &family]);
    assert!(
        actions(&about_family, &asha_id).contains(&"uploaded".to_string()),
        "{about_family:#?}"
    );
    let ben_did = actions(&about_family, &ben_id);
    assert!(
        ben_did.contains(&"received".to_string()),
        "{about_family:#?}"
    );
    assert!(ben_did.contains(&"read".to_string()), "{about_family:#?}");
    let read = about_family
        .iter()
        .find(|e| e["action"] == "read")
        .expect("read record");
    assert_eq!(read["worker"], "Ben Xylophone");

    // Revocation and purge are recorded too; --device shows one device.
    let r = relay.admin(&["device", "revoke", &ben_id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = relay.admin(&["family", "purge", &family, "--reason", "erasure request"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let of_ben = audit(&relay, &["--device", &ben_id]);
    let ben_actions = actions(&of_ben, &ben_id);
    for action in ["enrolled", "connected", "received", "read", "revoked"] {
        assert!(
            ben_actions.contains(&action.to_string()),
            "{action}: {of_ben:#?}"
        );
    }
    // Once each: the enrolment is audited by its redemption only.
    for action in ["enrolled", "revoked"] {
        let n = ben_actions.iter().filter(|a| *a == action).count();
        assert_eq!(n, 1, "{action} audited {n} times: {of_ben:#?}");
    }
    assert!(
        audit(&relay, &["--family", &family])
            .iter()
            .any(|e| e["action"] == "purged")
    );

    // The audit and every log hold ids and times, never content or secrets,
    // even at trace level.
    let places = [
        ("relay log", relay.log()),
        ("CLI logs", logs),
        ("audit", relay.admin(&["audit"]).stdout),
    ];
    for secret in [
        "Zanzibarfamily",
        "Quokkasecret",
        codes[0].as_str(),
        codes[1].as_str(),
    ] {
        for (what, text) in &places {
            if let Some(at) = text.find(secret) {
                let context = &text[at.saturating_sub(200)..(at + 50).min(text.len())];
                panic!("{secret} appears in the {what}: …{context}…");
            }
        }
    }
    assert!(
        places[2].1.contains(&family),
        "the audit names documents by id"
    );
}

/// POSTs a read log with curl; returns (status, body).
fn post_reads(relay: &Relay, token: &str, reads: &[(String, String)]) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "reads": reads
            .iter()
            .map(|(family, at)| serde_json::json!({ "family_id": family, "at": at }))
            .collect::<Vec<_>>(),
    })
    .to_string();
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "15", "-w", "\n%{http_code}", "--cacert"])
        .arg(relay.ca_path())
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data-binary", &body, &format!("{}/v1/audit", relay.url)])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

fn reads_of(relay: &Relay, family: &str, device: &str) -> Vec<serde_json::Value> {
    audit(relay, &["--family", family])
        .into_iter()
        .filter(|e| e["action"] == "read" && e["device_id"] == device)
        .collect()
}

fn time(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc)
}

/// An enrolled CLI device of `team` with one family synced to the relay.
fn device_with_family(relay: &Relay, worker: &str) -> (CliDevice, String) {
    let d = CliDevice::new(worker);
    let code = relay.enrol_code("north", worker);
    let ca = relay.ca_path().display().to_string();
    d.ok(&[
        "enrol", "--server", &relay.url, "--code", &code, "--ca", &ca,
    ]);
    let family = d.ok(&["family", "add", "--name", "Okoro"]);
    d.ok(&["sync"]);
    (d, family)
}

#[test]
fn audit_quotas_come_from_the_options_and_a_good_device_uploads_under_them() {
    let relay = Relay::start_with(&[
        "--audit-rows-per-upload",
        "10",
        "--audit-rows-per-day",
        "45",
    ]);
    let (asha, family) = device_with_family(&relay, "Asha");
    let mallory = relay.enrol_credentials("north", "Mallory", "copied token");
    let now = chrono::Utc::now().to_rfc3339();
    let reads = |n: usize| vec![(family.clone(), now.clone()); n];

    // One more than the upload quota: refused as a whole, saying the limit.
    let (status, body) = post_reads(&relay, &mallory.token, &reads(11));
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["max_reads"], 10, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 10 reads per upload"),
        "{body}"
    );
    assert!(reads_of(&relay, &family, &mallory.device_id).is_empty());
    // Up to the day quota (45), then 429 and one audit row.
    for _ in 0..4 {
        let (status, body) = post_reads(&relay, &mallory.token, &reads(10));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["stored"], 10, "{body}");
    }
    for _ in 0..3 {
        let (status, body) = post_reads(&relay, &mallory.token, &reads(10));
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"], "audit_quota", "{body}");
    }
    assert_eq!(reads_of(&relay, &family, &mallory.device_id).len(), 40);
    let quota_rows = audit(&relay, &["--device", &mallory.device_id])
        .into_iter()
        .filter(|e| e["action"] == "read-quota-exceeded")
        .count();
    assert_eq!(quota_rows, 1);

    // A good device with more reads pending than one upload may carry: it
    // sends them in uploads of the stated size, and every one is recorded,
    // in the audit and in the subject access export.
    for _ in 0..13 {
        asha.ok(&["family", "show", &family]);
    }
    asha.ok(&["sync"]);
    let asha_id = asha.json(&["profile", "show"])["device_id"]
        .as_str()
        .expect("device id")
        .to_string();
    let recorded = reads_of(&relay, &family, &asha_id);
    assert_eq!(recorded.len(), 13, "{recorded:?}");
    for e in &recorded {
        assert!(time(&e["at"]) <= time(&e["received_at"]), "{e}");
    }
    let r = relay.admin(&["export-person", "--family", &family]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let export: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    let in_export = export["families"][0]["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| e["action"] == "read" && e["device_id"] == asha_id.as_str())
        .count();
    assert_eq!(in_export, 13);
    // Nothing was lost on the device either: the log is empty now.
    asha.ok(&["sync"]);
    assert_eq!(reads_of(&relay, &family, &asha_id).len(), 13);

    // Out-of-range options are refused at start.
    for bad in [
        ["--audit-rows-per-upload", "0"],
        ["--audit-rows-per-day", "0"],
        ["--audit-rows-per-upload", "10001"],
    ] {
        let r = relay_refusing(&bad);
        assert!(r.contains(bad[0]), "{r}");
    }
    assert_eq!(relay.integrity_check(), "ok");
}

/// What `linkbook-server serve` prints when it refuses its options.
fn relay_refusing(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(linkbook_tests::workspace_bin("linkbook-server"))
        .arg("--data")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run linkbook-server");
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_claimed_before_the_last_upload_or_sync_is_clamped_to_it() {
    let relay = Relay::start();
    let (_asha, family) = tokio::task::block_in_place(|| device_with_family(&relay, "Asha"));
    let ben = tokio::task::block_in_place(|| relay.enrol_credentials("north", "Ben", "tablet"));
    let enrolled = tokio::task::block_in_place(|| audit(&relay, &["--device", &ben.device_id]))
        .into_iter()
        .find(|e| e["action"] == "enrolled")
        .map(|e| time(&e["at"]))
        .expect("enrolment audited");
    let post = |at: chrono::DateTime<chrono::Utc>| {
        tokio::task::block_in_place(|| {
            let (status, body) =
                post_reads(&relay, &ben.token, &[(family.clone(), at.to_rfc3339())]);
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["stored"], 1, "{body}");
            let reads = reads_of(&relay, &family, &ben.device_id);
            reads.last().cloned().expect("a read")
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    // No upload or sync yet: a claim back at enrolment is possible.
    let first = post(enrolled);
    let first_at = time(&first["at"]);
    assert!(
        first_at < enrolled + chrono::Duration::seconds(1)
            && first_at + chrono::Duration::seconds(1) < time(&first["received_at"]),
        "{first}"
    );

    // A sync session more than the grace (30 s) after that upload; then a
    // read claimed back at enrolment is clamped to the upload's receipt:
    // the device would have uploaded it then.
    tokio::time::sleep(std::time::Duration::from_secs(31)).await;
    let ca = relay.ca_pem();
    drop(linkbook_tests::joined(&relay, &ca, &ben).await);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after_sync = post(enrolled);
    assert_eq!(
        time(&after_sync["at"]),
        time(&first["received_at"]),
        "{after_sync} is not clamped to the last upload before the sync {first}"
    );

    // An honest claim is kept; a later one claimed before it (no sync in
    // between) is clamped to it: a device's log only goes forward.
    let honest = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let kept = post(honest);
    assert_eq!(time(&kept["at"]), honest, "{kept}");
    let backdated = post(enrolled);
    assert_eq!(time(&backdated["at"]), honest, "{backdated}");
    // In the future: clamped to the receipt.
    let future = post(chrono::Utc::now() + chrono::Duration::days(365));
    assert_eq!(future["at"], future["received_at"], "{future}");
    assert_eq!(relay.integrity_check(), "ok");
}
