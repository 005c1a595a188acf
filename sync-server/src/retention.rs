//! Retention: closed cases are purged when their team's retention period
//! (days after the closure date) has run out. Run by the relay at start and
//! daily, and by `linkbook-server retention apply` (whose `--today` is the
//! injected clock the tests use).

use automerge::{Automerge, ReadDoc, Value};
use chrono::{Duration, NaiveDate, Utc};

use crate::error::Result;
use crate::storage::Storage;

/// Purges every closed family due on `today`; returns their ids.
pub fn apply(storage: &dyn Storage, today: NaiveDate) -> Result<Vec<String>> {
    let mut purged = Vec::new();
    for (team, days) in storage.retention_policies()? {
        for (id, doc_team) in storage.document_ids()? {
            if doc_team != team {
                continue;
            }
            let Some(closed) = storage
                .load_document(&team, &id)?
                .and_then(|d| closure_date(&d))
            else {
                continue;
            };
            if closed + Duration::days(days) <= today {
                let reason = format!("retention: closed {closed}, team policy {days} days");
                if storage.purge_document(&team, &id, &reason, Utc::now())? {
                    tracing::info!(document = %id, %team, "closed case purged under the retention policy");
                    purged.push(id);
                }
            }
        }
    }
    Ok(purged)
}

/// The closure date of a closed family case file.
fn closure_date(stored: &crate::storage::StoredDocument) -> Option<NaiveDate> {
    let mut doc = match &stored.snapshot {
        // Automerge panics on some malformed bytes (protocol::catch_automerge_panic).
        Some(s) => linkbook_core::protocol::catch_automerge_panic(|| Automerge::load(s))
            .ok()?
            .ok()?,
        None => Automerge::new(),
    };
    for c in &stored.changes {
        linkbook_core::protocol::catch_automerge_panic(|| doc.load_incremental(c))
            .ok()?
            .ok()?;
    }
    let text = |obj: &automerge::ObjId, key: &str| match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => s.as_str().map(str::to_string),
        _ => None,
    };
    if text(&automerge::ROOT, "type")? != "family" || text(&automerge::ROOT, "status")? != "closed"
    {
        return None;
    }
    let (_, closure) = doc.get(automerge::ROOT, "closure").ok()??;
    text(&closure, "date")?.parse().ok()
}
