//! The core's error type. Variants are what a caller (the bindings, the CLI)
//! acts on; the detail of a storage or document failure is in the message.

/// Everything the core can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller passed something unusable; nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },

    /// The named record does not exist on this device.
    #[error("{what} {id} not found on this device")]
    NotFound { what: &'static str, id: String },

    /// The database key does not open this device's database.
    #[error(
        "the database key does not open this device store (wrong key, or not a Linkbook database)"
    )]
    WrongKey,

    /// A document was written by a newer Linkbook than this one.
    #[error(
        "document {document} has schema version {found}; this Linkbook reads up to {supported}: update the app"
    )]
    UnsupportedSchema {
        document: String,
        found: u64,
        supported: u64,
    },

    /// Bytes offered as a Linkbook document or change are not one.
    #[error("not a Linkbook document: {0}")]
    InvalidDocument(String),

    /// SQLite failed; what was being written was rolled back.
    #[error("device storage failed: {0}")]
    Storage(#[from] rusqlite::Error),

    /// Automerge refused the bytes or the operation.
    #[error("document error: {0}")]
    Document(#[from] automerge::AutomergeError),

    /// The relay could not be reached, or the connection failed; all progress
    /// made before it is kept, and syncing again resumes.
    #[error("network: {0}")]
    Network(String),

    /// The relay does not accept this device's credentials (not enrolled, or
    /// the enrolment code was refused).
    #[error("not authorised: {0}")]
    Unauthorized(String),

    /// This device was revoked by the office: it must wipe its local data.
    #[error("this device has been revoked by the office; its local data must be wiped")]
    Revoked,

    /// This device has not synced for longer than its team's offline lease
    /// allows: its records are locked until it syncs with the relay.
    #[error(
        "this device has not synced for more than {days} days: sync with the office to unlock it"
    )]
    Locked { days: i64 },

    /// Reading or writing a file (export, import) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        Error::NotFound {
            what,
            id: id.to_string(),
        }
    }
}

/// Automerge panicked on bytes from outside (see
/// [`crate::protocol::catch_automerge_panic`]): they are not a document.
impl From<crate::protocol::AutomergePanicked> for Error {
    fn from(e: crate::protocol::AutomergePanicked) -> Self {
        Error::InvalidDocument(e.to_string())
    }
}
