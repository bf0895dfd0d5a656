//! Delete capture: the log that opt-in triggers write when a delete changes a record's document.
//!
//! Polling by timestamp cannot see a row that is gone. The triggers generated from the documents
//! (`catalog/triggers.rs`, their functions in `sql/capture.sql`)
//! record, in `pg2es.film_changes`, the key of every record to rebuild (a deleted root, a root that
//! lost a link, every root of a deleted related row; NULL after a `TRUNCATE`), stamped with
//! the writing transaction's id. A reader takes the log by transaction-id window
//! `[from, boundary)`: every transaction below [`boundary`] has ended, so that part of the log is
//! final. Several pg2es instances can read the same log; each records its position with
//! [`acknowledge`], and rows below the oldest position are trimmed.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls};

use super::PgTls;
use crate::catalog::qualified;
use crate::catalog::triggers::TriggerSet;
use crate::error::{Error, Result};

const DDL: &str = include_str!("../../sql/capture.sql");

/// The trigger functions of pg2es before definitions: their triggers are dropped by `install`
/// (which puts the generated ones in their place) and by `remove`.
const LEGACY_FUNCTIONS: [&str; 8] = [
    "log_deleted_films",
    "log_unlinked_films",
    "log_moved_links",
    "log_linked_films",
    "log_truncate",
    "log_written_films",
    "log_written_links",
    "log_renamed_linked",
];

/// The functions of `sql/capture.sql`, and the legacy ones, dropped once no trigger uses them.
const FUNCTIONS: &str =
    "pg2es.capture_rows(), pg2es.capture_moved(), pg2es.capture_referencing(), pg2es.capture_referencing_written(), pg2es.capture_truncate(), \
     pg2es.log_deleted_films(), pg2es.log_unlinked_films(), pg2es.log_moved_links(), pg2es.log_linked_films(), pg2es.log_truncate(), \
     pg2es.log_written_films(), pg2es.log_written_links(), pg2es.log_renamed_linked()";

/// The triggers on tables of schema `n.nspname` that call a function of schema pg2es (`p`): the
/// FROM clause of every question about what pg2es installed, whatever the definition.
macro_rules! pg2es_triggers {
    () => {
        "pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
         JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace"
    };
}

/// Drops the triggers of pg2es on `schema`'s tables, those whose function also meets `also` (SQL
/// on `p`, or nothing).
fn drop_triggers_sql(schema: &str, also: &str) -> String {
    let lit = quote_literal(schema);
    format!(
        "DO $$\nDECLARE r record;\nBEGIN\n    FOR r IN SELECT t.tgname, c.relname FROM {}\n             WHERE n.nspname = {lit} AND pn.nspname = 'pg2es' {also} LOOP\n        EXECUTE format('DROP TRIGGER %I ON %I.%I', r.tgname, {lit}, r.relname);\n    END LOOP;\nEND $$;\n",
        pg2es_triggers!()
    )
}

/// Drops the triggers of pg2es before definitions on the schema's tables (they are replaced in
/// the same transaction, so the log never misses a change).
fn legacy_drop_sql(schema: &str) -> String {
    let list = LEGACY_FUNCTIONS.iter().map(|f| quote_literal(f)).collect::<Vec<_>>().join(", ");
    drop_triggers_sql(schema, &format!("AND p.proname IN ({list})"))
}

/// The statements that install the capture of `set` (idempotent): the log and functions, the
/// legacy triggers dropped, the delete triggers, and with `writes` the write capture's.
pub fn ddl(set: &TriggerSet, writes: bool) -> String {
    format!("{DDL}\n{}{}{}", legacy_drop_sql(&set.schema), set.create_sql(writes), drop_functions_sql())
}

/// The DDL for an owner to apply by hand (`pg2es delete-capture print`): [`ddl`], first dropping
/// the schema's positions in the log when the log or a trigger is missing, as `install` does.
pub fn print_ddl(set: &TriggerSet, writes: bool) -> String {
    let wanted: Vec<(&str, &str)> = set.triggers.iter().filter(|t| writes || !t.writes).map(|t| (t.table.as_str(), t.name.as_str())).collect();
    let (tables, triggers): (Vec<&str>, Vec<&str>) = wanted.into_iter().unzip();
    let list = |names: Vec<&str>| names.iter().map(|n| quote_literal(n)).collect::<Vec<_>>().join(", ");
    format!(
        "-- Changes made while the log or a trigger was missing were not recorded: positions in the log\n\
         -- are dropped then, so each pg2es reading it loads every document again instead of trusting them.\n\
         DO $$\nBEGIN\n    IF pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL AND (pg_catalog.to_regclass('pg2es.film_changes') IS NULL\n       OR EXISTS (SELECT 1 FROM unnest(ARRAY[{}], ARRAY[{}]) AS want(tbl, name)\n                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgname = want.name AND t.tgenabled <> 'D'\n                                      AND t.tgrelid = pg_catalog.to_regclass(quote_ident({schema}) || '.' || quote_ident(want.tbl))))) THEN\n        DELETE FROM pg2es.consumers WHERE source_schema = {schema} OR pg_catalog.to_regclass('pg2es.film_changes') IS NULL;\n    END IF;\nEND $$;\n\n{}",
        list(tables),
        list(triggers),
        ddl(set, writes),
        schema = quote_literal(&set.schema),
    )
}

