//! Report projections, kept as documents arrive: each stored upload marks
//! its document dirty in the upload's own transaction
//! (`ConsoleStore::dirty_projections`); this task reads each dirty
//! document once, off the async threads, and writes the facts the reports
//! count. Reports then read the projections, never the documents.
//!
//! A projection holds no names, addresses or note text: dates, categories,
//! head counts, the referral agency and outcome and the closure reason (as
//! typed by workers), family ids and device ids. A purge deletes it with
//! the document.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use linkbook_core::{DocumentId, MemberRole};
use serde::{Deserialize, Serialize};

use crate::storage::{DirtyProjection, ProjectionKind, Storage};

/// Dirty documents taken per round.
const BATCH: usize = 64;
/// How long the task waits when nothing is dirty.
const IDLE: Duration = Duration::from_millis(500);

/// What the outcomes report needs of a family case file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyFacts {
    /// The day the case was opened (its document's creation).
    pub opened: NaiveDate,
    pub closed: Option<NaiveDate>,
    pub closure_reason: Option<String>,
    /// The dates of birth of the family's children (`None`: not recorded).
    pub children: Vec<Option<NaiveDate>>,
    /// Case notes: (category, day written, how many).
    pub notes: Vec<(String, NaiveDate, u32)>,
    pub referrals: Vec<ReferralFact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralFact {
    pub agency: String,
    pub outcome: Option<String>,
    pub date: NaiveDate,
}

/// What the family-day reports need of a family day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayFacts {
    pub prison: String,
    pub date: NaiveDate,
    pub capacity: Option<u32>,
    pub booked: Vec<HeadCount>,
    pub attended: Vec<Arrival>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadCount {
    pub family: String,
    pub adults: u32,
    pub children: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    pub family: String,
    pub adults: u32,
    pub children: u32,
    pub arrived_at: DateTime<Utc>,
    /// The devices that checked the family in.
    pub by: Vec<String>,
}

/// A family's facts.
pub fn family_facts(family: &linkbook_core::Family) -> FamilyFacts {
    let mut notes: std::collections::BTreeMap<(String, NaiveDate), u32> = Default::default();
    for n in &family.notes {
        *notes
            .entry((n.category.as_str().to_string(), n.created_at.date_naive()))
            .or_default() += 1;
    }
    FamilyFacts {
        opened: family.created_at.date_naive(),
        closed: family.closure.as_ref().map(|c| c.date),
        closure_reason: family.closure.as_ref().map(|c| c.reason.clone()),
        children: family
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Child)
            .map(|m| m.date_of_birth)
            .collect(),
        notes: notes.into_iter().map(|((c, d), n)| (c, d, n)).collect(),
        referrals: family
            .referrals
            .iter()
            .map(|r| ReferralFact {
                agency: r.agency.clone(),
                outcome: r.outcome.clone(),
                date: r.date,
            })
            .collect(),
    }
}

/// A family day's facts.
pub fn day_facts(day: &linkbook_core::FamilyDay) -> DayFacts {
    DayFacts {
        prison: day.prison.clone(),
        date: day.date,
        capacity: day.capacity,
        booked: day
            .bookings
            .iter()
            .map(|b| HeadCount {
                family: b.family_id.to_string(),
                adults: b.adults,
                children: b.children,
            })
            .collect(),
        attended: day
            .attendance
            .iter()
            .map(|a| Arrival {
                family: a.family_id.to_string(),
                adults: a.adults,
                children: a.children,
                arrived_at: a.arrived_at,
                by: a.checked_in_by.clone(),
            })
            .collect(),
    }
}

/// A stored document's projection: its kind and JSON, or `None` for one
/// reports do not count (a directory, an unknown or damaged document).
pub fn project(
    stored: &crate::storage::StoredDocument,
    id: DocumentId,
) -> Option<(ProjectionKind, String)> {
    let doc = crate::documents::load(stored, &crate::admin::load_budget()).ok()?;
    project_doc(&doc, id)
}

/// A loaded document's projection (see [`project`]).
pub fn project_doc(doc: &automerge::Automerge, id: DocumentId) -> Option<(ProjectionKind, String)> {
    let kind = crate::documents::document_type(doc)?;
    linkbook_core::protocol::catch_automerge_panic(|| match kind.as_str() {
        "family" => serde_json::to_string(&family_facts(&linkbook_core::read_family(doc, id)))
            .ok()
            .map(|json| (ProjectionKind::Family, json)),
        "family_day" => serde_json::to_string(&day_facts(&linkbook_core::read_family_day(doc, id)))
            .ok()
            .map(|json| (ProjectionKind::FamilyDay, json)),
        _ => None,
    })
    .ok()
    .flatten()
}

/// Brings one dirty document's projection up to date. `hub`: this relay's
/// loaded documents, read instead of loading a second copy, when this
/// relay is the store's only writer (SQLite: a copy it holds has every
/// stored change; with several nodes another may have stored more).
pub async fn refresh(
    storage: &dyn Storage,
    hub: Option<&crate::relay::Hub>,
    dirty: &DirtyProjection,
) -> crate::storage::Result<()> {
    let id = dirty.id;
    let loaded = match hub {
        Some(hub) => {
            hub.read_loaded(&dirty.team, id, |doc| project_doc(doc, id))
                .await
        }
        None => None,
    };
    let projected = match loaded {
        Some(projected) => projected,
        None => match storage.load_document(&dirty.team, id).await? {
            Some(stored) => tokio::task::spawn_blocking(move || project(&stored, id))
                .await
                .ok()
                .flatten(),
            None => None,
        },
    };
    let (kind, body) = match &projected {
        Some((kind, body)) => (Some(*kind), body.as_str()),
        None => (None, ""),
    };
    storage
        .put_projection(&dirty.team, id, dirty.generation, kind, body, Utc::now())
        .await
}

/// Projects every dirty document now; how many were refreshed (`hub`: see
/// [`refresh`]).
pub async fn catch_up(
    storage: &dyn Storage,
    hub: Option<&crate::relay::Hub>,
) -> crate::storage::Result<usize> {
    let mut done = 0;
    loop {
        let dirty = storage.dirty_projections(BATCH).await?;
        if dirty.is_empty() {
            return Ok(done);
        }
        let before = done;
        for d in &dirty {
            match refresh(storage, hub, d).await {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::warn!(document = %d.id, error = %e, "a report projection could not be refreshed");
                }
            }
        }
        if done == before {
            // Every one failed: leave them for the next round.
            return Ok(done);
        }
    }
}

/// The projection task of a serving relay: runs until the process ends.
/// `hub`: given when this relay is the store's only writer (see
/// [`refresh`]).
pub fn spawn(
    storage: Arc<dyn Storage>,
    hub: Option<Arc<crate::relay::Hub>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match catch_up(&*storage, hub.as_deref()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(documents = n, "report projections refreshed"),
                Err(e) => tracing::warn!(error = %e, "report projections could not be read"),
            }
            tokio::time::sleep(IDLE).await;
        }
    })
}
