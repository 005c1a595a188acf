//! Devices converge through a real `linkbook-server` on 127.0.0.1 over TLS,
//! and only within their team.

use chrono::Utc;
use linkbook_core::*;
use linkbook_tests::{Device, Relay};

#[test]
fn notes_written_offline_on_two_devices_reach_both_through_the_relay() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");

    let family = a.repo.add_family(&NewFamily {
        name: "Smith".into(),
        ..Default::default()
    })?;
    let first = a
        .repo
        .add_note(family, "Initial assessment done", NoteCategory::Visit)?;
    let s = a.repo.sync(None)?;
    assert!(s.documents_sent >= 2, "{s:?}");

    // B learns of the family from the team directory.
    let s = b.repo.sync(None)?;
    assert!(s.documents_received >= 2, "{s:?}");
    assert_eq!(
        b.repo
            .notes(family)?
            .iter()
            .map(|n| n.id.clone())
            .collect::<Vec<_>>(),
        vec![first.clone()]
    );

    // Both offline: notes and a rename each.
    let note_a = a.repo.add_note(
        family,
        "Phoned mum about the visit",
        NoteCategory::PhoneCall,
    )?;
    let note_b = b
        .repo
        .add_note(family, "School meeting booked", NoteCategory::School)?;
    a.repo.update_family(
        family,
        &FamilyUpdate {
            name: Some("Smith-Jones".into()),
            ..Default::default()
        },
    )?;
    b.repo.update_family(
        family,
        &FamilyUpdate {
            name: Some("Smyth".into()),
            ..Default::default()
        },
    )?;

    b.repo.sync(None)?;
    a.repo.sync(None)?;
    b.repo.sync(None)?;

    for repo in [&a.repo, &b.repo] {
        let ids: Vec<String> = repo.notes(family)?.into_iter().map(|n| n.id).collect();
        for n in [&first, &note_a, &note_b] {
            assert!(ids.contains(n), "note {n} missing");
        }
        let conflicts = repo.conflicts()?;
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].path, "household/name");
    }
    assert_eq!(a.repo.heads(family)?, b.repo.heads(family)?);
    assert_eq!(a.repo.family(family)?, b.repo.family(family)?);

    // Nothing changed: the next sync moves no changes.
    let s = a.repo.sync(None)?;
    assert_eq!((s.documents_sent, s.documents_received), (0, 0), "{s:?}");
    Ok(())
}

#[test]
fn three_tablets_at_a_family_day_give_the_union_of_attendance() -> Result<()> {
    let relay = Relay::start();
    let office = Device::enrolled(&relay, "north", "Office");
    let families: Vec<DocumentId> = ["Smith", "Jones", "Patel", "Okafor"]
        .iter()
        .map(|n| {
            office.repo.add_family(&NewFamily {
                name: (*n).into(),
                ..Default::default()
            })
        })
        .collect::<Result<_>>()?;
    let day = office.repo.create_family_day(&NewFamilyDay {
        prison: "HMP Leeds".into(),
        date: Utc::now().date_naive(),
        capacity: Some(20),
    })?;
    office.repo.sync(None)?;
    let tablets: Vec<Device> = (0..3)
        .map(|i| Device::enrolled(&relay, "north", &format!("Tablet {i}")))
        .collect();
    for t in &tablets {
        t.repo.sync(None)?;
    }
    // Offline at the prison: overlapping check-ins.
    tablets[0].repo.check_in(day, families[0], 2, 1)?;
    tablets[1].repo.check_in(day, families[0], 2, 1)?;
    tablets[1].repo.check_in(day, families[1], 1, 3)?;
    tablets[2].repo.check_in(day, families[2], 1, 0)?;
    tablets[2].repo.check_in(day, families[3], 2, 2)?;
    for t in &tablets {
        t.repo.sync(None)?;
    }
    office.repo.sync(None)?;
    let fd = office.repo.family_day(day)?;
    assert_eq!(fd.attendance.len(), 4, "{:?}", fd.attendance);
    let mut ids: Vec<DocumentId> = fd.attendance.iter().map(|a| a.family_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "a family counted twice");
    let summary = &office.repo.family_days()?[0];
    assert_eq!(
        (summary.families_attended, summary.adults, summary.children),
        (4, 6, 6)
    );
    Ok(())
}

