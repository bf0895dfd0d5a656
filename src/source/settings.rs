//! What a source needs to know, and nothing more: the configuration builds it
//! (`Config::source_settings`), a test builds it by hand.

use std::path::PathBuf;
use std::time::Duration;

/// The source's own settings.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub pg: tokio_postgres::Config,
    /// libpq's `sslmode` from `PG_DSN`.
    pub ssl_mode: PgSslMode,
    /// The CA to verify the server against; `None`: the public web roots.
    pub ca_file: Option<PathBuf>,
    /// The schema of the source tables.
    pub schema: String,
    /// Rows per page and records per batch.
    pub batch_size: usize,
    /// Who reads the change log: the index, which has its own position there.
    pub consumer: String,
    pub horizon: HorizonPolicy,
}

/// libpq's `sslmode`, with what each means in pg2es (README, "TLS to Postgres").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain connection. Also what pg2es does without `sslmode` (libpq would try `prefer`).
    Disable,
    /// As `Prefer`: tokio-postgres cannot start plain and retry with TLS.
    Allow,
    /// TLS when the server offers it, certificate not verified; plain otherwise.
    Prefer,
    /// TLS, certificate chain and host name verified (stricter than libpq, which verifies
    /// nothing here without a root certificate): what pg2es has always done with `require`.
    Require,
    /// TLS, certificate chain verified against the CA given, host name not checked.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl PgSslMode {
    pub const ALL: [(&'static str, PgSslMode); 6] = [
        ("disable", PgSslMode::Disable),
        ("allow", PgSslMode::Allow),
        ("prefer", PgSslMode::Prefer),
        ("require", PgSslMode::Require),
        ("verify-ca", PgSslMode::VerifyCa),
        ("verify-full", PgSslMode::VerifyFull),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, m)| *m == self).map_or("disable", |(name, _)| name)
    }

    /// Whether the server's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// The run's one slot, read for every document.
    pub slot: String,
    /// The slot this document had to itself before one slot served a run (`pg2es_<index>`, or
    /// `<PG_REPLICATION_SLOT>_<name>` for all but the first): a state read through it keeps
    /// reading it until it reaches `slot`, then it is dropped.
    pub previous_slot: String,
    /// The run's one publication (every document's tables).
    pub publication: String,
    pub max_retained_bytes: u64,
    /// PG_REPLICATION_SLOT was set (not derived from the index name).
    pub slot_explicit: bool,
    /// The slot is created temporary: Postgres drops it when the source's session ends (a
    /// `pg2es reindex`, whose rebuild reads a slot of its own; a lost session starts it over).
    pub temporary: bool,
}

/// How far behind "now" a watermark must stay so that no transaction still open can commit rows
/// older than it (see [`super::Horizon`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HorizonPolicy {
    pub clock_skew: Duration,
    pub max_transaction: Duration,
}
