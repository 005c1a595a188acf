//! Linkbook's documents: the typed records the API speaks, and how each maps
//! onto an Automerge document (one module per document type, mapped by hand so
//! that concurrent values stay visible as conflicts instead of being hydrated
//! away).
//!
//! Every document's root holds `type` and `schema_version`. Strings are written
//! as scalar strings (Text objects load ~30x slower, STACK.md) but read in both
//! forms, since JavaScript automerge-repo clients write Text.

pub(crate) mod am;
pub(crate) mod conflicts;
pub(crate) mod directory;
pub(crate) mod family;
pub(crate) mod family_day;
mod records;
pub(crate) mod rules;
pub(crate) mod validate;

pub use records::*;

/// The schema version this Linkbook writes and the newest it reads.
pub const SCHEMA_VERSION: u64 = 1;

/// What a document holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentType {
    TeamDirectory,
    Family,
    FamilyDay,
}

impl DocumentType {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentType::TeamDirectory => "team_directory",
            DocumentType::Family => "family",
            DocumentType::FamilyDay => "family_day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "team_directory" => Some(DocumentType::TeamDirectory),
            "family" => Some(DocumentType::Family),
            "family_day" => Some(DocumentType::FamilyDay),
            _ => None,
        }
    }
}

/// Who is writing and when: stamped on every change a device makes.
#[derive(Debug, Clone)]
pub(crate) struct Author {
    pub device_id: String,
    pub worker: String,
    pub team: String,
    pub now: chrono::DateTime<chrono::Utc>,
}

/// Reads a family case file from any Automerge document (the relay's
/// report projections read stored documents with it). Fields missing from
/// a document written by another client read as empty.
pub fn read_family(doc: &impl automerge::ReadDoc, id: crate::ids::DocumentId) -> Family {
    family::read(doc, id)
}

/// Reads a family day from any Automerge document, merging tablets'
/// check-ins by the same rules the devices use.
pub fn read_family_day(doc: &impl automerge::ReadDoc, id: crate::ids::DocumentId) -> FamilyDay {
    family_day::read(doc, id)
}
