//! One function per command group: parse the ids and dates, call one `Repo`
//! method, print its result as text or `--json`. Nothing here decides
//! anything about the records; core does.

use std::io::BufRead;
use std::path::Path;

use linkbook_core::{
    Consent, DocumentId, Error, Family, FamilyUpdate, NewFamily, NewFamilyDay, NewReferral,
    NoteCategory, Repo, parse_date,
};

use crate::args::*;
use crate::device::{self, io_error};
use crate::output::{json, line, or_dash};

/// Set by a sync the relay refused some of this device's changes in (the
/// others synced): `main` exits 9 after the summary is printed.
pub(crate) static CHANGES_REFUSED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub fn run(data: &Path, command: Command) -> Result<(), Error> {
    let repo = device::open(data)?;
    let result = run_command(repo, command);
    // Revoked: core wiped the store (and the repo is closed by now); the
    // profile's files go too.
    if matches!(result, Err(Error::Revoked)) {
        device::remove_wiped(data)?;
    }
    result
}

fn run_command(repo: Repo, command: Command) -> Result<(), Error> {
    match command {
        Command::Profile(cmd) => profile(&repo, cmd),
        Command::Family(cmd) => family(&repo, cmd),
        Command::Member(cmd) => member(&repo, cmd),
        Command::Prisoner(PrisonerCommand::Link(a)) => {
            line(repo.link_prisoner(family_id(&a.family)?, &a.to_core()?)?)
        }
        Command::Consent(ConsentCommand::Record {
            family,
            given_by,
            date,
            scope,
        }) => repo.record_consent(
            family_id(&family)?,
            &Consent {
                given_by,
                date: parse_date("consent date", &date)?,
                scope,
            },
        ),
        Command::Flag(FlagCommand::Raise { family, text }) => {
            line(repo.raise_safeguarding_flag(family_id(&family)?, &text)?)
        }
        Command::Flag(FlagCommand::Clear { family, flag }) => {
            repo.clear_safeguarding_flag(family_id(&family)?, &flag)
        }
        Command::Note(cmd) => note(&repo, cmd),
        Command::Referral(cmd) => referral(&repo, cmd),
        Command::Search { query, json: true } => json(&repo.search(&query)?),
        Command::Search { query, json: false } => {
            for h in repo.search(&query)? {
                line(format_args!(
                    "{}  {}  {}  {}  {}",
                    h.family_id,
                    h.created_at.format("%Y-%m-%d"),
                    h.family_name,
                    h.category,
                    h.snippet
                ))?;
            }
            Ok(())
        }
        Command::Day(cmd) => day(&repo, cmd),
        Command::Conflicts { json: true } => json(&repo.conflicts()?),
        Command::Conflicts { json: false } => {
            for c in repo.conflicts()? {
                let values: Vec<String> = c
                    .values
                    .iter()
                    .map(|v| {
                        let worker = v.worker.as_deref().unwrap_or("unknown worker");
                        let time = v.time.map_or("unknown time".to_string(), |t| {
                            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        });
                        format!("{} (by {worker} at {time}, device {})", v.value, v.device)
                    })
                    .collect();
                line(format_args!(
                    "{} {}  {}",
                    c.document_id,
                    c.path,
                    values.join("  |  ")
                ))?;
            }
            Ok(())
        }
        Command::Resolve {
            document,
            path,
            value,
        } => repo.resolve_conflict(
            DocumentId::parse(&document, "document id")?,
            &path,
            &resolve_value(value),
        ),
        Command::Export { file } => {
            let n = repo.export_to_file(&file)?;
            line(format_args!("exported {n} documents to {}", file.display()))
        }
        Command::Import { file, json: true } => json(&repo.import_from_file(&file)?),
        Command::Import { file, json: false } => {
            let s = repo.import_from_file(&file)?;
            line(format_args!(
                "imported: {} new, {} updated, {} unchanged",
                s.documents_new, s.documents_updated, s.documents_unchanged
            ))
        }
        Command::Enrol {
            server,
            code,
            ca,
            device_name,
        } => {
            let ca_pem = match &ca {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(io_error(format!("could not read {}", path.display())))?,
                ),
                None => None,
            };
            let name = device_name.unwrap_or_else(|| "linkbook CLI".into());
            let e = repo.enrol(&server, &code, ca_pem.as_deref(), &name)?;
            line(format_args!(
                "enrolled as device {} of team {} (worker {})",
                e.device_id, e.team, e.worker
            ))
        }
        Command::Sync {
            json: as_json,
            server,
        } => {
            // A new address is saved only once a sync through it worked.
            let s = match server {
                Some(url) => repo.sync_through(&url, None)?,
                None => repo.sync(None)?,
            };
            // On stderr in both forms: the others synced, so the exit code
            // stays 0, but the worker must hear of it.
            for d in &s.skipped {
                eprintln!(
                    "warning: document {} was skipped: {}; the other documents synced",
                    d.id, d.reason
                );
            }
            for d in &s.refused {
                eprintln!(
                    "error: the relay refused this device's changes to document {}: {}",
                    d.id, d.reason
                );
            }
            if !s.refused.is_empty() {
                CHANGES_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if as_json {
                return json(&s);
            }
            for id in &s.purged {
                eprintln!("the office purged {id}: it has been deleted from this device");
            }
            for id in &s.failed {
                eprintln!(
                    "{id} was not synced: one of its changes is larger than the relay accepts; the other documents synced"
                );
            }
            line(format_args!(
                "synced {} documents: {} sent, {} received, {} unavailable; {} bytes up, {} bytes down",
                s.documents_total,
                s.documents_sent,
                s.documents_received,
                s.documents_unavailable,
                s.bytes_sent,
                s.bytes_received
            ))
        }
    }
}

