//! Enrolment codes and device tokens. Both are random, shown once, and stored
//! only as SHA-256 hashes; a token is 256 bits, so a fast hash is enough.
//!
//! Guessing is bounded: a code is 60 random bits, expires (`device enrol
//! --expires-hours`) and works once; a token is 256 random bits; an address
//! that fails too often is locked out (`ratelimit.rs`).
//!
//! Timing: no secret is compared byte by byte here. A presented code or
//! token is hashed and looked up by its SHA-256 in SQLite's index, whose
//! comparison does stop at the first differing byte; what that can leak is
//! how many leading bytes of the *hash* of a guess match a stored hash, which
//! says nothing about the secret (finding a guess whose hash shares more
//! bytes is a preimage search), so a constant-time compare of the hashes
//! would protect nothing.

use axum::http::HeaderMap;
use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::{CodeGrant, Device, DeviceId, Storage, Team};

/// Crockford's base32: no I, L, O, U to misread when typed from paper.
const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_LEN: usize = 12;

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Upper-cases and drops separators, so `abcd-efgh-jkmn` is the code printed.
pub fn normalise_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// A new one-time enrolment code for `team`/`worker`, valid for `valid_for`.
/// Returns the code as printed (`XXXX-XXXX-XXXX`).
pub async fn new_enrolment_code(
    storage: &dyn Storage,
    team: &str,
    worker: &str,
    valid_for: Duration,
    now: DateTime<Utc>,
) -> Result<String> {
    if team.trim().is_empty() || worker.trim().is_empty() {
        return Err(Error::BadRequest(
            "team and worker must not be empty".into(),
        ));
    }
    let raw: String = (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rand::random_range(0..CODE_ALPHABET.len())] as char)
        .collect();
    let grant = CodeGrant {
        team: Team::from(team.trim()),
        worker: worker.trim().to_string(),
        expires_at: now + valid_for,
    };
    storage.add_enrolment_code(&hash(&raw), &grant, now).await?;
    Ok(format!("{}-{}-{}", &raw[0..4], &raw[4..8], &raw[8..12]))
}

/// What a device receives when it enrols: the only time the token is shown.
pub use linkbook_core::protocol::dto::Enrolled;

pub async fn enrol(
    storage: &dyn Storage,
    code: &str,
    device_name: &str,
    now: DateTime<Utc>,
) -> Result<Enrolled> {
    let code = normalise_code(code);
    if code.len() != CODE_LEN {
        return Err(Error::EnrolmentRefused("unknown enrolment code"));
    }
    let device_name = device_name.trim();
    if device_name.is_empty() || device_name.len() > 200 {
        return Err(Error::BadRequest(
            "device_name must be 1 to 200 characters".into(),
        ));
    }
    let device_id = uuid::Uuid::new_v4().hyphenated().to_string();
    let token = hex::encode(rand::random::<[u8; 32]>());
    let device = storage
        .redeem_enrolment_code(
            &hash(&code),
            &DeviceId::from(device_id),
            device_name,
            &hash(&token),
            now,
        )
        .await?;
    let directory_id = storage.team_directory_id(&device.team, now).await?;
    Ok(Enrolled {
        device_id: device.id.into_string(),
        token,
        team: device.team.into_string(),
        worker: device.worker,
        directory_id,
    })
}

/// The bearer token of a request: `Authorization: Bearer` or, for browsers
/// that cannot set headers on a WebSocket, `?token=`.
pub fn token_from(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(t) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_string());
    }
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

/// The device a token belongs to, refusing unknown and revoked ones.
pub async fn authenticate(storage: &dyn Storage, token: Option<&str>) -> Result<Device> {
    let token = token.filter(|t| !t.is_empty()).ok_or(Error::Unauthorized)?;
    let device = storage
        .device_by_token(&hash(token))
        .await?
        .ok_or(Error::Unauthorized)?;
    if device.revoked_at.is_some() {
        return Err(Error::Revoked);
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SqliteStorage;
    use crate::storage::prelude::*;

    #[tokio::test]
    async fn a_code_enrols_once_and_expires() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let storage = SqliteStorage::open(&dir.path().join("relay.db"))?;
        let now = Utc::now();
        let code = new_enrolment_code(&storage, "north", "Asha", Duration::hours(1), now).await?;
        let enrolled = enrol(&storage, &code.to_lowercase(), "Asha's tablet", now).await?;
        assert_eq!(enrolled.team, "north");
        assert_eq!(enrolled.token.len(), 64);
        assert!(matches!(
            enrol(&storage, &code, "again", now).await,
            Err(Error::EnrolmentRefused("enrolment code already used"))
        ));
        let late = new_enrolment_code(&storage, "north", "Ben", Duration::minutes(5), now).await?;
        assert!(matches!(
            enrol(&storage, &late, "tablet", now + Duration::minutes(6)).await,
            Err(Error::EnrolmentRefused("enrolment code expired"))
        ));
        let device = authenticate(&storage, Some(&enrolled.token)).await?;
        assert_eq!(device.id, enrolled.device_id);
        assert!(matches!(
            authenticate(&storage, Some("nope")).await,
            Err(Error::Unauthorized)
        ));
        storage.revoke_device(&device.id, None, now).await?;
        assert!(matches!(
            authenticate(&storage, Some(&enrolled.token)).await,
            Err(Error::Revoked)
        ));
        Ok(())
    }
}
