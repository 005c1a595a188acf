//! An in-memory store for tests and simulations: the same contract as
//! SQLite (it runs the same suite), nothing kept past the process. One lock
//! over everything makes each operation a transaction and the cursor
//! commit-ordered.

use crate::storage::{DeviceId, Team};
use linkbook_core::DocumentId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AuditAction, AuditEntry, AuditRecord, CodeGrant, Committed, Device, DeviceStore, DocumentStore,
    Purged, Result, RevocationCursor, StorageError, Stored, StoredDocument, TeamPolicy, Upload,
};
use crate::refusals::{MAX_ROWS, Refusal, RefusedDocument};

mod audit;
mod console;

/// The relay's data, in memory.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
}

type Key = (String, DocumentId);

#[derive(Debug, Default)]
struct State {
    codes: HashMap<Vec<u8>, Code>,
    devices: Vec<(Device, Vec<u8>)>,
    teams: BTreeMap<String, TeamState>,
    revocations: Vec<DeviceId>,
    /// Bumped by every write (the revocation watcher's "nothing new").
    writes: i64,
    documents: BTreeMap<Key, Doc>,
    /// The last cursor value handed out (never reused).
    seq: i64,
    purged: BTreeMap<Key, (String, String)>,
    sync_states: HashMap<(String, String, String), Vec<u8>>,
    audit: Vec<AuditEntry>,
    refused: Vec<RefusedDocument>,
    store_id: Option<String>,
    jobs: HashMap<String, String>,
    last_backup: Option<DateTime<Utc>>,
    /// Staff accounts by id.
    accounts: BTreeMap<String, super::StaffAccount>,
    /// Sessions by the hash of their id.
    sessions: HashMap<Vec<u8>, super::StaffSession>,
    /// (kind, JSON body, updated at) per document.
    projections: BTreeMap<Key, (super::ProjectionKind, String, DateTime<Utc>)>,
    /// Documents whose projection is out of date, and their generation.
    projection_dirty: BTreeMap<Key, i64>,
}

#[derive(Debug)]
struct Code {
    grant: CodeGrant,
    used: bool,
}

#[derive(Debug, Default)]
struct TeamState {
    directory_id: String,
    policy: TeamPolicy,
}

#[derive(Debug, Default)]
struct Doc {
    snapshot: Option<Vec<u8>>,
    compacted_through: i64,
    /// (cursor value, bytes), oldest first.
    changes: Vec<(i64, Vec<u8>)>,
    seq: i64,
    last_device: Option<String>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Deletes what is stored of the document, remembers it as purged at
    /// `at.0` and audits it (by `worker`) at `at.1`.
    fn purge(
        &mut self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        at: (DateTime<Utc>, DateTime<Utc>),
        worker: &str,
    ) {
        let k = key(team, doc_id);
        self.documents.remove(&k);
        let text = doc_id.to_string();
        self.sync_states
            .retain(|(t, d, _), _| !(t == team && *d == text));
        self.refused
            .retain(|r| !(r.team == *team && r.document_id == text));
        self.projections.remove(&k);
        self.projection_dirty.remove(&k);
        self.purged
            .insert(k, (reason.to_string(), at.0.to_rfc3339()));
        self.append(
            &AuditRecord::new(AuditAction::Purged, at.1)
                .worker(worker)
                .document(team, &text),
        );
    }

    fn write(&mut self) {
        self.writes += 1;
    }

    fn append(&mut self, r: &AuditRecord) {
        let device_team = r
            .device_id
            .as_ref()
            .and_then(|id| self.devices.iter().find(|(d, _)| &d.id == id))
            .map(|(d, _)| d.team.to_string());
        self.audit.push(AuditEntry {
            at: r.at_text(),
            device_id: r.device_id.clone(),
            worker: r.worker.clone(),
            action: r.action.clone(),
            document_id: r.document_id.clone(),
            client: r.client.clone(),
            received_at: None,
            team: r.team.clone().or(device_team),
        });
        self.write();
    }

    fn team(&mut self, name: &str) -> &mut TeamState {
        self.teams
            .entry(name.to_string())
            .or_insert_with(|| TeamState {
                directory_id: linkbook_core::DocumentId::random().to_string(),
                policy: TeamPolicy::default(),
            })
    }
}

fn key(team: &str, id: DocumentId) -> Key {
    (team.to_string(), id)
}

#[async_trait]
impl DeviceStore for MemoryStorage {
    async fn add_enrolment_code(
        &self,
        code_hash: &[u8],
        grant: &CodeGrant,
        _now: DateTime<Utc>,
    ) -> Result<()> {
        let mut s = self.state();
        if s.codes.contains_key(code_hash) {
            return Err(StorageError::Conflict("enrolment code exists".into()));
        }
        s.codes.insert(
            code_hash.to_vec(),
            Code {
                grant: grant.clone(),
                used: false,
            },
        );
        s.write();
        Ok(())
    }

