//! Issue 11, findings 2 and 8, and the per-document size cap: a peer that
//! does not read is closed by the relay's own bounded send queue
//! (sync-server/src/outbox.rs), repeated "I have nothing" messages do not
//! each cost a whole document (split.rs), a document cannot grow past
//! `--max-document-bytes` in many small messages (doc_cap.rs), and a poison
//! stored before the load budget existed does not abort the relay.
//!
//! The raw documents live in team "north" (they are not full Linkbook
//! families a device could project); the good devices that must keep
//! syncing are in team "south" on the same relay.

use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ReadDoc};
use futures_util::{SinkExt, StreamExt};
use linkbook_core::protocol::{self, Message};
use linkbook_core::*;
use linkbook_tests::{
    Device, Relay, RelaySocket, automerge_crashers, closing_error_within, joined, noise,
    proc_status_kb,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// a-z: [`noise`] of one byte per character.
fn lowercase() -> Vec<char> {
    ('a'..='z').collect()
}

/// A family the door takes: a Linkbook header and `notes` case notes of
/// `len` bytes of noise, laid out as Linkbook writes them (the relay's
/// change rules check every field), one change each.
fn linkbook_doc(notes: u64, len: usize) -> AutoCommit {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "type", DocumentType::Family.as_str())
        .expect("put");
    doc.put(ROOT, "schema_version", SCHEMA_VERSION)
        .expect("put");
    doc.put_object(ROOT, "notes", automerge::ObjType::Map)
        .expect("notes");
    doc.commit();
    for i in 0..notes {
        add(&mut doc, len, i);
    }
    doc
}

