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

mod bundle;
mod error;
mod ids;
mod model;
pub mod protocol;
mod repo;
mod store;
mod sync;

pub use error::{Error, Result};
pub use ids::DocumentId;
pub use model::validate::parse_date;
pub use model::{
    Attendance, Booking, CaseNote, Closure, Conflict, ConflictValue, Consent, Custody,
    DocumentType, Family, FamilyDay, FamilyDaySummary, FamilyStatus, FamilySummary, FamilyUpdate,
    ImportSummary, Member, MemberRole, MemberUpdate, NewFamily, NewFamilyDay, NewMember,
    NewPrisoner, NewReferral, NoteCategory, NoteHit, NoteRevision, Prisoner, Referral,
    SCHEMA_VERSION, SafeguardingFlag,
};
pub use repo::{Clock, DeviceProfile, LOCAL_TEAM, Repo};
pub use store::DatabaseKey;
pub use sync::{
    DeviceCredentials, Enrolment, SyncListener, SyncProgress, SyncSummary, enrol_device,
};
