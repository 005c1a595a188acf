//! [`AuditStore`] and [`SyncStateStore`] in memory.

use crate::storage::{DeviceId, Team};
use async_trait::async_trait;
use linkbook_core::DocumentId;

use super::MemoryStorage;
use crate::storage::{
    AuditAction, AuditEntry, AuditRecord, AuditSearch, AuditStore, Device, ReadMarks, Result,
    SyncStateStore,
};

#[async_trait]
impl SyncStateStore for MemoryStorage {
    async fn sync_state(
        &self,
        team: &Team,
        doc_id: DocumentId,
        device_id: &DeviceId,
    ) -> Result<Option<Vec<u8>>> {
        let s = self.state();
        Ok(s.sync_states
            .get(&(team.to_string(), doc_id.to_string(), device_id.to_string()))
            .cloned())
    }

    async fn save_sync_states(
        &self,
        states: &[(Team, DocumentId, DeviceId, Vec<u8>)],
    ) -> Result<()> {
        let mut s = self.state();
        for (team, doc, device, state) in states {
            s.sync_states.insert(
                (team.to_string(), doc.to_string(), device.to_string()),
                state.clone(),
            );
        }
        s.write();
        Ok(())
    }
}

#[async_trait]
impl AuditStore for MemoryStorage {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        let mut s = self.state();
        for r in records {
            s.append(r);
        }
        Ok(())
    }

    async fn record_reads(
        &self,
        device: &Device,
        reads: &[(String, String)],
        received_at: Option<&str>,
    ) -> Result<()> {
        let mut s = self.state();
        for (family, at) in reads {
            s.audit.push(AuditEntry {
                at: at.clone(),
                device_id: Some(device.id.to_string()),
                worker: Some(device.worker.clone()),
                action: AuditAction::Read,
                document_id: Some(family.clone()),
                client: None,
                received_at: received_at.map(str::to_string),
                team: Some(device.team.to_string()),
            });
        }
        s.write();
        Ok(())
    }

    async fn reads_received_since(&self, device_id: &DeviceId, since: &str) -> Result<i64> {
        let s = self.state();
        let n = s
            .audit
            .iter()
            .filter(|e| {
                e.action == AuditAction::Read
                    && e.device_id.as_deref() == Some(device_id)
                    && e.received_at.as_deref().is_some_and(|r| r >= since)
            })
            .count();
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    async fn read_marks(
        &self,
        device_id: &DeviceId,
        received_before: Option<&str>,
    ) -> Result<ReadMarks> {
        let s = self.state();
        let reads = || {
            s.audit.iter().filter(|e| {
                e.action == AuditAction::Read
                    && e.device_id.as_deref() == Some(device_id)
                    && e.received_at.is_some()
            })
        };
        let received_before_sync = received_before.and_then(|t| {
            reads()
                .filter_map(|e| e.received_at.clone())
                .filter(|r| r.as_str() < t)
                .max()
        });
        // The latest receipt; of equal receipts the last appended.
        let latest_at = reads()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.received_at.cmp(&b.received_at).then(i.cmp(j)))
            .map(|(_, e)| e.at.clone());
        Ok(ReadMarks {
            received_before_sync,
            latest_at,
        })
    }

    async fn audit_log(
        &self,
        family: Option<&str>,
        device: Option<&DeviceId>,
        team: Option<&Team>,
    ) -> Result<Vec<AuditEntry>> {
        let s = self.state();
        Ok(s.audit
            .iter()
            .filter(|e| family.is_none_or(|f| e.document_id.as_deref() == Some(f)))
            .filter(|e| device.is_none_or(|d| e.device_id.as_deref() == Some(d)))
            .filter(|e| team.is_none_or(|t| e.team.as_deref() == Some(t)))
            .cloned()
            .collect())
    }

    async fn audit_search(
        &self,
        query: &AuditSearch,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, u64)> {
        let s = self.state();
        let mut total = 0u64;
        let mut found = Vec::new();
        for e in s.audit.iter().rev().filter(|e| query.matches(e)) {
            total += 1;
            if found.len() < limit {
                found.push(e.clone());
            }
        }
        Ok((found, total))
    }
}
