//! The storage contract: what every backend must do, as one suite each
//! backend runs unchanged ([`run`]; the SQLite and in-memory stores run it
//! in `storage/tests.rs`, a PostgreSQL one will too). Public behind the
//! `contract` feature so a backend in another crate can run it.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

/// Who the audit names for a purge the office asked for.
const ADMIN: &str = "office administrator";

use chrono::{DateTime, Duration, Utc};
use linkbook_core::DocumentId;

use super::{
    AuditAction, AuditRecord, AuditSearch, CodeGrant, DeviceId, DirtyProjection, ProjectionKind,
    StaffAccount, StaffRole, StaffSession, Storage, StorageError, Team, TeamPolicy, Upload,
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
    the_audit_is_searched_newest_first_with_a_count(&make().await).await;
    two_writers_on_one_document_lose_nothing(Arc::new(make().await)).await;
    a_cursor_reader_racing_writers_never_misses_a_change(Arc::new(make().await)).await;
    a_job_is_claimed_once_per_period(Arc::new(make().await)).await;
    staff_accounts_have_unique_names_and_are_found_three_ways(&make().await).await;
    a_setup_token_is_consumed_once_and_never_after_it_expires(&make().await).await;
    a_setup_token_raced_is_consumed_once(Arc::new(make().await)).await;
    a_sign_in_racing_a_reset_or_disable_leaves_no_session(Arc::new(make().await)).await;
    a_reset_account_loses_its_password_seed_and_sessions(&make().await).await;
    a_disabled_account_has_no_sessions_and_gets_none(&make().await).await;
    a_totp_step_is_accepted_once_and_never_an_older_one(&make().await).await;
    sessions_are_created_touched_and_ended(&make().await).await;
    uploads_mark_projections_dirty_by_generation(&make().await).await;
    projections_are_kept_per_team_and_kind(&make().await).await;
    a_purge_removes_projections_and_refuses_new_ones(&make().await).await;
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
        !s.purge_document(&Team::from("south"), id("nothing"), "r", ADMIN, now())
            .await
            .expect("purge")
    );
    assert!(
        s.purge_document(&Team::from("south"), id("doc"), "erasure", ADMIN, now())
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
    s.purge_document(&Team::from("north"), id("doc"), "erasure", ADMIN, now())
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

/// A fresh account, not set up: a set-up token `setup-{id}` valid for an
/// hour.
fn staff(id: &str, name: &str, role: StaffRole) -> StaffAccount {
    StaffAccount {
        id: id.into(),
        name: name.into(),
        role,
        password_hash: None,
        totp_secret: None,
        totp_last_step: None,
        setup_hash: Some(format!("setup-{id}").into_bytes()),
        setup_expires_at: Some(now() + Duration::hours(1)),
        created_at: now(),
        disabled_at: None,
    }
}

/// An account set up with a password (and, for roles that need one, a
/// TOTP seed), ready to sign in.
async fn set_up<S: Storage>(s: &S, id: &str, name: &str, role: StaffRole) -> StaffAccount {
    let account = staff(id, name, role);
    s.add_account(&account).await.expect("add");
    let seed = role.needs_totp().then_some(&b"seed"[..]);
    assert!(
        s.complete_setup(
            id,
            account.setup_hash.as_deref().expect("token"),
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            seed,
            now(),
        )
        .await
        .expect("set up")
    );
    s.account(id).await.expect("account").expect("found")
}

fn session_for(account_id: &str, csrf: &str) -> StaffSession {
    StaffSession {
        account_id: account_id.into(),
        csrf: csrf.into(),
        created_at: now(),
        last_seen_at: now(),
    }
}

async fn staff_accounts_have_unique_names_and_are_found_three_ways<S: Storage>(s: &S) {
    let asha = staff("a-1", "asha", StaffRole::Administrator);
    s.add_account(&asha).await.expect("add");
    let again = StaffAccount {
        id: "a-2".into(),
        setup_hash: Some(b"setup-other".to_vec()),
        ..staff("a-2", "asha", StaffRole::Manager)
    };
    assert!(
        matches!(s.add_account(&again).await, Err(StorageError::Conflict(_))),
        "a taken name is a conflict"
    );
    assert!(
        s.account("a-2").await.expect("lookup").is_none(),
        "the refused account wrote nothing"
    );
    let ben = staff("b-1", "ben", StaffRole::DataProtection);
    s.add_account(&ben).await.expect("add");
    assert_eq!(
        s.account_by_name("asha").await.expect("by name"),
        Some(asha.clone())
    );
    assert_eq!(s.account_by_name("Asha").await.expect("by name"), None);
    assert_eq!(s.account("b-1").await.expect("by id"), Some(ben.clone()));
    assert_eq!(s.account("nobody").await.expect("by id"), None);
    assert_eq!(
        s.account_by_setup(b"setup-a-1", now())
            .await
            .expect("by setup"),
        Some(asha.clone())
    );
    assert_eq!(
        s.account_by_setup(b"setup-nobody", now())
            .await
            .expect("by setup"),
        None
    );
    // Past its expiry the token finds nothing.
    assert_eq!(
        s.account_by_setup(b"setup-a-1", now() + Duration::hours(2))
            .await
            .expect("by setup"),
        None
    );
    let expired = StaffAccount {
        setup_expires_at: Some(now() - Duration::seconds(1)),
        ..staff("c-1", "cleo", StaffRole::Manager)
    };
    s.add_account(&expired).await.expect("add");
    assert_eq!(
        s.account_by_setup(b"setup-c-1", now())
            .await
            .expect("by setup"),
        None,
        "an expired token is not found"
    );
    let names: Vec<String> = s
        .accounts()
        .await
        .expect("accounts")
        .into_iter()
        .map(|a| a.name)
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["asha", "ben", "cleo"]);
    for role in StaffRole::ALL {
        assert_eq!(StaffRole::parse(role.as_str()), Some(role));
    }
}

