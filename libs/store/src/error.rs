use std::io;
use std::path::PathBuf;

use rusqlite::ErrorCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot create the result store directory {path}: {source} (check permissions or pick another path)"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "cannot open the result store at {path}: {source} (check that the file is writable and not held by another program)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "result store {path} has schema version {found} but this build knows only up to {supported}; run a newer assay"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error("result store query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// A message the store refuses to record (empty id, unknown enum value, ...).
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },

    /// A stored value this build cannot read back.
    #[error("cannot decode {what} stored in the result store: {detail}")]
    Decode { what: &'static str, detail: String },

    #[error("result store task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// Whether trying again later may succeed (busy or locked database, I/O trouble, shutdown):
    /// the caller should nak with backoff. Everything else is permanent (dead letter).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::CreateDir { .. } => true,
            Error::Open { source, .. } | Error::Sqlite(source) => sqlite_is_retryable(source),
            Error::Task(err) => err.is_cancelled(),
            Error::SchemaTooNew { .. } | Error::Invalid { .. } | Error::Decode { .. } => false,
        }
    }

    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn decode(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Decode {
            what,
            detail: detail.into(),
        }
    }
}

fn sqlite_is_retryable(err: &rusqlite::Error) -> bool {
    match err {
        rusqlite::Error::SqliteFailure(failure, _) => matches!(
            failure.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                // The file or its directory refuses writes for now (an immutable file, a
                // read-only remount): a store whose job is writing waits for it.
                | ErrorCode::ReadOnly
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: i32) -> Error {
        Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    #[test]
    fn busy_locked_and_io_are_retryable() {
        assert!(failure(rusqlite::ffi::SQLITE_BUSY).is_retryable());
        assert!(failure(rusqlite::ffi::SQLITE_LOCKED).is_retryable());
        assert!(failure(rusqlite::ffi::SQLITE_IOERR).is_retryable());
        assert!(failure(rusqlite::ffi::SQLITE_READONLY).is_retryable());
        assert!(
            Error::CreateDir {
                path: PathBuf::from("/x"),
                source: io::Error::other("boom"),
            }
            .is_retryable()
        );
    }

    #[test]
    fn constraint_and_decoding_are_permanent() {
        assert!(!failure(rusqlite::ffi::SQLITE_CONSTRAINT).is_retryable());
        assert!(!Error::decode("shard state", "42").is_retryable());
        assert!(!Error::invalid("shard status", "empty execution id").is_retryable());
        assert!(
            !Error::Sqlite(rusqlite::Error::InvalidColumnType(
                0,
                "x".into(),
                rusqlite::types::Type::Null
            ))
            .is_retryable()
        );
    }
}