fn family_id(s: &str) -> Result<DocumentId, Error> {
    DocumentId::parse(s, "family id")
}

fn day_id(s: &str) -> Result<DocumentId, Error> {
    DocumentId::parse(s, "family day id")
}

/// `resolve`'s VALUE: JSON if it parses, else the text itself as a string,
/// so a plain name needs no quotes.
fn resolve_value(value: String) -> serde_json::Value {
    serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value))
}

fn profile(repo: &Repo, cmd: ProfileCommand) -> Result<(), Error> {
    match cmd {
        ProfileCommand::Show { json: true } => json(&repo.profile()),
        ProfileCommand::Show { json: false } => {
            let p = repo.profile();
            line(format_args!(
                "device  {}\nworker  {}\nteam    {}",
                p.device_id, p.worker, p.team
            ))
        }
        ProfileCommand::Set { worker, team } => {
            if worker.is_none() && team.is_none() {
                return Err(Error::InvalidInput {
                    field: "profile",
                    reason: "nothing to change: give --worker and/or --team".into(),
                });
            }
            if let Some(w) = worker {
                repo.set_worker(&w)?;
            }
            if let Some(t) = team {
                repo.set_team(&t)?;
            }
            Ok(())
        }
    }
}

fn family(repo: &Repo, cmd: FamilyCommand) -> Result<(), Error> {
    match cmd {
        FamilyCommand::Add {
            name,
            address,
            key_worker,
        } => line(repo.add_family(&NewFamily {
            name,
            address,
            key_worker,
        })?),
        FamilyCommand::List { json: true } => json(&repo.families()?),
        FamilyCommand::List { json: false } => {
            for f in repo.families()? {
                line(format_args!(
                    "{}  {:<24} {:<6} notes {:>4}  members {:>2}  flags {}",
                    f.id, f.name, f.status, f.notes, f.members, f.safeguarding_flags
                ))?;
            }
            Ok(())
        }
        FamilyCommand::Show { id, json: true } => json(&repo.family(family_id(&id)?)?),
        FamilyCommand::Show { id, json: false } => print_case_file(&repo.family(family_id(&id)?)?),
        FamilyCommand::Update {
            id,
            name,
            address,
            key_worker,
        } => repo.update_family(
            family_id(&id)?,
            &FamilyUpdate {
                name,
                address,
                key_worker,
            },
        ),
        FamilyCommand::Close { id, date, reason } => {
            repo.close_family(family_id(&id)?, parse_date("closure date", &date)?, &reason)
        }
        FamilyCommand::Reopen { id } => repo.reopen_family(family_id(&id)?),
    }
}

