//! The storage contract: what every backend must do, as one suite each
//! backend runs unchanged ([`run`]; the SQLite and in-memory stores run it
//! in `storage/tests.rs`, a PostgreSQL one will too). Public behind the
//! `contract` feature so a backend in another crate can run it.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use linkbook_core::DocumentId;

use super::{
    AuditAction, AuditRecord, CodeGrant, DeviceId, Storage, StorageError, Team, TeamPolicy, Upload,
};

/// Runs every case of the contract, each on a fresh store from `make`.
/// Call it from a multi-thread tokio runtime (the racing cases spawn).
pub async fn run<S, F, Fut>(mut make: F)
where
    S: Storage,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    devices_enrol_once_and_are_found_by_token(&make().await).await;
    revocation_is_audited_once_and_watched_in_order(&make().await).await;
    teams_keep_a_directory_id_and_a_policy(&make().await).await;
    documents_are_namespaced_per_team(&make().await).await;
    an_upload_commits_its_changes_audit_and_cursor_together(&make().await).await;
    a_purge_removes_everything_and_refuses_later_uploads(&make().await).await;
    a_purge_is_ensured_for_stored_and_unstored_documents_once(&make().await).await;
    the_last_backup_time_is_kept(&make().await).await;
    a_renewed_store_id_drops_the_old_stores_sync_states(&make().await).await;
    compaction_replaces_only_what_it_covers(&make().await).await;
    sync_states_are_per_team_document_and_device(&make().await).await;
    reads_are_audited_with_their_receipt(&make().await).await;
    refusals_count_repeats_and_audit_the_first(&make().await).await;
    the_audit_only_grows(&make().await).await;
    two_writers_on_one_document_lose_nothing(Arc::new(make().await)).await;
    a_cursor_reader_racing_writers_never_misses_a_change(Arc::new(make().await)).await;
    a_job_is_claimed_once_per_period(Arc::new(make().await)).await;
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// The teams the suite stores documents for, for the `Upload`s that borrow
/// them.
fn team(name: &str) -> &'static Team {
    static TEAMS: std::sync::LazyLock<[Team; 3]> =
        std::sync::LazyLock::new(|| ["north", "south", "east"].map(Team::from));
    TEAMS
        .iter()
        .find(|t| *t == name)
        .expect("a team of the contract suite")
}

/// The suite's document called `name`: a real document id, the same on
/// every call.
pub fn id(name: &str) -> DocumentId {
    DocumentId::team_directory(&format!("contract suite document {name}"))
}

fn upload<'a>(team_name: &str, doc: &str, by: &'a str, changes: &'a [u8]) -> Upload<'a> {
    Upload {
        team: team(team_name),
        doc_id: id(doc),
        uploader: by,
        changes,
        snapshot: None,
        audit: &[],
        at: now(),
    }
}

async fn enrol<S: Storage>(s: &S, team: &str, worker: &str, id: &str) -> super::Device {
    let code = format!("code-{id}");
    let grant = CodeGrant {
        team: team.into(),
        worker: worker.into(),
        expires_at: now() + Duration::minutes(10),
    };
    s.add_enrolment_code(code.as_bytes(), &grant, now())
        .await
        .expect("code");
    s.redeem_enrolment_code(
        code.as_bytes(),
        &DeviceId::from(id),
        "tablet",
        format!("token-{id}").as_bytes(),
        now(),
    )
    .await
    .expect("redeem")
}

