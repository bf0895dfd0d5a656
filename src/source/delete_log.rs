//! Delete capture: the log that opt-in triggers write when a delete changes a film's document.
//!
//! Polling by timestamp cannot see a row that is gone. The triggers of `sql/delete_capture.sql`
//! record, in `pg2es.film_changes`, the id of every film to rebuild (a deleted film, a film that
//! lost a link, every film of a deleted genre or person; NULL after a `TRUNCATE`), stamped with
//! the writing transaction's id. A reader takes the log by transaction-id window
//! `[from, boundary)`: every transaction below [`boundary`] has ended, so that part of the log is
//! final. Several pg2es instances can read the same log; each records its position with
//! [`acknowledge`], and rows below the oldest position are trimmed.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls};
use uuid::Uuid;

use super::PgTls;
use crate::error::{Error, Result};

const DDL: &str = include_str!("../../sql/delete_capture.sql");
const WRITE_DDL: &str = include_str!("../../sql/write_capture.sql");

/// The triggers the DDL creates, by table: [`installed`] checks each, [`remove_ddl`] drops them.
pub const TRIGGERS: [(&str, &str); 12] = [
    ("film_work", "pg2es_film_deleted"),
    ("film_work", "pg2es_truncated"),
    ("genre_film_work", "pg2es_link_deleted"),
    ("genre_film_work", "pg2es_link_moved"),
    ("genre_film_work", "pg2es_truncated"),
    ("person_film_work", "pg2es_link_deleted"),
    ("person_film_work", "pg2es_link_moved"),
    ("person_film_work", "pg2es_truncated"),
    ("genre", "pg2es_linked_deleted"),
    ("genre", "pg2es_truncated"),
    ("person", "pg2es_linked_deleted"),
    ("person", "pg2es_truncated"),
];

/// The triggers of the write capture (`install --writes`, `sql/write_capture.sql`): every insert
/// and update that changes a film's document is logged too, so polling does not depend on the
/// tables' timestamps.
pub const WRITE_TRIGGERS: [(&str, &str); 8] = [
    ("film_work", "pg2es_film_inserted"),
    ("film_work", "pg2es_film_updated"),
    ("genre_film_work", "pg2es_link_inserted"),
    ("genre_film_work", "pg2es_link_updated"),
    ("person_film_work", "pg2es_link_inserted"),
    ("person_film_work", "pg2es_link_updated"),
    ("genre", "pg2es_linked_updated"),
    ("person", "pg2es_linked_updated"),
];

/// The trigger functions, shared by every source schema.
const FUNCTIONS: &str = "pg2es.log_deleted_films(), pg2es.log_unlinked_films(), pg2es.log_moved_links(), pg2es.log_linked_films(), pg2es.log_truncate(), \
     pg2es.log_written_films(), pg2es.log_written_links(), pg2es.log_renamed_linked()";

/// The statements that install delete capture on the tables of `schema` (idempotent).
pub fn ddl(schema: &str) -> String {
    DDL.replace("{schema}", &quote_ident(schema))
}

/// The statements that add the write capture to `schema` (after [`ddl`]; idempotent).
pub fn write_ddl(schema: &str) -> String {
    WRITE_DDL.replace("{schema}", &quote_ident(schema))
}