fn print_case_file(f: &Family) -> Result<(), Error> {
    line(format_args!("{}  {} ({})", f.id, f.name, f.status))?;
    line(format_args!(
        "  address     {}",
        or_dash(f.address.as_deref())
    ))?;
    line(format_args!(
        "  key worker  {}",
        or_dash(f.key_worker.as_deref())
    ))?;
    match &f.consent {
        Some(c) => line(format_args!(
            "  consent     {} on {}: {}",
            c.given_by, c.date, c.scope
        ))?,
        None => line("  consent     none recorded")?,
    }
    if let Some(c) = &f.closure {
        line(format_args!("  closed      {}: {}", c.date, c.reason))?;
    }
    for s in f.safeguarding.iter().filter(|s| s.cleared_at.is_none()) {
        line(format_args!("  FLAG     {}  {}", s.id, s.text))?;
    }
    for m in &f.members {
        let dob = m.date_of_birth.map(|d| format!(", born {d}"));
        line(format_args!(
            "  member   {}  {} ({}{}{}){}",
            m.id,
            m.name,
            m.role,
            m.relationship
                .as_deref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default(),
            dob.unwrap_or_default(),
            if m.looked_after { ", looked after" } else { "" }
        ))?;
    }
    for p in &f.prisoners {
        line(format_args!(
            "  prisoner {}  {} {} at {} ({})",
            p.id,
            p.name,
            or_dash(p.prison_number.as_deref()),
            p.establishment,
            p.custody
        ))?;
    }
    for r in &f.referrals {
        line(format_args!(
            "  referral {}  {} to {}: {} (outcome: {})",
            r.id,
            r.date,
            r.agency,
            r.reason,
            or_dash(r.outcome.as_deref())
        ))?;
    }
    line(format_args!(
        "  {} notes (note list {})",
        f.notes.len(),
        f.id
    ))
}

fn member(repo: &Repo, cmd: MemberCommand) -> Result<(), Error> {
    match cmd {
        MemberCommand::Add(a) => line(repo.add_member(family_id(&a.family)?, &a.to_core()?)?),
        MemberCommand::Update(a) => {
            repo.update_member(family_id(&a.family)?, &a.member, &a.to_core()?)
        }
        MemberCommand::Remove { family, member } => {
            repo.remove_member(family_id(&family)?, &member)
        }
    }
}

fn note(repo: &Repo, cmd: NoteCommand) -> Result<(), Error> {
    match cmd {
        NoteCommand::Add {
            family,
            text,
            stdin,
            category,
        } => {
            let family = family_id(&family)?;
            let category = NoteCategory::parse(&category)?;
            match (text, stdin) {
                (Some(text), false) => line(repo.add_note(family, &text, category)?),
                (None, true) => {
                    // One durable call per line; each id is printed (and
                    // flushed) only once its note is committed, so every id a
                    // reader has seen survives a crash.
                    for text in std::io::stdin().lock().lines() {
                        let text = text.map_err(io_error("could not read stdin".into()))?;
                        if text.trim().is_empty() {
                            continue;
                        }
                        line(repo.add_note(family, &text, category)?)?;
                    }
                    Ok(())
                }
                // clap refuses both and neither; kept for a clear message.
                _ => Err(Error::InvalidInput {
                    field: "note text",
                    reason: "give --text TEXT or --stdin".into(),
                }),
            }
        }
        NoteCommand::Edit { family, note, text } => {
            repo.edit_note(family_id(&family)?, &note, &text)
        }
        NoteCommand::List { family, json: true } => json(&repo.notes(family_id(&family)?)?),
        NoteCommand::List {
            family,
            json: false,
        } => {
            for n in repo.notes(family_id(&family)?)? {
                let edited = if n.history.is_empty() {
                    ""
                } else {
                    " (edited)"
                };
                line(format_args!(
                    "{}  {}  {:<10} {}{}: {}",
                    n.id,
                    n.created_at.format("%Y-%m-%d %H:%M"),
                    n.category,
                    n.author,
                    edited,
                    n.text
                ))?;
            }
            Ok(())
        }
    }
}

