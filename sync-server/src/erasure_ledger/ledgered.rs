//! [`Ledgered`]: any [`Storage`] whose purges are written to the erasure
//! ledger first. The one place the ordering lives: every purge of the relay
//! and its admin commands (a family purge, the retention sweep) goes
//! through [`DocumentStore::purge_document`] of the storage the command
//! line opened, which is this wrapper; everything else is passed through.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use linkbook_core::DocumentId;

use super::ErasureLedger;
use crate::storage::{
    AuditEntry, AuditRecord, AuditSearch, AuditStore, CodeGrant, Committed, ConsoleStore, Device,
    DeviceId, DeviceStore, DirtyProjection, DocumentStore, ProjectionKind, Purged, ReadMarks,
    Result, RevocationCursor, StaffAccount, StaffSession, Storage, StorageError, StoredDocument,
    SyncStateStore, Team, TeamPolicy, Upload,
};

/// A storage whose purges are ledgered before they are made.
#[derive(Debug)]
pub struct Ledgered {
    inner: Arc<dyn Storage>,
    ledger: ErasureLedger,
}

impl Ledgered {
    pub fn new(inner: Arc<dyn Storage>, ledger: ErasureLedger) -> Ledgered {
        Ledgered { inner, ledger }
    }
}

#[async_trait]
impl DeviceStore for Ledgered {
    async fn add_enrolment_code(
        &self,
        code_hash: &[u8],
        grant: &CodeGrant,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.inner.add_enrolment_code(code_hash, grant, now).await
    }

    async fn redeem_enrolment_code(
        &self,
        code_hash: &[u8],
        device_id: &DeviceId,
        device_name: &str,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Device> {
        self.inner
            .redeem_enrolment_code(code_hash, device_id, device_name, token_hash, now)
            .await
    }

    async fn device_by_token(&self, token_hash: &[u8]) -> Result<Option<Device>> {
        self.inner.device_by_token(token_hash).await
    }

    async fn devices(&self) -> Result<Vec<Device>> {
        self.inner.devices().await
    }

    async fn revoke_device(
        &self,
        device_id: &DeviceId,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.inner.revoke_device(device_id, by, now).await
    }

    async fn touch_device(
        &self,
        device_id: &DeviceId,
        now: DateTime<Utc>,
        address_kind: &str,
    ) -> Result<()> {
        self.inner.touch_device(device_id, now, address_kind).await
    }

    async fn revocations_since(
        &self,
        cursor: &mut RevocationCursor,
        limit: usize,
    ) -> Result<Vec<DeviceId>> {
        self.inner.revocations_since(cursor, limit).await
    }

    async fn team_directory_id(&self, team: &Team, now: DateTime<Utc>) -> Result<String> {
        self.inner.team_directory_id(team, now).await
    }

    async fn set_team_policy(
        &self,
        team: &Team,
        policy: TeamPolicy,
        audit: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.inner.set_team_policy(team, policy, audit, now).await
    }

    async fn team_policy(&self, team: &Team) -> Result<TeamPolicy> {
        self.inner.team_policy(team).await
    }

    async fn retention_policies(&self) -> Result<Vec<(Team, i64)>> {
        self.inner.retention_policies().await
    }

    async fn store_id(&self, proposed: &str) -> Result<String> {
        self.inner.store_id(proposed).await
    }

    async fn renew_store_id(&self, new_id: &str) -> Result<()> {
        self.inner.renew_store_id(new_id).await
    }

    async fn record_backup(&self, at: DateTime<Utc>) -> Result<()> {
        self.inner.record_backup(at).await
    }

    async fn last_backup(&self) -> Result<Option<DateTime<Utc>>> {
        self.inner.last_backup().await
    }

    async fn claim_job(&self, job: &str, period: &str) -> Result<bool> {
        self.inner.claim_job(job, period).await
    }
}

#[async_trait]
impl DocumentStore for Ledgered {
    /// The ledger first, fsynced; then the database. A ledger that cannot
    /// be written stops the purge (nothing erased that a restore could
    /// bring back); a database purge that fails after it is completed by
    /// the next replay.
    async fn purge_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let ledger = &self.ledger;
        let append = || ledger.append(team, doc_id, now);
        let written = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(append),
            _ => append(),
        };
        written.map_err(|e| {
            StorageError::Disk(format!(
                "nothing was purged, as the erasure ledger could not be written: {e}"
            ))
        })?;
        self.inner
            .purge_document(team, doc_id, reason, by, now)
            .await
    }

    async fn document_exists(&self, team: &Team, doc_id: DocumentId) -> Result<bool> {
        self.inner.document_exists(team, doc_id).await
    }

    async fn teams_holding(&self, doc_id: DocumentId) -> Result<Vec<Team>> {
        self.inner.teams_holding(doc_id).await
    }

    async fn load_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
    ) -> Result<Option<StoredDocument>> {
        self.inner.load_document(team, doc_id).await
    }

    async fn commit_upload(&self, upload: &Upload<'_>) -> Result<Committed> {
        self.inner.commit_upload(upload).await
    }

    async fn compact(
        &self,
        team: &Team,
        doc_id: DocumentId,
        snapshot: &[u8],
        through: i64,
    ) -> Result<bool> {
        self.inner.compact(team, doc_id, snapshot, through).await
    }

    async fn changed_since(
        &self,
        team: &Team,
        since: i64,
        uploader: &str,
    ) -> Result<(i64, Vec<(DocumentId, i64)>)> {
        self.inner.changed_since(team, since, uploader).await
    }

    async fn watch_documents(&self) -> Result<Option<crate::storage::DocumentEvents>> {
        self.inner.watch_documents().await
    }

    async fn ensure_purged(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        purged_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.inner
            .ensure_purged(team, doc_id, reason, purged_at, now)
            .await
    }

    async fn is_purged(&self, team: &Team, doc_id: DocumentId) -> Result<bool> {
        self.inner.is_purged(team, doc_id).await
    }

    async fn purged(&self, team: &Team) -> Result<Vec<Purged>> {
        self.inner.purged(team).await
    }

    async fn document_ids(&self) -> Result<Vec<(DocumentId, Team)>> {
        self.inner.document_ids().await
    }

    async fn record_refusals(&self, refusals: &[crate::refusals::Refusal]) -> Result<()> {
        self.inner.record_refusals(refusals).await
    }

    async fn refused_documents(
        &self,
        team: Option<&Team>,
    ) -> Result<Vec<crate::refusals::RefusedDocument>> {
        self.inner.refused_documents(team).await
    }
}