async fn devices_enrol_once_and_are_found_by_token<S: Storage>(s: &S) {
    let asha = enrol(s, "north", "Asha", "d-asha").await;
    assert_eq!(
        (asha.team.as_str(), asha.worker.as_str()),
        ("north", "Asha")
    );
    assert_eq!(
        s.redeem_enrolment_code(b"code-d-asha", &DeviceId::from("d-2"), "x", b"t2", now())
            .await
            .unwrap_err(),
        StorageError::EnrolmentRefused("enrolment code already used")
    );
    assert_eq!(
        s.redeem_enrolment_code(b"nope", &DeviceId::from("d-3"), "x", b"t3", now())
            .await
            .unwrap_err(),
        StorageError::EnrolmentRefused("unknown enrolment code")
    );
    let grant = CodeGrant {
        team: "north".into(),
        worker: "Ben".into(),
        expires_at: now() - Duration::seconds(1),
    };
    s.add_enrolment_code(b"old", &grant, now() - Duration::minutes(5))
        .await
        .expect("code");
    assert_eq!(
        s.redeem_enrolment_code(b"old", &DeviceId::from("d-4"), "x", b"t4", now())
            .await
            .unwrap_err(),
        StorageError::EnrolmentRefused("enrolment code expired")
    );
    assert!(
        s.device_by_token(b"t4").await.expect("lookup").is_none(),
        "a refused redemption wrote nothing"
    );
    let found = s
        .device_by_token(b"token-d-asha")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found, asha);
    enrol(s, "north", "Ben", "d-ben").await;
    enrol(s, "east", "Cleo", "d-cleo").await;
    let listed: Vec<String> = s
        .devices()
        .await
        .expect("devices")
        .into_iter()
        .map(|d| d.id.into_string())
        .collect();
    assert_eq!(
        listed,
        ["d-cleo", "d-asha", "d-ben"],
        "by team, then worker"
    );
    let at = now();
    assert_eq!(found.last_address_kind, None, "not synced yet");
    s.touch_device(&DeviceId::from("d-ben"), at, "private")
        .await
        .expect("touch");
    let ben = s
        .device_by_token(b"token-d-ben")
        .await
        .expect("ok")
        .expect("ben");
    assert_eq!(ben.last_sync_at, Some(at.to_rfc3339()));
    assert_eq!(ben.last_address_kind.as_deref(), Some("private"));
    let later = at + Duration::seconds(1);
    s.touch_device(&DeviceId::from("d-ben"), later, "public")
        .await
        .expect("touch");
    let listed = s.devices().await.expect("devices");
    let ben = listed.iter().find(|d| d.id == "d-ben").expect("ben");
    assert_eq!(ben.last_sync_at, Some(later.to_rfc3339()));
    assert_eq!(ben.last_address_kind.as_deref(), Some("public"));
    let asha = listed.iter().find(|d| d.id == "d-asha").expect("asha");
    assert_eq!(asha.last_address_kind, None, "another device untouched");
    let enrolled = s
        .audit_log(None, Some(&DeviceId::from("d-asha")), None)
        .await
        .expect("audit");
    assert_eq!(enrolled.len(), 1);
    assert_eq!(enrolled[0].action, AuditAction::Enrolled);
    assert_eq!(enrolled[0].team.as_deref(), Some("north"));
}

async fn revocation_is_audited_once_and_watched_in_order<S: Storage>(s: &S) {
    let mut cursor = super::RevocationCursor::default();
    enrol(s, "north", "Asha", "d-1").await;
    enrol(s, "north", "Ben", "d-2").await;
    enrol(s, "north", "Cleo", "d-3").await;
    assert!(
        s.revoke_device(&DeviceId::from("d-1"), Some("admin"), now())
            .await
            .expect("revoke")
    );
    assert!(
        s.revocations_since(&mut cursor, 10)
            .await
            .expect("place")
            .is_empty(),
        "a fresh cursor starts at the latest revocation"
    );
    assert!(
        s.revoke_device(&DeviceId::from("d-1"), Some("again"), now())
            .await
            .expect("again")
    );
    assert!(
        !s.revoke_device(&DeviceId::from("nobody"), None, now())
            .await
            .expect("unknown")
    );
    assert!(
        s.revoke_device(&DeviceId::from("d-2"), None, now())
            .await
            .expect("revoke")
    );
    assert!(
        s.revoke_device(&DeviceId::from("d-3"), None, now())
            .await
            .expect("revoke")
    );
    assert_eq!(
        s.revocations_since(&mut cursor, 1).await.expect("w"),
        ["d-2"]
    );
    assert_eq!(
        s.revocations_since(&mut cursor, 5).await.expect("w"),
        ["d-3"]
    );
    assert!(
        s.revocations_since(&mut cursor, 5)
            .await
            .expect("w")
            .is_empty()
    );
    let revoked: Vec<_> = s
        .audit_log(None, Some(&DeviceId::from("d-1")), None)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == AuditAction::Revoked)
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0].worker.as_deref(), Some("admin"));
    let d1 = s
        .device_by_token(b"token-d-1")
        .await
        .expect("ok")
        .expect("d1");
    assert_eq!(d1.revoked_at.as_deref(), Some(revoked[0].at.as_str()));
}

