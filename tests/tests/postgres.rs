//! The relay on PostgreSQL (`--database-url`, issue 14): a real cluster in
//! a temp dir (test-support/src/postgres.rs), real relay processes, real
//! devices over TLS.

use std::process::Command;

use linkbook_core::*;
use linkbook_test_support::postgres::Cluster;
use linkbook_tests::{Device, Relay, note_texts, workspace_bin};

fn database_name(url: &str) -> &str {
    url.rsplit('/').next().expect("a database name")
}

#[test]
fn devices_sync_through_a_relay_on_postgresql_which_keeps_nothing_in_its_data_directory()
-> Result<()> {
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let relay = Relay::start_on_postgres(tempfile::tempdir().expect("dir"), &url, &[]);
    let asha = Device::enrolled(&relay, "north", "Asha");
    let ben = Device::enrolled(&relay, "north", "Ben");
    let south = Device::enrolled(&relay, "south", "Sam");

    let family = asha.add_family(&NewFamily {
        name: "Okafor".into(),
        ..Default::default()
    })?;
    asha.add_note(family, "Met at the visitor centre", NoteCategory::Visit)?;
    asha.sync(None)?;
    ben.sync(None)?;
    south.sync(None)?;
    assert_eq!(note_texts(&ben, family), ["Met at the visitor centre"]);
    assert!(
        matches!(south.notes(family), Err(Error::NotFound { .. })),
        "another team's device holds nothing of it"
    );

    // The data is in PostgreSQL, not beside the certificate.
    let db = database_name(&url);
    assert_eq!(pg.sql(db, "SELECT count(*) FROM devices"), "3");
    assert!(
        !relay.data.path().join("relay.db").exists(),
        "no SQLite file in the data directory"
    );

    // A restarted relay has everything: an acknowledged change was committed.
    let relay = Relay::start_on_postgres(relay.stop(), &url, &[]);
    let carl = Device::enrolled(&relay, "north", "Carl");
    carl.sync(None)?;
    assert_eq!(note_texts(&carl, family), ["Met at the visitor centre"]);
    carl.add_note(family, "Phoned about the school", NoteCategory::PhoneCall)?;
    carl.sync(None)?;

    // The office purges through the admin command, against the database.
    let purged = relay.admin(&["family", "purge", &family.to_string(), "--reason", "asked"]);
    assert_eq!(purged.code, 0, "{purged:?}");
    carl.sync(None)?;
    assert!(matches!(carl.notes(family), Err(Error::NotFound { .. })));
    assert_eq!(
        pg.sql(db, "SELECT count(*) FROM changes"),
        pg.sql(
            db,
            &format!("SELECT count(*) FROM changes WHERE doc_id <> '{family}'")
        ),
        "nothing of the purged family is left in the database"
    );
    Ok(())
}

#[test]
fn a_database_off_loopback_without_tls_is_refused_before_anything_is_sent() {
    let data = tempfile::tempdir().expect("dir");
    let out = Command::new(workspace_bin("linkbook-server"))
        .arg("--data")
        .arg(data.path())
        .args([
            "--database-url",
            "postgres://linkbook@192.0.2.1/linkbook",
            "device",
            "list",
        ])
        .output()
        .expect("run linkbook-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("sslmode"), "says how to fix it: {stderr}");
}

/// Issue 14 on PostgreSQL: `backup` refuses naming pg_dump; a database
/// restored from a dump taken before a purge gets the purge back from the
/// erasure ledger, by `erasures replay` and at the relay's start, before
/// any device connects; a device that never heard of the purge deletes the
/// family.
#[test]
fn a_restored_dump_gets_its_purges_back_from_the_erasure_ledger() -> Result<()> {
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let relay = Relay::start_on_postgres(tempfile::tempdir().expect("dir"), &url, &[]);
    let asha = Device::enrolled(&relay, "north", "Asha");
    let family = asha.add_family(&NewFamily {
        name: "Okafor".into(),
        ..Default::default()
    })?;
    asha.add_note(family, "Met at the visitor centre", NoteCategory::Visit)?;
    asha.sync(None)?;

    let file = relay.data.path().join("nothing.backup");
    let refused = relay.admin(&["backup", file.to_str().expect("utf-8")]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("pg_dump"), "{}", refused.stderr);
    assert!(!file.exists());

    let dump = pg.dump(database_name(&url));
    let purged = relay.admin(&["family", "purge", &family.to_string(), "--reason", "asked"]);
    assert_eq!(purged.code, 0, "{purged:?}");
    let data = relay.stop();
    let ledger = linkbook_tests::erasure_ledger_of(data.path());
    assert_eq!(
        std::fs::read_to_string(&ledger)
            .expect("ledger")
            .lines()
            .count(),
        1
    );

    // Restored by hand, then replayed before any relay serves it.
    let restored = pg.fresh_database();
    let restored_db = database_name(&restored);
    pg.load(restored_db, &dump);
    let in_dump = format!("SELECT count(*) FROM documents WHERE id = '{family}'");
    assert_eq!(
        pg.sql(restored_db, &in_dump),
        "1",
        "the dump holds the family"
    );
    let out = Command::new(workspace_bin("linkbook-server"))
        .arg("--data")
        .arg(data.path())
        .env("LINKBOOK_DATABASE_URL", &restored)
        .args(["erasures", "replay"])
        .output()
        .expect("replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 records, 1 purged again"), "{stdout}");
    assert_eq!(pg.sql(restored_db, &in_dump), "0");
    assert_eq!(pg.sql(restored_db, "SELECT count(*) FROM purged"), "1");

    // Restored again, and replayed by the relay's own start.
    let again = pg.fresh_database();
    let again_db = database_name(&again);
    pg.load(again_db, &dump);
    let relay = Relay::start_on_postgres(data, &again, &[]);
    assert_eq!(pg.sql(again_db, &in_dump), "0");
    assert_eq!(
        pg.sql(
            again_db,
            "SELECT count(*) FROM audit WHERE action = 'purged' AND worker = 'erasure ledger replay'"
        ),
        "1"
    );
    // Asha never heard of the purge: she is told, deletes it, and it is
    // not stored again.
    let s = asha.sync_through(&relay.url, None)?;
    assert_eq!(s.purged, vec![family.to_string()], "{s:?}");
    assert!(matches!(asha.notes(family), Err(Error::NotFound { .. })));
    assert_eq!(pg.sql(again_db, &in_dump), "0");
    Ok(())
}
