//! Conformance: a samod 0.16 repo (the Rust automerge-repo) enrolled as a
//! device reads a family written by a Linkbook device through the relay, and
//! a note it adds reaches the Linkbook device.

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use futures_util::{SinkExt, StreamExt};
use linkbook_core::*;
use linkbook_tests::{Device, Relay};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Dials the relay over rustls (trusting its development CA) with the
/// device's bearer token, as any automerge-repo peer of Linkbook must.
struct RelayDialer {
    url: url::Url,
    ws_url: String,
    token: String,
    ca_pem: String,
}

#[derive(Debug)]
struct DialFailed(String);
impl std::fmt::Display for DialFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for DialFailed {}

impl samod::Dialer for RelayDialer {
    type Error = DialFailed;

    fn url(&self) -> url::Url {
        self.url.clone()
    }

    fn connect(
        &self,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<samod::Transport, samod::DialError<DialFailed>>,
    > {
        let (ws_url, token, ca_pem) =
            (self.ws_url.clone(), self.token.clone(), self.ca_pem.clone());
        Box::pin(async move {
            let ws = linkbook_tests::relay_socket(&ws_url, &ca_pem, &token)
                .await
                .map_err(|e| samod::DialError::PermanentFailure(DialFailed(e)))?;
            let (sink, stream) = ws.split();
            let stream = stream.filter_map(|m| async move {
                match m {
                    Ok(WsMessage::Binary(b)) => Some(Ok(b.to_vec())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            });
            let sink = sink.with(|bytes: Vec<u8>| async move {
                Ok::<_, tokio_tungstenite::tungstenite::Error>(WsMessage::Binary(bytes.into()))
            });
            Ok(samod::Transport::new(Box::pin(stream), Box::pin(sink)))
        })
    }
}

fn note_texts(doc: &automerge::Automerge) -> Vec<String> {
    let Ok(Some((_, notes))) = doc.get(ROOT, "notes") else {
        return Vec::new();
    };
    doc.keys(&notes)
        .filter_map(|k| match doc.get(&notes, k.as_str()) {
            Ok(Some((_, note))) => match doc.get(&note, "text") {
                Ok(Some((automerge::Value::Scalar(s), _))) => s.as_str().map(str::to_string),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_samod_peer_reads_and_writes_a_family_through_the_relay() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("samod=warn,samod_core=warn")
        .with_test_writer()
        .try_init();
    let relay = Relay::start();
    let (url, ca) = (relay.url.clone(), relay.ca_pem());

    // A Linkbook device records a family with a note and syncs it up.
    let device = Device::enrolled(&relay, "north", "Asha");
    let family = device
        .add_family(&NewFamily {
            name: "Smith".into(),
            ..Default::default()
        })
        .expect("family");
    device
        .add_note(
            family,
            "Written on the Linkbook device",
            NoteCategory::Visit,
        )
        .expect("note");
    tokio::task::block_in_place(|| device.sync(None)).expect("sync");

    // A samod repo, enrolled as another device of the team.
    let code = relay.enrol_code("north", "Ben");
    let creds = tokio::task::block_in_place(|| enrol_device(&url, &code, Some(&ca), "samod peer"))
        .expect("enrol samod");
    let repo = samod::Repo::build_tokio()
        .with_peer_id(samod::PeerId::from(creds.device_id.clone()))
        .load()
        .await;
    let dialer = RelayDialer {
        url: url::Url::parse(&url).expect("url"),
        ws_url: url.clone(),
        token: creds.token.clone(),
        ca_pem: ca.clone(),
    };
    let dial = repo
        // samod 0.16 sometimes handles the first dial before it has registered
        // the dialer ("no dialer registered"), so allow a few quick retries.
        .dial(
            samod::BackoffConfig {
                initial_delay: std::time::Duration::from_millis(20),
                max_delay: std::time::Duration::from_millis(200),
                max_retries: Some(5),
            },
            Arc::new(dialer),
        )
        .expect("dial");
    let established = tokio::time::timeout(std::time::Duration::from_secs(20), dial.established())
        .await
        .expect("connect in time");
    assert!(
        established.is_ok(),
        "{established:?}\nrelay log:\n{}",
        relay.log()
    );

    let doc_id: samod::DocumentId = family.to_string().parse().expect("document id");
    let handle = tokio::time::timeout(std::time::Duration::from_secs(20), repo.find(doc_id))
        .await
        .expect("find in time")
        .expect("repo running")
        .expect("the relay serves the family to its team");
    assert_eq!(
        handle.with_document(|d| note_texts(d)),
        vec!["Written on the Linkbook device".to_string()]
    );

    // samod adds a note in Linkbook's shape and waits until the relay has it.
    let note_id = "8d3a2a4e-3b8f-4e8e-9a55-0f4d8f6f2b11";
    handle.with_document(|doc| {
        let mut tx = doc.transaction();
        let notes = match tx.get(ROOT, "notes") {
            Ok(Some((_, id))) => id,
            _ => tx.put_object(ROOT, "notes", ObjType::Map).expect("notes"),
        };
        let n = tx.put_object(&notes, note_id, ObjType::Map).expect("note");
        for (k, v) in [
            ("author", "Ben"),
            ("device", creds.device_id.as_str()),
            ("created_at", "2026-11-22T10:00:00+00:00"),
            ("category", "phone_call"),
            ("text", "Added by the samod peer"),
        ] {
            tx.put(&n, k, v).expect("field");
        }
        tx.put_object(&n, "history", ObjType::List)
            .expect("history");
        tx.commit();
    });
    let conn = dial.connection_id().expect("connection");
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        handle.they_have_our_changes(conn),
    )
    .await
    .expect("the relay acknowledged the note");

    // The Linkbook device gets it at its next sync.
    tokio::task::block_in_place(|| device.sync(None)).expect("sync");
    let notes = device.notes(family).expect("notes");
    assert!(
        notes
            .iter()
            .any(|n| n.id == note_id && n.text == "Added by the samod peer"),
        "{notes:?}"
    );
    assert!(
        !relay.log().contains(&creds.token),
        "a device token was logged"
    );
    repo.stop().await;
}