/// The statements that remove the capture from `schema`: every trigger of pg2es on its tables
/// (whatever the definition), and the functions once no schema uses them. The log tables are
/// left with their rows (other schemas may share them).
pub fn remove_ddl(schema: &str) -> String {
    let mut sql = format!("-- Removes pg2es change capture from schema {schema}; the tables in schema pg2es are kept.\n{}", drop_triggers_sql(schema, ""));
    sql.push_str(&drop_functions_sql());
    sql.push_str(&format!(
        "-- The instances reading this schema's log learn that it stopped.\nDO $$\nBEGIN\n    IF pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL THEN\n        DELETE FROM pg2es.consumers WHERE source_schema = {};\n    END IF;\nEND $$;\n",
        quote_literal(schema)
    ));
    sql
}

/// Drops the generated functions no trigger calls any more (a trigger dropped, or a definition
/// changed), and the functions of earlier releases once no trigger uses any function of pg2es.
fn drop_functions_sql() -> String {
    format!(
        "DO $$\nDECLARE f record;\nBEGIN\n    FOR f IN SELECT p.oid::regprocedure AS name FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace\n             WHERE n.nspname = 'pg2es' AND p.proname LIKE 'capture\\_%' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid) LOOP\n        EXECUTE 'DROP FUNCTION ' || f.name;\n    END LOOP;\n    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid\n                   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pg2es' AND p.proname NOT LIKE 'capture\\_%') THEN\n        DROP FUNCTION IF EXISTS {FUNCTIONS};\n    END IF;\nEND $$;\n"
    )
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// [`connect`] with the source's settings (its TLS built from them): for commands.
pub async fn connect_with(settings: &super::SourceSettings) -> Result<Client> {
    connect(&settings.pg, &PgTls::new(settings)?).await
}

/// A plain connection for administering the log (the pipeline reads it through its own).
pub async fn connect(pg: &tokio_postgres::Config, tls: &PgTls) -> Result<Client> {
    let client = match tls {
        PgTls::Off => {
            let (client, connection) = pg.connect(NoTls).await.map_err(Error::postgres_connect("connect"))?;
            tokio::spawn(super::drive(connection));
            client
        }
        PgTls::Rustls(make) => {
            let (client, connection) = pg.connect(make.clone()).await.map_err(Error::postgres_connect("connect with tls"))?;
            tokio::spawn(super::drive(connection));
            client
        }
    };
    Ok(client)
}

/// What of the capture is on the schema: the log table, and the triggers that are not there
/// (or disabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub log_table: bool,
    /// `(table, trigger)` of the delete capture missing or disabled.
    pub missing: Vec<(String, String)>,
    /// `(table, trigger)` of the write capture missing or disabled.
    pub writes_missing: Vec<(String, String)>,
    /// How many triggers each part has.
    pub deletes_wanted: usize,
    pub writes_wanted: usize,
    /// Triggers of pg2es before definitions are on the schema (replaced by `install`).
    pub legacy: bool,
    /// Among them, the write capture's.
    pub legacy_writes: bool,
    /// They stand in for the generated ones (see [`Capture::with_legacy_for`]).
    pub legacy_in_use: bool,
    /// Which columns the log has (an earlier release's log gets the others at `install`).
    pub shape: LogShape,
}

impl Capture {
    /// For the definition's first document (`first`), the capture of a release before
    /// definitions stands in for the generated one until `install` replaces it: its triggers log
    /// that document's keys (as rows without a document, which it reads), so an upgrade neither
    /// loses the log's position nor reloads.
    pub fn with_legacy_for(mut self, first: bool) -> Capture {
        if first && self.legacy && self.missing.len() == self.deletes_wanted {
            self.missing.clear();
            self.legacy_in_use = true;
            if self.legacy_writes && self.writes_missing.len() == self.writes_wanted {
                self.writes_missing.clear();
            }
        }
        self
    }

    /// The delete capture and the write capture: every change of a document is logged.
    pub fn writes_complete(&self) -> bool {
        self.complete() && self.writes_missing.is_empty()
    }

    /// The log table and every trigger: deletes are recorded.
    pub fn complete(&self) -> bool {
        self.log_table && self.missing.is_empty()
    }

    /// No trigger of the delete capture at all.
    pub fn nothing_installed(&self) -> bool {
        self.missing.len() == self.deletes_wanted
    }

    /// What is missing, for a log line: `pg2es.film_changes; genre_film_work: pg2es_movies_deleted, pg2es_movies_truncated`.
    pub fn describe_missing(&self) -> String {
        let mut parts = Vec::new();
        if !self.log_table {
            parts.push("table pg2es.film_changes".to_string());
        }
        let mut tables: Vec<&str> = self.missing.iter().map(|(t, _)| t.as_str()).collect();
        tables.dedup();
        for table in tables {
            let names: Vec<&str> = self.missing.iter().filter(|(t, _)| t == table).map(|(_, n)| n.as_str()).collect();
            parts.push(format!("{table}: {}", names.join(", ")));
        }
        parts.join("; ")
    }
}

