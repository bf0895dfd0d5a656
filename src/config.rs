//! Typed configuration from environment variables and an optional TOML file.
//!
//! Precedence: built-in default < config file < environment. `Config::from_sources` only parses
//! and checks values; it never connects anywhere. Secrets are wrapped in [`Secret`] so that
//! neither `Debug` nor `print-config` can show them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::catalog::{is_identifier, is_index_name};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::sink::{EsAuth, SinkSettings};
use crate::source::{replication_name, HorizonPolicy, PgSslMode, ReplicationSettings, SourceSettings};

/// One setting: its environment variable, default and meaning. The README table mirrors this.
pub struct Setting {
    pub env: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
    pub secret: bool,
}

const fn setting(env: &'static str, default: Option<&'static str>, help: &'static str) -> Setting {
    Setting { env, default, help, secret: false }
}

pub const SETTINGS: &[Setting] = &[
    setting("PG_DSN", Some("postgres://app@127.0.0.1:5432/movies"), "Postgres connection string (URL or key=value form)"),
    Setting { env: "PG_PASSWORD", default: None, help: "Postgres password; overrides the one in PG_DSN", secret: true },
    setting("PG_CA_FILE", None, "PEM CA certificates that sign the Postgres server's certificate (with sslmode=require, verify-ca or verify-full); wins over sslrootcert in PG_DSN"),
    setting("PG_SCHEMA", Some("content"), "schema of the source tables"),
    setting("ES_URL", Some("http://127.0.0.1:9200"), "Elasticsearch or OpenSearch base URL"),
    setting("PG2ES_DEFINITION", None, "definition file of the documents to keep (docs/definition.md); the built-in cinema definition (movies, genres, persons) when unset"),
    setting("PG2ES_DOCUMENTS", None, "the documents of the definition to keep, comma-separated (for example movies); all of them when unset"),
    setting("ES_INDEX", Some("movies"), "index of the definition's first document, in full (ES_INDEX_PREFIX is not added to it); unset, the definition's index with the prefix"),
    setting("ES_INDEX_PREFIX", Some(""), "put before every document's index name (and so before the default slot names), except an ES_INDEX set: keeps two deployments of one definition (staging and production) apart on one cluster"),
    setting("ES_SCHEMA_FILE", None, "index definition (body of PUT /<index>) of the first document, used when the index is absent; the definition's index_schema when unset"),
    setting("ES_CA_FILE", None, "PEM CA certificates for an https ES_URL, added to the public roots"),
    setting("ES_USERNAME", None, "Elasticsearch basic-auth user"),
    Setting { env: "ES_PASSWORD", default: None, help: "Elasticsearch basic-auth password", secret: true },
    Setting { env: "ES_API_KEY", default: None, help: "Elasticsearch API key (base64 id:key), instead of basic auth", secret: true },
    setting("ES_TIMEOUT_SEC", Some("30"), "time limit of one request to Elasticsearch (a bulk request gets 1 s more per 256 KiB of body); a timeout is retried like an outage"),
    setting("ES_BULK_MAX_BYTES", Some("8388608"), "largest bulk request body in bytes"),
    setting("ES_BULK_CONCURRENCY", Some("2"), "bulk requests in flight at once (progress is still saved in order)"),
    setting("ETL_RECONCILE_SEC", Some("300"), "how often the index's document ids are checked against Postgres's records, removing documents of deleted records (also after a full load); 0 turns it off"),
    setting("ETL_DEAD_LETTER_MAX_RATIO", Some("0.5"), "above this share of documents refused for good (over the last 100, from 10 on), pg2es stops without saving progress instead of dead-lettering them: the mapping is wrong, not the rows; 1 turns the check off"),
    setting("ETL_BATCH_SIZE", Some("500"), "rows read per query and documents per bulk request"),
    setting("PG2ES_SOURCE", Some("polling"), "how changes are found: polling (timestamps; no privileges needed) or replication (logical replication: a publication and a pgoutput slot)"),
    setting("PG_REPLICATION_SLOT", None, "the one replication slot of PG2ES_SOURCE=replication, read for every document of the run; unset, pg2es_<index> of the first document"),
    setting("PG_PUBLICATION", None, "the one publication of PG2ES_SOURCE=replication, on the tables of every document (default pg2es_<PG_SCHEMA>)"),
    setting("ETL_SLOT_MAX_RETAINED_MB", Some("1024"), "with PG2ES_SOURCE=replication, a warning when the slot retains more WAL than this"),
    setting("ETL_CYCLE_SEC", Some("10"), "pause between two cycles in continuous mode (seconds, from 0.1 to 86400, may be fractional); 0.2 by default with PG2ES_SOURCE=replication"),
    setting("ETL_STATE_FILE", Some("state/pg2es-state.json"), "durable watermarks; a .lock file beside it keeps one instance"),
    setting("ETL_DEAD_LETTER_FILE", Some("state/pg2es-dead-letter.jsonl"), "documents Elasticsearch rejected for good (JSON lines)"),
    setting("ETL_TIMESTAMP_COLUMN", Some("auto"), "change-tracking column: auto, or a name such as updated_at or modified"),
    setting("ETL_CLOCK_SKEW_MS", Some("1000"), "how far the clocks that write change timestamps may lag Postgres' clock"),
    setting("ETL_MAX_TX_SEC", Some("60"), "longest write transaction expected, used only when open transactions cannot be seen (no pg_read_all_stats)"),
    setting("ETL_BACKOFF_INITIAL_MS", Some("200"), "first retry delay after a connection loss"),
    setting("ETL_BACKOFF_MAX_SEC", Some("30"), "cap of the retry delay"),
    setting("LOG_FORMAT", Some("text"), "text or json"),
    setting("PG2ES_METRICS_ADDR", None, "host:port where `pg2es run` serves Prometheus /metrics and /healthz (for example 127.0.0.1:9464); unset, nothing is served"),
    setting("PG2ES_HEALTH_MAX_AGE_SEC", Some("120"), "/healthz and `pg2es status` fail when a document has stored nothing for longer than this, or has waited for Postgres or Elasticsearch for longer"),
];

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