async fn a_setup_token_is_consumed_once_and_never_after_it_expires<S: Storage>(s: &S) {
    let asha = staff("a-1", "asha", StaffRole::Administrator);
    s.add_account(&asha).await.expect("add");
    assert!(
        !s.complete_setup("a-1", b"setup-wrong", "pw", Some(b"seed"), now())
            .await
            .expect("wrong token"),
        "another token sets nothing"
    );
    assert!(
        !s.complete_setup("b-1", b"setup-a-1", "pw", Some(b"seed"), now())
            .await
            .expect("wrong account"),
        "the token of another account sets nothing"
    );
    assert!(
        s.complete_setup("a-1", b"setup-a-1", "pw-hash", Some(b"seed"), now())
            .await
            .expect("set up")
    );
    let done = s.account("a-1").await.expect("account").expect("found");
    assert_eq!(done.password_hash.as_deref(), Some("pw-hash"));
    assert_eq!(done.totp_secret.as_deref(), Some(&b"seed"[..]));
    assert_eq!((done.setup_hash, done.setup_expires_at), (None, None));
    assert!(
        !s.complete_setup("a-1", b"setup-a-1", "other", None, now())
            .await
            .expect("second use"),
        "a token is used once"
    );
    let still = s.account("a-1").await.expect("account").expect("found");
    assert_eq!(still.password_hash.as_deref(), Some("pw-hash"));
    assert_eq!(
        s.account_by_setup(b"setup-a-1", now())
            .await
            .expect("by setup"),
        None
    );
    // An expired token sets nothing.
    let ben = staff("b-1", "ben", StaffRole::Manager);
    s.add_account(&ben).await.expect("add");
    assert!(
        !s.complete_setup("b-1", b"setup-b-1", "pw", None, now() + Duration::hours(2))
            .await
            .expect("expired")
    );
    let ben = s.account("b-1").await.expect("account").expect("found");
    assert_eq!(ben.password_hash, None);
    assert_eq!(ben.setup_hash.as_deref(), Some(&b"setup-b-1"[..]));
    // A manager has no second factor.
    assert!(
        s.complete_setup("b-1", b"setup-b-1", "pw", None, now())
            .await
            .expect("set up")
    );
    let ben = s.account("b-1").await.expect("account").expect("found");
    assert_eq!(
        (ben.password_hash.as_deref(), ben.totp_secret),
        (Some("pw"), None)
    );
    // A disabled account's token sets nothing and finds nothing.
    s.add_account(&staff("c-1", "cleo", StaffRole::Manager))
        .await
        .expect("add");
    assert!(s.disable_account("c-1", now()).await.expect("disable"));
    assert_eq!(
        s.account_by_setup(b"setup-c-1", now())
            .await
            .expect("by setup"),
        None
    );
    assert!(
        !s.complete_setup("c-1", b"setup-c-1", "pw", None, now())
            .await
            .expect("disabled")
    );
}

async fn a_setup_token_raced_is_consumed_once<S: Storage>(s: Arc<S>) {
    s.add_account(&staff("a-1", "asha", StaffRole::Administrator))
        .await
        .expect("add");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let password = format!("pw-{i}");
            let won = s
                .complete_setup("a-1", b"setup-a-1", &password, Some(b"seed"), now())
                .await
                .expect("set up");
            won.then_some(password)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.expect("task"));
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let asha = s.account("a-1").await.expect("account").expect("found");
    assert_eq!(asha.password_hash, winners.pop());
}