/// Which parts of the capture of `set` are on its schema now.
pub async fn status(client: &impl GenericClient, set: &TriggerSet) -> Result<Capture> {
    let all: Vec<(&str, &str, bool)> = set.triggers.iter().map(|t| (t.table.as_str(), t.name.as_str(), t.writes)).collect();
    let tables: Vec<&str> = all.iter().map(|t| t.0).collect();
    let triggers: Vec<&str> = all.iter().map(|t| t.1).collect();
    let legacy: Vec<&str> = LEGACY_FUNCTIONS.to_vec();
    let context = "check the capture triggers";
    let row = client
        .query_one(
            concat!(
                "SELECT pg_catalog.to_regclass('pg2es.film_changes') IS NOT NULL, \
                    ARRAY(SELECT want.n FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS want(tbl, name, n) \
                          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                                            WHERE t.tgrelid = pg_catalog.to_regclass(quote_ident($1) || '.' || quote_ident(want.tbl)) \
                                              AND t.tgname = want.name AND t.tgenabled <> 'D') \
                          ORDER BY want.n), \
                    legacy.any, legacy.writes, \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass('pg2es.film_changes') \
                            AND a.attname = 'document' AND NOT a.attisdropped), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass('pg2es.film_changes') \
                            AND a.attname = 'key' AND NOT a.attisdropped) \
                 FROM (SELECT count(*) > 0 AS any, count(*) FILTER (WHERE p.proname LIKE 'log\\_written%') > 0 AS writes FROM ",
                pg2es_triggers!(),
                " WHERE n.nspname = $1 AND pn.nspname = 'pg2es' AND p.proname = ANY($4) AND t.tgenabled <> 'D') legacy"
            ),
            &[&set.schema, &tables, &triggers, &legacy],
        )
        .await
        .map_err(Error::postgres(context))?;
    let log_table: bool = row.try_get(0).map_err(Error::postgres(context))?;
    let missing: Vec<i64> = row.try_get(1).map_err(Error::postgres(context))?;
    let legacy: bool = row.try_get(2).map_err(Error::postgres(context))?;
    let legacy_writes: bool = row.try_get(3).map_err(Error::postgres(context))?;
    let documented: bool = row.try_get(4).map_err(Error::postgres(context))?;
    let keyed: bool = row.try_get(5).map_err(Error::postgres(context))?;
    let shape = match (documented, keyed) {
        (true, true) => LogShape::Keyed,
        (true, false) => LogShape::Documented,
        (false, _) => LogShape::Undocumented,
    };
    let (mut deletes, mut writes) = (Vec::new(), Vec::new());
    for n in missing {
        if let Some((table, name, w)) = usize::try_from(n - 1).ok().and_then(|i| all.get(i)) {
            let entry = (table.to_string(), name.to_string());
            if *w {
                writes.push(entry)
            } else {
                deletes.push(entry)
            }
        }
    }
    Ok(Capture {
        log_table,
        missing: deletes,
        writes_missing: writes,
        deletes_wanted: all.iter().filter(|t| !t.2).count(),
        writes_wanted: all.iter().filter(|t| t.2).count(),
        legacy,
        legacy_writes,
        legacy_in_use: false,
        shape,
    })
}

/// True when the log table exists and every delete trigger of `set` is there, enabled.
pub async fn installed(client: &impl GenericClient, set: &TriggerSet) -> Result<bool> {
    Ok(status(client, set).await?.complete())
}

/// [`installed`], with an earlier release's capture counted for the first document.
pub async fn installed_for(client: &impl GenericClient, set: &TriggerSet, first: bool) -> Result<bool> {
    Ok(status(client, set).await?.with_legacy_for(first).complete())
}

/// The transaction id below which every transaction has ended: log rows under it are final.
/// Held back by the oldest open transaction of the whole server (prepared ones too).
pub async fn boundary(client: &impl GenericClient) -> Result<u64> {
    let row = client
        .query_one("SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text", &[])
        .await
        .map_err(Error::postgres("read the transaction boundary"))?;
    let text: String = row.try_get(0).map_err(Error::postgres("read the transaction boundary"))?;
    text.parse().map_err(|_| Error::SourceSchema(format!("transaction id {text:?} is not a number")))
}

/// One page of the log's window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage {
    /// Records to rebuild or delete, as the text of their keys: distinct, ascending (by bytes),
    /// after the page's `after`.
    pub keys: Vec<String>,
    /// A table was truncated in the window: the whole catalog must be reloaded.
    pub reload: bool,
}

/// The window's page of keys: `$key` is a row's key as text, `$filter` chooses the document's rows.
macro_rules! keys_between_sql {
    ($key:literal, $filter:literal) => {
        concat!(
            "SELECT EXISTS (SELECT 1 FROM pg2es.film_changes \
                    WHERE source_schema = $1 AND xid >= $2::text::xid8 AND xid < $3::text::xid8 AND ",
            $key,
            " IS NULL AND ",
            $filter,
            "), ARRAY(SELECT DISTINCT ",
            $key,
            " COLLATE \"C\" FROM pg2es.film_changes \
                    WHERE source_schema = $1 AND xid >= $2::text::xid8 AND xid < $3::text::xid8 AND ",
            $filter,
            " AND ",
            $key,
            " IS NOT NULL AND ($4::text IS NULL OR ",
            $key,
            " COLLATE \"C\" > $4::text COLLATE \"C\") ORDER BY 1 LIMIT $5)"
        )
    };
}

/// The document's rows (`$6`), and for the first document (`$7`) the rows without a document;
/// the key in `key` (this release's triggers) or `film_id` (earlier ones').
const KEYS_BETWEEN_SQL: &str = keys_between_sql!("COALESCE(key, film_id::text)", "(document = $6 OR ($7 AND document IS NULL))");

/// A log before its `key` column: every key is a uuid, in `film_id`.
const KEYS_BETWEEN_UNKEYED_SQL: &str = keys_between_sql!("film_id::text", "(document = $6 OR ($7 AND document IS NULL))");

/// An earlier release's log, without the `document` column: every row is the first document's.
const KEYS_BETWEEN_UNDOCUMENTED_SQL: &str = keys_between_sql!("film_id::text", "($6::text IS NOT NULL AND $7)");