fn referral(repo: &Repo, cmd: ReferralCommand) -> Result<(), Error> {
    match cmd {
        ReferralCommand::Add {
            family,
            agency,
            reason,
            date,
        } => line(repo.add_referral(
            family_id(&family)?,
            &NewReferral {
                agency,
                reason,
                date: parse_date("referral date", &date)?,
            },
        )?),
        ReferralCommand::Outcome {
            family,
            referral,
            outcome,
        } => repo.set_referral_outcome(family_id(&family)?, &referral, &outcome),
    }
}

fn day(repo: &Repo, cmd: DayCommand) -> Result<(), Error> {
    match cmd {
        DayCommand::Create {
            prison,
            date,
            capacity,
        } => line(repo.create_family_day(&NewFamilyDay {
            prison,
            date: parse_date("date", &date)?,
            capacity,
        })?),
        DayCommand::List { json: true } => json(&repo.family_days()?),
        DayCommand::List { json: false } => {
            for d in repo.family_days()? {
                line(format_args!(
                    "{}  {}  {:<20} families {:>3}  adults {:>3}  children {:>3}",
                    d.id, d.date, d.prison, d.families_attended, d.adults, d.children
                ))?;
            }
            Ok(())
        }
        DayCommand::Book {
            day,
            family,
            adults,
            children,
        } => repo.book(day_id(&day)?, family_id(&family)?, adults, children),
        DayCommand::Checkin {
            day,
            family,
            adults,
            children,
            json: as_json,
        } => {
            let a = repo.check_in(day_id(&day)?, family_id(&family)?, adults, children)?;
            if as_json {
                return json(&a);
            }
            line(format_args!(
                "checked in: {} adults, {} children, arrived {}",
                a.adults,
                a.children,
                a.arrived_at.format("%H:%M")
            ))
        }
        DayCommand::Show { day, json: true } => json(&repo.family_day(day_id(&day)?)?),
        DayCommand::Show { day, json: false } => {
            let d = repo.family_day(day_id(&day)?)?;
            line(format_args!(
                "{}  {} at {} (capacity {})",
                d.id,
                d.date,
                d.prison,
                d.capacity
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into())
            ))?;
            for b in &d.bookings {
                line(format_args!(
                    "  booked   {}  adults {} children {}",
                    b.family_id, b.adults, b.children
                ))?;
            }
            for a in &d.attendance {
                line(format_args!(
                    "  arrived  {}  adults {} children {}  at {}",
                    a.family_id,
                    a.adults,
                    a.children,
                    a.arrived_at.format("%H:%M")
                ))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_value;
    use serde_json::json;

    #[test]
    fn resolve_value_is_json_or_else_text() {
        assert_eq!(resolve_value("Smith-Jones".into()), json!("Smith-Jones"));
        assert_eq!(resolve_value("two words".into()), json!("two words"));
        assert_eq!(resolve_value(r#""123""#.into()), json!("123"));
        assert_eq!(resolve_value("3".into()), json!(3));
        assert_eq!(resolve_value("true".into()), json!(true));
        assert_eq!(resolve_value("null".into()), json!(null));
        assert_eq!(resolve_value(r#"{"a": 1}"#.into()), json!({"a": 1}));
        assert_eq!(resolve_value("{not json".into()), json!("{not json"));
    }
}
