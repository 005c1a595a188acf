//! Issue 11, finding 4: a case file bigger than the relay's
//! `--max-message-bytes` syncs, in as many messages as needed, both ways,
//! and never blocks the team's other documents; a single change over the
//! limit fails only its own document.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use linkbook_core::*;
use linkbook_tests::{Device, Relay, letters, noise};

/// Runs a device's sync on its own thread, bounded in time.
fn sync_within(device: &Device, limit: Duration) -> (SyncSummary, Duration) {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        scope.spawn(move || {
            let started = Instant::now();
            let _ = tx.send(device.repo.sync(None).map(|s| (s, started.elapsed())));
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => panic!("sync failed: {e}"),
            // The scope still joins the thread: its own I/O timeouts end it.
            Err(_) => panic!("sync took longer than {limit:?}"),
        }
    })
}

fn note_texts(d: &Device, family: DocumentId) -> Vec<(String, String)> {
    d.repo
        .notes(family)
        .expect("notes")
        .into_iter()
        .map(|n| (n.id, n.text))
        .collect()
}

/// The small family whose safeguarding note must not wait behind a big one.
fn small_family_with_a_note(device: &Device) -> DocumentId {
    let small = device
        .add_family(&NewFamily {
            name: "Small".into(),
            ..Default::default()
        })
        .expect("family");
    device
        .add_note(
            small,
            "Safeguarding: call the school today",
            NoteCategory::School,
        )
        .expect("note");
    small
}

#[test]
fn a_case_file_bigger_than_the_message_limit_syncs_both_ways_and_blocks_nothing() {
    // Each add_note rewrites the family's projection, so writing grows with
    // the family: 3,000 notes (the size) take 7-12 minutes in a
    // debug build on 2 cores, 500 under half a minute. CI runs 500 notes
    // under a 256 KiB limit (still three times the limit);
    // LINKBOOK_BIG_NOTES=3000 runs the full size under 1 MiB.
    let notes: usize = std::env::var("LINKBOOK_BIG_NOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let limit: usize = if notes >= 3_000 {
        1024 * 1024
    } else {
        256 * 1024
    };
    let relay = Relay::start_with(&["--max-message-bytes", &limit.to_string()]);
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");

    // Offline on A: a long case history and a small family's new note.
    let big = a
        .repo
        .add_family(&NewFamily {
            name: "Long history".into(),
            ..Default::default()
        })
        .expect("family");
    let alphabet = letters();
    let started = Instant::now();
    let mut text_bytes = 0;
    for i in 0..notes {
        let text = noise(1_000 + (i * 37) % 1_000, i as u64 + 1, &alphabet);
        text_bytes += text.len();
        a.repo
            .add_note(big, &text, NoteCategory::Visit)
            .expect("note");
    }
    eprintln!(
        "wrote {notes} notes ({text_bytes} bytes of text) in {:?}",
        started.elapsed()
    );
    assert!(text_bytes > 2 * limit, "the family must exceed the limit");
    let small = small_family_with_a_note(&a);

    // Device -> relay.
    let (s, took) = sync_within(&a, Duration::from_secs(300));
    eprintln!("A's upload: {took:?}, {s:?}");
    assert!(s.failed.is_empty(), "{s:?}");
    assert!(
        s.messages_sent as usize > text_bytes / limit,
        "the big family went in several messages: {s:?}"
    );

    // Relay -> device: B gets the small family's note and the whole case file.
    let (s, took) = sync_within(&b, Duration::from_secs(300));
    eprintln!("B's download: {took:?}, {s:?}");
    assert!(s.failed.is_empty(), "{s:?}");
    assert_eq!(note_texts(&b, small), note_texts(&a, small));
    let on_a = note_texts(&a, big);
    assert_eq!(on_a.len(), notes);
    assert_eq!(note_texts(&b, big), on_a);

    // Both ways at once: B adds to the big family, A adds more; both sync
    // twice and agree.
    for i in 0..50 {
        b.repo
            .add_note(
                big,
                &noise(1_500, 10_000 + i, &alphabet),
                NoteCategory::Visit,
            )
            .expect("note");
    }
    sync_within(&b, Duration::from_secs(300));
    sync_within(&a, Duration::from_secs(300));
    sync_within(&b, Duration::from_secs(300));
    assert_eq!(note_texts(&a, big).len(), notes + 50);
    assert_eq!(note_texts(&a, big), note_texts(&b, big));

    // A fresh device gets everything from the relay (the relay's unasked
    // pushes, split).
    let c = Device::enrolled(&relay, "north", "Cleo");
    let (s, took) = sync_within(&c, Duration::from_secs(300));
    eprintln!("fresh device C: {took:?}, {s:?}");
    assert!(s.failed.is_empty(), "{s:?}");
    assert_eq!(note_texts(&c, big), note_texts(&a, big));
    assert_eq!(note_texts(&c, small), note_texts(&a, small));

    let log = relay.log();
    assert!(!log.contains("too long"), "{log}");
    assert_eq!(relay.integrity_check(), "ok");
}