/// Which document's rows of the log to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDocument {
    pub name: String,
    /// The definition's first document also reads the rows the triggers of pg2es before
    /// definitions wrote (with no document).
    pub first: bool,
    /// Which columns the log has ([`Capture::shape`]): an earlier release's log, not installed
    /// again yet, may have no `document` (all its rows are the first document's) or no `key`.
    pub shape: LogShape,
}

/// The columns of the log: each release of pg2es added one, at `install`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogShape {
    /// `film_id` only.
    Undocumented,
    /// `document`, and the uuid `film_id`.
    Documented,
    /// `document` and the key as text in `key` (`film_id` still read: earlier triggers wrote it).
    #[default]
    Keyed,
}

/// Up to `limit` keys logged for `schema`'s `document` by transactions in `[from, to)`, after `after`.
#[allow(clippy::too_many_arguments)]
pub async fn keys_between(
    client: &impl GenericClient,
    schema: &str,
    document: &LogDocument,
    from: u64,
    to: u64,
    after: Option<&str>,
    limit: usize,
) -> Result<LogPage> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = match document.shape {
        LogShape::Keyed => KEYS_BETWEEN_SQL,
        LogShape::Documented => KEYS_BETWEEN_UNKEYED_SQL,
        LogShape::Undocumented => KEYS_BETWEEN_UNDOCUMENTED_SQL,
    };
    let row = client
        .query_one(sql, &[&schema, &from.to_string(), &to.to_string(), &after, &limit, &document.name, &document.first])
        .await
        .map_err(Error::postgres("read the delete log"))?;
    Ok(LogPage {
        reload: row.try_get(0).map_err(Error::postgres("read the delete log"))?,
        keys: row.try_get(1).map_err(Error::postgres("read the delete log"))?,
    })
}

/// Trims what every consumer of `schema`'s log seen in the last 7 days has read (a consumer gone
/// longer holds nothing back).
const TRIM_SQL: &str = "DELETE FROM pg2es.film_changes WHERE source_schema = $1 AND xid < \
       (SELECT done_xid FROM pg2es.consumers WHERE source_schema = $1 AND seen_at > now() - interval '7 days' \
        ORDER BY done_xid LIMIT 1)";

/// Records that `consumer` has read `schema`'s log below `done` (a new consumer starts there),
/// and trims what every consumer seen in the last 7 days has read.
pub async fn acknowledge(client: &impl GenericClient, schema: &str, consumer: &str, done: u64) -> Result<()> {
    let done = done.to_string();
    client
        .execute(
            "INSERT INTO pg2es.consumers (source_schema, consumer, done_xid) VALUES ($1, $2, $3::text::xid8) \
             ON CONFLICT (source_schema, consumer) DO UPDATE SET done_xid = EXCLUDED.done_xid, seen_at = now()",
            &[&schema, &consumer, &done],
        )
        .await
        .map_err(Error::postgres("record the delete log position"))?;
    client.execute(TRIM_SQL, &[&schema]).await.map_err(Error::postgres("trim the delete log"))?;
    Ok(())
}

/// Whether a consumer's position in the log still stands for every delete since it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The position was moved forward: the log holds every delete after it.
    Kept,
    /// The consumer's row is gone: `install` dropped it because the log or a trigger had been
    /// missing (deletes meanwhile were not recorded), or `remove` ran, or the table was recreated.
    Dropped,
    /// The consumer was not seen for over 7 days: others may have trimmed rows it had not read.
    Expired,
}

/// Moves an existing consumer's position forward and trims what every consumer has read; says
/// whether the position was still there to move. Unlike [`acknowledge`] it never creates the
/// row: a missing row means the log lost deletes after the position.
pub async fn advance(client: &impl GenericClient, schema: &str, consumer: &str, done: u64) -> Result<Continuity> {
    let context = "record the delete log position";
    let row = client
        .query_opt(
            "WITH old AS (SELECT seen_at FROM pg2es.consumers WHERE source_schema = $1 AND consumer = $2 FOR UPDATE) \
             UPDATE pg2es.consumers c SET done_xid = $3::text::xid8, seen_at = now() FROM old \
             WHERE c.source_schema = $1 AND c.consumer = $2 \
             RETURNING old.seen_at > now() - interval '7 days'",
            &[&schema, &consumer, &done.to_string()],
        )
        .await
        .map_err(Error::postgres(context))?;
    let continuity = match row {
        None => Continuity::Dropped,
        Some(row) if row.try_get::<_, bool>(0).map_err(Error::postgres(context))? => Continuity::Kept,
        Some(_) => Continuity::Expired,
    };
    client.execute(TRIM_SQL, &[&schema]).await.map_err(Error::postgres("trim the delete log"))?;
    Ok(continuity)
}

/// True when `consumer` has a position in `schema`'s log (it read the log once and the triggers
/// were not installed again since).
pub async fn is_consumer(client: &impl GenericClient, schema: &str, consumer: &str) -> Result<bool> {
    let context = "read the delete log consumers";
    let row = client.query_one("SELECT pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL", &[]).await.map_err(Error::postgres(context))?;
    if !row.try_get::<_, bool>(0).map_err(Error::postgres(context))? {
        return Ok(false);
    }
    let row = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg2es.consumers WHERE source_schema = $1 AND consumer = $2)", &[&schema, &consumer])
        .await
        .map_err(Error::postgres(context))?;
    row.try_get(0).map_err(Error::postgres(context))
}

