//! Why the exchange refuses to start (or to start a zone's owner). A leaf: it imports no other
//! module of the service or the zone owner.

use gridex_store::DbError;
use protocol::ZoneId;

/// A refused start.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("storage: {0}")]
    Db(#[from] DbError),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Recovery met a command-log row it cannot parse. The log is the truth: replaying it without
    /// that row would rebuild a different book from the one that acknowledged it, so recovery
    /// refuses and the row must be repaired (or the zone's books given up) by an operator.
    #[error(
        "the command log is corrupt: the row of zone {zone}, command_seq {command_seq} does not parse \
         ({reason}); recovery refuses to rebuild the zone's books without it"
    )]
    UnparsableCommand { zone: ZoneId, command_seq: u64, reason: String },
}