#[test]
fn a_change_over_the_limit_fails_only_its_document() {
    // The smallest limit the relay takes; one note of 100,000 characters
    // that do not compress is a change of about 300 KB.
    let relay = Relay::start_with(&["--max-message-bytes", "65536"]);
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let huge = a
        .repo
        .add_family(&NewFamily {
            name: "One huge note".into(),
            ..Default::default()
        })
        .expect("family");
    let cjk: Vec<char> = ('\u{4e00}'..='\u{9fff}').collect();
    a.repo
        .add_note(huge, &noise(100_000, 7, &cjk), NoteCategory::Visit)
        .expect("note");
    let small = small_family_with_a_note(&a);

    let (s, _) = sync_within(&a, Duration::from_secs(120));
    assert_eq!(s.failed, vec![huge.to_string()], "{s:?}");
    // Reported again, and still not blocking, on the next sync.
    let (s, _) = sync_within(&a, Duration::from_secs(120));
    assert_eq!(s.failed, vec![huge.to_string()], "{s:?}");

    let (s, _) = sync_within(&b, Duration::from_secs(120));
    assert!(s.failed.is_empty(), "{s:?}");
    assert_eq!(note_texts(&b, small), note_texts(&a, small));
    // A's own notes are untouched.
    assert_eq!(note_texts(&a, huge).len(), 1);
    assert_eq!(relay.integrity_check(), "ok");
}

/// Every scalar string in an Automerge document.
fn strings(doc: &automerge::AutoCommit) -> std::collections::HashSet<String> {
    use automerge::{ObjType, ReadDoc, ScalarValue, Value};
    let mut out = std::collections::HashSet::new();
    let mut stack = vec![(automerge::ROOT, ObjType::Map)];
    while let Some((obj, kind)) = stack.pop() {
        let values: Vec<_> = match kind {
            ObjType::Map | ObjType::Table => doc
                .keys(&obj)
                .filter_map(|k| doc.get(&obj, &k).ok().flatten())
                .collect(),
            _ => (0..doc.length(&obj))
                .filter_map(|i| doc.get(&obj, i).ok().flatten())
                .collect(),
        };
        for (value, id) in values {
            match value {
                Value::Object(kind) => stack.push((id, kind)),
                Value::Scalar(s) => {
                    if let ScalarValue::Str(s) = s.as_ref() {
                        out.insert(s.to_string());
                    }
                }
            }
        }
    }
    out
}

