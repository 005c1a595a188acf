//! Each rule of `rules.rs`, allowed and refused.

use automerge::{AutoCommit, ObjId, ROOT, ReadDoc, ScalarValue, transaction::Transactable};
use chrono::NaiveDate;

use super::*;
use crate::model::am::{get_list, get_map};
use crate::model::{
    Author, Consent, MemberUpdate, NewFamily, NewFamilyDay, NewMember, NewPrisoner, NewReferral,
    directory, family, family_day,
};

fn author(device: &str) -> Author {
    Author {
        device_id: device.into(),
        worker: "Worker".into(),
        team: "north".into(),
        now: chrono::Utc::now(),
    }
}

fn check(doc: &mut AutoCommit, before: &[ChangeHash]) -> Result<(), RuleViolation> {
    check_change(doc.document(), before, &|_| false)
}

/// A family with a note, a member and a referral: (doc, note, member, referral).
fn family_doc() -> (AutoCommit, String, String, String) {
    let by = author("a");
    let mut doc = AutoCommit::new();
    family::create(
        &mut doc,
        &NewFamily {
            name: "Smith".into(),
            ..Default::default()
        },
        &by,
    )
    .expect("create");
    let note = family::add_note(&mut doc, "Visited.", NoteCategory::Visit, &by).expect("add note");
    let member = family::add_member(
        &mut doc,
        &NewMember {
            name: "Sam".into(),
            role: MemberRole::Child,
            relationship: None,
            date_of_birth: None,
            school: None,
            looked_after: false,
            social_worker: None,
        },
        &by,
    )
    .expect("member");
    let referral = family::add_referral(
        &mut doc,
        &NewReferral {
            agency: "School".into(),
            reason: "Support".into(),
            date: NaiveDate::from_ymd_opt(2026, 1, 2).expect("date"),
        },
    )
    .expect("referral");
    doc.commit();
    (doc, note, member, referral)
}

type Step<'a> = Box<dyn Fn(&mut AutoCommit) -> crate::Result<()> + 'a>;
type Tamper = Box<dyn Fn(&mut AutoCommit, &ObjId)>;

fn entry(doc: &AutoCommit, collection: &str, id: &str) -> ObjId {
    let map = get_map(doc, &ROOT, collection).expect("collection");
    get_map(doc, &map, id).expect("entry")
}

fn refused(doc: &mut AutoCommit, before: &[ChangeHash]) -> String {
    check(doc, before).expect_err("refused").to_string()
}

#[test]
fn every_honest_edit_passes() {
    let (mut doc, note, member, referral) = family_doc();
    assert_eq!(check(&mut doc, &[]), Ok(()), "a new family");
    let by = author("a");
    let today = by.now.date_naive();
    let steps: Vec<Step> = vec![
        Box::new(|d| family::edit_note(d, &note, "Visited twice.", &by)),
        Box::new(|d| family::add_note(d, "Called.", NoteCategory::Visit, &by).map(|_| ())),
        Box::new(|d| {
            family::update_member(
                d,
                &member,
                &MemberUpdate {
                    school: Some("Hill".into()),
                    ..Default::default()
                },
                &by,
            )
        }),
        Box::new(|d| family::remove_member(d, &member, &by)),
        Box::new(|d| family::set_referral_outcome(d, &referral, "Accepted")),
        Box::new(|d| family::raise_flag(d, "Concern", &by).map(|_| ())),
        Box::new(|d| {
            family::record_consent(
                d,
                &Consent {
                    given_by: "Ann".into(),
                    date: today,
                    scope: "All".into(),
                },
                &by,
            )
        }),
        Box::new(|d| {
            family::link_prisoner(
                d,
                &NewPrisoner {
                    name: "Tom".into(),
                    establishment: "HMP X".into(),
                    prison_number: Some("A1".into()),
                    custody: Custody::Sentenced,
                    category: None,
                    expected_release: None,
                },
            )
            .map(|_| ())
        }),
        Box::new(|d| family::close(d, today, "Done", &by)),
        Box::new(family::reopen),
    ];
    for (i, step) in steps.iter().enumerate() {
        let before = doc.get_heads();
        step(&mut doc).expect("step");
        assert_eq!(check(&mut doc, &before), Ok(()), "step {i}");
    }
    let fam = family::read(&doc, crate::ids::DocumentId::random());
    assert!(fam.members.is_empty(), "a removed member is not read");
    assert!(family::update_member(&mut doc, &member, &MemberUpdate::default(), &by).is_err());
}

