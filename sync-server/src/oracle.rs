//! No existence oracle (issue 11, finding 6): a device must not learn
//! whether another team holds a document id. Documents are namespaced per
//! team (storage keys and the Hub's loaded documents are `(team, id)`), so
//! an id means nothing across teams: a team B `request` for an id team A
//! holds finds no team B document and gets `doc-unavailable`, a `sync`
//! creates team B's own document, exactly as for a never-stored id, and
//! nothing of team A is read for it. The only look across teams is this
//! module's audit, done after answering, in a spawned task.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use linkbook_core::DocumentId;

use crate::storage::{AuditAction, AuditRecord, Device, Storage, Team};

/// (device, document) pairs already audited as cross-team, so that one
/// device repeating a request cannot flood the append-only audit.
static AUDITED: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);
/// Distinct pairs remembered; beyond it nothing more is audited until restart.
const MAX_AUDITED: usize = 10_000;
/// Look-ups waiting or running: beyond it a new one is skipped (a device
/// sending ids faster than the index answers cannot pile up tasks).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
const MAX_IN_FLIGHT: usize = 256;

/// Audits a device's `request` or new-document `sync` for an id another
/// team holds: once per (device, id), off the request's path. Called for
/// never-stored ids as well (the answer was already sent, and the caller
/// cannot tell the two apart without the look-up this does later).
pub(crate) fn note_cross_team(storage: &Arc<dyn Storage>, device: &Device, id: DocumentId) {
    let doc_id = &id.to_string();
    {
        let audited = AUDITED.lock().unwrap_or_else(|p| p.into_inner());
        if audited.as_ref().is_some_and(|s| {
            s.len() >= MAX_AUDITED || s.contains(&(device.id.to_string(), doc_id.to_string()))
        }) {
            return;
        }
    }
    if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let storage = storage.clone();
    let device = device.clone();
    tokio::spawn(async move {
        check_and_audit(&*storage, &device, id).await;
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    });
}

async fn check_and_audit(storage: &dyn Storage, device: &Device, id: DocumentId) {
    let doc_id = &id.to_string();
    let holders = match storage.teams_holding(id).await {
        Ok(teams) => teams,
        Err(e) => {
            tracing::error!(error = %e, "looking up a document's teams for the audit failed");
            return;
        }
    };
    let others: Vec<Team> = holders.into_iter().filter(|t| *t != device.team).collect();
    if others.is_empty() {
        return;
    }
    {
        let mut audited = AUDITED.lock().unwrap_or_else(|p| p.into_inner());
        let set = audited.get_or_insert_with(HashSet::new);
        if set.len() >= MAX_AUDITED || !set.insert((device.id.to_string(), doc_id.to_string())) {
            return;
        }
    }
    tracing::warn!(device = %device.id, team = %device.team, doc = %doc_id, "request for an id another team holds");
    let at = Utc::now();
    let records: Vec<AuditRecord> = others
        .iter()
        .map(|holder| {
            AuditRecord::new(AuditAction::CrossTeam, at)
                .device(&device.id)
                .worker(&device.worker)
                .document(holder, doc_id)
        })
        .collect();
    if let Err(e) = storage.append_audit(&records).await {
        tracing::error!(error = %e, "writing the audit failed");
    }
}
