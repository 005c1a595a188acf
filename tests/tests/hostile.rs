//! Hostile and broken input at the relay: each bad connection is closed (or
//! refused) with a clear error, and other devices keep syncing meanwhile.

use futures_util::{SinkExt, StreamExt};
use linkbook_core::protocol::{Message, PeerMetadata};
use linkbook_core::*;
use linkbook_tests::{Backend, Device, GoodDevice, closing_error, joined, relay_socket};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const LIMIT: usize = 64 * 1024;

fn join(peer: &str, versions: &[&str]) -> Vec<u8> {
    Message::Join {
        sender_id: peer.to_string(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: versions.iter().map(|v| v.to_string()).collect(),
    }
    .encode()
}

/// Every test here runs on both backends: a hostile peer must not reach
/// past its connection on either.
macro_rules! on_both_backends {
    ($test:ident: $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $test(Backend::sqlite()).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            $test(tokio::task::block_in_place(Backend::postgres)).await
        }
    };
}

on_both_backends!(bad_connections_are_closed_and_good_devices_keep_syncing:
    bad_connections_are_closed_on_sqlite, bad_connections_are_closed_on_postgresql);
on_both_backends!(guessing_codes_and_tokens_locks_the_address_out_until_the_lockout_ends:
    guessing_locks_the_address_out_on_sqlite, guessing_locks_the_address_out_on_postgresql);
on_both_backends!(a_token_of_one_team_cannot_read_or_write_another_teams_document:
    another_teams_document_is_out_of_reach_on_sqlite,
    another_teams_document_is_out_of_reach_on_postgresql);

async fn bad_connections_are_closed_and_good_devices_keep_syncing(backend: Backend) {
    let relay = backend.start(&[
        "--max-message-bytes",
        &LIMIT.to_string(),
        "--max-connections-per-device",
        "2",
    ]);
    let ca = relay.ca_pem();
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "attacker"));

    // A good device, syncing between every attack.
    let mut good = GoodDevice::enrolled(&relay, "north", "Asha");
    let family = good.family;
    good.note_and_sync("before the attacks");

    // Malformed CBOR.
    let mut ws = joined(&relay, &ca, &creds).await;
    ws.send(WsMessage::Binary(vec![0xff, 0x00, 0x13].into()))
        .await
        .expect("send");
    assert_eq!(
        closing_error(&mut ws).await.as_deref(),
        Some("malformed message: message is not CBOR")
    );
    good.note_and_sync("after attack 1");

    // An unknown message type.
    let mut ws = joined(&relay, &ca, &creds).await;
    ws.send(WsMessage::Binary(
        Message::Unknown {
            message_type: "gossip".into(),
        }
        .encode()
        .into(),
    ))
    .await
    .expect("send");
    assert_eq!(
        closing_error(&mut ws).await.as_deref(),
        Some("unexpected 'gossip' message")
    );
    good.note_and_sync("after attack 2");

    // A sync message whose Automerge payload is garbage.
    let mut ws = joined(&relay, &ca, &creds).await;
    let bad_sync = Message::Sync {
        sender_id: creds.device_id.clone(),
        target_id: "relay".into(),
        document_id: family.to_string(),
        data: vec![1, 2, 3],
    };
    ws.send(WsMessage::Binary(bad_sync.encode().into()))
        .await
        .expect("send");
    assert_eq!(
        closing_error(&mut ws).await.as_deref(),
        Some("malformed Automerge sync message")
    );
    good.note_and_sync("after attack 3");

    // A sync message whose Bloom filter has entries but no bits: Automerge
    // 0.12 divides by zero on it (tests/fuzz-crashers/automerge-sync/).
    let mut ws = joined(&relay, &ca, &creds).await;
    let crasher = Message::Sync {
        sender_id: creds.device_id.clone(),
        target_id: "relay".into(),
        document_id: family.to_string(),
        data: vec![0x42, 0x00, 0x00, 0x01, 0x00, 0x03, 0x01, 0x00, 0x07, 0x00],
    };
    ws.send(WsMessage::Binary(crasher.encode().into()))
        .await
        .expect("send");
    assert_eq!(
        closing_error(&mut ws).await.as_deref(),
        Some("Automerge sync message with an unusable Bloom filter")
    );
    good.note_and_sync("after attack 3");

    // A message over the size limit: the connection goes, nothing else.
    let mut ws = joined(&relay, &ca, &creds).await;
    let _ = ws
        .send(WsMessage::Binary(vec![0u8; LIMIT * 2].into()))
        .await;
    let _ = closing_error(&mut ws).await;
    good.note_and_sync("after attack 4");

    // Thousands of tiny messages: answered, then still a working connection.
    let mut ws = joined(&relay, &ca, &creds).await;
    for _ in 0..2_000 {
        let m = Message::RemoteHeadsChanged {
            sender_id: creds.device_id.clone(),
            target_id: "relay".into(),
            document_id: family.to_string(),
        };
        ws.send(WsMessage::Binary(m.encode().into()))
            .await
            .expect("send");
    }
    ws.send(WsMessage::Binary(
        Message::Unknown {
            message_type: "end".into(),
        }
        .encode()
        .into(),
    ))
    .await
    .expect("send");
    assert_eq!(
        closing_error(&mut ws).await.as_deref(),
        Some("unexpected 'end' message")
    );
    good.note_and_sync("after attack 5");

    // A join claiming another device's peer id.
    let mut ws = relay_socket(&relay.url, &ca, &creds.token)
        .await
        .expect("connect");
    ws.send(WsMessage::Binary(
        join(&good.profile().device_id, &["1"]).into(),
    ))
    .await
    .expect("join");
    assert_eq!(
        closing_error(&mut ws).await.as_deref(),
        Some("the peer id must be this device's id")
    );

    // A protocol version the relay does not speak.
    let mut ws = relay_socket(&relay.url, &ca, &creds.token)
        .await
        .expect("connect");
    ws.send(WsMessage::Binary(join(&creds.device_id, &["2"]).into()))
        .await
        .expect("join");
    let err = closing_error(&mut ws).await.unwrap_or_default();
    assert!(err.contains("unsupported protocol versions"), "{err}");
    good.note_and_sync("after attack 6");

    // No token, a wrong token.
    assert!(
        relay_socket(&relay.url, &ca, "")
            .await
            .err()
            .unwrap_or_default()
            .starts_with("401")
    );
    assert!(
        relay_socket(&relay.url, &ca, &"ab".repeat(32))
            .await
            .err()
            .unwrap_or_default()
            .starts_with("401")
    );

    // Too many connections for one token: the newest wins, the oldest is
    // closed with why (connections.rs tests the slot policy further).
    let mut one = joined(&relay, &ca, &creds).await;
    let _two = joined(&relay, &ca, &creds).await;
    let _third = joined(&relay, &ca, &creds).await;
    let err = closing_error(&mut one).await.unwrap_or_default();
    assert!(err.contains("a newer connection of this device"), "{err}");
    good.note_and_sync("after attack 7");

    let log = relay.log();
    assert!(
        log.contains("closing sync connection"),
        "bad connections are logged"
    );
    assert!(!log.contains(&creds.token), "a token was logged");
    let notes = good.notes(family).expect("notes");
    assert_eq!(notes.len(), 9);
}