#[test]
fn a_device_of_another_team_cannot_get_documents_and_a_revoked_device_gets_nothing() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let family = a.repo.add_family(&NewFamily {
        name: "Smith".into(),
        ..Default::default()
    })?;
    a.repo
        .add_note(family, "confidential", NoteCategory::Visit)?;
    a.repo.sync(None)?;

    // Team B asks for team A's family by id: answered as for a missing one.
    let b = Device::enrolled(&relay, "south", "Ben");
    let s = b.repo.sync(None)?;
    assert_eq!(s.documents_received, 0);
    let probe = Device::new();
    let code = relay.enrol_code("south", "Cara");
    probe.enrol(&relay.url, &code, Some(&relay.ca_pem()), "probe")?;
    // Asked by id, another team's family and a family that does not exist get
    // the same answer.
    // The team directory's id is the relay's random choice, not derived from
    // the team name; asked for by id, it is refused like the rest.
    let missing = DocumentId::random();
    let north_directory = a.repo.directory_id();
    assert_ne!(north_directory, DocumentId::team_directory("north"));
    let s = probe.sync_documents(&[family, missing, north_directory], None)?;
    assert_eq!(
        (s.documents_received, s.documents_unavailable),
        (0, 3),
        "{s:?}"
    );
    assert!(matches!(probe.family(family), Err(Error::NotFound { .. })));

    // Revoked (a lost tablet): the next connection is refused as revoked,
    // and the device deletes everything it holds and forgets its enrolment.
    assert_eq!(a.repo.search("confidential")?.len(), 1);
    let id = a.repo.profile().device_id;
    let r = relay.admin(&["device", "revoke", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(matches!(a.repo.sync(None), Err(Error::Revoked)));
    assert!(a.repo.families()?.is_empty());
    // Nothing but a new device's empty local directory.
    let local = linkbook_core::DocumentId::team_directory(linkbook_core::LOCAL_TEAM);
    let left: Vec<_> = a
        .repo
        .document_ids()?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![local]);
    assert!(a.repo.search("confidential")?.is_empty());
    assert_eq!(a.repo.enrolment()?, None);
    assert!(matches!(a.repo.sync(None), Err(Error::Unauthorized(_))));
    // It works on as a new, unenrolled device would.
    assert_eq!(a.repo.profile().team, linkbook_core::LOCAL_TEAM);
    a.repo.add_family(&NewFamily {
        name: "Offline after the wipe".into(),
        ..Default::default()
    })?;

    // An enrolment code works once only.
    let code = relay.enrol_code("north", "Dee");
    let c = Device::new();
    c.enrol(&relay.url, &code, Some(&relay.ca_pem()), "tablet")?;
    let d = Device::new();
    assert!(matches!(
        d.enrol(&relay.url, &code, Some(&relay.ca_pem()), "tablet"),
        Err(Error::Unauthorized(_))
    ));
    assert!(!relay.log().contains(&code), "an enrolment code was logged");
    Ok(())
}

#[test]
fn the_relay_restarted_between_syncs_loses_nothing() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let family = a.repo.add_family(&NewFamily {
        name: "Smith".into(),
        ..Default::default()
    })?;
    let notes: Vec<String> = (0..20)
        .map(|i| {
            a.repo
                .add_note(family, &format!("note {i}"), NoteCategory::Other)
        })
        .collect::<Result<_>>()?;
    a.repo.sync(None)?;
    let data = relay.stop();
    let relay = Relay::start_in(data);
    // The restarted relay listens on a new port; the device keeps trusting
    // the same development CA, kept in the relay's data directory.
    b.repo.set_server_url(&relay.url)?;
    b.repo.sync(None)?;
    let got: Vec<String> = b.repo.notes(family)?.into_iter().map(|n| n.id).collect();
    assert_eq!(got.len(), notes.len());
    Ok(())
}