async fn a_reset_account_loses_its_password_seed_and_sessions<S: Storage>(s: &S) {
    let asha = set_up(s, "a-1", "asha", StaffRole::Administrator).await;
    assert!(asha.password_hash.is_some() && asha.totp_secret.is_some());
    set_up(s, "b-1", "ben", StaffRole::Manager).await;
    assert!(s.accept_totp_step("a-1", 100).await.expect("step"));
    s.create_session(b"s-asha", &session_for("a-1", "c1"))
        .await
        .expect("session");
    s.create_session(b"s-ben", &session_for("b-1", "c2"))
        .await
        .expect("session");
    let expires = now() + Duration::hours(24);
    assert!(
        s.reset_account("a-1", b"setup-new", expires)
            .await
            .expect("reset")
    );
    assert!(
        !s.reset_account("nobody", b"setup-x", expires)
            .await
            .expect("reset"),
        "no such account"
    );
    let reset = s.account("a-1").await.expect("account").expect("found");
    assert_eq!(
        (reset.password_hash, reset.totp_secret, reset.totp_last_step),
        (None, None, None)
    );
    assert_eq!(reset.setup_hash.as_deref(), Some(&b"setup-new"[..]));
    assert_eq!(reset.setup_expires_at, Some(expires));
    assert_eq!(reset.disabled_at, None);
    assert!(
        s.session(b"s-asha").await.expect("session").is_none(),
        "its sessions end"
    );
    assert!(
        s.session(b"s-ben").await.expect("session").is_some(),
        "another account's stay"
    );
    assert!(
        matches!(
            s.create_session(b"s-asha-2", &session_for("a-1", "c3"))
                .await,
            Err(StorageError::Conflict(_))
        ),
        "no session for an account without a password"
    );
    // The new token works, once.
    assert_eq!(
        s.account_by_setup(b"setup-new", now())
            .await
            .expect("by setup")
            .map(|a| a.id),
        Some("a-1".to_string())
    );
    assert!(
        s.complete_setup("a-1", b"setup-new", "pw2", Some(b"seed2"), now())
            .await
            .expect("set up")
    );
    // A step from before the reset is accepted for the new seed.
    assert!(s.accept_totp_step("a-1", 50).await.expect("step"));
}

async fn a_disabled_account_has_no_sessions_and_gets_none<S: Storage>(s: &S) {
    set_up(s, "a-1", "asha", StaffRole::Administrator).await;
    set_up(s, "b-1", "ben", StaffRole::Manager).await;
    for (hash, account) in [(&b"s-1"[..], "a-1"), (b"s-2", "a-1"), (b"s-3", "b-1")] {
        s.create_session(hash, &session_for(account, "csrf"))
            .await
            .expect("session");
    }
    assert!(s.session(b"s-1").await.expect("session").is_some());
    let at = now();
    assert!(s.disable_account("a-1", at).await.expect("disable"));
    assert!(!s.disable_account("nobody", at).await.expect("disable"));
    for hash in [&b"s-1"[..], b"s-2"] {
        assert!(
            s.session(hash).await.expect("session").is_none(),
            "a disabled account's sessions end"
        );
    }
    assert!(s.session(b"s-3").await.expect("session").is_some());
    assert!(
        matches!(
            s.create_session(b"s-4", &session_for("a-1", "csrf")).await,
            Err(StorageError::Conflict(_))
        ),
        "a disabled account gets no session"
    );
    assert!(
        s.session(b"s-4").await.expect("session").is_none(),
        "nothing written"
    );
    assert!(
        matches!(
            s.create_session(b"s-5", &session_for("nobody", "csrf"))
                .await,
            Err(StorageError::Conflict(_))
        ),
        "nor does an account that does not exist"
    );
    // Disabled once: a second disable keeps the first time.
    assert!(
        s.disable_account("a-1", at + Duration::hours(1))
            .await
            .expect("again")
    );
    let asha = s.account("a-1").await.expect("account").expect("found");
    assert_eq!(asha.disabled_at, Some(at));
    assert_eq!(
        s.account_by_name("asha")
            .await
            .expect("by name")
            .and_then(|a| a.disabled_at),
        Some(at),
        "still found, shown as disabled"
    );
}

