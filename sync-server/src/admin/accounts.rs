//! Staff accounts of the office console: the one-time set-up link, the
//! password rules, the second factor, signing in. The console and the
//! command line (`linkbook-server admin …`) both call these.
//!
//! Secrets at rest: the set-up token and session ids are 256 random bits
//! stored as SHA-256 (as device tokens, auth.rs: a fast hash suffices for
//! that much entropy); passwords as argon2id PHC strings (the crate's
//! defaults: 19 MiB, two passes); the TOTP seed, which the relay must read
//! to check a code, as bytes in the (on SQLite, encrypted) database.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{AdminError, Result};
use crate::storage::{StaffAccount, StaffRole, Storage};

/// How long a set-up link stays valid by default, in hours.
pub const SETUP_HOURS: i64 = 72;
/// The longest a set-up link may stay valid (7 days).
pub const MAX_SETUP_HOURS: i64 = 24 * 7;
/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 12;
/// The longest password accepted (argon2 takes any length; this bounds the
/// work a form can ask for).
pub const MAX_PASSWORD: usize = 256;
/// The longest account name.
pub const MAX_NAME: usize = 64;
/// TOTP: RFC 6238's defaults, which every authenticator app reads.
pub const TOTP_DIGITS: usize = 6;
pub const TOTP_STEP: u64 = 30;
/// The issuer an authenticator app shows beside the account.
pub const TOTP_ISSUER: &str = "Linkbook";

/// Passwords people pick first; refused whatever their length. Checked
/// case-insensitively, and with digits and punctuation at the ends removed
/// (`Password123!` is `password`).
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "passw0rd",
    "password1",
    "qwerty",
    "qwertyuiop",
    "qwertyuiopasdfghjkl",
    "letmein",
    "welcome",
    "welcometo",
    "iloveyou",
    "admin",
    "administrator",
    "changeme",
    "monkey",
    "dragon",
    "football",
    "baseball",
    "sunshine",
    "princess",
    "superman",
    "trustno",
    "abc",
    "abcdefghijkl",
    "linkbook",
    "linkbookadmin",
    "prison",
    "family",
    "families",
    "charity",
    "secret",
    "master",
    "starwars",
    "whatever",
    "computer",
    "internet",
    "correcthorsebatterystaple",
    "aaaaaaaaaaaa",
    "zaq",
    "asdfghjkl",
    "asdfasdfasdf",
    "qazwsx",
    "login",
    "default",
    "summer",
    "winter",
    "autumn",
    "spring",
    "january",
    "december",
    "liverpool",
    "arsenal",
    "chelsea",
    "manchester",
    "london",
];

/// A new account and the token of its one-time set-up link.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub account: StaffAccount,
    /// Shown once: `/console/setup/<token>`.
    pub setup_token: String,
}

impl NewAccount {
    /// The set-up link on the relay at `server` (its public `https://`
    /// address) or, without one, the path to append to it.
    pub fn link(&self, server: Option<&str>) -> String {
        setup_link(&self.setup_token, server)
    }
}

/// The set-up link for `token`.
pub fn setup_link(token: &str, server: Option<&str>) -> String {
    let path = format!("/console/setup/{token}");
    match server {
        Some(s) => format!("{}{path}", s.trim_end_matches('/')),
        None => path,
    }
}

/// Who the audit names for a console account's actions.
pub fn actor(name: &str) -> String {
    format!("staff:{name}")
}

/// 256 random bits as 64 hex digits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(AdminError::InvalidInput {
            field: "name",
            reason: format!("must be 1 to {MAX_NAME} characters"),
        });
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(AdminError::InvalidInput {
            field: "name",
            reason: "must not hold control characters".into(),
        });
    }
    Ok(name.to_string())
}

fn setup_validity(hours: i64) -> Result<Duration> {
    if !(1..=MAX_SETUP_HOURS).contains(&hours) {
        return Err(AdminError::InvalidInput {
            field: "expires_hours",
            reason: format!("must be 1 to {MAX_SETUP_HOURS}"),
        });
    }
    Ok(Duration::hours(hours))
}

