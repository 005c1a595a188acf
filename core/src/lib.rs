//! Linkbook's core: the documents a family link worker's device keeps, the
//! encrypted device store they live in, and (later) the sync client.
//!
//! ```no_run
//! use linkbook_core::{DatabaseKey, NewFamily, NoteCategory, Repo};
//! # fn main() -> linkbook_core::Result<()> {
//! let repo = Repo::open("device.db", &DatabaseKey::generate())?;
//! let family = repo.add_family(&NewFamily { name: "Smith".into(), ..Default::default() })?;
//! let note = repo.add_note(family, "Visited with both children.", NoteCategory::Visit)?;
//! // `note` is committed to disk here.
//! assert_eq!(repo.notes(family)?[0].id, note);
//! # Ok(()) }
//! ```

pub mod budget;
mod bundle;
mod error;
mod ids;
mod model;
pub mod protocol;
mod repo;
mod store;
mod sync;

pub use error::{Error, Result};

/// `tracing` filter directives every Linkbook binary appends to its filter,
/// whatever `RUST_LOG` asks for: these crates log WebSocket frames, HTTP
/// headers or TLS details at debug and trace level, which would put record
/// content or tokens into a log. Linkbook's own crates log ids only.
pub const LOG_CAPS: &str = "tungstenite=info,tokio_tungstenite=info,rustls=info,hyper=info,hyper_util=info,h2=info,axum=info,tower=info,tower_http=info";
pub use ids::DocumentId;
pub use model::rules::{RuleViolation, check_change};
pub use model::validate::parse_date;
pub use model::{
    Attendance, Booking, CaseNote, Closure, Conflict, ConflictValue, Consent, Custody,
    DocumentType, Family, FamilyDay, FamilyDaySummary, FamilyStatus, FamilySummary, FamilyUpdate,
    ImportSummary, Member, MemberRole, MemberUpdate, NewFamily, NewFamilyDay, NewMember,
    NewPrisoner, NewReferral, NoteCategory, NoteHit, NoteRevision, Prisoner, Referral,
    SCHEMA_VERSION, SafeguardingFlag, read_family, read_family_day,
};
pub use repo::{Clock, DeviceProfile, LOCAL_TEAM, Repo};
pub use store::{DatabaseKey, open_keyed};
pub use sync::link;
pub use sync::{ApplyError, DocSync, MAX_RESETS, Outgoing};
pub use sync::{
    DeviceCredentials, Enrolment, SkippedDocument, SyncListener, SyncProgress, SyncSummary,
    enrol_device,
};