#[async_trait]
impl SyncStateStore for Ledgered {
    async fn sync_state(
        &self,
        team: &Team,
        doc_id: DocumentId,
        device_id: &DeviceId,
    ) -> Result<Option<Vec<u8>>> {
        self.inner.sync_state(team, doc_id, device_id).await
    }

    async fn save_sync_states(
        &self,
        states: &[(Team, DocumentId, DeviceId, Vec<u8>)],
    ) -> Result<()> {
        self.inner.save_sync_states(states).await
    }
}

#[async_trait]
impl AuditStore for Ledgered {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        self.inner.append_audit(records).await
    }

    async fn record_reads(
        &self,
        device: &Device,
        reads: &[(String, String)],
        received_at: Option<&str>,
    ) -> Result<()> {
        self.inner.record_reads(device, reads, received_at).await
    }

    async fn reads_received_since(&self, device_id: &DeviceId, since: &str) -> Result<i64> {
        self.inner.reads_received_since(device_id, since).await
    }

    async fn read_marks(
        &self,
        device_id: &DeviceId,
        received_before: Option<&str>,
    ) -> Result<ReadMarks> {
        self.inner.read_marks(device_id, received_before).await
    }

    async fn audit_log(
        &self,
        family: Option<&str>,
        device: Option<&DeviceId>,
        team: Option<&Team>,
    ) -> Result<Vec<AuditEntry>> {
        self.inner.audit_log(family, device, team).await
    }

    async fn audit_search(
        &self,
        query: &AuditSearch,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, u64)> {
        self.inner.audit_search(query, limit).await
    }
}