/// The DDL for an owner to apply by hand (`pg2es delete-capture print`): [`ddl`], first dropping
/// the schema's positions in the log when the log or a trigger is missing, as `install` does.
pub fn print_ddl(schema: &str, writes: bool) -> String {
    let wanted: Vec<(&str, &str)> = TRIGGERS.iter().chain(if writes { &WRITE_TRIGGERS[..] } else { &[] }).copied().collect();
    let (tables, triggers): (Vec<&str>, Vec<&str>) = wanted.into_iter().unzip();
    let list = |names: Vec<&str>| names.iter().map(|n| quote_literal(n)).collect::<Vec<_>>().join(", ");
    format!(
        "-- Deletes made while the log or a trigger was missing were not recorded: positions in the log\n\
         -- are dropped then, so each pg2es reading it loads every film again instead of trusting them.\n\
         DO $$\nBEGIN\n    IF pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL AND (pg_catalog.to_regclass('pg2es.film_changes') IS NULL\n       OR EXISTS (SELECT 1 FROM unnest(ARRAY[{}], ARRAY[{}]) AS want(tbl, name)\n                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgname = want.name AND t.tgenabled <> 'D'\n                                      AND t.tgrelid = pg_catalog.to_regclass(quote_ident({schema}) || '.' || want.tbl)))) THEN\n        DELETE FROM pg2es.consumers WHERE source_schema = {schema} OR pg_catalog.to_regclass('pg2es.film_changes') IS NULL;\n    END IF;\nEND $$;\n\n{}",
        list(tables),
        list(triggers),
        if writes { format!("{}\n{}", ddl(schema), write_ddl(schema)) } else { ddl(schema) },
        schema = quote_literal(schema),
    )
}

/// The statements that remove it from `schema`: its triggers, and the functions once no schema
/// uses them. The log tables are left with their rows (other schemas may share them).
pub fn remove_ddl(schema: &str) -> String {
    let all: Vec<(&str, &str)> = TRIGGERS.iter().chain(&WRITE_TRIGGERS).copied().collect();
    let mut sql = drop_ddl(schema, &all);
    sql.push_str(&format!(
        "-- The instances reading this schema's log learn that it stopped.\nDO $$\nBEGIN\n    IF pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL THEN\n        DELETE FROM pg2es.consumers WHERE source_schema = {};\n    END IF;\nEND $$;\n",
        quote_literal(schema)
    ));
    sql
}

/// Drops these triggers, then the functions once no schema uses them.
fn drop_ddl(schema: &str, triggers: &[(&str, &str)]) -> String {
    let schema = quote_ident(schema);
    let mut sql = String::from("-- Removes pg2es delete capture; the tables in schema pg2es are kept.\n");
    for (table, trigger) in triggers {
        sql.push_str(&format!("DROP TRIGGER IF EXISTS {trigger} ON {schema}.{table};\n"));
    }
    sql.push_str(&format!(
        "DO $$\nBEGIN\n    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid\n                   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pg2es') THEN\n        DROP FUNCTION IF EXISTS {FUNCTIONS};\n    END IF;\nEND $$;\n"
    ));
    sql
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
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

/// What of the delete capture is on `schema`: the log table, and the triggers that are not there
/// (or disabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub log_table: bool,
    /// `(table, trigger)` of [`TRIGGERS`] missing or disabled.
    pub missing: Vec<(&'static str, &'static str)>,
    /// `(table, trigger)` of [`WRITE_TRIGGERS`] missing or disabled.
    pub writes_missing: Vec<(&'static str, &'static str)>,
}

impl Capture {
    /// The delete capture and the write capture: every change of a film's document is logged.
    pub fn writes_complete(&self) -> bool {
        self.complete() && self.writes_missing.is_empty()
    }

    /// The log table and every trigger: deletes are recorded.
    pub fn complete(&self) -> bool {
        self.log_table && self.missing.is_empty()
    }

    /// No trigger at all on `schema`'s tables.
    pub fn nothing_installed(&self) -> bool {
        self.missing.len() == TRIGGERS.len()
    }

    /// What is missing, for a log line: `pg2es.film_changes; genre_film_work: pg2es_link_deleted, pg2es_truncated`.
    pub fn describe_missing(&self) -> String {
        let mut parts = Vec::new();
        if !self.log_table {
            parts.push("table pg2es.film_changes".to_string());
        }
        let mut tables: Vec<&str> = self.missing.iter().map(|(t, _)| *t).collect();
        tables.dedup();
        for table in tables {
            let names: Vec<&str> = self.missing.iter().filter(|(t, _)| *t == table).map(|(_, n)| *n).collect();
            parts.push(format!("{table}: {}", names.join(", ")));
        }
        parts.join("; ")
    }
}

