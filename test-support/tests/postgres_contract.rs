//! The PostgreSQL backend against a real server (a throwaway cluster on
//! loopback, `linkbook_test_support::postgres`): the storage contract every
//! backend keeps, and what only the database itself can show (the audit's
//! trigger, the migrations' bookkeeping).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use chrono::Utc;
use linkbook_server::storage::prelude::*;
use linkbook_server::storage::{AuditAction, AuditRecord, PostgresStorage};
use linkbook_test_support::postgres::Cluster;

/// Every await on the database is bounded: a hung server fails the test.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(300), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took over 300 s"))
}

async fn connect(url: &str) -> PostgresStorage {
    bounded("connect", PostgresStorage::connect(url))
        .await
        .expect("connect to the test cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_storage_contract() {
    let cluster = Cluster::start();
    bounded(
        "the contract suite",
        linkbook_server::storage::contract::run(|| async {
            connect(&cluster.fresh_database()).await
        }),
    )
    .await;
}

/// The audit is append-only in the database itself: an UPDATE, DELETE or
/// TRUNCATE by any connection (a hand-run query, a bug) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_to_change_the_audit() {
    let cluster = Cluster::start();
    let url = cluster.fresh_database();
    let db = url.rsplit('/').next().expect("database name").to_string();
    let s = connect(&url).await;
    s.append_audit(&[AuditRecord::new(AuditAction::Connected, Utc::now())])
        .await
        .expect("append");
    for sql in [
        "UPDATE audit SET action = 'nothing'",
        "DELETE FROM audit",
        "DELETE FROM audit WHERE false",
        "TRUNCATE audit",
    ] {
        let e = cluster.try_sql(&db, sql).expect_err(sql);
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(cluster.sql(&db, "SELECT count(*) FROM audit"), "1");
    assert_eq!(
        s.audit_log(None, None, None).await.expect("audit")[0].action,
        AuditAction::Connected
    );
}

/// Migrations are recorded once, a second relay (or a restart) on the same
/// database applies nothing, and a database from a newer relay is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let cluster = Cluster::start();
    let url = cluster.fresh_database();
    let db = url.rsplit('/').next().expect("database name").to_string();
    // Nodes starting together: the advisory lock lets one migrate.
    let (a, b) = tokio::join!(
        PostgresStorage::connect(&url),
        PostgresStorage::connect(&url)
    );
    a.expect("first node");
    b.expect("second node");
    let once = cluster.sql(
        &db,
        "SELECT count(*) = max(version) AND min(version) = 1 FROM schema_migrations",
    );
    assert_eq!(once, "t", "each version recorded once");
    connect(&url).await;
    cluster.sql(&db, "INSERT INTO schema_migrations (version) VALUES (999)");
    let e = PostgresStorage::connect(&url)
        .await
        .expect_err("newer schema");
    assert!(
        e.to_string().contains("newer than this linkbook-server"),
        "{e}"
    );
}

