//! Audit queries: who enrolled, synced, uploaded, received or read which
//! family, and what was purged or revoked, when (never record content).

use super::{Result, parse_family_id, team_of};
#[cfg(test)]
use crate::storage::{AuditAction, AuditRecord};
use chrono::NaiveDate;

use crate::storage::{AuditEntry, AuditSearch, DeviceId, Storage, Team};

/// Which records: each given filter narrows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// About this family (document id, with or without `automerge:`).
    pub family: Option<String>,
    /// Of this device.
    pub device: Option<String>,
    /// About this team's documents (needed with `family` when two teams
    /// hold that id: ids are per team).
    pub team: Option<String>,
}

/// The audit records matching `query`, oldest first.
pub async fn audit_log(storage: &dyn Storage, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let family = query.family.as_deref().map(parse_family_id).transpose()?;
    let team = match &family {
        Some(id) => team_of(storage, *id, query.team.as_deref()).await?,
        None => query.team.as_deref().map(Team::from),
    };
    let device = query.device.as_deref().map(DeviceId::from);
    let family = family.map(|id| id.to_string());
    Ok(storage
        .audit_log(family.as_deref(), device.as_ref(), team.as_ref())
        .await?)
}

/// Which records [`search_audit`] finds: [`AuditQuery`]'s filters and
/// more, each given one narrowing them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSearchQuery {
    /// Family, device and team, as for [`audit_log`].
    pub of: AuditQuery,
    /// The worker or staff member named contains this (ASCII case
    /// ignored; `%` and `_` are plain characters).
    pub worker: Option<String>,
    /// The action is exactly this (`AuditAction::as_str`).
    pub action: Option<String>,
    /// On or after this day (UTC).
    pub from: Option<NaiveDate>,
    /// On or before this day (UTC).
    pub to: Option<NaiveDate>,
}

/// The records matching `query`, newest first, at most `limit`; and how
/// many match in all. The family id and its team are resolved as for
/// [`audit_log`]; the days are whole UTC days, both inclusive.
pub async fn search_audit(
    storage: &dyn Storage,
    query: &AuditSearchQuery,
    limit: usize,
) -> Result<(Vec<AuditEntry>, u64)> {
    let of = &query.of;
    let family = of.family.as_deref().map(parse_family_id).transpose()?;
    let team = match &family {
        Some(id) => team_of(storage, *id, of.team.as_deref()).await?,
        None => of.team.as_deref().map(Team::from),
    };
    let search = AuditSearch {
        family: family.map(|id| id.to_string()),
        device: of.device.as_deref().map(DeviceId::from),
        team,
        worker: query.worker.clone(),
        action: query.action.clone(),
        from: query
            .from
            .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc()),
        // The day after `to` (none after the last day: no bound).
        to_before: query
            .to
            .and_then(|d| d.succ_opt())
            .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc()),
    };
    Ok(storage.audit_search(&search, limit).await?)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::super::AdminError;
    use super::super::test_support::{Relay, family};
    use super::*;

    #[tokio::test]
    async fn a_familys_records_are_found_by_id_and_team() {
        let relay = Relay::new();
        let s = relay.storage();
        let id = relay.store("north", &family("Ada", None));
        let other = relay.store("north", &family("Grace", None));
        let at = chrono::Utc::now();
        let read = |doc: &str| {
            AuditRecord::new(AuditAction::Read, at)
                .worker("Asha")
                .document("north", doc)
        };
        s.append_audit(&[read(&id.to_string()), read(&other.to_string())])
            .await
            .expect("audit");
        let query = AuditQuery {
            family: Some(format!("automerge:{id}")),
            ..AuditQuery::default()
        };
        let entries = audit_log(s, &query).await.expect("audit");
        assert!(!entries.is_empty());
        assert!(
            entries
                .iter()
                .all(|e| e.document_id.as_deref() == Some(id.to_string().as_str()))
        );
        assert!(matches!(
            audit_log(
                s,
                &AuditQuery {
                    family: Some("not an id".into()),
                    ..AuditQuery::default()
                }
            )
            .await,
            Err(AdminError::InvalidInput {
                field: "family_id",
                ..
            })
        ));
        // The same id in a second team: the team must be said.
        relay.store_as("south", id, &family("Ada", None));
        assert!(matches!(
            audit_log(s, &query).await,
            Err(AdminError::AmbiguousId { .. })
        ));
        let south = AuditQuery {
            team: Some("south".into()),
            ..query
        };
        assert!(
            audit_log(s, &south)
                .await
                .expect("audit")
                .iter()
                .all(|e| e.team.as_deref() != Some("north"))
        );
    }

    #[tokio::test]
    async fn a_search_takes_whole_utc_days_and_resolves_the_family() {
        use chrono::TimeZone;
        let relay = Relay::new();
        let s = relay.storage();
        let id = relay.store("north", &family("Ada", None));
        let at = |d, h, m, sec| {
            chrono::Utc
                .with_ymd_and_hms(2001, 5, d, h, m, sec)
                .single()
                .expect("time")
        };
        let read = |t| {
            AuditRecord::new(AuditAction::Read, t)
                .worker("Asha")
                .document("north", &id.to_string())
        };
        s.append_audit(&[
            read(at(1, 23, 59, 59)),
            read(at(2, 0, 0, 0)),
            read(at(2, 23, 59, 59)),
            read(at(3, 0, 0, 0)),
        ])
        .await
        .expect("audit");
        let query = AuditSearchQuery {
            of: AuditQuery {
                family: Some(format!("automerge:{id}")),
                ..AuditQuery::default()
            },
            worker: Some("ash".into()),
            from: NaiveDate::from_ymd_opt(2001, 5, 2),
            to: NaiveDate::from_ymd_opt(2001, 5, 2),
            ..AuditSearchQuery::default()
        };
        let (found, total) = search_audit(s, &query, 10).await.expect("search");
        let times: Vec<_> = found.iter().map(|e| e.at.as_str()).collect();
        assert_eq!(
            (times, total),
            (
                vec!["2001-05-02T23:59:59+00:00", "2001-05-02T00:00:00+00:00"],
                2
            )
        );
        assert!(matches!(
            search_audit(
                s,
                &AuditSearchQuery {
                    of: AuditQuery {
                        family: Some("not an id".into()),
                        ..AuditQuery::default()
                    },
                    ..AuditSearchQuery::default()
                },
                10
            )
            .await,
            Err(AdminError::InvalidInput {
                field: "family_id",
                ..
            })
        ));
        // The same id in a second team: the team must be said.
        relay.store_as("south", id, &family("Ada", None));
        assert!(matches!(
            search_audit(s, &query, 10).await,
            Err(AdminError::AmbiguousId { .. })
        ));
    }
}
