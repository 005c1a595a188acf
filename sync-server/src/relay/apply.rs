//! Applying a device's sync message to its document: the id, the budget,
//! a purge, the team's namespace, Automerge under its panic guard, the door
//! (type and change rules) and the size cap, then storing it; what is
//! refused is recorded (refusals.rs) and closes the connection (an actor
//! clash refuses only that document). The reply and fan-out: fanout.rs.

use automerge::ChangeHash;
use automerge::sync;
use linkbook_core::protocol::Message;
use linkbook_core::{ApplyError, DocumentId};

use super::slots::Slot;
use super::{Close, Hub, lock};
use crate::outbox::{Outbox, Owed};
use crate::storage::Device;

impl Hub {
    /// Applies a device's `sync` (or, `is_request`, `request`) message about
    /// one document, stores what it changed, then answers (fanout.rs).
    pub(super) async fn sync(
        &self,
        conn_id: u64,
        (device, tag): (&Device, &str),
        outbox: &Outbox,
        owed: &mut Owed,
        (document_id, data): (&str, &[u8]),
        is_request: bool,
    ) -> Result<(), Close> {
        let Ok(id) = DocumentId::parse(document_id, "document id") else {
            self.unavailable(outbox, document_id);
            return Ok(());
        };
        // Never `sync::Message::decode` alone: see protocol::decode_sync_message.
        let message = self.decode_within_budget(device, document_id, data)?;
        tracing::trace!(device = %device.id, doc = %document_id, m = %brief(&message), "receive");
        // A purged document is gone, also from memory, and never taken again
        // (the administrator purges from another process: checked each time).
        let key = id.to_string();
        let purged = self
            .storage
            .is_purged(&device.team, id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "checking for a purge failed");
                Close("the relay could not read its storage".into())
            })?;
        if purged {
            lock(&self.docs).remove(&(device.team.clone(), id));
            self.unavailable(outbox, document_id);
            return Ok(());
        }
        let Some(mut s) = self.locked_slot(id, &device.team, !is_request).await? else {
            // The team has no such document (another team's id included:
            // namespaced). Audited, if another team holds it, afterwards.
            self.unavailable(outbox, document_id);
            crate::oracle::note_cross_team(&self.storage, device, id);
            return Ok(());
        };
        // The slot's lock may have been a wait: revoked meanwhile, nothing
        // of this message is applied.
        if let Some(reason) = outbox.shut_reason() {
            return Err(Close(reason));
        }
        self.load_state(&mut s, id, conn_id, device).await;
        let before = s.doc.get_heads();
        if before.is_empty() {
            // New to this team: another team may hold the id (audited only).
            crate::oracle::note_cross_team(&self.storage, device, id);
        }
        // At most heavy::PERMITS messages are applied at once (heavy.rs).
        let turn = crate::heavy::permit().await;
        let applied = {
            let Slot { doc, states, .. } = &mut *s;
            let (_, state) = states
                .get_mut(&conn_id)
                .ok_or_else(|| Close("internal state lost".into()))?;
            state.receive(doc, message)
        };
        if let Err(ApplyError::Panicked) = applied {
            // Automerge panicked half-way: forget the loaded copy.
            self.forget(&mut s, &device.team, id);
        }
        match applied {
            Ok(()) => {}
            // A copy of this device (or a hostile peer) reused an actor's
            // sequence numbers: this document is refused, not the session.
            Err(e) if e.is_actor_clash() => {
                drop(turn);
                self.refuse_document(&mut s, conn_id, device, outbox, &key, id);
                return Ok(());
            }
            _ => {
                return Err(Close(
                    "the Automerge sync message could not be applied".into(),
                ));
            }
        }
        let after = s.doc.get_heads();
        // The door asks, for a team directory only, whether a removed
        // entry's family was purged: the team's purged ids are read then
        // (the directory's type before or after the change; the rules judge
        // by the one it had). A failed read keeps nothing of the message.
        let directory = |heads: &[automerge::ChangeHash]| {
            matches!(
                automerge::ReadDoc::get_at(&s.doc, automerge::ROOT, "type", heads),
                Ok(Some((automerge::Value::Scalar(t), _))) if t.as_str() == Some(linkbook_core::DocumentType::TeamDirectory.as_str())
            )
        };
        let purged: std::collections::HashSet<String> =
            if before != after && (directory(&before) || directory(&after)) {
                match self.storage.purged(&device.team).await {
                    Ok(purged) => purged.into_iter().map(|p| p.id).collect(),
                    Err(e) => {
                        tracing::error!(error = %e, "reading the purged documents failed");
                        self.forget(&mut s, &device.team, id);
                        return Err(Close("the relay could not read its storage".into()));
                    }
                }
            } else {
                Default::default()
            };
        if before != after
            && let Err(reason) = crate::door::check(&s.doc, &before, &|id| purged.contains(id))
        {
            let kind = crate::refusals::RefusalKind::Door;
            return Err(self.refuse(&mut s, device, &key, id, kind, reason));
        }
        let upload = (before != after).then(|| crate::doc_cap::Upload::of(&s.doc, &before));
        if let Some(upload) = &upload
            && let Err(reason) =
                crate::doc_cap::check(s.stored_bytes, upload, self.limits.max_document_bytes)
        {
            tracing::warn!(device = %device.id, doc = %key,
                stored = s.stored_bytes, adding = upload.stored_bytes(), cap = self.limits.max_document_bytes,
                "the document's sizes at the cap");
            let kind = crate::refusals::RefusalKind::OverSizeCap;
            return Err(self.refuse(&mut s, device, &key, id, kind, reason));
        }
        // The rules' diff and the cap are heavy work too (heavy.rs); storing is not.
        drop(turn);
        if let Some(upload) = upload
            && let Err(close) = self.store(id, &mut s, upload, (device, tag)).await
        {
            // Not stored, so not kept: reload from storage next time.
            self.forget(&mut s, &device.team, id);
            return Err(close);
        }
        if is_request && s.doc.get_heads().is_empty() {
            s.states.remove(&conn_id);
            drop(s);
            self.unavailable(outbox, document_id);
            crate::oracle::note_cross_team(&self.storage, device, id);
            return Ok(());
        }
        self.reply_and_fan_out(
            &mut s,
            (conn_id, device, outbox),
            owed,
            document_id,
            before != after,
        )
        .await;
        Ok(())
    }

    /// Refuses what a device sent (door, rules, size cap): neither stored
    /// nor kept in memory, recorded for the administrator (refusals.rs).
    /// Returns the close that tells the device why.
    fn refuse(
        &self,
        s: &mut Slot,
        device: &Device,
        key: &str,
        id: DocumentId,
        kind: crate::refusals::RefusalKind,
        reason: String,
    ) -> Close {
        self.refusals
            .note(&self.storage, device, key, kind, &reason);
        self.forget(s, &device.team, id);
        Close(reason)
    }

    /// Refuses one document of a connection that goes on (an actor
    /// sequence clash, `protocol::ACTOR_CLASH`): recorded as other refusals
    /// are, the loaded copy dropped (Automerge refused the whole batch, but
    /// the sync state may have moved), this connection's state for it
    /// forgotten, and the device told in a `doc-refused` message.
    fn refuse_document(
        &self,
        s: &mut Slot,
        conn_id: u64,
        device: &Device,
        outbox: &Outbox,
        key: &str,
        id: DocumentId,
    ) {
        let reason = linkbook_core::protocol::ACTOR_CLASH;
        let kind = crate::refusals::RefusalKind::ActorClash;
        self.refusals.note(&self.storage, device, key, kind, reason);
        s.states.remove(&conn_id);
        self.forget(s, &device.team, id);
        outbox.offer(Message::DocRefused {
            sender_id: self.peer_id.clone(),
            target_id: outbox.peer().to_string(),
            document_id: key.to_string(),
            reason: reason.to_string(),
        });
    }

    pub(super) fn unavailable(&self, outbox: &Outbox, document_id: &str) {
        outbox.offer(self.unavailable_message(outbox.peer(), document_id));
    }

    /// Decodes a sync message within the relay's budget; bytes over it are
    /// refused before Automerge loads them, logged and audited (ids only).
    fn decode_within_budget(
        &self,
        device: &Device,
        document_id: &str,
        data: &[u8],
    ) -> Result<automerge::sync::Message, Close> {
        let budget = linkbook_core::budget::Budget {
            max_rows: self.limits.max_document_ops,
            ..Default::default()
        };
        linkbook_core::protocol::decode_sync_message_within(data, &budget).map_err(|e| {
            if let linkbook_core::protocol::SyncMessageError::OverBudget(_) = e {
                tracing::warn!(device = %device.id, doc = %document_id, bytes = data.len(), "sync message over budget refused");
                let kind = crate::refusals::RefusalKind::OverBudget;
                self.refusals.note(&self.storage, device, document_id, kind, &e.to_string());
            }
            Close(e.to_string())
        })
    }
}

/// A sync message for trace logs: heads, need, have and changes counts.
pub(crate) fn brief(m: &sync::Message) -> String {
    let short = |h: &[ChangeHash]| {
        h.iter()
            .map(|h| h.to_string()[..6].to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "heads=[{}] need=[{}] have={:?} changes={}",
        short(&m.heads),
        short(&m.need),
        m.have
            .iter()
            .map(|h| short(&h.last_sync))
            .collect::<Vec<_>>(),
        m.changes.len()
    )
}
