//! Family case files: erasure (only family case files are purged) and
//! subject access (every family case file naming a person, whole, with its
//! audit; the export itself audited).

use chrono::{DateTime, Utc};
use linkbook_core::DocumentId;
use serde::Serialize;

use super::{ADMINISTRATOR, AdminError, Result, parse_family_id, team_of};
use crate::storage::{AuditAction, AuditEntry, AuditRecord, Storage, Team};

/// A family erased from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgedFamily {
    pub id: DocumentId,
    pub team: Team,
}

/// Deletes a family's case file and all its history from the relay; every
/// device deletes it at its next sync, and no device can upload it again.
/// `reason` is kept in the audit. Refused for a document that is not a
/// family case file (or cannot be read), and for one purged already.
pub async fn purge_family(
    storage: &dyn Storage,
    id: &str,
    reason: &str,
    team: Option<&str>,
    now: DateTime<Utc>,
) -> Result<PurgedFamily> {
    purge_family_by(storage, id, reason, team, ADMINISTRATOR, now).await
}

/// [`purge_family`], audited as `by`'s (a console account).
pub async fn purge_family_by(
    storage: &dyn Storage,
    id: &str,
    reason: &str,
    team: Option<&str>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<PurgedFamily> {
    let id = parse_family_id(id)?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AdminError::InvalidInput {
            field: "reason",
            reason: "must say why (it is kept in the audit)".into(),
        });
    }
    let not_found = |team: Option<&str>| AdminError::NotFound {
        what: "family",
        id: id.to_string(),
        team: team.map(str::to_string),
    };
    let team = team_of(storage, id, team)
        .await?
        .ok_or_else(|| not_found(None))?;
    if storage.is_purged(&team, id).await? {
        return Err(AdminError::Refused(format!(
            "{id} of team {team} was purged already"
        )));
    }
    let stored = storage
        .load_document(&team, id)
        .await?
        .ok_or_else(|| not_found(Some(&team)))?;
    let kind = crate::documents::load(&stored, &super::load_budget())
        .ok()
        .and_then(|doc| crate::documents::document_type(&doc));
    if kind.as_deref() != Some("family") {
        return Err(AdminError::Refused(format!(
            "{id} is a {}, not a family: only family case files are purged",
            kind.as_deref().unwrap_or("damaged document")
        )));
    }
    if !storage.purge_document(&team, id, reason, by, now).await? {
        return Err(not_found(Some(&team)));
    }
    Ok(PurgedFamily { id, team })
}

/// Whose records a subject access request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectQuery {
    /// A name (or part of one, at least two letters), matched without
    /// regard to case in any field or note.
    pub name: Option<String>,
    /// Or one family's records, by id.
    pub family: Option<String>,
    /// Only this team's families (needed with `family` when two teams hold
    /// that id: ids are per team).
    pub team: Option<String>,
}

impl SubjectQuery {
    /// The query checked and normalised, as it is answered (callers may
    /// check it before opening the relay's storage).
    pub fn answered(&self) -> Result<AnsweredQuery> {
        let name = self.name.as_deref().map(|n| n.trim().to_lowercase());
        if name.as_deref().is_some_and(|n| n.chars().count() < 2) {
            return Err(AdminError::InvalidInput {
                field: "name",
                reason: "needs at least two letters".into(),
            });
        }
        let family = self.family.as_deref().map(parse_family_id).transpose()?;
        if name.is_none() && family.is_none() {
            return Err(AdminError::InvalidInput {
                field: "name",
                reason: "or a family id is needed".into(),
            });
        }
        Ok(AnsweredQuery { name, family })
    }
}

/// The query as answered (the name trimmed and lower-cased, the id canonical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnsweredQuery {
    pub name: Option<String>,
    pub family: Option<DocumentId>,
}

/// One family case file in an export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilyRecord {
    pub family_id: String,
    pub team: Team,
    /// Paths (`/members/m1/name`) of the strings that matched the name.
    pub matched_at: Vec<String>,
    /// The whole case file, as JSON.
    pub record: serde_json::Value,
    pub audit: Vec<AuditEntry>,
}

/// A stored family-or-not document the export could not read (it is not
/// in `families`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub family_id: String,
    pub team: Team,
    pub reason: String,
}

/// A subject access export. Serialized (`families` etc.) it is the JSON
/// the office hands over; `skipped` is for the administrator only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubjectAccess {
    pub generated_at: String,
    pub query: AnsweredQuery,
    pub families: Vec<FamilyRecord>,
    #[serde(skip)]
    pub skipped: Vec<Skipped>,
}