/// The TLS parameters of libpq that tokio-postgres does not parse, taken out of `PG_DSN`.
#[derive(Debug, Default, PartialEq, Eq)]
struct DsnTls {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a DSN (URL or key=value form), returning the rest for
/// tokio-postgres, which knows only three of libpq's six modes and no root certificate. A DSN
/// this cannot read is returned whole, for tokio-postgres to refuse.
fn split_dsn_tls(dsn: &str) -> (String, DsnTls) {
    let mut tls = DsnTls::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => tls.sslmode = Some(value),
        "sslrootcert" => tls.sslrootcert = Some(value),
        _ => unreachable!("only TLS keys are taken"),
    };
    let ours = |key: &str| matches!(key, "sslmode" | "sslrootcert");
    let rest = if is_url(dsn) {
        match dsn.split_once('?') {
            None => dsn.to_string(),
            Some((head, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    match (percent_decode(key), percent_decode(value)) {
                        (Some(k), Some(v)) if ours(&k) => take(&k, v),
                        _ => kept.push(pair),
                    }
                }
                if kept.is_empty() {
                    head.to_string()
                } else {
                    format!("{head}?{}", kept.join("&"))
                }
            }
        }
    } else {
        match keyword_pairs(dsn) {
            Some(pairs) => {
                let mut kept = Vec::new();
                for (key, value, text) in pairs {
                    if ours(key) {
                        take(key, value);
                    } else {
                        kept.push(text);
                    }
                }
                kept.join(" ")
            }
            None => dsn.to_string(),
        }
    };
    (rest, tls)
}

