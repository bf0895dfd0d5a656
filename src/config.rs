//! Typed configuration from environment variables and an optional TOML file.
//!
//! Precedence: built-in default < config file < environment. Each setting is declared once, in
//! [`SETTINGS`]: its name, older names, default, accepted values and help; parsing, the error
//! messages, `print-config`, `pg2es settings` and the README table all read that declaration.
//! `Config::from_sources` only parses and checks values; it never connects anywhere. Secrets are
//! wrapped in [`Secret`] so that neither `Debug` nor `print-config` can show them.

mod dsn;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::catalog::{is_identifier, is_index_name, INDEX_NAME_RULE};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::sink::{EsAuth, SinkSettings};
use crate::source::{replication_name, HorizonPolicy, PgSslMode, ReplicationSettings, SourceSettings};

/// One setting, declared once.
pub struct Setting {
    /// The environment variable; in lower case, the key in the config file.
    pub name: &'static str,
    /// Older names that stand for it when it is not set (the course's Python ETL).
    pub aliases: &'static [&'static str],
    /// The value when it is not set; empty for none.
    pub default: &'static str,
    /// What it means when it has no value (`print-config`, and the README's default column).
    pub unset: &'static str,
    pub accepts: Accepts,
    /// Markdown, as in the README table.
    pub help: &'static str,
    /// Never shown; may instead be read from the file named by `<NAME>_FILE`.
    pub secret: bool,
}

