//! Error kinds, and the one place that decides whether an error is worth retrying.

use crate::settings::{
    ES_API_KEY, ES_CA_FILE, ES_INDEX, ES_INDEX_PREFIX, ES_PASSWORD, ES_SCHEMA_FILE, ES_URL, ES_USERNAME, ETL_DEAD_LETTER_MAX_RATIO, ETL_STATE_FILE,
    ETL_TIMESTAMP_COLUMN, PG_CA_FILE, PG_DSN, PG_PASSWORD, PG_SCHEMA,
};
use std::path::PathBuf;

use tokio_postgres::error::SqlState;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a failed operation was waiting for: named in the logs while we back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Postgres,
    Elasticsearch,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Postgres => "postgres",
            Service::Elasticsearch => "elasticsearch",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed. The message names the variable and what is expected.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The definition file is malformed or does not fit the schema or the index mapping. The
    /// message names the file, the line and the fix.
    #[error("definition: {0}")]
    Definition(String),

    #[error("postgres: {context}: {}", causes(.source))]
    Postgres {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// Postgres is not set up for what was asked (logical replication: wal_level, REPLICATION,
    /// replica identity, publication, slot). The message says what to change.
    #[error("postgres setup: {0}")]
    SourceSetup(String),

    /// The source tables do not look like the catalog we know how to read.
    #[error("postgres schema: {0}")]
    SourceSchema(String),

    #[error("elasticsearch: {context}: {}", causes(.source))]
    ElasticsearchTransport {
        context: &'static str,
        #[source]
        source: reqwest::Error,
    },

    #[error("elasticsearch answered {status} to {context}: {body}")]
    ElasticsearchStatus { context: &'static str, status: u16, body: String },

    /// Items of a bulk request kept failing with retryable statuses (429, 5xx).
    #[error("elasticsearch kept rejecting {count} documents with retryable statuses (last: {last_reason})")]
    BulkRetriesExhausted { count: usize, last_reason: String },

    /// Most documents of recent bulk requests were refused for good: the index definition does
    /// not fit the documents, and dead-lettering them all would lose the catalog.
    #[error("elasticsearch refused {rejected} of the last {sent} documents for good (first reason: {reason}); stopped without saving progress or dead-lettering them")]
    SystematicRejection { rejected: usize, sent: usize, reason: String },

    #[error("elasticsearch index '{index}' exists with a different mapping ({difference}); to rebuild it with the new mapping while search keeps the old one, run `pg2es reindex` with the new index schema, then start `pg2es run` with it; or delete the index, or point {ES_INDEX} at a new name")]
    MappingConflict { index: String, difference: String },

    /// The index's mapping `_meta` records that another source (database, schema, document)
    /// keeps it: writing would overwrite that deployment's documents and reconcile them away.
    #[error("elasticsearch index '{index}' is kept from {holder}, not from {ours}: another deployment (or document) writes it. Give this one indexes of its own with {ES_INDEX_PREFIX} (or {ES_INDEX} for the first document), or delete the index to load it again from this database. The same data after a restore or an upgrade onto another server: `pg2es reindex` builds a new index from this database while search keeps this one (clearing the record with PUT {index}/_mapping {{\"_meta\": {{}}}} is only for the same server: another one's lower WAL positions make every write look older than the index's)")]
    IndexClaimed { index: String, holder: String, ours: String },

    /// `ES_URL` leads to a search engine (or a server) pg2es does not work with.
    #[error("{0}")]
    UnsupportedEngine(String),

    /// A position delta that does not fit the saved state (it would move progress back).
    #[error("state file {path}: {source}")]
    Position {
        path: PathBuf,
        #[source]
        source: crate::position::PositionError,
    },

    /// An answer that cannot be read: not JSON, or not the shape asked for. Retried like an
    /// outage (a proxy's error page, a node restarting); the log shows each attempt.
    #[error("elasticsearch: unreadable answer to {context}: {reason}")]
    Unreadable { context: &'static str, reason: String },

    /// A document could not be encoded as JSON (a bug, not bad configuration).
    #[error("cannot encode {0}")]
    Encode(String),

    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },

    #[error("another pg2es instance is running with state file lock {path} (pid {holder}); stop it first or use another {ETL_STATE_FILE}")]
    AlreadyRunning { path: PathBuf, holder: String },

    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A command that would not be safe (or would do nothing useful) in the state it found: the
    /// message says why, and what to do instead.
    /// Another instance leads the document now (its lease expired or was taken over): this
    /// one writes nothing more for it and stands by.
    #[error("lost the lease of {key}: {why}")]
    LeaseLost { key: String, why: String },
    /// `PG2ES_STATE_STORE=postgres`: another instance leads the document (exit 3, as a second
    /// `run` of one state file).
    #[error("instance {holder} leads {key} (pg2es.leases): {what} only while no instance leads it; stop the runs first (`pg2es status` names the leader)")]
    Led { key: String, holder: String, what: &'static str },
    #[error("refused: {0}")]
    Refused(String),

    /// SIGINT/SIGTERM came before the work was done.
    #[error("stopped by SIGINT/SIGTERM before the pass was complete; progress up to the last stored batch is kept")]
    Shutdown,
}

/// The retry decision for an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient: wait for this service to come back, with backoff.
    WaitFor(Service),
    /// Retrying cannot help: the operator has to change something.
    GiveUp,
}

impl Error {
    pub fn postgres(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Postgres { context, source }
    }

    /// For connecting to Postgres. tokio-postgres reports a setting it lacks (no password when
    /// the server asks for one) only when it connects; that is a configuration error (exit 2),
    /// not an outage to wait out.
    pub fn postgres_connect(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| {
            // tokio-postgres exposes no error kind: "invalid configuration" is its Kind::Config,
            // and the reason is the cause.
            if source.to_string() != "invalid configuration" {
                return Error::Postgres { context, source };
            }
            let why = std::error::Error::source(&source).map(|c| c.to_string()).unwrap_or_default();
            if why == "password missing" {
                return Error::Config(format!(
                    "postgres asks for a password and none is set: set {PG_PASSWORD} (or {PG_PASSWORD}_FILE, PGPASSWORD), or put it in {PG_DSN}"
                ));
            }
            Error::Config(format!("{PG_DSN}: {why}"))
        }
    }

    pub fn es_transport(context: &'static str) -> impl FnOnce(reqwest::Error) -> Error {
        move |source| Error::ElasticsearchTransport { context, source }
    }

    /// Postgres or Elasticsearch refused the credentials, or the rights they carry (never
    /// retried: the same ones are refused again): exit 7. A 403 that is a cluster block (a
    /// read-only index after a full disk) is not about credentials.
    pub fn is_credentials_refused(&self) -> bool {
        match self {
            Error::ElasticsearchStatus { status: 401, .. } => true,
            Error::ElasticsearchStatus { status: 403, body, .. } => !body.contains("cluster_block_exception"),
            Error::Postgres { source, .. } => {
                source.code().is_some_and(|c| *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
            }
            _ => false,
        }
    }

    /// The one place that maps an error to a retry decision.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Postgres { source, .. } => match source.code() {
                // A certificate the client refuses will be refused again: the operator must act.
                None if tls_failure(source) => Retry::GiveUp,
                // No SQLSTATE: the connection could not be made, or broke (I/O, closed).
                None => Retry::WaitFor(Service::Postgres),
                Some(code) if postgres_code_is_transient(code) => Retry::WaitFor(Service::Postgres),
                Some(_) => Retry::GiveUp,
            },
            Error::ElasticsearchTransport { source, .. } => {
                if source.is_builder() || source.is_decode() || source.is_redirect() || tls_failure(source) {
                    Retry::GiveUp
                } else {
                    Retry::WaitFor(Service::Elasticsearch)
                }
            }
            Error::ElasticsearchStatus { status, .. } => {
                if status_is_transient(*status) {
                    Retry::WaitFor(Service::Elasticsearch)
                } else {
                    Retry::GiveUp
                }
            }
            Error::BulkRetriesExhausted { .. } | Error::Unreadable { .. } => Retry::WaitFor(Service::Elasticsearch),
            Error::Config(_)
            | Error::Definition(_)
            | Error::SourceSetup(_)
            | Error::SourceSchema(_)
            | Error::MappingConflict { .. }
            | Error::IndexClaimed { .. }
            | Error::SystematicRejection { .. }
            | Error::UnsupportedEngine(_)
            | Error::State { .. }
            | Error::Refused(_)
            | Error::LeaseLost { .. }
            | Error::Led { .. }
            | Error::Position { .. }
            | Error::Encode(_)
            | Error::AlreadyRunning { .. }
            | Error::Io { .. }
            | Error::Shutdown => Retry::GiveUp,
        }
    }

    /// A hint for the operator, shown next to fatal errors.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Postgres { source, .. } if tls_failure(source) => Some(tls_hint(source, Service::Postgres)),
            Error::Postgres { source, .. } => match source.code() {
                Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                    Some(format!("check the user and password in {PG_DSN} / {PG_PASSWORD}"))
                }
                Some(c) if *c == SqlState::INVALID_CATALOG_NAME => Some(format!("the database in {PG_DSN} does not exist")),
                Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_COLUMN => {
                    Some(format!("a table or column pg2es reads is not there (renamed or dropped by a migration?): restore it, or set {PG_SCHEMA}, {ETL_TIMESTAMP_COLUMN} or the definition to what the tables have, then start pg2es again; it checks the definition against the schema at start"))
                }
                _ => None,
            },
            Error::ElasticsearchTransport { source, .. } if tls_failure(source) => Some(tls_hint(source, Service::Elasticsearch)),
            Error::UnsupportedEngine(_) => Some(format!("check {ES_URL}: it must lead to a supported Elasticsearch or OpenSearch (README, 'Engines')")),
            Error::SystematicRejection { .. } => Some(format!("the index mapping does not fit the documents: check each field of the definition (its column and type) against the mapping of the index schema (the definition's `index_schema`, or {ES_SCHEMA_FILE}), and that the index was made from that schema (or delete the index so pg2es creates it from it); {ETL_DEAD_LETTER_MAX_RATIO}=1 dead-letters them instead")),
            Error::ElasticsearchStatus { status: 401 | 403, .. } => {
                Some(format!("check {ES_USERNAME} / {ES_PASSWORD} or {ES_API_KEY}"))
            }
            _ => None,
        }
    }
}