/// Adds a console account for `name` with `role`; it can do nothing until
/// its set-up link is used.
pub async fn add_account(
    storage: &dyn Storage,
    name: &str,
    role: StaffRole,
    expires_hours: i64,
    now: DateTime<Utc>,
) -> Result<NewAccount> {
    let name = check_name(name)?;
    let valid_for = setup_validity(expires_hours)?;
    if storage.account_by_name(&name).await?.is_some() {
        return Err(AdminError::Refused(format!(
            "an account named {name} exists: reset it instead"
        )));
    }
    let setup_token = random_token();
    let account = StaffAccount {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name,
        role,
        password_hash: None,
        totp_secret: None,
        totp_last_step: None,
        setup_hash: Some(token_hash(&setup_token)),
        setup_expires_at: Some(now + valid_for),
        created_at: now,
        disabled_at: None,
    };
    storage.add_account(&account).await?;
    Ok(NewAccount {
        account,
        setup_token,
    })
}

/// A forgotten password or a lost phone: the account gets a new set-up
/// link; its password, second factor and sessions go.
pub async fn reset_account(
    storage: &dyn Storage,
    name: &str,
    expires_hours: i64,
    now: DateTime<Utc>,
) -> Result<NewAccount> {
    let valid_for = setup_validity(expires_hours)?;
    let mut account = account_named(storage, name).await?;
    if account.disabled_at.is_some() {
        return Err(AdminError::Refused(format!(
            "the account {} is disabled",
            account.name
        )));
    }
    let setup_token = random_token();
    let hash = token_hash(&setup_token);
    if !storage
        .reset_account(&account.id, &hash, now + valid_for)
        .await?
    {
        return Err(not_found(name));
    }
    account.password_hash = None;
    account.totp_secret = None;
    account.setup_hash = Some(hash);
    account.setup_expires_at = Some(now + valid_for);
    Ok(NewAccount {
        account,
        setup_token,
    })
}

/// Disables an account: it cannot sign in, its sessions end at once.
pub async fn disable_account(storage: &dyn Storage, name: &str, now: DateTime<Utc>) -> Result<()> {
    let account = account_named(storage, name).await?;
    if !storage.disable_account(&account.id, now).await? {
        return Err(not_found(name));
    }
    Ok(())
}

/// Every account, disabled ones too.
pub async fn list_accounts(storage: &dyn Storage) -> Result<Vec<StaffAccount>> {
    Ok(storage.accounts().await?)
}

async fn account_named(storage: &dyn Storage, name: &str) -> Result<StaffAccount> {
    storage
        .account_by_name(name.trim())
        .await?
        .ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> AdminError {
    AdminError::NotFound {
        what: "account",
        id: name.trim().to_string(),
        team: None,
    }
}

/// Why a password is refused, in words for the form, or `None`.
pub fn password_problem(name: &str, password: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD {
        return Some(format!("Use at least {MIN_PASSWORD} characters."));
    }
    if password.len() > MAX_PASSWORD {
        return Some(format!("Use at most {MAX_PASSWORD} bytes."));
    }
    let lower = password.to_lowercase();
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    let distinct: std::collections::BTreeSet<char> = lower.chars().collect();
    if distinct.len() < 4 {
        return Some("Use more different characters.".into());
    }
    if COMMON_PASSWORDS.contains(&core) || COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Some("That password is one of the most common: choose another.".into());
    }
    let name = name.trim().to_lowercase();
    if name.chars().count() >= 3 && lower.contains(&name) {
        return Some("Do not use your account name in the password.".into());
    }
    None
}

/// The TOTP seed of a set-up link: derived from its token, so the QR code
/// shown with the form and the code checked when it is posted agree
/// without storing anything before the account is set up. Only the
/// holder of the link can compute it, and the link works once.
pub fn setup_totp_secret(setup_token: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"linkbook console totp seed\0");
    h.update(setup_token.as_bytes());
    h.finalize()[..20].to_vec()
}

