//! The one error the apps see. Each variant is something an app does
//! differently; the message says the detail.

use linkbook_core as core;

/// Why a Linkbook call failed. Nothing was written when a call fails.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum LinkbookError {
    /// The app passed something unusable (empty note, malformed id, date of
    /// birth in the future, ...): show `reason` beside `field`.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: String, reason: String },

    /// The family, note, member or family day is not on this device.
    #[error("{what} {id} not found on this device")]
    NotFound { what: String, id: String },

    /// The database key does not open this store: the key was lost or
    /// replaced (the app re-enrols on a fresh store).
    #[error(
        "the database key does not open this device store (wrong key, or not a Linkbook database)"
    )]
    WrongKey,

    /// The relay refused this device's enrolment code or credentials, or the
    /// device is not enrolled yet: ask the office for a new code.
    #[error("not authorised: {reason}")]
    Unauthorized { reason: String },

    /// The office revoked this device: the app must wipe its local data.
    #[error("this device has been revoked by the office; its local data must be wiped")]
    Revoked,

    /// The device has not synced for longer than its team's offline lease
    /// allows: records are locked until it syncs with the office.
    #[error("locked: no sync for more than {days} days; sync to unlock")]
    Locked { days: i64 },

    /// The relay could not be reached or the connection failed. Everything
    /// received before is kept; sync again later.
    #[error("network: {reason}")]
    Network { reason: String },

    /// The device store could not be read or written (disk full, file not
    /// writable, a document from a newer Linkbook: `reason` says which).
    #[error("storage: {reason}")]
    Storage { reason: String },
}

impl From<core::Error> for LinkbookError {
    fn from(e: core::Error) -> Self {
        match e {
            core::Error::InvalidInput { field, reason } => LinkbookError::InvalidInput {
                field: field.to_string(),
                reason,
            },
            core::Error::NotFound { what, id } => LinkbookError::NotFound {
                what: what.to_string(),
                id,
            },
            core::Error::WrongKey => LinkbookError::WrongKey,
            core::Error::Unauthorized(reason) => LinkbookError::Unauthorized { reason },
            core::Error::Revoked => LinkbookError::Revoked,
            core::Error::Locked { days } => LinkbookError::Locked { days },
            core::Error::Network(reason) => LinkbookError::Network { reason },
            e @ (core::Error::UnsupportedSchema { .. }
            | core::Error::InvalidDocument(_)
            | core::Error::Storage(_)
            | core::Error::Document(_)
            | core::Error::Io { .. }) => LinkbookError::Storage {
                reason: e.to_string(),
            },
        }
    }
}

pub(crate) type Result<T, E = LinkbookError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> LinkbookError {
    LinkbookError::InvalidInput {
        field: field.to_string(),
        reason: reason.into(),
    }
}
