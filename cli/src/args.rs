//! The command line, declared with clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use linkbook_core::{Custody, Error, MemberRole, MemberUpdate, NewMember, NewPrisoner, parse_date};

#[derive(Parser, Debug)]
#[command(
    name = "linkbook",
    version,
    about = "A Linkbook device in a terminal: families, case notes, family days, sync",
    after_help = "The database key comes from LINKBOOK_KEY (64 hex characters) or, without it, from the file `key` in --data, created (mode 0600) on first use. It is never taken as an argument, where other users could see it."
)]
pub struct Cli {
    /// The device profile directory (database, key file).
    #[arg(
        long,
        env = "LINKBOOK_DATA",
        global = true,
        default_value = "linkbook-device"
    )]
    pub data: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Who this device is.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Families (case files).
    #[command(subcommand)]
    Family(FamilyCommand),
    /// Household members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Linked prisoners.
    #[command(subcommand)]
    Prisoner(PrisonerCommand),
    /// The family's consent.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Safeguarding flags.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Case notes.
    #[command(subcommand)]
    Note(NoteCommand),
    /// Referrals and signposting.
    #[command(subcommand)]
    Referral(ReferralCommand),
    /// Search every note on this device.
    Search {
        query: String,
        #[arg(long)]
        json: bool,
    },
    /// Family days at a prison.
    #[command(subcommand)]
    Day(DayCommand),
    /// Fields two devices set differently while apart.
    Conflicts {
        #[arg(long)]
        json: bool,
    },
    /// Settle a conflict: write VALUE (JSON, or plain text) at PATH.
    Resolve {
        document: String,
        path: String,
        value: String,
    },
    /// Write every document of this device to FILE (a sync by hand).
    Export { file: PathBuf },
    /// Merge the documents in FILE into this device.
    Import {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Enrol this device with the office relay using a one-time code.
    Enrol {
        #[arg(long)]
        server: String,
        #[arg(long)]
        code: String,
        /// The relay's CA certificate to trust (PEM), e.g. its dev-ca.pem.
        #[arg(long)]
        ca: Option<PathBuf>,
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
    Show {
        #[arg(long)]
        json: bool,
    },
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
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        key_worker: Option<String>,
    },
    Close {
        id: String,
        #[arg(long)]
        date: String,
        #[arg(long)]
        reason: String,
    },
    Reopen {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a member; prints its id.
    Add(MemberAdd),
    Update(MemberUpdateArgs),
    Remove {
        family: String,
        member: String,
    },
}

#[derive(Args, Debug)]
pub struct MemberAdd {
    pub family: String,
    #[arg(long)]
    pub name: String,
    /// adult or child
    #[arg(long)]
    pub role: String,
    #[arg(long)]
    pub relationship: Option<String>,
    /// Date of birth, YYYY-MM-DD.
    #[arg(long)]
    pub dob: Option<String>,
    #[arg(long)]
    pub school: Option<String>,
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
            date_of_birth: self
                .dob
                .as_deref()
                .map(|d| parse_date("date of birth", d))
                .transpose()?,
            school: self.school.clone(),
            looked_after: self.looked_after,
            social_worker: self.social_worker.clone(),
        })
    }
}

#[derive(Args, Debug)]
pub struct MemberUpdateArgs {
    pub family: String,
    pub member: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub relationship: Option<String>,
    #[arg(long)]
    pub dob: Option<String>,
    #[arg(long)]
    pub school: Option<String>,
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
            date_of_birth: self
                .dob
                .as_deref()
                .map(|d| parse_date("date of birth", d))
                .transpose()?,
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
    pub family: String,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub establishment: String,
    /// Prison number, e.g. A1234BC.
    #[arg(long)]
    pub number: Option<String>,
    /// remand or sentenced
    #[arg(long)]
    pub custody: String,
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
            expected_release: self
                .release
                .as_deref()
                .map(|d| parse_date("expected release", d))
                .transpose()?,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum ConsentCommand {
    Record {
        family: String,
        #[arg(long)]
        given_by: String,
        #[arg(long)]
        date: String,
        #[arg(long)]
        scope: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum FlagCommand {
    /// Raise a safeguarding flag; prints its id.
    Raise {
        family: String,
        #[arg(long)]
        text: String,
    },
    Clear {
        family: String,
        flag: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NoteCommand {
    /// Add a note (prints its id once saved), or one per line of stdin.
    Add {
        family: String,
        #[arg(long, conflicts_with = "stdin")]
        text: Option<String>,
        /// Read one note per line from stdin, printing each id as it is saved.
        #[arg(long)]
        stdin: bool,
        /// visit, phone_call, helpline, court, school or other
        #[arg(long, default_value = "other")]
        category: String,
    },
    /// Replace a note's text (the old text is kept in its history).
    Edit {
        family: String,
        note: String,
        #[arg(long)]
        text: String,
    },
    List {
        family: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReferralCommand {
    Add {
        family: String,
        #[arg(long)]
        agency: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        date: String,
    },
    Outcome {
        family: String,
        referral: String,
        #[arg(long)]
        outcome: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DayCommand {
    /// Create a family day; prints its id.
    Create {
        #[arg(long)]
        prison: String,
        #[arg(long)]
        date: String,
        #[arg(long)]
        capacity: Option<u32>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Book {
        day: String,
        family: String,
        #[arg(long)]
        adults: u32,
        #[arg(long)]
        children: u32,
    },
    /// Check a family in (again: correct the head count).
    Checkin {
        day: String,
        family: String,
        #[arg(long)]
        adults: u32,
        #[arg(long)]
        children: u32,
        #[arg(long)]
        json: bool,
    },
    Show {
        day: String,
        #[arg(long)]
        json: bool,
    },
}
