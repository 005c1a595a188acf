//! A team's caseload generated through the public `Repo` API (families,
//! case notes, family days with check-ins) and a worker's day of offline
//! work, reproducible from a seed: what the benchmarks measure and tests
//! fill stores with.

use chrono::NaiveDate;
use linkbook_core::{DocumentId, FamilyUpdate, NewFamily, NewFamilyDay, NoteCategory, Repo};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::Result;

const WORDS: &[&str] = &[
    "visit",
    "school",
    "mother",
    "father",
    "children",
    "prison",
    "phone",
    "call",
    "court",
    "letter",
    "housing",
    "benefits",
    "worried",
    "settled",
    "anxious",
    "progress",
    "support",
    "referral",
    "counselling",
    "teacher",
    "homework",
    "transport",
    "travel",
    "grant",
    "booked",
    "family",
    "day",
    "release",
    "date",
    "probation",
    "officer",
    "sentence",
    "remand",
    "hearing",
    "solicitor",
    "contact",
    "video",
    "weekend",
    "grandmother",
    "carer",
    "nursery",
    "sleep",
    "behaviour",
    "improving",
    "discussed",
    "agreed",
    "plan",
    "review",
    "next",
    "week",
    "month",
    "arranged",
    "cancelled",
    "rearranged",
    "debt",
    "advice",
    "foodbank",
    "voucher",
    "clothing",
    "uniform",
    "attendance",
    "exclusion",
    "meeting",
    "health",
    "visitor",
    "GP",
    "dentist",
    "youth",
    "club",
    "football",
    "swimming",
    "birthday",
    "card",
    "present",
    "photo",
    "drawing",
    "bedroom",
    "moved",
    "council",
    "tenancy",
    "rent",
    "arrears",
    "social",
    "worker",
    "safeguarding",
    "concern",
    "shared",
    "consent",
    "signed",
    "form",
    "keyworker",
    "update",
    "chaplaincy",
    "library",
    "reading",
    "story",
    "book",
    "recorded",
    "message",
    "emotional",
    "wellbeing",
    "the",
    "and",
    "with",
    "about",
    "after",
    "before",
    "because",
    "would",
    "like",
    "to",
];

/// Sizes of one tier.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub families: usize,
    pub notes_per_family: usize,
    pub family_days: usize,
    /// Check-ins recorded at each family day when seeding.
    pub checkins_per_day: usize,
    pub devices: usize,
    /// A day of offline work on one device:
    pub touched_families: usize,
    pub new_notes_per_family: usize,
    pub field_edits: usize,
    pub day_checkins: usize,
}

/// Note text of 30–80 words, about 200–500 characters.
pub fn note_text(rng: &mut StdRng) -> String {
    let n = rng.random_range(30..80);
    let mut s = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS.choose(rng).copied().unwrap_or("note"));
    }
    s
}

const SURNAMES: &[&str] = &[
    "Smith", "Okafor", "Khan", "Jones", "Williams", "Brown", "Taylor", "Davies", "Evans", "Wilson",
    "Patel", "Nowak", "Murphy", "Ahmed", "Hughes", "Edwards", "Green", "Hall", "Wood", "Clarke",
];

/// What was seeded.
#[derive(Debug, Clone)]
pub struct Caseload {
    pub families: Vec<DocumentId>,
    pub family_days: Vec<DocumentId>,
}

/// Generates the team's caseload on `repo`, one durable write per call, as
/// workers would have made it.
pub fn seed(repo: &Repo, sizes: &Sizes, rng: &mut StdRng) -> Result<Caseload> {
    let mut families = Vec::with_capacity(sizes.families);
    for i in 0..sizes.families {
        let surname = SURNAMES[i % SURNAMES.len()];
        let id = repo.add_family(&NewFamily {
            name: format!("{surname} {i:04}"),
            address: Some(format!("{} Station Road", rng.random_range(1..300))),
            key_worker: Some(format!("Worker {}", i % 25)),
        })?;
        for _ in 0..sizes.notes_per_family {
            let category = *[
                NoteCategory::Visit,
                NoteCategory::PhoneCall,
                NoteCategory::School,
                NoteCategory::Court,
            ]
            .choose(rng)
            .unwrap_or(&NoteCategory::Other);
            repo.add_note(id, &note_text(rng), category)?;
        }
        families.push(id);
    }
    let mut family_days = Vec::with_capacity(sizes.family_days);
    let base = NaiveDate::from_ymd_opt(2026, 1, 10).ok_or("date")?;
    for d in 0..sizes.family_days {
        let day = repo.create_family_day(&NewFamilyDay {
            prison: format!("HMP {}", ["Leeds", "Hull", "Durham", "Lewes"][d % 4]),
            date: base + chrono::Days::new(d as u64 * 7),
            capacity: Some(40),
        })?;
        for f in families.choose_multiple(rng, sizes.checkins_per_day) {
            repo.check_in(day, *f, rng.random_range(1..3), rng.random_range(0..4))?;
        }
        family_days.push(day);
    }
    Ok(Caseload {
        families,
        family_days,
    })
}

/// What a worker does offline in a day: notes on the families they saw, a
/// few field edits, check-ins at a family day.
pub fn offline_day(
    repo: &Repo,
    caseload: &Caseload,
    sizes: &Sizes,
    rng: &mut StdRng,
) -> Result<()> {
    let mut touched: Vec<DocumentId> = caseload
        .families
        .choose_multiple(rng, sizes.touched_families)
        .copied()
        .collect();
    touched.shuffle(rng);
    for f in &touched {
        for _ in 0..sizes.new_notes_per_family {
            repo.add_note(*f, &note_text(rng), NoteCategory::Visit)?;
        }
    }
    for f in touched.iter().take(sizes.field_edits) {
        repo.update_family(
            *f,
            &FamilyUpdate {
                address: Some(format!("{} Mill Lane", rng.random_range(1..300))),
                ..Default::default()
            },
        )?;
    }
    if let Some(day) = caseload.family_days.choose(rng) {
        for f in touched.iter().take(sizes.day_checkins) {
            repo.check_in(*day, *f, 1, rng.random_range(0..3))?;
        }
    }
    Ok(())
}

/// A reproducible generator for one purpose.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}
