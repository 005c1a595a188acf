//! The family case file: household, members, linked prisoners, consent,
//! safeguarding flags, case notes, referrals and closure.
//!
//! Layout (every collection is a map keyed by a random id, created with the
//! document, so two workers adding entries offline never conflict):
//! ```text
//! { type: "family", schema_version, team, created_at, created_by,
//!   household: { name, address }, key_worker, status,
//!   members:  { <id>: { name, role, relationship, date_of_birth, school, looked_after, social_worker,
//!                       removed_at, removed_by } },
//!   prisoners: { <id>: { name, establishment, prison_number, custody, category, expected_release } },
//!   consent: { given_by, date, scope },
//!   safeguarding: { <id>: { text, raised_by, raised_at, cleared_at } },
//!   notes: { <id>: { author, device, created_at, category, text, edited_at,
//!                    history: [ { text, replaced_at, replaced_by } ] } },
//!   referrals: { <id>: { agency, reason, date, outcome } },
//!   closure: { date, reason } }
//! ```

use automerge::{AutoCommit, ObjType, ROOT, ReadDoc, transaction::Transactable};
use chrono::{DateTime, NaiveDate, Utc};

use super::am::{Fields, ensure_map, get_list, get_map, get_str, put_opt_str, write_header};
use super::validate::{MAX_NAME, MAX_NOTE, date_not_future, optional_text, required_text};
use super::*;
use crate::error::{Error, Result};
use crate::ids::{DocumentId, new_entry_id, parse_uuid};

const COLLECTIONS: [&str; 5] = ["members", "prisoners", "safeguarding", "notes", "referrals"];

/// A new case file document.
pub(crate) fn create(doc: &mut AutoCommit, new: &NewFamily, by: &Author) -> Result<()> {
    let name = required_text("family name", &new.name, MAX_NAME)?;
    let address = optional_text("address", new.address.as_deref(), MAX_NAME)?;
    let key_worker = optional_text("key worker", new.key_worker.as_deref(), MAX_NAME)?;
    write_header(doc, DocumentType::Family)?;
    doc.put(ROOT, "team", by.team.as_str())?;
    doc.put(ROOT, "created_at", by.now.to_rfc3339())?;
    doc.put(ROOT, "created_by", by.worker.as_str())?;
    let household = doc.put_object(ROOT, "household", ObjType::Map)?;
    doc.put(&household, "name", name)?;
    put_opt_str(doc, &household, "address", address.as_deref())?;
    put_opt_str(doc, &ROOT, "key_worker", key_worker.as_deref())?;
    doc.put(ROOT, "status", FamilyStatus::Open.as_str())?;
    for collection in COLLECTIONS {
        doc.put_object(ROOT, collection, ObjType::Map)?;
    }
    doc.put_object(ROOT, "consent", ObjType::Map)?;
    doc.put_object(ROOT, "closure", ObjType::Map)?;
    Ok(())
}

pub(crate) fn update(doc: &mut AutoCommit, update: &FamilyUpdate) -> Result<()> {
    let name = match &update.name {
        Some(n) => Some(required_text("family name", n, MAX_NAME)?),
        None => None,
    };
    let address = optional_text("address", update.address.as_deref(), MAX_NAME)?;
    let key_worker = optional_text("key worker", update.key_worker.as_deref(), MAX_NAME)?;
    if name.is_none() && address.is_none() && key_worker.is_none() {
        return Err(Error::invalid("family update", "nothing to change"));
    }
    let household = ensure_map(doc, &ROOT, "household")?;
    if let Some(name) = name {
        doc.put(&household, "name", name)?;
    }
    if let Some(address) = address {
        doc.put(&household, "address", address)?;
    }
    if let Some(key_worker) = key_worker {
        doc.put(ROOT, "key_worker", key_worker)?;
    }
    Ok(())
}