/// Which parts of the delete capture are on `schema` now.
pub async fn status(client: &impl GenericClient, schema: &str) -> Result<Capture> {
    let all: Vec<(&'static str, &'static str)> = TRIGGERS.iter().chain(&WRITE_TRIGGERS).copied().collect();
    let (tables, triggers): (Vec<&str>, Vec<&str>) = all.iter().copied().unzip();
    let context = "check the delete capture triggers";
    let row = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pg2es.film_changes') IS NOT NULL, \
                ARRAY(SELECT want.n FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS want(tbl, name, n) \
                      WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                                        WHERE t.tgrelid = pg_catalog.to_regclass(quote_ident($1) || '.' || quote_ident(want.tbl)) \
                                          AND t.tgname = want.name AND t.tgenabled <> 'D') \
                      ORDER BY want.n)",
            &[&schema, &tables, &triggers],
        )
        .await
        .map_err(Error::postgres(context))?;
    let log_table: bool = row.try_get(0).map_err(Error::postgres(context))?;
    let missing: Vec<i64> = row.try_get(1).map_err(Error::postgres(context))?;
    let missing: Vec<(&'static str, &'static str)> = missing.into_iter().filter_map(|n| all.get(usize::try_from(n - 1).ok()?).copied()).collect();
    let (missing, writes_missing) = missing.into_iter().partition(|t| TRIGGERS.contains(t));
    Ok(Capture { log_table, missing, writes_missing })
}

/// True when the log table exists and every trigger is on `schema`'s tables, enabled.
pub async fn installed(client: &impl GenericClient, schema: &str) -> Result<bool> {
    Ok(status(client, schema).await?.complete())
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
    /// Films to rebuild or delete: distinct, ascending, after the page's `after`.
    pub film_ids: Vec<Uuid>,
    /// A table was truncated in the window: the whole catalog must be reloaded.
    pub reload: bool,
}

const FILMS_BETWEEN_SQL: &str = "SELECT \
       EXISTS (SELECT 1 FROM pg2es.film_changes \
               WHERE source_schema = $1 AND xid >= $2::text::xid8 AND xid < $3::text::xid8 AND film_id IS NULL), \
       ARRAY(SELECT DISTINCT film_id FROM pg2es.film_changes \
             WHERE source_schema = $1 AND xid >= $2::text::xid8 AND xid < $3::text::xid8 \
               AND film_id IS NOT NULL AND ($4::uuid IS NULL OR film_id > $4::uuid) \
             ORDER BY film_id LIMIT $5)";