#[test]
fn a_member_removed_on_one_device_and_edited_on_another_stays_removed() {
    let (mut a, _, member, _) = family_doc();
    let mut b = a.fork();
    family::remove_member(&mut a, &member, &author("a")).expect("remove");
    let edit = MemberUpdate {
        school: Some("Hill".into()),
        ..Default::default()
    };
    family::update_member(&mut b, &member, &edit, &author("b")).expect("edit");
    a.commit();
    b.commit();
    let before = a.get_heads();
    a.merge(&mut b).expect("merge");
    assert_eq!(check(&mut a, &before), Ok(()));
    let fam = family::read(&a, crate::ids::DocumentId::random());
    assert!(fam.members.is_empty(), "{:?}", fam.members);
    let m = entry(&a, "members", &member);
    assert!(
        a.get(&m, "removed_at").expect("get").is_some(),
        "kept, marked removed"
    );
}

#[test]
fn deleting_a_note_member_or_referral_is_refused() {
    for (collection, what) in [
        ("notes", "a case note may not be deleted"),
        ("members", "a member may not be deleted"),
        ("referrals", "a referral may not be deleted"),
    ] {
        let (mut doc, note, member, referral) = family_doc();
        let id = match collection {
            "notes" => note,
            "members" => member,
            _ => referral,
        };
        let before = doc.get_heads();
        let map = get_map(&doc, &ROOT, collection).expect("map");
        doc.delete(&map, id.as_str()).expect("delete");
        assert_eq!(
            refused(&mut doc, &before),
            format!("change refused: {what}")
        );
    }
}

#[test]
fn replacing_a_collection_or_an_entry_is_refused() {
    let (mut doc, note, _, _) = family_doc();
    let before = doc.get_heads();
    doc.put_object(ROOT, "notes", automerge::ObjType::Map)
        .expect("put");
    assert_eq!(
        refused(&mut doc, &before),
        "change refused: a family's notes may not be replaced"
    );
    let (mut doc, _, _, _) = family_doc();
    let before = doc.get_heads();
    let notes = get_map(&doc, &ROOT, "notes").expect("notes");
    doc.put_object(&notes, note.as_str(), automerge::ObjType::Map)
        .expect("put");
    // `note` is the other family's id: a new entry here, so it passes.
    assert_eq!(check(&mut doc, &before), Ok(()));
    let (mut doc, note, _, _) = family_doc();
    let before = doc.get_heads();
    let notes = get_map(&doc, &ROOT, "notes").expect("notes");
    doc.put_object(&notes, note.as_str(), automerge::ObjType::Map)
        .expect("put");
    assert_eq!(
        refused(&mut doc, &before),
        "change refused: a case note may not be replaced"
    );
}

#[test]
fn a_notes_fixed_fields_may_not_change_or_go() {
    for field in ["author", "device", "created_at"] {
        let (mut doc, note, _, _) = family_doc();
        let n = entry(&doc, "notes", &note);
        let before = doc.get_heads();
        doc.put(&n, field, "2020-01-01T00:00:00Z").expect("put");
        assert_eq!(
            refused(&mut doc, &before),
            format!("change refused: a case note's {field} may not be changed")
        );
        let (mut doc, note, _, _) = family_doc();
        let n = entry(&doc, "notes", &note);
        let before = doc.get_heads();
        doc.delete(&n, field).expect("delete");
        assert_eq!(
            refused(&mut doc, &before),
            format!("change refused: a case note's {field} may not be deleted")
        );
    }
}

