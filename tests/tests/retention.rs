//! Retention and offline leases, with an injected clock: closed cases are
//! dropped when their team's retention runs out (by the relay and by the
//! devices), and a device that has not synced for its lease locks itself.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use linkbook_core::*;
use linkbook_tests::Relay;

/// A device whose clock the test moves.
struct Tablet {
    repo: Repo,
    now: Arc<Mutex<DateTime<Utc>>>,
    _dir: tempfile::TempDir,
}

impl Tablet {
    fn enrolled(relay: &Relay, worker: &str) -> Tablet {
        let dir = tempfile::tempdir().expect("dir");
        let now = Arc::new(Mutex::new(Utc::now()));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || *clock_now.lock().expect("clock"));
        let repo = Repo::open_with_clock(
            dir.path().join("linkbook.db"),
            &DatabaseKey::generate(),
            clock,
        )
        .expect("open");
        repo.enrol(
            &relay.url,
            &relay.enrol_code("north", worker),
            Some(&relay.ca_pem()),
            "tablet",
        )
        .expect("enrol");
        Tablet {
            repo,
            now,
            _dir: dir,
        }
    }

    fn advance(&self, days: i64) {
        *self.now.lock().expect("clock") += Duration::days(days);
    }

    fn family(&self, name: &str, closed_days_ago: Option<i64>) -> Result<DocumentId> {
        let id = self.repo.add_family(&NewFamily {
            name: name.into(),
            ..Default::default()
        })?;
        self.repo.add_note(id, "a note", NoteCategory::Visit)?;
        if let Some(ago) = closed_days_ago {
            let today = self.now.lock().expect("clock").date_naive();
            self.repo
                .close_family(id, today - Duration::days(ago), "support ended")?;
        }
        Ok(id)
    }
}

fn admin_ok(relay: &Relay, args: &[&str]) -> String {
    let r = relay.admin(args);
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    r.stdout
}

#[test]
fn closed_cases_are_dropped_when_the_team_retention_runs_out() -> Result<()> {
    let relay = Relay::start();
    let a = Tablet::enrolled(&relay, "Asha");
    let long_closed = a.family("Closed long ago", Some(40))?;
    let just_closed = a.family("Closed today", Some(0))?;
    let open = a.family("Open", None)?;
    let s = a.repo.sync(None)?;
    assert!(s.purged.is_empty(), "{s:?}");
    // The office sets a retention period afterwards.
    let out = admin_ok(
        &relay,
        &[
            "team",
            "policy",
            "--team",
            "north",
            "--retention-days",
            "30",
        ],
    );
    assert!(out.contains("retention 30 days"), "{out}");

    // The relay's sweep (its clock injected with --today) purges what is due.
    let today = Utc::now().date_naive().to_string();
    let out = admin_ok(&relay, &["retention", "apply", "--today", &today]);
    assert_eq!(out.trim(), format!("purged {long_closed}"));
    let s = a.repo.sync(None)?;
    assert_eq!(s.purged, vec![long_closed.to_string()]);
    assert!(matches!(
        a.repo.family(long_closed),
        Err(Error::NotFound { .. })
    ));

    // A month on, the device drops the other closed case itself, before
    // the relay's sweep has run; the open case stays.
    a.advance(31);
    let s = a.repo.sync(None)?;
    assert_eq!(s.purged, vec![just_closed.to_string()]);
    let left: Vec<DocumentId> = a.repo.families()?.into_iter().map(|f| f.id).collect();
    assert_eq!(left, vec![open]);
    // And the sweep on that day purges it on the relay too.
    let later = (Utc::now() + Duration::days(31)).date_naive().to_string();
    let out = admin_ok(&relay, &["retention", "apply", "--today", &later]);
    assert_eq!(out.trim(), format!("purged {just_closed}"));

    // Bad policies are refused.
    for bad in ["-1", "soon", "99999999"] {
        let r = relay.admin(&["team", "policy", "--team", "north", "--retention-days", bad]);
        assert_ne!(r.code, 0, "{bad} accepted");
    }
    Ok(())
}

#[test]
fn a_device_unsynced_for_longer_than_its_lease_locks_until_it_syncs() -> Result<()> {
    let relay = Relay::start();
    admin_ok(
        &relay,
        &["team", "policy", "--team", "north", "--lease-days", "7"],
    );
    let a = Tablet::enrolled(&relay, "Asha");
    let family = a.family("Smith", None)?;
    a.repo.sync(None)?;

    a.advance(6);
    assert_eq!(a.repo.notes(family)?.len(), 1);
    // Lost in a prison for more than a week: every record is locked.
    a.advance(2);
    assert!(matches!(a.repo.families(), Err(Error::Locked { days: 7 })));
    assert!(matches!(a.repo.notes(family), Err(Error::Locked { .. })));
    assert!(matches!(a.repo.search("note"), Err(Error::Locked { .. })));
    assert!(matches!(
        a.repo
            .add_note(family, "written while locked", NoteCategory::Other),
        Err(Error::Locked { .. })
    ));
    // Syncing unlocks it; nothing was lost.
    a.repo.sync(None)?;
    assert_eq!(a.repo.notes(family)?.len(), 1);

    // With the lease lifted, time away no longer locks it.
    admin_ok(
        &relay,
        &["team", "policy", "--team", "north", "--lease-days", "off"],
    );
    a.repo.sync(None)?;
    a.advance(100);
    assert_eq!(a.repo.families()?.len(), 1);
    Ok(())
}