/// `key = value` pairs of a libpq keyword DSN: (key, unquoted value, the pair's text). `None`
/// when it does not read as one.
fn keyword_pairs(dsn: &str) -> Option<Vec<(&str, String, &str)>> {
    let mut pairs = Vec::new();
    let mut chars = dsn.char_indices().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        let Some(&(start, _)) = chars.peek() else { return Some(pairs) };
        while chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=').is_some() {}
        let key_end = chars.peek().map_or(dsn.len(), |(i, _)| *i);
        skip_space(&mut chars);
        chars.next_if(|(_, c)| *c == '=')?;
        skip_space(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        loop {
            match chars.peek().map(|(_, c)| *c) {
                None if quoted => return None,
                None => break,
                Some('\'') if quoted => {
                    chars.next();
                    break;
                }
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => {
                    chars.next();
                    value.push(chars.next()?.1);
                }
                Some(c) => {
                    chars.next();
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(dsn.len(), |(i, _)| *i);
        pairs.push((&dsn[start..key_end], value, &dsn[start..end]));
    }
}

/// `%XX` decoding as in a postgres:// URL; `None` for a malformed escape or non-UTF-8 text.
fn percent_decode(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
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
    pub es_url: reqwest::Url,
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
    /// Where each value shown by `print-config` came from, by its label there.
    origins: BTreeMap<&'static str, String>,
    /// Settings given but not used, each with why: logged as warnings at start.
    pub notices: Vec<String>,
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
            url: self.es_url.clone(),
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
        for s in SETTINGS {
            if let Some(d) = s.default {
                sources.values.insert(s.env, Raw { value: d.to_string(), origin: Origin::Default });
            }
        }
        if let Some(path) = file {
            sources.read_file(path)?;
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for s in SETTINGS {
            if let Some(v) = env.get(s.env) {
                sources.values.insert(s.env, Raw { value: v.clone(), origin: Origin::Env });
            }
        }
        // Names users of the course's Python ETL already have in their .env files.
        for (legacy, modern) in [("ES_HOST", "ES_URL"), ("BATCH_SIZE", "ETL_BATCH_SIZE")] {
            if let (Some(v), false) = (env.get(legacy), env.contains_key(modern)) {
                sources.values.insert(modern, Raw { value: v.clone(), origin: Origin::EnvAlias(legacy.to_string()) });
            }
        }
        sources.legacy_db_vars(&env);
        sources.secret_files(&env)?;
        Ok(sources)
    }

    /// `<SECRET>_FILE` (Docker and Kubernetes secrets): the secret is read from that file unless
    /// the variable itself is set.
    fn secret_files(&mut self, env: &BTreeMap<String, String>) -> Result<()> {
        for s in SETTINGS.iter().filter(|s| s.secret) {
            let var = format!("{}_FILE", s.env);
            let Some(path) = env.get(&var) else { continue };
            if env.contains_key(s.env) {
                continue;
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("{var}='{path}': cannot read it ({e}); expected a file holding the secret")))?;
            let value = text.trim_end_matches(['\n', '\r']).to_string();
            self.values.insert(s.env, Raw { value, origin: Origin::EnvAlias(var) });
        }
        Ok(())
    }

    fn read_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| Error::Config(format!("config file {} is not valid TOML: {}", path.display(), e.message())))?;
        for (key, value) in table {
            let Some(s) = SETTINGS.iter().find(|s| s.env.eq_ignore_ascii_case(&key)) else {
                return Err(Error::Config(format!(
                    "config file {}: unknown key '{key}'; known keys are the lower-case names of the environment variables (see `pg2es print-config`)",
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
            self.values.insert(s.env, Raw { value, origin: Origin::File(path.to_path_buf()) });
        }
        Ok(())
    }

    /// DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD of the course's ETL override parts of
    /// PG_DSN; libpq's PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD fill parts it leaves out.
    fn legacy_db_vars(&mut self, env: &BTreeMap<String, String>) {
        if let Some(p) = env.get("DB_PASSWORD") {
            if !env.contains_key("PG_PASSWORD") {
                self.values.insert("PG_PASSWORD", Raw { value: p.clone(), origin: Origin::EnvAlias("DB_PASSWORD".into()) });
            }
        }
        for key in ["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER"].into_iter().chain(LIBPQ_VARS) {
            if let Some(v) = env.get(key) {
                self.values.insert(key, Raw { value: v.clone(), origin: Origin::Env });
            }
        }
    }

    fn get(&self, env: &str) -> Option<&Raw> {
        self.values.get(env)
    }

    /// Where the value of `env` came from, for `print-config`.
    fn origin(&self, env: &str) -> String {
        self.get(env).filter(|r| !r.value.trim().is_empty()).map_or_else(|| "unset".to_string(), |r| r.origin.to_string())
    }

    fn describe(&self, env: &str) -> String {
        match self.get(env).map(|r| &r.origin) {
            Some(Origin::File(p)) => format!("{env} (from {})", p.display()),
            Some(Origin::Default) => format!("{env} (default)"),
            _ => env.to_string(),
        }
    }

    fn bad(&self, env: &str, expected: &str) -> Error {
        let shown = match SETTINGS.iter().find(|s| s.env == env) {
            Some(s) if s.secret => "***".to_string(),
            _ => self.get(env).map(|r| r.value.clone()).unwrap_or_default(),
        };
        Error::Config(format!("{}='{shown}': expected {expected}", self.describe(env)))
    }

    fn string(&self, env: &str) -> Option<String> {
        self.get(env).map(|r| r.value.trim().to_string()).filter(|v| !v.is_empty())
    }

    fn number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(&self, env: &str, min: T, max: T, what: &str) -> Result<T> {
        let raw = self.string(env).ok_or_else(|| self.bad(env, what))?;
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(v),
            _ => Err(self.bad(env, &format!("{what} from {min} to {max}"))),
        }
    }
}

impl Config {
    /// Reads the process environment and the optional file, then validates. No I/O beyond reading them.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Config::from_sources(&Sources::gather(file, std::env::vars())?)
    }

    pub fn from_sources(src: &Sources) -> Result<Config> {
        let (mut pg, dsn_tls, mut origins, notices) = parse_pg(src)?;
        let (pg_ssl_mode, pg_ca_file) = pg_tls(src, dsn_tls)?;
        for s in SETTINGS {
            origins.insert(s.env, src.origin(s.env));
        }
        origins.insert("postgres tls", format!("sslmode in PG_DSN, {}", src.origin("PG_DSN")));
        if src.string("ES_SCHEMA_FILE").is_none() {
            origins.insert("ES_SCHEMA_FILE", "default".to_string());
        }
        if src.string("PG_CA_FILE").is_none() && pg_ca_file.is_some() {
            origins.insert("PG_CA_FILE", format!("sslrootcert in PG_DSN, {}", src.origin("PG_DSN")));
        }
        let auth_var = if src.string("ES_API_KEY").is_some() { "ES_API_KEY" } else { "ES_USERNAME" };
        origins.insert("elasticsearch auth", src.origin(auth_var));
        pg.ssl_mode(match pg_ssl_mode {
            PgSslMode::Disable => tokio_postgres::config::SslMode::Disable,
            PgSslMode::Allow | PgSslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        if pg.get_application_name().is_none() {
            pg.application_name("pg2es");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }

        let pg_schema = src.string("PG_SCHEMA").unwrap_or_default();
        if !is_identifier(&pg_schema) {
            return Err(src.bad("PG_SCHEMA", "a plain identifier such as content (letters, digits, _)"));
        }

        let es_url_raw = src.string("ES_URL").unwrap_or_default();
        let es_url = reqwest::Url::parse(&es_url_raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| src.bad("ES_URL", "an http:// or https:// URL such as http://127.0.0.1:9200"))?;

        let es_index = src.string("ES_INDEX").unwrap_or_default();
        if !is_index_name(&es_index) {
            return Err(src.bad("ES_INDEX", "a lower-case index name without spaces or any of \\/*?\"<>|,#: and not starting with -, _ or +"));
        }
        let es_index_prefix = src.string("ES_INDEX_PREFIX").unwrap_or_default();
        // The start of an index name: what the definition adds after it cannot make it valid.
        if !es_index_prefix.is_empty() && (!is_index_name(&es_index_prefix) || es_index_prefix.len() > 200) {
            return Err(src.bad(
                "ES_INDEX_PREFIX",
                "empty, or the start of an index name such as staging_: lower case, at most 200 bytes, without spaces or any of \\/*?\"<>|,#: and not starting with -, _ or +",
            ));
        }

        let es_auth = match (src.string("ES_API_KEY"), src.string("ES_USERNAME"), src.string("ES_PASSWORD")) {
            (Some(_), Some(_), _) => return Err(Error::Config("ES_API_KEY and ES_USERNAME are both set: choose one way to authenticate".into())),
            (Some(key), None, _) => EsAuth::ApiKey(Secret::new(key)),
            (None, Some(username), password) => EsAuth::Basic { username, password: Secret::new(password.unwrap_or_default()) },
            (None, None, Some(_)) => return Err(Error::Config("ES_PASSWORD is set but ES_USERNAME is not: set both".into())),
            (None, None, None) => EsAuth::None,
        };

        // Below a tenth of a second the loop would mostly poll an idle database.
        let mut cycle_sec: f64 = src.number("ETL_CYCLE_SEC", 0.1, 86_400.0, "a number of seconds")?;
        let source = match src.string("PG2ES_SOURCE").as_deref() {
            Some("polling") | None => SourceKind::Polling,
            Some("replication") => {
                let name = |env: &str, default: String| -> Result<String> {
                    match src.string(env) {
                        None => Ok(replication_name(&default)),
                        Some(v) if v.len() <= 63 && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') => Ok(v),
                        Some(_) => Err(src.bad(env, "a name of lower-case letters, digits and _ (at most 63)")),
                    }
                };
                let es_index = src.string("ES_INDEX").unwrap_or_default();
                let pg_schema = src.string("PG_SCHEMA").unwrap_or_default();
                // Replication is for changes within a second: poll the slot often unless told otherwise.
                if matches!(src.get("ETL_CYCLE_SEC").map(|r| &r.origin), Some(Origin::Default)) {
                    cycle_sec = 0.2;
                }
                let slot = name("PG_REPLICATION_SLOT", format!("pg2es_{es_index}"))?;
                SourceKind::Replication(ReplicationSettings {
                    slot_explicit: src.string("PG_REPLICATION_SLOT").is_some(),
                    previous_slot: slot.clone(),
                    slot,
                    publication: name("PG_PUBLICATION", format!("pg2es_{pg_schema}"))?,
                    max_retained_bytes: src.number("ETL_SLOT_MAX_RETAINED_MB", 1u64, 1 << 30, "a whole number of MiB")? << 20,
                })
            }
            Some(_) => return Err(src.bad("PG2ES_SOURCE", "polling or replication")),
        };

        let timestamp_column = match src.string("ETL_TIMESTAMP_COLUMN").as_deref() {
            None | Some("auto") => TimestampColumn::Auto,
            Some(name) if is_identifier(name) => TimestampColumn::Named(name.to_string()),
            Some(_) => return Err(src.bad("ETL_TIMESTAMP_COLUMN", "auto, or a column name such as updated_at or modified")),
        };

        let log_format = match src.string("LOG_FORMAT").as_deref() {
            Some("text") | None => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(src.bad("LOG_FORMAT", "text or json")),
        };

        let backoff_initial = Duration::from_millis(src.number("ETL_BACKOFF_INITIAL_MS", 1u64, 60_000, "a whole number of milliseconds")?);
        let backoff_max = Duration::from_secs(src.number("ETL_BACKOFF_MAX_SEC", 1u64, 3_600, "a whole number of seconds")?);
        if backoff_max < backoff_initial {
            return Err(src.bad("ETL_BACKOFF_MAX_SEC", "a cap not smaller than ETL_BACKOFF_INITIAL_MS"));
        }

        Ok(Config {
            pg,
            pg_ssl_mode,
            pg_ca_file,
            pg_schema,
            es_url,
            es_index_explicit: !matches!(src.get("ES_INDEX").map(|r| &r.origin), Some(Origin::Default) | None),
            es_index,
            es_index_prefix,
            definition: src.string("PG2ES_DEFINITION").map(PathBuf::from),
            documents: src
                .string("PG2ES_DOCUMENTS")
                .map(|v| v.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect())
                .unwrap_or_default(),
            es_schema_file: match src.string("ES_SCHEMA_FILE") {
                Some(path) => IndexDefinition::File(PathBuf::from(path)),
                None => IndexDefinition::Builtin,
            },
            es_auth,
            es_ca_file: src.string("ES_CA_FILE").map(PathBuf::from),
            es_timeout: Duration::from_secs(src.number("ES_TIMEOUT_SEC", 1u64, 3_600, "a whole number of seconds")?),
            bulk_max_bytes: src.number("ES_BULK_MAX_BYTES", 1024usize, 1 << 30, "a whole number of bytes")?,
            bulk_concurrency: src.number("ES_BULK_CONCURRENCY", 1usize, 64, "a whole number of requests")?,
            dead_letter_max_ratio: src.number("ETL_DEAD_LETTER_MAX_RATIO", 0.0f64, 1.0, "a share")?,
            reconcile_every: match src.number("ETL_RECONCILE_SEC", 0u64, 604_800, "a whole number of seconds")? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            batch_size: src.number("ETL_BATCH_SIZE", 1usize, 100_000, "a whole number")?,
            metrics_addr: match src.string("PG2ES_METRICS_ADDR") {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| src.bad("PG2ES_METRICS_ADDR", "an address and port such as 127.0.0.1:9464"))?),
            },
            health_max_age: Duration::from_secs(src.number("PG2ES_HEALTH_MAX_AGE_SEC", 1u64, 604_800, "a whole number of seconds")?),
            source,
            cycle: Duration::from_secs_f64(cycle_sec),
            state_file: path_setting(src, "ETL_STATE_FILE")?,
            dead_letter_file: path_setting(src, "ETL_DEAD_LETTER_FILE")?,
            timestamp_column,
            backoff_initial,
            backoff_max,
            log_format,
            commit_horizon: HorizonPolicy {
                clock_skew: Duration::from_millis(src.number("ETL_CLOCK_SKEW_MS", 0u64, 3_600_000, "a whole number of milliseconds")?),
                max_transaction: Duration::from_secs(src.number("ETL_MAX_TX_SEC", 0u64, 86_400, "a whole number of seconds")?),
            },
            origins,
            notices,
        })
    }

    /// The effective settings, secrets masked: what `pg2es print-config` shows.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let line = |out: &mut String, k: &str, v: &dyn fmt::Display| {
            let origin = self.origins.get(k).map_or("built in", String::as_str);
            out.push_str(&format!("{k:<22} {v}  ({origin})\n"));
        };
        line(&mut out, "postgres host", &hosts.join(","));
        line(&mut out, "postgres port", &self.pg.get_ports().first().copied().unwrap_or(5432));
        line(&mut out, "postgres database", &self.pg.get_dbname().unwrap_or("(user name)"));
        line(&mut out, "postgres user", &self.pg.get_user().unwrap_or("(none)"));
        line(&mut out, "postgres password", &if self.pg.get_password().is_some() { "***" } else { "(none)" });
        let roots = match &self.pg_ca_file {
            Some(ca) => format!("CA {}", ca.display()),
            None => "public web roots".to_string(),
        };
        let tls = match self.pg_ssl_mode {
            PgSslMode::Disable => "off (sslmode=disable; add sslmode=verify-full to PG_DSN for TLS)".to_string(),
            PgSslMode::Allow | PgSslMode::Prefer => format!("when offered, not verified (sslmode={})", self.pg_ssl_mode.as_str()),
            PgSslMode::Require | PgSslMode::VerifyFull => {
                format!("required, chain and host name verified against {roots} (sslmode={})", self.pg_ssl_mode.as_str())
            }
            PgSslMode::VerifyCa => format!("required, chain verified against {roots}, host name not (sslmode=verify-ca)"),
        };
        line(&mut out, "postgres tls", &tls);
        let ca = |file: &Option<PathBuf>| file.as_ref().map_or_else(|| "(none: public web roots)".to_string(), |p| p.display().to_string());
        line(&mut out, "PG_CA_FILE", &ca(&self.pg_ca_file));
        line(&mut out, "PG_SCHEMA", &self.pg_schema);
        line(&mut out, "ES_URL", &self.es_url);
        line(&mut out, "PG2ES_DEFINITION", &self.definition.as_ref().map_or_else(|| "(built-in cinema definition)".to_string(), |p| p.display().to_string()));
        line(&mut out, "PG2ES_DOCUMENTS", &if self.documents.is_empty() { "(all)".to_string() } else { self.documents.join(",") });
        if self.es_index_explicit {
            line(&mut out, "ES_INDEX", &self.es_index);
        } else {
            line(&mut out, "ES_INDEX", &"(unset: the first document's index is the definition's, with ES_INDEX_PREFIX)");
        }
        line(&mut out, "ES_INDEX_PREFIX", &if self.es_index_prefix.is_empty() { "(none)" } else { self.es_index_prefix.as_str() });
        line(&mut out, "ES_SCHEMA_FILE", &self.es_schema_file);
        let auth = match &self.es_auth {
            EsAuth::None => "none".to_string(),
            EsAuth::Basic { username, .. } => format!("basic, user {username}, password ***"),
            EsAuth::ApiKey(_) => "api key ***".to_string(),
        };
        line(&mut out, "elasticsearch auth", &auth);
        line(&mut out, "ES_CA_FILE", &ca(&self.es_ca_file));
        line(&mut out, "ES_TIMEOUT_SEC", &self.es_timeout.as_secs());
        line(&mut out, "ES_BULK_MAX_BYTES", &self.bulk_max_bytes);
        line(&mut out, "ES_BULK_CONCURRENCY", &self.bulk_concurrency);
        line(&mut out, "ETL_DEAD_LETTER_MAX_RATIO", &self.dead_letter_max_ratio);
        line(&mut out, "ETL_RECONCILE_SEC", &self.reconcile_every.map_or(0, |d| d.as_secs()));
        line(&mut out, "ETL_BATCH_SIZE", &self.batch_size);
        line(&mut out, "PG2ES_METRICS_ADDR", &self.metrics_addr.map_or_else(|| "(not served)".to_string(), |a| a.to_string()));
        line(&mut out, "PG2ES_HEALTH_MAX_AGE_SEC", &self.health_max_age.as_secs());
        match &self.source {
            SourceKind::Polling => {
                line(&mut out, "PG2ES_SOURCE", &"polling");
                for unused in ["PG_REPLICATION_SLOT", "PG_PUBLICATION", "ETL_SLOT_MAX_RETAINED_MB"] {
                    line(&mut out, unused, &"(not used: PG2ES_SOURCE=polling)");
                }
            }
            SourceKind::Replication(r) => {
                line(&mut out, "PG2ES_SOURCE", &"replication");
                if r.slot_explicit {
                    line(&mut out, "PG_REPLICATION_SLOT", &r.slot);
                } else {
                    // The run's slot is named after its first document's index: from the definition.
                    let run_slot = self.selection().and_then(|selection| self.documents(&selection, &selection.source()?)).ok().and_then(|docs| {
                        docs.into_iter().next().and_then(|d| match d.config.source {
                            SourceKind::Replication(r) => Some(r.slot),
                            SourceKind::Polling => None,
                        })
                    });
                    let shown = match run_slot {
                        Some(slot) => format!("{slot} (unset: pg2es_<index> of the first document, one for the run)"),
                        None => "(unset: pg2es_<index> of the first document, one for the run)".to_string(),
                    };
                    line(&mut out, "PG_REPLICATION_SLOT", &shown);
                }
                line(&mut out, "PG_PUBLICATION", &r.publication);
                line(&mut out, "ETL_SLOT_MAX_RETAINED_MB", &(r.max_retained_bytes >> 20));
            }
        }
        line(&mut out, "ETL_CYCLE_SEC", &self.cycle.as_secs_f64());
        line(&mut out, "ETL_STATE_FILE", &self.state_file.display());
        line(&mut out, "ETL_DEAD_LETTER_FILE", &self.dead_letter_file.display());
        let ts = match &self.timestamp_column {
            TimestampColumn::Auto => "auto".to_string(),
            TimestampColumn::Named(n) => n.clone(),
        };
        line(&mut out, "ETL_TIMESTAMP_COLUMN", &ts);
        line(&mut out, "ETL_CLOCK_SKEW_MS", &self.commit_horizon.clock_skew.as_millis());
        line(&mut out, "ETL_MAX_TX_SEC", &self.commit_horizon.max_transaction.as_secs());
        line(&mut out, "ETL_BACKOFF_INITIAL_MS", &self.backoff_initial.as_millis());
        line(&mut out, "ETL_BACKOFF_MAX_SEC", &self.backoff_max.as_secs());
        let log_format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        line(&mut out, "LOG_FORMAT", &log_format);
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

/// The parts of the Postgres connection that can come from several variables, in precedence
/// order: an explicit part of `PG_DSN`, then the course name (`DB_*`), then libpq's variable
/// (`PG*`), then the built-in default DSN. The password is handled apart (see [`parse_pg`]).
const PG_PARTS: [(&str, &str); 4] = [("DB_HOST", "PGHOST"), ("DB_PORT", "PGPORT"), ("DB_USER", "PGUSER"), ("DB_NAME", "PGDATABASE")];

/// The environment variables of libpq that pg2es reads, as psql and other libpq-based tools do.
pub const LIBPQ_VARS: [&str; 5] = ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"];

/// The Postgres connection, the DSN's TLS settings, where each part came from, and the settings
/// given but overridden (for the log).
type PgParts = (tokio_postgres::Config, DsnTls, BTreeMap<&'static str, String>, Vec<String>);

/// Builds the Postgres connection from `PG_DSN`, `DB_*`, `PG*` and `PG_PASSWORD`.
///
/// Per part, the first set of: an explicit part of `PG_DSN` (set in the environment or the
/// file), `DB_*`, `PG*`, the built-in default DSN. A `DB_*` value that an explicit `PG_DSN`
/// overrides with another is never silently dropped: it is named in the origins and logged as a
/// warning at start (a Django `.env` exported beside `PG_DSN` would otherwise point pg2es at
/// another database). Password: `PG_PASSWORD` (or `DB_PASSWORD`,
/// `PG_PASSWORD_FILE`), then the password in `PG_DSN`, then `PGPASSWORD`, as libpq lets a
/// connection string beat PGPASSWORD.
fn parse_pg(src: &Sources) -> Result<PgParts> {
    let full_dsn = src.string("PG_DSN").ok_or_else(|| src.bad("PG_DSN", "a connection string"))?;
    let (dsn, tls) = split_dsn_tls(&full_dsn);
    let mut pg: tokio_postgres::Config = dsn.parse().map_err(|_| {
        // The parser's message may quote the DSN, password included: say what is expected instead.
        Error::Config(format!("{}: not a valid connection string; expected postgres://user@host:port/dbname or 'host=... dbname=...'", src.describe("PG_DSN")))
    })?;
    let dsn_is_default = matches!(src.get("PG_DSN").map(|r| &r.origin), Some(Origin::Default));
    let dsn_sets_port = if is_url(&dsn) { url_names_a_port(&dsn) } else { !pg.get_ports().is_empty() };
    let dsn_sets = [!pg.get_hosts().is_empty(), dsn_sets_port, pg.get_user().is_some(), pg.get_dbname().is_some()];
    // The variable that supplies each part, when it is not the DSN's own.
    let dsn_parts: [Option<String>; 4] = [
        pg.get_hosts().first().map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        }),
        pg.get_ports().first().map(u16::to_string),
        pg.get_user().map(str::to_string),
        pg.get_dbname().map(str::to_string),
    ];
    let mut overridden = Vec::new();
    let chosen: Vec<Option<(&'static str, String)>> = PG_PARTS
        .iter()
        .zip(dsn_sets)
        .zip(&dsn_parts)
        .enumerate()
        .map(|(i, (((course, libpq), dsn_set), dsn_part))| {
            let explicit = dsn_set && !dsn_is_default;
            let course_value = src.string(course);
            if let (true, Some(v), Some(part)) = (explicit, &course_value, dsn_part) {
                if v != part {
                    overridden.push((i, *course, v.clone(), part.clone()));
                }
            }
            let course = course_value.filter(|_| !explicit).map(|v| (*course, v));
            let libpq = src.string(libpq).filter(|_| !explicit).map(|v| (*libpq, v));
            course.or(libpq)
        })
        .collect();
    let hosts = chosen[0].as_ref().map(|(_, v)| v.split(',').map(|h| h.trim().to_string()).collect::<Vec<_>>());
    let ports = match &chosen[1] {
        Some((var, v)) => Some(
            v.split(',')
                .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| src.bad(var, "a port number from 1 to 65535"))?,
        ),
        None => None,
    };
    if hosts.is_some() || ports.is_some() {
        pg = replace_hosts_ports(&pg, hosts.as_deref(), ports.as_deref());
    }
    if let Some((_, user)) = &chosen[2] {
        pg.user(user);
    }
    if let Some((_, dbname)) = &chosen[3] {
        pg.dbname(dbname);
    }
    let dsn_password = pg.get_password().is_some();
    if let Some(p) = src.string("PG_PASSWORD") {
        pg.password(p);
    } else if let (None, Some(p)) = (pg.get_password(), src.string("PGPASSWORD")) {
        pg.password(p);
    }
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        pg.host("127.0.0.1");
    }

    let dsn_origin = format!("PG_DSN, {}", src.origin("PG_DSN"));
    let mut origins = BTreeMap::new();
    for (i, ((label, dsn_set), var)) in
        ["postgres host", "postgres port", "postgres user", "postgres database"].into_iter().zip(dsn_sets).zip(&chosen).enumerate()
    {
        let mut origin = match var {
            Some((var, _)) => format!("environment, {var}"),
            None if dsn_set || dsn_is_default => dsn_origin.clone(),
            None => "built in".to_string(),
        };
        if let Some((_, course, value, _)) = overridden.iter().find(|(at, ..)| *at == i) {
            origin.push_str(&format!("; {course}={value} ignored"));
        }
        origins.insert(label, origin);
    }
    let mut notices = Vec::new();
    for (_, course, value, part) in &overridden {
        notices.push(format!("{course}={value} is ignored: PG_DSN gives {part}; unset {course} or change PG_DSN"));
    }
    let password_origin = if src.string("PG_PASSWORD").is_some() {
        format!("PG_PASSWORD, {}", src.origin("PG_PASSWORD"))
    } else if dsn_password {
        dsn_origin
    } else if pg.get_password().is_some() {
        "environment, PGPASSWORD".to_string()
    } else {
        "unset".to_string()
    };
    origins.insert("postgres password", password_origin);
    Ok((pg, tls, origins, notices))
}