#[test]
fn a_sync_cut_mid_way_keeps_its_progress_and_the_next_sync_completes() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let mut written = Vec::new();
    let mut families = Vec::new();
    for f in 0..6 {
        let family = a.repo.add_family(&NewFamily {
            name: format!("Family {f}"),
            ..Default::default()
        })?;
        for n in 0..30 {
            written.push(a.repo.add_note(
                family,
                &format!("family {f} note {n}: {}", "x".repeat(200)),
                NoteCategory::Visit,
            )?);
        }
        families.push(family);
    }
    // The network drops after a few kilobytes, several times over.
    let mut cuts = 0;
    for cut_after in [3_000usize, 9_000, 20_000] {
        let proxy = linkbook_tests::CutProxy::start(relay.addr(), cut_after);
        a.repo.set_server_url(&proxy.url())?;
        match a.repo.sync(None) {
            Err(Error::Network(_)) => cuts += 1,
            Ok(_) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert!(cuts >= 2, "the proxy did not cut the syncs");
    a.repo.set_server_url(&relay.url)?;
    a.repo.sync(None)?;
    let s = b.repo.sync(None)?;
    assert_eq!(s.documents_received, 7, "{s:?}");
    let mut got = Vec::new();
    for f in &families {
        got.extend(b.repo.notes(*f)?.into_iter().map(|n| n.id));
    }
    got.sort();
    written.sort();
    assert_eq!(got, written, "notes lost or doubled");
    Ok(())
}

#[test]
fn progress_is_reported_until_every_document_is_done() -> Result<()> {
    use std::sync::Mutex;
    #[derive(Default)]
    struct Recorder(Mutex<Vec<SyncProgress>>);
    impl SyncListener for Recorder {
        fn progress(&self, p: &SyncProgress) {
            self.0.lock().expect("lock").push(p.clone());
        }
    }
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    for i in 0..5 {
        a.repo.add_family(&NewFamily {
            name: format!("F{i}"),
            ..Default::default()
        })?;
    }
    let recorder = Recorder::default();
    let summary = a.repo.sync(Some(&recorder))?;
    let seen = recorder.0.lock().expect("lock");
    let last = seen.last().expect("progress reported");
    assert_eq!((last.documents_done, last.documents_total), (6, 6));
    assert_eq!(summary.documents_total, 6);
    assert!(
        seen.windows(2)
            .all(|w| w[0].documents_done <= w[1].documents_done
                && w[0].bytes_received <= w[1].bytes_received)
    );
    Ok(())
}

#[test]
fn a_reconnect_only_opens_the_documents_that_changed() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let families: Vec<DocumentId> = (0..20)
        .map(|i| {
            a.repo.add_family(&NewFamily {
                name: format!("Family {i}"),
                ..Default::default()
            })
        })
        .collect::<Result<_>>()?;
    let s = a.repo.sync(None)?;
    assert_eq!(s.documents_total, 21, "{s:?}");
    // A's own uploads do not count as changed on the relay: nothing to open.
    let s = a.repo.sync(None)?;
    assert_eq!(
        (s.documents_total, s.messages_sent),
        (0, 2),
        "an unchanged device opened documents: {s:?}"
    );

    b.repo.sync(None)?;
    b.repo
        .add_note(families[7], "Only this family changed", NoteCategory::Visit)?;
    let s = b.repo.sync(None)?;
    assert_eq!(s.documents_total, 1, "{s:?}");
    let s = a.repo.sync(None)?;
    assert_eq!((s.documents_total, s.documents_received), (1, 1), "{s:?}");
    assert_eq!(a.repo.notes(families[7])?.len(), 1);
    Ok(())
}

