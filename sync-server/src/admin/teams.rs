//! A team's data-protection policy: retention and offline lease.

use chrono::{DateTime, Utc};

use super::{ADMINISTRATOR, AdminError, Result, parse_team};
use crate::storage::{AuditAction, AuditRecord, Storage, Team, TeamPolicy};

/// The longest retention period or lease, in days (100 years).
pub const MAX_DAYS: i64 = 36_500;

/// A change to a team's policy: `None` leaves a limit as it is,
/// `Some(None)` lifts it, `Some(Some(d))` sets it to `d` days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyChange {
    pub retention_days: Option<Option<i64>>,
    pub lease_days: Option<Option<i64>>,
}

impl PolicyChange {
    pub fn is_empty(&self) -> bool {
        self.retention_days.is_none() && self.lease_days.is_none()
    }
}

/// Whether `days` is an acceptable limit (0 to [`MAX_DAYS`]).
pub fn valid_days(days: i64) -> bool {
    (0..=MAX_DAYS).contains(&days)
}

/// A team's policy (no limits for a team the relay does not know), and its
/// name as stored (trimmed).
pub async fn team_policy(storage: &dyn Storage, team: &str) -> Result<(Team, TeamPolicy)> {
    let team = parse_team(team)?;
    let policy = storage.team_policy(&team).await?;
    Ok((team, policy))
}

/// Applies `change` to a team's policy (creating the team if new) and
/// audits it; devices learn it at their next sync. An empty change only
/// reads the policy. Returns the team's name and its policy now.
pub async fn set_team_policy(
    storage: &dyn Storage,
    team: &str,
    change: PolicyChange,
    now: DateTime<Utc>,
) -> Result<(Team, TeamPolicy)> {
    set_team_policy_by(storage, team, change, ADMINISTRATOR, now).await
}

/// [`set_team_policy`], audited as `by`'s (a console account).
pub async fn set_team_policy_by(
    storage: &dyn Storage,
    team: &str,
    change: PolicyChange,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(Team, TeamPolicy)> {
    for (field, days) in [
        ("retention_days", change.retention_days),
        ("lease_days", change.lease_days),
    ] {
        if let Some(Some(d)) = days
            && !valid_days(d)
        {
            return Err(AdminError::InvalidInput {
                field,
                reason: format!("must be 0 to {MAX_DAYS} days, or no limit"),
            });
        }
    }
    let (team, mut policy) = team_policy(storage, team).await?;
    if change.is_empty() {
        return Ok((team, policy));
    }
    if let Some(d) = change.retention_days {
        policy.retention_days = d;
    }
    if let Some(d) = change.lease_days {
        policy.lease_days = d;
    }
    let mut record = AuditRecord::new(AuditAction::PolicyChanged, now).worker(by);
    record.team = Some(team.to_string());
    storage
        .set_team_policy(&team, policy, &[record], now)
        .await?;
    Ok((team, policy))
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::super::test_support::Relay;
    use super::*;

    async fn policy_changes(relay: &Relay) -> usize {
        relay
            .storage()
            .audit_log(None, None, None)
            .await
            .expect("audit")
            .iter()
            .filter(|a| a.action == "policy changed")
            .count()
    }

    #[tokio::test]
    async fn a_policy_is_set_in_part_lifted_and_audited_per_change() {
        let relay = Relay::new();
        let s = relay.storage();
        let (team, p) = team_policy(s, " north ").await.expect("policy");
        assert_eq!((team.as_str(), p), ("north", TeamPolicy::default()));
        let set = async |change| {
            set_team_policy(s, "north", change, Utc::now())
                .await
                .expect("set")
                .1
        };
        let p = set(PolicyChange {
            retention_days: Some(Some(30)),
            lease_days: Some(Some(7)),
        })
        .await;
        assert_eq!((p.retention_days, p.lease_days), (Some(30), Some(7)));
        let p = set(PolicyChange {
            lease_days: Some(None),
            ..PolicyChange::default()
        })
        .await;
        assert_eq!((p.retention_days, p.lease_days), (Some(30), None));
        assert_eq!(policy_changes(&relay).await, 2);
        // Reading changes and audits nothing.
        assert_eq!(set(PolicyChange::default()).await, p);
        assert_eq!(policy_changes(&relay).await, 2);
        assert_eq!(team_policy(s, "north").await.expect("policy").1, p);
    }

    #[tokio::test]
    async fn bad_policies_are_refused_by_field() {
        let relay = Relay::new();
        let s = relay.storage();
        let bad = PolicyChange {
            lease_days: Some(Some(MAX_DAYS + 1)),
            ..PolicyChange::default()
        };
        assert!(matches!(
            set_team_policy(s, "north", bad, Utc::now()).await,
            Err(AdminError::InvalidInput {
                field: "lease_days",
                ..
            })
        ));
        assert!(matches!(
            set_team_policy(s, " ", PolicyChange::default(), Utc::now()).await,
            Err(AdminError::InvalidInput { field: "team", .. })
        ));
        assert_eq!(policy_changes(&relay).await, 0);
    }
}
