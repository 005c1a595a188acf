//! What the storage traits take and return.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use super::ids::{DeviceId, Team};
use linkbook_core::DocumentId;

/// What an audit record says happened. Stored as its text
/// ([`AuditAction::as_str`]), which the audit CSV and JSON show.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditAction {
    Enrolled,
    Connected,
    /// A device's changes were stored.
    Uploaded,
    /// A device was sent changes of a document.
    Received,
    /// A worker opened a case file (uploaded from the device).
    Read,
    ReadQuotaExceeded,
    Purged,
    Revoked,
    /// A device asked for a document its team does not hold, that another
    /// team does.
    CrossTeam,
    AuthRefused,
    AuthLockout,
    RefusedAtDoor,
    RefusedOverBudget,
    RefusedOverSizeCap,
    RefusedActorClash,
    PolicyChanged,
    SubjectAccessExport,
    /// Console (issue 15): a member of staff signed in, was refused, signed
    /// out, set up their account; an account was added, reset or disabled.
    StaffSignedIn,
    StaffSignInRefused,
    StaffSignedOut,
    StaffSetUp,
    StaffAccountChanged,
    /// An enrolment code was issued (from the console: `worker` names the
    /// member of staff, the record's team the code's).
    EnrolmentCodeIssued,
    /// A report or the audit was downloaded as CSV.
    ReportExported,
    /// Retention was run by hand.
    RetentionRun,
    /// A stored action this relay does not know (written by a newer one).
    Unknown(String),
}

impl AuditAction {
    const NAMED: [AuditAction; 25] = [
        AuditAction::Enrolled,
        AuditAction::Connected,
        AuditAction::Uploaded,
        AuditAction::Received,
        AuditAction::Read,
        AuditAction::ReadQuotaExceeded,
        AuditAction::Purged,
        AuditAction::Revoked,
        AuditAction::CrossTeam,
        AuditAction::AuthRefused,
        AuditAction::AuthLockout,
        AuditAction::RefusedAtDoor,
        AuditAction::RefusedOverBudget,
        AuditAction::RefusedOverSizeCap,
        AuditAction::RefusedActorClash,
        AuditAction::PolicyChanged,
        AuditAction::SubjectAccessExport,
        AuditAction::StaffSignedIn,
        AuditAction::StaffSignInRefused,
        AuditAction::StaffSignedOut,
        AuditAction::StaffSetUp,
        AuditAction::StaffAccountChanged,
        AuditAction::EnrolmentCodeIssued,
        AuditAction::ReportExported,
        AuditAction::RetentionRun,
    ];