pub(crate) fn add_member(doc: &mut AutoCommit, new: &NewMember, by: &Author) -> Result<String> {
    let name = required_text("member name", &new.name, MAX_NAME)?;
    let relationship = optional_text("relationship", new.relationship.as_deref(), MAX_NAME)?;
    let school = optional_text("school", new.school.as_deref(), MAX_NAME)?;
    let social_worker = optional_text("social worker", new.social_worker.as_deref(), MAX_NAME)?;
    if let Some(dob) = new.date_of_birth {
        date_not_future("date of birth", dob, by.now)?;
    }
    let members = ensure_map(doc, &ROOT, "members")?;
    let id = new_entry_id();
    let m = doc.put_object(&members, id.as_str(), ObjType::Map)?;
    doc.put(&m, "name", name)?;
    doc.put(&m, "role", new.role.as_str())?;
    put_opt_str(doc, &m, "relationship", relationship.as_deref())?;
    put_opt_str(
        doc,
        &m,
        "date_of_birth",
        new.date_of_birth.map(|d| d.to_string()).as_deref(),
    )?;
    put_opt_str(doc, &m, "school", school.as_deref())?;
    doc.put(&m, "looked_after", new.looked_after)?;
    put_opt_str(doc, &m, "social_worker", social_worker.as_deref())?;
    Ok(id)
}

pub(crate) fn update_member(
    doc: &mut AutoCommit,
    member_id: &str,
    update: &MemberUpdate,
    by: &Author,
) -> Result<()> {
    let member_id = parse_uuid(member_id, "member id")?;
    let m = live_member(doc, &member_id)?;
    if let Some(dob) = update.date_of_birth {
        date_not_future("date of birth", dob, by.now)?;
    }
    let name = match &update.name {
        Some(n) => Some(required_text("member name", n, MAX_NAME)?),
        None => None,
    };
    let relationship = optional_text("relationship", update.relationship.as_deref(), MAX_NAME)?;
    let school = optional_text("school", update.school.as_deref(), MAX_NAME)?;
    let social_worker = optional_text("social worker", update.social_worker.as_deref(), MAX_NAME)?;
    let mut changed = false;
    for (key, value) in [
        ("name", name),
        ("relationship", relationship),
        ("date_of_birth", update.date_of_birth.map(|d| d.to_string())),
        ("school", school),
        ("social_worker", social_worker),
    ] {
        if let Some(value) = value {
            doc.put(&m, key, value)?;
            changed = true;
        }
    }
    if let Some(looked_after) = update.looked_after {
        doc.put(&m, "looked_after", looked_after)?;
        changed = true;
    }
    if !changed {
        return Err(Error::invalid("member update", "nothing to change"));
    }
    Ok(())
}

/// Removes a member softly: `removed_at`/`removed_by` are written and readers
/// skip the member. Deleting the entry would erase it on every device, which
/// the change rules refuse (`rules.rs`); a member removed on one device and
/// edited on another stays removed.
pub(crate) fn remove_member(doc: &mut AutoCommit, member_id: &str, by: &Author) -> Result<()> {
    let member_id = parse_uuid(member_id, "member id")?;
    let m = live_member(doc, &member_id)?;
    doc.put(&m, "removed_at", by.now.to_rfc3339())?;
    doc.put(&m, "removed_by", by.worker.as_str())?;
    Ok(())
}

/// A member that was not removed.
fn live_member(doc: &mut AutoCommit, member_id: &str) -> Result<automerge::ObjId> {
    let members = ensure_map(doc, &ROOT, "members")?;
    get_map(doc, &members, member_id)
        .filter(|m| doc.get(m, "removed_at").ok().flatten().is_none())
        .ok_or_else(|| Error::not_found("member", member_id))
}

/// Pushes `old` onto a note's history, as an edit does.
pub(crate) fn push_history(
    doc: &mut AutoCommit,
    note: &automerge::ObjId,
    old: &str,
    by: &Author,
) -> Result<()> {
    let history = match get_list(doc, note, "history") {
        Some(h) => h,
        None => doc.put_object(note, "history", ObjType::List)?,
    };
    let len = doc.length(&history);
    let rev = doc.insert_object(&history, len, ObjType::Map)?;
    doc.put(&rev, "text", old)?;
    doc.put(&rev, "replaced_at", by.now.to_rfc3339())?;
    doc.put(&rev, "replaced_by", by.worker.as_str())?;
    Ok(())
}

