//! The relay's storage, behind four async traits split by concern
//! (docs/adr/0009): [`DeviceStore`] (devices, enrolment codes, teams and
//! their policy, revocations), [`DocumentStore`] (documents keyed by
//! (team, id), the change cursor, purges, refusals), [`SyncStateStore`]
//! and [`AuditStore`] (the append-only audit). [`Storage`] is all four: what
//! the relay and the admin service layer hold.
//!
//! Implementations: [`SqliteStorage`] (the embedded default, one file),
//! [`PostgresStorage`] (`--database-url`, docs/adr/0012) and
//! [`MemoryStorage`] (tests). Every backend runs the contract suite
//! (`contract.rs`), which states what a second backend must guarantee:
//! - an operation that returned `Ok` has committed (durably, for a backend
//!   that keeps data); one that returned `Err` wrote nothing;
//! - [`DocumentStore::commit_upload`] stores a batch's changes, its audit
//!   records and the cursor advance in one transaction, and refuses a purged
//!   document inside it;
//! - compaction is conditional: [`DocumentStore::compact`] deletes only the
//!   changes its snapshot covers;
//! - the change cursor is commit-ordered: a reader of
//!   [`DocumentStore::changed_since`] never skips a change committed after
//!   its read with a cursor value below the one it was handed;
//! - the audit only grows.

mod console;
mod error;
mod ids;
mod memory;
pub mod postgres;
mod sqlite;
mod types;

#[cfg(any(test, feature = "contract"))]
pub mod contract;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use linkbook_core::DocumentId;

pub use console::{
    ConsoleStore, DirtyProjection, ProjectionKind, StaffAccount, StaffRole, StaffSession,
};
pub use error::StorageError;
pub use ids::{DeviceId, Team};
pub use memory::MemoryStorage;
pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;
pub use types::{
    AuditAction, AuditEntry, AuditRecord, AuditSearch, CodeGrant, Committed, Device, ReadMarks,
    RevocationCursor, Stored, StoredDocument, UNKNOWN_ADDRESS_KIND, Upload, address_kind,
};

/// A team's data-protection policy; `None` is no limit. The same type is
/// sent to devices in `/v1/changes` and `changed-since`.
pub use linkbook_core::protocol::dto::Policy as TeamPolicy;

/// A document the office purged, as devices are told of it (no content).
pub use linkbook_core::protocol::dto::Purged;

/// The four traits, for calling them on a concrete store.
pub mod prelude {
    pub use super::{
        AuditStore, ConsoleStore, DeviceStore, DocumentStore, Storage, SyncStateStore,
    };
}

/// What a storage operation returns.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Changes appended before the relay compacts a document into a snapshot.
pub const COMPACT_AFTER: i64 = 256;