/// Passed through: a purge removes a document's projections inside the
/// backend's own purge, which the ledger already precedes.
#[async_trait]
impl ConsoleStore for Ledgered {
    async fn add_account(&self, account: &StaffAccount) -> Result<()> {
        self.inner.add_account(account).await
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<StaffAccount>> {
        self.inner.account_by_name(name).await
    }

    async fn account(&self, id: &str) -> Result<Option<StaffAccount>> {
        self.inner.account(id).await
    }

    async fn account_by_setup(
        &self,
        setup_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<StaffAccount>> {
        self.inner.account_by_setup(setup_hash, now).await
    }

    async fn complete_setup(
        &self,
        id: &str,
        setup_hash: &[u8],
        password_hash: &str,
        totp_secret: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.inner
            .complete_setup(id, setup_hash, password_hash, totp_secret, now)
            .await
    }

    async fn reset_account(
        &self,
        id: &str,
        setup_hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        self.inner.reset_account(id, setup_hash, expires_at).await
    }

    async fn disable_account(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        self.inner.disable_account(id, now).await
    }

    async fn accounts(&self) -> Result<Vec<StaffAccount>> {
        self.inner.accounts().await
    }

    async fn accept_totp_step(&self, id: &str, step: i64) -> Result<bool> {
        self.inner.accept_totp_step(id, step).await
    }

    async fn create_session(&self, session_hash: &[u8], session: &StaffSession) -> Result<()> {
        self.inner.create_session(session_hash, session).await
    }

    async fn session(&self, session_hash: &[u8]) -> Result<Option<(StaffSession, StaffAccount)>> {
        self.inner.session(session_hash).await
    }

    async fn touch_session(&self, session_hash: &[u8], now: DateTime<Utc>) -> Result<()> {
        self.inner.touch_session(session_hash, now).await
    }

    async fn end_session(&self, session_hash: &[u8]) -> Result<()> {
        self.inner.end_session(session_hash).await
    }

    async fn end_stale_sessions(
        &self,
        idle_before: DateTime<Utc>,
        created_before: DateTime<Utc>,
    ) -> Result<u64> {
        self.inner
            .end_stale_sessions(idle_before, created_before)
            .await
    }

    async fn dirty_projections(&self, limit: usize) -> Result<Vec<DirtyProjection>> {
        self.inner.dirty_projections(limit).await
    }

    async fn put_projection(
        &self,
        team: &Team,
        id: DocumentId,
        generation: i64,
        kind: Option<ProjectionKind>,
        body: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.inner
            .put_projection(team, id, generation, kind, body, now)
            .await
    }

    async fn projections(
        &self,
        team: &Team,
        kind: ProjectionKind,
    ) -> Result<Vec<(DocumentId, String)>> {
        self.inner.projections(team, kind).await
    }

    async fn projected_teams(&self) -> Result<Vec<Team>> {
        self.inner.projected_teams().await
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    async fn stored(s: &dyn Storage, team: &Team, id: DocumentId) {
        s.commit_upload(&Upload {
            team,
            doc_id: id,
            uploader: "d1",
            changes: b"c",
            snapshot: None,
            audit: &[],
            at: Utc::now(),
        })
        .await
        .expect("upload");
    }

    /// The ledger first: a purge is in the ledger once it is made, and a
    /// ledger that cannot be written stops the purge.
    #[tokio::test]
    async fn a_purge_is_ledgered_first_and_none_is_made_without_the_ledger() {
        let dir = tempfile::tempdir().expect("dir");
        let team = Team::from("north");
        let id = DocumentId::from_bytes([3; 16]);
        let ledger = ErasureLedger::at(dir.path().join("erasures"));
        let s = Ledgered::new(Arc::new(MemoryStorage::new()), ledger.clone());
        stored(&s, &team, id).await;
        assert!(
            s.purge_document(&team, id, "asked", "office administrator", Utc::now())
                .await
                .expect("purge")
        );
        let records = ledger.records().expect("ledger");
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].team.as_str(), records[0].id), ("north", id));

        let nowhere = ErasureLedger::at(dir.path().join("missing dir").join("erasures"));
        let s = Ledgered::new(Arc::new(MemoryStorage::new()), nowhere);
        stored(&s, &team, id).await;
        let e = s
            .purge_document(&team, id, "asked", "office administrator", Utc::now())
            .await
            .expect_err("no ledger, no purge");
        assert!(e.is_disk_problem(), "{e}");
        assert!(!s.is_purged(&team, id).await.expect("purged"));
        assert!(s.load_document(&team, id).await.expect("load").is_some());
    }
}