/// Every family case file matching `query`, whole, with its audit; each
/// one exported is audited (`subject access export`). Documents that
/// cannot be read are skipped and listed in `skipped`.
pub async fn export_person(
    storage: &dyn Storage,
    query: &SubjectQuery,
    now: DateTime<Utc>,
) -> Result<SubjectAccess> {
    export_person_by(storage, query, ADMINISTRATOR, now).await
}

/// [`export_person`], audited as `by`'s (a console account).
pub async fn export_person_by(
    storage: &dyn Storage,
    query: &SubjectQuery,
    by: &str,
    now: DateTime<Utc>,
) -> Result<SubjectAccess> {
    let AnsweredQuery { name, family } = query.answered()?;
    let only_team = match &family {
        Some(id) => team_of(storage, *id, query.team.as_deref()).await?,
        None => query.team.as_deref().map(Team::from),
    };
    let budget = super::load_budget();
    let mut families = Vec::new();
    let mut skipped = Vec::new();
    for (id, team) in storage.document_ids().await? {
        if family.as_ref().is_some_and(|f| *f != id)
            || only_team.as_ref().is_some_and(|t| *t != team)
        {
            continue;
        }
        let Some(stored) = storage.load_document(&team, id).await? else {
            continue;
        };
        let doc = match crate::documents::load(&stored, &budget) {
            Ok(doc) => doc,
            Err(e) => {
                skipped.push(Skipped {
                    family_id: id.to_string(),
                    team,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if crate::documents::document_type(&doc).as_deref() != Some("family") {
            continue;
        }
        let json = linkbook_core::protocol::catch_automerge_panic(|| {
            serde_json::to_value(automerge::AutoSerde::from(&doc))
        });
        let json = match json {
            Ok(Ok(json)) => json,
            Ok(Err(e)) => return Err(AdminError::Refused(format!("{id} could not be read: {e}"))),
            Err(e) => return Err(AdminError::Refused(format!("{id} could not be read: {e}"))),
        };
        let mut matched_at = Vec::new();
        if let Some(name) = &name {
            find_text(&json, name, String::new(), &mut matched_at);
            if matched_at.is_empty() {
                continue;
            }
        }
        let audit = storage
            .audit_log(Some(&id.to_string()), None, Some(&team))
            .await?;
        families.push(FamilyRecord {
            family_id: id.to_string(),
            team,
            matched_at,
            record: json,
            audit,
        });
    }
    if let (Some(id), true) = (&family, families.is_empty()) {
        return Err(AdminError::NotFound {
            what: "family",
            id: id.to_string(),
            team: only_team.map(Team::into_string),
        });
    }
    let generated_at = now.to_rfc3339();
    let records: Vec<AuditRecord> = families
        .iter()
        .map(|f| {
            AuditRecord::new(AuditAction::SubjectAccessExport, now)
                .worker(by)
                .document(&f.team, &f.family_id)
        })
        .collect();
    storage.append_audit(&records).await?;
    Ok(SubjectAccess {
        generated_at,
        query: AnsweredQuery { name, family },
        families,
        skipped,
    })
}

/// Paths (`/members/0/name`) of every string in `value` that contains `needle`.
fn find_text(value: &serde_json::Value, needle: &str, path: String, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if s.to_lowercase().contains(needle) => out.push(path),
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_text(v, needle, format!("{path}/{i}"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                find_text(v, needle, format!("{path}/{k}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::super::test_support::{Relay, directory, family};
    use super::*;

    async fn exports(relay: &Relay, id: &str) -> usize {
        relay
            .storage()
            .audit_log(Some(id), None, None)
            .await
            .expect("audit")
            .iter()
            .filter(|a| a.action == "subject access export")
            .count()
    }

    #[tokio::test]
    async fn only_family_case_files_are_purged_once() {
        let relay = Relay::new();
        let s = relay.storage();
        let fam = relay.store("north", &family("Ada", None));
        let dir = relay.store("north", &directory());
        let damaged = relay.store("north", b"\x85\x6f\x4a\x83 garbage");
        let now = Utc::now();
        assert!(matches!(
            purge_family(s, &fam.to_string(), "  ", None, now).await,
            Err(AdminError::InvalidInput {
                field: "reason",
                ..
            })
        ));
        match purge_family(s, &dir.to_string(), "asked", None, now).await {
            Err(AdminError::Refused(r)) => {
                assert!(r.contains("is a directory, not a family"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        match purge_family(s, &damaged.to_string(), "asked", None, now).await {
            Err(AdminError::Refused(r)) => assert!(r.contains("damaged document"), "{r}"),
            other => panic!("{other:?}"),
        }
        let purged = purge_family(s, &format!("automerge:{fam}"), "asked", None, now)
            .await
            .expect("purge");
        assert_eq!(
            purged,
            PurgedFamily {
                id: fam,
                team: "north".into()
            }
        );
        assert!(
            !s.document_exists(&Team::from("north"), fam)
                .await
                .expect("exists")
        );
        match purge_family(s, &fam.to_string(), "asked", None, now).await {
            Err(AdminError::Refused(r)) => assert!(r.contains("purged already"), "{r}"),
            other => panic!("{other:?}"),
        }
        let unknown = linkbook_core::DocumentId::from_bytes([7; 16]).to_string();
        assert!(matches!(
            purge_family(s, &unknown, "asked", None, now).await,
            Err(AdminError::NotFound {
                what: "family",
                team: None,
                ..
            })
        ));
        assert!(matches!(
            purge_family(s, &unknown, "asked", Some("north"), now).await,
            Err(AdminError::NotFound { team: Some(_), .. })
        ));
    }

    #[tokio::test]
    async fn subject_access_finds_a_name_anywhere_and_audits_the_export() {
        let relay = Relay::new();
        let s = relay.storage();
        let ada = relay.store("north", &family("Ada Lovelace", None));
        let grace = relay.store("south", &family("Grace Hopper", None));
        relay.store("north", &directory());
        let query = SubjectQuery {
            name: Some("  LOVELACE ".into()),
            ..SubjectQuery::default()
        };
        let export = export_person(s, &query, Utc::now()).await.expect("export");
        assert_eq!(export.query.name.as_deref(), Some("lovelace"));
        assert_eq!(export.families.len(), 1);
        let f = &export.families[0];
        assert_eq!(
            (f.family_id.as_str(), f.team.as_str()),
            (ada.to_string().as_str(), "north")
        );
        assert_eq!(f.matched_at, ["/members/m1/name"]);
        assert_eq!(f.record["members"]["m1"]["name"], "Ada Lovelace");
        assert_eq!(
            (
                exports(&relay, &ada.to_string()).await,
                exports(&relay, &grace.to_string()).await
            ),
            (1, 0)
        );
        // The serialized export is what the office hands over.
        let json = serde_json::to_value(&export).expect("json");
        assert_eq!(json["families"][0]["family_id"], ada.to_string());
        assert!(json.get("skipped").is_none());

        let by_id = SubjectQuery {
            family: Some(grace.to_string()),
            ..SubjectQuery::default()
        };
        let export = export_person(s, &by_id, Utc::now()).await.expect("export");
        assert_eq!(export.families.len(), 1);
        assert!(export.families[0].matched_at.is_empty());
        let short = SubjectQuery {
            name: Some(" a ".into()),
            ..SubjectQuery::default()
        };
        assert!(matches!(
            export_person(s, &short, Utc::now()).await,
            Err(AdminError::InvalidInput { field: "name", .. })
        ));
        let unknown = SubjectQuery {
            family: Some(linkbook_core::DocumentId::from_bytes([7; 16]).to_string()),
            ..SubjectQuery::default()
        };
        assert!(matches!(
            export_person(s, &unknown, Utc::now()).await,
            Err(AdminError::NotFound { what: "family", .. })
        ));
    }

    /// A stored document of garbage bytes (one Automerge panics on among
    /// them) is skipped and reported, never a panic.
    #[tokio::test]
    async fn subject_access_skips_a_damaged_stored_document() {
        let relay = Relay::new();
        let s = relay.storage();
        let ada = relay.store("north", &family("Ada Lovelace", None));
        let garbage = relay.store("north", b"\x85\x6f\x4a\x83\x00\x01garbage bytes");
        let crasher_dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fuzz-crashers/automerge-load"
        );
        let mut crashers = Vec::new();
        for entry in std::fs::read_dir(crasher_dir).expect("crashers").flatten() {
            let bytes = std::fs::read(entry.path()).expect("crasher");
            crashers.push(relay.store("north", &bytes));
        }
        assert!(!crashers.is_empty());
        let query = SubjectQuery {
            name: Some("ada".into()),
            ..SubjectQuery::default()
        };
        let export = export_person(s, &query, Utc::now()).await.expect("export");
        assert_eq!(export.families.len(), 1);
        assert_eq!(export.families[0].family_id, ada.to_string());
        let mut skipped: Vec<&str> = export
            .skipped
            .iter()
            .map(|k| k.family_id.as_str())
            .collect();
        skipped.sort_unstable();
        let expected: Vec<String> = crashers
            .iter()
            .chain([&garbage])
            .map(DocumentId::to_string)
            .collect();
        let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(skipped, expected);
        // Asked for by id, the damaged one is not found (it is no readable family).
        let by_id = SubjectQuery {
            family: Some(garbage.to_string()),
            ..SubjectQuery::default()
        };
        assert!(matches!(
            export_person(s, &by_id, Utc::now()).await,
            Err(AdminError::NotFound { .. })
        ));
    }
}
