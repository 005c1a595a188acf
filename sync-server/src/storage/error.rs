//! A backend-neutral storage error: what the relay acts on, not which
//! database said it.

/// Why a storage operation failed. Whatever the variant, the operation
/// wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The disk is full or not writable (a full disk, an I/O error, a
    /// read-only file or directory): the operator has to act.
    #[error("the relay's disk is full or not writable: {0}")]
    Disk(String),
    /// Another writer got there first (a busy database, a unique key, a
    /// serialization failure): trying again may succeed.
    #[error("a concurrent write conflicted: {0}")]
    Conflict(String),
    /// The database cannot be reached (a closed pool, a lost connection).
    #[error("the relay database is unavailable: {0}")]
    Unavailable(String),
    /// Stored data is not what the schema says (a damaged file, a value of
    /// the wrong type).
    #[error("the relay database holds damaged data: {0}")]
    Corrupt(String),
    /// The office purged this document: nothing more is stored for it.
    #[error("the office purged this document")]
    Purged,
    /// An enrolment code unknown, used or expired.
    #[error("enrolment refused: {0}")]
    EnrolmentRefused(&'static str),
    /// Anything else the backend reported.
    #[error("storage: {0}")]
    Other(String),
}

impl StorageError {
    /// The disk is full or not writable: nothing was committed, and the
    /// operator has to act.
    pub fn is_disk_problem(&self) -> bool {
        matches!(self, StorageError::Disk(_))
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let text = e.to_string();
        match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                C::DiskFull | C::SystemIoFailure | C::ReadOnly | C::CannotOpen => {
                    StorageError::Disk(text)
                }
                C::DatabaseBusy | C::DatabaseLocked | C::ConstraintViolation => {
                    StorageError::Conflict(text)
                }
                C::DatabaseCorrupt | C::NotADatabase => StorageError::Corrupt(text),
                _ => StorageError::Other(text),
            },
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => StorageError::Corrupt(text),
            _ => StorageError::Other(text),
        }
    }
}