fn is_url(dsn: &str) -> bool {
    dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")
}

/// Whether a URL DSN gives a port: tokio-postgres's parser puts 5432 in for a host without one,
/// so the parsed config cannot tell.
fn url_names_a_port(dsn: &str) -> bool {
    let Some(rest) = dsn.strip_prefix("postgres://").or_else(|| dsn.strip_prefix("postgresql://")) else { return false };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, hosts)| hosts);
    hosts.split(',').any(|h| {
        // [::1]:5432: the port follows the bracket.
        let after_host = if h.starts_with('[') { h.split_once(']').map_or("", |(_, rest)| rest) } else { h };
        after_host.contains(':')
    }) || rest.split_once('?').is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("port=")))
}

/// tokio_postgres::Config only appends hosts and ports; these replace them, so start a fresh
/// config and copy over everything else the DSN set.
fn replace_hosts_ports(old: &tokio_postgres::Config, hosts: Option<&[String]>, ports: Option<&[u16]>) -> tokio_postgres::Config {
    use tokio_postgres::config::Host;
    let mut pg = tokio_postgres::Config::new();
    match hosts {
        Some(hosts) => {
            for h in hosts {
                pg.host(h);
            }
        }
        None => {
            for h in old.get_hosts() {
                match h {
                    Host::Tcp(h) => pg.host(h),
                    #[cfg(unix)]
                    Host::Unix(p) => pg.host_path(p),
                };
            }
            // hostaddr pairs with the DSN's own hosts; new hosts are resolved by name.
            for a in old.get_hostaddrs() {
                pg.hostaddr(*a);
            }
        }
    }
    for p in ports.unwrap_or(old.get_ports()) {
        pg.port(*p);
    }
    if let Some(u) = old.get_user() {
        pg.user(u);
    }
    if let Some(d) = old.get_dbname() {
        pg.dbname(d);
    }
    if let Some(p) = old.get_password() {
        pg.password(p);
    }
    if let Some(a) = old.get_application_name() {
        pg.application_name(a);
    }
    if let Some(o) = old.get_options() {
        pg.options(o);
    }
    if let Some(t) = old.get_connect_timeout() {
        pg.connect_timeout(*t);
    }
    if let Some(t) = old.get_tcp_user_timeout() {
        pg.tcp_user_timeout(*t);
    }
    pg.keepalives(old.get_keepalives()).keepalives_idle(old.get_keepalives_idle());
    if let Some(i) = old.get_keepalives_interval() {
        pg.keepalives_interval(i);
    }
    if let Some(r) = old.get_keepalives_retries() {
        pg.keepalives_retries(r);
    }
    pg.ssl_mode(old.get_ssl_mode())
        .ssl_negotiation(old.get_ssl_negotiation())
        .target_session_attrs(old.get_target_session_attrs())
        .channel_binding(old.get_channel_binding())
        .load_balance_hosts(old.get_load_balance_hosts());
    pg
}

