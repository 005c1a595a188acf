//! The office's administration as a service: every admin rule (who may be
//! enrolled for how long, what may be purged, what subject access returns,
//! what each change audits) lives here once, behind typed functions that
//! take the relay's [`Storage`] and return typed results or an
//! [`AdminError`]. The command line (`cli.rs`) only parses arguments, calls
//! these and prints; the office web console is to call the same functions.
//!
//! Documents are read through `crate::documents::load` (load budget and
//! Automerge panic guard), within [`load_budget`]: a damaged stored
//! document is reported or skipped, never a panic.

pub mod accounts;
pub mod audit;
pub mod devices;
pub mod families;
pub mod retention;
pub mod teams;

#[cfg(test)]
pub(crate) mod test_support;

use linkbook_core::budget::Budget;

use crate::storage::{Storage, Team};

/// Who the audit names for a change an administrator made.
pub const ADMINISTRATOR: &str = "office administrator";

/// What went wrong, by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// There is no such `what` (a device, a family) with this id (in
    /// `team`, when one was known).
    #[error("no {what} {id}{}", team.as_ref().map(|t| format!(" of team {t}")).unwrap_or_default())]
    NotFound {
        what: &'static str,
        id: String,
        team: Option<String>,
    },
    /// An argument is not acceptable: `field` names it (as the argument is
    /// named here: `team`, `expires_hours`, `family_id`, ...), `reason`
    /// says what it must be.
    #[error("{field} {reason}")]
    InvalidInput { field: &'static str, reason: String },
    /// The document id is held by several teams (ids are per team): the
    /// caller must say which team.
    #[error("{id} is held by {} teams ({}): ids are per team, so say which team", teams.len(), teams.join(", "))]
    AmbiguousId { id: String, teams: Vec<String> },
    /// The request is understood but a rule forbids it (the reason says which).
    #[error("{0}")]
    Refused(String),
    /// The relay's storage failed; nothing the caller can fix in its request.
    #[error(transparent)]
    Storage(#[from] crate::Error),
}

impl From<crate::storage::StorageError> for AdminError {
    fn from(e: crate::storage::StorageError) -> Self {
        AdminError::Storage(e.into())
    }
}

pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// The budget admin functions load stored documents within: the relay's
/// default (`doc_cap::load_budget` of the default `--max-document-ops`).
pub fn load_budget() -> Budget {
    crate::doc_cap::load_budget(crate::relay::Limits::default().max_document_ops)
}

/// A family (document) id as devices show it, with or without `automerge:`,
/// in canonical form.
pub fn parse_family_id(id: &str) -> Result<linkbook_core::DocumentId> {
    linkbook_core::DocumentId::parse(id, "family id").map_err(|e| AdminError::InvalidInput {
        field: "family_id",
        reason: e.to_string(),
    })
}

/// A team name, trimmed; empty is refused.
pub fn parse_team(team: &str) -> Result<Team> {
    let team = team.trim();
    if team.is_empty() {
        return Err(AdminError::InvalidInput {
            field: "team",
            reason: "must name a team".into(),
        });
    }
    Ok(Team::from(team))
}

/// The team whose document `id` an admin request means: `team` if given,
/// else the only team holding the id (stored, or if none stores it, purged:
/// so that "purged already" can be said). Documents are namespaced per
/// team, so an id two teams hold needs the team.
pub async fn team_of(
    storage: &dyn Storage,
    id: linkbook_core::DocumentId,
    team: Option<&str>,
) -> Result<Option<Team>> {
    if let Some(team) = team {
        return parse_team(team).map(Some);
    }
    let mut teams = storage.teams_holding(id).await?;
    let mut stored = Vec::new();
    for t in &teams {
        if storage.document_exists(t, id).await? {
            stored.push(t.clone());
        }
    }
    if !stored.is_empty() {
        teams = stored;
    }
    match teams.len() {
        0 | 1 => Ok(teams.pop()),
        _ => Err(AdminError::AmbiguousId {
            id: id.to_string(),
            teams: teams.into_iter().map(Team::into_string).collect(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::test_support::{Relay, family};
    use super::*;

    #[tokio::test]
    async fn an_id_two_teams_hold_needs_the_team() {
        let relay = Relay::new();
        let id = relay.store("north", &family("Ada Lovelace", None));
        relay.store_as("south", id, &family("Grace Hopper", None));
        match team_of(relay.storage(), id, None).await {
            Err(AdminError::AmbiguousId { teams, .. }) => assert_eq!(teams, ["north", "south"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            team_of(relay.storage(), id, Some(" south "))
                .await
                .expect("team")
                .as_deref(),
            Some("south")
        );
        assert!(matches!(
            team_of(relay.storage(), id, Some("  ")).await,
            Err(AdminError::InvalidInput { field: "team", .. })
        ));
    }

    #[tokio::test]
    async fn family_ids_are_parsed_with_or_without_the_prefix() {
        let relay = Relay::new();
        let id = relay.store("north", &family("Ada", None));
        assert_eq!(parse_family_id(&format!("automerge:{id}")).expect("id"), id);
        assert!(matches!(
            parse_family_id("nope"),
            Err(AdminError::InvalidInput {
                field: "family_id",
                ..
            })
        ));
    }
}
