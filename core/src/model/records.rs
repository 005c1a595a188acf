//! The plain records the API takes and returns. Dates are calendar dates
//! (`YYYY-MM-DD`), times are UTC instants (RFC 3339 in documents and JSON).

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::DocumentId;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $field:literal { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the lower-case name; the error lists the accepted ones.
            pub fn parse(s: &str) -> Result<Self> {
                match s.trim().to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(Error::invalid(
                        $field,
                        format!("'{s}' is not one of: {}", [$($text),+].join(", ")),
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What a case note records.
    NoteCategory, "note category" {
        Visit = "visit",
        PhoneCall = "phone_call",
        Helpline = "helpline",
        Court = "court",
        School = "school",
        Other = "other",
    }
);

string_enum!(
    /// Whether a household member is an adult or a child.
    MemberRole, "member role" { Adult = "adult", Child = "child" }
);

string_enum!(
    /// A linked prisoner's custody status.
    Custody, "custody" { Remand = "remand", Sentenced = "sentenced" }
);

string_enum!(
    /// Whether the family is still supported.
    FamilyStatus, "family status" { Open = "open", Closed = "closed" }
);

/// A new family case file.
#[derive(Debug, Clone, Default)]
pub struct NewFamily {
    pub name: String,
    pub address: Option<String>,
    pub key_worker: Option<String>,
}

/// Fields of a family to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct FamilyUpdate {
    pub name: Option<String>,
    pub address: Option<String>,
    pub key_worker: Option<String>,
}

/// One line of the caseload, from the projection (no document is loaded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilySummary {
    pub id: DocumentId,
    pub name: String,
    pub status: FamilyStatus,
    pub key_worker: Option<String>,
    pub members: u32,
    pub notes: u32,
    pub safeguarding_flags: u32,
    /// Latest note or creation time: the same on every replica.
    pub last_activity: DateTime<Utc>,
}

/// A whole family case file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Family {
    pub id: DocumentId,
    pub schema_version: u64,
    pub name: String,
    pub address: Option<String>,
    pub key_worker: Option<String>,
    pub status: FamilyStatus,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub members: Vec<Member>,
    pub prisoners: Vec<Prisoner>,
    pub consent: Option<Consent>,
    pub safeguarding: Vec<SafeguardingFlag>,
    pub notes: Vec<CaseNote>,
    pub referrals: Vec<Referral>,
    pub closure: Option<Closure>,
}

/// A household member to add.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub name: String,
    pub role: MemberRole,
    pub relationship: Option<String>,
    pub date_of_birth: Option<NaiveDate>,
    pub school: Option<String>,
    pub looked_after: bool,
    pub social_worker: Option<String>,
}

/// Fields of a member to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct MemberUpdate {
    pub name: Option<String>,
    pub relationship: Option<String>,
    pub date_of_birth: Option<NaiveDate>,
    pub school: Option<String>,
    pub looked_after: Option<bool>,
    pub social_worker: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub role: MemberRole,
    pub relationship: Option<String>,
    pub date_of_birth: Option<NaiveDate>,
    pub school: Option<String>,
    pub looked_after: bool,
    pub social_worker: Option<String>,
}

/// A prisoner to link to the family.
#[derive(Debug, Clone)]
pub struct NewPrisoner {
    pub name: String,
    pub establishment: String,
    pub prison_number: Option<String>,
    pub custody: Custody,
    pub category: Option<String>,
    pub expected_release: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prisoner {
    pub id: String,
    pub name: String,
    pub establishment: String,
    pub prison_number: Option<String>,
    pub custody: Custody,
    pub category: Option<String>,
    pub expected_release: Option<NaiveDate>,
}

/// The family's consent to be supported and recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Consent {
    pub given_by: String,
    pub date: NaiveDate,
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SafeguardingFlag {
    pub id: String,
    pub text: String,
    pub raised_by: String,
    pub raised_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
}

/// A case note; `history` holds every earlier text of an edited note.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseNote {
    pub id: String,
    pub family_id: DocumentId,
    pub author: String,
    pub device: String,
    pub created_at: DateTime<Utc>,
    pub category: NoteCategory,
    pub text: String,
    pub edited_at: Option<DateTime<Utc>>,
    pub history: Vec<NoteRevision>,
}

/// An earlier text of a note, kept when the note was edited.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoteRevision {
    pub text: String,
    pub replaced_at: DateTime<Utc>,
    pub replaced_by: String,
}

/// A referral or signposting to another agency.
#[derive(Debug, Clone)]
pub struct NewReferral {
    pub agency: String,
    pub reason: String,
    pub date: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Referral {
    pub id: String,
    pub agency: String,
    pub reason: String,
    pub date: NaiveDate,
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Closure {
    pub date: NaiveDate,
    pub reason: String,
}

/// A note found by full-text search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoteHit {
    pub note_id: String,
    pub family_id: DocumentId,
    pub family_name: String,
    pub category: NoteCategory,
    pub created_at: DateTime<Utc>,
    /// The matching part of the text, matches in `[brackets]`.
    pub snippet: String,
}

/// A family day to create.
#[derive(Debug, Clone)]
pub struct NewFamilyDay {
    pub prison: String,
    pub date: NaiveDate,
    pub capacity: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilyDay {
    pub id: DocumentId,
    pub prison: String,
    pub date: NaiveDate,
    pub capacity: Option<u32>,
    pub bookings: Vec<Booking>,
    pub attendance: Vec<Attendance>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilyDaySummary {
    pub id: DocumentId,
    pub prison: String,
    pub date: NaiveDate,
    pub capacity: Option<u32>,
    pub families_attended: u32,
    pub adults: u32,
    pub children: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Booking {
    pub family_id: DocumentId,
    pub adults: u32,
    pub children: u32,
    pub booked_at: DateTime<Utc>,
    pub booked_by: String,
}

/// One family's attendance at a family day. Tablets that checked the same
/// family in offline merge into this one record: the earliest arrival, every
/// device that checked them in; differing head counts show as a conflict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attendance {
    pub family_id: DocumentId,
    pub adults: u32,
    pub children: u32,
    pub arrived_at: DateTime<Utc>,
    pub checked_in_by: Vec<String>,
}

/// Two or more values written concurrently to one field. Nothing is dropped:
/// the app shows all values and the worker picks one with `resolve_conflict`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub document_id: DocumentId,
    pub document_type: super::DocumentType,
    /// Field path inside the document, e.g. `household/name` or `notes/<id>/text`.
    pub path: String,
    pub values: Vec<ConflictValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ConflictValue {
    pub value: serde_json::Value,
    /// The device that wrote this value (from the Automerge actor).
    pub device: String,
    /// The worker who wrote it, as the writing device named them in its
    /// change (`None`: a change from before Linkbook named workers, or
    /// from another automerge-repo client).
    #[serde(default)]
    pub worker: Option<String>,
    /// When it was written, by the writing device's clock.
    #[serde(default)]
    pub time: Option<DateTime<Utc>>,
}

/// What an import or merge changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub documents_new: u32,
    pub documents_updated: u32,
    pub documents_unchanged: u32,
    /// Documents in the file that the office has purged: left out.
    pub documents_purged: u32,
}