pub(crate) fn link_prisoner(doc: &mut AutoCommit, new: &NewPrisoner) -> Result<String> {
    let name = required_text("prisoner name", &new.name, MAX_NAME)?;
    let establishment = required_text("establishment", &new.establishment, MAX_NAME)?;
    let number = optional_text("prison number", new.prison_number.as_deref(), MAX_NAME)?;
    let category = optional_text("category", new.category.as_deref(), MAX_NAME)?;
    let prisoners = ensure_map(doc, &ROOT, "prisoners")?;
    let id = new_entry_id();
    let p = doc.put_object(&prisoners, id.as_str(), ObjType::Map)?;
    doc.put(&p, "name", name)?;
    doc.put(&p, "establishment", establishment)?;
    put_opt_str(doc, &p, "prison_number", number.as_deref())?;
    doc.put(&p, "custody", new.custody.as_str())?;
    put_opt_str(doc, &p, "category", category.as_deref())?;
    put_opt_str(
        doc,
        &p,
        "expected_release",
        new.expected_release.map(|d| d.to_string()).as_deref(),
    )?;
    Ok(id)
}

pub(crate) fn record_consent(doc: &mut AutoCommit, consent: &Consent, by: &Author) -> Result<()> {
    let given_by = required_text("consent given by", &consent.given_by, MAX_NAME)?;
    let scope = required_text("consent scope", &consent.scope, MAX_NOTE)?;
    date_not_future("consent date", consent.date, by.now)?;
    let c = ensure_map(doc, &ROOT, "consent")?;
    doc.put(&c, "given_by", given_by)?;
    doc.put(&c, "date", consent.date.to_string())?;
    doc.put(&c, "scope", scope)?;
    Ok(())
}

pub(crate) fn raise_flag(doc: &mut AutoCommit, text: &str, by: &Author) -> Result<String> {
    let text = required_text("safeguarding flag", text, MAX_NOTE)?;
    let flags = ensure_map(doc, &ROOT, "safeguarding")?;
    let id = new_entry_id();
    let f = doc.put_object(&flags, id.as_str(), ObjType::Map)?;
    doc.put(&f, "text", text)?;
    doc.put(&f, "raised_by", by.worker.as_str())?;
    doc.put(&f, "raised_at", by.now.to_rfc3339())?;
    Ok(id)
}

pub(crate) fn clear_flag(doc: &mut AutoCommit, flag_id: &str, by: &Author) -> Result<()> {
    let flag_id = parse_uuid(flag_id, "safeguarding flag id")?;
    let flags = ensure_map(doc, &ROOT, "safeguarding")?;
    let f = get_map(doc, &flags, &flag_id)
        .ok_or_else(|| Error::not_found("safeguarding flag", &flag_id))?;
    doc.put(&f, "cleared_at", by.now.to_rfc3339())?;
    Ok(())
}

pub(crate) fn add_note(
    doc: &mut AutoCommit,
    text: &str,
    category: NoteCategory,
    by: &Author,
) -> Result<String> {
    let text = required_text("note text", text, MAX_NOTE)?;
    let notes = ensure_map(doc, &ROOT, "notes")?;
    let id = new_entry_id();
    let n = doc.put_object(&notes, id.as_str(), ObjType::Map)?;
    doc.put(&n, "author", by.worker.as_str())?;
    doc.put(&n, "device", by.device_id.as_str())?;
    doc.put(&n, "created_at", by.now.to_rfc3339())?;
    doc.put(&n, "category", category.as_str())?;
    doc.put(&n, "text", text)?;
    doc.put_object(&n, "history", ObjType::List)?;
    Ok(id)
}

/// Replaces a note's text, keeping the old text in its history.
pub(crate) fn edit_note(
    doc: &mut AutoCommit,
    note_id: &str,
    text: &str,
    by: &Author,
) -> Result<()> {
    let note_id = parse_uuid(note_id, "note id")?;
    let text = required_text("note text", text, MAX_NOTE)?;
    let notes = ensure_map(doc, &ROOT, "notes")?;
    let n = get_map(doc, &notes, &note_id).ok_or_else(|| Error::not_found("note", &note_id))?;
    let old = get_str(doc, &n, "text").unwrap_or_default();
    if old == text {
        return Err(Error::invalid(
            "note text",
            "the new text is the same as the current text",
        ));
    }
    push_history(doc, &n, &old, by)?;
    doc.put(&n, "text", text)?;
    doc.put(&n, "edited_at", by.now.to_rfc3339())?;
    Ok(())
}