/// For a replication-mode instance, which does not read the log: drops `consumer`'s position in
/// `schema`'s log and trims every row that no polling consumer seen in the last 7 days still
/// needs (all rows below the current [`boundary`] when there is none). Returns the rows deleted;
/// 0 when the log tables do not exist.
pub async fn trim_for_replication(client: &impl GenericClient, schema: &str, consumer: &str) -> Result<u64> {
    let context = "trim the delete log";
    let row = client
        .query_one("SELECT pg_catalog.to_regclass('pg2es.film_changes') IS NOT NULL AND pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL", &[])
        .await
        .map_err(Error::postgres(context))?;
    if !row.try_get::<_, bool>(0).map_err(Error::postgres(context))? {
        return Ok(0);
    }
    // One statement: the consumer's row is ignored by the subquery rather than deleted first
    // (a data-modifying CTE's effect is not visible to the rest of its statement).
    client
        .execute(
            "WITH gone AS (DELETE FROM pg2es.consumers WHERE source_schema = $1 AND consumer = $2) \
             DELETE FROM pg2es.film_changes WHERE source_schema = $1 AND xid < COALESCE( \
               (SELECT done_xid FROM pg2es.consumers WHERE source_schema = $1 AND consumer <> $2 \
                  AND seen_at > now() - interval '7 days' ORDER BY done_xid LIMIT 1), \
               pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()))",
            &[&schema, &consumer],
        )
        .await
        .map_err(Error::postgres(context))
}

/// How long `install` and `remove` wait for each table's lock by default.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// What `install` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// Positions of pg2es instances dropped because the log or a trigger had been missing
    /// (changes meanwhile were not recorded): each of them loads every document again.
    pub positions_dropped: u64,
    /// Triggers of pg2es before definitions replaced by the generated ones.
    pub replaced_legacy: bool,
}

/// Installs the capture of `set` in one transaction, waiting at most [`LOCK_TIMEOUT`] for each
/// table.
pub async fn install(client: &impl GenericClient, set: &TriggerSet) -> Result<Installed> {
    install_with(client, set, LOCK_TIMEOUT).await
}

/// [`install`] with another lock timeout.
pub async fn install_with(client: &impl GenericClient, set: &TriggerSet, lock_timeout: Duration) -> Result<Installed> {
    install_capture(client, set, lock_timeout, false).await
}

/// Installs the delete capture and the write capture (`install --writes`).
pub async fn install_writes(client: &impl GenericClient, set: &TriggerSet) -> Result<Installed> {
    install_capture(client, set, LOCK_TIMEOUT, true).await
}

async fn install_capture(client: &impl GenericClient, set: &TriggerSet, lock_timeout: Duration, writes: bool) -> Result<Installed> {
    let database = schema_database(client, &set.schema).await?;
    begin(client, lock_timeout, Action::Install.what()).await?;
    let outcome = install_locked(client, set, writes).await;
    finish(client, outcome, Action::Install, &set.schema, &database).await
}

async fn install_locked(client: &impl GenericClient, set: &TriggerSet, writes: bool) -> Result<Installed, Failure> {
    let schema = set.schema.as_str();
    for table in &set.tables {
        lock(client, schema, table, "ACCESS EXCLUSIVE").await?;
    }
    // Read under the locks: no trigger can come or go until the commit.
    let before = status(client, set).await?;
    if before.log_table {
        // Other schemas' triggers write to it; the index below needs it still.
        lock(client, "pg2es", "film_changes", "SHARE").await?;
    }
    check_shape(client, "film_changes", &FILM_CHANGES).await?;
    check_shape(client, "consumers", &CONSUMERS).await?;
    client.batch_execute(&ddl(set, writes)).await.map_err(Failure::Sql)?;
    // A position in the log stands for "every change since is in the log". A new log, or
    // triggers that were missing, break that: the instances reload instead of trusting it. The
    // triggers of pg2es before definitions, replaced here in one transaction, logged the same
    // deletes for the first document: an upgrade keeps the positions.
    let upgrade = before.legacy && before.missing.len() == before.deletes_wanted;
    let positions_dropped = if !before.log_table {
        client.execute("DELETE FROM pg2es.consumers", &[]).await.map_err(Failure::Sql)?
    } else if (!before.missing.is_empty() && !upgrade) || (writes && !before.writes_missing.is_empty() && !(upgrade && before.legacy_writes)) {
        // Writes that left the timestamps alone were not seen before the write capture either.
        client.execute("DELETE FROM pg2es.consumers WHERE source_schema = $1", &[&schema]).await.map_err(Failure::Sql)?
    } else {
        0
    };
    Ok(Installed { positions_dropped, replaced_legacy: before.legacy })
}

/// What `remove` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Triggers dropped (0: none was installed on the schema).
    pub triggers: usize,
    /// The database the schema is in.
    pub database: String,
}

/// Removes every trigger of pg2es (and the functions once unused) from `schema` in one
/// transaction, and the schema's positions in the log (the instances reading it learn that it
/// stopped). A schema that does not exist is an error naming it and the database.
pub async fn remove(client: &impl GenericClient, schema: &str) -> Result<Removed> {
    remove_with(client, schema, LOCK_TIMEOUT).await
}

/// [`remove`] with another lock timeout.
pub async fn remove_with(client: &impl GenericClient, schema: &str, lock_timeout: Duration) -> Result<Removed> {
    let database = schema_database(client, schema).await?;
    begin(client, lock_timeout, Action::Remove.what()).await?;
    let outcome = remove_locked(client, schema).await;
    let triggers = finish(client, outcome, Action::Remove, schema, &database).await?;
    Ok(Removed { triggers, database })
}

