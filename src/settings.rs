//! Every setting declared once, in [`SETTINGS`]: its name, older names, default, accepted values
//! and help. `config` reads the values; every other module names a setting through its
//! declaration (`format!("set {PG_DSN} ...")`, [`Setting`] displays as its name), so a name is
//! written in `src/` once, here (`tests/settings_once.rs` checks it). Help text names another
//! setting as `{NAME}`, filled in by [`expand`].

use std::fmt;

use crate::names::{is_identifier, is_index_name, replication_name, INDEX_NAME_RULE};

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
    pub fn expected(&self) -> String {
        let of = |unit: &str| if unit.is_empty() { String::new() } else { format!(" of {unit}") };
        match &self.accepts {
            Accepts::Text(what) | Accepts::Checked(_, what) => what.to_string(),
            Accepts::Whole(min, max, unit) => format!("a whole number{} from {min} to {max}", of(unit)),
            Accepts::Decimal(min, max, unit) => format!("a number{} from {min} to {max}", of(unit)),
            Accepts::OneOf(words) => words.join(" or "),
        }
    }

    /// The help, with the other names that stand for the setting.
    pub fn full_help(&self) -> String {
        let mut help = expand(self.help);
        for alias in self.aliases {
            help.push_str(&format!("; `{alias}` stands for it"));
        }
        if self.secret {
            help.push_str(&format!("; or read from the file named by `{}_FILE`", self.name));
        }
        help
    }

    /// The default as the README and `pg2es settings` say it.
    pub fn default_text(&self) -> String {
        if self.default.is_empty() {
            expand(self.unset)
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
        pub mod name {
            $(pub const $name: &str = stringify!($name);)*
        }
        /// Every setting, in the order of the README table and `print-config`.
        pub const SETTINGS: &[&Setting] = &[$(&$name),*];
    };
}

