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