/// What a peer without a document sends in a `request`.
fn empty_sync_message() -> Vec<u8> {
    use automerge::sync::SyncDoc;
    automerge::AutoCommit::new()
        .sync()
        .generate_sync_message(&mut automerge::sync::State::new())
        .expect("a first sync message")
        .encode()
}

/// Guessing codes and tokens from one address: after `--auth-max-failures`
/// failures that address is refused every authentication (right or wrong)
/// with 429 until the lockout ends; a connection opened before keeps
/// syncing. All test traffic comes from 127.0.0.1, so "another address" is
/// the relay's unit test (sync-server/src/lib.rs); here the lockout covers
/// the good device too, and its end lets everyone in again.
async fn guessing_codes_and_tokens_locks_the_address_out_until_the_lockout_ends(backend: Backend) {
    let relay = backend.start(&[
        "--auth-max-failures",
        "5",
        "--auth-window-secs",
        "60",
        "--auth-lockout-secs",
        "3",
    ]);
    let ca = relay.ca_pem();
    // Enrolled and connected before the attack.
    let asha =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Asha", "Asha's tablet"));
    let mut open = joined(&relay, &ca, &asha).await;
    let ben = tokio::task::block_in_place(|| Device::enrolled(&relay, "north", "Ben"));
    let family = ben
        .add_family(&NewFamily {
            name: "Smith".into(),
            ..Default::default()
        })
        .expect("family");
    tokio::task::block_in_place(|| ben.sync(None)).expect("sync before the attack");
    let waiting = relay.enrol_code("north", "Cara");

    // Three wrong codes and two wrong tokens: ordinary refusals.
    for guess in ["AAAA-BBBB-CCCC", "0000-0000-0000", "ZZZZ-ZZZZ-ZZZZ"] {
        let r = tokio::task::block_in_place(|| enrol_device(&relay.url, guess, Some(&ca), "x"));
        match r {
            Err(Error::Unauthorized(why)) => assert_eq!(why, "unknown enrolment code"),
            other => panic!("a wrong code: {other:?}"),
        }
    }
    for _ in 0..2 {
        let r = relay_socket(&relay.url, &ca, &"ab".repeat(32)).await;
        assert!(r.err().unwrap_or_default().starts_with("401"));
    }

    // Locked out: a wrong token, the right token, the right code all get 429.
    let wrong = relay_socket(&relay.url, &ca, &"cd".repeat(32))
        .await
        .err()
        .unwrap_or_default();
    assert!(wrong.starts_with("429"), "{wrong}");
    assert!(
        wrong.contains("too many failed enrolment or token attempts"),
        "{wrong}"
    );
    let right = relay_socket(&relay.url, &ca, &asha.token)
        .await
        .err()
        .unwrap_or_default();
    assert!(right.starts_with("429"), "{right}");
    match tokio::task::block_in_place(|| enrol_device(&relay.url, &waiting, Some(&ca), "Cara's")) {
        Err(Error::Unauthorized(why)) => assert!(why.contains("try again in"), "{why}"),
        other => panic!("the right code during the lockout: {other:?}"),
    }
    match tokio::task::block_in_place(|| ben.sync(None)) {
        Err(Error::Network(why)) => assert!(why.contains("too many failed"), "{why}"),
        other => panic!("a sync during the lockout: {other:?}"),
    }

    // The connection opened before the attack is still served.
    let probe = Message::Request {
        sender_id: asha.device_id.clone(),
        target_id: "relay".into(),
        document_id: DocumentId::random().to_string(),
        data: empty_sync_message(),
    };
    open.send(WsMessage::Binary(probe.encode().into()))
        .await
        .expect("send on the open connection");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match open.next().await {
                Some(Ok(WsMessage::Binary(b))) => match Message::decode(&b) {
                    Ok(m @ Message::DocUnavailable { .. }) => return Some(m),
                    _ => continue,
                },
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the open connection answered in time");
    assert!(answer.is_some(), "the open connection was closed");

    // After the lockout the right code and the good device get in again
    // (attempts refused with 429 are not counted, so polling is safe).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let cara = loop {
        match tokio::task::block_in_place(|| {
            enrol_device(&relay.url, &waiting, Some(&ca), "Cara's tablet")
        }) {
            Ok(c) => break c,
            Err(Error::Unauthorized(why)) if why.contains("try again in") => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still locked out after 20 s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => panic!("after the lockout: {e:?}"),
        }
    };
    assert_eq!(cara.team, "north");
    ben.add_note(family, "after the lockout", NoteCategory::Other)
        .expect("note");
    tokio::task::block_in_place(|| ben.sync(None)).expect("sync after the lockout");
    let log = relay.log();
    assert!(log.contains("address locked out"), "the lockout is logged");
    assert!(!log.contains(&waiting), "an enrolment code was logged");
}

