//! [`ConsoleStore`] in memory: the same rules as SQLite's, each operation
//! under the one lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use linkbook_core::DocumentId;

use super::{MemoryStorage, key};
use crate::storage::{
    ConsoleStore, DirtyProjection, ProjectionKind, Result, StaffAccount, StaffSession,
    StorageError, Team,
};

#[async_trait]
impl ConsoleStore for MemoryStorage {
    async fn add_account(&self, account: &StaffAccount) -> Result<()> {
        let mut s = self.state();
        if s.accounts.values().any(|a| a.name == account.name) {
            return Err(StorageError::Conflict("the account name is taken".into()));
        }
        if s.accounts.contains_key(&account.id) {
            return Err(StorageError::Conflict("the account id exists".into()));
        }
        if let Some(hash) = &account.setup_hash
            && s.accounts
                .values()
                .any(|a| a.setup_hash.as_ref() == Some(hash))
        {
            return Err(StorageError::Conflict("the set-up token exists".into()));
        }
        s.accounts.insert(account.id.clone(), account.clone());
        s.write();
        Ok(())
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<StaffAccount>> {
        let s = self.state();
        Ok(s.accounts.values().find(|a| a.name == name).cloned())
    }

    async fn account(&self, id: &str) -> Result<Option<StaffAccount>> {
        Ok(self.state().accounts.get(id).cloned())
    }

    async fn account_by_setup(
        &self,
        setup_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<StaffAccount>> {
        let s = self.state();
        Ok(s.accounts
            .values()
            .find(|a| setup_usable(a, setup_hash, now))
            .cloned())
    }

    async fn complete_setup(
        &self,
        id: &str,
        setup_hash: &[u8],
        password_hash: &str,
        totp_secret: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut s = self.state();
        let Some(a) = s.accounts.get_mut(id) else {
            return Ok(false);
        };
        if !setup_usable(a, setup_hash, now) {
            return Ok(false);
        }
        a.password_hash = Some(password_hash.to_string());
        a.totp_secret = totp_secret.map(<[u8]>::to_vec);
        a.totp_last_step = None;
        a.setup_hash = None;
        a.setup_expires_at = None;
        s.write();
        Ok(true)
    }

    async fn reset_account(
        &self,
        id: &str,
        setup_hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut s = self.state();
        if !s.accounts.contains_key(id) {
            return Ok(false);
        }
        if s.accounts
            .values()
            .any(|a| a.id != id && a.setup_hash.as_deref() == Some(setup_hash))
        {
            return Err(StorageError::Conflict("the set-up token exists".into()));
        }
        if let Some(a) = s.accounts.get_mut(id) {
            a.password_hash = None;
            a.totp_secret = None;
            a.totp_last_step = None;
            a.setup_hash = Some(setup_hash.to_vec());
            a.setup_expires_at = Some(expires_at);
        }
        s.sessions.retain(|_, session| session.account_id != id);
        s.write();
        Ok(true)
    }

    async fn disable_account(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let mut s = self.state();
        let Some(a) = s.accounts.get_mut(id) else {
            return Ok(false);
        };
        a.disabled_at.get_or_insert(now);
        s.sessions.retain(|_, session| session.account_id != id);
        s.write();
        Ok(true)
    }

    async fn accounts(&self) -> Result<Vec<StaffAccount>> {
        let s = self.state();
        let mut all: Vec<StaffAccount> = s.accounts.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn accept_totp_step(&self, id: &str, step: i64) -> Result<bool> {
        let mut s = self.state();
        let Some(a) = s.accounts.get_mut(id) else {
            return Ok(false);
        };
        if a.totp_last_step.is_some_and(|last| last >= step) {
            return Ok(false);
        }
        a.totp_last_step = Some(step);
        s.write();
        Ok(true)
    }

    async fn create_session(&self, session_hash: &[u8], session: &StaffSession) -> Result<()> {
        let mut s = self.state();
        let usable = s
            .accounts
            .get(&session.account_id)
            .is_some_and(|a| a.disabled_at.is_none() && a.password_hash.is_some());
        if !usable {
            return Err(StorageError::Conflict(
                "the account is disabled, reset or not set up".into(),
            ));
        }
        if s.sessions.contains_key(session_hash) {
            return Err(StorageError::Conflict("the session exists".into()));
        }
        s.sessions.insert(session_hash.to_vec(), session.clone());
        s.write();
        Ok(())
    }

    async fn session(&self, session_hash: &[u8]) -> Result<Option<(StaffSession, StaffAccount)>> {
        let s = self.state();
        let Some(session) = s.sessions.get(session_hash) else {
            return Ok(None);
        };
        Ok(s.accounts
            .get(&session.account_id)
            .filter(|a| a.disabled_at.is_none())
            .map(|a| (session.clone(), a.clone())))
    }

    async fn touch_session(&self, session_hash: &[u8], now: DateTime<Utc>) -> Result<()> {
        let mut s = self.state();
        if let Some(session) = s.sessions.get_mut(session_hash) {
            session.last_seen_at = now;
        }
        s.write();
        Ok(())
    }

    async fn end_session(&self, session_hash: &[u8]) -> Result<()> {
        let mut s = self.state();
        s.sessions.remove(session_hash);
        s.write();
        Ok(())
    }

    async fn end_stale_sessions(
        &self,
        idle_before: DateTime<Utc>,
        created_before: DateTime<Utc>,
    ) -> Result<u64> {
        let mut s = self.state();
        let before = s.sessions.len();
        s.sessions.retain(|_, session| {
            !(session.last_seen_at < idle_before || session.created_at < created_before)
        });
        let ended = before - s.sessions.len();
        s.write();
        Ok(u64::try_from(ended).unwrap_or(u64::MAX))
    }

    async fn dirty_projections(&self, limit: usize) -> Result<Vec<DirtyProjection>> {
        let s = self.state();
        Ok(s.projection_dirty
            .iter()
            .take(limit)
            .map(|((team, id), generation)| DirtyProjection {
                team: Team::from(team.as_str()),
                id: *id,
                generation: *generation,
            })
            .collect())
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
        let mut s = self.state();
        let k = key(team, id);
        // A purged document (or one not stored) keeps nothing here.
        if s.purged.contains_key(&k) || !s.documents.contains_key(&k) {
            s.projections.remove(&k);
            s.projection_dirty.remove(&k);
            s.write();
            return Ok(());
        }
        match kind {
            Some(kind) => {
                s.projections
                    .insert(k.clone(), (kind, body.to_string(), now));
            }
            None => {
                s.projections.remove(&k);
            }
        }
        if s.projection_dirty.get(&k) == Some(&generation) {
            s.projection_dirty.remove(&k);
        }
        s.write();
        Ok(())
    }

    async fn projections(
        &self,
        team: &Team,
        kind: ProjectionKind,
    ) -> Result<Vec<(DocumentId, String)>> {
        let s = self.state();
        let mut rows: Vec<(String, DocumentId, String)> = s
            .projections
            .iter()
            .filter(|((t, _), (k, _, _))| t == team && *k == kind)
            .map(|((_, id), (_, body, _))| (id.to_string(), *id, body.clone()))
            .collect();
        // By the id's text, as SQLite orders them.
        rows.sort();
        Ok(rows.into_iter().map(|(_, id, body)| (id, body)).collect())
    }

    async fn projected_teams(&self) -> Result<Vec<Team>> {
        let s = self.state();
        let mut teams: Vec<&String> = s.projections.keys().map(|(t, _)| t).collect();
        teams.dedup();
        Ok(teams.into_iter().map(|t| Team::from(t.as_str())).collect())
    }
}

/// Whether `a`'s set-up token is `setup_hash`, unexpired at `now`, on an
/// account that is not disabled.
fn setup_usable(a: &StaffAccount, setup_hash: &[u8], now: DateTime<Utc>) -> bool {
    a.disabled_at.is_none()
        && a.setup_hash.as_deref() == Some(setup_hash)
        && a.setup_expires_at.is_some_and(|e| e > now)
}