/// An error and its causes on one line: tokio-postgres keeps the useful part (why the handshake
/// or the connection failed) in the source chain.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// True when a rustls error (a refused certificate, a failed handshake) is among the causes.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    rustls_error(e).is_some()
}

/// What is wrong with the server's certificate, and what to do, for the service's settings.
fn tls_hint(e: &(dyn std::error::Error + 'static), service: Service) -> String {
    use rustls::CertificateError as Cert;
    let certificate = match rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(c)) => Some(c),
        _ => None,
    };
    match (certificate, service) {
        // webpki's error is not re-exported by rustls: only its name tells it apart.
        (Some(Cert::Other(other)), Service::Postgres) if other.0.to_string() == "CaUsedAsEndEntity" => {
            format!("the Postgres server presents a CA certificate (self-signed, CA:TRUE) as its own certificate, which TLS refuses: issue a server certificate signed by that CA for the server's host name, and give the CA as {PG_CA_FILE}")
        }
        (Some(Cert::Other(other)), Service::Elasticsearch) if other.0.to_string() == "CaUsedAsEndEntity" => {
            format!("Elasticsearch presents a CA certificate (self-signed, CA:TRUE) as its own certificate, which TLS refuses: issue a server certificate signed by that CA for the host in {ES_URL}, and give the CA as {ES_CA_FILE}")
        }
        (Some(Cert::NotValidForName | Cert::NotValidForNameContext { .. }), Service::Postgres) => {
            format!("the Postgres server's certificate does not carry the host name in {PG_DSN}: connect by a name or address it carries, reissue it with that name, or use sslmode=verify-ca to check the chain only")
        }
        (Some(Cert::NotValidForName | Cert::NotValidForNameContext { .. }), Service::Elasticsearch) => {
            format!("Elasticsearch's certificate does not carry the host in {ES_URL}: use a name or address it carries, or reissue it with that name")
        }
        (Some(Cert::Expired | Cert::ExpiredContext { .. } | Cert::NotValidYet | Cert::NotValidYetContext { .. }), _) => {
            "the server's certificate is expired or not yet valid: renew it (or check this machine's clock)".to_string()
        }
        (_, Service::Postgres) => {
            format!("the Postgres server's TLS certificate was refused: set {PG_CA_FILE} (or sslrootcert in {PG_DSN}) to the CA that signed it")
        }
        (_, Service::Elasticsearch) => format!("Elasticsearch's TLS certificate was refused: set {ES_CA_FILE} to the CA that signed it"),
    }
}