async fn a_totp_step_is_accepted_once_and_never_an_older_one<S: Storage>(s: &S) {
    set_up(s, "a-1", "asha", StaffRole::Administrator).await;
    set_up(s, "b-1", "ben", StaffRole::DataProtection).await;
    assert!(s.accept_totp_step("a-1", 1000).await.expect("first"));
    assert!(
        !s.accept_totp_step("a-1", 1000).await.expect("replay"),
        "a replayed code"
    );
    assert!(
        !s.accept_totp_step("a-1", 999).await.expect("older"),
        "an older code"
    );
    assert!(s.accept_totp_step("a-1", 1001).await.expect("next"));
    assert_eq!(
        s.account("a-1")
            .await
            .expect("account")
            .and_then(|a| a.totp_last_step),
        Some(1001)
    );
    assert!(
        s.accept_totp_step("b-1", 1000).await.expect("other"),
        "per account"
    );
    assert!(!s.accept_totp_step("nobody", 5).await.expect("nobody"));
}

async fn sessions_are_created_touched_and_ended<S: Storage>(s: &S) {
    let asha = set_up(s, "a-1", "asha", StaffRole::Administrator).await;
    let t0 = now() - Duration::hours(10);
    let old = StaffSession {
        account_id: "a-1".into(),
        csrf: "csrf-old".into(),
        created_at: t0,
        last_seen_at: t0,
    };
    s.create_session(b"s-old", &old).await.expect("session");
    assert!(
        matches!(
            s.create_session(b"s-old", &old).await,
            Err(StorageError::Conflict(_))
        ),
        "a session id is used once"
    );
    let (got, account) = s.session(b"s-old").await.expect("session").expect("found");
    assert_eq!(got, old);
    assert_eq!(account, asha);
    assert!(s.session(b"s-none").await.expect("session").is_none());
    // Seen recently: not idle, but created long ago.
    let seen = now() - Duration::minutes(1);
    s.touch_session(b"s-old", seen).await.expect("touch");
    assert_eq!(
        s.session(b"s-old")
            .await
            .expect("session")
            .expect("found")
            .0
            .last_seen_at,
        seen
    );
    s.touch_session(b"s-none", seen)
        .await
        .expect("touching an ended session is no error");
    // Idle: created recently, last seen an hour ago.
    let idle = StaffSession {
        created_at: now() - Duration::hours(1),
        last_seen_at: now() - Duration::hours(1),
        ..session_for("a-1", "csrf-idle")
    };
    s.create_session(b"s-idle", &idle).await.expect("session");
    s.create_session(b"s-fresh", &session_for("a-1", "csrf-fresh"))
        .await
        .expect("session");
    s.create_session(b"s-bye", &session_for("a-1", "csrf-bye"))
        .await
        .expect("session");
    s.end_session(b"s-bye").await.expect("end");
    assert!(s.session(b"s-bye").await.expect("session").is_none());
    s.end_session(b"s-bye")
        .await
        .expect("ending twice is no error");
    let ended = s
        .end_stale_sessions(now() - Duration::minutes(30), now() - Duration::hours(8))
        .await
        .expect("stale");
    assert_eq!(ended, 2, "the idle one and the one created long ago");
    assert!(s.session(b"s-old").await.expect("session").is_none());
    assert!(s.session(b"s-idle").await.expect("session").is_none());
    assert_eq!(
        s.session(b"s-fresh")
            .await
            .expect("session")
            .map(|(session, _)| session.csrf),
        Some("csrf-fresh".to_string())
    );
    assert_eq!(
        s.end_stale_sessions(now() - Duration::minutes(30), now() - Duration::hours(8))
            .await
            .expect("stale"),
        0
    );
}

/// The dirty marks, sorted (their order is the backend's).
async fn dirty<S: Storage>(s: &S) -> Vec<(String, DocumentId, i64)> {
    let mut marks: Vec<(String, DocumentId, i64)> = s
        .dirty_projections(100)
        .await
        .expect("dirty")
        .into_iter()
        .map(
            |DirtyProjection {
                 team,
                 id,
                 generation,
             }| (team.into_string(), id, generation),
        )
        .collect();
    marks.sort();
    marks
}

/// The generation of a document's dirty mark (0: not dirty).
async fn generation<S: Storage>(s: &S, t: &str, doc: &str) -> i64 {
    dirty(s)
        .await
        .into_iter()
        .find(|(team, d, _)| team == t && *d == id(doc))
        .map_or(0, |(_, _, g)| g)
}