fn totp(secret: &[u8], name: &str) -> Option<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(TOTP_DIGITS as u8)
        .with_skew(1)
        .with_step_duration(TOTP_STEP)
        .with_secret(secret.to_vec())
        .with_issuer(Some(TOTP_ISSUER))
        .with_account_name(name.replace(':', " "))
        .build()
        .ok()
}

/// The `otpauth://` URL an authenticator app scans, and the seed in base32
/// for typing it in.
pub fn totp_enrolment(secret: &[u8], name: &str) -> Option<(String, String)> {
    let t = totp(secret, name)?;
    let url = t.to_url().ok()?;
    Some((url, totp_rs::Secret::from(secret.to_vec()).to_base32()))
}

/// The code an authenticator app shows at `at` (for tests and tools).
pub fn totp_code(secret: &[u8], name: &str, at: DateTime<Utc>) -> Option<String> {
    let at = u64::try_from(at.timestamp()).ok()?;
    Some(totp(secret, name)?.generate(at).to_string())
}

/// The time step `code` is valid for at `now` (the current one, or one
/// either side for clock drift), compared in constant time.
pub fn totp_step(secret: &[u8], name: &str, code: &str, now: DateTime<Utc>) -> Option<i64> {
    let code = code.trim().replace(' ', "");
    if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, name)?;
    let now = u64::try_from(now.timestamp()).ok()?;
    let step = now / TOTP_STEP;
    let mut found = None;
    for s in [step.saturating_sub(1), step, step + 1] {
        let expected = t.generate(s * TOTP_STEP).to_string();
        if constant_time_eq(expected.as_bytes(), code.as_bytes()) {
            found = Some(s as i64);
        }
    }
    found
}

/// Compares without stopping at the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// At most this many argon2 computations at once (each takes 19 MiB and
/// tens of milliseconds): sign-ins from many addresses queue rather than
/// exhaust the relay's memory or its blocking threads.
const ARGON2_AT_ONCE: usize = 2;

fn argon2_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ARGON2_AT_ONCE);
    &PERMITS
}

/// Runs `work` (an argon2 computation) off the async threads, at most
/// [`ARGON2_AT_ONCE`] at a time.
async fn argon2_bounded<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let _permit = argon2_permits().acquire().await.ok()?;
    tokio::task::spawn_blocking(work).await.ok()
}

fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| AdminError::Refused(format!("could not make a salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AdminError::Refused(format!("could not hash the password: {e}")))
}

/// Why a set-up or sign-in failed, for the form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The set-up link is unknown, used or expired.
    #[error("This set-up link is not valid: it may have expired or been used already.")]
    SetupLinkInvalid,
    #[error("{0}")]
    Password(String),
    #[error("The two passwords differ.")]
    PasswordsDiffer,
    #[error("That code is not right: enter the 6 digits your authenticator app shows now.")]
    TotpWrong,
    /// Wrong name, password or code: deliberately not saying which.
    #[error("The name, password or code is not right.")]
    Credentials,
}

/// The account a live set-up token belongs to.
pub async fn setup_account(
    storage: &dyn Storage,
    setup_token: &str,
    now: DateTime<Utc>,
) -> Result<Option<StaffAccount>> {
    if setup_token.len() != 64 || !setup_token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    Ok(storage
        .account_by_setup(&token_hash(setup_token), now)
        .await?)
}

