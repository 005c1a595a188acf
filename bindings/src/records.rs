//! Plain records and enums as the apps see them, mirrored from core with
//! `From` impls. Calendar dates cross as ISO-8601 `YYYY-MM-DD` strings and
//! instants as RFC 3339 UTC strings (`2026-11-23T09:30:00.123Z`), everywhere.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use linkbook_core as core;

use crate::error::{Result, invalid};

pub(crate) fn date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub(crate) fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn parse_date(field: &'static str, value: &str) -> Result<NaiveDate> {
    Ok(core::parse_date(field, value)?)
}

pub(crate) fn parse_optional_date(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<NaiveDate>> {
    value.map(|v| parse_date(field, v)).transpose()
}

pub(crate) fn parse_id(field: &'static str, value: &str) -> Result<core::DocumentId> {
    Ok(core::DocumentId::parse(value, field)?)
}

macro_rules! mirror_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
        pub enum $name { $($variant),+ }

        impl From<core::$name> for $name {
            fn from(v: core::$name) -> Self {
                match v { $(core::$name::$variant => $name::$variant),+ }
            }
        }

        impl From<$name> for core::$name {
            fn from(v: $name) -> Self {
                match v { $($name::$variant => core::$name::$variant),+ }
            }
        }
    };
}

mirror_enum!(
    /// What a case note records.
    NoteCategory { Visit, PhoneCall, Helpline, Court, School, Other }
);
mirror_enum!(
    /// An adult or a child of the household.
    MemberRole { Adult, Child }
);
mirror_enum!(
    /// A linked prisoner's custody status.
    Custody { Remand, Sentenced }
);
mirror_enum!(
    /// Whether the family is still supported.
    FamilyStatus { Open, Closed }
);

/// One line of the caseload.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct FamilySummary {
    pub id: String,
    pub name: String,
    pub status: FamilyStatus,
    pub key_worker: Option<String>,
    pub members: u32,
    pub notes: u32,
    pub safeguarding_flags: u32,
    pub last_activity: String,
}

impl From<core::FamilySummary> for FamilySummary {
    fn from(f: core::FamilySummary) -> Self {
        FamilySummary {
            id: f.id.to_string(),
            name: f.name,
            status: f.status.into(),
            key_worker: f.key_worker,
            members: f.members,
            notes: f.notes,
            safeguarding_flags: f.safeguarding_flags,
            last_activity: instant(f.last_activity),
        }
    }
}

/// Fields of a family to change; `null`/`None` leaves a field as it is.
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct FamilyUpdate {
    #[uniffi(default)]
    pub name: Option<String>,
    #[uniffi(default)]
    pub address: Option<String>,
    #[uniffi(default)]
    pub key_worker: Option<String>,
}

/// A whole family case file.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Family {
    pub id: String,
    pub schema_version: u64,
    pub name: String,
    pub address: Option<String>,
    pub key_worker: Option<String>,
    pub status: FamilyStatus,
    pub created_at: String,
    pub created_by: String,
    pub members: Vec<Member>,
    pub prisoners: Vec<Prisoner>,
    pub consent: Option<Consent>,
    pub safeguarding: Vec<SafeguardingFlag>,
    pub notes: Vec<CaseNote>,
    pub referrals: Vec<Referral>,
    pub closure: Option<Closure>,
}

fn all<A, B: From<A>>(v: Vec<A>) -> Vec<B> {
    v.into_iter().map(B::from).collect()
}

impl From<core::Family> for Family {
    fn from(f: core::Family) -> Self {
        Family {
            id: f.id.to_string(),
            schema_version: f.schema_version,
            name: f.name,
            address: f.address,
            key_worker: f.key_worker,
            status: f.status.into(),
            created_at: instant(f.created_at),
            created_by: f.created_by,
            members: all(f.members),
            prisoners: all(f.prisoners),
            consent: f.consent.map(Consent::from),
            safeguarding: all(f.safeguarding),
            notes: all(f.notes),
            referrals: all(f.referrals),
            closure: f.closure.map(Closure::from),
        }
    }
}

/// A household member to add.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewMember {
    pub name: String,
    pub role: MemberRole,
    #[uniffi(default)]
    pub relationship: Option<String>,
    /// `YYYY-MM-DD`; not in the future.
    #[uniffi(default)]
    pub date_of_birth: Option<String>,
    #[uniffi(default)]
    pub school: Option<String>,
    #[uniffi(default)]
    pub looked_after: bool,
    #[uniffi(default)]
    pub social_worker: Option<String>,
}

