//! The relay's errors. Clients see a short, generic message; the detail goes
//! to the log (never a token, code or record content).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(crate::storage::StorageError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("enrolment refused: {0}")]
    EnrolmentRefused(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("the device token is missing or not valid")]
    Unauthorized,
    #[error("this device has been revoked: wipe its local data")]
    Revoked,
    /// This client address failed to authenticate too often (ratelimit.rs).
    #[error(
        "too many failed enrolment or token attempts from this address: try again in {} s",
        retry_after_secs(*retry_after)
    )]
    TooManyAuthFailures { retry_after: std::time::Duration },
    #[error("io: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
    /// A device uploaded more reads today than audit_upload.rs allows.
    #[error("this device logged too many case-file reads today: try again tomorrow")]
    AuditQuota,
    /// One upload carried more reads than `--audit-rows-per-upload`.
    #[error("at most {max} reads per upload; send the rest in another")]
    TooManyReads { max: usize },
    #[error("the office purged this document")]
    Purged,
    /// SQLCipher could not decrypt the relay database with the key given
    /// (at_rest.rs); nothing was written.
    #[error(
        "the relay database could not be opened with this key: give the key it was made with (relay.key in the data directory, LINKBOOK_SERVER_KEY or --key-file), restored from your backup"
    )]
    WrongKey,
    /// The relay database's key is missing, malformed or given twice.
    #[error("the relay database key: {0}")]
    Key(String),
    /// `backup` or `restore` asked of a relay on PostgreSQL: the database's
    /// own tools do that (README, "Backups and restore").
    #[error(
        "the relay's data is in PostgreSQL (--database-url): back it up with pg_dump (or continuous WAL archiving for point-in-time recovery) and restore it with pg_restore; after a restore run `linkbook-server after-restore` before devices connect"
    )]
    BackupOnPostgres,
    /// `backup FILE` where FILE exists, without `--force`.
    #[error("{} exists: give --force to replace it, or another file name", path.display())]
    BackupExists { path: std::path::PathBuf },
    /// A file given to `restore` that is not a relay database this key
    /// opens; nothing was replaced.
    #[error(
        "{} is not a Linkbook relay backup this key opens ({reason}); nothing was changed",
        path.display()
    )]
    NotARelayBackup {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl From<crate::storage::StorageError> for Error {
    fn from(e: crate::storage::StorageError) -> Self {
        use crate::storage::StorageError as S;
        match e {
            S::Purged => Error::Purged,
            S::EnrolmentRefused(why) => Error::EnrolmentRefused(why),
            other => Error::Storage(other),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whole seconds to wait, rounded up (`Retry-After` has no fractions).
fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Error {
    /// The relay's disk is full or not writable (a full disk, a write that
    /// failed, a read-only file or directory). Nothing was committed; the
    /// operator has to act.
    pub fn is_disk_problem(&self) -> bool {
        matches!(self, Error::Storage(e) if e.is_disk_problem())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            Error::EnrolmentRefused(why) => (
                StatusCode::FORBIDDEN,
                "enrolment_refused",
                (*why).to_string(),
            ),
            Error::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", self.to_string()),
            Error::Revoked => (StatusCode::FORBIDDEN, "revoked", self.to_string()),
            Error::AuditQuota => (
                StatusCode::TOO_MANY_REQUESTS,
                "audit_quota",
                self.to_string(),
            ),
            // `max_reads` lets the device send smaller uploads.
            Error::TooManyReads { max } => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    axum::Json(serde_json::json!({
                        "error": "too_many_reads",
                        "message": self.to_string(),
                        "max_reads": max,
                    })),
                )
                    .into_response();
            }
            Error::TooManyAuthFailures { retry_after } => {
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    axum::Json(serde_json::json!({
                        "error": "too_many_auth_failures",
                        "message": self.to_string(),
                    })),
                )
                    .into_response();
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(retry_after_secs(*retry_after)),
                );
                return response;
            }
            other => {
                tracing::error!(error = %other, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the relay could not complete the request".into(),
                )
            }
        };
        (
            status,
            axum::Json(serde_json::json!({ "error": code, "message": message })),
        )
            .into_response()
    }
}
