//! The loaded documents: a [`Slot`] per (team, document), loaded from
//! storage on demand (through the load budget), created for a first upload,
//! dropped when refused or not stored, and evicted when idle (least recently
//! used, beyond `max_loaded_docs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use automerge::{Automerge, ReadDoc};
use linkbook_core::{DocSync, DocumentId};

use super::{Close, DocKey, Hub, lock};
use crate::storage::{DeviceId, Team};

/// A loaded document's sync with each connection that touched it.
pub(super) type States = HashMap<u64, (DeviceId, DocSync)>;

/// One loaded document.
pub(super) struct Slot {
    pub(super) team: Team,
    pub(super) doc: Automerge,
    /// The engine's sync of this document with each connection that has
    /// touched it (its state, what it was sent, its last reply: see
    /// `linkbook_core::DocSync`).
    pub(super) states: States,
    pub(super) last_used: u64,
    /// Its document holds changes that storage refused (a full disk), or
    /// was left half-changed by an Automerge panic. The slot is out of the
    /// map by then, but a connection that was waiting
    /// for its lock still holds it: that one must reload the document from
    /// storage, not build on (and answer with heads of) changes the relay
    /// does not have. See [`Hub::locked_slot`].
    pub(super) unstored: bool,
    /// Bytes storage holds for it (snapshot and changes), against
    /// `max_document_bytes`.
    pub(super) stored_bytes: u64,
    /// The cursor value of the latest stored change this copy holds, while
    /// it holds every stored change up to it (`None`: another writer, a
    /// relay node, appended meanwhile, so this copy must not compact and is
    /// refreshed at the next notification or push: nodes.rs).
    pub(super) seq: Option<i64>,
}

impl Slot {
    /// Whether this copy holds every stored change up to cursor value `seq`
    /// (an uploaded change of a higher one, or one another node stored
    /// while this copy was behind, is not known to be in it).
    pub(super) fn holds_through(&self, seq: i64) -> bool {
        self.seq.is_some_and(|held| held >= seq)
    }
}

impl Hub {
    /// Drops a slot's loaded document (refused, half-applied or not
    /// stored): it leaves the map, and a connection already waiting for its
    /// lock reloads it from storage (`Slot::unstored`).
    pub(super) fn forget(&self, s: &mut Slot, team: &Team, id: DocumentId) {
        s.unstored = true;
        lock(&self.docs).remove(&(team.clone(), id));
    }

