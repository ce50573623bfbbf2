//! Why a storage operation failed.

use std::sync::Arc;

use kasbah_audit::EntryError;

use crate::audit::log as audit;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot encode audit entry: {0}")]
    Entry(#[from] EntryError),
    #[error(transparent)]
    Audit(#[from] audit::StoreError),
    #[error("appending to the audit log: {0}")]
    Append(#[from] audit::AppendError),
    /// The batch this write was part of could not commit; nothing of it
    /// was written.
    #[error("database write failed: {0}")]
    Batch(Arc<str>),
    #[error("the database writer has stopped")]
    Closed,
}

impl DbError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::Sql(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::ConstraintViolation)
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// The error of a write whose batch failed before it could answer.
pub(crate) fn abandoned() -> DbError {
    DbError::Batch(Arc::from(
        "the write was abandoned when its batch failed (see the server log)",
    ))
}
