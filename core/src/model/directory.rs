//! The team directory: which families and family days the team has, so a
//! device learns of a family created elsewhere.
//!
//! Every device of a team computes the same directory id and the same first
//! change (fixed actor and time, see [`genesis`]), so devices that created the
//! directory independently, offline, share its root objects instead of each
//! making its own `families` map.
//! ```text
//! { type: "team_directory", schema_version, team,
//!   families: { "<family id>.status" },
//!   family_days: { "<day id>.date" } }
//! ```
//! No names: the directory is shared by the whole team and its history can
//! never be rewritten, so it holds random ids, a status and a date only.
//! When a family is purged, its entry goes and nothing personal is left in
//! the directory's history. (Names live in the family's own document, which
//! a purge deletes whole.)
//! Entries are flat scalars, not an object per family, for the reason given in
//! `family_day`: a device that learns of a family before the directory entry
//! must not create a second, competing entry object.
//! ```text
//! ```

use automerge::{
    ActorId, AutoCommit, ObjType, ROOT, ReadDoc, transaction::CommitOptions,
    transaction::Transactable,
};
use sha2::{Digest, Sha256};

use super::am::{ensure_map, get_map, get_str, keys, put_opt_str, write_header};
use super::*;
use crate::error::Result;
use crate::ids::DocumentId;

/// The directory as it was first created: byte-identical on every device.
pub(crate) fn genesis(team: &str) -> Result<AutoCommit> {
    let digest = Sha256::digest(format!("linkbook team directory actor\0{team}").as_bytes());
    let mut doc = AutoCommit::new().with_actor(ActorId::from(&digest[..16]));
    write_header(&mut doc, DocumentType::TeamDirectory)?;
    doc.put(ROOT, "team", team)?;
    doc.put_object(ROOT, "families", ObjType::Map)?;
    doc.put_object(ROOT, "family_days", ObjType::Map)?;
    doc.commit_with(CommitOptions::default().with_time(0));
    Ok(doc)
}

/// Sets `<id>.<field>` only when it differs (or holds concurrent values), so
/// re-writing an unchanged entry makes no change.
fn put_field(
    doc: &mut AutoCommit,
    map: &str,
    id: DocumentId,
    field: &str,
    value: Option<&str>,
) -> Result<()> {
    let m = ensure_map(doc, &ROOT, map)?;
    let key = format!("{id}.{field}");
    let settled = doc.get_all(&m, key.as_str())?.len() <= 1;
    if !settled || get_str(doc, &m, &key).as_deref() != value {
        put_opt_str(doc, &m, &key, value)?;
    }
    Ok(())
}

/// A family as the directory lists it.
pub(crate) struct Entry {
    pub id: DocumentId,
    pub status: FamilyStatus,
}

/// Only the status is written: see the module documentation (no names).
pub(crate) fn put_family(doc: &mut AutoCommit, family: &Entry) -> Result<()> {
    put_field(
        doc,
        "families",
        family.id,
        "status",
        Some(family.status.as_str()),
    )
}

pub(crate) fn put_family_day(doc: &mut AutoCommit, day: &FamilyDay) -> Result<()> {
    put_field(
        doc,
        "family_days",
        day.id,
        "date",
        Some(&day.date.to_string()),
    )
}

/// Removes every entry of document `id` (a purged family or family day).
pub(crate) fn remove(doc: &mut AutoCommit, id: DocumentId) -> Result<()> {
    let prefix = format!("{id}.");
    for map in ["families", "family_days"] {
        let Some(m) = get_map(doc, &ROOT, map) else {
            continue;
        };
        for key in keys(doc, &m).into_iter().filter(|k| k.starts_with(&prefix)) {
            doc.delete(&m, key.as_str())?;
        }
    }
    Ok(())
}

/// Every document the directory names.
pub(crate) fn listed(doc: &AutoCommit) -> Vec<DocumentId> {
    let mut ids: Vec<DocumentId> = ["families", "family_days"]
        .iter()
        .filter_map(|k| get_map(doc, &ROOT, k))
        .flat_map(|m| keys(doc, &m))
        .filter_map(|k| {
            k.split_once('.')
                .and_then(|(id, _)| DocumentId::parse(id, "document id").ok())
        })
        .collect();
    ids.dedup();
    ids
}