async fn teams_keep_a_directory_id_and_a_policy<S: Storage>(s: &S) {
    let north = s
        .team_directory_id(&Team::from("north"), now())
        .await
        .expect("dir");
    assert_eq!(
        s.team_directory_id(&Team::from("north"), now())
            .await
            .expect("dir"),
        north
    );
    assert_ne!(
        s.team_directory_id(&Team::from("south"), now())
            .await
            .expect("dir"),
        north
    );
    assert_eq!(
        s.team_policy(&Team::from("east")).await.expect("policy"),
        TeamPolicy::default()
    );
    let policy = TeamPolicy {
        retention_days: Some(30),
        lease_days: Some(7),
    };
    let mut changed = AuditRecord::new(AuditAction::PolicyChanged, now()).worker("admin");
    changed.team = Some("east".into());
    s.set_team_policy(&Team::from("east"), policy, &[changed], now())
        .await
        .expect("set");
    // Audited with the change, in its transaction.
    let audited = s
        .audit_log(None, None, Some(&Team::from("east")))
        .await
        .expect("audit");
    assert_eq!(
        audited
            .iter()
            .filter(|e| e.action == AuditAction::PolicyChanged)
            .count(),
        1,
        "{audited:?}"
    );
    assert_eq!(
        s.team_policy(&Team::from("east")).await.expect("policy"),
        policy
    );
    s.set_team_policy(
        &Team::from("south"),
        TeamPolicy {
            retention_days: Some(90),
            lease_days: None,
        },
        &[],
        now(),
    )
    .await
    .expect("set");
    assert_eq!(
        s.retention_policies().await.expect("policies"),
        [(Team::from("east"), 30), (Team::from("south"), 90)]
    );
    s.set_team_policy(&Team::from("east"), TeamPolicy::default(), &[], now())
        .await
        .expect("lift");
    assert_eq!(
        s.retention_policies().await.expect("policies"),
        [(Team::from("south"), 90)]
    );
    assert_eq!(s.store_id("first").await.expect("id"), "first");
    assert_eq!(s.store_id("second").await.expect("id"), "first");
}

async fn documents_are_namespaced_per_team<S: Storage>(s: &S) {
    let snap = Upload {
        snapshot: Some(b"north-snap"),
        ..upload("north", "doc", "n1", b"north-1")
    };
    s.commit_upload(&snap).await.expect("north");
    s.commit_upload(&upload("south", "doc", "s1", b"south-1"))
        .await
        .expect("south: its own document");
    let north = s
        .load_document(&Team::from("north"), id("doc"))
        .await
        .expect("load")
        .expect("north");
    assert_eq!(north.snapshot.as_deref(), Some(&b"north-snap"[..]));
    assert!(north.changes.is_empty());
    let south = s
        .load_document(&Team::from("south"), id("doc"))
        .await
        .expect("load")
        .expect("south");
    assert_eq!(south.snapshot, None);
    assert_eq!(south.changes, [b"south-1".to_vec()]);
    assert!(
        s.load_document(&Team::from("east"), id("doc"))
            .await
            .expect("load")
            .is_none()
    );
    assert!(
        !s.document_exists(&Team::from("east"), id("doc"))
            .await
            .expect("exists")
    );
    assert!(
        s.document_exists(&Team::from("south"), id("doc"))
            .await
            .expect("exists")
    );
    assert_eq!(
        s.teams_holding(id("doc")).await.expect("teams"),
        ["north", "south"]
    );
    s.commit_upload(&upload("north", "another", "n1", b"x"))
        .await
        .expect("up");
    // By the id's text, then the team.
    let mut expected = [
        (id("another"), Team::from("north")),
        (id("doc"), Team::from("north")),
        (id("doc"), Team::from("south")),
    ];
    expected.sort_by_key(|(id, team)| (id.to_string(), team.to_string()));
    assert_eq!(s.document_ids().await.expect("ids"), expected);
    assert_eq!(
        s.changed_since(&Team::from("north"), 0, "n1")
            .await
            .expect("changed")
            .1,
        Vec::new(),
        "a device's own latest changes are left out"
    );
    let (cursor, changed) = s
        .changed_since(&Team::from("north"), 0, "other")
        .await
        .expect("changed");
    assert!(
        changed.windows(2).all(|w| w[0].1 < w[1].1)
            && changed.iter().all(|(_, seq)| *seq <= cursor),
        "in cursor order, none past the cursor: {changed:?}"
    );
    let mut ids: Vec<DocumentId> = changed.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    let mut expected = [id("another"), id("doc")];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        s.changed_since(&Team::from("north"), cursor, "other")
            .await
            .expect("changed"),
        (cursor, vec![]),
        "nothing after the cursor"
    );
}