    async fn redeem_enrolment_code(
        &self,
        code_hash: &[u8],
        device_id: &DeviceId,
        device_name: &str,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Device> {
        let mut s = self.state();
        let Some(code) = s.codes.get(code_hash) else {
            return Err(StorageError::EnrolmentRefused("unknown enrolment code"));
        };
        if code.used {
            return Err(StorageError::EnrolmentRefused(
                "enrolment code already used",
            ));
        }
        if code.grant.expires_at <= now {
            return Err(StorageError::EnrolmentRefused("enrolment code expired"));
        }
        if s.devices
            .iter()
            .any(|(d, t)| d.id == *device_id || t == token_hash)
        {
            return Err(StorageError::Conflict("device exists".into()));
        }
        let device = Device {
            id: device_id.clone(),
            team: code.grant.team.clone(),
            worker: code.grant.worker.clone(),
            device_name: device_name.to_string(),
            enrolled_at: now.to_rfc3339(),
            revoked_at: None,
            last_sync_at: None,
            last_address_kind: None,
        };
        if let Some(code) = s.codes.get_mut(code_hash) {
            code.used = true;
        }
        s.devices.push((device.clone(), token_hash.to_vec()));
        s.append(&AuditRecord::by(
            Some(&device),
            AuditAction::Enrolled,
            None,
            now,
        ));
        Ok(device)
    }

    async fn device_by_token(&self, token_hash: &[u8]) -> Result<Option<Device>> {
        let s = self.state();
        Ok(s.devices
            .iter()
            .find(|(_, t)| t == token_hash)
            .map(|(d, _)| d.clone()))
    }

    async fn devices(&self) -> Result<Vec<Device>> {
        let mut all: Vec<Device> = self
            .state()
            .devices
            .iter()
            .map(|(d, _)| d.clone())
            .collect();
        all.sort_by(|a, b| {
            (&a.team, &a.worker, &a.enrolled_at).cmp(&(&b.team, &b.worker, &b.enrolled_at))
        });
        Ok(all)
    }

    async fn revoke_device(
        &self,
        device_id: &DeviceId,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut s = self.state();
        let Some((device, _)) = s.devices.iter_mut().find(|(d, _)| d.id == *device_id) else {
            return Ok(false);
        };
        if device.revoked_at.is_none() {
            device.revoked_at = Some(now.to_rfc3339());
            s.revocations.push(device_id.clone());
            let mut record = AuditRecord::new(AuditAction::Revoked, now).device(device_id);
            record.worker = by.map(str::to_string);
            s.append(&record);
        }
        Ok(true)
    }

    async fn touch_device(
        &self,
        device_id: &DeviceId,
        now: DateTime<Utc>,
        address_kind: &str,
    ) -> Result<()> {
        let mut s = self.state();
        if let Some((d, _)) = s.devices.iter_mut().find(|(d, _)| d.id == *device_id) {
            d.last_sync_at = Some(now.to_rfc3339());
            d.last_address_kind = Some(address_kind.to_string());
        }
        s.write();
        Ok(())
    }

    async fn revocations_since(
        &self,
        cursor: &mut RevocationCursor,
        limit: usize,
    ) -> Result<Vec<DeviceId>> {
        let s = self.state();
        let total = i64::try_from(s.revocations.len()).unwrap_or(i64::MAX);
        let Some(after) = cursor.seq else {
            cursor.seq = Some(total);
            cursor.written = Some((s.writes, 0));
            return Ok(Vec::new());
        };
        if cursor.written == Some((s.writes, 0)) {
            return Ok(Vec::new());
        }
        let start = usize::try_from(after).unwrap_or(0);
        let batch: Vec<DeviceId> = s
            .revocations
            .iter()
            .skip(start)
            .take(limit)
            .cloned()
            .collect();
        cursor.seq = Some(after + i64::try_from(batch.len()).unwrap_or(0));
        if batch.len() < limit {
            cursor.written = Some((s.writes, 0));
        }
        Ok(batch)
    }

    async fn team_directory_id(&self, team: &Team, _now: DateTime<Utc>) -> Result<String> {
        Ok(self.state().team(team).directory_id.clone())
    }

    async fn set_team_policy(
        &self,
        team: &Team,
        policy: TeamPolicy,
        audit: &[AuditRecord],
        _now: DateTime<Utc>,
    ) -> Result<()> {
        let mut s = self.state();
        s.team(team).policy = policy;
        for record in audit {
            s.append(record);
        }
        s.write();
        Ok(())
    }

    async fn team_policy(&self, team: &Team) -> Result<TeamPolicy> {
        let s = self.state();
        Ok(s.teams
            .get(team.as_str())
            .map(|t| t.policy)
            .unwrap_or_default())
    }

    async fn retention_policies(&self) -> Result<Vec<(Team, i64)>> {
        let s = self.state();
        Ok(s.teams
            .iter()
            .filter_map(|(name, t)| {
                t.policy
                    .retention_days
                    .map(|d| (Team::from(name.as_str()), d))
            })
            .collect())
    }

    async fn store_id(&self, proposed: &str) -> Result<String> {
        let mut s = self.state();
        Ok(s.store_id
            .get_or_insert_with(|| proposed.to_string())
            .clone())
    }

    async fn claim_job(&self, job: &str, period: &str) -> Result<bool> {
        let mut s = self.state();
        let claimed = s.jobs.get(job).is_none_or(|last| last.as_str() < period);
        if claimed {
            s.jobs.insert(job.to_string(), period.to_string());
        }
        Ok(claimed)
    }

    async fn renew_store_id(&self, new_id: &str) -> Result<()> {
        let mut s = self.state();
        s.store_id = Some(new_id.to_string());
        s.sync_states.clear();
        s.last_backup = None;
        Ok(())
    }

    async fn record_backup(&self, at: DateTime<Utc>) -> Result<()> {
        self.state().last_backup = Some(at);
        Ok(())
    }

    async fn last_backup(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self.state().last_backup)
    }
}

