//! Smoke tests of the simulation harness (the property test is
//! `simulation_props.rs`).

use linkbook_core::NoteCategory;
use linkbook_test_support::sim::{Backend, Faults, Sim};

#[test]
fn a_note_written_offline_reaches_the_team_and_not_the_other_team() {
    for backend in [Backend::Memory, Backend::Sqlite] {
        let mut sim = Sim::new(backend, &[("north", 2), ("south", 1)]);
        let family = sim.add_family(0, "Family A").expect("a device operation");
        sim.repo(0)
            .add_note(family, "visited on Tuesday", NoteCategory::Visit)
            .expect("a device operation");
        let results = sim.round(&[0], Faults::NONE, 1, None);
        assert!(results[0].is_ok(), "{results:?}");
        let results = sim.round(&[1, 2], Faults::NONE, 2, None);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let notes = sim.repo(1).notes(family).expect("a device operation");
        assert_eq!(notes.len(), 1, "{backend:?}");
        assert_eq!(notes[0].text, "visited on Tuesday");
        assert!(
            sim.repo(2).family(family).is_err(),
            "south must not see north's family"
        );
        assert!(sim.observed().foreign.is_empty());
        assert_eq!(sim.observed().relay_panics, 0);
    }
}

#[test]
fn faults_break_sessions_and_a_clean_round_recovers() {
    let mut sim = Sim::new(Backend::Memory, &[("north", 3)]);
    let mut notes = Vec::new();
    for d in 0..3 {
        let family = sim
            .add_family(d, &format!("Family {d}"))
            .expect("a device operation");
        for i in 0..3 {
            let id = sim
                .repo(d)
                .add_note(family, &format!("note {i}"), NoteCategory::PhoneCall)
                .expect("a device operation");
            notes.push((family, id));
        }
    }
    let harsh = Faults {
        drop: 0.3,
        duplicate: 0.3,
        reorder: 0.5,
        delay: 0.5,
        cut: 0.05,
    };
    let mut failed = 0;
    for seed in 0..6 {
        failed += sim
            .round(&[0, 1, 2], harsh, seed, None)
            .iter()
            .filter(|r| r.is_err())
            .count();
    }
    assert!(failed > 0, "a harsh network broke no session");
    assert!(sim.observed().faults > 0);
    for seed in 0..3 {
        let results = sim.round(&[0, 1, 2], Faults::NONE, 100 + seed, None);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    }
    for d in 0..3 {
        for (family, id) in &notes {
            let held = sim.repo(d).notes(*family).expect("a device operation");
            assert!(held.iter().any(|n| &n.id == id), "device {d} lacks {id}");
        }
    }
}

#[test]
fn a_device_revoked_mid_sync_is_cut_and_wipes_itself() {
    use linkbook_test_support::sim::RevokeDuring;
    let mut sim = Sim::new(Backend::Sqlite, &[("north", 2)]);
    let family = sim.add_family(0, "Family A").expect("a device operation");
    for i in 0..20 {
        sim.repo(0)
            .add_note(family, &format!("note {i}"), NoteCategory::Visit)
            .expect("a device operation");
    }
    assert!(sim.round(&[0], Faults::NONE, 1, None)[0].is_ok());
    let revoke = RevokeDuring {
        device: 1,
        after_steps: 1,
    };
    let results = sim.round(&[1], Faults::NONE, 2, Some(revoke));
    assert!(results[0].is_err(), "{results:?}");
    assert!(sim.observed().after_revocation.is_empty());
    let again = sim.round(&[1], Faults::NONE, 3, None);
    assert!(
        matches!(again[0], Err(linkbook_core::Error::Revoked)),
        "{again:?}"
    );
    assert!(
        sim.repo(1).family(family).is_err(),
        "the wiped device still reads the family"
    );
}