pub(crate) fn add_referral(doc: &mut AutoCommit, new: &NewReferral) -> Result<String> {
    let agency = required_text("agency", &new.agency, MAX_NAME)?;
    let reason = required_text("referral reason", &new.reason, MAX_NOTE)?;
    let referrals = ensure_map(doc, &ROOT, "referrals")?;
    let id = new_entry_id();
    let r = doc.put_object(&referrals, id.as_str(), ObjType::Map)?;
    doc.put(&r, "agency", agency)?;
    doc.put(&r, "reason", reason)?;
    doc.put(&r, "date", new.date.to_string())?;
    Ok(id)
}

pub(crate) fn set_referral_outcome(
    doc: &mut AutoCommit,
    referral_id: &str,
    outcome: &str,
) -> Result<()> {
    let referral_id = parse_uuid(referral_id, "referral id")?;
    let outcome = required_text("referral outcome", outcome, MAX_NOTE)?;
    let referrals = ensure_map(doc, &ROOT, "referrals")?;
    let r = get_map(doc, &referrals, &referral_id)
        .ok_or_else(|| Error::not_found("referral", &referral_id))?;
    doc.put(&r, "outcome", outcome)?;
    Ok(())
}

pub(crate) fn close(
    doc: &mut AutoCommit,
    date: NaiveDate,
    reason: &str,
    by: &Author,
) -> Result<()> {
    let reason = required_text("closure reason", reason, MAX_NOTE)?;
    date_not_future("closure date", date, by.now)?;
    let c = ensure_map(doc, &ROOT, "closure")?;
    doc.put(&c, "date", date.to_string())?;
    doc.put(&c, "reason", reason)?;
    doc.put(ROOT, "status", FamilyStatus::Closed.as_str())?;
    Ok(())
}

pub(crate) fn reopen(doc: &mut AutoCommit) -> Result<()> {
    if get_str(doc, &ROOT, "status").as_deref() != Some("closed") {
        return Err(Error::invalid("family status", "the case is not closed"));
    }
    let c = ensure_map(doc, &ROOT, "closure")?;
    for key in ["date", "reason"] {
        if doc.get(&c, key)?.is_some() {
            doc.delete(&c, key)?;
        }
    }
    doc.put(ROOT, "status", FamilyStatus::Open.as_str())?;
    Ok(())
}

fn parse_time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn parse_date(s: Option<String>) -> Option<NaiveDate> {
    s.and_then(|s| s.parse().ok())
}

/// Entries of a collection map, as (id, fields).
fn entries(doc: &impl ReadDoc, root: &Fields, key: &str) -> Vec<(String, Fields)> {
    let Some(map) = root.map(key) else {
        return Vec::new();
    };
    Fields::of(doc, &map)
        .maps()
        .into_iter()
        .map(|(k, o)| (k, Fields::of(doc, &o)))
        .collect()
}

/// What the team directory shows of a family: its status (no names).
/// Reads one field, not the case file.
pub(crate) fn summary(doc: &impl ReadDoc, id: DocumentId) -> directory::Entry {
    let root = Fields::of(doc, &ROOT);
    directory::Entry {
        id,
        status: root
            .str(doc, "status")
            .and_then(|s| FamilyStatus::parse(&s).ok())
            .unwrap_or(FamilyStatus::Open),
    }
}