/// A device of one team sends changes for another team's document id (and
/// asks for it): documents are namespaced per team, so it gets what any
/// new document gets (its own team's document, namespace.rs), the other
/// team's document is untouched, and its devices keep syncing.
async fn a_token_of_one_team_cannot_read_or_write_another_teams_document(backend: Backend) {
    let relay = backend.start(&[]);
    let ca = relay.ca_pem();
    let north = tokio::task::block_in_place(|| Device::enrolled(&relay, "north", "Asha"));
    let family = north
        .add_family(&NewFamily {
            name: "Smith".into(),
            ..Default::default()
        })
        .expect("family");
    tokio::task::block_in_place(|| north.sync(None)).expect("sync");

    let south =
        tokio::task::block_in_place(|| relay.enrol_credentials("south", "Mallory", "attacker"));
    let mut ws = joined(&relay, &ca, &south).await;
    // Changes that would rename the family, as a whole new document.
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    let mut forged = automerge::AutoCommit::new();
    forged.put(automerge::ROOT, "type", "family").expect("put");
    forged
        .put(automerge::ROOT, "schema_version", SCHEMA_VERSION)
        .expect("put");
    let household = forged
        .put_object(automerge::ROOT, "household", automerge::ObjType::Map)
        .expect("household");
    forged.put(&household, "name", "Forged").expect("put");
    let mut state = automerge::sync::State::new();
    protocol::assume_shared_heads(&mut state);
    let data = forged
        .sync()
        .generate_sync_message(&mut state)
        .expect("a sync message")
        .encode();
    for m in [
        Message::Sync {
            sender_id: south.device_id.clone(),
            target_id: "relay".into(),
            document_id: family.to_string(),
            data: data.clone(),
        },
        Message::Request {
            sender_id: south.device_id.clone(),
            target_id: "relay".into(),
            document_id: family.to_string(),
            data: empty_sync_message(),
        },
    ] {
        ws.send(WsMessage::Binary(m.encode().into()))
            .await
            .expect("send");
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("an answer in time");
        match answer {
            Some(Ok(WsMessage::Binary(b))) => match Message::decode(&b) {
                // What a never-stored id gets: the sender's team's own
                // document (namespace.rs), nothing of the other team's.
                Ok(
                    Message::DocUnavailable {
                        target_id,
                        document_id,
                        ..
                    }
                    | Message::Sync {
                        target_id,
                        document_id,
                        ..
                    },
                ) => {
                    assert_eq!(target_id, south.device_id);
                    assert_eq!(document_id, family.to_string());
                }
                other => panic!("expected doc-unavailable or sync, got {other:?}"),
            },
            other => panic!("expected doc-unavailable, got {other:?}"),
        }
    }
    // The family is untouched, and its team still syncs it.
    north
        .add_note(family, "still ours", NoteCategory::Other)
        .expect("note");
    tokio::task::block_in_place(|| north.sync(None)).expect("north still syncs");
    let other = tokio::task::block_in_place(|| Device::enrolled(&relay, "north", "Ben"));
    tokio::task::block_in_place(|| other.sync(None)).expect("sync");
    assert_eq!(other.family(family).expect("family").name, "Smith");
}