#[test]
fn a_notes_history_is_append_only() {
    let (mut doc, note, _, _) = family_doc();
    let by = author("a");
    family::edit_note(&mut doc, &note, "Second.", &by).expect("edit");
    let n = entry(&doc, "notes", &note);
    let h = get_list(&doc, &n, "history").expect("history");
    let item = match doc.get(&h, 0).expect("get") {
        Some((_, id)) => id,
        None => panic!("no history item"),
    };
    let before = doc.get_heads();
    doc.put(&item, "text", "rewritten").expect("put");
    assert_eq!(
        refused(&mut doc, &before),
        "change refused: a case note's history may not be rewritten"
    );
    let (mut doc, note, _, _) = family_doc();
    family::edit_note(&mut doc, &note, "Second.", &by).expect("edit");
    let n = entry(&doc, "notes", &note);
    let h = get_list(&doc, &n, "history").expect("history");
    let before = doc.get_heads();
    doc.delete(&h, 0).expect("delete");
    assert!(refused(&mut doc, &before).contains("history may not be rewritten"));
}

#[test]
fn a_notes_text_changes_only_with_its_old_text_in_history() {
    let (mut doc, note, _, _) = family_doc();
    let n = entry(&doc, "notes", &note);
    let before = doc.get_heads();
    doc.put(&n, "text", "Nothing happened.").expect("put");
    assert_eq!(
        refused(&mut doc, &before),
        "change refused: a case note's text may change only with its old text kept in its history"
    );
    // A history item holding something else does not keep the old text.
    let (mut doc, note, _, _) = family_doc();
    let by = author("a");
    let n = entry(&doc, "notes", &note);
    let before = doc.get_heads();
    family::push_history(&mut doc, &n, "decoy", &by).expect("push");
    doc.put(&n, "text", "Nothing happened.").expect("put");
    assert!(refused(&mut doc, &before).contains("old text kept"));
    // Deleting the text is refused too.
    let (mut doc, note, _, _) = family_doc();
    let n = entry(&doc, "notes", &note);
    let before = doc.get_heads();
    doc.delete(&n, "text").expect("delete");
    assert!(refused(&mut doc, &before).contains("text may not be deleted"));
}

#[test]
fn concurrent_edits_of_one_note_and_settling_them_pass() {
    let (mut a, note, _, _) = family_doc();
    let mut b = a.fork().with_actor(automerge::ActorId::random());
    family::edit_note(&mut a, &note, "From tablet A.", &author("a")).expect("edit a");
    family::edit_note(&mut b, &note, "From tablet B.", &author("b")).expect("edit b");
    a.commit();
    b.commit();
    let before = a.get_heads();
    a.merge(&mut b).expect("merge");
    assert_eq!(
        check(&mut a, &before),
        Ok(()),
        "B's edit arriving after A's"
    );
    let mut c = b.fork();
    let before_b = b.get_heads();
    b.merge(&mut a).expect("merge");
    assert_eq!(
        check(&mut b, &before_b),
        Ok(()),
        "A's edit arriving after B's"
    );
    // Settling the conflict keeps the dropped text in the history.
    let path = format!("notes/{note}/text");
    let before = a.get_heads();
    crate::model::conflicts::resolve(
        &mut a,
        &path,
        &serde_json::json!("From tablet A."),
        &author("a"),
    )
    .expect("resolve");
    assert_eq!(check(&mut a, &before), Ok(()), "a settled conflict");
    let fam = family::read(&a, crate::ids::DocumentId::random());
    let texts: Vec<&str> = fam.notes[0]
        .history
        .iter()
        .map(|r| r.text.as_str())
        .collect();
    assert!(texts.contains(&"From tablet B."), "{texts:?}");
    // Two concurrent appends to one history from a third tablet merge too.
    let before_c = c.get_heads();
    c.merge(&mut a).expect("merge");
    assert_eq!(check(&mut c, &before_c), Ok(()));
}

#[test]
fn a_documents_type_and_team_are_fixed() {
    let (mut doc, _, _, _) = family_doc();
    let before = doc.get_heads();
    doc.put(ROOT, "type", "family_day").expect("put");
    assert_eq!(
        refused(&mut doc, &before),
        "change refused: a family's type may not be changed"
    );
    for field in ["team", "created_at", "created_by"] {
        let (mut doc, _, _, _) = family_doc();
        let before = doc.get_heads();
        doc.put(ROOT, field, "2020-01-01T00:00:00Z").expect("put");
        assert!(refused(&mut doc, &before).contains(&format!("family's {field} may not")));
    }
}

