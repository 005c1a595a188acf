//! The property test on the in-process simulation (issue 13): 3 to 5
//! devices of two teams make random offline edits (families, case notes,
//! field edits, family-day check-ins), the office purges families and
//! revokes devices (some in the middle of a sync), the network drops,
//! duplicates, reorders, delays and cuts messages; then a clean round.
//! Afterwards every device of a team holds the same heads, no note a
//! device still enrolled wrote is lost, a purged family is gone from the
//! relay and every device, a revoked device holds nothing, no document of
//! one team ever reached a device of the other, and the relay never
//! panicked.
//!
//! `LINKBOOK_SIM_CASES=N` sets the number of cases (500 by default, the CI
//! run); a long campaign is e.g. `LINKBOOK_SIM_CASES=10000 cargo test
//! --release -p linkbook-test-support --test simulation_props`.

use std::collections::{BTreeMap, BTreeSet};

use linkbook_core::{DocumentId, Error, FamilyUpdate, NoteCategory};
use linkbook_test_support::sim::{Backend, Faults, RevokeDuring, Sim};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    AddFamily {
        device: usize,
    },
    AddNote {
        device: usize,
        family: usize,
    },
    EditFamily {
        device: usize,
        family: usize,
    },
    CheckIn {
        device: usize,
        family: usize,
    },
    /// The data protection lead purges one of the families made so far.
    Purge {
        family: usize,
    },
    Revoke {
        device: usize,
    },
    /// Some devices sync at once over a faulty network.
    Sync {
        devices: Vec<bool>,
        faults: Faults,
        seed: u64,
        revoke_during: Option<(usize, u32)>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    backend: Backend,
    north: usize,
    south: usize,
    ops: Vec<Op>,
}

fn probability(max: f64) -> impl Strategy<Value = f64> {
    prop_oneof![2 => Just(0.0), 1 => 0.0..max]
}