/// A peer on a raw socket that holds the family while another device
/// uploads a burst of notes bigger than the limit: the relay's live fan-out
/// reaches it in several messages, none over the limit, and it ends up with
/// every note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_fan_out_of_a_big_upload_is_split_under_the_limit() {
    use automerge::sync::{self, SyncDoc};
    use futures_util::{SinkExt, StreamExt};
    use linkbook_core::protocol::{Message, PeerMetadata};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    const LIMIT: usize = 64 * 1024;
    let relay = Relay::start_with(&["--max-message-bytes", &LIMIT.to_string()]);
    let ca = relay.ca_pem();
    let a = Device::enrolled(&relay, "north", "Asha");
    let family = a
        .add_family(&NewFamily {
            name: "Burst".into(),
            ..Default::default()
        })
        .expect("family");
    a.add_note(family, "first", NoteCategory::Visit)
        .expect("note");
    tokio::task::block_in_place(|| a.sync(None)).expect("sync");

    let creds = tokio::task::block_in_place(|| relay.enrol_credentials("north", "Ben", "raw"));
    let mut ws = tokio::time::timeout(
        Duration::from_secs(10),
        linkbook_tests::relay_socket(&relay.url, &ca, &creds.token),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let send = |m: Message| WsMessage::Binary(m.encode().into());
    ws.send(send(Message::Join {
        sender_id: creds.device_id.clone(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    }))
    .await
    .expect("join");
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(WsMessage::Binary(b)))) => match Message::decode(&b) {
            Ok(Message::Peer { peer_metadata, .. }) => {
                assert_eq!(peer_metadata.max_message_bytes, Some(LIMIT as u64));
            }
            other => panic!("expected peer, got {other:?}"),
        },
        other => panic!("expected peer, got {other:?}"),
    }

    let mut doc = automerge::AutoCommit::new();
    let mut state = sync::State::new();
    let first = doc
        .sync()
        .generate_sync_message(&mut state)
        .expect("a first message");
    ws.send(send(Message::Request {
        sender_id: creds.device_id.clone(),
        target_id: String::new(),
        document_id: family.to_string(),
        data: first.encode(),
    }))
    .await
    .expect("request");

    // Syncs until the relay has been quiet for a second; returns how many
    // messages carried changes. Bounded: at most 10,000 messages.
    async fn until_quiet(
        ws: &mut linkbook_tests::RelaySocket,
        doc: &mut automerge::AutoCommit,
        state: &mut sync::State,
        me: &str,
        family: &str,
    ) -> usize {
        let mut with_changes = 0;
        for _ in 0..10_000 {
            let frame = match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
                Err(_) => return with_changes,
                Ok(Some(Ok(frame))) => frame,
                Ok(other) => panic!("the relay dropped the peer: {other:?}"),
            };
            let WsMessage::Binary(bytes) = frame else {
                continue;
            };
            assert!(bytes.len() <= LIMIT, "a {}-byte message", bytes.len());
            let Ok(Message::Sync { data, .. }) = Message::decode(&bytes) else {
                continue;
            };
            let m = sync::Message::decode(&data).expect("sync message");
            if !m.changes.is_empty() {
                with_changes += 1;
            }
            doc.sync().receive_sync_message(state, m).expect("apply");
            if let Some(reply) = doc.sync().generate_sync_message(state) {
                ws.send(WsMessage::Binary(
                    Message::Sync {
                        sender_id: me.to_string(),
                        target_id: String::new(),
                        document_id: family.to_string(),
                        data: reply.encode(),
                    }
                    .encode()
                    .into(),
                ))
                .await
                .expect("reply");
            }
        }
        panic!("the exchange did not end");
    }
    let me = creds.device_id.clone();
    until_quiet(&mut ws, &mut doc, &mut state, &me, &family.to_string()).await;
    assert!(strings(&doc).contains("first"));

    // A burst of about 90 KB of notes from A while the peer is connected.
    let alphabet = letters();
    let texts: Vec<String> = (0..60).map(|i| noise(1_500, 900 + i, &alphabet)).collect();
    for t in &texts {
        a.add_note(family, t, NoteCategory::Visit).expect("note");
    }
    let s = tokio::task::block_in_place(|| a.sync(None)).expect("sync");
    assert!(s.failed.is_empty(), "{s:?}");
    let fanned = until_quiet(&mut ws, &mut doc, &mut state, &me, &family.to_string()).await;
    assert!(fanned >= 2, "the fan-out came in {fanned} messages");
    let held = strings(&doc);
    eprintln!(
        "fan-out: {fanned} messages with changes; {} of {} notes; {} changes held",
        texts.iter().filter(|t| held.contains(t.trim())).count(),
        texts.len(),
        doc.get_changes(&[]).len()
    );
    for t in &texts {
        assert!(held.contains(t.trim()), "a note did not reach the peer");
    }
    assert_eq!(relay.integrity_check(), "ok");
}
