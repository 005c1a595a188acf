//! Smoke tests of the simulation harness (the property test is
//! `simulation_props.rs`).

use linkbook_core::NoteCategory;
use linkbook_test_support::sim::{Backend, Faults, Sim};

#[test]
fn a_note_written_offline_reaches_the_team_and_not_the_other_team() {
    for backend in [Backend::Memory, Backend::Sqlite] {
        let mut sim = Sim::new(backend, &[("north", 2), ("south", 1)]);
        let family = sim.add_family(0, "Family A").unwrap();
        sim.repo(0)
            .add_note(family, "visited on Tuesday", NoteCategory::Visit)
            .unwrap();
        let results = sim.round(&[0], Faults::NONE, 1, None);
        assert!(results[0].is_ok(), "{results:?}");
        let results = sim.round(&[1, 2], Faults::NONE, 2, None);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let notes = sim.repo(1).notes(family).unwrap();
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
