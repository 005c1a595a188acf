//! Erasure: the office purges a family on the relay, and it is gone from the
//! relay and from every device at its next sync; no device can bring it back.

use linkbook_core::*;
use linkbook_tests::pages::{occurrences, plaintext_pages, relay_plaintext};
use linkbook_tests::{CliDevice, Device, Relay};

fn family(d: &Device, name: &str, note: &str) -> Result<DocumentId> {
    let id = d.add_family(&NewFamily {
        name: name.into(),
        ..Default::default()
    })?;
    d.add_note(id, note, NoteCategory::Visit)?;
    Ok(id)
}

/// Every page of the relay's database and WAL, decrypted with its
/// `relay.key` when it has one, and its other files as they are.
fn relay_files_contain(relay: &Relay, needle: &[u8]) -> bool {
    occurrences(&relay_plaintext(relay.data.path()), needle) > 0
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

/// Every page of a device's database and WAL, decrypted with its key.
fn device_pages(d: &Device) -> Vec<u8> {
    plaintext_pages(d.path(), Some(&d.key.to_bytes()))
}

/// A second connection on the device's store, keyed as the device keys it.
fn device_sql(d: &Device) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(d.path()).expect("open");
    conn.execute_batch(&format!(
        "PRAGMA key = \"x'{}'\"; PRAGMA cipher_log_level = NONE;",
        d.key.to_hex()
    ))
    .expect("key");
    conn
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// The FTS index's vocabulary (`fts5vocab`, in the temp schema: nothing is
/// written to the store).
fn fts_terms(conn: &rusqlite::Connection) -> Vec<String> {
    conn.execute_batch(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, notes_fts, row);",
    )
    .expect("fts5vocab");
    let mut stmt = conn.prepare("SELECT term FROM temp.vocab").expect("vocab");
    stmt.query_map([], |r| r.get(0))
        .expect("terms")
        .collect::<rusqlite::Result<_>>()
        .expect("terms")
}

/// How often `term` occurs in the rows the store keeps on purpose: the
/// documents (whose history keeps an edited note's old text, by design),
/// their changes and the notes projection.
fn live_occurrences(conn: &rusqlite::Connection, term: &str) -> usize {
    let mut n = 0;
    for sql in [
        "SELECT snapshot FROM documents",
        "SELECT data FROM changes",
        "SELECT CAST(text AS BLOB) FROM notes",
    ] {
        let mut stmt = conn.prepare(sql).expect(sql);
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).expect(sql);
        for row in rows {
            n += occurrences(&row.expect("row"), term.as_bytes());
        }
    }
    n
}