/// The pipelined session (docs/adr/0005): each document changed on either
/// side is one message each way, changes in the first one; nothing else.
#[test]
fn a_sync_after_offline_work_is_one_exchange_per_document() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let families: Vec<DocumentId> = (0..6)
        .map(|i| {
            a.repo.add_family(&NewFamily {
                name: format!("Family {i}"),
                ..Default::default()
            })
        })
        .collect::<Result<_>>()?;
    a.repo.sync(None)?;
    b.repo.sync(None)?;
    assert_eq!(b.repo.families()?.len(), 6);

    // Offline: B writes on three families, A on two others and syncs first.
    for f in &families[..3] {
        b.repo
            .add_note(*f, "Seen at the visit", NoteCategory::Visit)?;
    }
    for f in &families[3..5] {
        a.repo
            .add_note(*f, "Phoned the school", NoteCategory::School)?;
    }
    a.repo.sync(None)?;

    let s = b.repo.sync(None)?;
    // Sent: join, B's 3 documents (with their changes), an answer to each of
    // the 2 the relay sent unasked, leave. Received: peer, changed-since,
    // A's 2 documents, the relay's answers to B's 3.
    assert_eq!((s.messages_sent, s.messages_received), (7, 7), "{s:?}");
    assert_eq!((s.documents_sent, s.documents_received), (3, 2), "{s:?}");
    assert_eq!(b.repo.notes(families[3])?.len(), 1);

    // Nothing changed since: the relay has nothing to send, B nothing to say.
    let s = b.repo.sync(None)?;
    assert_eq!((s.messages_sent, s.messages_received), (2, 2), "{s:?}");
    a.repo.sync(None)?;
    for f in &families[..5] {
        assert_eq!(a.repo.heads(*f)?, b.repo.heads(*f)?);
    }
    Ok(())
}

#[test]
fn a_relay_that_evicts_idle_documents_still_serves_them_all() -> Result<()> {
    // Two documents in memory at most: everything else is reloaded from storage.
    let relay = Relay::start_with(&["--max-loaded-docs", "2"]);
    let a = Device::enrolled(&relay, "north", "Asha");
    let families: Vec<DocumentId> = (0..8)
        .map(|i| {
            a.repo.add_family(&NewFamily {
                name: format!("Family {i}"),
                ..Default::default()
            })
        })
        .collect::<Result<_>>()?;
    for f in &families {
        a.repo.add_note(*f, "first visit", NoteCategory::Visit)?;
    }
    a.repo.sync(None)?;
    for f in &families {
        a.repo.add_note(*f, "second visit", NoteCategory::Visit)?;
    }
    a.repo.sync(None)?;
    let b = Device::enrolled(&relay, "north", "Ben");
    let s = b.repo.sync(None)?;
    assert_eq!(s.documents_received, 9, "{s:?}");
    for f in &families {
        assert_eq!(b.repo.notes(*f)?.len(), 2);
        assert_eq!(b.repo.heads(*f)?, a.repo.heads(*f)?);
    }
    Ok(())
}

#[test]
fn a_device_used_offline_before_it_was_enrolled_brings_everything_into_the_team() -> Result<()> {
    // A new tablet used at a family day before anyone enrolled it: more
    // families than the store keeps loaded, a family day, check-ins.
    let relay = Relay::start();
    let tablet = Device::new();
    let families: Vec<DocumentId> = (0..40)
        .map(|i| {
            let id = tablet.add_family(&NewFamily {
                name: format!("Family {i}"),
                ..Default::default()
            })?;
            tablet.add_note(
                id,
                &format!("Met family {i} at the gate"),
                NoteCategory::Visit,
            )?;
            Ok(id)
        })
        .collect::<Result<_>>()?;
    let day = tablet.create_family_day(&NewFamilyDay {
        prison: "HMP Example".into(),
        date: Utc::now().date_naive(),
        capacity: None,
    })?;
    tablet.check_in(day, families[0], 2, 1)?;

    tablet.enrol(
        &relay.url,
        &relay.enrol_code("north", "Asha"),
        Some(&relay.ca_pem()),
        "tablet",
    )?;
    assert_eq!(tablet.profile().team, "north");
    assert_eq!(tablet.families()?.len(), 40);
    tablet.sync(None)?;

    let office = Device::enrolled(&relay, "north", "Ben");
    office.sync(None)?;
    assert_eq!(office.families()?.len(), 40);
    for (i, id) in families.iter().enumerate() {
        assert_eq!(
            office.notes(*id)?[0].text,
            format!("Met family {i} at the gate")
        );
    }
    assert_eq!(office.family_day(day)?.attendance.len(), 1);
    Ok(())
}