async fn uploads_mark_projections_dirty_by_generation<S: Storage>(s: &S) {
    assert!(dirty(s).await.is_empty());
    s.commit_upload(&upload("north", "fam", "n1", b"c1"))
        .await
        .expect("up");
    let marks = dirty(s).await;
    assert_eq!(marks.len(), 1, "{marks:?}");
    let (ref t, doc, g1) = marks[0];
    assert_eq!((t.as_str(), doc), ("north", id("fam")));
    s.commit_upload(&upload("north", "fam", "n1", b"c2"))
        .await
        .expect("up");
    s.commit_upload(&upload("south", "fam", "s1", b"c1"))
        .await
        .expect("up");
    let marks = dirty(s).await;
    assert_eq!(marks.len(), 2, "per team: {marks:?}");
    assert_eq!(
        marks[0],
        ("north".to_string(), id("fam"), g1 + 1),
        "a generation per commit"
    );
    let south = marks[1].clone();
    assert_eq!((south.0.as_str(), south.1), ("south", id("fam")));
    // A projection made from the first generation is out of date: the mark
    // stays, though the projection is written.
    s.put_projection(
        team("north"),
        id("fam"),
        g1,
        Some(ProjectionKind::Family),
        r#"{"v":1}"#,
        now(),
    )
    .await
    .expect("put");
    assert_eq!(dirty(s).await, marks);
    assert_eq!(
        s.projections(team("north"), ProjectionKind::Family)
            .await
            .expect("projections"),
        [(id("fam"), r#"{"v":1}"#.to_string())]
    );
    // Made from the latest: the mark goes.
    s.put_projection(
        team("north"),
        id("fam"),
        g1 + 1,
        Some(ProjectionKind::Family),
        r#"{"v":2}"#,
        now(),
    )
    .await
    .expect("put");
    assert_eq!(dirty(s).await, [south]);
    assert_eq!(
        s.projections(team("north"), ProjectionKind::Family)
            .await
            .expect("projections"),
        [(id("fam"), r#"{"v":2}"#.to_string())]
    );
    // A later commit marks it again, past the generation written.
    s.commit_upload(&upload("north", "fam", "n1", b"c3"))
        .await
        .expect("up");
    let marks = dirty(s).await;
    let north = marks
        .iter()
        .find(|(t, _, _)| t == "north")
        .expect("marked again");
    // Past every generation before: a projector still holding the cleared
    // one cannot clear this mark.
    assert!(north.2 > g1 + 1, "{marks:?}");
    s.put_projection(
        team("north"),
        id("fam"),
        g1 + 1,
        Some(ProjectionKind::Family),
        r#"{"v":"stale"}"#,
        now(),
    )
    .await
    .expect("put");
    assert!(
        dirty(s).await.iter().any(|(t, _, _)| t == "north"),
        "still dirty"
    );
    // The limit is kept.
    for doc in ["a", "b", "c"] {
        s.commit_upload(&upload("east", doc, "e1", b"c"))
            .await
            .expect("up");
    }
    assert_eq!(s.dirty_projections(2).await.expect("dirty").len(), 2);
    assert_eq!(s.dirty_projections(100).await.expect("dirty").len(), 5);
    // A failed (purged) upload marks nothing.
    assert!(
        s.purge_document(team("east"), id("a"), "erasure", ADMIN, now())
            .await
            .expect("purge")
    );
    let before = dirty(s).await;
    assert_eq!(
        s.commit_upload(&upload("east", "a", "e1", b"again"))
            .await
            .unwrap_err(),
        StorageError::Purged
    );
    assert_eq!(dirty(s).await, before);
}

async fn projections_are_kept_per_team_and_kind<S: Storage>(s: &S) {
    assert!(s.projected_teams().await.expect("teams").is_empty());
    for (t, doc) in [
        ("north", "f1"),
        ("north", "f2"),
        ("north", "day"),
        ("north", "dir"),
        ("south", "f1"),
    ] {
        s.commit_upload(&upload(t, doc, "d", b"c"))
            .await
            .expect("up");
    }
    let put = |t: &'static str,
               doc: &'static str,
               kind: Option<ProjectionKind>,
               body: &'static str| async move {
        let generation = generation(s, t, doc).await;
        s.put_projection(team(t), id(doc), generation, kind, body, now())
            .await
    };
    put("north", "f1", Some(ProjectionKind::Family), "n-f1")
        .await
        .expect("put");
    put("north", "f2", Some(ProjectionKind::Family), "n-f2")
        .await
        .expect("put");
    put("north", "day", Some(ProjectionKind::FamilyDay), "n-day")
        .await
        .expect("put");
    put("north", "dir", None, "").await.expect("put");
    put("south", "f1", Some(ProjectionKind::Family), "s-f1")
        .await
        .expect("put");
    assert!(
        dirty(s).await.is_empty(),
        "every mark cleared, the directory's too"
    );
    let mut families = s
        .projections(team("north"), ProjectionKind::Family)
        .await
        .expect("projections");
    families.sort();
    let mut expected = vec![
        (id("f1"), "n-f1".to_string()),
        (id("f2"), "n-f2".to_string()),
    ];
    expected.sort();
    assert_eq!(families, expected);
    assert_eq!(
        s.projections(team("north"), ProjectionKind::FamilyDay)
            .await
            .expect("projections"),
        [(id("day"), "n-day".to_string())]
    );
    assert_eq!(
        s.projections(team("south"), ProjectionKind::Family)
            .await
            .expect("projections"),
        [(id("f1"), "s-f1".to_string())]
    );
    assert!(
        s.projections(team("east"), ProjectionKind::Family)
            .await
            .expect("projections")
            .is_empty()
    );
    assert_eq!(
        s.projected_teams().await.expect("teams"),
        [Team::from("north"), Team::from("south")]
    );
    // A document that stopped being one reports count: its projection goes.
    s.commit_upload(&upload("north", "f2", "d", b"c2"))
        .await
        .expect("up");
    let latest = generation(s, "north", "f2").await;
    s.put_projection(team("north"), id("f2"), latest - 1, None, "", now())
        .await
        .expect("put");
    assert!(
        !dirty(s).await.is_empty(),
        "an older generation was written"
    );
    s.put_projection(team("north"), id("f2"), latest, None, "", now())
        .await
        .expect("put");
    assert!(dirty(s).await.is_empty());
    assert_eq!(
        s.projections(team("north"), ProjectionKind::Family)
            .await
            .expect("projections"),
        [(id("f1"), "n-f1".to_string())]
    );
    // Rewritten as another kind, it moves.
    put("north", "f1", Some(ProjectionKind::FamilyDay), "n-f1-day")
        .await
        .expect("put");
    assert!(
        s.projections(team("north"), ProjectionKind::Family)
            .await
            .expect("projections")
            .is_empty()
    );
    assert_eq!(
        s.projections(team("north"), ProjectionKind::FamilyDay)
            .await
            .expect("projections")
            .len(),
        2
    );
    put("south", "f1", None, "").await.expect("put");
    assert_eq!(
        s.projected_teams().await.expect("teams"),
        [Team::from("north")],
        "a team with no projection left is not listed"
    );
    for kind in [ProjectionKind::Family, ProjectionKind::FamilyDay] {
        assert_eq!(ProjectionKind::parse(kind.as_str()), Some(kind));
    }
}

async fn a_purge_removes_projections_and_refuses_new_ones<S: Storage>(s: &S) {
    for (t, doc) in [("north", "fam"), ("south", "fam"), ("north", "other")] {
        s.commit_upload(&upload(t, doc, "d", b"c"))
            .await
            .expect("up");
    }
    for (t, doc) in [("north", "fam"), ("south", "fam"), ("north", "other")] {
        let g = generation(s, t, doc).await;
        s.put_projection(
            team(t),
            id(doc),
            g,
            Some(ProjectionKind::Family),
            "p",
            now(),
        )
        .await
        .expect("put");
    }
    assert!(dirty(s).await.is_empty());
    // Dirty again, then purged: both the projection and the mark go.
    s.commit_upload(&upload("north", "fam", "d", b"c2"))
        .await
        .expect("up");
    let late = generation(s, "north", "fam").await;
    assert!(late > 0);
    assert!(
        s.purge_document(team("north"), id("fam"), "erasure", ADMIN, now())
            .await
            .expect("purge")
    );
    assert_eq!(dirty(s).await, Vec::new());
    let mut north = s
        .projections(team("north"), ProjectionKind::Family)
        .await
        .expect("projections");
    north.sort();
    assert_eq!(north, [(id("other"), "p".to_string())]);
    assert_eq!(
        s.projections(team("south"), ProjectionKind::Family)
            .await
            .expect("projections"),
        [(id("fam"), "p".to_string())],
        "the same id in another team keeps its projection"
    );
    // A projector that read the document before the purge writes nothing.
    s.put_projection(
        team("north"),
        id("fam"),
        late,
        Some(ProjectionKind::Family),
        "late",
        now(),
    )
    .await
    .expect("put after purge");
    assert_eq!(
        s.projections(team("north"), ProjectionKind::Family)
            .await
            .expect("projections"),
        [(id("other"), "p".to_string())]
    );
    assert!(dirty(s).await.is_empty());
    // The erasure ledger's replay purges the same way, stored or not.
    s.commit_upload(&upload("south", "gone", "d", b"c"))
        .await
        .expect("up");
    let g = generation(s, "south", "gone").await;
    s.put_projection(
        team("south"),
        id("gone"),
        g,
        Some(ProjectionKind::FamilyDay),
        "p",
        now(),
    )
    .await
    .expect("put");
    s.commit_upload(&upload("south", "gone", "d", b"c2"))
        .await
        .expect("up");
    let late = generation(s, "south", "gone").await;
    assert!(
        s.ensure_purged(team("south"), id("gone"), "replay", now(), now())
            .await
            .expect("ensure")
    );
    assert!(
        s.projections(team("south"), ProjectionKind::FamilyDay)
            .await
            .expect("projections")
            .is_empty()
    );
    assert!(dirty(s).await.is_empty());
    s.put_projection(
        team("south"),
        id("gone"),
        late,
        Some(ProjectionKind::FamilyDay),
        "late",
        now(),
    )
    .await
    .expect("put after purge");
    assert!(
        s.projections(team("south"), ProjectionKind::FamilyDay)
            .await
            .expect("projections")
            .is_empty()
    );
    assert_eq!(
        s.projected_teams().await.expect("teams"),
        [Team::from("north"), Team::from("south")]
    );
}

/// A sign-in (a new session) racing a reset or a disable of its account:
/// whichever commits first, no session of the account is left.
async fn a_sign_in_racing_a_reset_or_disable_leaves_no_session<S: Storage>(s: Arc<S>) {
    for round in 0..20 {
        let account = format!("r-{round}");
        set_up(&*s, &account, &format!("racer {round}"), StaffRole::Manager).await;
        let hash = format!("s-{round}").into_bytes();
        let signing_in = {
            let (s, account, hash) = (s.clone(), account.clone(), hash.clone());
            tokio::spawn(async move {
                match s
                    .create_session(&hash, &session_for(&account, "csrf"))
                    .await
                {
                    Ok(()) | Err(StorageError::Conflict(_)) => {}
                    Err(e) => panic!("create_session: {e}"),
                }
            })
        };
        let ending = {
            let (s, account) = (s.clone(), account.clone());
            tokio::spawn(async move {
                if round % 2 == 0 {
                    let token = format!("setup-again-{account}").into_bytes();
                    let expires = now() + Duration::hours(1);
                    assert!(
                        s.reset_account(&account, &token, expires)
                            .await
                            .expect("reset")
                    );
                } else {
                    assert!(s.disable_account(&account, now()).await.expect("disable"));
                }
            })
        };
        signing_in.await.expect("sign-in");
        ending.await.expect("reset or disable");
        assert!(
            s.session(&hash).await.expect("session").is_none(),
            "round {round}: a session outlived its account's reset or disable"
        );
    }
}

/// What `audit_search` found, by document id (else action), and the count.
async fn searched<S: Storage>(s: &S, query: AuditSearch, limit: usize) -> (Vec<String>, u64) {
    let (found, total) = s.audit_search(&query, limit).await.expect("search");
    let ids = found
        .into_iter()
        .map(|e| {
            e.document_id
                .unwrap_or_else(|| e.action.as_str().to_string())
        })
        .collect();
    (ids, total)
}

async fn the_audit_is_searched_newest_first_with_a_count<S: Storage>(s: &S) {
    use chrono::TimeZone;
    let day =
        |d: u32, h: u32, m: u32, sec: u32| Utc.with_ymd_and_hms(2000, 3, d, h, m, sec).unwrap();
    // Enrolling audits `enrolled` now, with the device: team north.
    let nia = enrol(s, "north", "Nia", "d-nia").await;
    let records = [
        // Its team is its device's.
        AuditRecord::by(Some(&nia), AuditAction::Read, Some("a1"), day(1, 0, 0, 0)),
        AuditRecord::new(
            AuditAction::Uploaded,
            day(1, 23, 59, 59) + Duration::milliseconds(500),
        )
        .worker("100%_Sure")
        .document("south", "a2"),
        AuditRecord::new(AuditAction::Purged, day(2, 0, 0, 0))
            .worker("Office ADMIN")
            .in_document("a3"),
        AuditRecord::new(AuditAction::Read, day(3, 12, 0, 0))
            .worker("100xxSure")
            .document("north", "a4"),
        AuditRecord::by(
            Some(&nia),
            AuditAction::Uploaded,
            Some("a5"),
            day(4, 0, 0, 0),
        ),
        // Its own team before its device's.
        AuditRecord::by(Some(&nia), AuditAction::CrossTeam, None, day(4, 6, 0, 0))
            .document("south", "a6"),
    ];
    s.append_audit(&records).await.expect("audit");
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let all = AuditSearch::default();

    // Newest first, all counted; the limit cuts the rows, not the count.
    let newest = ids(&["a6", "a5", "a4", "a3", "a2", "a1", "enrolled"]);
    assert_eq!(searched(s, all.clone(), 100).await, (newest, 7));
    assert_eq!(searched(s, all.clone(), 2).await, (ids(&["a6", "a5"]), 7));
    assert_eq!(searched(s, all.clone(), 0).await, (vec![], 7));

    // Each filter alone.
    let q = |f: fn(&mut AuditSearch)| {
        let mut q = AuditSearch::default();
        f(&mut q);
        q
    };
    assert_eq!(
        searched(s, q(|q| q.family = Some("a3".into())), 100).await,
        (ids(&["a3"]), 1)
    );
    assert_eq!(
        searched(s, q(|q| q.device = Some(DeviceId::from("d-nia"))), 100).await,
        (ids(&["a6", "a5", "a1", "enrolled"]), 4)
    );
    assert_eq!(
        searched(s, q(|q| q.team = Some(Team::from("north"))), 100).await,
        (ids(&["a5", "a4", "a1", "enrolled"]), 4)
    );
    assert_eq!(
        searched(s, q(|q| q.team = Some(Team::from("south"))), 100).await,
        (ids(&["a6", "a2"]), 2)
    );
    let (by_device, _) = s
        .audit_search(&q(|q| q.family = Some("a1".into())), 1)
        .await
        .expect("search");
    assert_eq!(by_device[0].team.as_deref(), Some("north"));
    assert_eq!(
        searched(s, q(|q| q.worker = Some("office admin".into())), 100).await,
        (ids(&["a3"]), 1)
    );
    assert_eq!(
        searched(s, q(|q| q.worker = Some("SURE".into())), 100).await,
        (ids(&["a4", "a2"]), 2)
    );
    // `%` and `_` are plain characters, not wildcards.
    for literal in ["100%", "%_s", "_", "%"] {
        let query = AuditSearch {
            worker: Some(literal.into()),
            ..AuditSearch::default()
        };
        assert_eq!(
            searched(s, query, 100).await,
            (ids(&["a2"]), 1),
            "{literal}"
        );
    }
    assert_eq!(
        searched(s, q(|q| q.worker = Some("\\".into())), 100).await,
        (vec![], 0)
    );
    assert_eq!(
        searched(s, q(|q| q.action = Some("read".into())), 100).await,
        (ids(&["a4", "a1"]), 2)
    );
    assert_eq!(
        searched(s, q(|q| q.action = Some("rea".into())), 100).await,
        (vec![], 0)
    );

    // The bounds: `from` inclusive, `to_before` exclusive, to the fraction.
    let between = |from: Option<DateTime<Utc>>, to_before: Option<DateTime<Utc>>| AuditSearch {
        from,
        to_before,
        ..AuditSearch::default()
    };
    assert_eq!(
        searched(
            s,
            between(Some(day(1, 0, 0, 0)), Some(day(2, 0, 0, 0))),
            100
        )
        .await,
        (ids(&["a2", "a1"]), 2)
    );
    assert_eq!(
        searched(
            s,
            between(Some(day(2, 0, 0, 0)), Some(day(4, 0, 0, 0))),
            100
        )
        .await,
        (ids(&["a4", "a3"]), 2)
    );
    assert_eq!(
        searched(
            s,
            between(Some(day(1, 23, 59, 59) + Duration::milliseconds(501)), None),
            100
        )
        .await,
        (ids(&["a6", "a5", "a4", "a3", "enrolled"]), 5)
    );
    assert_eq!(
        searched(s, between(None, Some(day(1, 0, 0, 0))), 100).await,
        (vec![], 0)
    );
    assert_eq!(
        searched(s, between(None, Some(day(1, 0, 0, 1))), 100).await,
        (ids(&["a1"]), 1)
    );

    // Combined, and with the limit.
    let north_reads_since_2nd = AuditSearch {
        team: Some(Team::from("north")),
        action: Some("read".into()),
        from: Some(day(2, 0, 0, 0)),
        ..AuditSearch::default()
    };
    assert_eq!(
        searched(s, north_reads_since_2nd, 100).await,
        (ids(&["a4"]), 1)
    );
    let nia_before_4th = AuditSearch {
        device: Some(DeviceId::from("d-nia")),
        worker: Some("NI".into()),
        to_before: Some(day(4, 0, 0, 0)),
        ..AuditSearch::default()
    };
    assert_eq!(searched(s, nia_before_4th, 100).await, (ids(&["a1"]), 1));
    let south_in_march = AuditSearch {
        team: Some(Team::from("south")),
        from: Some(day(1, 0, 0, 0)),
        to_before: Some(day(31, 0, 0, 0)),
        ..AuditSearch::default()
    };
    assert_eq!(searched(s, south_in_march, 1).await, (ids(&["a6"]), 2));
    let nobody = AuditSearch {
        family: Some("a2".into()),
        team: Some(Team::from("north")),
        ..AuditSearch::default()
    };
    assert_eq!(searched(s, nobody, 100).await, (vec![], 0));
}