    /// Every action this relay names (the audit page's filter).
    pub fn named() -> &'static [AuditAction] {
        &Self::NAMED
    }

    pub fn as_str(&self) -> &str {
        match self {
            AuditAction::Enrolled => "enrolled",
            AuditAction::Connected => "connected",
            AuditAction::Uploaded => "uploaded",
            AuditAction::Received => "received",
            AuditAction::Read => "read",
            AuditAction::ReadQuotaExceeded => "read-quota-exceeded",
            AuditAction::Purged => "purged",
            AuditAction::Revoked => "revoked",
            AuditAction::CrossTeam => "cross-team",
            AuditAction::AuthRefused => "auth-refused",
            AuditAction::AuthLockout => "auth-lockout",
            AuditAction::RefusedAtDoor => "refused-at-door",
            AuditAction::RefusedOverBudget => "refused-over-budget",
            AuditAction::RefusedOverSizeCap => "refused-over-size-cap",
            AuditAction::RefusedActorClash => "refused-actor-clash",
            AuditAction::PolicyChanged => "policy changed",
            AuditAction::SubjectAccessExport => "subject access export",
            AuditAction::StaffSignedIn => "staff signed in",
            AuditAction::StaffSignInRefused => "staff sign-in refused",
            AuditAction::StaffSignedOut => "staff signed out",
            AuditAction::StaffSetUp => "staff account set up",
            AuditAction::StaffAccountChanged => "staff account changed",
            AuditAction::EnrolmentCodeIssued => "enrolment code issued",
            AuditAction::ReportExported => "report exported",
            AuditAction::RetentionRun => "retention run",
            AuditAction::Unknown(s) => s,
        }
    }

    /// The action stored as `text`.
    pub fn parse(text: &str) -> AuditAction {
        Self::NAMED
            .iter()
            .find(|a| a.as_str() == text)
            .cloned()
            .unwrap_or_else(|| AuditAction::Unknown(text.to_string()))
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<str> for AuditAction {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for AuditAction {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for AuditAction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One audit record as read back: who did what to which document, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: String,
    pub device_id: Option<String>,
    pub worker: Option<String>,
    pub action: AuditAction,
    pub document_id: Option<String>,
    /// A refused client's address (auth-refused, auth-lockout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// When the relay received an uploaded read (`at` is the device's
    /// claim, clamped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// The team the record is about: the one stated with it, else its
    /// device's (`None`: neither, e.g. older administrator records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// Which audit records [`AuditStore::audit_search`] finds: each given
/// filter narrows them.
///
/// [`AuditStore::audit_search`]: super::AuditStore::audit_search
#[derive(Debug, Clone, Default)]
pub struct AuditSearch {
    /// About this family (the document id as stored).
    pub family: Option<String>,
    /// Of this device.
    pub device: Option<DeviceId>,
    /// About this team: the record's own team, else its device's (the rule
    /// of `audit_log`).
    pub team: Option<Team>,
    /// The worker (or staff member) named contains this, ignoring ASCII
    /// case; `%` and `_` are literal.
    pub worker: Option<String>,
    /// The action is exactly this text ([`AuditAction::as_str`]).
    pub action: Option<String>,
    /// At or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Before this time (exclusive).
    pub to_before: Option<DateTime<Utc>>,
}

impl AuditSearch {
    /// `worker` as a `LIKE` pattern for `lower(worker) LIKE ? ESCAPE '\'`:
    /// ASCII-lowercased, its `\`, `%` and `_` escaped, inside `%…%`.
    /// (SQLite's `lower` and PostgreSQL's under the audit's `C` collation
    /// fold ASCII only; the memory store folds the same.)
    pub(crate) fn worker_pattern(&self) -> Option<String> {
        self.worker.as_deref().map(|w| {
            let mut p = String::with_capacity(w.len() + 2);
            p.push('%');
            for c in w.to_ascii_lowercase().chars() {
                if matches!(c, '\\' | '%' | '_') {
                    p.push('\\');
                }
                p.push(c);
            }
            p.push('%');
            p
        })
    }

    /// `from` as stored `at` text (RFC 3339 in UTC, as [`AuditRecord`]
    /// writes it), which compares as text in time order.
    pub(crate) fn at_from_text(&self) -> Option<String> {
        self.from.map(|t| t.to_rfc3339())
    }

    /// `to_before` as stored `at` text.
    pub(crate) fn at_before_text(&self) -> Option<String> {
        self.to_before.map(|t| t.to_rfc3339())
    }

    /// Whether `e` matches (the memory store; the SQL stores say the same
    /// in SQL).
    pub(crate) fn matches(&self, e: &AuditEntry) -> bool {
        let (from, to_before) = (self.at_from_text(), self.at_before_text());
        let worker = self.worker.as_deref().map(str::to_ascii_lowercase);
        self.family
            .as_deref()
            .is_none_or(|f| e.document_id.as_deref() == Some(f))
            && self
                .device
                .as_deref()
                .is_none_or(|d| e.device_id.as_deref() == Some(d))
            && self
                .team
                .as_deref()
                .is_none_or(|t| e.team.as_deref() == Some(t))
            && worker.as_deref().is_none_or(|w| {
                e.worker
                    .as_deref()
                    .is_some_and(|ew| ew.to_ascii_lowercase().contains(w))
            })
            && self
                .action
                .as_deref()
                .is_none_or(|a| e.action.as_str() == a)
            && from.is_none_or(|f| e.at >= f)
            && to_before.is_none_or(|t| e.at < t)
    }
}

/// One audit record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub action: AuditAction,
    pub device_id: Option<String>,
    pub worker: Option<String>,
    pub document_id: Option<String>,
    /// Stated when the record is about a team's document and has no device
    /// of that team (an administrator's export, a cross-team request).
    pub team: Option<String>,
    /// A client address (a refused token, a lockout).
    pub client: Option<String>,
}

impl AuditRecord {
    /// A record of `action`, naming nobody yet.
    pub fn new(action: AuditAction, at: DateTime<Utc>) -> Self {
        AuditRecord {
            at,
            action,
            device_id: None,
            worker: None,
            document_id: None,
            team: None,
            client: None,
        }
    }

    /// A record of what `device` (or, with none, the relay) did.
    pub fn by(
        device: Option<&Device>,
        action: AuditAction,
        doc_id: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        AuditRecord {
            device_id: device.map(|d| d.id.to_string()),
            worker: device.map(|d| d.worker.clone()),
            document_id: doc_id.map(str::to_string),
            ..AuditRecord::new(action, at)
        }
    }

    pub fn worker(mut self, worker: &str) -> Self {
        self.worker = Some(worker.to_string());
        self
    }

    pub fn device(mut self, device_id: &str) -> Self {
        self.device_id = Some(device_id.to_string());
        self
    }

    pub fn document(mut self, team: &str, doc_id: &str) -> Self {
        self.team = Some(team.to_string());
        self.document_id = Some(doc_id.to_string());
        self
    }

    /// About a document of the device's own team.
    pub fn in_document(mut self, doc_id: &str) -> Self {
        self.document_id = Some(doc_id.to_string());
        self
    }

    pub fn client(mut self, client: &str) -> Self {
        self.client = Some(client.to_string());
        self
    }

    /// `at` as stored (RFC 3339).
    pub(crate) fn at_text(&self) -> String {
        self.at.to_rfc3339()
    }
}

/// An enrolled device as the administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: DeviceId,
    pub team: Team,
    pub worker: String,
    pub device_name: String,
    pub enrolled_at: String,
    pub revoked_at: Option<String>,
    pub last_sync_at: Option<String>,
    /// The kind of address it last synced from ([`address_kind`]; "unknown"
    /// for a connection without one), never the address itself.
    pub last_address_kind: Option<String>,
}

/// What kind of address `ip` is, as a device's last sync records it:
/// "loopback", "private" (RFC 1918, IPv6 unique-local fc00::/7, link-local
/// 169.254/16 and fe80::/10) or "public". An IPv4-mapped IPv6 address is
/// judged as its IPv4 address.
pub fn address_kind(ip: std::net::IpAddr) -> &'static str {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let (loopback, private) = match ip {
        IpAddr::V4(v4) => (v4.is_loopback(), v4.is_private() || v4.is_link_local()),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (
                v6.is_loopback(),
                first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80,
            )
        }
    };
    if loopback {
        "loopback"
    } else if private {
        "private"
    } else {
        "public"
    }
}

