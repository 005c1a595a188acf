//! No existence oracle (issue 11, finding 6): a device must not learn
//! whether another team holds a document id. The relay checks the team
//! from the documents' index before loading anything (`Hub::slot`), and
//! answers a `sync` for another team's id with exactly the bytes a
//! never-stored id gets: the reply of a new, empty document with a fresh
//! sync state to that message. Such an answer stores nothing (the id is
//! taken): namespacing documents per team in storage, so that the sender's
//! team gets its own document, is not done yet.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use chrono::Utc;
use linkbook_core::protocol::{Message, catch_automerge_panic};

use crate::relay::Close;
use crate::storage::{Device, Storage};

/// Answers `message` as a document the relay never stored would.
pub(crate) fn answer_as_new(
    peer_id: &str,
    device: &Device,
    outbox: &crate::outbox::Outbox,
    document_id: &str,
    message: sync::Message,
) -> Result<(), Close> {
    let mut doc = Automerge::new();
    let mut state = sync::State::new();
    if !matches!(
        catch_automerge_panic(|| doc.receive_sync_message(&mut state, message)),
        Ok(Ok(()))
    ) {
        // The text `Hub::sync` closes with for a message it cannot apply.
        return Err(Close(
            "the Automerge sync message could not be applied".into(),
        ));
    }
    if let Some(reply) = doc.generate_sync_message(&mut state) {
        outbox.offer(Message::Sync {
            sender_id: peer_id.to_string(),
            target_id: device.id.clone(),
            document_id: document_id.to_string(),
            data: reply.encode(),
        });
    }
    Ok(())
}

/// (device, document) pairs already audited as cross-team, so that one
/// device repeating a request cannot flood the append-only audit.
static AUDITED: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);
/// Distinct pairs remembered; beyond it nothing more is audited until restart.
const MAX_AUDITED: usize = 10_000;

/// Audits a device's sync of another team's document: once per pair, off
/// the request's path (an fsync on it would make the answer slower than a
/// missing id's, an oracle again).
pub(crate) fn note_cross_team(storage: &Arc<dyn Storage>, device: &Device, doc_id: &str) {
    {
        let mut audited = AUDITED.lock().unwrap_or_else(|p| p.into_inner());
        let set = audited.get_or_insert_with(HashSet::new);
        if set.len() >= MAX_AUDITED || !set.insert((device.id.clone(), doc_id.to_string())) {
            return;
        }
    }
    tracing::warn!(device = %device.id, team = %device.team, doc = %doc_id, "sync of another team's document");
    let storage = storage.clone();
    let device = device.clone();
    let doc_id = doc_id.to_string();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = storage.audit(Some(&device), "cross-team", Some(&doc_id), Utc::now()) {
            tracing::error!(error = %e, "writing the audit failed");
        }
    });
}