// Names that Postgres or Elasticsearch define are checked by the rule of `names`, which the
// catalog uses for a definition's names too, so a setting and a definition are held to one rule.
settings! {
    PG_DSN { default: "postgres://app@127.0.0.1:5432/movies", accepts: Accepts::Text("a connection string"), help: "Postgres connection string (URL or `key=value` form)" }
    PG_PASSWORD { aliases: &["DB_PASSWORD"], secret: true, help: "Postgres password; overrides the one in `{PG_DSN}` (and `PGPASSWORD`, see below; the course's name fills a password `{PG_DSN}` leaves out, as the other `DB_*` parts do)" }
    PG_CA_FILE { unset: "none: public web roots", help: "PEM CA that signs the Postgres server certificate, for `sslmode=require`, `verify-ca` or `verify-full` in `{PG_DSN}` (see \"TLS to Postgres\"); wins over `sslrootcert` in `{PG_DSN}`" }
    PG_SCHEMA { default: "content", accepts: Accepts::Checked(is_identifier, "a plain identifier such as content (letters, digits, _)"), help: "schema of the source tables" }
    ES_URL { aliases: &["ES_HOST"], default: "http://127.0.0.1:9200", accepts: Accepts::Checked(|v| node_urls(v).is_some(), "an http:// or https:// URL such as http://127.0.0.1:9200, or the URLs of several nodes of one cluster, comma-separated"), help: "Elasticsearch or OpenSearch base URL; or the nodes of one cluster, comma-separated (`http://es1:9200,http://es2:9200`): each request goes to the node that answered last, and one that fails is skipped for 10 s while the request goes to the next at once" }
    PG2ES_DEFINITION { unset: "built-in cinema definition", help: "the definition file: which documents to keep, each in its own index (see \"Documents from a definition\" and `docs/definition.md`); unset, the cinema definition built into the binary (`catalog/cinema.toml`: `movies`, `genres`, `persons`)" }
    PG2ES_DOCUMENTS { unset: "all", help: "the documents of the definition to keep, comma-separated, such as `movies`" }
    ES_INDEX { unset: "the definition's", accepts: Accepts::Checked(is_index_name, INDEX_NAME_RULE), help: "the index of the definition's first document (`movies` in the cinema definition), in full: `{ES_INDEX_PREFIX}` is not added to it. Unset, the first document's index is its definition's, with the prefix" }
    ES_INDEX_PREFIX { unset: "none", accepts: Accepts::Checked(|v| is_index_name(v) && v.len() <= 200, "empty, or the start of an index name such as staging_ (at most 200 bytes): lower case, without spaces or any of \\/*?\"<>|,#: and not starting with -, _ or +"), help: "put before every document's index name the definition gives (`staging_` makes `staging_movies`, `staging_genres`, `staging_persons`), and so before the default slot names (`pg2es_staging_genres`); not before an `{ES_INDEX}` that is set. Two deployments of one definition on one cluster (staging and production, two tenants) each need their own (see \"Two deployments on one cluster\"). Empty, every name is the definition's, as before the setting existed" }
    ES_SCHEMA_FILE { unset: "the definition's `index_schema`", help: "index definition (body of `PUT /<index>`) of the first document, used when the index is absent; unset, the definition's `index_schema` (for movies, `catalog/movies.es.json`, a copy of the catalog's `es_schema.json`)" }
    ES_CA_FILE { unset: "none: public web roots", help: "PEM CA certificates for an `https` `{ES_URL}` (added to the public web roots)" }
    ES_USERNAME { help: "Elasticsearch basic-auth user" }
    ES_PASSWORD { secret: true, help: "Elasticsearch basic-auth password (with `{ES_USERNAME}`)" }
    ES_API_KEY { secret: true, help: "API key (base64 `id:key`), instead of basic auth" }
    ES_TIMEOUT_SEC { default: "30", accepts: Accepts::Whole(1, 3_600, "seconds"), help: "time limit of one request to Elasticsearch; a bulk request gets 1 s more per 256 KiB of body. A request that times out is retried like an outage" }
    ES_BULK_MAX_BYTES { default: "8388608", accepts: Accepts::Whole(1024, 1 << 30, "bytes"), help: "largest bulk request body, in bytes" }
    ES_BULK_CONCURRENCY { default: "2", accepts: Accepts::Whole(1, 64, "requests"), help: "bulk requests in flight at once; progress is still saved in order" }
    ETL_BATCH_SIZE { aliases: &["BATCH_SIZE"], default: "500", accepts: Accepts::Whole(1, 100_000, ""), help: "rows read per query and documents per bulk request" }
    PG2ES_SOURCE { default: "polling", accepts: Accepts::OneOf(&["polling", "replication"]), help: "how changes are found: `polling` (timestamps, no privileges needed) or `replication` (logical replication: a publication and a `pgoutput` slot; see \"Change capture through logical replication\")" }
    PG_REPLICATION_SLOT { unset: "`pg2es_<index>`", accepts: Accepts::Checked(|v| replication_name(v) == v, "a name of lower-case letters, digits and _ (at most 63)"), help: "the one `pgoutput` replication slot of `{PG2ES_SOURCE}=replication`, read for every document of the run, created when missing; unset, `pg2es_` and the first document's index (releases before one slot per run gave the other documents `pg2es_<index>`, or `<{PG_REPLICATION_SLOT}>_<name>`: read until they reach it, then dropped)" }
    PG_PUBLICATION { unset: "`pg2es_<{PG_SCHEMA}>`", accepts: Accepts::Checked(|v| replication_name(v) == v, "a name of lower-case letters, digits and _ (at most 63)"), help: "the one publication of `{PG2ES_SOURCE}=replication`, on the tables of every document, created when missing (tables added when pg2es may)" }
    ETL_SLOT_MAX_RETAINED_MB { default: "1024", accepts: Accepts::Whole(1, 1 << 30, "MiB"), help: "with `{PG2ES_SOURCE}=replication`, a warning when the slot retains more WAL than this" }
    ETL_CYCLE_SEC { default: "10", accepts: Accepts::Decimal(0.1, 86_400.0, "seconds"), help: "pause between two cycles in continuous mode, from `0.1` to `86400` seconds (fractions allowed); `0.2` by default with `{PG2ES_SOURCE}=replication`" }
    ETL_STATE_FILE { default: "state/pg2es-state.json", accepts: Accepts::Text("a file path"), help: "durable watermarks; `<file>.lock` keeps one instance" }
    ETL_DEAD_LETTER_FILE { default: "state/pg2es-dead-letter.jsonl", accepts: Accepts::Text("a file path"), help: "documents Elasticsearch refused for good (JSON lines: id, index, status, reason, time)" }
    ETL_RECONCILE_SEC { default: "300", accepts: Accepts::Whole(0, 604_800, "seconds"), help: "how often the index's document ids are checked against Postgres's records, and documents of deleted records removed (also after a full load into an index that was not empty); `0`: only after a full load" }
    ETL_DEAD_LETTER_MAX_RATIO { default: "0.5", accepts: Accepts::Decimal(0.0, 1.0, ""), help: "when more than this share of documents is refused for good (over the last 100 sent, counted from 10 on), the mapping is wrong rather than the rows: pg2es stops with exit 1 and a hint, saves no progress and writes none of them to the dead-letter file. `1` turns the check off" }
    ETL_TIMESTAMP_COLUMN { default: "auto", accepts: Accepts::Checked(|v| v == "auto" || is_identifier(v), "auto, or a column name such as updated_at or modified"), help: "change column: `auto` (`updated_at`, then `modified`; link tables fall back to `created_at`, `created`) or a name, used where a table has it (the others are `auto`); a name no table of `{PG_SCHEMA}` has is refused" }
    ETL_CLOCK_SKEW_MS { default: "1000", accepts: Accepts::Whole(0, 3_600_000, "milliseconds"), help: "how far the clocks that write change timestamps (application servers) may lag Postgres' clock" }
    ETL_MAX_TX_SEC { default: "60", accepts: Accepts::Whole(0, 86_400, "seconds"), help: "longest write transaction expected; used only when pg2es cannot see other sessions' open transactions (grant it `pg_read_all_stats`)" }
    ETL_BACKOFF_INITIAL_MS { default: "200", accepts: Accepts::Whole(1, 60_000, "milliseconds"), help: "first retry delay after a connection loss" }
    ETL_BACKOFF_MAX_SEC { default: "30", accepts: Accepts::Whole(1, 3_600, "seconds"), help: "cap of the retry delay" }
    LOG_FORMAT { default: "text", accepts: Accepts::OneOf(&["text", "json"]), help: "`text` or `json`; the level comes from `RUST_LOG` (default `info`)" }
    PG2ES_STATE_STORE { default: "file", accepts: Accepts::OneOf(&["file", "postgres"]), help: "where each document's state is kept: `file` (`{ETL_STATE_FILE}`, one `run` per file on one host) or `postgres` (table `pg2es.state` of the source database, keyed by the state file's name; several `run` processes with the same settings share the documents, one leader each, the others standing by: see \"Running in production\")" }
    PG2ES_LEASE_SEC { default: "6", accepts: Accepts::Whole(2, 600, "seconds"), help: "with `{PG2ES_STATE_STORE}=postgres`, how long a leader's lease lasts unrenewed (renewed every third of it): a standby takes over a paused or cut-off leader after this, a killed one within a second or two" }
    PG2ES_INSTANCE { unset: "`<host>:<pid>`", help: "with `{PG2ES_STATE_STORE}=postgres`, this process's name in `pg2es.leases` and `pg2es.instances` and in the logs" }
    PG2ES_METRICS_ADDR { unset: "not served", accepts: Accepts::Checked(|v| v.parse::<std::net::SocketAddr>().is_ok(), "an address and port such as 127.0.0.1:9464"), help: "`host:port` where `pg2es run` serves `/metrics` and `/healthz` (for example `127.0.0.1:9464`); unset, nothing is served" }
    PG2ES_HEALTH_MAX_AGE_SEC { default: "120", accepts: Accepts::Whole(1, 604_800, "seconds"), help: "`/healthz` and `pg2es status` fail when a document has stored nothing for longer than this, or has waited for Postgres or Elasticsearch for longer" }
}

