//! The device store's behaviour as a worker sees it: records kept, bad input
//! refused with nothing written, concurrent edits merged and shown.

use chrono::{Duration, Utc};
use linkbook_core::*;
use linkbook_test_support::{device, send_doc, sync_into};

fn smith(repo: &Repo) -> DocumentId {
    repo.add_family(&NewFamily {
        name: "Smith".into(),
        address: Some("1 High Street".into()),
        key_worker: Some("Asha".into()),
    })
    .expect("add family")
}

fn child(name: &str) -> NewMember {
    NewMember {
        name: name.into(),
        role: MemberRole::Child,
        relationship: Some("daughter".into()),
        date_of_birth: Some(parse_date("dob", "2015-04-01").expect("date")),
        school: Some("Hill Primary".into()),
        looked_after: false,
        social_worker: None,
    }
}

#[test]
fn a_case_file_keeps_everything_recorded_and_survives_reopen() -> Result<()> {
    let d = device("Asha");
    let id = smith(&d.repo);
    let member = d.repo.add_member(id, &child("Lily"))?;
    let prisoner = d.repo.link_prisoner(
        id,
        &NewPrisoner {
            name: "John Smith".into(),
            establishment: "HMP Leeds".into(),
            prison_number: Some("A1234BC".into()),
            custody: Custody::Sentenced,
            category: Some("C".into()),
            expected_release: Some(parse_date("release", "2027-06-30")?),
        },
    )?;
    d.repo.record_consent(
        id,
        &Consent {
            given_by: "Mary Smith".into(),
            date: Utc::now().date_naive(),
            scope: "case notes and referrals".into(),
        },
    )?;
    let flag = d
        .repo
        .raise_safeguarding_flag(id, "Father not to collect children")?;
    let note = d.repo.add_note(
        id,
        "First visit: Lily worried about school.",
        NoteCategory::Visit,
    )?;
    d.repo
        .edit_note(id, &note, "First visit: Lily anxious about school trips.")?;
    let referral = d.repo.add_referral(
        id,
        &NewReferral {
            agency: "Citizens Advice".into(),
            reason: "debt".into(),
            date: Utc::now().date_naive(),
        },
    )?;
    d.repo
        .set_referral_outcome(id, &referral, "appointment booked")?;
    d.repo.clear_safeguarding_flag(id, &flag)?;

    let path = d.repo.path().to_path_buf();
    drop(d.repo);
    let repo = Repo::open(&path, &d.key)?;
    let f = repo.family(id)?;
    assert_eq!(f.name, "Smith");
    assert_eq!(f.address.as_deref(), Some("1 High Street"));
    assert_eq!(f.members[0].id, member);
    assert_eq!(f.members[0].school.as_deref(), Some("Hill Primary"));
    assert_eq!(f.prisoners[0].id, prisoner);
    assert_eq!(f.prisoners[0].prison_number.as_deref(), Some("A1234BC"));
    assert_eq!(
        f.consent.as_ref().map(|c| c.given_by.as_str()),
        Some("Mary Smith")
    );
    assert!(f.safeguarding[0].cleared_at.is_some());
    assert_eq!(
        f.notes[0].text,
        "First visit: Lily anxious about school trips."
    );
    assert_eq!(f.notes[0].author, "Asha");
    assert_eq!(f.notes[0].history.len(), 1);
    assert_eq!(
        f.notes[0].history[0].text,
        "First visit: Lily worried about school."
    );
    assert_eq!(
        f.referrals[0].outcome.as_deref(),
        Some("appointment booked")
    );

    let list = repo.families()?;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].members, list[0].notes, list[0].safeguarding_flags),
        (1, 1, 0)
    );

    // The search index follows the edit: the old wording is gone, the new found.
    assert!(repo.search("worried")?.is_empty());
    let hits = repo.search("trips")?;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].family_name, "Smith");
    assert!(hits[0].snippet.contains("[trips]"), "{}", hits[0].snippet);

    repo.close_family(id, Utc::now().date_naive(), "moved away")?;
    assert_eq!(repo.families()?[0].status, FamilyStatus::Closed);
    repo.reopen_family(id)?;
    assert_eq!(repo.family(id)?.closure, None);
    Ok(())
}

