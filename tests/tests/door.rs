//! Documents checked at the door (issue 11, finding 3): a document that is
//! not a Linkbook document, uploaded with a team's token, is refused, and
//! every device of the team keeps syncing, fresh devices included.

use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use futures_util::{SinkExt, StreamExt};
use linkbook_core::protocol::{self, Message, PeerMetadata};
use linkbook_core::*;
use linkbook_tests::{Device, Relay, closing_error, relay_socket};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_document_is_refused_and_the_team_keeps_syncing() {
    let relay = Relay::start();
    let ca = relay.ca_pem();
    let good = Device::enrolled(&relay, "north", "Asha");
    good.add_family(&NewFamily {
        name: "Smith".into(),
        ..Default::default()
    })
    .expect("family");
    tokio::task::block_in_place(|| good.sync(None)).expect("first sync");

    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "attacker"));
    let mut ws = relay_socket(&relay.url, &ca, &creds.token)
        .await
        .expect("connect");
    let join = Message::Join {
        sender_id: creds.device_id.clone(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    ws.send(WsMessage::Binary(join.encode().into()))
        .await
        .expect("join");
    let _peer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("peer in time");

    // Any automerge-repo client can make this: no Linkbook type at all.
    let mut poison = automerge::AutoCommit::new();
    poison.put(automerge::ROOT, "hello", "world").expect("put");
    let mut state = automerge::sync::State::new();
    protocol::assume_shared_heads(&mut state);
    let data = poison
        .sync()
        .generate_sync_message(&mut state)
        .expect("a sync message")
        .encode();
    let m = Message::Sync {
        sender_id: creds.device_id.clone(),
        target_id: "relay".into(),
        document_id: DocumentId::random().to_string(),
        data,
    };
    ws.send(WsMessage::Binary(m.encode().into()))
        .await
        .expect("send");
    let error = closing_error(&mut ws).await;
    let error = error.expect("an error message");
    assert!(error.contains("no Linkbook type"), "{error}");

    // The team keeps syncing: the old device and a fresh one.
    tokio::task::block_in_place(|| good.sync(None)).expect("the good device still syncs");
    let fresh = Device::enrolled(&relay, "north", "Ben");
    tokio::task::block_in_place(|| fresh.sync(None)).expect("a fresh device syncs");
    assert_eq!(fresh.families().expect("families").len(), 1);
    assert_eq!(relay.integrity_check(), "ok");
}
