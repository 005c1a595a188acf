//! `linkbook`: a Linkbook device in a terminal. A thin layer over
//! `linkbook-core`: parse, call one `Repo` method, print text or `--json`.
//! Errors go to stderr; the exit code says their kind (2 invalid input,
//! 3 not found, 4 wrong key, 5 not enrolled or refused, 6 revoked,
//! 7 network, 1 anything else).

mod args;
mod output;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use linkbook_core::{DatabaseKey, DocumentId, Error, Repo};

use args::*;
use output::{Output, print_json};

/// The database file inside the data directory.
const DB_FILE: &str = "linkbook.db";
/// The key file made when no `LINKBOOK_KEY` is given.
const KEY_FILE: &str = "key";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The one place a core error becomes an exit code.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidInput { .. } => 2,
        Error::NotFound { .. } => 3,
        Error::WrongKey => 4,
        Error::Unauthorized(_) => 5,
        Error::Revoked => 6,
        Error::Network(_) => 7,
        _ => 1,
    }
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Creates the data directory (owner-only) if needed.
fn ensure_data_dir(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(io_error(format!("could not create {}", dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_error(format!("could not protect {}", dir.display())))?;
        }
    }
    Ok(())
}

/// The database key: `LINKBOOK_KEY`, else the key file, else a new key
/// written to a new key file readable only by its owner.
fn database_key(dir: &Path, from_env: Option<&str>) -> Result<DatabaseKey, Error> {
    if let Some(hex_key) = from_env {
        return DatabaseKey::from_hex(hex_key);
    }
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => return DatabaseKey::from_hex(&text),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error(format!("could not read {}", path.display()))(e));
        }
        Err(_) => {}
    }
    let key = DatabaseKey::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .map_err(io_error(format!("could not create {}", path.display())))?;
    writeln!(f, "{}", key.to_hex())
        .and_then(|_| f.sync_all())
        .map_err(io_error(format!("could not write {}", path.display())))?;
    Ok(key)
}

fn open(cli: &Cli) -> Result<Repo, Error> {
    ensure_data_dir(&cli.data)?;
    let from_env = std::env::var("LINKBOOK_KEY").ok().filter(|k| !k.is_empty());
    let key = database_key(&cli.data, from_env.as_deref())?;
    Repo::open(cli.data.join(DB_FILE), &key)
}

fn family_id(s: &str) -> Result<DocumentId, Error> {
    DocumentId::parse(s, "family id")
}

fn day_id(s: &str) -> Result<DocumentId, Error> {
    DocumentId::parse(s, "family day id")
}