async fn an_upload_commits_its_changes_audit_and_cursor_together<S: Storage>(s: &S) {
    let device = enrol(s, "north", "Asha", "d-1").await;
    let audit = [AuditRecord::by(
        Some(&device),
        AuditAction::Uploaded,
        Some(&id("doc").to_string()),
        now(),
    )];
    let first = s
        .commit_upload(&Upload {
            snapshot: Some(b"whole"),
            audit: &audit,
            ..upload("north", "doc", "d-1", b"c1")
        })
        .await
        .expect("first");
    assert_eq!((first.previous_seq, first.change_count), (0, 0));
    assert!(first.seq > 0);
    let second = s
        .commit_upload(&Upload {
            audit: &audit,
            ..upload("north", "doc", "d-1", b"c2")
        })
        .await
        .expect("second");
    assert_eq!(second.previous_seq, first.seq);
    assert!(second.seq > first.seq);
    assert_eq!(second.change_count, 1);
    // A whole save for a document that is already stored is appended, not
    // a replacement of what others stored.
    let third = s
        .commit_upload(&Upload {
            snapshot: Some(b"another copy"),
            ..upload("north", "doc", "d-2", b"")
        })
        .await
        .expect("third");
    assert_eq!(third.change_count, 2);
    let doc = s
        .load_document(&Team::from("north"), id("doc"))
        .await
        .expect("load")
        .expect("doc");
    assert_eq!(doc.snapshot.as_deref(), Some(&b"whole"[..]));
    assert_eq!(doc.changes, [b"c2".to_vec(), b"another copy".to_vec()]);
    assert_eq!(doc.seq, third.seq);
    let (cursor, ids) = s
        .changed_since(&Team::from("north"), 0, "d-1")
        .await
        .expect("changed");
    assert_eq!((cursor, ids), (third.seq, vec![(id("doc"), third.seq)]));
    // No changes: nothing stored, the cursor stays.
    let none = s
        .commit_upload(&upload("north", "doc", "d-1", b""))
        .await
        .expect("empty");
    assert_eq!((none.seq, none.previous_seq), (third.seq, third.seq));
    let uploaded = s
        .audit_log(
            Some(&id("doc").to_string()),
            Some(&DeviceId::from("d-1")),
            None,
        )
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == AuditAction::Uploaded)
        .count();
    assert_eq!(uploaded, 2);
}