#[test]
fn values_of_the_wrong_type_or_size_are_refused() {
    let cases: Vec<(&str, Tamper)> = vec![
        (
            "a member's name must be a string",
            Box::new(|d, m| d.put(m, "name", 7_u64).map(|_| ()).expect("put")),
        ),
        (
            "a member's name is longer than 500 characters",
            Box::new(|d, m| d.put(m, "name", "x".repeat(501)).expect("put")),
        ),
        (
            "a member's date_of_birth must be a date (YYYY-MM-DD)",
            Box::new(|d, m| d.put(m, "date_of_birth", "yesterday").expect("put")),
        ),
        (
            "a member's role must be one of Linkbook's values",
            Box::new(|d, m| d.put(m, "role", "king").expect("put")),
        ),
        (
            "a member's looked_after must be true or false",
            Box::new(|d, m| d.put(m, "looked_after", "yes").expect("put")),
        ),
        (
            "a member has a field Linkbook does not know",
            Box::new(|d, m| d.put(m, "blob", "x".repeat(1000)).expect("put")),
        ),
        (
            "a member's name must be a string",
            Box::new(|d, m| {
                d.put_object(m, "name", automerge::ObjType::Map)
                    .map(|_| ())
                    .expect("put")
            }),
        ),
    ];
    for (want, make) in cases {
        let (mut doc, _, member, _) = family_doc();
        let m = entry(&doc, "members", &member);
        let before = doc.get_heads();
        make(&mut doc, &m);
        assert_eq!(
            refused(&mut doc, &before),
            format!("change refused: {want}")
        );
    }
    // A 10 MB "name" in a new family, and an entry that is not a map.
    let mut doc = AutoCommit::new();
    crate::model::am::write_header(&mut doc, DocumentType::Family).expect("header");
    let h = doc
        .put_object(ROOT, "household", automerge::ObjType::Map)
        .expect("household");
    doc.put(&h, "name", "n".repeat(10_000_000)).expect("put");
    assert!(refused(&mut doc, &[]).contains("longer than 500"));
    let (mut doc, _, _, _) = family_doc();
    let notes = get_map(&doc, &ROOT, "notes").expect("notes");
    let before = doc.get_heads();
    doc.put(&notes, uuid::Uuid::new_v4().to_string().as_str(), "text")
        .expect("put");
    assert_eq!(
        refused(&mut doc, &before),
        "change refused: a case note's entry must be a map"
    );
    // A counter where a string goes; a Text object of a fair size passes.
    let (mut doc, note, _, _) = family_doc();
    let n = entry(&doc, "notes", &note);
    let before = doc.get_heads();
    doc.put(&n, "category", ScalarValue::counter(1))
        .expect("put");
    assert!(refused(&mut doc, &before).contains("category must be"));
    let (mut doc, _, member, _) = family_doc();
    let m = entry(&doc, "members", &member);
    let before = doc.get_heads();
    let t = doc
        .put_object(&m, "school", automerge::ObjType::Text)
        .expect("text");
    doc.splice_text(&t, 0, 0, "Hill School").expect("splice");
    assert_eq!(check(&mut doc, &before), Ok(()), "a Text string");
    let before = doc.get_heads();
    doc.splice_text(&t, 0, 0, &"y".repeat(600)).expect("splice");
    assert!(refused(&mut doc, &before).contains("school is longer"));
    // A note as a JavaScript client writes it: every string a Text object.
    let (mut doc, _, _, _) = family_doc();
    let notes = get_map(&doc, &ROOT, "notes").expect("notes");
    let before = doc.get_heads();
    let n = doc
        .put_object(
            &notes,
            uuid::Uuid::new_v4().to_string().as_str(),
            automerge::ObjType::Map,
        )
        .expect("note");
    for (key, value) in [
        ("author", "Jo"),
        ("created_at", "2026-12-01T10:00:00.000Z"),
        ("category", "other"),
        ("text", "From JavaScript"),
    ] {
        let t = doc
            .put_object(&n, key, automerge::ObjType::Text)
            .expect("text");
        doc.splice_text(&t, 0, 0, value).expect("splice");
    }
    doc.put_object(&n, "history", automerge::ObjType::List)
        .expect("history");
    assert_eq!(check(&mut doc, &before), Ok(()), "a JavaScript note");
    let before = doc.get_heads();
    let t = doc
        .put_object(&n, "edited_at", automerge::ObjType::Text)
        .expect("text");
    doc.splice_text(&t, 0, 0, "soon").expect("splice");
    assert!(refused(&mut doc, &before).contains("edited_at must be a time"));
}