fn run(cli: Cli) -> Result<(), Error> {
    let repo = open(&cli)?;
    let out = Output::stdout();
    match cli.command {
        Command::Profile(ProfileCommand::Show { json }) => {
            let p = repo.profile();
            if json {
                print_json(&p)
            } else {
                out.line(&format!(
                    "device  {}\nworker  {}\nteam    {}",
                    p.device_id, p.worker, p.team
                ))
            }
        }
        Command::Profile(ProfileCommand::Set { worker, team }) => {
            if worker.is_none() && team.is_none() {
                return Err(Error::InvalidInput {
                    field: "profile",
                    reason: "give --worker and/or --team".into(),
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
        Command::Family(cmd) => family(&repo, &out, cmd),
        Command::Member(cmd) => member(&repo, &out, cmd),
        Command::Prisoner(PrisonerCommand::Link(a)) => {
            let id = repo.link_prisoner(family_id(&a.family)?, &a.to_core()?)?;
            out.line(&id)
        }
        Command::Consent(ConsentCommand::Record {
            family,
            given_by,
            date,
            scope,
        }) => repo.record_consent(
            family_id(&family)?,
            &linkbook_core::Consent {
                given_by,
                date: parse_date("consent date", &date)?,
                scope,
            },
        ),
        Command::Flag(FlagCommand::Raise { family, text }) => {
            let id = repo.raise_safeguarding_flag(family_id(&family)?, &text)?;
            out.line(&id)
        }
        Command::Flag(FlagCommand::Clear { family, flag }) => {
            repo.clear_safeguarding_flag(family_id(&family)?, &flag)
        }
        Command::Note(cmd) => note(&repo, &out, cmd),
        Command::Referral(ReferralCommand::Add {
            family,
            agency,
            reason,
            date,
        }) => {
            let id = repo.add_referral(
                family_id(&family)?,
                &linkbook_core::NewReferral {
                    agency,
                    reason,
                    date: parse_date("referral date", &date)?,
                },
            )?;
            out.line(&id)
        }
        Command::Referral(ReferralCommand::Outcome {
            family,
            referral,
            outcome,
        }) => repo.set_referral_outcome(family_id(&family)?, &referral, &outcome),
        Command::Search { query, json } => {
            let hits = repo.search(&query)?;
            if json {
                return print_json(&hits);
            }
            for h in hits {
                out.line(&format!(
                    "{}  {}  {}  {}",
                    h.created_at.format("%Y-%m-%d"),
                    h.family_name,
                    h.category,
                    h.snippet
                ))?;
            }
            Ok(())
        }
        Command::Day(cmd) => day(&repo, &out, cmd),
        Command::Conflicts { json } => {
            let conflicts = repo.conflicts()?;
            if json {
                return print_json(&conflicts);
            }
            for c in conflicts {
                let values: Vec<String> = c
                    .values
                    .iter()
                    .map(|v| format!("{} (device {})", v.value, v.device))
                    .collect();
                out.line(&format!(
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
        } => {
            let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            repo.resolve_conflict(DocumentId::parse(&document, "document id")?, &path, &value)
        }
        Command::Export { file } => {
            let n = repo.export_to_file(&file)?;
            out.line(&format!("exported {n} documents to {}", file.display()))
        }
        Command::Import { file, json } => {
            let s = repo.import_from_file(&file)?;
            if json {
                return print_json(&s);
            }
            out.line(&format!(
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
                Some(path) => Some(read_text(path)?),
                None => None,
            };
            let name = device_name.unwrap_or_else(|| "linkbook CLI".into());
            let e = repo.enrol(&server, &code, ca_pem.as_deref(), &name)?;
            out.line(&format!(
                "enrolled as device {} of team {} (worker {})",
                e.device_id, e.team, e.worker
            ))
        }
        Command::Sync { json, server } => {
            if let Some(url) = server {
                repo.set_server_url(&url)?;
            }
            let s = repo.sync(None)?;
            if json {
                return print_json(&s);
            }
            out.line(&format!(
                "synced {} documents: {} sent, {} received, {} unavailable; {} bytes up, {} bytes down",
                s.documents_total, s.documents_sent, s.documents_received, s.documents_unavailable, s.bytes_sent, s.bytes_received
            ))
        }
    }
}

fn read_text(path: &PathBuf) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(io_error(format!("could not read {}", path.display())))
}

fn family(repo: &Repo, out: &Output, cmd: FamilyCommand) -> Result<(), Error> {
    match cmd {
        FamilyCommand::Add {
            name,
            address,
            key_worker,
        } => {
            let id = repo.add_family(&linkbook_core::NewFamily {
                name,
                address,
                key_worker,
            })?;
            out.line(&id.to_string())
        }
        FamilyCommand::List { json } => {
            let families = repo.families()?;
            if json {
                return print_json(&families);
            }
            for f in families {
                out.line(&format!(
                    "{}  {:<24} {:<6} notes {:>4}  members {:>2}  flags {}",
                    f.id, f.name, f.status, f.notes, f.members, f.safeguarding_flags
                ))?;
            }
            Ok(())
        }
        FamilyCommand::Show { id, json } => {
            let f = repo.family(family_id(&id)?)?;
            if json {
                return print_json(&f);
            }
            out.line(&format!(
                "{} ({}), {}",
                f.name,
                f.status,
                f.address.as_deref().unwrap_or("no address")
            ))?;
            for m in &f.members {
                out.line(&format!("  member   {} {} ({})", m.id, m.name, m.role))?;
            }
            for p in &f.prisoners {
                out.line(&format!(
                    "  prisoner {} {} at {} ({})",
                    p.id, p.name, p.establishment, p.custody
                ))?;
            }
            for s in f.safeguarding.iter().filter(|s| s.cleared_at.is_none()) {
                out.line(&format!("  FLAG     {} {}", s.id, s.text))?;
            }
            out.line(&format!(
                "  {} notes, {} referrals",
                f.notes.len(),
                f.referrals.len()
            ))
        }
        FamilyCommand::Update {
            id,
            name,
            address,
            key_worker,
        } => repo.update_family(
            family_id(&id)?,
            &linkbook_core::FamilyUpdate {
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

fn member(repo: &Repo, out: &Output, cmd: MemberCommand) -> Result<(), Error> {
    match cmd {
        MemberCommand::Add(a) => {
            let id = repo.add_member(family_id(&a.family)?, &a.to_core()?)?;
            out.line(&id)
        }
        MemberCommand::Update(a) => {
            repo.update_member(family_id(&a.family)?, &a.member, &a.to_core()?)
        }
        MemberCommand::Remove { family, member } => {
            repo.remove_member(family_id(&family)?, &member)
        }
    }
}

fn note(repo: &Repo, out: &Output, cmd: NoteCommand) -> Result<(), Error> {
    match cmd {
        NoteCommand::Add {
            family,
            text,
            stdin,
            category,
        } => {
            let family = family_id(&family)?;
            let category = linkbook_core::NoteCategory::parse(&category)?;
            match (text, stdin) {
                (Some(text), false) => {
                    let id = repo.add_note(family, &text, category)?;
                    out.line(&id)
                }
                (None, true) => {
                    // One durable call per line; each id is printed (and
                    // flushed) only once its note is committed.
                    for line in std::io::stdin().lock().lines() {
                        let line = line.map_err(io_error("could not read stdin".into()))?;
                        if line.trim().is_empty() {
                            continue;
                        }
                        let id = repo.add_note(family, &line, category)?;
                        out.line(&id)?;
                    }
                    Ok(())
                }
                _ => Err(Error::InvalidInput {
                    field: "note text",
                    reason: "give --text TEXT or --stdin".into(),
                }),
            }
        }
        NoteCommand::Edit { family, note, text } => {
            repo.edit_note(family_id(&family)?, &note, &text)
        }
        NoteCommand::List { family, json } => {
            let notes = repo.notes(family_id(&family)?)?;
            if json {
                return print_json(&notes);
            }
            for n in notes {
                let edited = if n.history.is_empty() {
                    ""
                } else {
                    " (edited)"
                };
                out.line(&format!(
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

fn day(repo: &Repo, out: &Output, cmd: DayCommand) -> Result<(), Error> {
    match cmd {
        DayCommand::Create {
            prison,
            date,
            capacity,
        } => {
            let id = repo.create_family_day(&linkbook_core::NewFamilyDay {
                prison,
                date: parse_date("date", &date)?,
                capacity,
            })?;
            out.line(&id.to_string())
        }
        DayCommand::List { json } => {
            let days = repo.family_days()?;
            if json {
                return print_json(&days);
            }
            for d in days {
                out.line(&format!(
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
            json,
        } => {
            let a = repo.check_in(day_id(&day)?, family_id(&family)?, adults, children)?;
            if json {
                return print_json(&a);
            }
            out.line(&format!(
                "checked in: {} adults, {} children, arrived {}",
                a.adults,
                a.children,
                a.arrived_at.format("%H:%M")
            ))
        }
        DayCommand::Show { day, json } => {
            let d = repo.family_day(day_id(&day)?)?;
            if json {
                return print_json(&d);
            }
            out.line(&format!(
                "{} at {} (capacity {})",
                d.date,
                d.prison,
                d.capacity
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into())
            ))?;
            for a in &d.attendance {
                out.line(&format!(
                    "  {}  adults {} children {}  arrived {}",
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

fn parse_date(field: &'static str, s: &str) -> Result<chrono::NaiveDate, Error> {
    linkbook_core::parse_date(field, s)
}