async fn a_purge_removes_everything_and_refuses_later_uploads<S: Storage>(s: &S) {
    let device = enrol(s, "south", "Ben", "s1").await;
    s.commit_upload(&upload("south", "doc", "s1", b"c1"))
        .await
        .expect("up");
    s.commit_upload(&upload("north", "doc", "n1", b"n1"))
        .await
        .expect("up");
    s.save_sync_states(&[
        ("south".into(), id("doc"), "s1".into(), b"s".to_vec()),
        ("north".into(), id("doc"), "s1".into(), b"n".to_vec()),
    ])
    .await
    .expect("states");
    assert!(
        !s.purge_document(&Team::from("south"), id("nothing"), "r", now())
            .await
            .expect("purge")
    );
    assert!(
        s.purge_document(&Team::from("south"), id("doc"), "erasure", now())
            .await
            .expect("purge")
    );
    assert!(
        s.is_purged(&Team::from("south"), id("doc"))
            .await
            .expect("purged")
    );
    assert!(
        !s.is_purged(&Team::from("north"), id("doc"))
            .await
            .expect("purged")
    );
    assert!(
        s.load_document(&Team::from("south"), id("doc"))
            .await
            .expect("load")
            .is_none()
    );
    assert!(
        s.sync_state(&Team::from("south"), id("doc"), &DeviceId::from("s1"))
            .await
            .expect("state")
            .is_none()
    );
    assert_eq!(
        s.sync_state(&Team::from("north"), id("doc"), &DeviceId::from("s1"))
            .await
            .expect("state"),
        Some(b"n".to_vec())
    );
    assert_eq!(
        s.teams_holding(id("doc")).await.expect("teams"),
        ["north", "south"]
    );
    let purged = s.purged(&Team::from("south")).await.expect("purged");
    assert_eq!(purged.len(), 1);
    assert_eq!(purged[0].id, id("doc").to_string());
    assert!(
        s.purged(&Team::from("north"))
            .await
            .expect("purged")
            .is_empty()
    );
    // Refused inside the upload's transaction: neither the changes nor
    // the upload's audit records are written.
    let before = s.audit_log(None, None, None).await.expect("audit").len();
    let audit = [AuditRecord::by(
        Some(&device),
        AuditAction::Uploaded,
        Some(&id("doc").to_string()),
        now(),
    )];
    let refused = s
        .commit_upload(&Upload {
            audit: &audit,
            ..upload("south", "doc", "s1", b"again")
        })
        .await;
    assert_eq!(refused.unwrap_err(), StorageError::Purged);
    assert!(
        s.load_document(&Team::from("south"), id("doc"))
            .await
            .expect("load")
            .is_none()
    );
    assert_eq!(
        s.audit_log(None, None, None).await.expect("audit").len(),
        before
    );
    assert_eq!(
        s.changed_since(&Team::from("south"), 0, "x")
            .await
            .expect("changed")
            .1,
        Vec::new()
    );
    s.commit_upload(&upload("north", "doc", "n1", b"n2"))
        .await
        .expect("north's document is not purged");
    let purge_record = s
        .audit_log(
            Some(&id("doc").to_string()),
            None,
            Some(&Team::from("south")),
        )
        .await
        .expect("audit")
        .into_iter()
        .find(|e| e.action == AuditAction::Purged)
        .expect("purge audited");
    assert_eq!(purge_record.team.as_deref(), Some("south"));
}

async fn compaction_replaces_only_what_it_covers<S: Storage>(s: &S) {
    s.commit_upload(&upload("north", "doc", "a", b"c1"))
        .await
        .expect("c1");
    s.commit_upload(&upload("north", "doc", "a", b"c2"))
        .await
        .expect("c2");
    let copy = s
        .load_document(&Team::from("north"), id("doc"))
        .await
        .expect("load")
        .expect("doc");
    // Appended by another writer after the copy was loaded.
    s.commit_upload(&upload("north", "doc", "b", b"c3"))
        .await
        .expect("c3");
    assert!(
        s.compact(&Team::from("north"), id("doc"), b"snap-1-2", copy.seq)
            .await
            .expect("compact")
    );
    let doc = s
        .load_document(&Team::from("north"), id("doc"))
        .await
        .expect("load")
        .expect("doc");
    assert_eq!(doc.snapshot.as_deref(), Some(&b"snap-1-2"[..]));
    assert_eq!(doc.changes, [b"c3".to_vec()], "the later change survives");
    let c4 = s
        .commit_upload(&upload("north", "doc", "b", b"c4"))
        .await
        .expect("c4");
    assert_eq!(c4.change_count, 2);
    assert!(
        s.compact(&Team::from("north"), id("doc"), b"snap-all", c4.seq)
            .await
            .expect("compact")
    );
    assert!(
        !s.compact(&Team::from("north"), id("doc"), b"stale", copy.seq)
            .await
            .expect("stale"),
        "a copy older than the stored snapshot is refused"
    );
    let doc = s
        .load_document(&Team::from("north"), id("doc"))
        .await
        .expect("load")
        .expect("doc");
    assert_eq!(doc.snapshot.as_deref(), Some(&b"snap-all"[..]));
    assert!(doc.changes.is_empty());
    assert!(
        !s.compact(&Team::from("north"), id("missing"), b"x", 1)
            .await
            .expect("missing")
    );
}

async fn sync_states_are_per_team_document_and_device<S: Storage>(s: &S) {
    assert!(
        s.sync_state(&Team::from("north"), id("doc"), &DeviceId::from("d"))
            .await
            .expect("state")
            .is_none()
    );
    s.save_sync_states(&[
        ("north".into(), id("doc"), "d".into(), b"1".to_vec()),
        ("north".into(), id("doc"), "e".into(), b"2".to_vec()),
    ])
    .await
    .expect("save");
    s.save_sync_states(&[("north".into(), id("doc"), "d".into(), b"3".to_vec())])
        .await
        .expect("overwrite");
    assert_eq!(
        s.sync_state(&Team::from("north"), id("doc"), &DeviceId::from("d"))
            .await
            .expect("s"),
        Some(b"3".to_vec())
    );
    assert_eq!(
        s.sync_state(&Team::from("north"), id("doc"), &DeviceId::from("e"))
            .await
            .expect("s"),
        Some(b"2".to_vec())
    );
    assert!(
        s.sync_state(&Team::from("south"), id("doc"), &DeviceId::from("d"))
            .await
            .expect("s")
            .is_none()
    );
}