/// The rustls error among the causes, if any.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source()` skips the error it wraps (hyper and tokio-rustls nest rustls's
        // error in two of them): step into the wrapped error instead.
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

fn postgres_code_is_transient(code: &SqlState) -> bool {
    let code = code.code();
    // 08: connection exception; 53: insufficient resources; 57P01-03: shutdown / starting up;
    // 40001 / 40P01: serialization failure / deadlock.
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

/// HTTP statuses worth retrying: throttling and server-side trouble.
pub fn status_is_transient(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages name settings through their declarations (`{ES_INDEX}` in `#[error]` too).
    #[test]
    fn messages_name_the_settings() {
        let e = Error::MappingConflict { index: "movies".into(), difference: "x".into() };
        assert!(e.to_string().ends_with("or point ES_INDEX at a new name"), "{e}");
        let e = Error::AlreadyRunning { path: "s.lock".into(), holder: "1".into() };
        assert!(e.to_string().ends_with("use another ETL_STATE_FILE"), "{e}");
        assert_eq!(
            Error::UnsupportedEngine(String::new()).hint().as_deref(),
            Some("check ES_URL: it must lead to a supported Elasticsearch or OpenSearch (README, 'Engines')")
        );
    }

    #[test]
    fn http_statuses_are_classified() {
        for s in [429, 500, 502, 503, 504] {
            assert!(status_is_transient(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 413] {
            assert!(!status_is_transient(s), "{s}");
        }
        let e = Error::ElasticsearchStatus { context: "bulk", status: 503, body: String::new() };
        assert_eq!(e.retry(), Retry::WaitFor(Service::Elasticsearch));
        let e = Error::ElasticsearchStatus { context: "bulk", status: 401, body: String::new() };
        assert_eq!(e.retry(), Retry::GiveUp);
        assert!(e.hint().is_some());
    }

    /// The certificate problems a user meets each get their own fix, wrapped as hyper and
    /// tokio-rustls wrap them (in an io::Error).
    #[test]
    fn tls_hints_say_what_is_wrong_with_the_certificate() {
        use rustls::{CertificateError as Cert, OtherError};
        #[derive(Debug)]
        struct Webpki;
        impl std::fmt::Display for Webpki {
            // As rustls-webpki displays its Error::CaUsedAsEndEntity.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("CaUsedAsEndEntity")
            }
        }
        impl std::error::Error for Webpki {}
        let wrapped = |c: Cert| std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(c));
        let hint = |c: Cert, s: Service| tls_hint(&wrapped(c), s);

        let ca = || Cert::Other(OtherError(std::sync::Arc::new(Webpki)));
        assert!(hint(ca(), Service::Elasticsearch).contains("CA certificate") && hint(ca(), Service::Elasticsearch).contains("ES_CA_FILE"));
        assert!(hint(ca(), Service::Postgres).contains("CA certificate") && hint(ca(), Service::Postgres).contains("PG_CA_FILE"));
        assert!(hint(Cert::NotValidForName, Service::Postgres).contains("sslmode=verify-ca"));
        assert!(hint(Cert::NotValidForName, Service::Elasticsearch).contains("ES_URL"));
        assert!(hint(Cert::Expired, Service::Postgres).contains("expired"));
        assert!(hint(Cert::UnknownIssuer, Service::Postgres).contains("set PG_CA_FILE"));
        assert!(hint(Cert::UnknownIssuer, Service::Elasticsearch).contains("set ES_CA_FILE"));
        assert!(tls_failure(&wrapped(Cert::UnknownIssuer)));
        assert!(!tls_failure(&std::io::Error::other("refused")));
    }

    #[test]
    fn postgres_codes_are_classified() {
        assert!(postgres_code_is_transient(&SqlState::ADMIN_SHUTDOWN));
        assert!(postgres_code_is_transient(&SqlState::CONNECTION_FAILURE));
        assert!(postgres_code_is_transient(&SqlState::TOO_MANY_CONNECTIONS));
        assert!(!postgres_code_is_transient(&SqlState::INVALID_PASSWORD));
        assert!(!postgres_code_is_transient(&SqlState::UNDEFINED_COLUMN));
    }
}