/// A purge racing uploads of the document on other connections (another
/// relay node, the admin command): once the purge commits, nothing of the
/// document is left and every later upload is refused, whatever the
/// interleaving (the team's cursor row orders them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_racing_uploads_leaves_nothing_behind() {
    use linkbook_server::storage::contract::id;
    use linkbook_server::storage::{StorageError, Team};
    use std::sync::Arc;

    let cluster = Cluster::start();
    let url = cluster.fresh_database();
    let db = url.rsplit('/').next().expect("database name").to_string();
    let s = Arc::new(connect(&url).await);
    let team = Team::from("north");
    upload_to(&s, &team, 0).await.expect("first upload");
    let mut writers = Vec::new();
    for w in 0..4 {
        let (s, team) = (s.clone(), team.clone());
        writers.push(tokio::spawn(async move {
            // Until the purge refuses them: it lands mid-stream.
            for i in 0..2_000 {
                match upload_to(&s, &team, w * 10_000 + i).await {
                    Ok(_) => {}
                    Err(StorageError::Purged) => return true,
                    Err(e) => panic!("upload: {e}"),
                }
            }
            false
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        bounded(
            "purge",
            s.purge_document(
                &team,
                id("doc"),
                "erasure",
                "office administrator",
                Utc::now()
            )
        )
        .await
        .expect("purge")
    );
    for w in writers {
        assert!(w.await.expect("writer"), "the purge came while it wrote");
    }
    assert_eq!(
        upload_to(&s, &team, 999).await.unwrap_err(),
        StorageError::Purged,
        "refused after the purge"
    );
    assert!(
        s.load_document(&team, id("doc"))
            .await
            .expect("load")
            .is_none()
    );
    assert!(!s.document_exists(&team, id("doc")).await.expect("exists"));
    assert!(
        s.changed_since(&team, 0, "someone")
            .await
            .expect("changed")
            .1
            .is_empty()
    );
    assert_eq!(
        cluster.sql(
            &db,
            "SELECT (SELECT count(*) FROM changes) + (SELECT count(*) FROM documents)"
        ),
        "0"
    );
}

/// One change to the suite's document "doc" of `team`.
async fn upload_to(
    s: &PostgresStorage,
    team: &linkbook_server::storage::Team,
    n: usize,
) -> Result<linkbook_server::storage::Committed, linkbook_server::storage::StorageError> {
    let bytes = format!("change-{n}").into_bytes();
    s.commit_upload(&linkbook_server::storage::Upload {
        team,
        doc_id: linkbook_server::storage::contract::id("doc"),
        uploader: "writer",
        changes: &bytes,
        snapshot: None,
        audit: &[],
        at: Utc::now(),
    })
    .await
}

/// The change cursor is commit-ordered, shown deterministically (the
/// contract's racing reader catches a plain sequence only sometimes): a
/// hand-held lock on document x's row stalls an upload of x after it took
/// its cursor value; an upload of y in the same team meanwhile must not
/// commit a larger value first, or a reader would move its cursor past x's
/// value before x's change commits, and never see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_late_is_never_skipped() {
    use linkbook_server::storage::Team;
    use linkbook_server::storage::contract::id;
    use std::sync::Arc;
    use std::time::Duration;

    let cluster = Arc::new(Cluster::start());
    let url = cluster.fresh_database();
    let db = url.rsplit('/').next().expect("database name").to_string();
    let s = Arc::new(connect(&url).await);
    let team = Team::from("north");
    for doc in ["x", "y"] {
        upload_doc(&s, &team, doc, "first").await.expect("first");
    }
    let (start, _) = s.changed_since(&team, 0, "reader").await.expect("read");
    let holder = {
        let (cluster, db) = (cluster.clone(), db.clone());
        let sql = format!(
            "BEGIN; SELECT 1 FROM documents WHERE id = '{}' FOR UPDATE; SELECT pg_sleep(2); COMMIT;",
            id("x")
        );
        tokio::task::spawn_blocking(move || cluster.try_sql(&db, &sql))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let x = tokio::spawn({
        let (s, team) = (s.clone(), team.clone());
        async move { upload_doc(&s, &team, "x", "late").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let y = tokio::spawn({
        let (s, team) = (s.clone(), team.clone());
        async move { upload_doc(&s, &team, "y", "early").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (middle, seen) = s.changed_since(&team, start, "reader").await.expect("read");
    let x = bounded("x", x).await.expect("task").expect("x");
    let y = bounded("y", y).await.expect("task").expect("y");
    holder
        .await
        .expect("holder")
        .expect("the lock holder's SQL");
    let (_, after) = s
        .changed_since(&team, middle, "reader")
        .await
        .expect("read");
    let covered = if x.seq <= middle { &seen } else { &after };
    assert!(
        covered.iter().any(|(d, _)| *d == id("x")),
        "x's change {} was skipped: read ({start}, {middle}] saw {seen:?}",
        x.seq
    );
    assert!(x.seq < y.seq, "y waited for x's commit: {x:?} {y:?}");
}

async fn upload_doc(
    s: &PostgresStorage,
    team: &linkbook_server::storage::Team,
    doc: &str,
    bytes: &str,
) -> Result<linkbook_server::storage::Committed, linkbook_server::storage::StorageError> {
    s.commit_upload(&linkbook_server::storage::Upload {
        team,
        doc_id: linkbook_server::storage::contract::id(doc),
        uploader: "writer",
        changes: bytes.as_bytes(),
        snapshot: None,
        audit: &[],
        at: Utc::now(),
    })
    .await
}

/// The document watch several relay nodes keep their copies fresh by:
/// another connection's uploads and purges arrive once each, in commit
/// order, with the cursor value they committed at; a rolled-back upload
/// (refused: purged) tells nothing; a lost listening connection comes back
/// and says events may have been missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_commits_are_watched_in_order() {
    use linkbook_server::storage::contract::id;
    use linkbook_server::storage::{DocumentEvent, StorageError, Team};

    let cluster = Cluster::start();
    let url = cluster.fresh_database();
    let db = url.rsplit('/').next().expect("database name").to_string();
    let node1 = connect(&url).await;
    let node2 = connect(&url).await;
    let mut events = node2
        .watch_documents()
        .await
        .expect("watch")
        .expect("PostgreSQL has a watch");
    assert_eq!(
        next(&mut events).await,
        DocumentEvent::Missed,
        "first: check everything"
    );
    let north = Team::from("north");
    let mut committed = Vec::new();
    for (doc, bytes) in [("x", "1"), ("y", "2"), ("x", "3")] {
        committed.push((
            doc,
            upload_doc(&node1, &north, doc, bytes)
                .await
                .expect("upload")
                .seq,
        ));
    }
    for (doc, seq) in committed {
        assert_eq!(
            next(&mut events).await,
            DocumentEvent::Changed {
                team: north.clone(),
                id: id(doc),
                seq
            }
        );
    }
    assert!(
        node1
            .purge_document(&north, id("x"), "test", "office administrator", Utc::now())
            .await
            .expect("purge")
    );
    assert_eq!(
        next(&mut events).await,
        DocumentEvent::Purged {
            team: north.clone(),
            id: id("x")
        }
    );
    assert!(matches!(
        upload_doc(&node1, &north, "x", "again").await,
        Err(StorageError::Purged)
    ));
    // The listening connection is cut by the server (an administrator, a
    // failover): the watch reconnects and says so before anything else.
    cluster.sql(
        &db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
    );
    assert_eq!(
        next(&mut events).await,
        DocumentEvent::Missed,
        "the refused upload told nothing; the reconnect says check"
    );
    let seq = upload_doc(&node1, &north, "y", "after")
        .await
        .expect("upload")
        .seq;
    assert_eq!(
        next(&mut events).await,
        DocumentEvent::Changed {
            team: north,
            id: id("y"),
            seq
        }
    );
}

/// The watch's next event, within 20 s.
async fn next(
    events: &mut linkbook_server::storage::DocumentEvents,
) -> linkbook_server::storage::DocumentEvent {
    tokio::time::timeout(std::time::Duration::from_secs(20), events.recv())
        .await
        .expect("an event within 20 s")
        .expect("the watch runs")
}

/// The console's report projections on PostgreSQL: a family stored by an
/// upload is marked dirty in that upload's transaction, projected by the
/// relay's projector (facts only: no name, no note text), reprojected after
/// a later upload, and gone with a purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_report_projections_as_documents_arrive() {
    use linkbook_core::{MemberRole, NewFamily, NewMember, NoteCategory};
    use linkbook_server::console::projector::{self, FamilyFacts};
    use linkbook_server::storage::{ProjectionKind, Team, Upload};

    let cluster = Cluster::start();
    let s = connect(&cluster.fresh_database()).await;
    let device = linkbook_test_support::store::Device::of_worker("Asha");
    let repo = &device.repo;
    let family = repo
        .add_family(&NewFamily {
            name: "Okafor".into(),
            ..Default::default()
        })
        .expect("family");
    repo.add_member(
        family,
        &NewMember {
            name: "Tobi Okafor".into(),
            role: MemberRole::Child,
            relationship: None,
            date_of_birth: Some("2019-05-04".parse().expect("date")),
            school: None,
            looked_after: false,
            social_worker: None,
        },
    )
    .expect("member");
    repo.add_note(family, "NOTE-SECRET-pg visit", NoteCategory::Visit)
        .expect("note");
    let north = Team::from("north");
    async fn upload(s: &PostgresStorage, team: &Team, id: linkbook_core::DocumentId, bytes: &[u8]) {
        s.commit_upload(&Upload {
            team,
            doc_id: id,
            uploader: "device-1",
            changes: bytes,
            snapshot: Some(bytes),
            audit: &[],
            at: Utc::now(),
        })
        .await
        .expect("upload");
    }
    upload(
        &s,
        &north,
        family,
        &repo.save_document(family).expect("save"),
    )
    .await;
    assert_eq!(s.dirty_projections(10).await.expect("dirty").len(), 1);
    assert_eq!(projector::catch_up(&s, None).await.expect("catch up"), 1);
    let rows = s
        .projections(&north, ProjectionKind::Family)
        .await
        .expect("projections");
    assert_eq!(rows.len(), 1);
    assert!(
        !rows[0].1.contains("Okafor") && !rows[0].1.contains("NOTE-SECRET"),
        "{}",
        rows[0].1
    );
    let facts: FamilyFacts = serde_json::from_str(&rows[0].1).expect("facts");
    assert_eq!(
        facts.children,
        vec![Some("2019-05-04".parse().expect("date"))]
    );
    assert_eq!(facts.notes.len(), 1);
    assert_eq!(facts.closed, None);

    repo.close_family(family, "2026-11-30".parse().expect("date"), "moved away")
        .expect("close");
    upload(
        &s,
        &north,
        family,
        &repo.save_document(family).expect("save"),
    )
    .await;
    assert_eq!(projector::catch_up(&s, None).await.expect("catch up"), 1);
    let rows = s
        .projections(&north, ProjectionKind::Family)
        .await
        .expect("projections");
    let facts: FamilyFacts = serde_json::from_str(&rows[0].1).expect("facts");
    assert_eq!(facts.closed, Some("2026-11-30".parse().expect("date")));
    assert_eq!(facts.closure_reason.as_deref(), Some("moved away"));

    assert!(
        s.purge_document(
            &north,
            family,
            "erasure",
            "office administrator",
            Utc::now()
        )
        .await
        .expect("purge")
    );
    assert!(
        s.projections(&north, ProjectionKind::Family)
            .await
            .expect("projections")
            .is_empty()
    );
    assert!(s.dirty_projections(10).await.expect("dirty").is_empty());
}