/// Up to `limit` films logged for `schema` by transactions in `[from, to)`, after `after`.
pub async fn films_between(client: &impl GenericClient, schema: &str, from: u64, to: u64, after: Option<Uuid>, limit: usize) -> Result<LogPage> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let row = client
        .query_one(FILMS_BETWEEN_SQL, &[&schema, &from.to_string(), &to.to_string(), &after, &limit])
        .await
        .map_err(Error::postgres("read the delete log"))?;
    Ok(LogPage {
        reload: row.try_get(0).map_err(Error::postgres("read the delete log"))?,
        film_ids: row.try_get(1).map_err(Error::postgres("read the delete log"))?,
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

/// The source tables, in the order their locks are taken.
const TABLES: [&str; 5] = ["film_work", "genre_film_work", "person_film_work", "genre", "person"];

/// What `install` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// Positions of pg2es instances dropped because the log or a trigger had been missing
    /// (deletes meanwhile were not recorded): each of them loads every film again.
    pub positions_dropped: u64,
}

/// Installs delete capture on `schema` in one transaction, waiting at most [`LOCK_TIMEOUT`] for
/// each table.
pub async fn install(client: &impl GenericClient, schema: &str) -> Result<Installed> {
    install_with(client, schema, LOCK_TIMEOUT).await
}

/// [`install`] with another lock timeout.
pub async fn install_with(client: &impl GenericClient, schema: &str, lock_timeout: Duration) -> Result<Installed> {
    install_capture(client, schema, lock_timeout, false).await
}

/// Installs the delete capture and the write capture (`install --writes`).
pub async fn install_writes(client: &impl GenericClient, schema: &str) -> Result<Installed> {
    install_capture(client, schema, LOCK_TIMEOUT, true).await
}

async fn install_capture(client: &impl GenericClient, schema: &str, lock_timeout: Duration, writes: bool) -> Result<Installed> {
    let database = schema_database(client, schema).await?;
    begin(client, lock_timeout, Action::Install.what()).await?;
    let outcome = install_locked(client, schema, writes).await;
    finish(client, outcome, Action::Install, schema, &database).await
}

async fn install_locked(client: &impl GenericClient, schema: &str, writes: bool) -> Result<Installed, Failure> {
    for table in TABLES {
        lock(client, schema, table, "ACCESS EXCLUSIVE").await?;
    }
    // Read under the locks: no trigger can come or go until the commit.
    let before = status(client, schema).await?;
    if before.log_table {
        // Other schemas' triggers write to it; the index below needs it still.
        lock(client, "pg2es", "film_changes", "SHARE").await?;
    }
    check_shape(client, "film_changes", &FILM_CHANGES).await?;
    check_shape(client, "consumers", &CONSUMERS).await?;
    client.batch_execute(&ddl(schema)).await.map_err(Failure::Sql)?;
    if writes {
        client.batch_execute(&write_ddl(schema)).await.map_err(Failure::Sql)?;
    }
    // A position in the log stands for "every delete since is in the log". A new log, or
    // triggers that were missing, break that: the instances reload instead of trusting it.
    let positions_dropped = if !before.log_table {
        client.execute("DELETE FROM pg2es.consumers", &[]).await.map_err(Failure::Sql)?
    } else if !before.missing.is_empty() || (writes && !before.writes_missing.is_empty()) {
        // Writes that left the timestamps alone were not seen before the write capture either.
        client.execute("DELETE FROM pg2es.consumers WHERE source_schema = $1", &[&schema]).await.map_err(Failure::Sql)?
    } else {
        0
    };
    Ok(Installed { positions_dropped })
}

/// What `remove` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Triggers dropped (0: none was installed on the schema).
    pub triggers: usize,
    /// The database the schema is in.
    pub database: String,
}

/// Removes the triggers (and the functions once unused) from `schema` in one transaction, and
/// the schema's positions in the log (the instances reading it learn that it stopped). A schema
/// that does not exist is an error naming it and the database.
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
    let found = status(client, schema).await?;
    let present: Vec<(&str, &str)> =
        TRIGGERS.iter().chain(&WRITE_TRIGGERS).copied().filter(|t| !found.missing.contains(t) && !found.writes_missing.contains(t)).collect();
    let mut tables: Vec<&str> = present.iter().map(|(t, _)| *t).collect();
    tables.dedup();
    for table in tables {
        lock(client, schema, table, "ACCESS EXCLUSIVE").await?;
    }
    if !present.is_empty() {
        client.batch_execute(&drop_ddl(schema, &present)).await.map_err(Failure::Sql)?;
    }
    let consumers = client.query_one("SELECT pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL", &[]).await.map_err(Failure::Sql)?;
    if consumers.try_get::<_, bool>(0).map_err(Failure::Sql)? {
        client.execute("DELETE FROM pg2es.consumers WHERE source_schema = $1", &[&schema]).await.map_err(Failure::Sql)?;
    }
    Ok(present.len())
}

/// The database we are connected to, once `schema` is known to exist in it.
async fn schema_database(client: &impl GenericClient, schema: &str) -> Result<String> {
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
    if let Err(e) = client.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{ms}ms'")).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(Error::postgres(context)(e));
    }
    Ok(())
}

