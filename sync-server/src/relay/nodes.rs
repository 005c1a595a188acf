//! Several relay nodes on one database (issue 14): each node keeps the
//! documents its devices sync loaded, so another node's changes must reach
//! those copies, and the devices syncing them live.
//!
//! A node holds nothing a device depends on beyond its connection: every
//! change is stored before it is answered, and sync states are saved when a
//! connection ends. What a node must not do is answer from a copy that
//! lacks what another node stored. Two paths keep copies fresh:
//!
//! - [`Follower`] takes the store's document watch
//!   (`DocumentStore::watch_documents`: PostgreSQL's LISTEN/NOTIFY, sent
//!   inside each upload's and purge's transaction). A change with a cursor
//!   value above what a loaded copy holds complete (`Slot::seq`) makes the node
//!   merge the stored document into its copy ([`Hub::refresh`]) and fan the
//!   new changes out to every connection syncing it; a purge drops the copy;
//!   [`DocumentEvent::Missed`] (the watch reconnected) checks every loaded
//!   copy.
//! - A pipelined session's push of a document `changed-since` named
//!   carries that document's cursor value: a copy below it is refreshed
//!   before anything is generated from it (pushes.rs), so the cursor a
//!   device is handed never runs ahead of what it was sent, whatever the
//!   notification's delay.
//!
//! One-at-a-time work is coordinated through the database, never a file
//! lock: compaction is a conditional update (`DocumentStore::compact`), the
//! daily retention sweep is claimed by one node per day
//! (`DeviceStore::claim_job`), migrations run under an advisory lock.
//! On SQLite the store has no watch (one serving relay per data directory).

use std::sync::Arc;

use linkbook_core::DocumentId;
use linkbook_core::protocol::Message;

use super::slots::Slot;
use super::{Close, Hub, lock};
use crate::outbox::Outbox;
use crate::storage::{DocumentEvent, DocumentEvents, Storage, Team};

/// Follows the store's document watch for as long as it lives (`Bound::serve`
/// holds it).
#[derive(Debug)]
pub struct Follower {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Follower {
    /// Starts following, if the store has a watch (several nodes may write).
    pub async fn start(storage: &Arc<dyn Storage>, hub: Arc<Hub>) -> crate::Result<Follower> {
        let Some(events) = storage.watch_documents().await? else {
            return Ok(Follower { task: None });
        };
        Ok(Follower {
            task: Some(tokio::spawn(follow(hub, events))),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn follow(hub: Arc<Hub>, mut events: DocumentEvents) {
    while let Some(event) = events.recv().await {
        match event {
            DocumentEvent::Changed { team, id, seq } => hub.changed_elsewhere(&team, id, seq).await,
            DocumentEvent::Purged { team, id } => hub.purged_elsewhere(&team, id).await,
            DocumentEvent::Missed => {
                let loaded: Vec<(Team, DocumentId)> = lock(&hub.docs).keys().cloned().collect();
                tracing::info!(
                    documents = loaded.len(),
                    "checking every loaded document against storage"
                );
                for (team, id) in loaded {
                    hub.changed_elsewhere(&team, id, i64::MAX).await;
                }
            }
        }
    }
}

impl Hub {
    /// Brings the loaded copies of `documents` (ids with the cursor value
    /// storage holds them at) up to those values: a device handed that
    /// cursor is about to sync them.
    pub(crate) async fn catch_up(&self, team: &Team, documents: &[(DocumentId, i64)]) {
        for (id, seq) in documents {
            self.changed_elsewhere(team, *id, *seq).await;
        }
    }

    /// `team`'s document `id` is at cursor value `seq` in storage
    /// (`i64::MAX`: unknown, check): a loaded copy below it is refreshed and
    /// its new changes fanned out. A document not loaded is left alone: it
    /// is read from storage when a device asks.
    async fn changed_elsewhere(&self, team: &Team, id: DocumentId, seq: i64) {
        let Some(slot) = lock(&self.docs).get(&(team.clone(), id)).cloned() else {
            return;
        };
        let mut s = slot.lock().await;
        // This node's own commit (its copy is there already), or a copy
        // dropped meanwhile (whoever uses it next reloads it).
        if s.unstored || s.holds_through(seq) {
            return;
        }
        if let Err(Close(why)) = self.refresh_and_fan_out(&mut s, team, id, None).await {
            tracing::warn!(doc = %id, %why, "a loaded document could not be refreshed; dropped, to be loaded again");
        }
    }

    /// Another node purged `team`'s document `id`: the copy goes (devices
    /// learn of the purge at their next sync, as from the admin command).
    async fn purged_elsewhere(&self, team: &Team, id: DocumentId) {
        let Some(slot) = lock(&self.docs).get(&(team.clone(), id)).cloned() else {
            return;
        };
        let mut s = slot.lock().await;
        self.forget(&mut s, team, id);
    }

    /// Brings a loaded copy up to what storage holds and sends what it
    /// gained to every connection syncing it but `except`. A copy that
    /// cannot be refreshed is dropped (`Hub::forget`: whoever waits for it
    /// loads it again) and the error says why.
    pub(super) async fn refresh_and_fan_out(
        &self,
        s: &mut Slot,
        team: &Team,
        id: DocumentId,
        except: Option<u64>,
    ) -> Result<(), Close> {
        let gained = match self.refresh(s, team, id).await {
            Ok(gained) => gained,
            Err(close) => {
                self.forget(s, team, id);
                return Err(close);
            }
        };
        if !gained {
            return Ok(());
        }
        let document_id = id.to_string();
        let mut outgoing: Vec<(Outbox, Vec<Message>)> = Vec::new();
        let mut received = Vec::new();
        let Slot { doc, states, .. } = s;
        self.gather_fan_out(
            (doc, states),
            except,
            &document_id,
            (&mut outgoing, &mut received),
        );
        self.audit_then_send(&received, &document_id, outgoing)
            .await;
        Ok(())
    }

    /// Merges what storage holds of the document into the loaded copy;
    /// true if the copy gained changes.
    async fn refresh(&self, s: &mut Slot, team: &Team, id: DocumentId) -> Result<bool, Close> {
        let stored = self.storage.load_document(team, id).await.map_err(|e| {
            tracing::error!(error = %e, "loading a document failed");
            Close("the relay could not load a document".into())
        })?;
        let Some(stored) = stored else {
            // Purged (or never stored) meanwhile.
            return Err(Close("the document is no longer stored".into()));
        };
        let budget = crate::doc_cap::load_budget(self.limits.max_document_ops);
        let mut fresh = crate::documents::load(&stored, &budget).map_err(|e| {
            tracing::error!(doc = %id, reason = %e, "a stored document is damaged; not loaded");
            Close("a stored document is damaged".into())
        })?;
        let before = s.doc.get_heads();
        // Automerge 0.12 panics on some inputs: a half-merged copy is
        // dropped by the caller.
        let merged = linkbook_core::protocol::catch_automerge_panic(|| s.doc.merge(&mut fresh));
        if !matches!(merged, Ok(Ok(_))) {
            tracing::error!(doc = %id, "merging another node's changes failed; the copy is dropped");
            return Err(Close("the relay could not load a document".into()));
        }
        // Every change this copy holds is stored (an answered change is
        // committed first; a failed commit drops the copy), so it now
        // holds exactly what storage held at `stored.seq`.
        s.seq = Some(stored.seq);
        s.stored_bytes = u64::try_from(crate::documents::stored_bytes(&stored)).unwrap_or(u64::MAX);
        Ok(s.doc.get_heads() != before)
    }
}