#[async_trait]
impl DocumentStore for MemoryStorage {
    async fn document_exists(&self, team: &Team, doc_id: DocumentId) -> Result<bool> {
        Ok(self.state().documents.contains_key(&key(team, doc_id)))
    }

    async fn teams_holding(&self, doc_id: DocumentId) -> Result<Vec<Team>> {
        let s = self.state();
        let mut teams: Vec<String> = s
            .documents
            .keys()
            .chain(s.purged.keys())
            .filter(|(_, id)| *id == doc_id)
            .map(|(team, _)| team.clone())
            .collect();
        teams.sort();
        teams.dedup();
        Ok(teams.into_iter().map(Team::from).collect())
    }

    async fn load_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
    ) -> Result<Option<StoredDocument>> {
        let s = self.state();
        Ok(s.documents.get(&key(team, doc_id)).map(|d| StoredDocument {
            team: team.clone(),
            snapshot: d.snapshot.clone(),
            changes: d.changes.iter().map(|(_, c)| c.clone()).collect(),
            seq: d.seq,
        }))
    }

    async fn commit_upload(&self, u: &Upload<'_>) -> Result<Committed> {
        let mut s = self.state();
        let k = key(u.team, u.doc_id);
        if s.purged.contains_key(&k) {
            return Err(StorageError::Purged);
        }
        let created = !s.documents.contains_key(&k);
        let stored = u.stored(created);
        let next = s.seq + 1;
        if stored != Stored::Nothing {
            // The projection is out of date from this commit on: a new mark
            // starts at the commit's cursor value (as SQLite's).
            s.projection_dirty
                .entry(k.clone())
                .and_modify(|g| *g += 1)
                .or_insert(next);
        }
        let doc = s.documents.entry(k).or_default();
        let previous_seq = doc.seq;
        match stored {
            Stored::Snapshot(snap) => {
                doc.snapshot = Some(snap.to_vec());
                doc.changes.clear();
                doc.compacted_through = next;
            }
            Stored::Append(data) => doc.changes.push((next, data.to_vec())),
            Stored::Nothing => {}
        }
        let took = stored != Stored::Nothing;
        if took {
            doc.seq = next;
            doc.last_device = Some(u.uploader.to_string());
        }
        let committed = Committed {
            seq: doc.seq,
            previous_seq,
            change_count: i64::try_from(doc.changes.len()).unwrap_or(i64::MAX),
        };
        if took {
            s.seq = next;
        }
        for record in u.audit {
            s.append(record);
        }
        s.write();
        Ok(committed)
    }

    async fn compact(
        &self,
        team: &Team,
        doc_id: DocumentId,
        snapshot: &[u8],
        through: i64,
    ) -> Result<bool> {
        let mut s = self.state();
        let Some(doc) = s.documents.get_mut(&key(team, doc_id)) else {
            return Ok(false);
        };
        if doc.compacted_through > through {
            return Ok(false);
        }
        doc.snapshot = Some(snapshot.to_vec());
        doc.compacted_through = through;
        doc.changes.retain(|(seq, _)| *seq > through);
        s.write();
        Ok(true)
    }

    async fn changed_since(
        &self,
        team: &Team,
        since: i64,
        uploader: &str,
    ) -> Result<(i64, Vec<(DocumentId, i64)>)> {
        let s = self.state();
        let mut changed: Vec<(i64, DocumentId, &Doc)> = s
            .documents
            .iter()
            .filter(|((t, _), d)| t == team && d.seq > since)
            .map(|((_, id), d)| (d.seq, *id, d))
            .collect();
        changed.sort_by_key(|(seq, _, _)| *seq);
        let cursor = changed.last().map_or(since, |(seq, _, _)| since.max(*seq));
        let ids = changed
            .into_iter()
            .filter(|(_, _, d)| d.last_device.as_deref() != Some(uploader))
            .map(|(seq, id, _)| (id, seq))
            .collect();
        Ok((cursor, ids))
    }

    async fn purge_document(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut s = self.state();
        if !s.documents.contains_key(&key(team, doc_id)) {
            return Ok(false);
        }
        s.purge(team, doc_id, reason, (now, now), by);
        Ok(true)
    }

    async fn ensure_purged(
        &self,
        team: &Team,
        doc_id: DocumentId,
        reason: &str,
        purged_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut s = self.state();
        if s.purged.contains_key(&key(team, doc_id)) {
            return Ok(false);
        }
        let worker = crate::erasure_ledger::REPLAY_WORKER;
        s.purge(team, doc_id, reason, (purged_at, now), worker);
        Ok(true)
    }

    async fn is_purged(&self, team: &Team, doc_id: DocumentId) -> Result<bool> {
        Ok(self.state().purged.contains_key(&key(team, doc_id)))
    }

    async fn purged(&self, team: &Team) -> Result<Vec<Purged>> {
        let s = self.state();
        let mut all: Vec<Purged> = s
            .purged
            .iter()
            .filter(|((t, _), _)| t == team)
            .map(|((_, id), (_, at))| Purged {
                id: id.to_string(),
                purged_at: at.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.purged_at.cmp(&b.purged_at));
        Ok(all)
    }

    async fn document_ids(&self) -> Result<Vec<(DocumentId, Team)>> {
        let s = self.state();
        // By the id's text, as SQLite orders them.
        let mut ids: Vec<(String, DocumentId, String)> = s
            .documents
            .keys()
            .map(|(team, id)| (id.to_string(), *id, team.clone()))
            .collect();
        ids.sort();
        Ok(ids
            .into_iter()
            .map(|(_, id, team)| (id, Team::from(team)))
            .collect())
    }

    async fn record_refusals(&self, refusals: &[Refusal]) -> Result<()> {
        let mut s = self.state();
        let mut added = false;
        for r in refusals {
            let existing = s.refused.iter_mut().find(|x| {
                x.document_id == r.doc_id && x.device_id == r.device_id && x.reason == r.reason
            });
            match existing {
                Some(x) => {
                    x.count += r.count;
                    x.last_at = r.last_at.clone();
                    x.team = r.team.clone();
                }
                None => {
                    added = true;
                    s.refused.push(RefusedDocument {
                        document_id: r.doc_id.clone(),
                        team: r.team.clone(),
                        device_id: r.device_id.clone(),
                        reason: r.reason.clone(),
                        count: r.count,
                        first_at: r.first_at.clone(),
                        last_at: r.last_at.clone(),
                    });
                    let at = DateTime::parse_from_rfc3339(&r.first_at)
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_else(|_| Utc::now());
                    let mut record = AuditRecord::new(r.kind.action(), at)
                        .device(&r.device_id)
                        .worker(&r.worker);
                    record.document_id = Some(r.doc_id.clone());
                    s.append(&record);
                }
            }
        }
        if added {
            s.refused.sort_by(|a, b| b.last_at.cmp(&a.last_at));
            s.refused
                .truncate(usize::try_from(MAX_ROWS).unwrap_or(usize::MAX));
        }
        s.write();
        Ok(())
    }

    /// One process holds it: there is no other writer to watch.
    async fn watch_documents(&self) -> Result<Option<crate::storage::DocumentEvents>> {
        Ok(None)
    }

    async fn refused_documents(&self, team: Option<&Team>) -> Result<Vec<RefusedDocument>> {
        let s = self.state();
        let mut rows: Vec<RefusedDocument> = s
            .refused
            .iter()
            .filter(|r| team.is_none_or(|t| r.team == *t))
            .cloned()
            .collect();
        rows.sort_by(|a, b| {
            b.last_at
                .cmp(&a.last_at)
                .then_with(|| a.document_id.cmp(&b.document_id))
        });
        Ok(rows)
    }
}