/// The nodes of `ES_URL`: each an http(s) URL with a host.
pub fn node_urls(v: &str) -> Option<Vec<reqwest::Url>> {
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

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// `text` with each `{NAME}` of a declared setting replaced by its name (help and `unset` texts
/// name other settings this way); anything else in braces is kept.
pub fn expand(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let key = rest[open + 1..].split('}').next().unwrap_or_default();
        match SETTINGS.iter().find(|s| s.name == key) {
            Some(s) if rest[open + 1 + key.len()..].starts_with('}') => {
                out.push_str(s.name);
                rest = &rest[open + key.len() + 2..];
            }
            _ => {
                out.push('{');
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The parts of the Postgres connection that other variables name, in precedence order after an
/// explicit part of `PG_DSN`: the course's name (`DB_*`), then libpq's (`PG*`). The password is
/// `PG_PASSWORD`'s older name and libpq's [`PGPASSWORD`].
pub const PG_PARTS: [(&str, &str); 4] = [("DB_HOST", "PGHOST"), ("DB_PORT", "PGPORT"), ("DB_USER", "PGUSER"), ("DB_NAME", "PGDATABASE")];

/// libpq's password variable, read as psql and other libpq-based tools do.
pub const PGPASSWORD: &str = "PGPASSWORD";

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's configuration table is the operator's reference: it is the declarations.
    #[test]
    fn the_readme_table_is_the_list() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("<!-- settings table: generated from src/settings.rs SETTINGS -->\n")
            .nth(1)
            .and_then(|t| t.split("<!-- end of settings table -->").next());
        assert_eq!(table, Some(readme_table().as_str()), "put settings::readme_table() between the README's markers");
    }
}
