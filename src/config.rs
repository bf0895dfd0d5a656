//! Typed configuration from environment variables and an optional TOML file.
//!
//! Precedence: built-in default < config file < environment. Each setting is declared once, in
//! [`crate::settings`]; this module reads and checks the values, builds each stage's settings
//! and `print-config`. `Config::from_sources` only parses and checks values; it never connects
//! anywhere. Secrets are wrapped in [`Secret`] so that neither `Debug` nor `print-config` can
//! show them.

mod dsn;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::names::{is_index_name, replication_name};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::settings::*;
pub use crate::settings::{readme_table, settings_table, Accepts, Setting, SETTINGS};
use crate::sink::{EsAuth, SinkSettings};
use crate::source::{HorizonPolicy, ReplicationSettings, SourceSettings};

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
    /// The source's settings as configured: the connection, its TLS, the schema and the commit
    /// horizon; each document's come from [`Config::source_settings`], with its index.
    pub postgres: SourceSettings,
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
    /// The sink's settings as configured: the nodes, credentials, limits and retries; each
    /// document's come from [`Config::sink_settings`], with its index and dead-letter file.
    pub sink: SinkSettings,
    pub bulk_concurrency: usize,
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
    pub log_format: LogFormat,
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
        SourceSettings { batch_size: self.batch_size, consumer: self.es_index.clone(), ..self.postgres.clone() }
    }

    /// The sink's settings (the document's, after [`Config::for_document`]).
    pub fn sink_settings(&self) -> SinkSettings {
        SinkSettings { index: self.es_index.clone(), max_docs: self.batch_size, dead_letter_file: self.dead_letter_file.clone(), ..self.sink.clone() }
    }

    /// `ETL_BACKOFF_INITIAL_MS` and `ETL_BACKOFF_MAX_SEC`.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.sink.retry
    }

    /// What picks the documents, from PG2ES_DEFINITION, PG2ES_DOCUMENTS, ES_INDEX,
    /// ES_SCHEMA_FILE and ETL_TIMESTAMP_COLUMN.
    pub fn selection(&self) -> Result<crate::catalog::Selection> {
        let schema = match &self.es_schema_file {
            IndexDefinition::Builtin => None,
            IndexDefinition::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!(
                        "{ES_SCHEMA_FILE}='{}': cannot read it ({e}); set {ES_SCHEMA_FILE} to the index definition JSON, or unset it",
                        path.display()
                    ))
                })?;
                Some((format!("{ES_SCHEMA_FILE}='{}'", path.display()), text))
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
                    "{ES_INDEX_PREFIX}: {:?} before the index of document {name} makes {:?}, not an index name (at most 255 bytes); shorten the prefix",
                    self.es_index_prefix, index.name
                )));
            }
            if let Some(other) = docs.iter().find(|d| d.index.name == index.name) {
                return Err(Error::Config(format!(
                    "{ES_INDEX}={} is also the index of document {} ({ES_INDEX_PREFIX} and its definition's index): give document {name} another {ES_INDEX}",
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
        for key in PG_PARTS.iter().flat_map(|(course, libpq)| [*course, *libpq]).chain([PGPASSWORD]) {
            if let Some(v) = env.get(key) {
                sources.values.insert(key, Raw { value: v.clone(), origin: Origin::Env });
            }
        }
        Ok(sources)
    }

    fn read_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(String::new(), |at| format!(":{}", text[..at.start.min(text.len())].matches('\n').count() + 1));
            Error::Config(format!("config file {}{line} is not valid TOML: {}", path.display(), e.message()))
        })?;
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
        // Unset: each document's index is its definition's ([`Config::for_document`] sets it).
        let es_index_set = src.text(&ES_INDEX)?;
        let es_index = es_index_set.clone().unwrap_or_default();
        let auth = match (src.text(&ES_API_KEY)?, src.text(&ES_USERNAME)?, src.text(&ES_PASSWORD)?) {
            (Some(_), Some(_), _) => return Err(Error::Config(format!("{ES_API_KEY} and {ES_USERNAME} are both set: choose one way to authenticate"))),
            (Some(key), None, _) => EsAuth::ApiKey(Secret::new(key)),
            (None, Some(username), Some(password)) => EsAuth::Basic { username, password: Secret::new(password) },
            // Elasticsearch's users all have passwords: without one every request would get 401.
            (None, Some(_), None) => {
                return Err(Error::Config(format!(
                    "{ES_USERNAME} is set but {ES_PASSWORD} is not: set {ES_PASSWORD} (or {ES_PASSWORD}_FILE), or unset {ES_USERNAME}"
                )))
            }
            (None, None, Some(_)) => return Err(Error::Config(format!("{ES_PASSWORD} is set but {ES_USERNAME} is not: set both"))),
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
            return Err(src.bad(ETL_BACKOFF_MAX_SEC.name, &format!("a cap not smaller than {ETL_BACKOFF_INITIAL_MS}")));
        }
        let path = |s: &Setting| src.required(s).map(PathBuf::from);
        let (batch_size, dead_letter_file) = (src.number::<u64>(&ETL_BATCH_SIZE)? as usize, path(&ETL_DEAD_LETTER_FILE)?);
        let sink = SinkSettings {
            urls: node_urls(&src.required(&ES_URL)?).ok_or_else(|| src.bad(ES_URL.name, &ES_URL.expected()))?,
            index: es_index.clone(),
            auth,
            ca_file: src.text(&ES_CA_FILE)?.map(PathBuf::from),
            timeout: Duration::from_secs(src.number::<u64>(&ES_TIMEOUT_SEC)?),
            max_docs: batch_size,
            max_bytes: src.number::<u64>(&ES_BULK_MAX_BYTES)? as usize,
            dead_letter_file: dead_letter_file.clone(),
            dead_letter_max_ratio: src.number::<f64>(&ETL_DEAD_LETTER_MAX_RATIO)?,
            retry: RetryPolicy { initial: backoff_initial, cap: backoff_max },
        };
        let mut config = Config {
            postgres: SourceSettings {
                pg: postgres.config,
                ssl_mode: postgres.ssl_mode,
                ca_file: postgres.ca_file,
                schema: src.required(&PG_SCHEMA)?,
                batch_size,
                consumer: es_index.clone(),
                horizon: HorizonPolicy {
                    clock_skew: Duration::from_millis(src.number::<u64>(&ETL_CLOCK_SKEW_MS)?),
                    max_transaction: Duration::from_secs(src.number::<u64>(&ETL_MAX_TX_SEC)?),
                },
            },
            es_index_explicit: es_index_set.is_some(),
            es_index,
            es_index_prefix: src.text(&ES_INDEX_PREFIX)?.unwrap_or_default(),
            definition: src.text(&PG2ES_DEFINITION)?.map(PathBuf::from),
            documents: src.text(&PG2ES_DOCUMENTS)?.map(|v| v.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect()).unwrap_or_default(),
            es_schema_file: src.text(&ES_SCHEMA_FILE)?.map_or(IndexDefinition::Builtin, |p| IndexDefinition::File(p.into())),
            sink,
            bulk_concurrency: src.number::<u64>(&ES_BULK_CONCURRENCY)? as usize,
            reconcile_every: Some(Duration::from_secs(src.number::<u64>(&ETL_RECONCILE_SEC)?)).filter(|d| !d.is_zero()),
            batch_size,
            metrics_addr: src.text(&PG2ES_METRICS_ADDR)?.and_then(|v| v.parse().ok()),
            state_in_postgres: src.choice(&PG2ES_STATE_STORE)? == "postgres",
            lease: Duration::from_secs(src.number::<u64>(&PG2ES_LEASE_SEC)?),
            instance: src.text(&PG2ES_INSTANCE)?,
            health_max_age: Duration::from_secs(src.number::<u64>(&PG2ES_HEALTH_MAX_AGE_SEC)?),
            source,
            cycle: Duration::from_secs_f64(cycle_sec),
            state_file: path(&ETL_STATE_FILE)?,
            dead_letter_file,
            timestamp_column: match src.text(&ETL_TIMESTAMP_COLUMN)? {
                Some(name) if name != "auto" => TimestampColumn::Named(name),
                _ => TimestampColumn::Auto,
            },
            log_format: if src.choice(&LOG_FORMAT)? == "json" { LogFormat::Json } else { LogFormat::Text },
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
                    (line.value, line.origin) = match &self.sink.auth {
                        EsAuth::None => ("none".into(), line.origin),
                        EsAuth::Basic { username, .. } => (format!("basic, user {username}, password ***"), line.origin),
                        EsAuth::ApiKey(_) => ("api key ***".into(), src.origin(ES_API_KEY.name)),
                    };
                }
                name::ES_URL => line.value = crate::sink::shown_urls(&self.sink.urls),
                name::ES_INDEX if !self.es_index_explicit => {
                    line.value = format!("(unset: the first document's index is the definition's, with {ES_INDEX_PREFIX})")
                }
                name::ES_SCHEMA_FILE if self.es_schema_file == IndexDefinition::Builtin => line.origin = "default".into(),
                name::ETL_CYCLE_SEC => line.value = self.cycle.as_secs_f64().to_string(),
                name::PG_REPLICATION_SLOT | name::PG_PUBLICATION | name::ETL_SLOT_MAX_RETAINED_MB if replication.is_none() => {
                    line.value = format!("(not used: {PG2ES_SOURCE}=polling)");
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
                ES_INDEX.to_string()
            } else if self.es_index_prefix.is_empty() {
                "the definition".to_string()
            } else {
                format!("{ES_INDEX_PREFIX} and the definition")
            };
            out.push_str(&format!("\ndocument {}\n", d.name));
            let line = |out: &mut String, k: &str, v: &dyn fmt::Display| out.push_str(&format!("  {k:<20} {v}\n"));
            line(&mut out, "index", &format!("{}  ({index_origin})", c.es_index));
            line(&mut out, "index schema", &d.index.schema_origin);
            line(&mut out, "state file", &c.state_file.display());
            line(&mut out, "dead-letter file", &c.dead_letter_file.display());
            match &c.source {
                SourceKind::Polling => line(&mut out, "replication slot", &format!("(not used: {PG2ES_SOURCE}=polling)")),
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
mod tests;
