//! What changed at the relay since this device's cursor (`GET
//! /v1/changes`), typed by `protocol::dto`.

use super::net::{self, Endpoint};
use crate::error::Result;
use crate::ids::DocumentId;
use crate::protocol::dto;

/// `GET /v1/changes?since=`: the relay's change cursor and the documents
/// changed since ours; `None` where the server has no such endpoint (any
/// automerge-repo server that is not a Linkbook relay): then every document
/// is synced.
pub(super) fn fetch(
    endpoint: &Endpoint,
    ca: Option<&str>,
    token: &str,
    since: i64,
) -> Result<Option<dto::Changes>> {
    let (status, body) = net::get_json(endpoint, ca, &format!("/v1/changes?since={since}"), token)?;
    if status != 200 {
        return Ok(None);
    }
    // Not a Linkbook relay's answer: sync everything, as with no endpoint.
    Ok(serde_json::from_value::<dto::Changes>(body).ok())
}

impl RelayChanges {
    /// The answer as the plan uses it (`now`: the device's clock, for
    /// purges the relay sent no time for).
    pub(super) fn new(changes: dto::Changes, now: chrono::DateTime<chrono::Utc>) -> Self {
        RelayChanges {
            cursor: changes.cursor,
            changed: changes
                .documents
                .iter()
                .filter_map(|s| DocumentId::parse(s, "document id").ok())
                .collect(),
            purged: purged_with_times(&changes.purged, now),
            retention_days: changes.policy.retention_days,
            lease_days: changes.policy.lease_days,
        }
    }
}

/// The relay's purges as the store records them: well-formed ids only, each
/// with the relay's purge time, or `now` (the device's clock) where the
/// relay sent none (a relay older than `purgedAt`).
pub(super) fn purged_with_times(
    purged: &[dto::Purged],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(DocumentId, String)> {
    purged
        .iter()
        .filter_map(|p| {
            let id = DocumentId::parse(&p.id, "document id").ok()?;
            let at = if p.purged_at.is_empty() {
                now.to_rfc3339()
            } else {
                p.purged_at.clone()
            };
            Some((id, at))
        })
        .collect()
}

/// What `GET /v1/changes` told: the team's documents changed since our
/// cursor, and every document of the team the office purged.
pub(super) struct RelayChanges {
    pub(super) cursor: i64,
    pub(super) changed: Vec<DocumentId>,
    pub(super) purged: Vec<(DocumentId, String)>,
    /// The team's policy: closed cases are dropped this many days after
    /// closure; a device unsynced for `lease_days` locks itself.
    pub(super) retention_days: Option<i64>,
    pub(super) lease_days: Option<i64>,
}