#[test]
fn bad_input_is_a_typed_error_and_writes_nothing() -> Result<()> {
    let d = device("Asha");
    let id = smith(&d.repo);
    let before = d.repo.save_document(id)?;

    let tomorrow = Utc::now().date_naive() + Duration::days(1);
    let err = d.repo.add_member(
        id,
        &NewMember {
            date_of_birth: Some(tomorrow),
            ..child("Lily")
        },
    );
    assert!(
        matches!(
            err,
            Err(Error::InvalidInput {
                field: "date of birth",
                ..
            })
        ),
        "{err:?}"
    );
    let err = d.repo.add_note(id, "   ", NoteCategory::Other);
    assert!(
        matches!(
            err,
            Err(Error::InvalidInput {
                field: "note text",
                ..
            })
        ),
        "{err:?}"
    );
    let err = d
        .repo
        .add_note(DocumentId::random(), "hello", NoteCategory::Other);
    assert!(
        matches!(err, Err(Error::NotFound { what: "family", .. })),
        "{err:?}"
    );
    let err = DocumentId::parse("automerge:nonsense", "family id");
    assert!(
        matches!(
            err,
            Err(Error::InvalidInput {
                field: "family id",
                ..
            })
        ),
        "{err:?}"
    );
    let err = d.repo.edit_note(id, "not-a-uuid", "x");
    assert!(
        matches!(
            err,
            Err(Error::InvalidInput {
                field: "note id",
                ..
            })
        ),
        "{err:?}"
    );
    let err = d.repo.add_family(&NewFamily {
        name: "".into(),
        ..Default::default()
    });
    assert!(
        matches!(
            err,
            Err(Error::InvalidInput {
                field: "family name",
                ..
            })
        ),
        "{err:?}"
    );
    let err = d.repo.search("  ");
    assert!(matches!(err, Err(Error::InvalidInput { .. })), "{err:?}");
    // A family day is not a family.
    let day = d.repo.create_family_day(&NewFamilyDay {
        prison: "HMP Leeds".into(),
        date: Utc::now().date_naive(),
        capacity: Some(20),
    })?;
    assert!(matches!(
        d.repo.add_note(day, "x", NoteCategory::Other),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        d.repo.check_in(day, day, 1, 1),
        Err(Error::NotFound { what: "family", .. })
    ));
    assert!(matches!(
        d.repo.check_in(day, id, 0, 0),
        Err(Error::InvalidInput { .. })
    ));

    assert_eq!(
        d.repo.save_document(id)?,
        before,
        "refused calls changed the document"
    );
    assert_eq!(d.repo.families()?.len(), 1);
    assert!(d.repo.family(id)?.notes.is_empty());
    Ok(())
}

#[test]
fn a_document_from_a_newer_schema_is_refused_and_not_stored() -> Result<()> {
    use automerge::{AutoCommit, ROOT, transaction::Transactable};
    let d = device("Asha");
    let id = DocumentId::random();
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "type", "family").map_err(Error::from)?;
    doc.put(ROOT, "schema_version", 99u64)
        .map_err(Error::from)?;
    doc.put(ROOT, "team", LOCAL_TEAM).map_err(Error::from)?;
    let err = d.repo.apply_changes(id, &doc.save());
    assert!(
        matches!(err, Err(Error::UnsupportedSchema { found: 99, .. })),
        "{err:?}"
    );
    // Refused by the budget check (core/src/budget.rs) before Automerge.
    let err = d.repo.apply_changes(id, b"definitely not automerge");
    assert!(matches!(err, Err(Error::InvalidDocument(_))), "{err:?}");
    assert_eq!(d.repo.document_ids()?.len(), 1, "only the team directory");
    Ok(())
}

