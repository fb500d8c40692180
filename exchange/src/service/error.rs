//! Why the exchange refuses to start (or to start a zone's owner). A leaf: it imports no other
//! module of the service or the zone owner.

use crate::db::DbError;

/// A refused start.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("storage: {0}")]
    Db(#[from] DbError),
    #[error("invalid configuration: {0}")]
    Config(String),
}