async fn remove_locked(client: &impl GenericClient, schema: &str) -> Result<usize, Failure> {
    // The tables with a trigger of pg2es, and how many each has.
    let rows = client
        .query(
            concat!("SELECT c.relname::text, count(*) FROM ", pg2es_triggers!(), " WHERE n.nspname = $1 AND pn.nspname = 'pg2es' GROUP BY 1 ORDER BY 1"),
            &[&schema],
        )
        .await
        .map_err(Failure::Sql)?;
    let mut count = 0i64;
    for row in &rows {
        count += row.try_get::<_, i64>(1).map_err(Failure::Sql)?;
    }
    for row in &rows {
        let table: String = row.try_get(0).map_err(Failure::Sql)?;
        lock(client, schema, &table, "ACCESS EXCLUSIVE").await?;
    }
    if count > 0 {
        client.batch_execute(&remove_ddl(schema)).await.map_err(Failure::Sql)?;
    } else {
        let consumers = client.query_one("SELECT pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL", &[]).await.map_err(Failure::Sql)?;
        if consumers.try_get::<_, bool>(0).map_err(Failure::Sql)? {
            client.execute("DELETE FROM pg2es.consumers WHERE source_schema = $1", &[&schema]).await.map_err(Failure::Sql)?;
        }
    }
    Ok(usize::try_from(count).unwrap_or(0))
}

/// The database we are connected to, once `schema` is known to exist in it.
pub async fn schema_database(client: &impl GenericClient, schema: &str) -> Result<String> {
    let context = "look up the schema";
    let row = client
        .query_one("SELECT current_database()::text, EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)", &[&schema])
        .await
        .map_err(Error::postgres(context))?;
    let database: String = row.try_get(0).map_err(Error::postgres(context))?;
    if !row.try_get::<_, bool>(1).map_err(Error::postgres(context))? {
        return Err(Error::Config(format!(
            "PG_SCHEMA: schema {schema} does not exist in database {database}; nothing was changed: check PG_SCHEMA, and the database in PG_DSN"
        )));
    }
    Ok(database)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Install,
    Remove,
}

impl Action {
    fn what(self) -> &'static str {
        match self {
            Action::Install => "install delete capture",
            Action::Remove => "remove delete capture",
        }
    }

    /// The command that prints what an owner of the tables can apply instead.
    fn print_command(self) -> &'static str {
        match self {
            Action::Install => "pg2es delete-capture print",
            Action::Remove => "pg2es delete-capture print --remove",
        }
    }
}

/// Why a step inside the transaction failed: the lock's holders are read after the rollback.
#[derive(Debug)]
enum Failure {
    Sql(tokio_postgres::Error),
    LockTimeout { table: String },
    Other(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e {
            // Said with what to do instead, whichever step lacked the right.
            Error::Postgres { source, .. } if source.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Failure::Sql(source),
            e => Failure::Other(e),
        }
    }
}

async fn begin(client: &impl GenericClient, lock_timeout: Duration, context: &'static str) -> Result<()> {
    // Creating and dropping triggers locks the tables: wait a while for other transactions, not
    // forever, so the application's queries do not queue up behind us.
    let ms = lock_timeout.as_millis().max(1);
    if let Err(e) = client.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{ms}ms'; SET LOCAL client_min_messages = warning")).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(Error::postgres(context)(e));
    }
    Ok(())
}

/// Takes one table's lock, so that a timeout names the table it waited for.
async fn lock(client: &impl GenericClient, schema: &str, table: &str, mode: &str) -> Result<(), Failure> {
    let name = qualified(schema, table);
    match client.batch_execute(&format!("LOCK TABLE {name} IN {mode} MODE")).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Err(Failure::LockTimeout { table: format!("{schema}.{table}") }),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Err(Failure::Other(Error::SourceSchema(format!(
            "table {schema}.{table} does not exist; nothing was changed: check PG_SCHEMA (the capture needs every table of the documents)"
        )))),
        Err(e) => Err(Failure::Sql(e)),
    }
}

/// Commits, or rolls back and says what went wrong and what to do.
async fn finish<T>(client: &impl GenericClient, outcome: Result<T, Failure>, action: Action, schema: &str, database: &str) -> Result<T> {
    let failure = match outcome {
        Ok(value) => match client.batch_execute("COMMIT").await {
            Ok(()) => return Ok(value),
            Err(e) => Failure::Sql(e),
        },
        Err(failure) => failure,
    };
    let _ = client.batch_execute("ROLLBACK").await;
    let what = action.what();
    Err(match failure {
        Failure::Other(e) => e,
        Failure::Sql(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            let why = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
            Error::SourceSchema(format!("cannot {what} on {schema}: {why}; run `{}` and have an owner of the tables apply it", action.print_command()))
        }
        Failure::Sql(e) => Error::postgres(what)(e),
        Failure::LockTimeout { table } => {
            let holders = lock_holders(client, &table).await.unwrap_or_else(|e| format!("(the holders could not be read: {e})"));
            Error::SourceSetup(format!(
                "cannot {what} on {schema} of database {database}: waited for a lock on table {table}, which {holders}; nothing was changed: run it again once that transaction ends, or end it (SELECT pg_terminate_backend(pid))"
            ))
        }
    })
}