/// Devices, enrolment codes, teams (directory id, policy), revocations and
/// the store's own id.
#[async_trait]
pub trait DeviceStore: Send + Sync + 'static {
    async fn add_enrolment_code(
        &self,
        code_hash: &[u8],
        grant: &CodeGrant,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Uses up a code, records the device and audits `enrolled`, in one
    /// transaction: a code enrols one device. A code unknown, used or
    /// expired is [`StorageError::EnrolmentRefused`].
    async fn redeem_enrolment_code(
        &self,
        code_hash: &[u8],
        device_id: &DeviceId,
        device_name: &str,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Device>;
    async fn device_by_token(&self, token_hash: &[u8]) -> Result<Option<Device>>;
    /// Every device, by team, worker and enrolment time.
    async fn devices(&self) -> Result<Vec<Device>>;
    /// Revokes a device and audits it once, naming `by` (who revoked it),
    /// in one transaction; revoking it again changes and audits nothing.
    /// Returns false if there is no such device.
    async fn revoke_device(
        &self,
        device_id: &DeviceId,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Records a device's latest sync and the kind of address it came
    /// from ([`address_kind`], or [`UNKNOWN_ADDRESS_KIND`]).
    async fn touch_device(
        &self,
        device_id: &DeviceId,
        now: DateTime<Utc>,
        address_kind: &str,
    ) -> Result<()>;
    /// Devices revoked after `cursor` (by any process), oldest first, at
    /// most `limit`; moves the cursor past them. A fresh cursor starts at
    /// the latest revocation (earlier ones are refused at authentication).
    /// Cheap when nothing was written (revocation.rs polls it).
    async fn revocations_since(
        &self,
        cursor: &mut RevocationCursor,
        limit: usize,
    ) -> Result<Vec<DeviceId>>;
    /// The team's directory document id, chosen at random the first time.
    async fn team_directory_id(&self, team: &Team, now: DateTime<Utc>) -> Result<String>;
    /// Sets a team's policy (creating the team if new; `None` lifts a
    /// limit) and appends `audit`, in one transaction.
    async fn set_team_policy(
        &self,
        team: &Team,
        policy: TeamPolicy,
        audit: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// A team's policy (no limits for a team the relay does not know).
    async fn team_policy(&self, team: &Team) -> Result<TeamPolicy>;
    /// Every team with a retention period, by name.
    async fn retention_policies(&self) -> Result<Vec<(Team, i64)>>;
    /// This store's id: `proposed` becomes it if it has none yet. A store
    /// restored from a backup must be given a new one (devices then send it
    /// everything they hold again).
    async fn store_id(&self, proposed: &str) -> Result<String>;
    /// Claims once-per-period work (`job` for `period`, e.g. the retention
    /// sweep for a day) for the caller: true for exactly one caller per
    /// (job, period) across every relay node on the store, false for the
    /// rest. A conditional write, so no lock is held while the work runs;
    /// periods compare as text (ISO dates order right).
    async fn claim_job(&self, job: &str, period: &str) -> Result<bool>;
    /// Gives the store the new id `new_id` (a store restored from a backup:
    /// devices then send it everything they hold) and drops what belonged to
    /// the old one: the relay's sync states and the last backup's time, in
    /// one transaction.
    async fn renew_store_id(&self, new_id: &str) -> Result<()>;
    /// Records that a backup of the store was completed at `at` (the
    /// `linkbook_backup_age_seconds` gauge reads it back).
    async fn record_backup(&self, at: DateTime<Utc>) -> Result<()>;
    /// When the latest backup recorded with [`DeviceStore::record_backup`]
    /// was completed; `None` if none was.
    async fn last_backup(&self) -> Result<Option<DateTime<Utc>>>;
}

/// Documents, namespaced per team: `(team, id)` is a document, and the same
/// id in two teams is two documents (issue 11, finding 6).
#[async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    async fn document_exists(&self, team: &Team, doc_id: DocumentId) -> Result<bool>;
    /// The teams holding a document (or a purged one) with this id: the
    /// cross-team audit and the admin commands that take an id.
    async fn teams_holding(&self, doc_id: DocumentId) -> Result<Vec<Team>>;
    /// The document's snapshot and changes, read in one transaction, with
    /// the cursor value of its latest change.
    async fn load_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
    ) -> Result<Option<StoredDocument>>;
    /// Stores one incoming batch in one transaction (one fsync): the
    /// changes (creating the document if new; a snapshot is stored as the
    /// whole document only if it is new, else its changes are appended),
    /// the document's cursor advance and last uploader, and `upload.audit`.
    /// A purged document is refused inside the transaction
    /// ([`StorageError::Purged`]), with nothing written.
    async fn commit_upload(&self, upload: &Upload<'_>) -> Result<Committed>;
    /// Replaces the changes with cursor values up to `through` by
    /// `snapshot`, which must hold them and the stored snapshot. Conditional:
    /// changes after `through` stay, and a stored snapshot that already
    /// covers more than `through` is kept (returns false, nothing written).
    async fn compact(
        &self,
        team: &Team,
        doc_id: DocumentId,
        snapshot: &[u8],
        through: i64,
    ) -> Result<bool>;
    /// The team's documents changed after cursor `since`, except those whose
    /// latest change was uploaded as `uploader` ([`Upload::uploader`]: a
    /// device id, or a device's session tag), each with the cursor value of
    /// its latest change, in cursor order, and the cursor to ask from next
    /// time. Commit-ordered: nothing committed later gets a value at or
    /// below the returned cursor.
    async fn changed_since(
        &self,
        team: &Team,
        since: i64,
        uploader: &str,
    ) -> Result<(i64, Vec<(DocumentId, i64)>)>;
    /// Deletes every stored change, snapshot, sync state and refusal of
    /// `team`'s document, remembers it as purged and audits `purged`, in
    /// one transaction; false if it is not stored.
    async fn purge_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Makes sure `team`'s document is purged: deletes whatever of it is
    /// stored (as [`DocumentStore::purge_document`] does) and remembers it as
    /// purged at `purged_at` even if nothing of it is stored (a device that
    /// still holds it must not bring it back), auditing `purged` at `now`,
    /// in one transaction; false, with nothing written, if it is remembered
    /// as purged already. The erasure ledger's replay
    /// (`erasure_ledger.rs`) after a restore.
    async fn ensure_purged(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        purged_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    async fn is_purged(&self, team: &Team, doc_id: DocumentId) -> Result<bool>;
    /// Every document of `team` that was purged, oldest purge first.
    async fn purged(&self, team: &Team) -> Result<Vec<Purged>>;
    /// Every stored document: (id, team), by id.
    async fn document_ids(&self) -> Result<Vec<(DocumentId, Team)>>;
    /// Records refusals (refusals.rs), auditing each new (document, device,
    /// reason), in one transaction; keeps at most
    /// [`crate::refusals::MAX_ROWS`] rows (the last refused longest ago go).
    async fn record_refusals(&self, refusals: &[crate::refusals::Refusal]) -> Result<()>;
    /// Refused documents, latest first, of one team or all.
    async fn refused_documents(
        &self,
        team: Option<&Team>,
    ) -> Result<Vec<crate::refusals::RefusedDocument>>;
    /// What other writers of this store (other relay nodes on the same
    /// database) commit to documents, as they commit, in commit order:
    /// how a node keeps its loaded copies fresh (relay/nodes.rs). `None`:
    /// the backend has one writer of documents (SQLite's serving relay,
    /// whose admin commands only purge, which every upload checks). No
    /// default: a wrapper that forgot to pass it on would leave its nodes
    /// answering from stale copies without a sign.
    async fn watch_documents(&self) -> Result<Option<DocumentEvents>>;
}

/// A document event another writer committed ([`DocumentStore::watch_documents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentEvent {
    /// Changes were stored; `seq` is the document's cursor value after them.
    Changed {
        team: Team,
        id: DocumentId,
        seq: i64,
    },
    /// The document was purged.
    Purged { team: Team, id: DocumentId },
    /// Events may have been lost (the watch reconnected, or the receiver
    /// fell behind): every loaded copy must be checked against storage.
    Missed,
}

/// The receiving end of [`DocumentStore::watch_documents`]; the watch
/// stops when it is dropped.
pub type DocumentEvents = tokio::sync::mpsc::Receiver<DocumentEvent>;

/// Automerge sync states per (team, document, device).
#[async_trait]
pub trait SyncStateStore: Send + Sync + 'static {
    async fn sync_state(
        &self,
        team: &Team,
        doc_id: DocumentId,
        device_id: &DeviceId,
    ) -> Result<Option<Vec<u8>>>;
    /// Saves `(team, document, device, state)`s in one transaction.
    async fn save_sync_states(
        &self,
        states: &[(Team, DocumentId, DeviceId, Vec<u8>)],
    ) -> Result<()>;
}

/// The append-only audit: who did what to which document, when (never
/// content). No operation changes or removes a record.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends records in one transaction.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()>;
    /// Appends a device's reads: `(family id, claimed at)` with, if given,
    /// the relay's receipt time beside each (an uploaded read), in one
    /// transaction.
    async fn record_reads(
        &self,
        device: &Device,
        reads: &[(String, String)],
        received_at: Option<&str>,
    ) -> Result<()>;
    /// Case-file reads a device uploaded since `since` (receipt time).
    async fn reads_received_since(&self, device_id: &DeviceId, since: &str) -> Result<i64>;
    /// What the relay knows of a device's earlier read uploads
    /// (audit_upload.rs clamps new claims to it).
    async fn read_marks(
        &self,
        device_id: &DeviceId,
        received_before: Option<&str>,
    ) -> Result<ReadMarks>;
    /// The audit, oldest first, about one family and/or one device and/or
    /// one team (a record's team: its own, else its device's).
    async fn audit_log(
        &self,
        family: Option<&str>,
        device: Option<&DeviceId>,
        team: Option<&Team>,
    ) -> Result<Vec<AuditEntry>>;
    /// Records matching `query`, newest first, at most `limit`; and how
    /// many match in all. Newest is last recorded (the order `audit_log`
    /// returns, reversed); `from` and `to_before` bound `at`, compared as
    /// the RFC 3339 UTC text it is stored as. The team rule is
    /// `audit_log`'s.
    async fn audit_search(
        &self,
        query: &AuditSearch,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, u64)>;

    /// Appends one record about `device` (or the relay itself).
    async fn audit(
        &self,
        device: Option<&Device>,
        action: AuditAction,
        doc_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.append_audit(&[AuditRecord::by(device, action, doc_id, now)])
            .await
    }
}

/// The whole store: what the relay and the admin service layer hold.
pub trait Storage:
    DeviceStore + DocumentStore + SyncStateStore + AuditStore + ConsoleStore
{
}

impl<T: DeviceStore + DocumentStore + SyncStateStore + AuditStore + ConsoleStore> Storage for T {}