/// Adds one case note of `len` bytes of noise.
fn add(doc: &mut AutoCommit, len: usize, seed: u64) {
    let notes = match doc.get(ROOT, "notes").expect("get") {
        Some((automerge::Value::Object(_), id)) => id,
        _ => panic!("no notes map"),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let note = doc
        .put_object(&notes, id.as_str(), automerge::ObjType::Map)
        .expect("note");
    doc.put(&note, "author", "Wren").expect("author");
    doc.put(&note, "device", "writer").expect("device");
    doc.put(&note, "created_at", "2026-12-01T09:00:00+00:00")
        .expect("created_at");
    doc.put(&note, "category", "visit").expect("category");
    doc.put(&note, "text", noise(len, seed, &lowercase()))
        .expect("text");
    doc.put_object(&note, "history", automerge::ObjType::List)
        .expect("history");
    doc.commit();
}

fn sync_frame(creds: &DeviceCredentials, document_id: &str, data: Vec<u8>) -> WsMessage {
    WsMessage::Binary(
        Message::Sync {
            sender_id: creds.device_id.clone(),
            target_id: "relay".into(),
            document_id: document_id.to_string(),
            data,
        }
        .encode()
        .into(),
    )
}

/// What a fresh automerge-repo peer says about a document: nothing.
fn nothing() -> Vec<u8> {
    AutoCommit::new()
        .sync()
        .generate_sync_message(&mut sync::State::new())
        .expect("a message")
        .encode()
}

async fn send_parts(
    ws: &mut RelaySocket,
    creds: &DeviceCredentials,
    document_id: &str,
    doc: &mut AutoCommit,
    state: &mut sync::State,
    limit: usize,
) {
    let parts = protocol::split::generate_sync_messages(state, limit, |s| {
        doc.sync().generate_sync_message(s)
    })
    .expect("split");
    for part in parts {
        tokio::time::timeout(
            Duration::from_secs(30),
            ws.send(sync_frame(creds, document_id, part.encode())),
        )
        .await
        .expect("sent in time")
        .expect("send");
    }
}

/// Syncs `doc` through a raw socket until the relay states our heads;
/// `Err` is the relay's closing error.
async fn sync_doc(
    ws: &mut RelaySocket,
    creds: &DeviceCredentials,
    document_id: &str,
    doc: &mut AutoCommit,
    state: &mut sync::State,
    limit: usize,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    send_parts(ws, creds, document_id, doc, state, limit).await;
    loop {
        assert!(Instant::now() < deadline, "the sync did not end in time");
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message in time");
        let Some(Ok(frame)) = frame else {
            return Err("closed".into());
        };
        let WsMessage::Binary(bytes) = frame else {
            continue;
        };
        match Message::decode(&bytes).expect("a protocol message") {
            Message::Sync {
                document_id: d,
                data,
                ..
            } if d == document_id => {
                let m = protocol::decode_sync_message(&data).expect("a sync message");
                doc.sync()
                    .receive_sync_message(state, m)
                    .expect("apply the relay's message");
                if state.their_heads.as_deref() == Some(&doc.get_heads()[..]) {
                    return Ok(());
                }
                send_parts(ws, creds, document_id, doc, state, limit).await;
            }
            Message::Error { message } => return Err(message),
            _ => {}
        }
    }
}

/// A good device's sync of one new family: its duration.
fn timed_sync(good: &Device, name: &str) -> Duration {
    tokio::task::block_in_place(|| {
        good.add_family(&NewFamily {
            name: name.into(),
            ..Default::default()
        })
        .expect("family");
        let start = Instant::now();
        good.sync(None).expect("the good device syncs");
        start.elapsed()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_do_not_read_are_closed_and_the_relay_stays_bounded() {
    const LIMIT: usize = 256 * 1024;
    const QUEUE: usize = 1024 * 1024;
    let relay = Relay::start_with(&[
        "--max-message-bytes",
        &LIMIT.to_string(),
        "--max-queued-bytes",
        &QUEUE.to_string(),
    ]);
    relay.cap_memory();
    let ca = relay.ca_pem();
    let good = Device::enrolled(&relay, "south", "Asha");
    let _ = timed_sync(&good, "Smith");
    let baseline = timed_sync(&good, "Jones");

    // A 3 MB document in many changes, uploaded by a raw writer.
    let writer = tokio::task::block_in_place(|| relay.enrol_credentials("north", "Wren", "writer"));
    let mut wws = joined(&relay, &ca, &writer).await;
    let doc_id = DocumentId::random().to_string();
    let mut doc = linkbook_doc(300, 10_000);
    let mut wstate = sync::State::new();
    sync_doc(&mut wws, &writer, &doc_id, &mut doc, &mut wstate, LIMIT)
        .await
        .expect("the upload is taken");
    let doc_bytes = doc.save().len();
    // The good device's time while the writer writes, unattacked.
    let mut baseline = baseline;
    for round in 0..2 {
        for k in 0..20 {
            add(&mut doc, 10_000, 500 + round * 20 + k);
        }
        sync_doc(&mut wws, &writer, &doc_id, &mut doc, &mut wstate, LIMIT)
            .await
            .expect("the writer syncs");
        baseline = baseline.max(timed_sync(&good, &format!("Calm {round}")));
    }
    let hwm_before = proc_status_kb(relay.pid(), "VmHWM");

    // Eight connections (two devices, four each: the per-device cap) ask
    // for it again and again and never read a byte.
    let mut attackers = Vec::new();
    for name in ["Mallory", "Oscar"] {
        let creds =
            tokio::task::block_in_place(|| relay.enrol_credentials("north", name, "attacker"));
        for _ in 0..4 {
            let mut ws = joined(&relay, &ca, &creds).await;
            for _ in 0..20 {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    ws.send(sync_frame(&creds, &doc_id, nothing())),
                )
                .await
                .expect("sent in time")
                .expect("send");
            }
            attackers.push((creds.clone(), ws));
        }
    }

    // The writer keeps writing: every change fans out to the eight, and
    // they keep asking (so the read-idle timeout does not close them first).
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    let mut fanned_out = 0;
    while rounds < 60 && relay.log().matches("send queue full").count() < attackers.len() {
        for k in 0..20 {
            add(&mut doc, 10_000, 1_000 + rounds * 20 + k);
        }
        let before = doc.save().len();
        sync_doc(&mut wws, &writer, &doc_id, &mut doc, &mut wstate, LIMIT)
            .await
            .expect("the writer keeps syncing");
        fanned_out += 200_000usize.min(before);
        rounds += 1;
        for (creds, ws) in &mut attackers {
            // Closed ones fail: that is expected.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                ws.send(sync_frame(creds, &doc_id, nothing())),
            )
            .await;
        }
        if rounds % 5 == 0 {
            worst = worst.max(timed_sync(&good, &format!("During {rounds}")));
        }
    }
    let closed = relay.log().matches("send queue full").count();
    worst = worst.max(timed_sync(&good, "After"));
    let hwm_after = proc_status_kb(relay.pid(), "VmHWM");
    eprintln!(
        "{doc_bytes}-byte document; {rounds} writer rounds (~{fanned_out} bytes fanned out to each of {} non-readers) in {:?}; {closed} closed; relay VmHWM {hwm_before} -> {hwm_after} kB; good sync {baseline:?} unattacked, worst {worst:?} under attack",
        attackers.len(),
        started.elapsed()
    );
    assert_eq!(
        closed,
        attackers.len(),
        "every peer that does not read is closed: {}",
        relay.log()
    );
    // Unbounded, each would hold the document and every round's fan-out
    // (8 x (3 MB + rounds x 200 KB)); bounded, each holds at most its queue
    // limit and one burst.
    // (The first answer, one burst, is generated as V2 and again as V1
    // changes before it is split: up to two documents each, for a moment.)
    let bound_kb = (attackers.len() * (QUEUE + 2 * doc_bytes) / 1024) as u64 + 64 * 1024;
    assert!(
        hwm_after.saturating_sub(hwm_before) < bound_kb,
        "relay VmHWM grew from {hwm_before} to {hwm_after} kB (bound {bound_kb} kB)"
    );
    // The relay closed their sockets (pings and what was buffered drain).
    for (_, mut ws) in attackers {
        let _ = closing_error_within(&mut ws, Duration::from_secs(20)).await;
    }
    assert!(
        worst < baseline * 5 + Duration::from_secs(1) && worst < Duration::from_secs(10),
        "a good sync took {worst:?} under attack, {baseline:?} without"
    );
    // The writer, whose fan-out filled their queues, was never closed.
    add(&mut doc, 100, 7);
    sync_doc(&mut wws, &writer, &doc_id, &mut doc, &mut wstate, LIMIT)
        .await
        .expect("the writer still syncs");
    assert_eq!(relay.integrity_check(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_nothing_messages_cost_less_than_three_documents() {
    let relay = Relay::start();
    relay.cap_memory();
    let ca = relay.ca_pem();
    let writer = tokio::task::block_in_place(|| relay.enrol_credentials("north", "Wren", "writer"));
    let mut wws = joined(&relay, &ca, &writer).await;
    let doc_id = DocumentId::random().to_string();
    let mut doc = linkbook_doc(160, 10_000);
    let mut wstate = sync::State::new();
    sync_doc(
        &mut wws,
        &writer,
        &doc_id,
        &mut doc,
        &mut wstate,
        protocol::split::DEFAULT_MAX_MESSAGE_BYTES,
    )
    .await
    .expect("upload");
    let doc_bytes = doc.save().len();
    assert!(doc_bytes > 900_000, "{doc_bytes}");

    // Two messages in turn: "I have nothing" and "I have only the first
    // change" (a different reply each time, so byte-identical repeat
    // suppression alone does not help).
    let first = doc
        .get_changes(&[])
        .first()
        .expect("a change")
        .raw_bytes()
        .to_vec();
    let mut stale = AutoCommit::new();
    stale.load_incremental(&first).expect("load");
    let stale = stale
        .sync()
        .generate_sync_message(&mut sync::State::new())
        .expect("a message")
        .encode();
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "attacker"));
    let ws = joined(&relay, &ca, &creds).await;
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let mut bytes = 0usize;
        let mut messages = 0usize;
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
                Ok(Some(Ok(WsMessage::Binary(b)))) => {
                    bytes += b.len();
                    messages += 1;
                }
                Ok(Some(Ok(_))) => {}
                // Quiet for 3 s after the last answer, or closed.
                _ => break,
            }
        }
        (bytes, messages)
    });
    for i in 0..200 {
        let data = if i % 2 == 0 { nothing() } else { stale.clone() };
        tokio::time::timeout(
            Duration::from_secs(10),
            sink.send(sync_frame(&creds, &doc_id, data)),
        )
        .await
        .expect("sent in time")
        .expect("send");
    }
    let (received, messages) = tokio::time::timeout(Duration::from_secs(150), reader)
        .await
        .expect("read in time")
        .expect("reader");
    eprintln!(
        "200 alternating 'nothing' messages for a {doc_bytes}-byte document: {messages} answers, {received} bytes"
    );
    assert!(
        received < 3 * doc_bytes,
        "{received} bytes received for a {doc_bytes}-byte document"
    );
    assert!(received > doc_bytes / 2, "the document was sent once");
    assert_eq!(relay.integrity_check(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_grown_in_small_messages_stops_at_the_size_cap() {
    const CAP: usize = 400_000;
    let relay = Relay::start_with(&["--max-document-bytes", &CAP.to_string()]);
    relay.cap_memory();
    let ca = relay.ca_pem();
    let good = Device::enrolled(&relay, "south", "Asha");
    let baseline = timed_sync(&good, "Smith");
    let writer = tokio::task::block_in_place(|| relay.enrol_credentials("north", "Wren", "writer"));
    let limit = protocol::split::DEFAULT_MAX_MESSAGE_BYTES;
    let mut ws = joined(&relay, &ca, &writer).await;
    let doc_id = DocumentId::random().to_string();
    let mut doc = linkbook_doc(1, 1_000);
    let mut state = sync::State::new();
    sync_doc(&mut ws, &writer, &doc_id, &mut doc, &mut state, limit)
        .await
        .expect("upload");
    // 10 KB a message, each far under every per-message limit.
    let mut accepted = doc.get_heads();
    let mut refusal = None;
    for round in 0..100 {
        add(&mut doc, 10_000, 100 + round);
        match sync_doc(&mut ws, &writer, &doc_id, &mut doc, &mut state, limit).await {
            Ok(()) => accepted = doc.get_heads(),
            Err(e) => {
                refusal = Some((round, e));
                break;
            }
        }
    }
    let (round, refusal) = refusal.expect("refused before 100 x 10 KB");
    eprintln!("refused at message {round}: {refusal}");
    assert!(
        refusal.contains("document refused: over the size cap"),
        "{refusal}"
    );
    assert!(
        round >= 20,
        "{round} messages of 10 KB fit under {CAP} bytes"
    );

    // Nothing of the refused message was stored: a fresh peer gets exactly
    // the accepted document.
    let reader = tokio::task::block_in_place(|| relay.enrol_credentials("north", "Ben", "reader"));
    let mut rws = joined(&relay, &ca, &reader).await;
    let mut copy = AutoCommit::new();
    let mut rstate = sync::State::new();
    sync_doc(&mut rws, &reader, &doc_id, &mut copy, &mut rstate, limit)
        .await
        .expect("a fresh peer syncs the document");
    assert_eq!(copy.get_heads(), accepted);
    let stored: i64 = relay
        .db()
        .query_row(
            "SELECT COALESCE(LENGTH(snapshot), 0) + (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM changes WHERE doc_id = ?1) FROM documents WHERE id = ?1",
            [&doc_id],
            |r| r.get(0),
        )
        .expect("stored size");
    assert!(stored as usize <= CAP, "{stored} bytes stored");
    let after = timed_sync(&good, "After");
    assert!(
        after < baseline * 5 + Duration::from_secs(1),
        "{after:?} vs {baseline:?}"
    );
    assert_eq!(relay.integrity_check(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_stored_before_the_load_budget_does_not_abort_the_relay() {
    let relay = Relay::start();
    let ca = relay.ca_pem();
    let good = Device::enrolled(&relay, "south", "Asha");
    let _ = timed_sync(&good, "Smith");
    let writer = tokio::task::block_in_place(|| relay.enrol_credentials("north", "Wren", "writer"));
    let limit = protocol::split::DEFAULT_MAX_MESSAGE_BYTES;
    let crashers = automerge_crashers();
    assert!(crashers.len() >= 3, "{crashers:?}");
    // One good document per crasher, stored by the relay before the fix.
    let mut ids = Vec::new();
    {
        let mut ws = joined(&relay, &ca, &writer).await;
        for i in 0..crashers.len() {
            let id = DocumentId::random().to_string();
            let mut doc = linkbook_doc(1, 100 + i);
            sync_doc(
                &mut ws,
                &writer,
                &id,
                &mut doc,
                &mut sync::State::new(),
                limit,
            )
            .await
            .expect("upload");
            ids.push(id);
        }
    }
    let data = relay.stop();
    {
        let db = linkbook_tests::relay_db(data.path());
        for (id, (_, bytes)) in ids.iter().zip(&crashers) {
            db.execute(
                "UPDATE documents SET snapshot = ?2 WHERE team = 'north' AND id = ?1",
                rusqlite::params![id, bytes],
            )
            .expect("poison the snapshot");
            db.execute(
                "DELETE FROM changes WHERE team = 'north' AND doc_id = ?1",
                [id],
            )
            .expect("drop the changes");
        }
    }
    let relay = Relay::start_in(data);
    relay.cap_memory();
    let ca = relay.ca_pem();
    tokio::task::block_in_place(|| good.set_server_url(&relay.url)).expect("new port");
    for (id, (name, _)) in ids.iter().zip(&crashers) {
        let mut ws = joined(&relay, &ca, &writer).await;
        let start = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            ws.send(sync_frame(&writer, id, nothing())),
        )
        .await
        .expect("sent in time")
        .expect("send");
        let error = closing_error_within(&mut ws, Duration::from_secs(30)).await;
        eprintln!("{name}: {error:?} in {:?}", start.elapsed());
        let error = error.expect("an error message");
        assert!(error.contains("damaged"), "{name}: {error}");
        // The relay lives and serves.
        timed_sync(&good, &format!("After {name}"));
    }
    assert_eq!(relay.integrity_check(), "ok");
}
