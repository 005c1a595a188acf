//! What each erasure costs on a 1,000-family store (time, and the database
//! and WAL sizes before and after): ignored by default, the figures are in
//! ARCHITECTURE.md. Run with
//! `cargo test -p linkbook-core --lib erasure_cost -- --ignored --nocapture`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, Utc};

use crate::error::Result;
use crate::repo::Repo;
use crate::store::DatabaseKey;
use crate::{DocumentId, NewFamily, NoteCategory};

const FAMILIES: usize = 1_000;
const NOTES: usize = 3;

fn sizes(db: &Path) -> (u64, u64) {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = db.with_file_name(format!(
        "{}-wal",
        db.file_name().and_then(|n| n.to_str()).unwrap_or("")
    ));
    (len(db), len(&wal))
}

fn note(i: usize, j: usize) -> String {
    format!(
        "visit {j} to family {i}: mother says dad is in hmp leeds, son age {} doing \
         better at school; next visit booked, travel grant discussed, no new concerns",
        5 + i % 10
    )
}

#[test]
#[ignore = "a measurement: a minute or more in debug"]
fn erasure_cost() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| crate::Error::Io {
        context: "tempdir".into(),
        source: e,
    })?;
    let db = dir.path().join("linkbook.db");
    let key = DatabaseKey::generate();
    let repo = Repo::open_with_clock(&db, &key, Arc::new(Utc::now))?;
    let started = Instant::now();
    let mut ids: Vec<DocumentId> = Vec::new();
    let long_ago = Utc::now().date_naive() - Duration::days(400);
    for i in 0..FAMILIES {
        let id = repo.add_family(&NewFamily {
            name: format!("Family{i}"),
            ..Default::default()
        })?;
        for j in 0..NOTES {
            repo.add_note(id, &note(i, j), NoteCategory::Visit)?;
        }
        if i < 10 {
            repo.close_family(id, long_ago, "support ended")?;
        }
        ids.push(id);
    }
    crate::store::truncate_wal(&crate::store::open_connection(&db, &key)?)?;
    println!(
        "built {FAMILIES} families x {NOTES} notes in {:?}; db+wal {:?}",
        started.elapsed(),
        sizes(&db)
    );

    let measure = |what: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let before = sizes(&db);
        let t = Instant::now();
        f()?;
        println!(
            "{what}: {:?}; db, wal bytes before {before:?} after {:?}",
            t.elapsed(),
            sizes(&db)
        );
        Ok(())
    };
    let notes = repo.notes(ids[500])?;
    measure("edit_note (one)", &mut || {
        repo.edit_note(ids[500], &notes[0].id, "rewritten text")
    })?;
    measure("purge of one family", &mut || {
        repo.apply_purges(&[(ids[900], Utc::now().to_rfc3339())])
            .map(|_| ())
    })?;
    let ten: Vec<(DocumentId, String)> = ids[910..920]
        .iter()
        .map(|id| (*id, Utc::now().to_rfc3339()))
        .collect();
    measure("purge of ten families", &mut || {
        repo.apply_purges(&ten).map(|_| ())
    })?;
    repo.record_policy(Some(30), None)?;
    measure("retention drop of ten closed families", &mut || {
        repo.apply_retention()
            .map(|dropped| assert_eq!(dropped.len(), 10))
    })?;
    measure("FTS rebuild (migration 007, once per store)", &mut || {
        repo.with_writer_tx(|tx| {
            tx.execute("INSERT INTO notes_fts(notes_fts) VALUES ('rebuild')", [])?;
            Ok(())
        })
    })?;
    measure("wipe (revoked)", &mut || repo.wipe())?;
    Ok(())
}