async fn reads_are_audited_with_their_receipt<S: Storage>(s: &S) {
    let asha = enrol(s, "north", "Asha", "d-1").await;
    let reads = [
        ("fam-1".to_string(), "2026-01-01T09:00:00+00:00".to_string()),
        ("fam-2".to_string(), "2026-01-01T09:05:00+00:00".to_string()),
    ];
    s.record_reads(&asha, &reads[..1], None)
        .await
        .expect("reads");
    s.record_reads(&asha, &reads, Some("2026-01-02T10:00:00+00:00"))
        .await
        .expect("uploaded reads");
    assert_eq!(
        s.reads_received_since(&DeviceId::from("d-1"), "2026-01-02T00:00:00+00:00")
            .await
            .expect("n"),
        2
    );
    assert_eq!(
        s.reads_received_since(&DeviceId::from("d-1"), "2026-01-03T00:00:00+00:00")
            .await
            .expect("n"),
        0
    );
    let marks = s
        .read_marks(&DeviceId::from("d-1"), Some("2026-01-03T00:00:00+00:00"))
        .await
        .expect("marks");
    assert_eq!(
        marks.received_before_sync.as_deref(),
        Some("2026-01-02T10:00:00+00:00")
    );
    assert_eq!(
        marks.latest_at.as_deref(),
        Some("2026-01-01T09:05:00+00:00")
    );
    let log = s
        .audit_log(Some("fam-2"), None, Some(&Team::from("north")))
        .await
        .expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].received_at.as_deref(),
        Some("2026-01-02T10:00:00+00:00")
    );
    assert!(
        s.audit_log(Some("fam-2"), None, Some(&Team::from("south")))
            .await
            .expect("l")
            .is_empty()
    );
}

async fn refusals_count_repeats_and_audit_the_first<S: Storage>(s: &S) {
    use crate::refusals::{Refusal, RefusalKind};
    let refusal = |doc: &str, at: &str| Refusal {
        doc_id: doc.into(),
        device_id: "d-1".into(),
        worker: "Mallory".into(),
        team: "north".into(),
        reason: "no type".into(),
        kind: RefusalKind::Door,
        count: 1,
        first_at: at.into(),
        last_at: at.into(),
    };
    s.record_refusals(&[refusal("a", "2026-01-01T00:00:00+00:00")])
        .await
        .expect("r");
    s.record_refusals(&[
        refusal("a", "2026-01-01T01:00:00+00:00"),
        refusal("b", "2026-01-01T02:00:00+00:00"),
    ])
    .await
    .expect("r");
    let rows = s
        .refused_documents(Some(&Team::from("north")))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].document_id.as_str(), rows[0].count), ("b", 1));
    assert_eq!((rows[1].document_id.as_str(), rows[1].count), ("a", 2));
    assert!(
        s.refused_documents(Some(&Team::from("south")))
            .await
            .expect("rows")
            .is_empty()
    );
    let audited = s
        .audit_log(Some("a"), None, None)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == AuditAction::RefusedAtDoor)
        .count();
    assert_eq!(audited, 1, "a repeat raises the count, not the audit");
}