impl TryFrom<NewMember> for core::NewMember {
    type Error = crate::LinkbookError;
    fn try_from(m: NewMember) -> Result<Self> {
        Ok(core::NewMember {
            name: m.name,
            role: m.role.into(),
            relationship: m.relationship,
            date_of_birth: parse_optional_date("date of birth", m.date_of_birth.as_deref())?,
            school: m.school,
            looked_after: m.looked_after,
            social_worker: m.social_worker,
        })
    }
}

/// Fields of a member to change; `null`/`None` leaves a field as it is.
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct MemberUpdate {
    #[uniffi(default)]
    pub name: Option<String>,
    #[uniffi(default)]
    pub relationship: Option<String>,
    #[uniffi(default)]
    pub date_of_birth: Option<String>,
    #[uniffi(default)]
    pub school: Option<String>,
    #[uniffi(default)]
    pub looked_after: Option<bool>,
    #[uniffi(default)]
    pub social_worker: Option<String>,
}

impl TryFrom<MemberUpdate> for core::MemberUpdate {
    type Error = crate::LinkbookError;
    fn try_from(m: MemberUpdate) -> Result<Self> {
        Ok(core::MemberUpdate {
            name: m.name,
            relationship: m.relationship,
            date_of_birth: parse_optional_date("date of birth", m.date_of_birth.as_deref())?,
            school: m.school,
            looked_after: m.looked_after,
            social_worker: m.social_worker,
        })
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub role: MemberRole,
    pub relationship: Option<String>,
    pub date_of_birth: Option<String>,
    pub school: Option<String>,
    pub looked_after: bool,
    pub social_worker: Option<String>,
}

impl From<core::Member> for Member {
    fn from(m: core::Member) -> Self {
        Member {
            id: m.id,
            name: m.name,
            role: m.role.into(),
            relationship: m.relationship,
            date_of_birth: m.date_of_birth.map(date),
            school: m.school,
            looked_after: m.looked_after,
            social_worker: m.social_worker,
        }
    }
}

/// A prisoner to link to a family.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewPrisoner {
    pub name: String,
    pub establishment: String,
    pub custody: Custody,
    #[uniffi(default)]
    pub prison_number: Option<String>,
    #[uniffi(default)]
    pub category: Option<String>,
    /// `YYYY-MM-DD`.
    #[uniffi(default)]
    pub expected_release: Option<String>,
}