/// Issue 12, finding 1: a purge, a retention drop, a revocation wipe and a
/// note edit leave no erased term in any page of the device's database or
/// WAL (decrypted with the device's key), FTS shadow tables included, and
/// nothing of the family in the read log or the other tables.
#[test]
fn erasure_leaves_no_term_in_any_page_of_the_device_store() -> Result<()> {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let purged_text = "mother says dad is in hmp quagmireleeds son tommy bullied at oakfield";
    let retained_text = "closed case wombatretention housing moved away";
    let kept_text = "an ordinary visit with nothing erased";
    let purged = family(&a, "Xylopurgename", purged_text)?;
    let closed = family(&a, "Closedfamily", retained_text)?;
    let today = chrono::Utc::now().date_naive();
    a.close_family(closed, today - chrono::Duration::days(40), "support ended")?;
    let kept = family(&a, "Keptfamily", kept_text)?;
    let edited_note = a.add_note(kept, "first draft editoldterm", NoteCategory::Other)?;
    a.sync(None)?;
    b.sync(None)?;
    // Both devices read every case file (each read is logged).
    for d in [&a, &b] {
        for id in [purged, closed, kept] {
            d.family(id)?;
        }
        let pages = device_pages(d);
        assert!(
            occurrences(&pages, b"quagmireleeds") > 0,
            "helper finds live text"
        );
        assert!(occurrences(&pages, b"wombatretention") > 0);
    }

    // (a) a purge and (b) a retention drop, reaching A at its next sync.
    let r = relay.admin(&[
        "family",
        "purge",
        &purged.to_string(),
        "--reason",
        "erasure",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = relay.admin(&[
        "team",
        "policy",
        "--team",
        "north",
        "--retention-days",
        "30",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = relay.admin(&["retention", "apply", "--today", &today.to_string()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // (d) a plain edit that replaces a note's text.
    a.edit_note(kept, &edited_note, "final wording")?;
    let s = a.sync(None)?;
    assert_eq!(s.purged.len(), 2, "{s:?}");

    let pages = device_pages(&a);
    for term in [
        "quagmireleeds",
        "oakfield",
        "Xylopurgename",
        "wombatretention",
        "Closedfamily",
    ] {
        assert_eq!(
            occurrences(&pages, term.as_bytes()),
            0,
            "{term} is still in a page of the device store or its WAL"
        );
    }
    let conn = device_sql(&a);
    for id in [purged, closed] {
        let id = id.to_string();
        for sql in [
            "SELECT count(*) FROM read_log WHERE family_id = ?1",
            "SELECT count(*) FROM sync_states WHERE doc_id = ?1",
            "SELECT count(*) FROM conflicts WHERE doc_id = ?1",
            "SELECT count(*) FROM documents WHERE id = ?1",
            "SELECT count(*) FROM changes WHERE doc_id = ?1",
            "SELECT count(*) FROM notes WHERE family_id = ?1",
            "SELECT count(*) FROM skipped_documents WHERE doc_id = ?1",
        ] {
            let n: i64 = conn.query_row(sql, [&id], |r| r.get(0)).expect(sql);
            assert_eq!(n, 0, "{sql} for an erased family");
        }
    }
    // The edit: the old text stays in the note's history (workers see it),
    // but the index knows only the current text; and no page holds a copy
    // of the old text beyond the rows kept on purpose.
    assert!(a.search("editoldterm")?.is_empty());
    assert_eq!(a.search("wording")?.len(), 1);
    let terms = fts_terms(&conn);
    for gone in ["editoldterm", "draft", "quagmireleeds", "wombatretention"] {
        assert!(
            !terms.iter().any(|t| t == gone),
            "{gone} in the FTS vocabulary"
        );
    }
    assert!(terms.iter().any(|t| t == "wording"));
    let notes = a.notes(kept)?;
    let note = notes.iter().find(|n| n.id == edited_note).expect("note");
    assert!(
        note.history.iter().any(|h| h.text.contains("editoldterm")),
        "{note:?}"
    );
    // Between checkpoints the WAL holds earlier images of live pages (the
    // same live rows again), so the count is of the pages after one.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    let live = live_occurrences(&conn, "editoldterm");
    assert!(live > 0, "the history keeps the old text");
    let paged = occurrences(&device_pages(&a), b"editoldterm");
    assert!(
        paged <= live,
        "the old text is in {paged} places of the pages, {live} of them live"
    );
    drop(conn);

    // (c) B is revoked: at its next contact it wipes everything it holds.
    let id = b.profile().device_id;
    let r = relay.admin(&["device", "revoke", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(matches!(b.sync(None), Err(Error::Revoked)));
    let pages = device_pages(&b);
    for term in [
        "quagmireleeds",
        "wombatretention",
        "ordinary",
        "wording",
        "editoldterm",
        "Keptfamily",
        "Xylopurgename",
        "Asha",
    ] {
        assert_eq!(
            occurrences(&pages, term.as_bytes()),
            0,
            "{term} is still in a page of the wiped store or its WAL"
        );
    }
    let conn = device_sql(&b);
    // Left as a new device is: unenrolled, with the local team's empty
    // directory and nothing else.
    let local = linkbook_core::DocumentId::team_directory(linkbook_core::LOCAL_TEAM);
    assert_eq!(b.directory_id(), local);
    for table in ["documents WHERE id", "changes WHERE doc_id"] {
        assert_eq!(
            count(&conn, &format!("SELECT count(*) FROM {table} != '{local}'")),
            0,
            "{table} after a wipe"
        );
    }
    for table in [
        "read_log",
        "sync_states",
        "conflicts",
        "notes",
        "families",
        "family_days",
        "skipped_documents",
        "notes_fts",
    ] {
        assert_eq!(
            count(&conn, &format!("SELECT count(*) FROM {table}")),
            0,
            "{table} after a wipe"
        );
    }
    assert!(fts_terms(&conn).is_empty());
    Ok(())
}

/// A revoked CLI profile removes its key file, and the database it opened
/// (useless without it).
#[test]
fn a_wiped_cli_profile_removes_its_key_file() {
    let relay = Relay::start();
    let d = CliDevice {
        dir: tempfile::tempdir().expect("dir"),
        key: None,
    };
    d.enrol(&relay, "north", "Asha");
    d.ok(&["family", "add", "--name", "Smith"]);
    d.ok(&["sync"]);
    assert!(d.data().join("key").exists());
    let id = d.json(&["profile", "show"])["device_id"]
        .as_str()
        .expect("device id")
        .to_string();
    let r = relay.admin(&["device", "revoke", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = d.run(&["sync"]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    let left: Vec<String> = std::fs::read_dir(d.data())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in the wiped profile: {left:?}");
    // The directory works as a new, unenrolled profile.
    let r = d.run(&["family", "list"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