async fn the_audit_only_grows<S: Storage>(s: &S) {
    let device = enrol(s, "north", "Asha", "d-1").await;
    let snapshot = |log: Vec<super::AuditEntry>| log;
    let mut before = snapshot(s.audit_log(None, None, None).await.expect("audit"));
    let steps: Vec<AuditRecord> = vec![
        AuditRecord::by(Some(&device), AuditAction::Connected, None, now()),
        AuditRecord::new(AuditAction::AuthRefused, now()).client("192.0.2.1"),
        AuditRecord::new(AuditAction::SubjectAccessExport, now())
            .worker("office administrator")
            .document("north", "doc"),
    ];
    for step in steps {
        s.append_audit(std::slice::from_ref(&step))
            .await
            .expect("append");
        s.commit_upload(&upload("north", "doc", "d-1", b"c"))
            .await
            .expect("up");
        let after = s.audit_log(None, None, None).await.expect("audit");
        assert!(after.len() > before.len());
        assert_eq!(
            &after[..before.len()],
            &before[..],
            "earlier records unchanged"
        );
        before = after;
    }
    s.purge_document(&Team::from("north"), id("doc"), "erasure", now())
        .await
        .expect("purge");
    s.revoke_device(&DeviceId::from("d-1"), None, now())
        .await
        .expect("revoke");
    let after = s.audit_log(None, None, None).await.expect("audit");
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "a purge and a revocation keep the records before them"
    );
    let client = after
        .iter()
        .find(|e| e.action == AuditAction::AuthRefused)
        .expect("client record");
    assert_eq!(client.client.as_deref(), Some("192.0.2.1"));
    let export = after
        .iter()
        .find(|e| e.action == AuditAction::SubjectAccessExport)
        .expect("export record");
    assert_eq!(export.team.as_deref(), Some("north"));
}

/// Writers per racing case, uploads per writer: bounded, a few seconds.
const WRITERS: usize = 4;
const UPLOADS: usize = 40;

async fn two_writers_on_one_document_lose_nothing<S: Storage>(s: Arc<S>) {
    let mut tasks = Vec::new();
    for w in 0..2 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..UPLOADS {
                let bytes = format!("w{w}-{i}");
                let by = format!("writer-{w}");
                let c = s
                    .commit_upload(&upload("north", "shared", &by, bytes.as_bytes()))
                    .await
                    .expect("upload");
                seqs.push(c.seq);
            }
            seqs
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for seq in t.await.expect("writer") {
            assert!(all.insert(seq), "cursor value {seq} handed out twice");
        }
    }
    let doc = s
        .load_document(&Team::from("north"), id("shared"))
        .await
        .expect("load")
        .expect("doc");
    assert_eq!(
        doc.changes.len(),
        2 * UPLOADS,
        "every change of both writers kept"
    );
    for w in 0..2 {
        for i in 0..UPLOADS {
            let bytes = format!("w{w}-{i}").into_bytes();
            assert!(doc.changes.contains(&bytes), "w{w}-{i} lost");
        }
    }
    assert_eq!(doc.seq, *all.iter().max().expect("seqs"));
}