/// The values a setting accepts; the error message of a wrong one says this.
pub enum Accepts {
    /// Any text, described for the message when a required one is empty.
    Text(&'static str),
    /// Text that the function accepts, described for the message.
    Checked(fn(&str) -> bool, &'static str),
    /// A whole number from the first to the second, in the unit.
    Whole(u64, u64, &'static str),
    /// A number from the first to the second, fractions allowed, in the unit.
    Decimal(f64, f64, &'static str),
    OneOf(&'static [&'static str]),
}

impl Setting {
    const NONE: Setting = Setting { name: "", aliases: &[], default: "", unset: "", accepts: Accepts::Text("a value"), help: "", secret: false };

    /// What a wrong value is told it should be.
    fn expected(&self) -> String {
        let of = |unit: &str| if unit.is_empty() { String::new() } else { format!(" of {unit}") };
        match &self.accepts {
            Accepts::Text(what) | Accepts::Checked(_, what) => what.to_string(),
            Accepts::Whole(min, max, unit) => format!("a whole number{} from {min} to {max}", of(unit)),
            Accepts::Decimal(min, max, unit) => format!("a number{} from {min} to {max}", of(unit)),
            Accepts::OneOf(words) => words.join(" or "),
        }
    }

    /// The help, with the other names that stand for the setting.
    fn full_help(&self) -> String {
        let mut help = self.help.to_string();
        for alias in self.aliases {
            help.push_str(&format!("; `{alias}` stands for it"));
        }
        if self.secret {
            help.push_str(&format!("; or read from the file named by `{}_FILE`", self.name));
        }
        help
    }

    /// The default as the README and `pg2es settings` say it.
    fn default_text(&self) -> String {
        if self.default.is_empty() {
            self.unset.to_string()
        } else {
            format!("`{}`", self.default)
        }
    }
}

/// Declares each setting as a constant named after its variable, and [`SETTINGS`] in this order.
macro_rules! settings {
    ($($name:ident { $($field:ident: $value:expr),* $(,)? })*) => {
        $(pub const $name: Setting = Setting { name: name::$name, $($field: $value,)* ..Setting::NONE };)*
        /// The names alone, for `match`.
        mod name {
            $(pub const $name: &str = stringify!($name);)*
        }
        /// Every setting, in the order of the README table and `print-config`.
        pub const SETTINGS: &[&Setting] = &[$(&$name),*];
    };
}

// Names that Postgres or Elasticsearch define are checked by the rule of the module that uses
// them (the catalog's `is_index_name` and `is_identifier`, the source's `replication_name`), so
// a setting and a definition can never be held to different rules.
settings! {
    PG_DSN { default: "postgres://app@127.0.0.1:5432/movies", accepts: Accepts::Text("a connection string"), help: "Postgres connection string (URL or `key=value` form)" }
    PG_PASSWORD { aliases: &["DB_PASSWORD"], secret: true, help: "Postgres password; overrides the one in `PG_DSN` (and `PGPASSWORD`, see below)" }
    PG_CA_FILE { unset: "none: public web roots", help: "PEM CA that signs the Postgres server certificate, for `sslmode=require`, `verify-ca` or `verify-full` in `PG_DSN` (see \"TLS to Postgres\"); wins over `sslrootcert` in `PG_DSN`" }
    PG_SCHEMA { default: "content", accepts: Accepts::Checked(is_identifier, "a plain identifier such as content (letters, digits, _)"), help: "schema of the source tables" }
    ES_URL { aliases: &["ES_HOST"], default: "http://127.0.0.1:9200", accepts: Accepts::Checked(|v| node_urls(v).is_some(), "an http:// or https:// URL such as http://127.0.0.1:9200, or the URLs of several nodes of one cluster, comma-separated"), help: "Elasticsearch or OpenSearch base URL; or the nodes of one cluster, comma-separated (`http://es1:9200,http://es2:9200`): each request goes to the node that answered last, and one that fails is skipped for 10 s while the request goes to the next at once" }
    PG2ES_DEFINITION { unset: "built-in cinema definition", help: "the definition file: which documents to keep, each in its own index (see \"Documents from a definition\" and `docs/definition.md`); unset, the cinema definition built into the binary (`catalog/cinema.toml`: `movies`, `genres`, `persons`)" }
    PG2ES_DOCUMENTS { unset: "all", help: "the documents of the definition to keep, comma-separated, such as `movies`" }
    ES_INDEX { default: "movies", accepts: Accepts::Checked(is_index_name, INDEX_NAME_RULE), help: "the index of the definition's first document (`movies` in the cinema definition), in full: `ES_INDEX_PREFIX` is not added to it. Unset, the first document's index is its definition's, with the prefix" }
    ES_INDEX_PREFIX { unset: "none", accepts: Accepts::Checked(|v| is_index_name(v) && v.len() <= 200, "empty, or the start of an index name such as staging_ (at most 200 bytes): lower case, without spaces or any of \\/*?\"<>|,#: and not starting with -, _ or +"), help: "put before every document's index name the definition gives (`staging_` makes `staging_movies`, `staging_genres`, `staging_persons`), and so before the default slot names (`pg2es_staging_genres`); not before an `ES_INDEX` that is set. Two deployments of one definition on one cluster (staging and production, two tenants) each need their own (see \"Two deployments on one cluster\"). Empty, every name is the definition's, as before the setting existed" }
    ES_SCHEMA_FILE { unset: "the definition's `index_schema`", help: "index definition (body of `PUT /<index>`) of the first document, used when the index is absent; unset, the definition's `index_schema` (for movies, `catalog/movies.es.json`, a copy of the catalog's `es_schema.json`)" }
    ES_CA_FILE { unset: "none: public web roots", help: "PEM CA certificates for an `https` `ES_URL` (added to the public web roots)" }
    ES_USERNAME { help: "Elasticsearch basic-auth user" }
    ES_PASSWORD { secret: true, help: "Elasticsearch basic-auth password (with `ES_USERNAME`)" }
    ES_API_KEY { secret: true, help: "API key (base64 `id:key`), instead of basic auth" }
    ES_TIMEOUT_SEC { default: "30", accepts: Accepts::Whole(1, 3_600, "seconds"), help: "time limit of one request to Elasticsearch; a bulk request gets 1 s more per 256 KiB of body. A request that times out is retried like an outage" }
    ES_BULK_MAX_BYTES { default: "8388608", accepts: Accepts::Whole(1024, 1 << 30, "bytes"), help: "largest bulk request body, in bytes" }
    ES_BULK_CONCURRENCY { default: "2", accepts: Accepts::Whole(1, 64, "requests"), help: "bulk requests in flight at once; progress is still saved in order" }
    ETL_BATCH_SIZE { aliases: &["BATCH_SIZE"], default: "500", accepts: Accepts::Whole(1, 100_000, ""), help: "rows read per query and documents per bulk request" }
    PG2ES_SOURCE { default: "polling", accepts: Accepts::OneOf(&["polling", "replication"]), help: "how changes are found: `polling` (timestamps, no privileges needed) or `replication` (logical replication: a publication and a `pgoutput` slot; see \"Change capture through logical replication\")" }
    PG_REPLICATION_SLOT { unset: "`pg2es_<index>`", accepts: Accepts::Checked(|v| replication_name(v) == v, "a name of lower-case letters, digits and _ (at most 63)"), help: "the one `pgoutput` replication slot of `PG2ES_SOURCE=replication`, read for every document of the run, created when missing; unset, `pg2es_` and the first document's index (releases before one slot per run gave the other documents `pg2es_<index>`, or `<PG_REPLICATION_SLOT>_<name>`: read until they reach it, then dropped)" }
    PG_PUBLICATION { unset: "`pg2es_<PG_SCHEMA>`", accepts: Accepts::Checked(|v| replication_name(v) == v, "a name of lower-case letters, digits and _ (at most 63)"), help: "the one publication of `PG2ES_SOURCE=replication`, on the tables of every document, created when missing (tables added when pg2es may)" }
    ETL_SLOT_MAX_RETAINED_MB { default: "1024", accepts: Accepts::Whole(1, 1 << 30, "MiB"), help: "with `PG2ES_SOURCE=replication`, a warning when the slot retains more WAL than this" }
    ETL_CYCLE_SEC { default: "10", accepts: Accepts::Decimal(0.1, 86_400.0, "seconds"), help: "pause between two cycles in continuous mode, from `0.1` to `86400` seconds (fractions allowed); `0.2` by default with `PG2ES_SOURCE=replication`" }
    ETL_STATE_FILE { default: "state/pg2es-state.json", accepts: Accepts::Text("a file path"), help: "durable watermarks; `<file>.lock` keeps one instance" }
    ETL_DEAD_LETTER_FILE { default: "state/pg2es-dead-letter.jsonl", accepts: Accepts::Text("a file path"), help: "documents Elasticsearch refused for good (JSON lines: id, index, status, reason, time)" }
    ETL_RECONCILE_SEC { default: "300", accepts: Accepts::Whole(0, 604_800, "seconds"), help: "how often the index's document ids are checked against Postgres's records, and documents of deleted records removed (also after a full load into an index that was not empty); `0`: only after a full load" }
    ETL_DEAD_LETTER_MAX_RATIO { default: "0.5", accepts: Accepts::Decimal(0.0, 1.0, ""), help: "when more than this share of documents is refused for good (over the last 100 sent, counted from 10 on), the mapping is wrong rather than the rows: pg2es stops with exit 1 and a hint, saves no progress and writes none of them to the dead-letter file. `1` turns the check off" }
    ETL_TIMESTAMP_COLUMN { default: "auto", accepts: Accepts::Checked(|v| v == "auto" || is_identifier(v), "auto, or a column name such as updated_at or modified"), help: "change column: `auto` (`updated_at`, then `modified`; link tables fall back to `created_at`, `created`) or a name" }
    ETL_CLOCK_SKEW_MS { default: "1000", accepts: Accepts::Whole(0, 3_600_000, "milliseconds"), help: "how far the clocks that write change timestamps (application servers) may lag Postgres' clock" }
    ETL_MAX_TX_SEC { default: "60", accepts: Accepts::Whole(0, 86_400, "seconds"), help: "longest write transaction expected; used only when pg2es cannot see other sessions' open transactions (grant it `pg_read_all_stats`)" }
    ETL_BACKOFF_INITIAL_MS { default: "200", accepts: Accepts::Whole(1, 60_000, "milliseconds"), help: "first retry delay after a connection loss" }
    ETL_BACKOFF_MAX_SEC { default: "30", accepts: Accepts::Whole(1, 3_600, "seconds"), help: "cap of the retry delay" }
    LOG_FORMAT { default: "text", accepts: Accepts::OneOf(&["text", "json"]), help: "`text` or `json`; the level comes from `RUST_LOG` (default `info`)" }
    PG2ES_STATE_STORE { default: "file", accepts: Accepts::OneOf(&["file", "postgres"]), help: "where each document's state is kept: `file` (`ETL_STATE_FILE`, one `run` per file on one host) or `postgres` (table `pg2es.state` of the source database, keyed by the state file's name; several `run` processes with the same settings share the documents, one leader each, the others standing by: see \"Running in production\")" }
    PG2ES_LEASE_SEC { default: "6", accepts: Accepts::Whole(2, 600, "seconds"), help: "with `PG2ES_STATE_STORE=postgres`, how long a leader's lease lasts unrenewed (renewed every third of it): a standby takes over a paused or cut-off leader after this, a killed one within a second or two" }
    PG2ES_INSTANCE { unset: "`<host>:<pid>`", help: "with `PG2ES_STATE_STORE=postgres`, this process's name in `pg2es.leases` and `pg2es.instances` and in the logs" }
    PG2ES_METRICS_ADDR { unset: "not served", accepts: Accepts::Checked(|v| v.parse::<std::net::SocketAddr>().is_ok(), "an address and port such as 127.0.0.1:9464"), help: "`host:port` where `pg2es run` serves `/metrics` and `/healthz` (for example `127.0.0.1:9464`); unset, nothing is served" }
    PG2ES_HEALTH_MAX_AGE_SEC { default: "120", accepts: Accepts::Whole(1, 604_800, "seconds"), help: "`/healthz` and `pg2es status` fail when a document has stored nothing for longer than this, or has waited for Postgres or Elasticsearch for longer" }
}

/// The nodes of `ES_URL`: each an http(s) URL with a host.
fn node_urls(v: &str) -> Option<Vec<reqwest::Url>> {
    v.split(',').map(|u| reqwest::Url::parse(u.trim()).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())).collect()
}

/// The README's configuration table, from [`SETTINGS`] (a test keeps the README equal to it).
pub fn readme_table() -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for s in SETTINGS {
        out.push_str(&format!("| `{}` | {} | {} |\n", s.name, s.default_text(), s.full_help()));
    }
    out
}

/// What `pg2es settings` prints: each setting's name, default and help, without the markdown.
pub fn settings_table() -> String {
    let mut out = String::new();
    for s in SETTINGS {
        let default = match s.default_text() {
            d if d.is_empty() => "(unset)".to_string(),
            d => d,
        };
        out.push_str(&format!("{:<26} {}\n    {}\n", s.name, default, s.full_help()).replace('`', ""));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the body of `PUT /<index>` comes from when the index is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexDefinition {
    /// The definition's `index_schema` (built into the binary for the cinema).
    Builtin,
    /// The file named by `ES_SCHEMA_FILE`.
    File(PathBuf),
}

impl fmt::Display for IndexDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexDefinition::Builtin => f.write_str("(the definition's index_schema)"),
            IndexDefinition::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Which column tells that a row changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimestampColumn {
    /// Detect per table: `updated_at`, then `modified`; link tables fall back to `created_at`, `created`.
    Auto,
    Named(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub pg: tokio_postgres::Config,
    /// libpq's `sslmode` from `PG_DSN` (taken out before tokio-postgres parses it).
    pub pg_ssl_mode: PgSslMode,
    /// The CA to verify the server against (`PG_CA_FILE`, else `sslrootcert`); `None`: the
    /// public web roots.
    pub pg_ca_file: Option<PathBuf>,
    pub pg_schema: String,
    /// The nodes of `ES_URL`, at least one.
    pub es_urls: Vec<reqwest::Url>,
    pub es_index: String,
    /// ES_INDEX was set: it renames the definition's first index.
    pub es_index_explicit: bool,
    /// ES_INDEX_PREFIX: before every index name the definition gives (not before ES_INDEX).
    pub es_index_prefix: String,
    /// PG2ES_DEFINITION: `None` for the built-in cinema definition.
    pub definition: Option<PathBuf>,
    /// PG2ES_DOCUMENTS: empty for all.
    pub documents: Vec<String>,
    pub es_schema_file: IndexDefinition,
    pub es_auth: EsAuth,
    pub es_ca_file: Option<PathBuf>,
    pub es_timeout: Duration,
    pub bulk_max_bytes: usize,
    pub bulk_concurrency: usize,
    pub dead_letter_max_ratio: f64,
    /// `None`: reconciliation only after a full load.
    pub reconcile_every: Option<Duration>,
    /// `PG2ES_STATE_STORE=postgres`: the state in Postgres, documents led under leases.
    pub state_in_postgres: bool,
    pub lease: Duration,
    pub instance: Option<String>,
    /// Where `/metrics` and `/healthz` are served (`None`: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long a document may store nothing, or wait for a service, and still be healthy.
    pub health_max_age: Duration,
    pub batch_size: usize,
    pub source: SourceKind,
    pub cycle: Duration,
    pub state_file: PathBuf,
    pub dead_letter_file: PathBuf,
    pub timestamp_column: TimestampColumn,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub log_format: LogFormat,
    pub commit_horizon: HorizonPolicy,
    /// What `print-config` shows, line by line.
    shown: Vec<Shown>,
    /// Settings given but not used, each with why: logged as warnings at start.
    pub notices: Vec<String>,
}

/// One line of `print-config`: a setting (or a part of one) as used, and where it came from.
#[derive(Debug, Clone)]
struct Shown {
    label: &'static str,
    value: String,
    origin: String,
}

/// Where changes come from (`PG2ES_SOURCE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Polling,
    Replication(ReplicationSettings),
}

impl Config {
    /// The source's settings (the document's, after [`Config::for_document`]).
    pub fn source_settings(&self) -> SourceSettings {
        SourceSettings {
            pg: self.pg.clone(),
            ssl_mode: self.pg_ssl_mode,
            ca_file: self.pg_ca_file.clone(),
            schema: self.pg_schema.clone(),
            batch_size: self.batch_size,
            consumer: self.es_index.clone(),
            horizon: self.commit_horizon,
        }
    }

    /// The sink's settings (the document's, after [`Config::for_document`]).
    pub fn sink_settings(&self) -> SinkSettings {
        SinkSettings {
            urls: self.es_urls.clone(),
            index: self.es_index.clone(),
            auth: self.es_auth.clone(),
            ca_file: self.es_ca_file.clone(),
            timeout: self.es_timeout,
            max_docs: self.batch_size,
            max_bytes: self.bulk_max_bytes,
            dead_letter_file: self.dead_letter_file.clone(),
            dead_letter_max_ratio: self.dead_letter_max_ratio,
            retry: self.retry_policy(),
        }
    }

    /// `ETL_BACKOFF_INITIAL_MS` and `ETL_BACKOFF_MAX_SEC`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy { initial: self.backoff_initial, cap: self.backoff_max }
    }

    /// What picks the documents, from PG2ES_DEFINITION, PG2ES_DOCUMENTS, ES_INDEX,
    /// ES_SCHEMA_FILE and ETL_TIMESTAMP_COLUMN.
    pub fn selection(&self) -> Result<crate::catalog::Selection> {
        let schema = match &self.es_schema_file {
            IndexDefinition::Builtin => None,
            IndexDefinition::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!(
                        "ES_SCHEMA_FILE='{}': cannot read it ({e}); set ES_SCHEMA_FILE to the index definition JSON, or unset it",
                        path.display()
                    ))
                })?;
                Some((format!("ES_SCHEMA_FILE='{}'", path.display()), text))
            }
        };
        Ok(crate::catalog::Selection {
            definition: self.definition.clone(),
            documents: self.documents.clone(),
            first: crate::catalog::FirstIndex { name: self.es_index_explicit.then(|| self.es_index.clone()), schema },
            timestamps: match &self.timestamp_column {
                TimestampColumn::Auto => None,
                TimestampColumn::Named(c) => Some(c.clone()),
            },
        })
    }

    /// The documents `selection` picks from `source` (the definition, read once), each with its
    /// own settings (index, state file, dead-letter file, slot: [`Config::for_document`]), from
    /// the definition file alone: no connection. Two documents that would share an index are
    /// refused.
    pub fn documents(&self, selection: &crate::catalog::Selection, source: &crate::catalog::Source) -> Result<Vec<DocumentSettings>> {
        let mut docs: Vec<DocumentSettings> = Vec::new();
        // One slot for the run, named after its first document's index (unique per deployment on
        // a cluster, and the first document's slot of old), unless PG_REPLICATION_SLOT names it.
        let mut run_slot = None;
        for (position, name, mut index) in selection.heads(source)? {
            index.name = self.index_name(position, &index.name);
            if !is_index_name(&index.name) {
                return Err(Error::Config(format!(
                    "ES_INDEX_PREFIX: {:?} before the index of document {name} makes {:?}, not an index name (at most 255 bytes); shorten the prefix",
                    self.es_index_prefix, index.name
                )));
            }
            if let Some(other) = docs.iter().find(|d| d.index.name == index.name) {
                return Err(Error::Config(format!(
                    "ES_INDEX={} is also the index of document {} (ES_INDEX_PREFIX and its definition's index): give document {name} another ES_INDEX",
                    index.name, other.name
                )));
            }
            let mut config = self.for_document(position, &name, &index.name);
            if let SourceKind::Replication(r) = &mut config.source {
                r.slot = run_slot.get_or_insert_with(|| if r.slot_explicit { r.slot.clone() } else { r.previous_slot.clone() }).clone();
            }
            docs.push(DocumentSettings { position, name, index, config });
        }
        Ok(docs)
    }

    /// The index of the document at `position` whose definition names `index`: ES_INDEX when set
    /// (the selection already gave it to the first), otherwise ES_INDEX_PREFIX and the name.
    /// With no prefix, every name is what the definition says, as before the prefix existed.
    pub fn index_name(&self, position: usize, index: &str) -> String {
        if position == 0 && self.es_index_explicit {
            index.to_string()
        } else {
            format!("{}{index}", self.es_index_prefix)
        }
    }

    /// The settings of the document at `position` of the definition, kept in `index` (its full
    /// name, [`Config::index_name`]): the first keeps the state file and dead-letter file as
    /// configured (what pg2es used before definitions); each other document gets its own, beside
    /// them and named after it. `previous_slot` is the document's own slot of releases before one
    /// slot served a run ([`Config::documents`] sets the run's).
    pub fn for_document(&self, position: usize, name: &str, index: &str) -> Config {
        let mut c = self.clone();
        c.es_index = index.to_string();
        if position > 0 {
            let beside = |p: &Path| -> PathBuf {
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let ext = p.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
                p.with_file_name(format!("{stem}.{name}{ext}"))
            };
            c.state_file = beside(&self.state_file);
            c.dead_letter_file = beside(&self.dead_letter_file);
            if let SourceKind::Replication(r) = &mut c.source {
                r.previous_slot = if r.slot_explicit { replication_name(&format!("{}_{name}", r.slot)) } else { replication_name(&format!("pg2es_{index}")) };
            }
        } else if let SourceKind::Replication(r) = &mut c.source {
            r.previous_slot = if r.slot_explicit { r.slot.clone() } else { replication_name(&format!("pg2es_{index}")) };
        }
        c
    }
}