/// Who holds a lock on `table` now, as far as this role can see (`pg_read_all_stats` shows other
/// roles' sessions).
async fn lock_holders(client: &impl GenericClient, table: &str) -> Result<String> {
    let context = "read the lock holders";
    let rows = client
        .query(
            "SELECT l.pid, l.mode, a.application_name, a.state, a.xact_start::text, a.usename::text \
             FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'relation' AND l.relation = pg_catalog.to_regclass($1) AND l.granted \
               AND l.pid <> pg_catalog.pg_backend_pid() ORDER BY a.xact_start NULLS LAST LIMIT 5",
            &[&table],
        )
        .await
        .map_err(Error::postgres(context))?;
    if rows.is_empty() {
        return Ok("no session holds any more (the transaction that held it has ended)".into());
    }
    let mut held = Vec::new();
    for row in &rows {
        let text = |i: usize| -> Result<String> {
            let v: Option<String> = row.try_get(i).map_err(Error::postgres(context))?;
            Ok(v.filter(|s| !s.is_empty()).unwrap_or_else(|| "not visible".into()))
        };
        let pid: Option<i32> = row.try_get(0).map_err(Error::postgres(context))?;
        let pid = pid.map_or_else(|| "a prepared transaction".to_string(), |p| format!("pid {p}"));
        held.push(format!("{pid} ({}; user {}, application_name {}, state {}, transaction started {})", text(1)?, text(5)?, text(2)?, text(3)?, text(4)?));
    }
    Ok(format!("is held by {}", held.join(", ")))
}

/// A column pg2es's triggers and reads rely on.
struct Column {
    name: &'static str,
    /// As `format_type` spells it.
    type_name: &'static str,
    not_null: bool,
    /// The triggers leave it to its default.
    defaulted: bool,
}

const fn column(name: &'static str, type_name: &'static str, not_null: bool, defaulted: bool) -> Column {
    Column { name, type_name, not_null, defaulted }
}

const FILM_CHANGES: [Column; 4] = [
    column("xid", "xid8", true, true),
    column("source_schema", "text", true, false),
    column("film_id", "uuid", false, false),
    column("at", "timestamp with time zone", true, true),
];

const CONSUMERS: [Column; 4] = [
    column("source_schema", "text", true, false),
    column("consumer", "text", true, false),
    column("done_xid", "xid8", true, false),
    column("seen_at", "timestamp with time zone", true, true),
];

/// A column as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FoundColumn {
    name: String,
    type_name: String,
    not_null: bool,
    /// A default, an identity or a generated value: an INSERT that leaves it out still works.
    defaulted: bool,
}

/// What differs between `found` and what pg2es needs of `pg2es.<table>`; empty when it fits.
fn shape_problems(table: &str, expected: &[Column], found: &[FoundColumn]) -> Vec<String> {
    let mut problems = Vec::new();
    for want in expected {
        let name = format!("pg2es.{table}.{}", want.name);
        let Some(have) = found.iter().find(|c| c.name == want.name) else {
            problems.push(format!("column {name} is missing"));
            continue;
        };
        if have.type_name != want.type_name {
            problems.push(format!("column {name} is {}, pg2es needs {}", have.type_name, want.type_name));
        }
        if have.not_null && !want.not_null {
            problems.push(format!("column {name} is NOT NULL, pg2es writes NULL to it (a TRUNCATE)"));
        }
        if want.defaulted && !have.defaulted {
            problems.push(format!("column {name} has no default, the triggers leave it to its default"));
        }
    }
    for extra in found.iter().filter(|c| !expected.iter().any(|e| e.name == c.name)) {
        if extra.not_null && !extra.defaulted {
            problems.push(format!("column pg2es.{table}.{} is NOT NULL without a default, which pg2es does not fill (every insert fails)", extra.name));
        }
    }
    problems
}

