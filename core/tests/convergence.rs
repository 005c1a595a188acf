//! Convergence: 3 to 5 replicas make random offline edits, exchange
//! documents in random orders and subsets, and always end identical, with
//! every note anyone wrote.

use chrono::Utc;
use linkbook_core::*;
use linkbook_test_support::{device, send_doc, sync_into};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    AddNote {
        replica: usize,
        family: usize,
    },
    EditNote {
        replica: usize,
        family: usize,
        pick: usize,
    },
    Rename {
        replica: usize,
        family: usize,
        name: u8,
    },
    AddMember {
        replica: usize,
        family: usize,
    },
    EditMember {
        replica: usize,
        family: usize,
        pick: usize,
        school: u8,
    },
    CheckIn {
        replica: usize,
        family: usize,
        adults: u32,
        children: u32,
    },
    Send {
        from: usize,
        to: usize,
        docs: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0usize..5;
    let f = 0usize..2;
    prop_oneof![
        3 => (r.clone(), f.clone()).prop_map(|(replica, family)| Op::AddNote { replica, family }),
        1 => (r.clone(), f.clone(), any::<usize>()).prop_map(|(replica, family, pick)| Op::EditNote { replica, family, pick }),
        1 => (r.clone(), f.clone(), 0u8..4).prop_map(|(replica, family, name)| Op::Rename { replica, family, name }),
        1 => (r.clone(), f.clone()).prop_map(|(replica, family)| Op::AddMember { replica, family }),
        1 => (r.clone(), f.clone(), any::<usize>(), 0u8..3).prop_map(|(replica, family, pick, school)| Op::EditMember { replica, family, pick, school }),
        2 => (r.clone(), f.clone(), 1u32..4, 0u32..4).prop_map(|(replica, family, adults, children)| Op::CheckIn { replica, family, adults, children }),
        3 => (r.clone(), r, any::<u8>()).prop_map(|(from, to, docs)| Op::Send { from, to, docs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_and_keep_every_note(replicas in 3usize..=5, ops in prop::collection::vec(op(), 10..40)) {
        let devices: Vec<_> = (0..replicas).map(|i| device(&format!("worker {i}"))).collect();
        let origin = &devices[0].repo;
        let families = [
            origin.add_family(&NewFamily { name: "Smith".into(), ..Default::default() })?,
            origin.add_family(&NewFamily { name: "Jones".into(), ..Default::default() })?,
        ];
        let day = origin.create_family_day(&NewFamilyDay { prison: "HMP Leeds".into(), date: Utc::now().date_naive(), capacity: None })?;
        for d in &devices[1..] {
            sync_into(origin, &d.repo)?;
        }
        let docs = [families[0], families[1], day, origin.directory_id()];
        let mut written: Vec<String> = Vec::new();
        let mut edits = 0;
        for op in ops {
            match op {
                Op::AddNote { replica, family } => {
                    let repo = &devices[replica % replicas].repo;
                    written.push(repo.add_note(families[family], &format!("note {}", written.len()), NoteCategory::Visit)?);
                }
                Op::EditNote { replica, family, pick } => {
                    let repo = &devices[replica % replicas].repo;
                    let notes = repo.notes(families[family])?;
                    if !notes.is_empty() {
                        edits += 1;
                        repo.edit_note(families[family], &notes[pick % notes.len()].id, &format!("edited {edits}"))?;
                    }
                }
                Op::Rename { replica, family, name } => {
                    devices[replica % replicas].repo.update_family(families[family], &FamilyUpdate { name: Some(format!("Name {name}")), ..Default::default() })?;
                }
                Op::AddMember { replica, family } => {
                    devices[replica % replicas].repo.add_member(families[family], &NewMember {
                        name: "Sam".into(), role: MemberRole::Child, relationship: None, date_of_birth: None,
                        school: None, looked_after: false, social_worker: None,
                    })?;
                }
                Op::EditMember { replica, family, pick, school } => {
                    let repo = &devices[replica % replicas].repo;
                    let members = repo.family(families[family])?.members;
                    if !members.is_empty() {
                        repo.update_member(families[family], &members[pick % members.len()].id,
                            &MemberUpdate { school: Some(format!("School {school}")), ..Default::default() })?;
                    }
                }
                Op::CheckIn { replica, family, adults, children } => {
                    devices[replica % replicas].repo.check_in(day, families[family], adults, children)?;
                }
                Op::Send { from, to, docs: mask } => {
                    let (from, to) = (from % replicas, to % replicas);
                    if from != to {
                        for (i, id) in docs.iter().enumerate() {
                            if mask & (1 << i) != 0 {
                                send_doc(&devices[from].repo, &devices[to].repo, *id)?;
                            }
                        }
                    }
                }
            }
        }
        // Everyone meets everyone: a ring twice round is enough.
        for _ in 0..2 {
            for i in 0..replicas {
                sync_into(&devices[i].repo, &devices[(i + 1) % replicas].repo)?;
            }
        }
        let first = &devices[0].repo;
        for d in &devices[1..] {
            for id in docs {
                prop_assert_eq!(first.heads(id)?, d.repo.heads(id)?);
            }
            prop_assert_eq!(first.families()?, d.repo.families()?);
            for f in families {
                prop_assert_eq!(first.family(f)?, d.repo.family(f)?);
            }
            prop_assert_eq!(first.family_day(day)?, d.repo.family_day(day)?);
            prop_assert_eq!(first.conflicts()?, d.repo.conflicts()?);
        }
        let held: Vec<String> = families.iter().flat_map(|f| first.notes(*f).unwrap_or_default()).map(|n| n.id).collect();
        for note in &written {
            prop_assert!(held.contains(note), "note {} was lost", note);
        }
        prop_assert_eq!(held.len(), written.len());
    }
}