/// Uses a set-up link: checks the password rules and (for roles that need
/// it) the first TOTP code, then stores the argon2id hash and the seed and
/// consumes the link, in one storage step.
pub async fn complete_setup(
    storage: &dyn Storage,
    setup_token: &str,
    password: &str,
    repeated: &str,
    totp_code: Option<&str>,
    now: DateTime<Utc>,
) -> Result<std::result::Result<StaffAccount, SignInError>> {
    let Some(account) = setup_account(storage, setup_token, now).await? else {
        return Ok(Err(SignInError::SetupLinkInvalid));
    };
    if let Some(problem) = password_problem(&account.name, password) {
        return Ok(Err(SignInError::Password(problem)));
    }
    if password != repeated {
        return Ok(Err(SignInError::PasswordsDiffer));
    }
    let secret = account
        .role
        .needs_totp()
        .then(|| setup_totp_secret(setup_token));
    let mut step = None;
    if let Some(secret) = &secret {
        step = totp_code.and_then(|c| totp_step(secret, &account.name, c, now));
        if step.is_none() {
            return Ok(Err(SignInError::TotpWrong));
        }
    }
    let owned = password.to_string();
    let hash = argon2_bounded(move || hash_password(&owned))
        .await
        .ok_or_else(|| AdminError::Refused("the password could not be hashed".into()))??;
    if !storage
        .complete_setup(
            &account.id,
            &token_hash(setup_token),
            &hash,
            secret.as_deref(),
            now,
        )
        .await?
    {
        return Ok(Err(SignInError::SetupLinkInvalid));
    }
    // The code typed at set-up is spent: it cannot sign in as well.
    if let Some(step) = step {
        storage.accept_totp_step(&account.id, step).await?;
    }
    Ok(storage
        .account(&account.id)
        .await?
        .ok_or(SignInError::SetupLinkInvalid))
}

/// A hash of no one's password, verified when the name is unknown so that
/// a wrong name takes as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

/// Checks a sign-in: name, password and, where the role needs one, a TOTP
/// code not used before. Every failure reads the same.
pub async fn sign_in(
    storage: &dyn Storage,
    name: &str,
    password: &str,
    totp_code: &str,
    now: DateTime<Utc>,
) -> Result<std::result::Result<StaffAccount, SignInError>> {
    let account = if name.trim().is_empty() || name.len() > 4 * MAX_NAME {
        None
    } else {
        storage.account_by_name(name.trim()).await?
    };
    let stored = account
        .as_ref()
        .filter(|a| a.disabled_at.is_none())
        .and_then(|a| a.password_hash.clone());
    let password_ok = password.len() <= MAX_PASSWORD && {
        let phc = stored.clone().unwrap_or_else(|| decoy_hash().to_string());
        let password = password.to_string();
        argon2_bounded(move || {
            PasswordHash::new(&phc).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    };
    let (Some(account), true, Some(_)) = (account, password_ok, stored) else {
        return Ok(Err(SignInError::Credentials));
    };
    if account.role.needs_totp() {
        let Some(secret) = &account.totp_secret else {
            return Ok(Err(SignInError::Credentials));
        };
        let Some(step) = totp_step(secret, &account.name, totp_code, now) else {
            return Ok(Err(SignInError::Credentials));
        };
        if !storage.accept_totp_step(&account.id, step).await? {
            return Ok(Err(SignInError::Credentials));
        }
    }
    Ok(Ok(account))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        assert!(password_problem("amira", "short").is_some());
        assert!(password_problem("amira", "Password123!").is_some());
        assert!(password_problem("amira", "!!Password!!").is_some());
        assert!(password_problem("amira", "aaaaaaaaaaaaaa").is_some());
        assert!(password_problem("amira", "amira-is-my-name").is_some());
        assert!(password_problem("amira", "correct horse battery staple").is_none());
        assert!(password_problem("amira", &"x".repeat(MAX_PASSWORD + 1)).is_some());
    }

    #[test]
    fn a_totp_code_is_accepted_for_its_own_step_and_its_neighbours_only() {
        let secret = setup_totp_secret(&"ab".repeat(32));
        let t = totp(&secret, "amira").unwrap();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let step = 1_800_000_000 / TOTP_STEP as i64;
        let code = t.generate(1_800_000_000).to_string();
        assert_eq!(totp_step(&secret, "amira", &code, now), Some(step));
        let later = now + Duration::seconds(TOTP_STEP as i64);
        assert_eq!(totp_step(&secret, "amira", &code, later), Some(step));
        let much_later = now + Duration::seconds(3 * TOTP_STEP as i64);
        assert_eq!(totp_step(&secret, "amira", &code, much_later), None);
        assert_eq!(totp_step(&secret, "amira", "12345", now), None);
        assert_eq!(totp_step(&secret, "amira", "abcdef", now), None);
    }
}