/// Reads the whole case file. Fields missing from a document written by
/// another client read as empty rather than failing the read.
pub(crate) fn read(doc: &impl ReadDoc, id: DocumentId) -> Family {
    let root = Fields::of(doc, &ROOT);
    let household = root.map("household").map(|h| Fields::of(doc, &h));
    let hh = |key| household.as_ref().and_then(|h| h.str(doc, key));
    let members = entries(doc, &root, "members")
        .into_iter()
        .filter(|(_, m)| m.str(doc, "removed_at").is_none())
        .map(|(id, m)| Member {
            id,
            name: m.str(doc, "name").unwrap_or_default(),
            role: m
                .str(doc, "role")
                .and_then(|r| MemberRole::parse(&r).ok())
                .unwrap_or(MemberRole::Adult),
            relationship: m.str(doc, "relationship"),
            date_of_birth: parse_date(m.str(doc, "date_of_birth")),
            school: m.str(doc, "school"),
            looked_after: m.bool("looked_after").unwrap_or(false),
            social_worker: m.str(doc, "social_worker"),
        })
        .collect();
    let prisoners = entries(doc, &root, "prisoners")
        .into_iter()
        .map(|(id, p)| Prisoner {
            id,
            name: p.str(doc, "name").unwrap_or_default(),
            establishment: p.str(doc, "establishment").unwrap_or_default(),
            prison_number: p.str(doc, "prison_number"),
            custody: p
                .str(doc, "custody")
                .and_then(|c| Custody::parse(&c).ok())
                .unwrap_or(Custody::Remand),
            category: p.str(doc, "category"),
            expected_release: parse_date(p.str(doc, "expected_release")),
        })
        .collect();
    let consent = root.map("consent").and_then(|c| {
        let c = Fields::of(doc, &c);
        Some(Consent {
            given_by: c.str(doc, "given_by")?,
            date: parse_date(c.str(doc, "date"))?,
            scope: c.str(doc, "scope").unwrap_or_default(),
        })
    });
    let safeguarding = entries(doc, &root, "safeguarding")
        .into_iter()
        .map(|(id, f)| SafeguardingFlag {
            id,
            text: f.str(doc, "text").unwrap_or_default(),
            raised_by: f.str(doc, "raised_by").unwrap_or_default(),
            raised_at: parse_time(f.str(doc, "raised_at")).unwrap_or_default(),
            cleared_at: parse_time(f.str(doc, "cleared_at")),
        })
        .collect();
    let mut notes: Vec<CaseNote> = entries(doc, &root, "notes")
        .into_iter()
        .map(|(note_id, n)| read_note(doc, id, note_id, &n))
        .collect();
    notes.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let referrals = entries(doc, &root, "referrals")
        .into_iter()
        .map(|(id, r)| Referral {
            id,
            agency: r.str(doc, "agency").unwrap_or_default(),
            reason: r.str(doc, "reason").unwrap_or_default(),
            date: parse_date(r.str(doc, "date")).unwrap_or_default(),
            outcome: r.str(doc, "outcome"),
        })
        .collect();
    let closure = root.map("closure").and_then(|c| {
        let c = Fields::of(doc, &c);
        Some(Closure {
            date: parse_date(c.str(doc, "date"))?,
            reason: c.str(doc, "reason").unwrap_or_default(),
        })
    });
    Family {
        id,
        schema_version: root.u64("schema_version").unwrap_or(SCHEMA_VERSION),
        name: hh("name").unwrap_or_default(),
        address: hh("address"),
        key_worker: root.str(doc, "key_worker"),
        status: root
            .str(doc, "status")
            .and_then(|s| FamilyStatus::parse(&s).ok())
            .unwrap_or(FamilyStatus::Open),
        created_at: parse_time(root.str(doc, "created_at")).unwrap_or_default(),
        created_by: root.str(doc, "created_by").unwrap_or_default(),
        members,
        prisoners,
        consent,
        safeguarding,
        notes,
        referrals,
        closure,
    }
}

fn read_note(doc: &impl ReadDoc, family_id: DocumentId, id: String, n: &Fields) -> CaseNote {
    let history = n
        .list("history")
        .map(|h| {
            (0..doc.length(&h))
                .filter_map(|i| match doc.get(&h, i).ok().flatten() {
                    Some((automerge::Value::Object(ObjType::Map), rev)) => {
                        let rev = Fields::of(doc, &rev);
                        Some(NoteRevision {
                            text: rev.str(doc, "text").unwrap_or_default(),
                            replaced_at: parse_time(rev.str(doc, "replaced_at"))
                                .unwrap_or_default(),
                            replaced_by: rev.str(doc, "replaced_by").unwrap_or_default(),
                        })
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    CaseNote {
        id,
        family_id,
        author: n.str(doc, "author").unwrap_or_default(),
        device: n.str(doc, "device").unwrap_or_default(),
        created_at: parse_time(n.str(doc, "created_at")).unwrap_or_default(),
        category: n
            .str(doc, "category")
            .and_then(|c| NoteCategory::parse(&c).ok())
            .unwrap_or(NoteCategory::Other),
        text: n.str(doc, "text").unwrap_or_default(),
        edited_at: parse_time(n.str(doc, "edited_at")),
        history,
    }
}