/// Refuses a log table whose shape the triggers or the reads would fail on, naming what differs
/// and the fix. A table that does not exist yet is fine: the DDL creates it.
async fn check_shape(client: &impl GenericClient, table: &str, expected: &[Column]) -> Result<(), Failure> {
    let context = "check the delete log tables";
    let qualified = format!("pg2es.{table}");
    let rows = client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&qualified],
        )
        .await
        .map_err(Error::postgres(context))?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        found.push(FoundColumn {
            name: row.try_get(0).map_err(Error::postgres(context))?,
            type_name: row.try_get(1).map_err(Error::postgres(context))?,
            not_null: row.try_get(2).map_err(Error::postgres(context))?,
            defaulted: row.try_get(3).map_err(Error::postgres(context))?,
        });
    }
    let mut problems = shape_problems(table, expected, &found);
    if table == "consumers" {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = 'pg2es.consumers'::regclass AND i.indisunique \
                   AND i.indnkeyatts = 2 AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_catalog.pg_attribute a \
                        WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = ARRAY['consumer', 'source_schema'])",
                &[],
            )
            .await
            .map_err(Error::postgres(context))?;
        if !row.try_get::<_, bool>(0).map_err(Error::postgres(context))? {
            problems.push("pg2es.consumers has no unique key on (source_schema, consumer)".into());
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let lost = match table {
        "film_changes" => "rows not read yet are lost with it, so every pg2es reading the log loads every record again at its next cycle",
        _ => "the positions are lost with it, so every pg2es reading the log loads every record again at its next cycle",
    };
    Err(Failure::Other(Error::SourceSetup(format!(
        "table {qualified} is not as pg2es created it: {}; nothing was changed. Fix: DROP TABLE {qualified}; then run `pg2es delete-capture install` again at once ({lost})",
        problems.join("; ")
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movies() -> TriggerSet {
        crate::catalog::triggers::capture("content", &crate::catalog::testing::cinema()[..1])
    }

    #[test]
    fn ddl_names_the_schema_everywhere() {
        let set = movies();
        let sql = ddl(&set, false);
        assert!(sql.contains(r#"ON "content"."person_film_work""#));
        for t in set.deletes() {
            assert!(sql.contains(&format!("CREATE TRIGGER {} ", t.name)), "{}", t.name);
            assert!(sql.contains(&format!("DROP TRIGGER IF EXISTS {} ON \"content\".\"{}\";", t.name, t.table)), "{} on {}", t.name, t.table);
        }
        assert_eq!(sql.matches("CREATE TRIGGER").count(), set.deletes().count());
        assert_eq!(ddl(&set, true).matches("CREATE TRIGGER").count(), set.triggers.len());
        let weird = crate::catalog::triggers::capture(r#"we"ird"#, &crate::catalog::testing::cinema()[..1]);
        assert!(ddl(&weird, false).contains(r#""we""ird"."film_work""#));
    }

    #[test]
    fn remove_drops_every_trigger_of_pg2es_and_the_functions() {
        let sql = remove_ddl("content");
        assert!(sql.contains("pn.nspname = 'pg2es'") && sql.contains("DROP TRIGGER %I ON %I.%I"), "{sql}");
        for f in FUNCTIONS.split(", ") {
            assert!(sql.contains(f.trim()), "{f}");
        }
        assert!(sql.contains("p.proname LIKE 'capture\\_%' AND NOT EXISTS"), "{sql}");
        assert!(sql.contains("DELETE FROM pg2es.consumers WHERE source_schema = 'content'"), "{sql}");
        assert!(remove_ddl("o'brien").contains("source_schema = 'o''brien'"));
    }

    #[test]
    fn the_printed_ddl_drops_positions_when_something_was_missing_then_installs() {
        let set = movies();
        let sql = print_ddl(&set, false);
        assert!(sql.ends_with(&ddl(&set, false)));
        assert!(sql.contains("DELETE FROM pg2es.consumers WHERE source_schema = 'content'"), "{sql}");
        for t in set.deletes() {
            assert!(sql.contains(&format!("'{}'", t.table)) && sql.contains(&format!("'{}'", t.name)), "{} on {}", t.name, t.table);
        }
    }

    #[test]
    fn what_is_missing_is_said_by_table() {
        let pair = |t: &str, n: &str| (t.to_string(), n.to_string());
        let capture = |log_table, missing: Vec<(String, String)>| Capture {
            log_table,
            missing,
            writes_missing: vec![],
            deletes_wanted: 12,
            writes_wanted: 8,
            legacy: false,
            legacy_writes: false,
            legacy_in_use: false,
            shape: LogShape::Keyed,
        };
        let c = capture(true, vec![pair("genre_film_work", "pg2es_movies_deleted"), pair("genre_film_work", "pg2es_movies_truncated")]);
        assert!(!c.complete() && !c.nothing_installed());
        assert_eq!(c.describe_missing(), "genre_film_work: pg2es_movies_deleted, pg2es_movies_truncated");
        let c = capture(false, vec![pair("film_work", "pg2es_movies_deleted"), pair("person", "pg2es_movies_truncated")]);
        assert_eq!(c.describe_missing(), "table pg2es.film_changes; film_work: pg2es_movies_deleted; person: pg2es_movies_truncated");
        assert!(capture(true, vec![]).complete());
        // An earlier release's capture stands in for the first document only, and only while
        // none of the generated triggers is there.
        let all_missing: Vec<(String, String)> = (0..12).map(|i| pair("t", &i.to_string())).collect();
        let legacy = Capture { legacy: true, ..capture(true, all_missing.clone()) };
        assert!(legacy.clone().with_legacy_for(true).complete() && legacy.clone().with_legacy_for(true).legacy_in_use);
        assert!(!legacy.clone().with_legacy_for(false).complete());
        assert!(!Capture { legacy: true, ..capture(true, all_missing[..3].to_vec()) }.with_legacy_for(true).complete());
        assert!(capture(true, (0..12).map(|i| pair("t", &i.to_string())).collect()).nothing_installed());
    }

    fn found(name: &str, type_name: &str, not_null: bool, defaulted: bool) -> FoundColumn {
        FoundColumn { name: name.into(), type_name: type_name.into(), not_null, defaulted }
    }

    fn as_created() -> Vec<FoundColumn> {
        FILM_CHANGES.iter().map(|c| found(c.name, c.type_name, c.not_null, c.defaulted)).collect()
    }

    #[test]
    fn the_log_table_as_created_fits_and_each_change_that_breaks_it_is_named() {
        assert_eq!(shape_problems("film_changes", &FILM_CHANGES, &as_created()), Vec::<String>::new());
        // Harmless: an extra nullable or defaulted column, a NOT NULL dropped.
        let mut harmless = as_created();
        harmless.push(found("note", "text", false, false));
        harmless.push(found("n", "bigint", true, true));
        harmless[0].not_null = false;
        assert_eq!(shape_problems("film_changes", &FILM_CHANGES, &harmless), Vec::<String>::new());

        let mut typed = as_created();
        typed[2].type_name = "text".into();
        assert_eq!(shape_problems("film_changes", &FILM_CHANGES, &typed), ["column pg2es.film_changes.film_id is text, pg2es needs uuid"]);
        let mut required = as_created();
        required.push(found("note", "text", true, false));
        assert_eq!(
            shape_problems("film_changes", &FILM_CHANGES, &required),
            ["column pg2es.film_changes.note is NOT NULL without a default, which pg2es does not fill (every insert fails)"]
        );
        let mut strict = as_created();
        strict[2].not_null = true;
        strict[3].defaulted = false;
        strict.remove(1);
        assert_eq!(
            shape_problems("film_changes", &FILM_CHANGES, &strict),
            [
                "column pg2es.film_changes.source_schema is missing",
                "column pg2es.film_changes.film_id is NOT NULL, pg2es writes NULL to it (a TRUNCATE)",
                "column pg2es.film_changes.at has no default, the triggers leave it to its default",
            ]
        );
    }
}
