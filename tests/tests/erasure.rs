//! Erasure: the office purges a family on the relay, and it is gone from the
//! relay and from every device at its next sync; no device can bring it back.

use linkbook_core::*;
use linkbook_tests::{Device, Relay};

fn family(d: &Device, name: &str, note: &str) -> Result<DocumentId> {
    let id = d.add_family(&NewFamily {
        name: name.into(),
        ..Default::default()
    })?;
    d.add_note(id, note, NoteCategory::Visit)?;
    Ok(id)
}

fn relay_files_contain(relay: &Relay, needle: &[u8]) -> bool {
    std::fs::read_dir(relay.data.path())
        .expect("relay dir")
        .filter_map(|e| std::fs::read(e.expect("entry").path()).ok())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
}

#[test]
fn a_purged_family_is_gone_from_the_relay_and_every_device_and_cannot_come_back() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let secret = "zebracrossing disclosure at the visit";
    let purged = family(&a, "Zyxwvufamily", secret)?;
    let kept = family(&a, "Kept", "an ordinary visit")?;
    a.sync(None)?;
    b.sync(None)?;
    assert_eq!(b.notes(purged)?.len(), 1);
    assert!(relay_files_contain(&relay, b"zebracrossing"));
    assert!(relay_files_contain(&relay, b"Zyxwvufamily"));
    // An export made before the purge, and B's offline edit to the family.
    let old_export = b.export()?;
    b.add_note(
        purged,
        "written offline after the purge",
        NoteCategory::Other,
    )?;

    let r = relay.admin(&[
        "family",
        "purge",
        &purged.to_string(),
        "--reason",
        "erasure request",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // The relay holds nothing of it any more: not its notes, not its name
    // (the team directory, whose history stays, never held the name).
    assert!(!relay_files_contain(&relay, b"zebracrossing"));
    assert!(!relay_files_contain(&relay, b"Zyxwvufamily"));
    // Purging again, or purging what is not a family, is refused.
    let again = relay.admin(&["family", "purge", &purged.to_string(), "--reason", "x"]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("purged already"), "{}", again.stderr);
    let directory = relay.admin(&[
        "family",
        "purge",
        &a.directory_id().to_string(),
        "--reason",
        "x",
    ]);
    assert_ne!(directory.code, 0);
    assert!(
        directory.stderr.contains("not a family"),
        "{}",
        directory.stderr
    );

    // Each device deletes it at its next sync and is told (by id only).
    for d in [&a, &b] {
        let s = d.sync(None)?;
        assert_eq!(s.purged, vec![purged.to_string()], "{s:?}");
        assert!(matches!(d.family(purged), Err(Error::NotFound { .. })));
        assert!(d.families()?.iter().all(|f| f.id != purged));
        assert!(d.search("zebracrossing")?.is_empty());
        assert!(!d.directory_listing()?.contains(&purged));
        assert_eq!(d.notes(kept)?.len(), 1);
        // Told once.
        assert!(d.sync(None)?.purged.is_empty());
    }

    // B's pre-purge export cannot bring it back on B...
    let summary = b.import(&old_export)?;
    assert_eq!(summary.documents_purged, 1, "{summary:?}");
    assert!(matches!(b.family(purged), Err(Error::NotFound { .. })));
    // ...and a device that never heard of the purge cannot upload it: the
    // relay refuses it even when asked for it directly.
    let stale = Device::enrolled(&relay, "north", "Cleo");
    stale.import(&old_export)?;
    assert_eq!(stale.notes(purged)?.len(), 1);
    let s = stale.sync_documents(&[purged], None)?;
    assert_eq!(s.documents_unavailable, 1, "{s:?}");
    assert!(!relay_files_contain(&relay, b"zebracrossing"));

    // A new device of the team gets everything else, not the purged family.
    let fresh = Device::enrolled(&relay, "north", "Dev");
    fresh.sync(None)?;
    let families: Vec<DocumentId> = fresh.families()?.into_iter().map(|f| f.id).collect();
    assert_eq!(families, vec![kept]);
    Ok(())
}

#[test]
fn subject_access_finds_every_family_that_names_a_person_and_is_audited() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let own = family(&a, "Okoro", "Home visit")?;
    a.add_member(
        own,
        &NewMember {
            name: "Adaeze Okoro".into(),
            role: MemberRole::Child,
            relationship: Some("daughter".into()),
            date_of_birth: None,
            school: Some("Hill Primary".into()),
            looked_after: false,
            social_worker: None,
        },
    )?;
    let mentioned = family(&a, "Smith", "Met ADAEZE's mum at the school gate")?;
    let unrelated = family(&a, "Jones", "Nothing about her")?;
    a.sync(None)?;

    let r = relay.admin(&["export-person", "--name", "adaeze"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    let families = out["families"].as_array().expect("families");
    let ids: Vec<&str> = families
        .iter()
        .filter_map(|f| f["family_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    for id in [own, mentioned] {
        assert!(ids.contains(&id.to_string().as_str()), "{id} missing");
    }
    assert!(!ids.contains(&unrelated.to_string().as_str()));
    // The whole record, with what matched and the family's audit.
    let okoro = families
        .iter()
        .find(|f| f["family_id"] == own.to_string())
        .expect("Okoro");
    assert!(okoro["record"].to_string().contains("Hill Primary"));
    assert!(!okoro["matched_at"].as_array().expect("paths").is_empty());
    assert!(
        okoro["audit"]
            .as_array()
            .expect("audit")
            .iter()
            .any(|e| e["action"] == "uploaded")
    );
    let smith = families
        .iter()
        .find(|f| f["family_id"] == mentioned.to_string())
        .expect("Smith");
    assert!(smith["record"].to_string().contains("school gate"));

    // By family id; and the export itself is in the audit.
    let r = relay.admin(&["export-person", "--family", &unrelated.to_string()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Nothing about her"));
    let audit = relay.admin(&["audit", "--family", &own.to_string()]);
    assert!(
        audit.stdout.contains("subject access export"),
        "{}",
        audit.stdout
    );

    // Bad input is refused with a reason.
    for args in [
        vec!["export-person", "--name", "a"],
        vec!["export-person", "--family", "not-an-id"],
        vec![
            "export-person",
            "--family",
            &DocumentId::random().to_string(),
        ],
        vec!["export-person"],
    ] {
        let r = relay.admin(&args);
        assert_ne!(r.code, 0, "{args:?} was accepted");
        assert!(!r.stderr.trim().is_empty());
    }
    Ok(())
}
