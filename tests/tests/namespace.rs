//! Issue 11, finding 6 ("no existence oracle"), fixed as a class: the relay
//! keys documents by (team, id), so an id means nothing across teams. Team
//! B sending changes for an id team A holds creates team B's own document;
//! team A's is never looked at for team B, so team B's answers (bytes and
//! time) for it are those of a never-stored id.

use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use linkbook_core::protocol::Message;
use linkbook_core::*;
use linkbook_tests::{
    Device, FRAME_WAIT, Relay, RelaySocket, answer_without_document_id, joined, next_message,
    send_message, sync_or_request,
};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn empty_message(have: bool) -> Vec<u8> {
    sync::Message {
        heads: vec![],
        need: vec![],
        have: if have {
            vec![sync::Have::default()]
        } else {
            vec![]
        },
        changes: sync::ChunkList::empty(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode()
}

/// A family document with `notes` notes of ~200 characters, one commit.
fn big_family(notes: usize) -> automerge::AutoCommit {
    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "type", "family").expect("put");
    doc.put(automerge::ROOT, "schema_version", SCHEMA_VERSION)
        .expect("put");
    doc.put(automerge::ROOT, "team", "north").expect("put");
    doc.put(automerge::ROOT, "created_at", "2026-12-01T09:00:00+00:00")
        .expect("put");
    let map = doc
        .put_object(automerge::ROOT, "notes", automerge::ObjType::Map)
        .expect("notes");
    for i in 0..notes {
        // Laid out as Linkbook writes a note, so the door's rules pass it.
        let note = doc
            .put_object(
                &map,
                uuid::Uuid::new_v4().to_string(),
                automerge::ObjType::Map,
            )
            .expect("note");
        doc.put(&note, "author", "Asha").expect("author");
        doc.put(&note, "device", "raw-peer").expect("device");
        doc.put(&note, "created_at", "2026-12-01T09:00:00+00:00")
            .expect("created_at");
        doc.put(
            &note,
            "text",
            format!("note {i} {} visit", i * 7919 % 104_729).repeat(12),
        )
        .expect("text");
        doc.put(&note, "category", "visit").expect("category");
        doc.put_object(&note, "history", automerge::ObjType::List)
            .expect("history");
    }
    doc.commit();
    doc
}

/// Uploads `doc` as document `id` through a raw socket, by Automerge's own
/// rounds, until the relay states our heads.
async fn upload(ws: &mut RelaySocket, me: &str, id: &str, doc: &mut automerge::AutoCommit) {
    let mut state = sync::State::new();
    for _ in 0..20 {
        let Some(m) = doc.sync().generate_sync_message(&mut state) else {
            break;
        };
        send_message(ws, sync_or_request(me, id, false, &m.encode())).await;
        match next_message(ws).await {
            Message::Sync { data, .. } => {
                let m = sync::Message::decode(&data).expect("sync message");
                doc.sync()
                    .receive_sync_message(&mut state, m)
                    .expect("receive");
            }
            other => panic!("unexpected answer to an upload: {other:?}"),
        }
        if state.their_heads.as_deref() == Some(&doc.get_heads()[..]) {
            return;
        }
    }
    assert_eq!(
        state.their_heads.as_deref(),
        Some(&doc.get_heads()[..]),
        "the relay took the document"
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn another_teams_id_becomes_the_senders_own_document_and_team_a_sees_only_its_own() -> Result<()> {
    let relay = Relay::start();
    let north = Device::enrolled(&relay, "north", "Asha");
    let family = north.add_family(&NewFamily {
        name: "Smith".into(),
        ..Default::default()
    })?;
    north.add_note(family, "north's visit", NoteCategory::Visit)?;
    north.sync(None)?;

    // South's device gets a document with north's family id (any id can be
    // sent: here its own family's bytes applied under that id) and syncs.
    let south = Device::enrolled(&relay, "south", "Mallory");
    let own = south.add_family(&NewFamily {
        name: "Mallory's family".into(),
        ..Default::default()
    })?;
    south.add_note(own, "south's note", NoteCategory::Other)?;
    let bytes = south.save_document(own)?;
    south.apply_changes(family, &bytes)?;
    let summary = south.sync(None)?;
    assert_eq!(summary.documents_unavailable, 0, "{summary:?}");
    assert!(summary.failed.is_empty(), "{summary:?}");
    // Stored as south's own document, beside north's.
    let held = relay.admin(&["family", "purge", &family.to_string(), "--reason", "x"]);
    assert_ne!(held.code, 0);
    assert!(
        held.stderr.contains("--team") && held.stderr.contains("north, south"),
        "an id two teams hold needs --team: {}",
        held.stderr
    );

    // North: its family unchanged, for its devices old and new.
    north.sync(None)?;
    let shown = north.family(family)?;
    assert_eq!(shown.name, "Smith");
    assert_eq!(shown.notes.len(), 1);
    assert_eq!(shown.notes[0].text, "north's visit");
    let north2 = Device::enrolled(&relay, "north", "Ben");
    north2.sync(None)?;
    let shown = north2.family(family)?;
    assert_eq!(shown.name, "Smith");
    assert_eq!(shown.notes.len(), 1);
    assert!(north2.search("south")?.is_empty());

    // South's second device gets south's document under that id.
    let south2 = Device::enrolled(&relay, "south", "Nina");
    let s = south2.sync(None)?;
    assert!(s.failed.is_empty(), "{s:?}");
    let theirs = south2.family(family)?;
    assert_eq!(theirs.name, "Mallory's family");
    assert_eq!(theirs.notes.len(), 1);
    assert_eq!(theirs.notes[0].text, "south's note");

    // Later edits stay in their own team.
    north.add_note(family, "north's second visit", NoteCategory::Visit)?;
    north.sync(None)?;
    south2.sync(None)?;
    assert_eq!(south2.family(family)?.notes.len(), 1);
    south2.add_note(family, "south's second note", NoteCategory::Other)?;
    south2.sync(None)?;
    north2.sync(None)?;
    let notes: Vec<String> = north2
        .family(family)?
        .notes
        .into_iter()
        .map(|n| n.text)
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes.iter().all(|n| n.starts_with("north's")), "{notes:?}");

    // Admin commands that take an id: `--team` when two teams hold it.
    let audit = relay.admin(&["audit", "--family", &family.to_string()]);
    assert_ne!(audit.code, 0);
    assert!(audit.stderr.contains("--team"), "{}", audit.stderr);
    let audit = relay.admin(&[
        "audit",
        "--json",
        "--family",
        &family.to_string(),
        "--team",
        "north",
    ]);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit.stdout).expect("json");
    // South's sync of the id north holds is audited, once, in north's
    // records (ids and device only); south's uploads are not north's.
    let cross: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "cross-team")
        .collect();
    assert_eq!(cross.len(), 1, "{entries:?}");
    assert_eq!(cross[0]["team"], "north");
    let export = relay.admin(&["export-person", "--family", &family.to_string()]);
    assert_ne!(export.code, 0);
    assert!(export.stderr.contains("--team"), "{}", export.stderr);
    let export = relay.admin(&[
        "export-person",
        "--family",
        &family.to_string(),
        "--team",
        "south",
    ]);
    assert_eq!(export.code, 0, "{}", export.stderr);
    assert!(export.stdout.contains("south's note"));
    assert!(!export.stdout.contains("north's visit"));

    // Purging south's document leaves north's: north's new device still
    // gets it, south's devices delete theirs.
    let r = relay.admin(&[
        "family",
        "purge",
        &family.to_string(),
        "--team",
        "south",
        "--reason",
        "erasure request",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("team south"), "{}", r.stdout);
    let s = south2.sync(None)?;
    assert_eq!(s.purged, vec![family.to_string()]);
    assert!(south2.family(family).is_err());
    let n = north.sync(None)?;
    assert!(n.purged.is_empty(), "{n:?}");
    let north3 = Device::enrolled(&relay, "north", "Cai");
    north3.sync(None)?;
    assert_eq!(north3.family(family)?.notes.len(), 2);
    let again = relay.admin(&[
        "family",
        "purge",
        &family.to_string(),
        "--team",
        "south",
        "--reason",
        "x",
    ]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("purged already"), "{}", again.stderr);
    assert_eq!(relay.integrity_check(), "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_large_document_answers_like_a_missing_id_in_bytes_and_time() {
    const NOTES: usize = 2_000;
    const ROUNDS: usize = 200;
    let relay = Relay::start();
    let ca = relay.ca_pem();
    let north = blocking(|| relay.enrol_credentials("north", "Asha", "tablet"));
    let south = blocking(|| relay.enrol_credentials("south", "Mallory", "prober"));
    let family = DocumentId::random().to_string();
    let t = Instant::now();
    let mut big = big_family(NOTES);
    let bytes = big.save().len();
    eprintln!("built {NOTES} notes in {:?}", t.elapsed());
    let mut ws = joined(&relay, &ca, &north).await;
    upload(&mut ws, &north.device_id, &family, &mut big).await;
    let _ = tokio::time::timeout(FRAME_WAIT, ws.close(None)).await;
    drop(ws);
    eprintln!("uploaded after {:?}", t.elapsed());
    // Restarted, so nothing is loaded: a relay that looked at north's
    // document for south would have to load it from storage.
    let data = blocking(|| relay.stop());
    let relay = blocking(|| Relay::start_in(data));
    let ca = relay.ca_pem();
    eprintln!("restarted after {:?}", t.elapsed());

    let mut ws = joined(&relay, &ca, &south).await;
    let me = south.device_id.clone();
    let (empty, with_have) = (empty_message(false), empty_message(true));
    // Interleaved, so load on the machine falls on both alike.
    let (mut theirs, mut missing) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 0..ROUNDS {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{i} rounds took too long"
        );
        let fresh = DocumentId::random().to_string();
        for (id, times) in [(&family, &mut theirs), (&fresh, &mut missing)] {
            let t = Instant::now();
            let a = answer_without_document_id(&mut ws, &me, id, true, &empty).await;
            times.push(t.elapsed());
            assert_eq!(a, blanked_unavailable(&relay_peer(&a), &me));
        }
    }
    let (theirs, missing) = (median(&mut theirs), median(&mut missing));

    // What loading north's document costs (north asks, cold).
    let mut nws = joined(&relay, &ca, &north).await;
    let t = Instant::now();
    let reply = answer_without_document_id(&mut nws, &north.device_id, &family, true, &empty).await;
    let load = t.elapsed();
    drop(nws);
    assert_eq!(
        reply_heads(&reply),
        big.get_heads(),
        "north gets its document"
    );
    eprintln!(
        "request medians over {ROUNDS}: another team's {NOTES}-note document ({bytes} bytes saved) {theirs:?}, a never-stored id {missing:?}; north's own cold request (loads it) {load:?}, reply {} bytes",
        reply.len()
    );
    assert!(
        theirs <= missing * 3,
        "another team's id took {theirs:?} (median), a missing id {missing:?}: the relay looks at another team's document"
    );

    // Byte-identical answers to every message type, in the same order for
    // north's id and a never-stored one (a repeated identical reply is not
    // sent again, so no message below repeats the one before it).
    let with_change = change_message();
    let fresh = DocumentId::random().to_string();
    for (request, data) in [
        (true, &empty),
        (true, &with_have),
        (true, &with_change),
        (false, &empty),
        (false, &with_change),
        (true, &with_have),
    ] {
        let a = answer_without_document_id(&mut ws, &me, &family, request, data).await;
        let b = answer_without_document_id(&mut ws, &me, &fresh, request, data).await;
        assert_eq!(a, b, "request={request}, {} bytes", data.len());
    }
    // Messages the relay does not answer: nothing comes back for either
    // (the next answer is the one to a marker request).
    let fresh = DocumentId::random().to_string();
    for id in [&family, &fresh] {
        send_message(
            &mut ws,
            Message::Ephemeral {
                sender_id: me.clone(),
                target_id: "relay".into(),
                document_id: id.to_string(),
                session_id: "s".into(),
                count: 1,
                data: vec![0xa0],
            },
        )
        .await;
        send_message(
            &mut ws,
            Message::RemoteHeadsChanged {
                sender_id: me.clone(),
                target_id: "relay".into(),
                document_id: id.to_string(),
            },
        )
        .await;
        let marker = DocumentId::random().to_string();
        send_message(&mut ws, sync_or_request(&me, &marker, true, &empty)).await;
        match next_message(&mut ws).await {
            Message::DocUnavailable { document_id, .. } => assert_eq!(document_id, marker),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    // North's document is untouched by south's sync with changes for its id.
    let mut nws = joined(&relay, &ca, &north).await;
    let after = answer_without_document_id(&mut nws, &north.device_id, &family, true, &empty).await;
    assert_eq!(
        reply_heads(&after),
        big.get_heads(),
        "north's document changed"
    );
    let audit = relay.admin(&["audit", "--json", "--team", "north"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit.stdout).expect("json");
    let cross = entries
        .iter()
        .filter(|e| e["action"] == "cross-team" && e["device_id"] == south.device_id.as_str())
        .count();
    assert_eq!(cross, 1, "audited once per (device, id): {entries:?}");
    assert!(
        !audit.stdout.contains("visit visit"),
        "no content in the audit"
    );
    assert_eq!(relay.integrity_check(), "ok");
}

/// The heads a (blanked) `sync` answer states.
fn reply_heads(bytes: &[u8]) -> Vec<automerge::ChangeHash> {
    match Message::decode(bytes) {
        Ok(Message::Sync { data, .. }) => sync::Message::decode(&data).expect("sync").heads,
        other => panic!("expected sync, got {other:?}"),
    }
}

/// The relay's peer id from a blanked `doc-unavailable` answer's bytes.
fn relay_peer(bytes: &[u8]) -> String {
    match Message::decode(bytes) {
        Ok(Message::DocUnavailable { sender_id, .. }) => sender_id,
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
}

fn blanked_unavailable(relay: &str, me: &str) -> Vec<u8> {
    Message::DocUnavailable {
        sender_id: relay.to_string(),
        target_id: me.to_string(),
        document_id: String::new(),
    }
    .encode()
}

/// A sync message carrying one change (fixed actor and time, so the same
/// bytes for both ids): a Linkbook family header, which the door takes.
fn change_message() -> Vec<u8> {
    let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(vec![7u8; 16]));
    doc.put(automerge::ROOT, "type", "family").expect("put");
    doc.put(automerge::ROOT, "schema_version", SCHEMA_VERSION)
        .expect("put");
    doc.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
    let mut state = sync::State::new();
    let first = doc.sync().generate_sync_message(&mut state).expect("first");
    let reply = sync::Message::decode(&empty_message(true)).expect("decode");
    doc.sync()
        .receive_sync_message(&mut state, reply)
        .expect("receive");
    doc.sync()
        .generate_sync_message(&mut state)
        .unwrap_or(first)
        .encode()
}