/// One selected document of the definition and its own settings ([`Config::documents`]).
#[derive(Debug, Clone)]
pub struct DocumentSettings {
    /// Its place in the definition (the first keeps the settings of old).
    pub position: usize,
    pub name: String,
    /// Its index: the full name (ES_INDEX or ES_INDEX_PREFIX applied) and the schema.
    pub index: crate::catalog::IndexSpec,
    /// The configuration with this document's index, state file, dead-letter file and slot.
    pub config: Config,
}

/// Where a raw value came from, for error messages and `print-config`.
#[derive(Debug, Clone)]
enum Origin {
    Default,
    File(PathBuf),
    Env,
    /// Another variable stands for this one (`ES_HOST`, `DB_PASSWORD`, `PG_PASSWORD_FILE`).
    EnvAlias(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env => f.write_str("environment"),
            Origin::EnvAlias(var) => write!(f, "environment, {var}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Raw {
    value: String,
    origin: Origin,
}

/// Raw values by environment-variable name, before parsing.
#[derive(Debug, Default)]
pub struct Sources {
    values: BTreeMap<&'static str, Raw>,
}

impl Sources {
    /// Defaults, then the file (if any), then the given environment.
    pub fn gather(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Sources> {
        let mut sources = Sources::default();
        for s in SETTINGS.iter().filter(|s| !s.default.is_empty()) {
            sources.values.insert(s.name, Raw { value: s.default.to_string(), origin: Origin::Default });
        }
        if let Some(path) = file {
            sources.read_file(path)?;
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for s in SETTINGS {
            if let Some(raw) = from_env(s, &env)? {
                sources.values.insert(s.name, raw);
            }
        }
        // The parts of the Postgres connection that other tools name: `dsn` weighs them.
        for key in dsn::PG_PARTS.iter().map(|(course, _)| *course).chain(dsn::LIBPQ_VARS) {
            if let Some(v) = env.get(key) {
                sources.values.insert(key, Raw { value: v.clone(), origin: Origin::Env });
            }
        }
        Ok(sources)
    }

    fn read_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| Error::Config(format!("config file {} is not valid TOML: {}", path.display(), e.message())))?;
        for (key, value) in table {
            let Some(s) = SETTINGS.iter().find(|s| s.name.eq_ignore_ascii_case(&key)) else {
                return Err(Error::Config(format!(
                    "config file {}: unknown key '{key}'; known keys are the lower-case names of the environment variables (see `pg2es settings`)",
                    path.display()
                )));
            };
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(Error::Config(format!("config file {}: key '{key}' must be a string or a number, not {}", path.display(), other.type_str())))
                }
            };
            self.values.insert(s.name, Raw { value, origin: Origin::File(path.to_path_buf()) });
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&Raw> {
        self.values.get(name)
    }

    fn is_default(&self, s: &Setting) -> bool {
        matches!(self.get(s.name).map(|r| &r.origin), Some(Origin::Default))
    }

    /// Where the value of `name` came from, for `print-config`.
    fn origin(&self, name: &str) -> String {
        self.get(name).filter(|r| !r.value.trim().is_empty()).map_or_else(|| "unset".to_string(), |r| r.origin.to_string())
    }

    fn describe(&self, name: &str) -> String {
        match self.get(name).map(|r| &r.origin) {
            Some(Origin::File(p)) => format!("{name} (from {})", p.display()),
            Some(Origin::Default) => format!("{name} (default)"),
            _ => name.to_string(),
        }
    }

    fn bad(&self, name: &str, expected: &str) -> Error {
        let shown = match SETTINGS.iter().find(|s| s.name == name) {
            Some(s) if s.secret => "***".to_string(),
            _ => self.get(name).map(|r| r.value.clone()).unwrap_or_default(),
        };
        Error::Config(format!("{}='{shown}': expected {expected}", self.describe(name)))
    }

    /// The value of `name`, trimmed; `None` when unset or empty.
    fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|r| r.value.trim().to_string()).filter(|v| !v.is_empty())
    }

