//! Issue 11, findings 6 and 7: another team cannot tell whether a document
//! id exists, and the audit of uploaded reads records only what the relay
//! can vouch for.

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use futures_util::{SinkExt, StreamExt};
use linkbook_core::protocol::Message;
use linkbook_core::*;
use linkbook_tests::{GoodDevice, Relay, answer_without_document_id, joined};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_document_and_a_never_stored_id_get_byte_identical_answers() {
    let relay = Relay::start();
    let ca = relay.ca_pem();
    let north = GoodDevice::enrolled(&relay, "north", "Asha");
    let family = north.family;
    tokio::task::block_in_place(|| north.sync(None)).expect("north syncs");
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("south", "Mallory", "prober"));
    let mut ws = joined(&relay, &ca, &creds).await;

    // An empty sync message, and one carrying a change (the same change
    // for both ids: fixed actor, fixed time).
    let empty = sync::Message {
        heads: vec![],
        need: vec![],
        have: vec![],
        changes: sync::ChunkList::empty(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode();
    let with_change = {
        let mut doc =
            automerge::AutoCommit::new().with_actor(automerge::ActorId::from(vec![7u8; 16]));
        // A Linkbook document's header, so the relay's door takes it.
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "type", "family")
            .expect("put");
        automerge::transaction::Transactable::put(
            &mut doc,
            automerge::ROOT,
            "schema_version",
            SCHEMA_VERSION,
        )
        .expect("put");
        doc.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
        let mut state = sync::State::new();
        let first = doc.sync().generate_sync_message(&mut state).expect("first");
        let reply = sync::Message {
            heads: vec![],
            need: vec![],
            have: vec![sync::Have::default()],
            changes: sync::ChunkList::empty(),
            flags: None,
            version: sync::MessageVersion::V1,
        };
        doc.sync()
            .receive_sync_message(&mut state, reply)
            .expect("receive");
        let second = doc
            .sync()
            .generate_sync_message(&mut state)
            .unwrap_or(first);
        second.encode()
    };
    // The same messages in the same order for both ids: with documents
    // namespaced per team, north's id is to south a never-stored one (a
    // reply identical to the one before is not sent again: none repeats).
    let fresh = DocumentId::random().to_string();
    for (request, data) in [
        (true, &empty),
        (true, &with_change),
        (false, &empty),
        (false, &with_change),
    ] {
        let theirs = answer_without_document_id(
            &mut ws,
            &creds.device_id,
            &family.to_string(),
            request,
            data,
        )
        .await;
        let missing =
            answer_without_document_id(&mut ws, &creds.device_id, &fresh, request, data).await;
        assert_eq!(theirs, missing, "request={request}, {} bytes", data.len());
    }

    // North's document is unchanged and north still syncs.
    let shown = north.family(family).expect("family");
    assert_eq!(shown.name, "Smith");
    tokio::task::block_in_place(|| north.sync(None)).expect("north still syncs");
    let audit = relay.admin(&["audit", "--json"]);
    assert!(audit.stdout.contains("cross-team"), "{}", audit.stdout);
    assert_eq!(relay.integrity_check(), "ok");
}

