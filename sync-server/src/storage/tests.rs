//! Every backend runs the contract; then what only SQLite has.
#![allow(clippy::expect_used)]

use chrono::Utc;
use rusqlite::Connection;

use super::contract::id;
use super::sqlite::MIGRATIONS;
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_storage_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut n = 0;
    contract::run(|| {
        n += 1;
        let path = dir.path().join(format!("relay-{n}.db"));
        async move { SqliteStorage::open(&path).expect("open") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_keeps_the_storage_contract() {
    contract::run(|| async { MemoryStorage::new() }).await;
}

/// A device is told its change is stored only after the commit; with
/// `synchronous=FULL` the WAL is fsynced at that commit, so the change
/// survives a power cut too (WAL with `NORMAL` survives a process kill
/// but may lose the last commits to a power cut). Guards against a
/// speed-up that quietly weakens it.
#[test]
fn every_commit_is_fsynced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = SqliteStorage::open(&dir.path().join("relay.db")).expect("open");
    let conn = storage.conn();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode");
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .expect("synchronous");
    assert_eq!((mode.as_str(), synchronous), ("wal", 2), "2 is FULL");
}

/// The audit is append-only in the database itself: an UPDATE or DELETE
/// by any connection (a hand-run query, a bug) is refused.
#[tokio::test]
async fn the_database_refuses_to_change_the_audit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = SqliteStorage::open(&dir.path().join("relay.db")).expect("open");
    s.append_audit(&[AuditRecord::new(AuditAction::Connected, Utc::now())])
        .await
        .expect("append");
    let conn = s.conn();
    for sql in ["UPDATE audit SET action = 'nothing'", "DELETE FROM audit"] {
        let e = conn.execute(sql, []).expect_err(sql);
        assert!(e.to_string().contains("append-only"), "{e}");
    }
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'connected'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 1);
}

/// A schema-7 database keeps every document, change, sync state and
/// purge through migration 8, and the change cursor never goes back
/// (compaction had deleted the change with the highest seq); migration
/// 12 records what the stored snapshots cover.
#[tokio::test]
async fn schema_7_data_migrates_to_team_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("relay.db");
    {
        let mut conn = Connection::open(&path).expect("open");
        for (i, sql) in MIGRATIONS.iter().take(7).enumerate() {
            let tx = conn.transaction().expect("tx");
            tx.execute_batch(sql).expect("migration");
            tx.pragma_update(None, "user_version", (i + 1) as u32)
                .expect("version");
            tx.commit().expect("commit");
        }
        conn.execute_batch(&format!(
            "INSERT INTO devices (id, team, worker, device_name, token_hash, enrolled_at)
                 VALUES ('n1', 'north', 'Asha', 'tablet', x'01', 't'),
                        ('s1', 'south', 'Ben', 'phone', x'02', 't');
             INSERT INTO documents (id, team, snapshot, change_count, created_at, seq, last_device)
                 VALUES ('{a}', 'north', x'aa', 1, 't', 0, 'n1'),
                        ('{b}', 'south', NULL, 1, 't', 0, 's1');
             INSERT INTO changes (doc_id, data) VALUES ('{a}', x'a1'), ('{b}', x'b1'), ('{a}', x'a2');
             UPDATE documents SET seq = 3 WHERE id = '{a}';
             UPDATE documents SET seq = 2 WHERE id = '{b}';
             DELETE FROM changes WHERE seq = 3;
             INSERT INTO sync_states (doc_id, device_id, state) VALUES ('{a}', 'n1', x'5a'), ('{b}', 's1', x'5b');
             INSERT INTO purged (doc_id, team, reason, purged_at) VALUES ('{p}', 'north', 'r', 't');",
            a = id("a"),
            b = id("b"),
            p = id("p"),
        ))
        .expect("schema-7 rows");
    }
    let s = SqliteStorage::open(&path).expect("migrates");
    let a = s
        .load_document(&Team::from("north"), id("a"))
        .await
        .expect("load")
        .expect("a");
    assert_eq!(a.snapshot.as_deref(), Some(&[0xaa][..]));
    assert_eq!(a.changes, vec![vec![0xa1]]);
    assert!(
        s.load_document(&Team::from("south"), id("a"))
            .await
            .expect("load")
            .is_none()
    );
    let b = s
        .load_document(&Team::from("south"), id("b"))
        .await
        .expect("load")
        .expect("b");
    assert_eq!(b.changes, vec![vec![0xb1]]);
    assert_eq!(
        s.sync_state(&Team::from("north"), id("a"), &DeviceId::from("n1"))
            .await
            .expect("state"),
        Some(vec![0x5a])
    );
    assert_eq!(
        s.sync_state(&Team::from("south"), id("b"), &DeviceId::from("s1"))
            .await
            .expect("state"),
        Some(vec![0x5b])
    );
    assert!(
        s.is_purged(&Team::from("north"), id("p"))
            .await
            .expect("purged")
    );
    assert!(
        !s.is_purged(&Team::from("south"), id("p"))
            .await
            .expect("purged")
    );
    // 'a' keeps its change 1 beside the snapshot: a compaction through the
    // cursor before it would go back, and is refused.
    assert!(
        !s.compact(&Team::from("north"), id("a"), b"old", -1)
            .await
            .expect("refused")
    );
    // The next change's seq is past every cursor handed out (3).
    let up = Upload {
        team: &Team::from("south"),
        doc_id: id("b"),
        uploader: "s1",
        changes: b"b2",
        snapshot: None,
        audit: &[],
        at: Utc::now(),
    };
    s.commit_upload(&up).await.expect("append");
    let (cursor, ids) = s
        .changed_since(&Team::from("south"), 3, "other")
        .await
        .expect("changed");
    assert!(cursor > 3, "{cursor}");
    assert_eq!(ids, [(id("b"), cursor)]);
    let conn = s.conn();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(check, "ok");
    let fk: Vec<String> = conn
        .prepare("PRAGMA foreign_key_check")
        .expect("fk")
        .query_map([], |r| r.get(0))
        .expect("fk rows")
        .collect::<rusqlite::Result<_>>()
        .expect("fk");
    assert!(fk.is_empty(), "{fk:?}");
}

/// Documents stored before schema 13 are marked for projection by the
/// migration, so the console's reports count them after an upgrade.
#[tokio::test]
async fn documents_from_before_the_console_are_marked_for_projection() {
    use super::ConsoleStore;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("relay.db");
    {
        let mut conn = Connection::open(&path).expect("open");
        for (i, sql) in MIGRATIONS.iter().take(12).enumerate() {
            let tx = conn.transaction().expect("tx");
            tx.execute_batch(sql).expect("migration");
            tx.pragma_update(None, "user_version", (i + 1) as u32)
                .expect("version");
            tx.commit().expect("commit");
        }
        conn.execute_batch(&format!(
            "INSERT INTO documents (id, team, snapshot, change_count, created_at, seq, last_device)
                 VALUES ('{a}', 'north', x'aa', 1, 't', 4, NULL);",
            a = id("a"),
        ))
        .expect("schema-12 rows");
    }
    let s = SqliteStorage::open(&path).expect("migrates");
    let dirty = s.dirty_projections(10).await.expect("dirty");
    assert_eq!(dirty.len(), 1);
    assert_eq!((dirty[0].team.as_str(), dirty[0].id), ("north", id("a")));
}
