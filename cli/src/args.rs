//! The command line, declared with clap: the doc comments are the help text.
//! Values stay strings here and are checked by core (`parse_date`,
//! `MemberRole::parse`, ...), so the CLI and the apps refuse the same input
//! with the same message.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};
use linkbook_core::{Custody, Error, MemberRole, MemberUpdate, NewMember, NewPrisoner, parse_date};

#[derive(Parser, Debug)]
#[command(
    name = "linkbook",
    version,
    about = "A Linkbook device in a terminal: families, case notes, family days, sync",
    after_help = "The database key comes from LINKBOOK_KEY (64 hex characters) or, without it, \
from the file `key` in the data directory, created (mode 0600) on first use. It is never \
taken as an argument, where other users could see it, and never printed."
)]
pub struct Cli {
    /// The device profile directory: the database (linkbook.db) and its key
    /// file. Created, readable by its owner only, if missing.
    // Global so it may follow the subcommand; clap cannot make a global
    // option required, so `data_dir` does.
    #[arg(long, env = "LINKBOOK_DATA", global = true, value_name = "DIR")]
    pub data: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--data`, or a usage error (exit code 2) without it.
    pub fn data_dir(&self) -> &Path {
        match &self.data {
            Some(dir) => dir,
            None => Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "the device profile directory is required: give --data DIR or set LINKBOOK_DATA",
                )
                .exit(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Who this device is: its id, worker and team.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Families (case files).
    #[command(subcommand)]
    Family(FamilyCommand),
    /// Household members of a family.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Prisoners linked to a family.
    #[command(subcommand)]
    Prisoner(PrisonerCommand),
    /// The family's consent to be supported and recorded.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Safeguarding flags on a family.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Case notes.
    #[command(subcommand)]
    Note(NoteCommand),
    /// Referrals and signposting to other agencies.
    #[command(subcommand)]
    Referral(ReferralCommand),
    /// Search every case note on this device.
    Search {
        /// Words to look for.
        query: String,
        #[arg(long)]
        json: bool,
    },
    /// Family days at a prison: bookings and check-in.
    #[command(subcommand)]
    Day(DayCommand),
    /// Fields two devices set differently while apart.
    Conflicts {
        #[arg(long)]
        json: bool,
    },
    /// Settle a conflict: write VALUE at PATH of a document.
    Resolve {
        /// The document (family or family day) id.
        document: String,
        /// The field, as `conflicts` shows it, e.g. household/name.
        path: String,
        /// The value as JSON ("Smith", 3, true, null); text that is not JSON
        /// is taken as a string, so `Smith` works but `"123"` needs quotes.
        value: String,
    },
    /// Write every document of this device to FILE (a sync by hand).
    Export {
        /// Where to write; an existing file is replaced.
        file: PathBuf,
    },
    /// Merge the documents in FILE (made by `export`) into this device.
    Import {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Enrol this device with the office relay using a one-time code.
    Enrol {
        /// The relay's address, e.g. https://relay.example:8443.
        #[arg(long)]
        server: String,
        /// The one-time enrolment code from the office.
        #[arg(long, env = "LINKBOOK_ENROL_CODE", hide_env_values = true)]
        code: String,
        /// The relay's CA certificate to trust (PEM), e.g. its dev-ca.pem.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// How the office will see this device (default "linkbook CLI").
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Sync with the relay until both sides hold the same records.
    Sync {
        #[arg(long)]
        json: bool,
        /// The relay's new address, if it moved.
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Show the device id, worker and team.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Set the worker name and/or team this device records under.
    Set {
        #[arg(long)]
        worker: Option<String>,
        #[arg(long)]
        team: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FamilyCommand {
    /// Record a new family; prints its id.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        key_worker: Option<String>,
    },
    /// List every family on this device.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a whole case file.
    Show {
        /// Family id (automerge:<id> or <id>).
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a family's name, address or key worker.
    Update {
        /// Family id.
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        key_worker: Option<String>,
    },
    /// Close a case.
    Close {
        /// Family id.
        id: String,
        /// Closure date, YYYY-MM-DD.
        #[arg(long)]
        date: String,
        #[arg(long)]
        reason: String,
    },
    /// Reopen a closed case.
    Reopen {
        /// Family id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a household member; prints its id.
    Add(MemberAdd),
    /// Change a member; fields not given stay as they are.
    Update(MemberUpdateArgs),
    /// Remove a member from the household.
    Remove {
        /// Family id.
        family: String,
        /// Member id.
        member: String,
    },
}

#[derive(Args, Debug)]
pub struct MemberAdd {
    /// Family id.
    pub family: String,
    #[arg(long)]
    pub name: String,
    /// adult or child.
    #[arg(long)]
    pub role: String,
    /// Relationship to the prisoner, e.g. daughter.
    #[arg(long)]
    pub relationship: Option<String>,
    /// Date of birth, YYYY-MM-DD.
    #[arg(long)]
    pub dob: Option<String>,
    #[arg(long)]
    pub school: Option<String>,
    /// The child is looked after by the local authority.
    #[arg(long)]
    pub looked_after: bool,
    #[arg(long)]
    pub social_worker: Option<String>,
}

impl MemberAdd {
    pub fn to_core(&self) -> Result<NewMember, Error> {
        Ok(NewMember {
            name: self.name.clone(),
            role: MemberRole::parse(&self.role)?,
            relationship: self.relationship.clone(),
            date_of_birth: optional_date("date of birth", self.dob.as_deref())?,
            school: self.school.clone(),
            looked_after: self.looked_after,
            social_worker: self.social_worker.clone(),
        })
    }
}

#[derive(Args, Debug)]
pub struct MemberUpdateArgs {
    /// Family id.
    pub family: String,
    /// Member id.
    pub member: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub relationship: Option<String>,
    /// Date of birth, YYYY-MM-DD.
    #[arg(long)]
    pub dob: Option<String>,
    #[arg(long)]
    pub school: Option<String>,
    /// true or false.
    #[arg(long)]
    pub looked_after: Option<bool>,
    #[arg(long)]
    pub social_worker: Option<String>,
}

impl MemberUpdateArgs {
    pub fn to_core(&self) -> Result<MemberUpdate, Error> {
        Ok(MemberUpdate {
            name: self.name.clone(),
            relationship: self.relationship.clone(),
            date_of_birth: optional_date("date of birth", self.dob.as_deref())?,
            school: self.school.clone(),
            looked_after: self.looked_after,
            social_worker: self.social_worker.clone(),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum PrisonerCommand {
    /// Link a prisoner to the family; prints its id.
    Link(PrisonerLink),
}

#[derive(Args, Debug)]
pub struct PrisonerLink {
    /// Family id.
    pub family: String,
    #[arg(long)]
    pub name: String,
    /// The prison, e.g. HMP Leeds.
    #[arg(long)]
    pub establishment: String,
    /// Prison number, e.g. A1234BC.
    #[arg(long)]
    pub number: Option<String>,
    /// remand or sentenced.
    #[arg(long)]
    pub custody: String,
    /// Security category, e.g. B.
    #[arg(long)]
    pub category: Option<String>,
    /// Expected release date, YYYY-MM-DD.
    #[arg(long)]
    pub release: Option<String>,
}

impl PrisonerLink {
    pub fn to_core(&self) -> Result<NewPrisoner, Error> {
        Ok(NewPrisoner {
            name: self.name.clone(),
            establishment: self.establishment.clone(),
            prison_number: self.number.clone(),
            custody: Custody::parse(&self.custody)?,
            category: self.category.clone(),
            expected_release: optional_date("expected release", self.release.as_deref())?,
        })
    }
}

fn optional_date(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<chrono::NaiveDate>, Error> {
    value.map(|d| parse_date(field, d)).transpose()
}

#[derive(Subcommand, Debug)]
pub enum ConsentCommand {
    /// Record who gave consent, when, and to what.
    Record {
        /// Family id.
        family: String,
        #[arg(long)]
        given_by: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        date: String,
        /// What was agreed, e.g. "support and contact with school".
        #[arg(long)]
        scope: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum FlagCommand {
    /// Raise a safeguarding flag; prints its id.
    Raise {
        /// Family id.
        family: String,
        #[arg(long)]
        text: String,
    },
    /// Clear a safeguarding flag (it stays in the case file, marked cleared).
    Clear {
        /// Family id.
        family: String,
        /// Flag id.
        flag: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NoteCommand {
    /// Add a note and print its id once saved, or one note per line of stdin.
    Add {
        /// Family id.
        family: String,
        /// The note.
        #[arg(long, required_unless_present = "stdin", conflicts_with = "stdin")]
        text: Option<String>,
        /// Read one note per line from stdin until EOF (blank lines skipped),
        /// printing each id as soon as that note is saved.
        #[arg(long)]
        stdin: bool,
        /// visit, phone_call, helpline, court, school or other.
        #[arg(long, default_value = "other")]
        category: String,
    },
    /// Replace a note's text (the old text is kept in its history).
    Edit {
        /// Family id.
        family: String,
        /// Note id.
        note: String,
        #[arg(long)]
        text: String,
    },
    /// List a family's notes, oldest first.
    List {
        /// Family id.
        family: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReferralCommand {
    /// Record a referral to another agency; prints its id.
    Add {
        /// Family id.
        family: String,
        #[arg(long)]
        agency: String,
        #[arg(long)]
        reason: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        date: String,
    },
    /// Record what came of a referral.
    Outcome {
        /// Family id.
        family: String,
        /// Referral id.
        referral: String,
        #[arg(long)]
        outcome: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DayCommand {
    /// Create a family day; prints its id.
    Create {
        /// The prison, e.g. HMP Leeds.
        #[arg(long)]
        prison: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        date: String,
        /// How many people the day can take.
        #[arg(long)]
        capacity: Option<u32>,
    },
    /// List family days with their attendance totals.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Book a family onto a day (again: change the booking).
    Book {
        /// Family day id.
        day: String,
        /// Family id.
        family: String,
        #[arg(long)]
        adults: u32,
        #[arg(long)]
        children: u32,
    },
    /// Check a family in (again: correct the head count).
    Checkin {
        /// Family day id.
        day: String,
        /// Family id.
        family: String,
        #[arg(long)]
        adults: u32,
        #[arg(long)]
        children: u32,
        #[arg(long)]
        json: bool,
    },
    /// Show a day's bookings and attendance.
    Show {
        /// Family day id.
        day: String,
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn data_may_follow_the_subcommand() {
        let cli = Cli::try_parse_from(["linkbook", "family", "list", "--data", "d", "--json"])
            .expect("parses");
        assert_eq!(cli.data.as_deref(), Some(Path::new("d")));
    }

    #[test]
    fn note_add_needs_text_or_stdin_but_not_both() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["linkbook", "--data", "d", "note", "add", "F"]
                    .iter()
                    .chain(args),
            )
        };
        assert!(parse(&["--text", "hello"]).is_ok());
        assert!(parse(&["--stdin"]).is_ok());
        for bad in [&[][..], &["--text", "hello", "--stdin"]] {
            let e = parse(bad).expect_err("refused");
            assert_eq!(e.exit_code(), 2, "{e}");
        }
    }
}