fn faults() -> impl Strategy<Value = Faults> {
    (
        probability(0.3),
        probability(0.3),
        probability(0.5),
        probability(0.5),
        probability(0.05),
    )
        .prop_map(|(drop, duplicate, reorder, delay, cut)| Faults {
            drop,
            duplicate,
            reorder,
            delay,
            cut,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let device = 0usize..5;
    let pick = 0usize..8;
    prop_oneof![
        3 => device.clone().prop_map(|device| Op::AddFamily { device }),
        5 => (device.clone(), pick.clone()).prop_map(|(device, family)| Op::AddNote { device, family }),
        2 => (device.clone(), pick.clone()).prop_map(|(device, family)| Op::EditFamily { device, family }),
        2 => (device.clone(), pick.clone()).prop_map(|(device, family)| Op::CheckIn { device, family }),
        1 => pick.prop_map(|family| Op::Purge { family }),
        1 => device.clone().prop_map(|device| Op::Revoke { device }),
        4 => (
            proptest::collection::vec(any::<bool>(), 5),
            faults(),
            any::<u64>(),
            proptest::option::weighted(0.15, (device, 1u32..60)),
        )
            .prop_map(|(devices, faults, seed, revoke_during)| Op::Sync {
                devices,
                faults,
                seed,
                revoke_during,
            }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![3 => Just(Backend::Memory), 1 => Just(Backend::Sqlite)],
        2usize..=3,
        1usize..=2,
        proptest::collection::vec(op(), 4..24),
    )
        .prop_map(|(backend, north, south, ops)| Case {
            backend,
            north,
            south,
            ops,
        })
}

/// What the test expects, kept beside the simulation.
#[derive(Debug, Default)]
struct Model {
    families: Vec<DocumentId>,
    /// (family, note id, writer).
    notes: Vec<(DocumentId, String, usize)>,
    purged: BTreeSet<DocumentId>,
    revoked: BTreeSet<usize>,
    /// Each team's family day, on the device that made it.
    days: BTreeMap<usize, DocumentId>,
}

/// A family the device holds, chosen by `pick`.
fn held(sim: &Sim, device: usize, pick: usize) -> Option<DocumentId> {
    let families = sim.repo(device).families().ok()?;
    (!families.is_empty()).then(|| families[pick % families.len()].id)
}

/// A sync's error a fault may cause: the network's, or a revoked device's
/// (refused, or no longer enrolled once it wiped itself).
fn expected_failure(e: &Error, revoked: bool) -> bool {
    matches!(e, Error::Network(_)) || (revoked && wiped(e))
}

fn wiped(e: &Error) -> bool {
    matches!(e, Error::Revoked | Error::Unauthorized(_))
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(
        case.backend,
        &[("north", case.north), ("south", case.south)],
    );
    let n = sim.devices();
    let mut model = Model::default();
    for op in &case.ops {
        match op.clone() {
            Op::AddFamily { device } => {
                let device = device % n;
                let id = sim
                    .add_family(device, &format!("Family {}", model.families.len()))
                    .map_err(|e| TestCaseError::fail(format!("add_family: {e}")))?;
                model.families.push(id);
            }
            Op::AddNote { device, family } => {
                let device = device % n;
                if let Some(f) = held(&sim, device, family) {
                    let text = format!("note {} by device {device}", model.notes.len());
                    let id = sim
                        .repo(device)
                        .add_note(f, &text, NoteCategory::Visit)
                        .map_err(|e| TestCaseError::fail(format!("add_note: {e}")))?;
                    model.notes.push((f, id, device));
                }
            }
            Op::EditFamily { device, family } => {
                let device = device % n;
                if let Some(f) = held(&sim, device, family) {
                    sim.repo(device)
                        .update_family(
                            f,
                            &FamilyUpdate {
                                address: Some(format!("{device} Station Road")),
                                ..Default::default()
                            },
                        )
                        .map_err(|e| TestCaseError::fail(format!("update_family: {e}")))?;
                }
            }
            Op::CheckIn { device, family } => {
                let device = device % n;
                if let Some(f) = held(&sim, device, family) {
                    let day = match model.days.get(&device) {
                        Some(d) if sim.repo(device).family_day(*d).is_ok() => *d,
                        _ => {
                            let d = sim
                                .create_family_day(device, "HMP Simulation")
                                .map_err(|e| TestCaseError::fail(format!("family day: {e}")))?;
                            model.days.insert(device, d);
                            d
                        }
                    };
                    sim.repo(device)
                        .check_in(day, f, 1, 2)
                        .map_err(|e| TestCaseError::fail(format!("check_in: {e}")))?;
                }
            }
            Op::Purge { family } => {
                if !model.families.is_empty() {
                    let f = model.families[family % model.families.len()];
                    if sim.purge(f).is_ok() {
                        model.purged.insert(f);
                    }
                }
            }
            Op::Revoke { device } => {
                let device = device % n;
                if model.revoked.insert(device) {
                    sim.revoke(device);
                }
            }
            Op::Sync {
                devices,
                faults,
                seed,
                revoke_during,
            } => {
                let chosen: Vec<usize> = (0..n).filter(|&d| devices[d]).collect();
                if chosen.is_empty() {
                    continue;
                }
                let during = revoke_during.map(|(d, after_steps)| RevokeDuring {
                    device: d % n,
                    after_steps,
                });
                if let Some(r) = during {
                    model.revoked.insert(r.device);
                }
                let results = sim.round(&chosen, faults, seed, during);
                for (&d, r) in chosen.iter().zip(&results) {
                    if let Err(e) = r {
                        prop_assert!(
                            expected_failure(e, model.revoked.contains(&d)),
                            "device {d}'s sync failed unexpectedly: {e:?}"
                        );
                    }
                }
            }
        }
    }
    clean_round(&mut sim, &model)?;
    check(&sim, &model)?;
    tally(&sim, &model);
    Ok(())
}

/// Every device syncs over a clean network until nothing moves.
fn clean_round(sim: &mut Sim, model: &Model) -> Result<(), TestCaseError> {
    let mut all: Vec<usize> = (0..sim.devices()).collect();
    for round in 0..8u64 {
        let results = sim.round(&all, Faults::NONE, round, None);
        // A revoked device takes part once: it is refused and wipes itself.
        let revoked_left = all.iter().any(|d| model.revoked.contains(d));
        let mut moved = false;
        for (d, r) in all.iter().zip(&results) {
            match r {
                Ok(s) => {
                    prop_assert!(
                        !model.revoked.contains(d),
                        "revoked device {d} synced in the clean round"
                    );
                    moved |=
                        s.documents_sent > 0 || s.documents_received > 0 || !s.purged.is_empty();
                }
                Err(e) if model.revoked.contains(d) && wiped(e) => {}
                Err(e) => prop_assert!(false, "device {d} failed in the clean round: {e:?}"),
            }
        }
        all.retain(|d| !model.revoked.contains(d));
        if !moved && round > 0 && !revoked_left {
            return Ok(());
        }
    }
    prop_assert!(false, "the clean rounds did not settle");
    Ok(())
}

fn check(sim: &Sim, model: &Model) -> Result<(), TestCaseError> {
    let seen = sim.observed();
    prop_assert!(
        seen.foreign.is_empty(),
        "another team's documents reached devices: {:?}",
        seen.foreign
    );
    prop_assert!(
        seen.after_revocation.is_empty(),
        "documents reached a revoked device's open connection: {:?}",
        seen.after_revocation
    );
    prop_assert_eq!(seen.relay_panics, 0, "a relay session panicked");
    let live: Vec<usize> = (0..sim.devices())
        .filter(|d| !model.revoked.contains(d))
        .collect();
    for d in 0..sim.devices() {
        let ids: Vec<DocumentId> = sim
            .repo(d)
            .document_ids()
            .map_err(|e| TestCaseError::fail(format!("document_ids: {e}")))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if model.revoked.contains(&d) {
            // Wiped: nothing of its team's is left (what it wrote since,
            // as a new unenrolled device, is its own).
            let kept: Vec<_> = ids
                .iter()
                .filter(|id| sim.origin(**id) == Some(sim.team(d)))
                .collect();
            prop_assert!(kept.is_empty(), "revoked device {d} still holds {kept:?}");
            continue;
        }
        for id in &ids {
            prop_assert_eq!(
                sim.origin(*id),
                Some(sim.team(d)),
                "device {} holds {} of another team",
                d,
                id
            );
            prop_assert!(!model.purged.contains(id), "device {d} holds purged {id}");
        }
    }
    for f in &model.purged {
        for team in ["north", "south"] {
            prop_assert!(
                !sim.relay_holds(team, *f),
                "the relay still holds purged {f}"
            );
        }
    }
    // Every device of a team holds the same documents at the same heads.
    for team in ["north", "south"] {
        let members: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&d| sim.team(d) == team)
            .collect();
        let Some(&first) = members.first() else {
            continue;
        };
        let heads = |d: usize| -> Result<BTreeMap<DocumentId, Vec<String>>, TestCaseError> {
            let mut out = BTreeMap::new();
            for (id, _) in sim
                .repo(d)
                .document_ids()
                .map_err(|e| TestCaseError::fail(e.to_string()))?
            {
                out.insert(
                    id,
                    sim.repo(d)
                        .heads(id)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?,
                );
            }
            Ok(out)
        };
        let expected = heads(first)?;
        for &d in &members[1..] {
            prop_assert_eq!(
                &heads(d)?,
                &expected,
                "devices {} and {} of {} differ",
                first,
                d,
                team
            );
        }
    }
    // No note a device still enrolled wrote is lost (unless its family
    // was erased).
    for (family, note, writer) in &model.notes {
        if model.revoked.contains(writer) || model.purged.contains(family) {
            continue;
        }
        let team = sim.team(*writer);
        for &d in live.iter().filter(|&&d| sim.team(d) == team) {
            let notes = sim
                .repo(d)
                .notes(*family)
                .map_err(|e| TestCaseError::fail(format!("device {d}, family {family}: {e}")))?;
            prop_assert!(
                notes.iter().any(|n| &n.id == note),
                "device {d} lacks note {note} of {family} written by device {writer}"
            );
        }
    }
    Ok(())
}

/// Totals over the run, printed at the end (`--nocapture`): evidence that
/// the faults happened and the sessions they broke recovered.
static TOTALS: std::sync::Mutex<[u64; 5]> = std::sync::Mutex::new([0; 5]);

fn tally(sim: &Sim, model: &Model) {
    let seen = sim.observed();
    let mut t = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    t[0] += 1;
    t[1] += seen.delivered;
    t[2] += seen.faults;
    t[3] += seen.failed_sessions;
    t[4] += model.purged.len() as u64 + model.revoked.len() as u64;
    if t[0].is_multiple_of(100) || t[0] == u64::from(cases()) {
        eprintln!(
            "simulation: {} cases, {} messages handed on, {} faults, {} sessions broken by them, {} purges and revocations",
            t[0], t[1], t[2], t[3], t[4]
        );
    }
}

fn cases() -> u32 {
    std::env::var("LINKBOOK_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn teams_converge_and_nothing_leaks_under_faults(case in case()) {
        run(&case)?;
    }
}