/// The sslmode and the CA: PG_CA_FILE wins over sslrootcert, as PG_PASSWORD wins over the DSN's
/// password. Refuses a CA that the mode would not use, and verify-ca without a CA of its own
/// (against the public roots, any web site's certificate would pass).
fn pg_tls(src: &Sources, dsn: DsnTls) -> Result<(PgSslMode, Option<PathBuf>)> {
    let dsn_name = src.describe("PG_DSN");
    let mode = match dsn.sslmode.as_deref() {
        None => PgSslMode::Disable,
        Some(value) => PgSslMode::ALL
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, m)| *m)
            .ok_or_else(|| Error::Config(format!("{dsn_name}: sslmode='{value}': expected disable, allow, prefer, require, verify-ca or verify-full")))?,
    };
    let (ca, ca_name) = match (src.string("PG_CA_FILE"), dsn.sslrootcert) {
        (Some(file), _) => (Some(PathBuf::from(file)), "PG_CA_FILE".to_string()),
        // libpq's sslrootcert=system: the system's roots; here the public web roots.
        (None, Some(root)) if root == "system" => (None, format!("sslrootcert in {dsn_name}")),
        (None, Some(root)) => (Some(PathBuf::from(root)), format!("sslrootcert in {dsn_name}")),
        (None, None) => (None, String::new()),
    };
    if ca.is_some() && !mode.verifies() {
        return Err(Error::Config(format!(
            "{ca_name} is set but sslmode={} does not verify the server: expected sslmode=verify-full (or verify-ca, require) in PG_DSN",
            mode.as_str()
        )));
    }
    if mode == PgSslMode::VerifyCa && ca.is_none() {
        return Err(Error::Config(format!(
            "{dsn_name}: sslmode=verify-ca expected the CA that signs the server's certificate in PG_CA_FILE or sslrootcert (against the public roots any web site's certificate would pass); or use sslmode=verify-full"
        )));
    }
    Ok((mode, ca))
}

