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

impl From<tokio_postgres::Error> for StorageError {
    /// By SQLSTATE; the text is the server's message and code only, never
    /// its detail (which can quote the values of a row).
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState as S;
        if let Some(db) = e.as_db_error() {
            let text = format!("{} ({})", db.message(), db.code().code());
            let code = db.code();
            return if *code == S::DISK_FULL || *code == S::IO_ERROR {
                StorageError::Disk(text)
            } else if *code == S::T_R_SERIALIZATION_FAILURE
                || *code == S::T_R_DEADLOCK_DETECTED
                || *code == S::UNIQUE_VIOLATION
                || *code == S::LOCK_NOT_AVAILABLE
            {
                StorageError::Conflict(text)
            } else if *code == S::DATA_CORRUPTED || *code == S::INDEX_CORRUPTED {
                StorageError::Corrupt(text)
            } else if code.code().starts_with("08")
                || code.code().starts_with("28")
                || *code == S::INVALID_CATALOG_NAME
                || *code == S::ADMIN_SHUTDOWN
                || *code == S::CRASH_SHUTDOWN
                || *code == S::CANNOT_CONNECT_NOW
                || *code == S::TOO_MANY_CONNECTIONS
                || *code == S::READ_ONLY_SQL_TRANSACTION
            {
                StorageError::Unavailable(text)
            } else {
                StorageError::Other(text)
            };
        }
        let text = match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
        let cause = std::error::Error::source(&e);
        let io = cause.is_some_and(|c| c.is::<std::io::Error>());
        let wrong_type = cause.is_some_and(|c| {
            c.is::<tokio_postgres::types::WrongType>() || c.is::<tokio_postgres::types::WasNull>()
        });
        let shown = e.to_string();
        if wrong_type || shown.starts_with("error deserializing column") {
            StorageError::Corrupt(text)
        } else if e.is_closed()
            || io
            || [
                "error connecting",
                "error communicating",
                "error performing TLS",
                "authentication error",
                "timeout",
            ]
            .iter()
            .any(|p| shown.starts_with(p))
        {
            StorageError::Unavailable(text)
        } else {
            StorageError::Other(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError as P;
        match e {
            P::Backend(e) => e.into(),
            P::Timeout(_) | P::Closed => StorageError::Unavailable(e.to_string()),
            other => StorageError::Other(other.to_string()),
        }
    }
}
