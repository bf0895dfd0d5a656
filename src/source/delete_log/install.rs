//! `install` and `remove`: the DDL applied under the tables' locks, with the log tables' shape
//! checked first; a lock that waits too long names its holder.

use super::*;
use crate::settings::{PG_DSN, PG_SCHEMA};

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
    // The log: `changes`, or an earlier release's `film_changes` that the DDL renames.
    let log = if before.shape == LogShape::Keyed { "changes" } else { "film_changes" };
    if before.log_table {
        // Other schemas' triggers write to it; the index below needs it still. Renaming it takes
        // the DDL's own lock.
        lock(client, "pg2es", log, "SHARE").await?;
    }
    check_shape(client, log, &FILM_CHANGES).await?;
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
            "{PG_SCHEMA}: schema {schema} does not exist in database {database}; nothing was changed: check {PG_SCHEMA}, and the database in {PG_DSN}"
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
            "table {schema}.{table} does not exist; nothing was changed: check {PG_SCHEMA} (the capture needs every table of the documents)"
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
        "changes" | "film_changes" => "rows not read yet are lost with it, so every pg2es reading the log loads every record again at its next cycle",
        _ => "the positions are lost with it, so every pg2es reading the log loads every record again at its next cycle",
    };
    Err(Failure::Other(Error::SourceSetup(format!(
        "table {qualified} is not as pg2es created it: {}; nothing was changed. Fix: DROP TABLE {qualified} CASCADE; then run `pg2es delete-capture install` again at once ({lost})",
        problems.join("; ")
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

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