/// The address kind recorded for a connection the relay saw no address of
/// (an in-process connection, a router without connect info).
pub const UNKNOWN_ADDRESS_KIND: &str = "unknown";

/// A device's earlier read uploads: the latest receipt before a time
/// (audit_upload.rs: shortly before its last sync's end) and the (clamped)
/// time of its latest recorded read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadMarks {
    pub received_before_sync: Option<String>,
    pub latest_at: Option<String>,
}

/// A stored document: its team, the bytes to load it from, and the cursor
/// value of its latest change (what a compaction of this copy covers).
#[derive(Debug, Clone)]
pub struct StoredDocument {
    pub team: Team,
    pub snapshot: Option<Vec<u8>>,
    pub changes: Vec<Vec<u8>>,
    pub seq: i64,
}

/// What a new enrolment code is for.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub team: Team,
    pub worker: String,
    pub expires_at: DateTime<Utc>,
}

/// One incoming batch for [`super::DocumentStore::commit_upload`].
#[derive(Debug, Clone)]
pub struct Upload<'a> {
    pub team: &'a Team,
    pub doc_id: DocumentId,
    /// Who uploaded it: a device's session tag (`changed_since` leaves a
    /// device's own latest changes out).
    pub uploader: &'a str,
    /// The new changes (Automerge's `save_after`); empty: none.
    pub changes: &'a [u8],
    /// For a document new to the relay, its whole save, stored instead of
    /// the changes (it loads in half the time).
    pub snapshot: Option<&'a [u8]>,
    /// Audit records committed with the changes.
    pub audit: &'a [super::AuditRecord],
    pub at: DateTime<Utc>,
}

/// What a backend stores for an [`Upload`] (the rule every backend keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<'a> {
    /// The whole document, replacing nothing (it is new to the store).
    Snapshot(&'a [u8]),
    /// Bytes appended beside what is stored.
    Append(&'a [u8]),
    /// No changes: nothing stored, the cursor stays.
    Nothing,
}

impl<'a> Upload<'a> {
    /// A whole save stands for the document only where nothing was stored
    /// before (`created`); otherwise its changes are appended like any
    /// others, so another writer's stored changes are never replaced by a
    /// copy without them.
    pub fn stored(&self, created: bool) -> Stored<'a> {
        match self.snapshot {
            Some(snap) if created => Stored::Snapshot(snap),
            _ if !self.changes.is_empty() => Stored::Append(self.changes),
            Some(snap) if !snap.is_empty() => Stored::Append(snap),
            _ => Stored::Nothing,
        }
    }
}

/// What [`super::DocumentStore::commit_upload`] committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The document's cursor value after the commit (its latest change).
    pub seq: i64,
    /// Its cursor value just before: equal to what the uploader's copy was
    /// loaded at or last committed, nobody else wrote in between.
    pub previous_seq: i64,
    /// Changes stored beside the snapshot (compact past
    /// [`super::COMPACT_AFTER`]).
    pub change_count: i64,
}

/// Where a relay's revocation watcher has read up to (revocation.rs).
#[derive(Debug, Clone, Default)]
pub struct RevocationCursor {
    /// The last revocation seen; `None`: not yet placed.
    pub(crate) seq: Option<i64>,
    /// A backend's "nothing was written since" marker (SQLite: `PRAGMA
    /// data_version`, which changes when another connection, e.g. the admin
    /// command's, committed, beside the relay connection's own count of
    /// changed rows).
    pub(crate) written: Option<(i64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::address_kind;

    #[test]
    fn address_kinds() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.20", "private"),
            ("169.254.3.4", "private"),
            ("::ffff:192.168.1.20", "private"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("fe80::1", "private"),
            ("febf::1", "private"),
            ("8.8.8.8", "public"),
            ("172.32.0.1", "public"),
            ("192.169.0.1", "public"),
            ("::ffff:8.8.8.8", "public"),
            ("2001:db8::1", "public"),
            ("fec0::1", "public"),
            // IPv4-compatible (deprecated), not IPv4-mapped: not judged
            // as 10.0.0.1.
            ("::10.0.0.1", "public"),
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            assert_eq!(address_kind(parsed), kind, "{ip}");
        }
    }
}
