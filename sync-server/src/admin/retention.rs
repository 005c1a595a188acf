//! Retention: closed cases are purged when their team's retention period
//! (days after the closure date) has run out. Run by the relay at start and
//! daily, and by `linkbook-server retention apply` (whose `--today` is the
//! injected clock the tests use).

use automerge::{Automerge, ReadDoc, Value};
use chrono::{Duration, NaiveDate, Utc};
use linkbook_core::DocumentId;
use linkbook_core::budget::Budget;

use super::Result;
use crate::storage::Storage;

/// Purges every closed family due on `today`; returns their ids. Documents
/// are loaded within the admin [`super::load_budget`].
pub async fn sweep(storage: &dyn Storage, today: NaiveDate) -> Result<Vec<DocumentId>> {
    sweep_within(storage, today, &super::load_budget()).await
}

/// [`sweep`] run by hand by `by` (a console account), whom each purge's
/// audit names.
pub async fn sweep_by(
    storage: &dyn Storage,
    today: NaiveDate,
    by: &str,
) -> Result<Vec<DocumentId>> {
    sweep_as(storage, today, &super::load_budget(), by).await
}

/// [`sweep`], loading documents within `budget` (the relay passes its own,
/// from `--max-document-ops`). A document that cannot be loaded is logged
/// and left alone.
pub async fn sweep_within(
    storage: &dyn Storage,
    today: NaiveDate,
    budget: &Budget,
) -> Result<Vec<DocumentId>> {
    sweep_as(storage, today, budget, super::ADMINISTRATOR).await
}

async fn sweep_as(
    storage: &dyn Storage,
    today: NaiveDate,
    budget: &Budget,
    by: &str,
) -> Result<Vec<DocumentId>> {
    let mut purged = Vec::new();
    for (team, days) in storage.retention_policies().await? {
        for (id, doc_team) in storage.document_ids().await? {
            if doc_team != team {
                continue;
            }
            let Some(stored) = storage.load_document(&team, id).await? else {
                continue;
            };
            // A load is CPU work: let the relay's other tasks in between.
            tokio::task::yield_now().await;
            let doc = match crate::documents::load(&stored, budget) {
                Ok(doc) => doc,
                Err(e) => {
                    tracing::warn!(document = %id, %team, reason = %e, "retention skipped a damaged stored document");
                    continue;
                }
            };
            let Some(closed) = closure_date(&doc) else {
                continue;
            };
            if closed + Duration::days(days) <= today {
                let reason = format!("retention: closed {closed}, team policy {days} days");
                if storage
                    .purge_document(&team, id, &reason, by, Utc::now())
                    .await?
                {
                    tracing::info!(document = %id, %team, "closed case purged under the retention policy");
                    purged.push(id);
                }
            }
        }
    }
    Ok(purged)
}

/// The closure date of a closed family case file.
fn closure_date(doc: &Automerge) -> Option<NaiveDate> {
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

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::super::teams::{PolicyChange, set_team_policy};
    use super::super::test_support::{Relay, family};
    use super::*;
    use crate::storage::Team;

    fn date(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    #[tokio::test]
    async fn only_closed_cases_past_their_teams_period_are_purged() {
        let relay = Relay::new();
        let s = relay.storage();
        let due = relay.store("north", &family("Ada", Some("2026-01-01")));
        let recent = relay.store("north", &family("Bea", Some("2026-03-01")));
        let open = relay.store("north", &family("Cy", None));
        let no_policy = relay.store("south", &family("Di", Some("2020-01-01")));
        let damaged = relay.store("north", b"garbage, not automerge");
        set_team_policy(
            s,
            "north",
            PolicyChange {
                retention_days: Some(Some(30)),
                ..PolicyChange::default()
            },
            Utc::now(),
        )
        .await
        .expect("policy");
        assert_eq!(
            sweep(s, date("2026-02-15")).await.expect("sweep"),
            std::slice::from_ref(&due)
        );
        assert!(
            s.is_purged(&Team::from("north"), due)
                .await
                .expect("purged")
        );
        for (team, id) in [
            ("north", &recent),
            ("north", &open),
            ("south", &no_policy),
            ("north", &damaged),
        ] {
            assert!(
                s.document_exists(&Team::from(team), *id)
                    .await
                    .expect("exists"),
                "{id}"
            );
        }
        assert!(
            sweep(s, date("2026-02-15"))
                .await
                .expect("again")
                .is_empty()
        );
        assert_eq!(sweep(s, date("2026-03-31")).await.expect("later"), [recent]);
    }
}
