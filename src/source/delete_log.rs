//! Delete capture: the log that opt-in triggers write when a delete changes a film's document.
//!
//! Polling by timestamp cannot see a row that is gone. The triggers of `sql/delete_capture.sql`
//! record, in `pg2es.film_changes`, the id of every film to rebuild (a deleted film, a film that
//! lost a link, every film of a deleted genre or person; NULL after a `TRUNCATE`), stamped with
//! the writing transaction's id. A reader takes the log by transaction-id window
//! `[from, boundary)`: every transaction below [`boundary`] has ended, so that part of the log is
//! final. Several pg2es instances can read the same log; each records its position with
//! [`acknowledge`], and rows below the oldest position are trimmed.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls};
use uuid::Uuid;

use super::PgTls;
use crate::error::{Error, Result};

const DDL: &str = include_str!("../../sql/delete_capture.sql");

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

/// The trigger functions, shared by every source schema.
const FUNCTIONS: &str =
    "pg2es.log_deleted_films(), pg2es.log_unlinked_films(), pg2es.log_moved_links(), pg2es.log_linked_films(), pg2es.log_truncate()";

/// The statements that install delete capture on the tables of `schema` (idempotent).
pub fn ddl(schema: &str) -> String {
    DDL.replace("{schema}", &quote_ident(schema))
}

/// The statements that remove it from `schema`: its triggers, and the functions once no schema
/// uses them. The log tables are left with their rows (other schemas may share them).
pub fn remove_ddl(schema: &str) -> String {
    let schema = quote_ident(schema);
    let mut sql = String::from("-- Removes pg2es delete capture; the tables in schema pg2es are kept.\n");
    for (table, trigger) in TRIGGERS {
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

/// True when the log table exists and every trigger is on `schema`'s tables, enabled.
pub async fn installed(client: &impl GenericClient, schema: &str) -> Result<bool> {
    let (tables, triggers): (Vec<&str>, Vec<&str>) = TRIGGERS.iter().copied().unzip();
    let row = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pg2es.film_changes') IS NOT NULL \
                AND (SELECT count(*) FROM unnest($2::text[], $3::text[]) AS want(tbl, name) \
                     WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                                   WHERE t.tgrelid = pg_catalog.to_regclass(quote_ident($1) || '.' || quote_ident(want.tbl)) \
                                     AND t.tgname = want.name AND t.tgenabled <> 'D')) = $4",
            &[&schema, &tables, &triggers, &(TRIGGERS.len() as i64)],
        )
        .await
        .map_err(Error::postgres("check the delete capture triggers"))?;
    row.try_get(0).map_err(Error::postgres("check the delete capture triggers"))
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

/// Records that `consumer` has read `schema`'s log below `done`, and trims what every consumer
/// seen in the last 7 days has read (a consumer gone longer holds nothing back).
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
    client
        .execute(
            "DELETE FROM pg2es.film_changes WHERE source_schema = $1 AND xid < \
               (SELECT done_xid FROM pg2es.consumers WHERE source_schema = $1 AND seen_at > now() - interval '7 days' \
                ORDER BY done_xid LIMIT 1)",
            &[&schema],
        )
        .await
        .map_err(Error::postgres("trim the delete log"))?;
    Ok(())
}

/// Installs delete capture on `schema` in one transaction.
pub async fn install(client: &impl GenericClient, schema: &str) -> Result<()> {
    apply(client, schema, &ddl(schema), "install delete capture").await
}

/// Removes the triggers (and the functions once unused) from `schema` in one transaction.
pub async fn remove(client: &impl GenericClient, schema: &str) -> Result<()> {
    apply(client, schema, &remove_ddl(schema), "remove delete capture").await
}

async fn apply(client: &impl GenericClient, schema: &str, sql: &str, context: &'static str) -> Result<()> {
    // Creating and dropping triggers locks the tables: wait a while for other transactions, not
    // forever, so the application's queries do not queue up behind us.
    let script = format!("BEGIN;\nSET LOCAL lock_timeout = '10s';\n{sql}\nCOMMIT;");
    if let Err(e) = client.batch_execute(&script).await {
        let _ = client.batch_execute("ROLLBACK").await;
        if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            let why = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
            return Err(Error::SourceSchema(format!(
                "cannot {context} on {schema}: {why}; run `pg2es delete-capture print` and have an owner of the tables apply it"
            )));
        }
        return Err(Error::postgres(context)(e));
    }
    Ok(())
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
        assert_eq!(sql.matches("DROP TRIGGER IF EXISTS").count(), TRIGGERS.len());
        for f in FUNCTIONS.split(", ") {
            assert!(ddl("content").contains(&format!("FUNCTION {f} RETURNS trigger")), "{f}");
        }
        assert!(sql.contains("DROP FUNCTION IF EXISTS pg2es.log_deleted_films()"));
    }
}