#[test]
fn concurrent_edits_keep_both_values_until_a_worker_chooses() -> Result<()> {
    let a = device("Asha");
    let b = device("Ben");
    let id = smith(&a.repo);
    sync_into(&a.repo, &b.repo)?;

    // Both offline: each renames the family and adds a note.
    a.repo.update_family(
        id,
        &FamilyUpdate {
            name: Some("Smith-Jones".into()),
            ..Default::default()
        },
    )?;
    b.repo.update_family(
        id,
        &FamilyUpdate {
            name: Some("Smyth".into()),
            ..Default::default()
        },
    )?;
    let note_a = a
        .repo
        .add_note(id, "Called Mary about the visit", NoteCategory::PhoneCall)?;
    let note_b = b
        .repo
        .add_note(id, "Court date set for June", NoteCategory::Court)?;

    sync_into(&a.repo, &b.repo)?;
    sync_into(&b.repo, &a.repo)?;

    for repo in [&a.repo, &b.repo] {
        let notes: Vec<String> = repo.notes(id)?.into_iter().map(|n| n.id).collect();
        assert!(
            notes.contains(&note_a) && notes.contains(&note_b),
            "a note was lost"
        );
        let conflicts = repo.conflicts()?;
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].path, "household/name");
        let mut values: Vec<(String, String)> = conflicts[0]
            .values
            .iter()
            .map(|v| {
                (
                    v.value.as_str().unwrap_or_default().to_string(),
                    v.device.clone(),
                )
            })
            .collect();
        values.sort();
        assert_eq!(
            values,
            vec![
                ("Smith-Jones".to_string(), a.repo.profile().device_id),
                ("Smyth".to_string(), b.repo.profile().device_id),
            ]
        );
    }
    assert_eq!(a.repo.heads(id)?, b.repo.heads(id)?);

    b.repo
        .resolve_conflict(id, "household/name", &serde_json::json!("Smith-Jones"))?;
    sync_into(&b.repo, &a.repo)?;
    assert!(a.repo.conflicts()?.is_empty());
    assert_eq!(a.repo.families()?[0].name, "Smith-Jones");
    let err = a
        .repo
        .resolve_conflict(id, "household/name", &serde_json::json!("x"));
    assert!(matches!(err, Err(Error::InvalidInput { .. })), "{err:?}");
    Ok(())
}

#[test]
fn tablets_checking_in_offline_merge_into_one_attendance_per_family() -> Result<()> {
    let office = device("Office");
    let smiths = smith(&office.repo);
    let jones = office.repo.add_family(&NewFamily {
        name: "Jones".into(),
        ..Default::default()
    })?;
    let patel = office.repo.add_family(&NewFamily {
        name: "Patel".into(),
        ..Default::default()
    })?;
    let day = office.repo.create_family_day(&NewFamilyDay {
        prison: "HMP Leeds".into(),
        date: Utc::now().date_naive(),
        capacity: Some(30),
    })?;
    let tablets: Vec<_> = (0..3).map(|i| device(&format!("Tablet {i}"))).collect();
    for t in &tablets {
        sync_into(&office.repo, &t.repo)?;
    }
    tablets[0].repo.check_in(day, smiths, 2, 3)?;
    tablets[1].repo.check_in(day, smiths, 2, 3)?; // same family, same count, other tablet
    tablets[1].repo.check_in(day, jones, 1, 1)?;
    tablets[2].repo.check_in(day, patel, 1, 2)?;
    tablets[2].repo.check_in(day, jones, 1, 2)?; // disagrees on children

    for t in &tablets {
        send_doc(&t.repo, &office.repo, day)?;
    }
    let fd = office.repo.family_day(day)?;
    assert_eq!(fd.attendance.len(), 3, "{:?}", fd.attendance);
    let smith_att = fd
        .attendance
        .iter()
        .find(|a| a.family_id == smiths)
        .expect("smiths");
    assert_eq!((smith_att.adults, smith_att.children), (2, 3));
    assert_eq!(smith_att.checked_in_by.len(), 2);
    let conflicts = office.repo.conflicts()?;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].path, format!("attendance/{jones}.children"));
    office
        .repo
        .resolve_conflict(day, &conflicts[0].path, &serde_json::json!(2))?;
    assert!(office.repo.conflicts()?.is_empty());
    let summary = &office.repo.family_days()?[0];
    assert_eq!(
        (summary.families_attended, summary.adults, summary.children),
        (3, 4, 7)
    );
    Ok(())
}

