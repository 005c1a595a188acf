//! A raw automerge-repo peer that stays connected: what the relay pushes
//! to a live connection (the fan-out of colleagues' changes), seen from the
//! device's side.

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, ReadDoc};
use futures_util::{SinkExt, StreamExt};
use linkbook_core::DeviceCredentials;
use linkbook_core::protocol::Message;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{Relay, RelaySocket, joined};

/// A raw automerge-repo peer holding one document, kept in sync by hand.
#[allow(missing_debug_implementations)]
pub struct LivePeer {
    pub ws: RelaySocket,
    me: String,
    doc_id: String,
    doc: AutoCommit,
    state: sync::State,
}

impl LivePeer {
    /// Joins as `creds` and asks for `doc_id`, syncing until the relay is
    /// quiet: from then on the relay fans the document's new changes out
    /// to this connection live.
    pub async fn subscribed(relay: &Relay, creds: &DeviceCredentials, doc_id: &str) -> LivePeer {
        let ws = joined(relay, &relay.ca_pem(), creds).await;
        let mut peer = LivePeer {
            ws,
            me: creds.device_id.clone(),
            doc_id: doc_id.to_string(),
            doc: AutoCommit::new(),
            state: sync::State::new(),
        };
        let first = peer
            .doc
            .sync()
            .generate_sync_message(&mut peer.state)
            .expect("a first message");
        peer.send(Message::Request {
            sender_id: peer.me.clone(),
            target_id: String::new(),
            document_id: peer.doc_id.clone(),
            data: first.encode(),
        })
        .await;
        let got = peer.until_quiet().await;
        assert!(got >= 1, "the relay sent {doc_id}");
        peer
    }

    pub async fn send(&mut self, m: Message) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.ws.send(WsMessage::Binary(m.encode().into())),
        )
        .await
        .expect("sent in time")
        .expect("send");
    }

    /// Answers the relay until it has been quiet for a second; returns how
    /// many of its messages carried changes. At most 1,000 messages.
    pub async fn until_quiet(&mut self) -> usize {
        let mut with_changes = 0;
        for _ in 0..1_000 {
            let frame = match tokio::time::timeout(Duration::from_secs(1), self.ws.next()).await {
                Err(_) => return with_changes,
                Ok(Some(Ok(frame))) => frame,
                Ok(other) => panic!("the relay dropped {}: {other:?}", self.me),
            };
            let WsMessage::Binary(bytes) = frame else {
                continue;
            };
            let m = Message::decode(&bytes).expect("a protocol message");
            let Message::Sync { data, .. } = m else {
                panic!("{} got {m:?}", self.me);
            };
            let m = sync::Message::decode(&data).expect("a sync message");
            if !m.changes.is_empty() {
                with_changes += 1;
            }
            self.doc
                .sync()
                .receive_sync_message(&mut self.state, m)
                .expect("apply");
            let reply = self.doc.sync().generate_sync_message(&mut self.state);
            if let Some(reply) = reply {
                let m = Message::Sync {
                    sender_id: self.me.clone(),
                    target_id: String::new(),
                    document_id: self.doc_id.clone(),
                    data: reply.encode(),
                };
                self.send(m).await;
            }
        }
        panic!("the exchange did not end");
    }

    /// Whether a note with this text reached the peer's copy.
    pub fn holds(&self, text: &str) -> bool {
        let Ok(Some((_, notes))) = self.doc.get(automerge::ROOT, "notes") else {
            return false;
        };
        self.doc.map_range(&notes, ..).any(|note| {
            matches!(self.doc.get(note.id(), "text"),
                Ok(Some((v, _))) if v.as_str() == Some(text))
        })
    }
}

impl LivePeer {
    /// Reads until the relay closes the connection: the `error` messages it
    /// sent before (anything else is dropped). Bound it with a timeout.
    pub async fn closed(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(frame) = self.ws.next().await {
            match frame {
                Ok(WsMessage::Binary(bytes)) => {
                    if let Ok(Message::Error { message }) = Message::decode(&bytes) {
                        errors.push(message);
                    }
                }
                Ok(WsMessage::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        errors
    }
}
