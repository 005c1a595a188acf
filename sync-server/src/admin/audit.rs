//! Audit queries: who enrolled, synced, uploaded, received or read which
//! family, and what was purged or revoked, when (never record content).

use super::{Result, parse_family_id, team_of};
#[cfg(test)]
use crate::storage::{AuditAction, AuditRecord};
use crate::storage::{AuditEntry, DeviceId, Storage, Team};

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
}