    /// The setting's value if it has one the declaration accepts; `None` when unset or empty.
    fn text(&self, s: &Setting) -> Result<Option<String>> {
        let Some(v) = self.string(s.name) else { return Ok(None) };
        let fits = match &s.accepts {
            Accepts::Text(_) => true,
            Accepts::Checked(check, _) => check(&v),
            Accepts::Whole(min, max, _) => v.parse::<u64>().is_ok_and(|n| (*min..=*max).contains(&n)),
            Accepts::Decimal(min, max, _) => v.parse::<f64>().is_ok_and(|n| (*min..=*max).contains(&n)),
            Accepts::OneOf(words) => words.contains(&v.as_str()),
        };
        if fits {
            Ok(Some(v))
        } else {
            Err(self.bad(s.name, &s.expected()))
        }
    }

    /// A setting that must have a value (an empty one is refused).
    fn required(&self, s: &Setting) -> Result<String> {
        self.text(s)?.ok_or_else(|| self.bad(s.name, &s.expected()))
    }

    /// A `Whole` (as `u64`) or `Decimal` (as `f64`) setting.
    fn number<T: std::str::FromStr>(&self, s: &Setting) -> Result<T> {
        self.required(s)?.parse().map_err(|_| self.bad(s.name, &s.expected()))
    }

    /// One of the words of a `OneOf` setting; unset or empty, the first.
    fn choice(&self, s: &Setting) -> Result<&'static str> {
        let v = self.text(s)?;
        let Accepts::OneOf(words) = s.accepts else { unreachable!("{} is not a choice", s.name) };
        Ok(words.iter().find(|w| Some(**w) == v.as_deref()).unwrap_or(&words[0]))
    }
}