async fn a_cursor_reader_racing_writers_never_misses_a_change<S: Storage>(s: Arc<S>) {
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let mut last: HashMap<String, i64> = HashMap::new();
            for i in 0..UPLOADS {
                let doc = format!("doc-{}", (w * 7 + i) % 10);
                let by = format!("writer-{w}");
                let c = s
                    .commit_upload(&upload("north", &doc, &by, format!("{w}-{i}").as_bytes()))
                    .await
                    .expect("upload");
                last.insert(doc, c.seq);
                tokio::task::yield_now().await;
            }
            last
        }));
    }
    // The reader chains its cursor; each read covers (since, cursor].
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads: Vec<Read> = Vec::new();
            let mut since = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                let (cursor, ids) = s
                    .changed_since(&Team::from("north"), since, "reader")
                    .await
                    .expect("read");
                reads.push((since, cursor, ids));
                since = cursor;
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    let mut last: HashMap<String, i64> = HashMap::new();
    for w in writers {
        for (doc, seq) in w.await.expect("writer") {
            let e = last.entry(doc).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut reads = reader.await.expect("reader");
    let since = reads.last().map_or(0, |r| r.1);
    let (cursor, ids) = s
        .changed_since(&Team::from("north"), since, "reader")
        .await
        .expect("read");
    reads.push((since, cursor, ids));
    for (doc, seq) in &last {
        let covering = reads
            .iter()
            .find(|(from, to, _)| from < seq && seq <= to)
            .unwrap_or_else(|| panic!("no read covered {doc}'s change {seq}"));
        assert!(
            covering.2.iter().any(|(d, _)| *d == id(doc)),
            "the read over ({}, {}] skipped {doc}'s change {seq}",
            covering.0,
            covering.1
        );
    }
}

/// One read of the racing reader: (since, cursor, what changed).
type Read = (i64, i64, Vec<(DocumentId, i64)>);

/// Once-a-day work (the retention sweep) goes to one caller per period,
/// even when several relay nodes ask at once; a later period is claimed
/// again, an earlier one never.
async fn a_job_is_claimed_once_per_period<S: Storage>(s: Arc<S>) {
    let mut askers = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        askers.push(tokio::spawn(async move {
            s.claim_job("retention", "2026-12-03").await.expect("claim")
        }));
    }
    let mut claimed = 0;
    for a in askers {
        claimed += usize::from(a.await.expect("asker"));
    }
    assert_eq!(claimed, 1, "exactly one of eight claims the day");
    assert!(!s.claim_job("retention", "2026-12-03").await.expect("again"));
    assert!(
        !s.claim_job("retention", "2026-12-02")
            .await
            .expect("earlier")
    );
    assert!(
        s.claim_job("another job", "2026-12-03")
            .await
            .expect("other job"),
        "jobs are claimed apart"
    );
    assert!(
        s.claim_job("retention", "2026-12-04")
            .await
            .expect("next day")
    );
}
/// The erasure ledger's replay: a purge of a document the store does not
/// hold is remembered (and refuses its upload), a stored one is deleted,
/// each audited once; a second ensure changes nothing.
async fn a_purge_is_ensured_for_stored_and_unstored_documents_once<S: Storage>(s: &S) {
    let south = Team::from("south");
    s.commit_upload(&upload("south", "doc", "s1", b"c1"))
        .await
        .expect("up");
    s.save_sync_states(&[("south".into(), id("doc"), "s1".into(), b"s".to_vec())])
        .await
        .expect("states");
    let earlier = now() - Duration::days(3);
    for doc in ["doc", "never stored"] {
        assert!(
            s.ensure_purged(&south, id(doc), "replayed", earlier, now())
                .await
                .expect("ensure"),
            "{doc}"
        );
        assert!(s.is_purged(&south, id(doc)).await.expect("purged"), "{doc}");
        assert!(
            !s.ensure_purged(&south, id(doc), "replayed", earlier, now())
                .await
                .expect("again"),
            "{doc} purged once"
        );
    }
    assert!(
        s.load_document(&south, id("doc"))
            .await
            .expect("load")
            .is_none()
    );
    assert!(
        s.sync_state(&south, id("doc"), &DeviceId::from("s1"))
            .await
            .expect("state")
            .is_none()
    );
    let purged = s.purged(&south).await.expect("purged");
    assert_eq!(purged.len(), 2);
    assert!(
        purged.iter().all(|p| p.purged_at == earlier.to_rfc3339()),
        "the ledger's time: {purged:?}"
    );
    assert_eq!(
        s.commit_upload(&upload("south", "never stored", "s1", b"c2"))
            .await
            .expect_err("refused"),
        StorageError::Purged
    );
    assert!(
        !s.is_purged(&Team::from("north"), id("never stored"))
            .await
            .expect("other team")
    );
    let audited = s
        .audit_log(None, None, Some(&south))
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == AuditAction::Purged)
        .count();
    assert_eq!(audited, 2);
}

/// A restored store's new id: the old one's sync states and backup time go
/// with it; documents stay.
async fn a_renewed_store_id_drops_the_old_stores_sync_states<S: Storage>(s: &S) {
    assert_eq!(s.store_id("old").await.expect("id"), "old");
    s.commit_upload(&upload("north", "doc", "n1", b"c1"))
        .await
        .expect("up");
    s.save_sync_states(&[("north".into(), id("doc"), "n1".into(), b"s".to_vec())])
        .await
        .expect("states");
    s.record_backup(now()).await.expect("backup");
    s.renew_store_id("new").await.expect("renew");
    assert_eq!(s.store_id("other").await.expect("id"), "new");
    assert!(
        s.sync_state(&Team::from("north"), id("doc"), &DeviceId::from("n1"))
            .await
            .expect("state")
            .is_none()
    );
    assert_eq!(s.last_backup().await.expect("backup"), None);
    assert!(
        s.load_document(&Team::from("north"), id("doc"))
            .await
            .expect("load")
            .is_some()
    );
}

async fn the_last_backup_time_is_kept<S: Storage>(s: &S) {
    assert_eq!(s.last_backup().await.expect("none"), None);
    let first = now() - Duration::hours(2);
    s.record_backup(first).await.expect("record");
    let second = now();
    s.record_backup(second).await.expect("record");
    let kept = s.last_backup().await.expect("kept").expect("a time");
    assert_eq!(kept.timestamp(), second.timestamp());
}