#[test]
fn many_writes_compact_and_reload_intact() -> Result<()> {
    let d = device("Asha");
    let id = smith(&d.repo);
    let ids: Vec<String> = (0..150)
        .map(|i| {
            d.repo
                .add_note(id, &format!("note number {i}"), NoteCategory::Other)
        })
        .collect::<Result<_>>()?;
    let heads = d.repo.heads(id)?;
    let path = d.repo.path().to_path_buf();
    drop(d.repo);
    let repo = Repo::open(&path, &d.key)?;
    assert_eq!(repo.heads(id)?, heads);
    let got: Vec<String> = repo.notes(id)?.into_iter().map(|n| n.id).collect();
    assert_eq!(got.len(), 150);
    assert!(ids.iter().all(|i| got.contains(i)));
    assert_eq!(
        repo.search("number")?.len(),
        100,
        "search returns at most 100 hits"
    );
    Ok(())
}

#[test]
fn the_database_is_encrypted_and_the_wrong_key_is_refused() -> Result<()> {
    let d = device("Asha");
    let id = smith(&d.repo);
    let secret = "Lily disclosed something at the visit zebracrossing";
    d.repo.add_note(id, secret, NoteCategory::Visit)?;
    let path = d.repo.path().to_path_buf();
    // Bytes on disk while open (WAL holds the latest pages) and after close.
    let scan = |p: &std::path::Path| {
        let dir = p.parent().expect("dir").to_path_buf();
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let entry = entry.expect("entry");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = entry.metadata().expect("metadata").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{:?} is not private", entry.path());
            }
            let bytes = std::fs::read(entry.path()).expect("read");
            assert!(
                !bytes.windows(13).any(|w| w == b"zebracrossing"),
                "note text in plain bytes"
            );
            assert!(
                !bytes.windows(5).any(|w| w == b"Smith"),
                "family name in plain bytes"
            );
        }
    };
    scan(&path);
    drop(d.repo);
    scan(&path);
    assert!(matches!(
        Repo::open(&path, &DatabaseKey::generate()),
        Err(Error::WrongKey)
    ));
    let repo = Repo::open(&path, &d.key)?;
    assert_eq!(repo.search("zebracrossing")?.len(), 1);
    Ok(())
}

#[test]
fn import_of_another_team_or_a_broken_file_writes_nothing() -> Result<()> {
    let a = device("Asha");
    let b = device("Ben");
    smith(&a.repo);
    b.repo.set_team("north")?;
    let err = b.repo.import(&a.repo.export()?);
    assert!(
        matches!(
            err,
            Err(Error::InvalidInput {
                field: "import file",
                ..
            })
        ),
        "{err:?}"
    );
    let mut bytes = a.repo.export()?;
    bytes.truncate(bytes.len() / 2);
    let c = device("Cara");
    assert!(c.repo.import(&bytes).is_err());
    assert!(c.repo.families()?.is_empty());
    // A device with records cannot move team.
    assert!(matches!(
        a.repo.set_team("north"),
        Err(Error::InvalidInput { field: "team", .. })
    ));
    Ok(())
}

#[test]
fn a_family_made_on_one_device_is_listed_in_the_team_directory() -> Result<()> {
    let a = device("Asha");
    let b = device("Ben");
    let fam = smith(&a.repo);
    let day = a.repo.create_family_day(&NewFamilyDay {
        prison: "HMP Hull".into(),
        date: Utc::now().date_naive(),
        capacity: None,
    })?;
    // Both created their directories independently; they still merge into one.
    send_doc(&a.repo, &b.repo, a.repo.directory_id())?;
    let mut listed = b.repo.directory_listing()?;
    listed.sort();
    let mut want = vec![fam, day];
    want.sort();
    assert_eq!(listed, want);
    assert!(b.repo.conflicts()?.is_empty());
    Ok(())
}