/// Takes one table's lock, so that a timeout names the table it waited for.
async fn lock(client: &impl GenericClient, schema: &str, table: &str, mode: &str) -> Result<(), Failure> {
    let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
    match client.batch_execute(&format!("LOCK TABLE {name} IN {mode} MODE")).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Err(Failure::LockTimeout { table: format!("{schema}.{table}") }),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Err(Failure::Other(Error::SourceSchema(format!(
            "table {schema}.{table} does not exist; nothing was changed: check PG_SCHEMA (delete capture needs the five catalog tables)"
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
        "film_changes" => "rows not read yet are lost with it, so every pg2es reading the log loads every film again at its next cycle",
        _ => "the positions are lost with it, so every pg2es reading the log loads every film again at its next cycle",
    };
    Err(Failure::Other(Error::SourceSetup(format!(
        "table {qualified} is not as pg2es created it: {}; nothing was changed. Fix: DROP TABLE {qualified}; then run `pg2es delete-capture install` again at once ({lost})",
        problems.join("; ")
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_names_the_schema_everywhere() {
        let sql = ddl("content");
        assert!(!sql.contains("{schema}"));
        assert!(sql.contains(r#"ON "content".person_film_work"#));
        for (table, trigger) in TRIGGERS {
            assert!(sql.contains(&format!("CREATE TRIGGER {trigger} ")), "{trigger}");
            assert!(sql.contains(&format!("DROP TRIGGER IF EXISTS {trigger} ON \"content\".{table};")), "{trigger} on {table}");
        }
        assert_eq!(sql.matches("CREATE TRIGGER").count(), TRIGGERS.len());
        assert!(ddl(r#"we"ird"#).contains(r#""we""ird".film_work"#));
    }

    #[test]
    fn remove_drops_every_trigger_and_the_functions() {
        let sql = remove_ddl("content");
        assert_eq!(sql.matches("DROP TRIGGER IF EXISTS").count(), TRIGGERS.len() + WRITE_TRIGGERS.len());
        let both = format!("{}{}", ddl("content"), write_ddl("content"));
        for f in FUNCTIONS.split(", ") {
            assert!(both.contains(&format!("FUNCTION {} RETURNS trigger", f.trim())), "{f}");
        }
        for (table, trigger) in WRITE_TRIGGERS {
            assert!(write_ddl("content").contains(&format!("CREATE TRIGGER {trigger} ")), "{trigger}");
            assert!(sql.contains(&format!("DROP TRIGGER IF EXISTS {trigger} ON \"content\".{table};")), "{trigger} on {table}");
        }
        assert!(sql.contains("DROP FUNCTION IF EXISTS pg2es.log_deleted_films()"));
        assert!(sql.contains("DELETE FROM pg2es.consumers WHERE source_schema = 'content'"), "{sql}");
        assert!(remove_ddl("o'brien").contains("source_schema = 'o''brien'"));
    }

    #[test]
    fn the_printed_ddl_drops_positions_when_something_was_missing_then_installs() {
        let sql = print_ddl("content", false);
        assert!(sql.ends_with(&ddl("content")));
        assert!(sql.contains("DELETE FROM pg2es.consumers WHERE source_schema = 'content'"), "{sql}");
        for (table, trigger) in TRIGGERS {
            assert!(sql.contains(&format!("'{table}'")) && sql.contains(&format!("'{trigger}'")), "{trigger} on {table}");
        }
    }

    #[test]
    fn what_is_missing_is_said_by_table() {
        let capture = Capture { log_table: true, missing: TRIGGERS[2..5].to_vec(), writes_missing: vec![] };
        assert!(!capture.complete() && !capture.nothing_installed());
        assert_eq!(capture.describe_missing(), "genre_film_work: pg2es_link_deleted, pg2es_link_moved, pg2es_truncated");
        let capture = Capture { log_table: false, missing: vec![TRIGGERS[0], TRIGGERS[11]], writes_missing: vec![] };
        assert_eq!(capture.describe_missing(), "table pg2es.film_changes; film_work: pg2es_film_deleted; person: pg2es_truncated");
        assert!(Capture { log_table: true, missing: vec![], writes_missing: vec![] }.complete());
        assert!(Capture { log_table: true, missing: TRIGGERS.to_vec(), writes_missing: vec![] }.nothing_installed());
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