fn path_setting(src: &Sources, env: &str) -> Result<PathBuf> {
    let v = src.string(env).ok_or_else(|| src.bad(env, "a file path"))?;
    Ok(PathBuf::from(v))
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

    fn config(env: &[(&str, &str)]) -> Result<Config> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_sources(&Sources::gather(None, env)?)
    }

    fn err(env: &[(&str, &str)]) -> String {
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

    #[test]
    fn course_variables_override_the_dsn() {
        let c = config(&[
            ("DB_HOST", "pg.internal"),
            ("DB_PORT", "6432"),
            ("DB_NAME", "catalog"),
            ("DB_USER", "etl"),
            ("DB_PASSWORD", "pw"),
            ("ES_HOST", "http://es:9200"),
        ])
        .unwrap();
        assert_eq!(c.pg.get_dbname(), Some("catalog"));
        assert_eq!(c.pg.get_user(), Some("etl"));
        assert_eq!(c.pg.get_ports(), &[6432]);
        assert_eq!(c.pg.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.es_url.as_str(), "http://es:9200/");
        assert!(matches!(&c.pg.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "pg.internal"));
    }

    fn host(c: &Config) -> String {
        match &c.pg.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        }
    }

    #[test]
    fn libpq_variables_replace_the_builtin_dsn() {
        let c = config(&[("PGHOST", "db.internal"), ("PGPORT", "6543"), ("PGUSER", "etl"), ("PGDATABASE", "catalog"), ("PGPASSWORD", "pw")]).unwrap();
        assert_eq!(host(&c), "db.internal");
        assert_eq!(c.pg.get_hosts().len(), 1);
        assert_eq!(c.pg.get_ports(), &[6543]);
        assert_eq!(c.pg.get_user(), Some("etl"));
        assert_eq!(c.pg.get_dbname(), Some("catalog"));
        assert_eq!(c.pg.get_password(), Some(&b"pw"[..]));
        assert!(err(&[("PGPORT", "x")]).contains("PGPORT"));
    }

    #[test]
    fn an_explicit_dsn_part_beats_libpq_variables() {
        let libpq = [("PGHOST", "other"), ("PGPORT", "6543"), ("PGUSER", "etl"), ("PGDATABASE", "x"), ("PGPASSWORD", "env-pw")];
        let with = |dsn: &'static str| {
            let mut env = vec![("PG_DSN", dsn)];
            env.extend(libpq);
            config(&env).unwrap()
        };
        // The DSN names host, user and database; port and password come from PGPORT, PGPASSWORD.
        let c = with("postgres://app@pg1/movies?application_name=mine&connect_timeout=3");
        assert_eq!((host(&c).as_str(), c.pg.get_ports(), c.pg.get_user(), c.pg.get_dbname()), ("pg1", &[6543][..], Some("app"), Some("movies")));
        assert_eq!(c.pg.get_password(), Some(&b"env-pw"[..]));
        // Replacing the port kept the DSN's other options.
        assert_eq!(c.pg.get_application_name(), Some("mine"));
        assert_eq!(c.pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        // key=value form without a host: PGHOST fills it.
        let c = with("dbname=movies user=app");
        assert_eq!((host(&c).as_str(), c.pg.get_dbname()), ("other", Some("movies")));
        // libpq's rule: a password in the connection string beats PGPASSWORD.
        assert_eq!(with("postgres://app:dsn-pw@pg1/movies").pg.get_password(), Some(&b"dsn-pw"[..]));
    }

    #[test]
    fn pg_password_beats_the_dsn_and_an_explicit_dsn_beats_course_names() {
        let c = config(&[
            ("PG_DSN", "postgres://app:dsn-pw@pg1:5433/movies"),
            ("PG_PASSWORD", "explicit"),
            ("PGPASSWORD", "env-pw"),
            ("DB_HOST", "a"),
            ("DB_NAME", "django"),
            ("DB_USER", "app"),
            ("PGHOST", "b"),
        ])
        .unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"explicit"[..]));
        assert_eq!((host(&c).as_str(), c.pg.get_ports(), c.pg.get_dbname()), ("pg1", &[5433][..], Some("movies")));
        // Never silently: each one that differs is named, with the one that won.
        assert_eq!(
            c.notices,
            [
                "DB_HOST=a is ignored: PG_DSN gives pg1; unset DB_HOST or change PG_DSN",
                "DB_NAME=django is ignored: PG_DSN gives movies; unset DB_NAME or change PG_DSN"
            ]
        );
        let shown = c.render();
        assert!(shown.contains("DB_NAME=django ignored") && !shown.contains("DB_USER=app ignored"), "{shown}");
        // Without an explicit PG_DSN, the course names fill in the parts.
        let c = config(&[("DB_HOST", "a"), ("DB_NAME", "django"), ("PGHOST", "b")]).unwrap();
        assert_eq!((host(&c).as_str(), c.pg.get_dbname()), ("a", Some("django")));
        assert!(c.notices.is_empty());
    }

    #[test]
    fn libpq_sslmodes_and_sslrootcert_are_taken_from_the_dsn() {
        use tokio_postgres::config::SslMode;
        for (mode, expected, tokio) in [
            ("disable", PgSslMode::Disable, SslMode::Disable),
            ("allow", PgSslMode::Allow, SslMode::Prefer),
            ("prefer", PgSslMode::Prefer, SslMode::Prefer),
            ("require", PgSslMode::Require, SslMode::Require),
            ("verify-full", PgSslMode::VerifyFull, SslMode::Require),
        ] {
            let c = config(&[("PG_DSN", &format!("postgres://app@db/movies?sslmode={mode}&application_name=x"))]).unwrap();
            assert_eq!((c.pg_ssl_mode, c.pg.get_ssl_mode(), c.pg.get_application_name()), (expected, tokio, Some("x")), "{mode}");
            let c = config(&[("PG_DSN", &format!("host=db dbname=movies sslmode = {mode} user=app"))]).unwrap();
            assert_eq!((c.pg_ssl_mode, c.pg.get_user()), (expected, Some("app")), "{mode}");
        }
        // Without sslmode pg2es connects in plain text, as it always has.
        assert_eq!(config(&[]).unwrap().pg_ssl_mode, PgSslMode::Disable);

        let c = config(&[("PG_DSN", "postgres://app:pw@db/movies?sslrootcert=%2Fetc%2Fpg%20ca.pem&sslmode=verify-ca")]).unwrap();
        assert_eq!((c.pg_ssl_mode, c.pg_ca_file.as_deref()), (PgSslMode::VerifyCa, Some(Path::new("/etc/pg ca.pem"))));
        let c = config(&[("PG_DSN", r"dbname=movies sslmode=verify-full sslrootcert='/etc/it\'s ca.pem' host=db")]).unwrap();
        assert_eq!((c.pg_ssl_mode, c.pg_ca_file.as_deref()), (PgSslMode::VerifyFull, Some(Path::new("/etc/it's ca.pem"))));
        assert!(matches!(&c.pg.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "db"));
        // sslrootcert=system: the public roots.
        assert_eq!(config(&[("PG_DSN", "postgres://db/movies?sslmode=verify-full&sslrootcert=system")]).unwrap().pg_ca_file, None);
        // PG_CA_FILE wins over sslrootcert.
        let c = config(&[("PG_DSN", "postgres://db/movies?sslmode=require&sslrootcert=/dsn.pem"), ("PG_CA_FILE", "/env.pem")]).unwrap();
        assert_eq!(c.pg_ca_file.as_deref(), Some(Path::new("/env.pem")));
    }

    #[test]
    fn tls_settings_that_cannot_work_are_refused() {
        let e = err(&[("PG_DSN", "postgres://app:hunter2@db/movies?sslmode=verify-everything")]);
        assert!(e.contains("PG_DSN") && e.contains("verify-full") && !e.contains("hunter2"), "{e}");
        // A CA with a mode that does not verify would give a false sense of safety.
        for dsn in ["postgres://db/movies?sslmode=prefer", "postgres://db/movies"] {
            let e = err(&[("PG_DSN", dsn), ("PG_CA_FILE", "/ca.pem")]);
            assert!(e.contains("PG_CA_FILE") && e.contains("verify-full"), "{e}");
        }
        let e = err(&[("PG_DSN", "postgres://db/movies?sslmode=allow&sslrootcert=/ca.pem")]);
        assert!(e.contains("sslrootcert") && e.contains("sslmode=allow"), "{e}");
        // verify-ca against the public roots would accept any web site's certificate.
        let e = err(&[("PG_DSN", "postgres://db/movies?sslmode=verify-ca")]);
        assert!(e.contains("verify-ca") && e.contains("PG_CA_FILE"), "{e}");
        assert!(config(&[("PG_DSN", "postgres://db/movies?sslmode=verify-ca"), ("PG_CA_FILE", "/ca.pem")]).is_ok());
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
        for s in SETTINGS.iter().filter(|s| !matches!(s.env, "PG_DSN" | "PG_PASSWORD" | "ES_USERNAME" | "ES_PASSWORD" | "ES_API_KEY")) {
            line(s.env);
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

    /// The README's configuration table is the operator's reference: every setting must be there.
    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../README.md");
        for s in SETTINGS {
            assert!(readme.contains(&format!("`{}`", s.env)), "README lacks {}", s.env);
        }
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