    /// The loaded slot of `team`'s document `id`; `None`: the team has no
    /// such document (whether or not another team has one: namespaced).
    pub(super) async fn slot(
        &self,
        id: DocumentId,
        team: &Team,
        create: bool,
    ) -> Result<Option<Arc<tokio::sync::Mutex<Slot>>>, Close> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let map_key: DocKey = (team.clone(), id);
        let loaded = lock(&self.docs).get(&map_key).cloned();
        if let Some(slot) = loaded {
            let mut s = slot.lock().await;
            s.last_used = tick;
            drop(s);
            return Ok(Some(slot));
        }
        let key = id.to_string();
        // Only the team's own document is looked at: another team's large
        // document costs what a missing id costs (issue 11, finding 6).
        let stored = self.storage.load_document(team, id).await.map_err(|e| {
            tracing::error!(error = %e, "loading a document failed");
            Close("the relay could not load a document".into())
        })?;
        let slot = match stored {
            Some(stored) => {
                let stored_bytes = crate::documents::stored_bytes(&stored);
                // Stored bytes go through the budget too (doc_cap.rs): a
                // poison stored before it existed must not abort the relay;
                // Automerge's panics are caught (documents.rs).
                let budget = crate::doc_cap::load_budget(self.limits.max_document_ops);
                let doc = match crate::documents::load(&stored, &budget) {
                    Ok(doc) => doc,
                    Err(e) => {
                        tracing::error!(doc = %key, bytes = stored_bytes, reason = %e, "a stored document is damaged; not loaded");
                        return Err(Close("a stored document is damaged".into()));
                    }
                };
                Slot {
                    team: stored.team,
                    doc,
                    states: HashMap::new(),
                    last_used: tick,
                    unstored: false,
                    stored_bytes: u64::try_from(stored_bytes).unwrap_or(u64::MAX),
                    seq: Some(stored.seq),
                }
            }
            None if create => Slot {
                team: team.clone(),
                doc: Automerge::new(),
                states: HashMap::new(),
                last_used: tick,
                unstored: false,
                stored_bytes: 0,
                seq: Some(0),
            },
            None => return Ok(None),
        };
        let slot = {
            let mut docs = lock(&self.docs);
            // Another connection may have loaded it meanwhile: keep theirs.
            let slot = docs
                .entry(map_key)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(slot)))
                .clone();
            crate::metrics::metrics().loaded_documents(docs.len());
            slot
        };
        self.evict_idle().await;
        Ok(Some(slot))
    }

    /// `f` of `team`'s document `id` as loaded here, if it is loaded and
    /// holds every change stored through it (never loads it). The report
    /// projector reads a document the relay holds from here rather than
    /// loading a second copy (console/projector.rs).
    pub async fn read_loaded<T>(
        &self,
        team: &Team,
        id: DocumentId,
        f: impl FnOnce(&Automerge) -> T,
    ) -> Option<T> {
        let slot = lock(&self.docs).get(&(team.clone(), id)).cloned()?;
        let s = slot.lock().await;
        if s.unstored || s.seq.is_none() {
            return None;
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        Some(if multi_thread {
            tokio::task::block_in_place(|| f(&s.doc))
        } else {
            f(&s.doc)
        })
    }

    /// The document's slot, locked (see [`Hub::slot`]); one left behind by
    /// a failed write is passed over and the document loaded again.
    pub(super) async fn locked_slot(
        &self,
        id: DocumentId,
        team: &Team,
        create: bool,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<Slot>>, Close> {
        loop {
            let Some(slot) = self.slot(id, team, create).await? else {
                return Ok(None);
            };
            let s = slot.lock_owned().await;
            // Removed from the map before its lock was released, so the
            // next `slot` call loads from storage: this loop ends.
            if !s.unstored {
                return Ok(Some(s));
            }
        }
    }

    /// Drops the least recently used documents nobody is syncing.
    async fn evict_idle(&self) {
        let mut saved = Vec::new();
        {
            let mut docs = lock(&self.docs);
            if docs.len() <= self.limits.max_loaded_docs {
                return;
            }
            // Not in use by any request right now (the map holds the only
            // reference and nobody holds the lock), and holding no received
            // changes that wait for their dependencies: those are only in
            // memory, and their sender will not send them again this session.
            let mut idle: Vec<(u64, DocKey)> = docs
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .filter_map(|(key, slot)| slot.try_lock().ok().map(|s| (s, key.clone())))
                .filter(|(s, _)| s.doc.get_missing_deps(&[]).is_empty())
                .map(|(s, id)| (s.last_used, id))
                .collect();
            idle.sort();
            let excess = docs.len() - self.limits.max_loaded_docs;
            for (_, (team, id)) in idle.into_iter().take(excess) {
                if let Some(slot) = docs.remove(&(team.clone(), id))
                    && let Ok(mut s) = slot.try_lock()
                {
                    // A connection still syncing it reloads this state from
                    // storage, as after a reconnect.
                    for (_, (device, state)) in s.states.drain() {
                        saved.push((team.clone(), id, device, state.encode()));
                    }
                }
            }
            crate::metrics::metrics().loaded_documents(docs.len());
        }
        if let Err(e) = self.storage.save_sync_states(&saved).await {
            tracing::warn!(error = %e, "saving sync states of evicted documents failed");
        }
    }
}
