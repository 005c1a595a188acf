//! Hostile and broken input at the relay: each bad connection is closed (or
//! refused) with a clear error, and other devices keep syncing meanwhile.

use futures_util::{SinkExt, StreamExt};
use linkbook_core::protocol::{Message, PeerMetadata};
use linkbook_core::*;
use linkbook_tests::{Device, Relay, RelaySocket, relay_socket};
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

/// Reads until the relay closes; returns the error message it sent, if any.
async fn closing_error(ws: &mut RelaySocket) -> Option<String> {
    let mut error = None;
    let read = async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(WsMessage::Binary(b)) => {
                    if let Ok(Message::Error { message }) = Message::decode(&b) {
                        error = Some(message);
                    }
                }
                Ok(WsMessage::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), read)
        .await
        .expect("the relay closed the connection");
    error
}

async fn joined(relay: &Relay, ca: &str, creds: &DeviceCredentials) -> RelaySocket {
    let mut ws = relay_socket(&relay.url, ca, &creds.token)
        .await
        .expect("connect");
    ws.send(WsMessage::Binary(join(&creds.device_id, &["1"]).into()))
        .await
        .expect("join");
    match ws.next().await {
        Some(Ok(WsMessage::Binary(b))) => {
            assert!(matches!(Message::decode(&b), Ok(Message::Peer { .. })))
        }
        other => panic!("expected peer, got {other:?}"),
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_are_closed_and_good_devices_keep_syncing() {
    let relay = Relay::start_with(&[
        "--max-message-bytes",
        &LIMIT.to_string(),
        "--max-connections-per-device",
        "2",
    ]);
    let ca = relay.ca_pem();
    let code = relay.enrol_code("north", "Mallory");
    let creds =
        tokio::task::block_in_place(|| enrol_device(&relay.url, &code, Some(&ca), "attacker"))
            .expect("enrol");

    // A good device, syncing between every attack.
    let good = Device::enrolled(&relay, "north", "Asha");
    let family = good
        .add_family(&NewFamily {
            name: "Smith".into(),
            ..Default::default()
        })
        .expect("family");
    let good_sync = |i: usize| {
        good.add_note(family, &format!("note {i}"), NoteCategory::Other)
            .expect("note");
        let s =
            tokio::task::block_in_place(|| good.sync(None)).expect("the good device still syncs");
        assert!(s.documents_sent >= 1);
    };
    good_sync(0);

    // Malformed CBOR.
    let mut ws = joined(&relay, &ca, &creds).await;
    ws.send(WsMessage::Binary(vec![0xff, 0x00, 0x13].into()))
        .await
        .expect("send");
    assert_eq!(
        closing_error(&mut ws).await.as_deref(),
        Some("malformed message: message is not CBOR")
    );
    good_sync(1);

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
    good_sync(2);

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
    good_sync(3);

    // A message over the size limit: the connection goes, nothing else.
    let mut ws = joined(&relay, &ca, &creds).await;
    let _ = ws
        .send(WsMessage::Binary(vec![0u8; LIMIT * 2].into()))
        .await;
    let _ = closing_error(&mut ws).await;
    good_sync(4);

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
    good_sync(5);

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
    good_sync(6);

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

    // Too many connections for one token.
    let _one = joined(&relay, &ca, &creds).await;
    let _two = joined(&relay, &ca, &creds).await;
    let third = relay_socket(&relay.url, &ca, &creds.token).await;
    assert!(third.err().unwrap_or_default().starts_with("429"));
    good_sync(7);

    let log = relay.log();
    assert!(
        log.contains("closing sync connection"),
        "bad connections are logged"
    );
    assert!(!log.contains(&creds.token), "a token was logged");
    let notes = good.notes(family).expect("notes");
    assert_eq!(notes.len(), 8);
}
