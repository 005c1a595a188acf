//! What the office console keeps in the relay's storage (issue 15): staff
//! accounts and their sessions, and the report projections the relay keeps
//! as documents arrive. Secrets are stored only as hashes (set-up links and
//! session ids: SHA-256 of a random token; passwords: argon2id PHC strings);
//! the TOTP seed cannot be hashed and is kept as the account's bytes.

use chrono::{DateTime, Utc};
use linkbook_core::DocumentId;

use super::{Result, Team};

/// What a member of staff may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaffRole {
    /// Enrols and revokes devices, sets team policy.
    Administrator,
    /// Reads reports.
    Manager,
    /// Purges families, answers subject access, runs retention.
    DataProtection,
}

impl StaffRole {
    pub const ALL: [StaffRole; 3] = [
        StaffRole::Administrator,
        StaffRole::Manager,
        StaffRole::DataProtection,
    ];

    /// As stored and as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::Administrator => "administrator",
            StaffRole::Manager => "manager",
            StaffRole::DataProtection => "data-protection",
        }
    }

    pub fn parse(s: &str) -> Option<StaffRole> {
        StaffRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Administrator and data-protection accounts must have a second factor.
    pub fn needs_totp(self) -> bool {
        !matches!(self, StaffRole::Manager)
    }
}

/// A member of staff's console account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffAccount {
    /// Random, opaque.
    pub id: String,
    /// What they sign in with; unique among accounts.
    pub name: String,
    pub role: StaffRole,
    /// argon2id PHC string; `None` until the set-up link was used.
    pub password_hash: Option<String>,
    /// The RFC 6238 seed; `None` for a manager, or before set-up.
    pub totp_secret: Option<Vec<u8>>,
    /// The last TOTP time step accepted (a code is accepted once).
    pub totp_last_step: Option<i64>,
    /// SHA-256 of the one-time set-up token, until it is used.
    pub setup_hash: Option<Vec<u8>>,
    pub setup_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// A disabled account cannot sign in and its sessions are ended.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A signed-in session, keyed by the SHA-256 of its cookie's random id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffSession {
    pub account_id: String,
    /// The token every form of this session carries (random, per session).
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// What a report projection is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectionKind {
    Family,
    FamilyDay,
}

impl ProjectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionKind::Family => "family",
            ProjectionKind::FamilyDay => "family_day",
        }
    }

    pub fn parse(s: &str) -> Option<ProjectionKind> {
        [ProjectionKind::Family, ProjectionKind::FamilyDay]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A document whose projection is out of date: its changes were stored
/// after the projection was last written. `generation` counts those
/// commits; writing a projection for an older generation leaves it dirty.
/// A document's generations only grow, across cleared marks too (a new
/// mark starts at the commit's cursor value): a projector that read a mark
/// since cleared and made again cannot clear the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyProjection {
    pub team: Team,
    pub id: DocumentId,
    pub generation: i64,
}

/// Staff accounts, sessions and report projections.
#[async_trait::async_trait]
pub trait ConsoleStore: Send + Sync + 'static {
    /// Adds an account; `StorageError::Conflict` if the name is taken.
    async fn add_account(&self, account: &StaffAccount) -> Result<()>;
    async fn account_by_name(&self, name: &str) -> Result<Option<StaffAccount>>;
    async fn account(&self, id: &str) -> Result<Option<StaffAccount>>;
    /// The account whose unexpired set-up token hashes to `setup_hash`.
    async fn account_by_setup(
        &self,
        setup_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<StaffAccount>>;
    /// Sets the password (and TOTP seed) and consumes the set-up token, in
    /// one step; `false` (nothing written) if the token was already used
    /// or has expired.
    async fn complete_setup(
        &self,
        id: &str,
        setup_hash: &[u8],
        password_hash: &str,
        totp_secret: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Gives an account a new set-up token (a forgotten password): its
    /// password, TOTP seed and sessions go.
    async fn reset_account(
        &self,
        id: &str,
        setup_hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool>;
    /// Disables an account and ends its sessions; `false` if there is none.
    async fn disable_account(&self, id: &str, now: DateTime<Utc>) -> Result<bool>;
    async fn accounts(&self) -> Result<Vec<StaffAccount>>;
    /// Accepts TOTP time step `step` once: `true` and recorded if it is
    /// later than the last accepted one, else `false` (a replayed code).
    async fn accept_totp_step(&self, id: &str, step: i64) -> Result<bool>;

    /// Records a signed-in session. `StorageError::Conflict` (nothing
    /// written) if its account is disabled or has no password (reset, or
    /// not set up yet), checked atomically with the write: a sign-in racing
    /// [`ConsoleStore::disable_account`] or [`ConsoleStore::reset_account`]
    /// leaves no session behind.
    async fn create_session(&self, session_hash: &[u8], session: &StaffSession) -> Result<()>;
    /// The session and its (not disabled) account.
    async fn session(&self, session_hash: &[u8]) -> Result<Option<(StaffSession, StaffAccount)>>;
    async fn touch_session(&self, session_hash: &[u8], now: DateTime<Utc>) -> Result<()>;
    async fn end_session(&self, session_hash: &[u8]) -> Result<()>;
    /// Deletes sessions idle since before `idle_before` or created before
    /// `created_before`; how many went.
    async fn end_stale_sessions(
        &self,
        idle_before: DateTime<Utc>,
        created_before: DateTime<Utc>,
    ) -> Result<u64>;

    /// Documents whose projection is out of date, at most `limit`. A stored
    /// upload (`DocumentStore::commit_upload`) marks its document dirty in
    /// its own transaction, so a crash never leaves a stale projection
    /// unmarked.
    async fn dirty_projections(&self, limit: usize) -> Result<Vec<DirtyProjection>>;
    /// Writes a document's projection (`body`: JSON, no names or note
    /// text), clearing its dirty mark if `generation` is still the latest.
    /// `kind: None`: the document is not one reports count (a directory, a
    /// damaged document): any projection goes and the mark is cleared.
    /// Nothing is written for a purged document.
    async fn put_projection(
        &self,
        team: &Team,
        id: DocumentId,
        generation: i64,
        kind: Option<ProjectionKind>,
        body: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Every projection of `kind` for `team`: (document, JSON body).
    async fn projections(
        &self,
        team: &Team,
        kind: ProjectionKind,
    ) -> Result<Vec<(DocumentId, String)>>;
    /// Teams with any projection (for the report's team choice).
    async fn projected_teams(&self) -> Result<Vec<Team>>;
}