#[test]
fn the_directory_loses_an_entry_only_for_a_purged_document() {
    let mut doc = directory::genesis("north").expect("genesis");
    let id = crate::ids::DocumentId::random();
    let before = doc.get_heads();
    directory::put_family(
        &mut doc,
        &directory::Entry {
            id,
            status: FamilyStatus::Open,
        },
    )
    .expect("put");
    assert_eq!(check(&mut doc, &before), Ok(()));
    let before = doc.get_heads();
    directory::remove(&mut doc, id).expect("remove");
    let refused_by = check_change(doc.document(), &before, &|_| false);
    assert_eq!(refused_by, Err(RuleViolation::NotPurged));
    let want = id.to_string();
    assert_eq!(
        check_change(doc.document(), &before, &|p| p == want),
        Ok(())
    );
    // A closed family's entry may go (retention on the device's clock).
    directory::put_family(
        &mut doc,
        &directory::Entry {
            id,
            status: FamilyStatus::Closed,
        },
    )
    .expect("put");
    let before = doc.get_heads();
    directory::remove(&mut doc, id).expect("remove");
    assert_eq!(check(&mut doc, &before), Ok(()));
    let mut doc = directory::genesis("north").expect("genesis");
    let families = get_map(&doc, &ROOT, "families").expect("families");
    let before = doc.get_heads();
    doc.put(&families, format!("{id}.name"), "Smith")
        .expect("put");
    assert!(refused(&mut doc, &before).contains("does not know"));
}

#[test]
fn a_family_days_records_are_kept_and_counted_within_limits() {
    let by = author("a");
    let mut doc = AutoCommit::new();
    family_day::create(
        &mut doc,
        &NewFamilyDay {
            prison: "HMP X".into(),
            date: by.now.date_naive(),
            capacity: Some(10),
        },
        &by,
    )
    .expect("create");
    assert_eq!(check(&mut doc, &[]), Ok(()));
    let fid = crate::ids::DocumentId::random();
    let before = doc.get_heads();
    family_day::book(&mut doc, fid, 2, 1, &by).expect("book");
    family_day::check_in(&mut doc, fid, 2, 2, &by).expect("check in");
    assert_eq!(check(&mut doc, &before), Ok(()));
    let att = get_map(&doc, &ROOT, "attendance").expect("attendance");
    let before = doc.get_heads();
    doc.delete(&att, format!("{fid}.adults").as_str())
        .expect("delete");
    assert_eq!(
        refused(&mut doc, &before),
        "change refused: an attendance record may not be deleted"
    );
    let before = doc.get_heads();
    doc.put(&att, format!("{fid}.children"), 1_000_000_u64)
        .expect("put");
    assert!(refused(&mut doc, &before).contains("children must be"));
}

/// The cost of checking one message's change on a 1,000-note family: printed
/// for the report (`cargo test -p linkbook-core --lib rules -- --nocapture`),
/// never asserted.
#[test]
fn cost_on_a_thousand_note_family() {
    let (mut doc, _, _, _) = family_doc();
    let by = author("a");
    let mut notes = Vec::new();
    for i in 0..1000 {
        let text = format!("Note {i}: {}", "visited and talked. ".repeat(10));
        notes.push(family::add_note(&mut doc, &text, NoteCategory::Visit, &by).expect("note"));
    }
    doc.commit();
    let whole = std::time::Instant::now();
    assert_eq!(check(&mut doc, &[]), Ok(()));
    let whole = whole.elapsed();
    let rounds = 20;
    let mut spent = std::time::Duration::ZERO;
    for i in 0..rounds {
        let before = doc.get_heads();
        family::edit_note(&mut doc, &notes[i * 7], "Edited.", &by).expect("edit");
        doc.commit();
        let t = std::time::Instant::now();
        assert_eq!(check(&mut doc, &before), Ok(()));
        spent += t.elapsed();
    }
    println!(
        "rules: 1,000-note family: one edit checked in {:?} on average; the whole document (first upload) in {:?}",
        spent / rounds as u32,
        whole
    );
}
