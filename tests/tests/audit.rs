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