/// The setting's value in the environment: its own variable, else the file named by
/// `<NAME>_FILE` for a secret (Docker and Kubernetes secrets), else an older name.
fn from_env(s: &Setting, env: &BTreeMap<String, String>) -> Result<Option<Raw>> {
    if let Some(v) = env.get(s.name) {
        return Ok(Some(Raw { value: v.clone(), origin: Origin::Env }));
    }
    let var = format!("{}_FILE", s.name);
    if let (true, Some(path)) = (s.secret, env.get(&var)) {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{var}='{path}': cannot read it ({e}); expected a file holding the secret")))?;
        return Ok(Some(Raw { value: text.trim_end_matches(['\n', '\r']).to_string(), origin: Origin::EnvAlias(var) }));
    }
    Ok(s.aliases.iter().find_map(|a| env.get(*a).map(|v| Raw { value: v.clone(), origin: Origin::EnvAlias(a.to_string()) })))
}

impl Config {
    /// Reads the process environment and the optional file, then validates. No I/O beyond reading them.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Config::from_sources(&Sources::gather(file, std::env::vars())?)
    }

    pub fn from_sources(src: &Sources) -> Result<Config> {
        let postgres = dsn::postgres(src)?;
        let es_index = src.required(&ES_INDEX)?;
        let es_auth = match (src.text(&ES_API_KEY)?, src.text(&ES_USERNAME)?, src.text(&ES_PASSWORD)?) {
            (Some(_), Some(_), _) => return Err(Error::Config("ES_API_KEY and ES_USERNAME are both set: choose one way to authenticate".into())),
            (Some(key), None, _) => EsAuth::ApiKey(Secret::new(key)),
            (None, Some(username), password) => EsAuth::Basic { username, password: Secret::new(password.unwrap_or_default()) },
            (None, None, Some(_)) => return Err(Error::Config("ES_PASSWORD is set but ES_USERNAME is not: set both".into())),
            (None, None, None) => EsAuth::None,
        };
        let mut cycle_sec = src.number::<f64>(&ETL_CYCLE_SEC)?;
        let source = match src.choice(&PG2ES_SOURCE)? {
            "replication" => {
                let name = |s: &Setting, default: String| -> Result<String> { Ok(src.text(s)?.unwrap_or_else(|| replication_name(&default))) };
                // Replication is for changes within a second: poll the slot often unless told otherwise.
                if src.is_default(&ETL_CYCLE_SEC) {
                    cycle_sec = 0.2;
                }
                let slot = name(&PG_REPLICATION_SLOT, format!("pg2es_{es_index}"))?;
                SourceKind::Replication(ReplicationSettings {
                    slot_explicit: src.text(&PG_REPLICATION_SLOT)?.is_some(),
                    previous_slot: slot.clone(),
                    slot,
                    publication: name(&PG_PUBLICATION, format!("pg2es_{}", src.required(&PG_SCHEMA)?))?,
                    max_retained_bytes: src.number::<u64>(&ETL_SLOT_MAX_RETAINED_MB)? << 20,
                    temporary: false,
                })
            }
            _ => SourceKind::Polling,
        };
        let backoff_initial = Duration::from_millis(src.number::<u64>(&ETL_BACKOFF_INITIAL_MS)?);
        let backoff_max = Duration::from_secs(src.number::<u64>(&ETL_BACKOFF_MAX_SEC)?);
        if backoff_max < backoff_initial {
            return Err(src.bad(ETL_BACKOFF_MAX_SEC.name, "a cap not smaller than ETL_BACKOFF_INITIAL_MS"));
        }
        let path = |s: &Setting| src.required(s).map(PathBuf::from);
        let mut config = Config {
            pg: postgres.config,
            pg_ssl_mode: postgres.ssl_mode,
            pg_ca_file: postgres.ca_file,
            pg_schema: src.required(&PG_SCHEMA)?,
            es_urls: node_urls(&src.required(&ES_URL)?).ok_or_else(|| src.bad(ES_URL.name, &ES_URL.expected()))?,
            es_index_explicit: !src.is_default(&ES_INDEX),
            es_index,
            es_index_prefix: src.text(&ES_INDEX_PREFIX)?.unwrap_or_default(),
            definition: src.text(&PG2ES_DEFINITION)?.map(PathBuf::from),
            documents: src.text(&PG2ES_DOCUMENTS)?.map(|v| v.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect()).unwrap_or_default(),
            es_schema_file: src.text(&ES_SCHEMA_FILE)?.map_or(IndexDefinition::Builtin, |p| IndexDefinition::File(p.into())),
            es_auth,
            es_ca_file: src.text(&ES_CA_FILE)?.map(PathBuf::from),
            es_timeout: Duration::from_secs(src.number::<u64>(&ES_TIMEOUT_SEC)?),
            bulk_max_bytes: src.number::<u64>(&ES_BULK_MAX_BYTES)? as usize,
            bulk_concurrency: src.number::<u64>(&ES_BULK_CONCURRENCY)? as usize,
            dead_letter_max_ratio: src.number::<f64>(&ETL_DEAD_LETTER_MAX_RATIO)?,
            reconcile_every: Some(Duration::from_secs(src.number::<u64>(&ETL_RECONCILE_SEC)?)).filter(|d| !d.is_zero()),
            batch_size: src.number::<u64>(&ETL_BATCH_SIZE)? as usize,
            metrics_addr: src.text(&PG2ES_METRICS_ADDR)?.and_then(|v| v.parse().ok()),
            state_in_postgres: src.choice(&PG2ES_STATE_STORE)? == "postgres",
            lease: Duration::from_secs(src.number::<u64>(&PG2ES_LEASE_SEC)?),
            instance: src.text(&PG2ES_INSTANCE)?,
            health_max_age: Duration::from_secs(src.number::<u64>(&PG2ES_HEALTH_MAX_AGE_SEC)?),
            source,
            cycle: Duration::from_secs_f64(cycle_sec),
            state_file: path(&ETL_STATE_FILE)?,
            dead_letter_file: path(&ETL_DEAD_LETTER_FILE)?,
            timestamp_column: match src.text(&ETL_TIMESTAMP_COLUMN)? {
                Some(name) if name != "auto" => TimestampColumn::Named(name),
                _ => TimestampColumn::Auto,
            },
            backoff_initial,
            backoff_max,
            log_format: if src.choice(&LOG_FORMAT)? == "json" { LogFormat::Json } else { LogFormat::Text },
            commit_horizon: HorizonPolicy {
                clock_skew: Duration::from_millis(src.number::<u64>(&ETL_CLOCK_SKEW_MS)?),
                max_transaction: Duration::from_secs(src.number::<u64>(&ETL_MAX_TX_SEC)?),
            },
            shown: postgres.shown,
            notices: postgres.notices,
        };
        config.shown.extend(config.shown_settings(src));
        Ok(config)
    }

    /// `print-config`'s line of each setting that has no line of the connection: the value in
    /// use (the one given where nothing else says more), and where it came from.
    fn shown_settings(&self, src: &Sources) -> Vec<Shown> {
        let replication = match &self.source {
            SourceKind::Replication(r) => Some(r),
            SourceKind::Polling => None,
        };
        let mut lines = Vec::new();
        for s in SETTINGS.iter().filter(|s| !s.secret && s.name != PG_DSN.name && !self.shown.iter().any(|l| l.label == s.name)) {
            // Given empty, a setting that has a default uses it (the others refuse an empty value).
            let value = src.string(s.name).unwrap_or_else(|| match (s.default, s.unset) {
                ("", "") => "(unset)".into(),
                ("", unset) => format!("({})", unset.replace('`', "")),
                (default, _) => default.into(),
            });
            let mut line = Shown { label: s.name, value, origin: src.origin(s.name) };
            match s.name {
                name::ES_USERNAME => {
                    line.label = "elasticsearch auth";
                    (line.value, line.origin) = match &self.es_auth {
                        EsAuth::None => ("none".into(), line.origin),
                        EsAuth::Basic { username, .. } => (format!("basic, user {username}, password ***"), line.origin),
                        EsAuth::ApiKey(_) => ("api key ***".into(), src.origin(ES_API_KEY.name)),
                    };
                }
                name::ES_URL => line.value = self.es_urls.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(","),
                name::ES_INDEX if !self.es_index_explicit => {
                    line.value = "(unset: the first document's index is the definition's, with ES_INDEX_PREFIX)".into()
                }
                name::ES_SCHEMA_FILE if self.es_schema_file == IndexDefinition::Builtin => line.origin = "default".into(),
                name::ETL_CYCLE_SEC => line.value = self.cycle.as_secs_f64().to_string(),
                name::PG_REPLICATION_SLOT | name::PG_PUBLICATION | name::ETL_SLOT_MAX_RETAINED_MB if replication.is_none() => {
                    line.value = "(not used: PG2ES_SOURCE=polling)".into();
                }
                name::PG_REPLICATION_SLOT if replication.is_some_and(|r| !r.slot_explicit) => {
                    line.value = "(unset: pg2es_<index> of the first document, one for the run)".into();
                }
                name::PG_PUBLICATION => line.value = replication.map(|r| r.publication.clone()).unwrap_or_default(),
                _ => {}
            }
            lines.push(line);
        }
        lines
    }

    /// The effective settings, secrets masked: what `pg2es print-config` shows.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for Shown { label, value, origin } in &self.shown {
            let mut value = value.clone();
            // The run's slot is named after its first document's index: from the definition.
            if *label == PG_REPLICATION_SLOT.name && value.starts_with("(unset") {
                let docs = self.selection().and_then(|selection| self.documents(&selection, &selection.source()?));
                if let Some(SourceKind::Replication(r)) = docs.ok().and_then(|docs| docs.into_iter().next()).map(|d| d.config.source) {
                    value = format!("{} {value}", r.slot);
                }
            }
            out.push_str(&format!("{label:<22} {value}  ({origin})\n"));
        }
        out.push_str(&self.render_documents());
        out
    }

    /// Each selected document's own index, schema, state file, dead-letter file and slot, as
    /// `run` uses them; from the definition file alone (no connection).
    fn render_documents(&self) -> String {
        let docs = self.selection().and_then(|selection| {
            let source = selection.source()?;
            self.documents(&selection, &source)
        });
        let docs = match docs {
            Ok(docs) => docs,
            Err(e) => return format!("\ndocuments: cannot read them: {e}\n"),
        };
        let mut out = String::new();
        for d in docs {
            let c = &d.config;
            let index_origin = if d.position == 0 && self.es_index_explicit {
                "ES_INDEX"
            } else if self.es_index_prefix.is_empty() {
                "the definition"
            } else {
                "ES_INDEX_PREFIX and the definition"
            };
            out.push_str(&format!("\ndocument {}\n", d.name));
            let line = |out: &mut String, k: &str, v: &dyn fmt::Display| out.push_str(&format!("  {k:<20} {v}\n"));
            line(&mut out, "index", &format!("{}  ({index_origin})", c.es_index));
            line(&mut out, "index schema", &d.index.schema_origin);
            line(&mut out, "state file", &c.state_file.display());
            line(&mut out, "dead-letter file", &c.dead_letter_file.display());
            match &c.source {
                SourceKind::Polling => line(&mut out, "replication slot", &"(not used: PG2ES_SOURCE=polling)"),
                SourceKind::Replication(r) => {
                    line(&mut out, "replication slot", &r.slot);
                    line(&mut out, "publication", &r.publication);
                    if r.previous_slot != r.slot {
                        line(
                            &mut out,
                            "previous slot",
                            &format!("{}  (of earlier releases: read until it reaches the run's slot, then dropped)", r.previous_slot),
                        );
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn default_replication_names_never_collide() {
        assert_eq!(replication_name("pg2es_movies"), "pg2es_movies");
        let names: Vec<String> = ["pg2es_a-c", "pg2es_a_c", "pg2es_a.c", "pg2es_A_c"].iter().map(|n| replication_name(n)).collect();
        assert_eq!(names[1], "pg2es_a_c");
        for (i, a) in names.iter().enumerate() {
            assert!(a.len() <= 63 && a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{a}");
            assert!(names[i + 1..].iter().all(|b| a != b), "{names:?}");
        }
        let long = replication_name(&format!("pg2es_{}", "x".repeat(80)));
        assert_eq!(long.len(), 63);
        assert_ne!(long, replication_name(&format!("pg2es_{}", "x".repeat(81))));
    }
    use super::*;

    pub(super) fn config(env: &[(&str, &str)]) -> Result<Config> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_sources(&Sources::gather(None, env)?)
    }

    pub(super) fn err(env: &[(&str, &str)]) -> String {
        config(env).expect_err("config should be refused").to_string()
    }

    #[test]
    fn defaults_are_valid() {
        let c = config(&[]).unwrap();
        assert_eq!(c.es_index, "movies");
        assert_eq!(c.batch_size, 500);
        assert_eq!(c.cycle, Duration::from_secs(10));
        assert_eq!(c.pg.get_dbname(), Some("movies"));
        assert_eq!(c.timestamp_column, TimestampColumn::Auto);
        assert_eq!(c.es_urls.len(), 1);
        let cluster = config(&[("ES_URL", "http://es1:9200, https://es2:9243/prefix")]).unwrap();
        assert_eq!(cluster.es_urls.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["http://es1:9200/", "https://es2:9243/prefix"]);
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&str, &str)] = &[
            ("ETL_BATCH_SIZE", "abc"),
            ("ETL_BATCH_SIZE", "0"),
            ("ETL_CYCLE_SEC", "-1"),
            ("ETL_CYCLE_SEC", "0"),
            ("ETL_CYCLE_SEC", "soon"),
            ("ES_URL", "localhost:9200"),
            ("ES_URL", "ftp://x"),
            ("ES_URL", "http://es1:9200,"),
            ("ES_URL", "http://es1:9200,es2:9200"),
            ("ES_INDEX", "Movies"),
            ("ES_INDEX", "_x"),
            ("ES_BULK_MAX_BYTES", "12"),
            ("ES_BULK_CONCURRENCY", "0"),
            ("PG_SCHEMA", "content; drop"),
            ("ETL_TIMESTAMP_COLUMN", "updated at"),
            ("ETL_BACKOFF_MAX_SEC", "0"),
            ("ETL_BACKOFF_INITIAL_MS", "x"),
            ("LOG_FORMAT", "xml"),
            ("DB_PORT", "99999"),
            ("PG_DSN", "postgres://user:pa ss@[bad"),
        ];
        for (var, value) in cases {
            let msg = err(&[(var, value)]);
            assert!(msg.contains(var), "{var}={value}: {msg}");
            assert!(msg.contains("expected"), "{var}={value}: {msg}");
        }
    }

    /// One range and one message, whatever is wrong with the value.
    #[test]
    fn cycle_has_one_range_with_a_floor() {
        for value in ["0", "-1", "1e-9", "0.09", "86401", "NaN", "inf", "soon"] {
            let msg = err(&[("ETL_CYCLE_SEC", value)]);
            assert_eq!(msg, format!("invalid configuration: ETL_CYCLE_SEC='{value}': expected a number of seconds from 0.1 to 86400"));
        }
        assert_eq!(config(&[("ETL_CYCLE_SEC", "0.1")]).unwrap().cycle, Duration::from_millis(100));
        assert_eq!(config(&[("ETL_CYCLE_SEC", "86400")]).unwrap().cycle, Duration::from_secs(86_400));
    }

    /// The built-in definition is the catalog's own: a changed fixture must be copied into
    /// catalog/movies.es.json. Reads the shared fixtures, so it fails (not skips) without them.
    #[test]
    fn builtin_index_definition_is_the_shared_fixture() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/movies/es_schema.json");
        let shared = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}; the shared fixtures are needed"));
        let builtin = crate::catalog::definition::CINEMA_SCHEMAS.iter().find(|(file, _)| *file == "movies.es.json").map(|(_, text)| *text);
        assert!(builtin == Some(shared.as_str()), "catalog/movies.es.json differs from {path}: copy it again");
        assert_eq!(config(&[]).unwrap().es_schema_file, IndexDefinition::Builtin);
        assert_eq!(config(&[("ES_SCHEMA_FILE", "/etc/x.json")]).unwrap().es_schema_file, IndexDefinition::File("/etc/x.json".into()));
    }

    #[test]
    fn secrets_never_print() {
        let c = config(&[("PG_DSN", "postgres://app:hunter2@db:5432/movies"), ("ES_USERNAME", "elastic"), ("ES_PASSWORD", "s3cr3t-es")]).unwrap();
        let rendered = c.render();
        let debug = format!("{c:?}");
        for text in [&rendered, &debug] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("s3cr3t-es"), "{text}");
        }
        assert!(rendered.contains("postgres host          db"));
        let bad = err(&[("PG_DSN", "postgres://app:hunter2@db:5432/movies?sslmode=bogus")]);
        assert!(!bad.contains("hunter2"), "{bad}");
    }

    /// print-config shows every setting, the CA files and LOG_FORMAT included, each with where
    /// its value came from.
    #[test]
    fn print_config_shows_every_setting_and_its_origin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg2es.toml");
        std::fs::write(&path, "etl_batch_size = 50\n").unwrap();
        let env = [("ES_INDEX", "films"), ("PGHOST", "db.internal"), ("PG_PASSWORD", "hunter2"), ("ES_HOST", "http://es:9200"), ("LOG_FORMAT", "json")];
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let text = Config::from_sources(&Sources::gather(Some(&path), env).unwrap()).unwrap().render();
        let line = |label: &str| {
            let found = text.lines().find(|l| l.strip_prefix(label).is_some_and(|rest| rest.starts_with(' ')));
            found.unwrap_or_else(|| panic!("no {label} line in\n{text}")).to_string()
        };
        for s in SETTINGS.iter().filter(|s| !matches!(s.name, "PG_DSN" | "PG_PASSWORD" | "ES_USERNAME" | "ES_PASSWORD" | "ES_API_KEY")) {
            line(s.name);
        }
        assert!(line("ES_INDEX").ends_with("films  (environment)"), "{text}");
        assert!(line("ES_URL").ends_with("(environment, ES_HOST)"), "{text}");
        assert!(line("ETL_BATCH_SIZE").ends_with(&format!("50  (file {})", path.display())), "{text}");
        assert!(line("ETL_CYCLE_SEC").ends_with("10  (default)"), "{text}");
        assert!(line("ES_SCHEMA_FILE").ends_with("(the definition's index_schema)  (default)"), "{text}");
        assert!(line("PG2ES_DEFINITION").contains("built-in cinema definition"), "{text}");
        assert!(line("LOG_FORMAT").ends_with("json  (environment)"), "{text}");
        assert!(line("PG_CA_FILE").contains("public web roots"), "{text}");
        assert!(line("ES_CA_FILE").ends_with("(unset)"), "{text}");
        assert!(line("postgres host").ends_with("db.internal  (environment, PGHOST)"), "{text}");
        assert!(line("postgres user").ends_with("app  (PG_DSN, default)"), "{text}");
        assert!(line("postgres password").ends_with("***  (PG_PASSWORD, environment)"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let c = config(&[("PG_DSN", "postgres://db/movies?sslmode=verify-full&sslrootcert=/dsn/ca.pem"), ("ES_CA_FILE", "/es/ca.pem")]).unwrap();
        let text = c.render();
        assert!(text.contains("/dsn/ca.pem  (sslrootcert in PG_DSN, environment)"), "{text}");
        assert!(text.contains("/es/ca.pem  (environment)"), "{text}");
    }

    #[test]
    fn file_values_sit_between_defaults_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg2es.toml");
        std::fs::write(&path, "etl_batch_size = 50\nes_index = \"films\"\n").unwrap();
        let env = vec![("ES_INDEX".to_string(), "movies_v2".to_string())];
        let c = Config::from_sources(&Sources::gather(Some(&path), env).unwrap()).unwrap();
        assert_eq!(c.batch_size, 50);
        assert_eq!(c.es_index, "movies_v2");

        std::fs::write(&path, "etl_batch_size = \"many\"\n").unwrap();
        let e = Config::from_sources(&Sources::gather(Some(&path), vec![]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("ETL_BATCH_SIZE") && e.contains("pg2es.toml"), "{e}");

        std::fs::write(&path, "batch = 5\n").unwrap();
        let e = Sources::gather(Some(&path), vec![]).unwrap_err().to_string();
        assert!(e.contains("unknown key 'batch'"), "{e}");
    }

    /// `print-config` with another definition shows each document's own names, as `run` uses
    /// them, from the file alone; no secret.
    #[test]
    fn print_config_shows_each_documents_index_state_and_slot() {
        let bookshop = concat!(env!("CARGO_MANIFEST_DIR"), "/catalog/bookshop/bookshop.toml");
        let env = [
            ("PG2ES_DEFINITION", bookshop),
            ("PG2ES_SOURCE", "replication"),
            ("ES_INDEX_PREFIX", "staging_"),
            ("ETL_STATE_FILE", "/var/lib/pg2es/state.json"),
            ("PG_PASSWORD", "hunter2"),
            ("ES_USERNAME", "elastic"),
            ("ES_PASSWORD", "s3cret"),
        ];
        let c = config(&env).unwrap();
        let text = c.render();
        let docs = c.documents(&c.selection().unwrap(), &c.selection().unwrap().source().unwrap()).unwrap();
        assert!(!docs.is_empty());
        for d in &docs {
            let section = text.split(&format!("\ndocument {}\n", d.name)).nth(1).unwrap_or_else(|| panic!("no section for {} in\n{text}", d.name));
            let section = section.split("\n\n").next().unwrap();
            let SourceKind::Replication(r) = &d.config.source else { panic!("replication") };
            for (label, value) in [
                ("index", d.config.es_index.clone()),
                ("state file", d.config.state_file.display().to_string()),
                ("dead-letter file", d.config.dead_letter_file.display().to_string()),
                ("replication slot", r.slot.clone()),
                ("publication", r.publication.clone()),
            ] {
                assert!(section.lines().any(|l| l.trim_start().starts_with(label) && l.contains(&value)), "{label} {value} not in\n{section}");
            }
            assert!(d.config.es_index.starts_with("staging_") && d.config.es_index != "movies", "{}", d.config.es_index);
            // One slot for the run, named after its first document's index; each document's
            // own slot of earlier releases is the one it reads until it reaches it.
            assert_eq!(r.slot, replication_name(&format!("pg2es_{}", docs[0].config.es_index)));
            assert_eq!(r.previous_slot, replication_name(&format!("pg2es_{}", d.config.es_index)));
            assert_eq!(d.position == 0, !section.contains("previous slot"), "{section}");
        }
        assert!(!text.contains("pg2es_movies") && !text.contains("ES_INDEX               movies"), "{text}");
        assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");

        // A definition that cannot be read is said where the documents would be.
        let c = config(&[("PG2ES_DEFINITION", "/nonexistent/def.toml")]).unwrap();
        assert!(c.render().contains("documents: cannot read them:"), "{}", c.render());
    }

    fn index_names(env: &[(&str, &str)]) -> Vec<String> {
        let c = config(env).unwrap();
        let selection = c.selection().unwrap();
        c.documents(&selection, &selection.source().unwrap()).unwrap().into_iter().map(|d| d.config.es_index).collect()
    }

    /// ES_INDEX_PREFIX before every index but an ES_INDEX that is set; none, the names of old.
    #[test]
    fn index_prefix_names_every_index_but_an_explicit_es_index() {
        assert_eq!(index_names(&[]), ["movies", "genres", "persons"]);
        assert_eq!(index_names(&[("ES_INDEX", "films")]), ["films", "genres", "persons"]);
        assert_eq!(index_names(&[("ES_INDEX_PREFIX", "staging_")]), ["staging_movies", "staging_genres", "staging_persons"]);
        assert_eq!(index_names(&[("ES_INDEX_PREFIX", "staging_"), ("ES_INDEX", "films_v2")]), ["films_v2", "staging_genres", "staging_persons"]);
        // Replication's one slot follows the first index; with no prefix it is the first of old.
        let slots = |env: &[(&str, &str)]| -> Vec<(String, String)> {
            let c = config(env).unwrap();
            let selection = c.selection().unwrap();
            let docs = c.documents(&selection, &selection.source().unwrap()).unwrap();
            docs.into_iter()
                .map(|d| match d.config.source {
                    SourceKind::Replication(r) => (r.slot, r.previous_slot),
                    SourceKind::Polling => panic!("replication"),
                })
                .collect()
        };
        let pairs = |run: &str, previous: [&str; 3]| -> Vec<(String, String)> { previous.iter().map(|p| (run.to_string(), p.to_string())).collect() };
        assert_eq!(slots(&[("PG2ES_SOURCE", "replication")]), pairs("pg2es_movies", ["pg2es_movies", "pg2es_genres", "pg2es_persons"]));
        assert_eq!(
            slots(&[("PG2ES_SOURCE", "replication"), ("ES_INDEX_PREFIX", "b_")]),
            pairs("pg2es_b_movies", ["pg2es_b_movies", "pg2es_b_genres", "pg2es_b_persons"])
        );
        // PG_REPLICATION_SLOT names the run's slot; the documents after the first had their own.
        assert_eq!(slots(&[("PG2ES_SOURCE", "replication"), ("PG_REPLICATION_SLOT", "mine")]), pairs("mine", ["mine", "mine_genres", "mine_persons"]));
        // A run of some documents has its own slot, after its first.
        assert_eq!(
            slots(&[("PG2ES_SOURCE", "replication"), ("PG2ES_DOCUMENTS", "genres,persons")]),
            pairs("pg2es_genres", ["x", "pg2es_genres", "pg2es_persons"])[1..]
        );

        // An ES_INDEX that is another document's index with the prefix is refused.
        let c = config(&[("ES_INDEX_PREFIX", "s_"), ("ES_INDEX", "s_genres")]).unwrap();
        let selection = c.selection().unwrap();
        let e = c.documents(&selection, &selection.source().unwrap()).unwrap_err().to_string();
        assert!(e.contains("ES_INDEX=s_genres") && e.contains("genres"), "{e}");
        // Too long once the definition's name is added: a copy of the cinema with a long one.
        let dir = tempfile::tempdir().unwrap();
        let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
        for file in ["movies.es.json", "genres.es.json", "persons.es.json"] {
            std::fs::copy(catalog.join(file), dir.path().join(file)).unwrap();
        }
        let text = std::fs::read_to_string(catalog.join("cinema.toml")).unwrap().replace("index = \"genres\"", &format!("index = \"{}\"", "g".repeat(100)));
        std::fs::write(dir.path().join("cinema.toml"), text).unwrap();
        let definition = dir.path().join("cinema.toml").display().to_string();
        let long = "a".repeat(200);
        let c = config(&[("ES_INDEX_PREFIX", &long), ("PG2ES_DEFINITION", &definition)]).unwrap();
        let selection = c.selection().unwrap();
        let e = c.documents(&selection, &selection.source().unwrap()).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("ES_INDEX_PREFIX"), "{e}");
    }

    #[test]
    fn index_prefix_is_the_start_of_an_index_name() {
        for bad in ["Staging_", "_x", "-x", "+x", "a b", "a/", "a*", "a?", "a\"", "a<", "a>", "a|", "a,", "a#", "a:", "a\\"] {
            let e = err(&[("ES_INDEX_PREFIX", bad)]);
            assert!(e.contains("ES_INDEX_PREFIX") && e.contains("expected"), "{bad:?}: {e}");
        }
        assert!(err(&[("ES_INDEX_PREFIX", &"a".repeat(201))]).contains("ES_INDEX_PREFIX"));
        assert_eq!(config(&[("ES_INDEX_PREFIX", "staging-2.")]).unwrap().es_index_prefix, "staging-2.");
        assert_eq!(config(&[]).unwrap().es_index_prefix, "");
        // ES_INDEX and the definition's names are checked by the one rule (the catalog's).
        for bad in [".", "..", "a:b"] {
            assert!(err(&[("ES_INDEX", bad)]).contains("ES_INDEX"), "{bad:?}");
        }
    }

    /// The README's configuration table is the operator's reference: it is the declarations.
    #[test]
    fn the_readme_table_is_the_list() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("<!-- settings table: generated from src/config.rs SETTINGS -->\n")
            .nth(1)
            .and_then(|t| t.split("<!-- end of settings table -->").next());
        assert_eq!(table, Some(readme_table().as_str()), "put config::readme_table() between the README's markers");
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let (pg, es) = (dir.path().join("pg"), dir.path().join("es"));
        std::fs::write(&pg, "pg-from-file\n").unwrap();
        std::fs::write(&es, "es-from-file").unwrap();
        let c = config(&[("PG_PASSWORD_FILE", pg.to_str().unwrap()), ("ES_USERNAME", "elastic"), ("ES_PASSWORD_FILE", es.to_str().unwrap())]).unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"pg-from-file"[..]));
        assert!(matches!(&c.es_auth, EsAuth::Basic { password, .. } if password.expose() == "es-from-file"));
        let e = err(&[("ES_API_KEY_FILE", "/nonexistent/key")]);
        assert!(e.contains("ES_API_KEY_FILE"), "{e}");
    }

    #[test]
    fn auth_combinations() {
        assert!(err(&[("ES_PASSWORD", "x")]).contains("ES_USERNAME"));
        assert!(err(&[("ES_API_KEY", "k"), ("ES_USERNAME", "u")]).contains("choose one"));
        assert!(matches!(config(&[("ES_API_KEY", "k")]).unwrap().es_auth, EsAuth::ApiKey(_)));
    }
}