/// POSTs a read log with curl; returns (status, body).
fn post_reads(relay: &Relay, token: &str, body: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "15", "-w", "\n%{http_code}", "--cacert"])
        .arg(relay.ca_path())
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data-binary", body, &format!("{}/v1/audit", relay.url)])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_reads_are_not_recorded_as_claimed_and_refused_tokens_are_audited() {
    let relay = Relay::start();
    let ca = relay.ca_pem();
    let north = GoodDevice::enrolled(&relay, "north", "Asha");
    let family = north.family;
    tokio::task::block_in_place(|| north.sync(None)).expect("north syncs");
    let south_code = relay.enrol_code("south", "Mallory");
    let south =
        tokio::task::block_in_place(|| enrol_device(&relay.url, &south_code, Some(&ca), "m"))
            .expect("enrol");
    let north_code = relay.enrol_code("north", "Ben");
    let ben = tokio::task::block_in_place(|| enrol_device(&relay.url, &north_code, Some(&ca), "b"))
        .expect("enrol");

    let log = |at: &str| format!(r#"{{"reads":[{{"family_id":"{family}","at":"{at}"}}]}}"#);
    // Another team's family: not recorded, at any time.
    for at in ["2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z"] {
        let (status, body) = post_reads(&relay, &south.token, &log(at));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""stored":0"#), "{body}");
    }
    // The own team's family: recorded, its time clamped to [enrolment, receipt].
    for at in ["2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z"] {
        let (status, body) = post_reads(&relay, &ben.token, &log(at));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""stored":1"#), "{body}");
    }
    let r = relay.admin(&["audit", "--json", "--family", &family.to_string()]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).expect("json");
    let reads: Vec<&serde_json::Value> = entries.iter().filter(|e| e["action"] == "read").collect();
    assert_eq!(reads.len(), 2, "{entries:?}");
    assert!(
        reads
            .iter()
            .all(|e| e["device_id"] == ben.device_id.as_str())
    );
    for e in &reads {
        let at = e["at"].as_str().expect("at");
        assert!(!at.starts_with("2020") && !at.starts_with("2099"), "{at}");
        assert!(e["received_at"].is_string());
    }

    // More reads than one upload may carry: a clear 400.
    let many: Vec<String> = (0..501)
        .map(|_| format!(r#"{{"family_id":"{family}","at":"2026-01-01T00:00:00Z"}}"#))
        .collect();
    let (status, _) = post_reads(
        &relay,
        &ben.token,
        &format!(r#"{{"reads":[{}]}}"#, many.join(",")),
    );
    assert!(status == 400 || status == 413, "{status}");

    // A refused token is audited, once per window, with the address only.
    for _ in 0..5 {
        let (status, _) = post_reads(&relay, &"ab".repeat(32), &log("2026-01-01T00:00:00Z"));
        assert_eq!(status, 401);
    }
    let r = relay.admin(&["audit", "--json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).expect("json");
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "auth-refused")
        .collect();
    assert_eq!(refused.len(), 1, "{entries:?}");
    assert_eq!(refused[0]["client"], "127.0.0.1");
    assert_eq!(relay.integrity_check(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_nothing_messages_are_not_each_answered_with_the_whole_document() {
    let relay = Relay::start();
    let ca = relay.ca_pem();
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "repeater"));
    let good = GoodDevice::enrolled(&relay, "north", "Asha");
    let family = good.family;
    for i in 0..50 {
        good.add_note(
            family,
            &format!("note {i} {}", "x".repeat(200)),
            NoteCategory::Other,
        )
        .expect("note");
    }
    tokio::task::block_in_place(|| good.sync(None)).expect("sync");

    let mut ws = joined(&relay, &ca, &creds).await;
    let nothing = sync::Message {
        heads: vec![],
        need: vec![],
        have: vec![sync::Have::default()],
        changes: sync::ChunkList::empty(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode();
    let first = answer_without_document_id(
        &mut ws,
        &creds.device_id,
        &family.to_string(),
        false,
        &nothing,
    )
    .await;
    assert!(
        first.len() > 5_000,
        "the first answer carries the document: {}",
        first.len()
    );
    const N: usize = 2_000;
    let m = Message::Sync {
        sender_id: creds.device_id.clone(),
        target_id: "relay".into(),
        document_id: family.to_string(),
        data: nothing.clone(),
    }
    .encode();
    for _ in 1..N {
        ws.send(WsMessage::Binary(m.clone().into()))
            .await
            .expect("send");
    }
    // Whatever comes back within a quiet second, counted.
    let mut bytes = 0usize;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
        bytes += frame.len();
    }
    eprintln!(
        "{N} repeated 'nothing' messages: {bytes} reply bytes (one whole reply: {} bytes)",
        first.len()
    );
    assert!(
        bytes < first.len() * N / 100,
        "{N} repeated messages were answered with {bytes} bytes (one answer: {} bytes)",
        first.len()
    );
    tokio::task::block_in_place(|| good.sync(None)).expect("the good device still syncs");
    assert_eq!(relay.integrity_check(), "ok");
}