impl TryFrom<NewPrisoner> for core::NewPrisoner {
    type Error = crate::LinkbookError;
    fn try_from(p: NewPrisoner) -> Result<Self> {
        Ok(core::NewPrisoner {
            name: p.name,
            establishment: p.establishment,
            prison_number: p.prison_number,
            custody: p.custody.into(),
            category: p.category,
            expected_release: parse_optional_date(
                "expected release date",
                p.expected_release.as_deref(),
            )?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Prisoner {
    pub id: String,
    pub name: String,
    pub establishment: String,
    pub prison_number: Option<String>,
    pub custody: Custody,
    pub category: Option<String>,
    pub expected_release: Option<String>,
}

impl From<core::Prisoner> for Prisoner {
    fn from(p: core::Prisoner) -> Self {
        Prisoner {
            id: p.id,
            name: p.name,
            establishment: p.establishment,
            prison_number: p.prison_number,
            custody: p.custody.into(),
            category: p.category,
            expected_release: p.expected_release.map(date),
        }
    }
}

/// The family's consent to be supported and recorded.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Consent {
    pub given_by: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub scope: String,
}

impl From<core::Consent> for Consent {
    fn from(c: core::Consent) -> Self {
        Consent {
            given_by: c.given_by,
            date: date(c.date),
            scope: c.scope,
        }
    }
}

impl TryFrom<Consent> for core::Consent {
    type Error = crate::LinkbookError;
    fn try_from(c: Consent) -> Result<Self> {
        Ok(core::Consent {
            given_by: c.given_by,
            date: parse_date("consent date", &c.date)?,
            scope: c.scope,
        })
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SafeguardingFlag {
    pub id: String,
    pub text: String,
    pub raised_by: String,
    pub raised_at: String,
    pub cleared_at: Option<String>,
}

impl From<core::SafeguardingFlag> for SafeguardingFlag {
    fn from(f: core::SafeguardingFlag) -> Self {
        SafeguardingFlag {
            id: f.id,
            text: f.text,
            raised_by: f.raised_by,
            raised_at: instant(f.raised_at),
            cleared_at: f.cleared_at.map(instant),
        }
    }
}

/// A case note; `history` holds every earlier text of an edited note.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CaseNote {
    pub id: String,
    pub family_id: String,
    /// The worker who wrote it.
    pub author: String,
    /// The device it was written on.
    pub device: String,
    pub created_at: String,
    pub category: NoteCategory,
    pub text: String,
    pub edited_at: Option<String>,
    pub history: Vec<NoteRevision>,
}

impl From<core::CaseNote> for CaseNote {
    fn from(n: core::CaseNote) -> Self {
        CaseNote {
            id: n.id,
            family_id: n.family_id.to_string(),
            author: n.author,
            device: n.device,
            created_at: instant(n.created_at),
            category: n.category.into(),
            text: n.text,
            edited_at: n.edited_at.map(instant),
            history: all(n.history),
        }
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct NoteRevision {
    pub text: String,
    pub replaced_at: String,
    pub replaced_by: String,
}

impl From<core::NoteRevision> for NoteRevision {
    fn from(r: core::NoteRevision) -> Self {
        NoteRevision {
            text: r.text,
            replaced_at: instant(r.replaced_at),
            replaced_by: r.replaced_by,
        }
    }
}

/// A referral or signposting to another agency.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewReferral {
    pub agency: String,
    pub reason: String,
    /// `YYYY-MM-DD`.
    pub date: String,
}

impl TryFrom<NewReferral> for core::NewReferral {
    type Error = crate::LinkbookError;
    fn try_from(r: NewReferral) -> Result<Self> {
        Ok(core::NewReferral {
            agency: r.agency,
            reason: r.reason,
            date: parse_date("referral date", &r.date)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Referral {
    pub id: String,
    pub agency: String,
    pub reason: String,
    pub date: String,
    pub outcome: Option<String>,
}

impl From<core::Referral> for Referral {
    fn from(r: core::Referral) -> Self {
        Referral {
            id: r.id,
            agency: r.agency,
            reason: r.reason,
            date: date(r.date),
            outcome: r.outcome,
        }
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Closure {
    pub date: String,
    pub reason: String,
}

impl From<core::Closure> for Closure {
    fn from(c: core::Closure) -> Self {
        Closure {
            date: date(c.date),
            reason: c.reason,
        }
    }
}

/// A note found by full-text search; `snippet` marks matches in `[brackets]`.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct NoteHit {
    pub note_id: String,
    pub family_id: String,
    pub family_name: String,
    pub category: NoteCategory,
    pub created_at: String,
    pub snippet: String,
}

impl From<core::NoteHit> for NoteHit {
    fn from(h: core::NoteHit) -> Self {
        NoteHit {
            note_id: h.note_id,
            family_id: h.family_id.to_string(),
            family_name: h.family_name,
            category: h.category.into(),
            created_at: instant(h.created_at),
            snippet: h.snippet,
        }
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct FamilyDay {
    pub id: String,
    pub prison: String,
    pub date: String,
    pub capacity: Option<u32>,
    pub bookings: Vec<Booking>,
    pub attendance: Vec<Attendance>,
}

impl From<core::FamilyDay> for FamilyDay {
    fn from(d: core::FamilyDay) -> Self {
        FamilyDay {
            id: d.id.to_string(),
            prison: d.prison,
            date: date(d.date),
            capacity: d.capacity,
            bookings: all(d.bookings),
            attendance: all(d.attendance),
        }
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct FamilyDaySummary {
    pub id: String,
    pub prison: String,
    pub date: String,
    pub capacity: Option<u32>,
    pub families_attended: u32,
    pub adults: u32,
    pub children: u32,
}

impl From<core::FamilyDaySummary> for FamilyDaySummary {
    fn from(d: core::FamilyDaySummary) -> Self {
        FamilyDaySummary {
            id: d.id.to_string(),
            prison: d.prison,
            date: date(d.date),
            capacity: d.capacity,
            families_attended: d.families_attended,
            adults: d.adults,
            children: d.children,
        }
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Booking {
    pub family_id: String,
    pub adults: u32,
    pub children: u32,
    pub booked_at: String,
    pub booked_by: String,
}

impl From<core::Booking> for Booking {
    fn from(b: core::Booking) -> Self {
        Booking {
            family_id: b.family_id.to_string(),
            adults: b.adults,
            children: b.children,
            booked_at: instant(b.booked_at),
            booked_by: b.booked_by,
        }
    }
}

/// One family's attendance at a family day. Tablets that checked the same
/// family in offline merge into this one record: the earliest arrival and
/// every device that checked them in.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Attendance {
    pub family_id: String,
    pub adults: u32,
    pub children: u32,
    pub arrived_at: String,
    pub checked_in_by: Vec<String>,
}

impl From<core::Attendance> for Attendance {
    fn from(a: core::Attendance) -> Self {
        Attendance {
            family_id: a.family_id.to_string(),
            adults: a.adults,
            children: a.children,
            arrived_at: instant(a.arrived_at),
            checked_in_by: a.checked_in_by,
        }
    }
}

/// Values written concurrently to one field; none is dropped. Show them all
/// and settle with `resolveConflict(documentId, path, value.valueJson)`.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Conflict {
    pub document_id: String,
    /// `family`, `family_day` or `team_directory`.
    pub document_type: String,
    /// The field inside the document, e.g. `household/name`.
    pub path: String,
    pub values: Vec<ConflictValue>,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ConflictValue {
    /// The value as JSON text (`"Smith"`, `3`, `true`).
    pub value_json: String,
    /// The device that wrote it.
    pub device: String,
    /// The worker who wrote it, as that device named them; `None` for a
    /// change from an older Linkbook or another client.
    pub worker: Option<String>,
    /// When it was written (RFC 3339, the writing device's clock).
    pub time: Option<String>,
}

impl From<core::Conflict> for Conflict {
    fn from(c: core::Conflict) -> Self {
        Conflict {
            document_id: c.document_id.to_string(),
            document_type: c.document_type.as_str().to_string(),
            path: c.path,
            values: c
                .values
                .into_iter()
                .map(|v| ConflictValue {
                    value_json: v.value.to_string(),
                    device: v.device,
                    worker: v.worker,
                    time: v.time.map(instant),
                })
                .collect(),
        }
    }
}

pub(crate) fn parse_json(field: &str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| invalid(field, format!("not JSON: {e}")))
}

/// Who this device is.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct DeviceProfile {
    pub device_id: String,
    pub team: String,
    pub worker: String,
}

impl From<core::DeviceProfile> for DeviceProfile {
    fn from(p: core::DeviceProfile) -> Self {
        DeviceProfile {
            device_id: p.device_id,
            team: p.team,
            worker: p.worker,
        }
    }
}

/// The relay this device is enrolled with.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Enrolment {
    pub server_url: String,
    pub device_id: String,
    pub team: String,
    pub worker: String,
}

impl From<core::Enrolment> for Enrolment {
    fn from(e: core::Enrolment) -> Self {
        Enrolment {
            server_url: e.server_url,
            device_id: e.device_id,
            team: e.team,
            worker: e.worker,
        }
    }
}

/// Progress of a running sync.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncProgress {
    pub documents_done: u32,
    pub documents_total: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl From<&core::SyncProgress> for SyncProgress {
    fn from(p: &core::SyncProgress) -> Self {
        SyncProgress {
            documents_done: p.documents_done,
            documents_total: p.documents_total,
            bytes_sent: p.bytes_sent,
            bytes_received: p.bytes_received,
        }
    }
}

/// What a finished sync did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncSummary {
    /// Documents this device had changes of that the relay lacked.
    pub documents_sent: u32,
    /// Documents that changed here because of what the relay sent.
    pub documents_received: u32,
    /// Documents the relay does not have or this device may not see.
    pub documents_unavailable: u32,
    pub documents_total: u32,
    pub messages_sent: u32,
    pub messages_received: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Families the office purged that this sync deleted from the device
    /// (ids only): tell the worker, their records are gone.
    pub purged: Vec<String>,
    /// Documents that could not be sent because one of their changes is
    /// larger than the relay's message limit (ids only); the others synced.
    pub failed: Vec<String>,
    /// Documents this app cannot read (no Linkbook type, a newer schema,
    /// over the budget): not stored, asked for again at the next sync; the
    /// others synced. Tell the worker to update the app or call the office.
    pub skipped: Vec<SkippedDocument>,
    /// Documents whose changes from this device the relay refused: they
    /// clash with an earlier copy of this device (a restored backup?). Not
    /// taken, reported by every sync until settled; the others synced. Show
    /// the reason to the worker and tell the office.
    pub refused: Vec<SkippedDocument>,
}

/// A document a sync skipped: its id and why, never its content.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SkippedDocument {
    pub id: String,
    pub reason: String,
}

impl From<core::SyncSummary> for SyncSummary {
    fn from(s: core::SyncSummary) -> Self {
        SyncSummary {
            documents_sent: s.documents_sent,
            documents_received: s.documents_received,
            documents_unavailable: s.documents_unavailable,
            documents_total: s.documents_total,
            messages_sent: s.messages_sent,
            messages_received: s.messages_received,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            purged: s.purged,
            failed: s.failed,
            skipped: s
                .skipped
                .into_iter()
                .map(|d| SkippedDocument {
                    id: d.id,
                    reason: d.reason,
                })
                .collect(),
            refused: s
                .refused
                .into_iter()
                .map(|d| SkippedDocument {
                    id: d.id,
                    reason: d.reason,
                })
                .collect(),
        }
    }
}
