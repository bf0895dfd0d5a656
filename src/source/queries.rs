//! The SQL of the source, prepared once per connection.
//!
//! The SQL itself is the catalog's (`catalog/sql.rs`), generated from the definition: table and
//! column names checked against `information_schema` and quoted, every value a parameter. Timestamps are compared as
//! `timestamptz` so both `timestamp` and `timestamptz` columns work with the same code; btree
//! cross-type comparison keeps the `(ts, id)` indexes usable.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::{Client, Statement};

use crate::catalog::{qualified, quote, sql, Document, ForeignKey, LiveSchema, TableKeys};
use crate::error::{Error, Result};

/// The clock, the oldest open transaction of another client session, and whether this role can
/// see every session's transactions (others' `xact_start` reads as NULL without pg_read_all_stats).
pub const HORIZON_SQL: &str = "SELECT clock_timestamp(), a.xact_start, a.pid, \
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') \
     FROM (SELECT 1) one \
     LEFT JOIN LATERAL (SELECT xact_start, pid FROM pg_stat_activity \
                        WHERE pid <> pg_backend_pid() AND datname = current_database() AND xact_start IS NOT NULL AND backend_type = 'client backend' \
                        ORDER BY xact_start LIMIT 1) a ON true";

/// Each column of these tables as it is now, by `table.column`: its place in the table (a column
/// dropped and added again has a new one) and its type. Values read before either changed are
/// not the column's values any more: [`crate::checkpoint::State::columns_changed`].
pub async fn column_identities(client: &Client, schema: &str, tables: &[&str]) -> Result<BTreeMap<String, String>> {
    let rows = client
        .query(
            "SELECT table_name::text, column_name::text, ordinal_position::int, data_type::text, udt_schema::text, udt_name::text \
             FROM information_schema.columns WHERE table_schema = $1 AND table_name = ANY($2)",
            &[&schema, &tables],
        )
        .await
        .map_err(Error::postgres("read table columns"))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let (table, column, at, ty, udt_schema, udt): (String, String, i32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        out.insert(format!("{table}.{column}"), format!("column {at}, {ty} ({udt_schema}.{udt})"));
    }
    Ok(out)
}

/// The schema's tables and columns, and its single-column foreign keys: what a definition is
/// resolved against.
pub async fn live_schema(client: &Client, schema: &str) -> Result<LiveSchema> {
    let rows = client
        .query("SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = $1", &[&schema])
        .await
        .map_err(Error::postgres("read table columns"))?;
    let mut columns: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in rows {
        let (table, column, ty): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        columns.entry(table).or_default().insert(column, ty);
    }
    let fks = client
        .query(
            "SELECT c.relname::text, a.attname::text, fc.relname::text, fa.attname::text \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_class fc ON fc.oid = k.confrelid \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] \
             JOIN pg_catalog.pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1] \
             WHERE k.contype = 'f' AND n.nspname = $1 AND cardinality(k.conkey) = 1",
            &[&schema],
        )
        .await
        .map_err(Error::postgres("read foreign keys"))?;
    let foreign_keys = fks.iter().map(|r| ForeignKey { table: r.get(0), column: r.get(1), references: r.get(2), referenced_column: r.get(3) }).collect();
    // Unique indexes (primary keys and unique constraints among them) on plain columns of the
    // whole table: a partial or expression index does not make a column unique.
    const READ_KEYS: &str = "read primary keys and unique constraints";
    let unique = client
        .query(
            "SELECT c.relname::text, i.indisprimary, ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.n) \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND 0 <> ALL (i.indkey) \
             ORDER BY 1, 2 DESC, 3",
            &[&schema],
        )
        .await
        .map_err(Error::postgres(READ_KEYS))?;
    let mut keys: BTreeMap<String, TableKeys> = BTreeMap::new();
    for r in unique {
        let (table, primary, columns): (String, bool, Vec<String>) = (
            r.try_get(0).map_err(Error::postgres(READ_KEYS))?,
            r.try_get(1).map_err(Error::postgres(READ_KEYS))?,
            r.try_get(2).map_err(Error::postgres(READ_KEYS))?,
        );
        let k = keys.entry(table).or_default();
        if primary {
            k.primary = Some(columns);
        } else {
            k.unique.push(columns);
        }
    }
    const READ_ENUMS: &str = "read enum labels";
    let labels = client
        .query(
            "SELECT c.table_name::text, c.column_name::text, array_agg(e.enumlabel::text ORDER BY e.enumsortorder) \
             FROM information_schema.columns c \
             JOIN pg_catalog.pg_type t ON t.typname = c.udt_name JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace AND tn.nspname = c.udt_schema \
             JOIN pg_catalog.pg_enum e ON e.enumtypid = t.oid \
             WHERE c.table_schema = $1 GROUP BY 1, 2",
            &[&schema],
        )
        .await
        .map_err(Error::postgres(READ_ENUMS))?;
    let mut enum_labels: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for r in labels {
        let (table, column, l): (String, String, Vec<String>) = (
            r.try_get(0).map_err(Error::postgres(READ_ENUMS))?,
            r.try_get(1).map_err(Error::postgres(READ_ENUMS))?,
            r.try_get(2).map_err(Error::postgres(READ_ENUMS))?,
        );
        enum_labels.entry(table).or_default().insert(column, l);
    }
    const READ_VIEWS: &str = "read views";
    let views = client
        .query("SELECT table_name::text FROM information_schema.views WHERE table_schema = $1", &[&schema])
        .await
        .map_err(Error::postgres(READ_VIEWS))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<BTreeSet<String>, _>>()
        .map_err(Error::postgres(READ_VIEWS))?;
    Ok(LiveSchema { schema: schema.to_string(), columns, foreign_keys, keys, enum_labels, views })
}

/// The `CREATE INDEX` statements for the change streams' keyset reads that no index serves
/// (none starting with the timestamp column, then the key): without one, every cycle scans the
/// whole table. Django's migrations, for one, make none of them.
pub async fn missing_indexes(client: &Client, doc: &Document) -> Result<Vec<String>> {
    let context = "read the tables' indexes";
    let rows = client
        .query(
            "SELECT c.relname::text, ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.n) \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
            &[&doc.schema],
        )
        .await
        .map_err(Error::postgres(context))?;
    let mut missing = Vec::new();
    for st in &doc.streams {
        let Some(timestamp) = &st.timestamp else { continue };
        let served = rows.iter().any(|r| {
            let name: Option<String> = r.try_get(0).ok();
            let columns: Vec<String> = r.try_get(1).unwrap_or_default();
            name.as_deref() == Some(st.table.as_str()) && columns.first() == Some(timestamp) && columns.get(1..=st.key.len()) == Some(&st.key[..])
        });
        if !served {
            let key: Vec<String> = st.key.iter().map(|k| quote(k)).collect();
            missing.push(format!("CREATE INDEX CONCURRENTLY ON {} ({}, {});", qualified(&doc.schema, &st.table), quote(timestamp), key.join(", ")));
        }
    }
    Ok(missing)
}

/// The change columns, as `table.column` pairs, for the log.
pub fn describe(doc: &Document) -> String {
    let set: BTreeSet<String> = doc.streams.iter().map(|s| format!("{}.{}", s.table, s.timestamp.as_deref().unwrap_or("(none)"))).collect();
    set.into_iter().collect::<Vec<_>>().join(" ")
}

/// A stream's statements; the page and head ones only for a table with a timestamp.
struct StreamStatements {
    page_first: Option<Statement>,
    page_after: Option<Statement>,
    head: Option<Statement>,
    /// Each fan-out query, and the kind of the keys it is given.
    fan_out: Vec<(Statement, crate::position::KeyKind)>,
}

pub struct Statements {
    streams: BTreeMap<String, StreamStatements>,
    pub records: Statement,
    /// The next page of records in key order after a given key: the same rows as `records`, for `verify`.
    pub records_after: Statement,
    /// Every record in key order, streamed, for the first full load; and the same after a key.
    pub scan_first: Statement,
    pub scan_after: Statement,
    /// How many records a scan after a key has left (for progress).
    pub count_after: Statement,
    /// Which of the given keys exist (reconciliation).
    pub existing: Statement,
}

impl Statements {
    pub async fn prepare(client: &Client, doc: &Document) -> Result<Statements> {
        let prep = |sql: String| async move { client.prepare(&sql).await.map_err(Error::postgres("prepare query")) };
        let mut st = Statements {
            streams: BTreeMap::new(),
            records: prep(sql::records(doc)).await?,
            records_after: prep(sql::records_after(doc)).await?,
            scan_first: prep(sql::scan(doc, false)).await?,
            scan_after: prep(sql::scan(doc, true)).await?,
            count_after: prep(sql::count_after(doc)).await?,
            existing: prep(sql::existing(doc)).await?,
        };
        for stream in &doc.streams {
            let mut fan_out = Vec::new();
            for f in &stream.fan_out {
                fan_out.push((prep(f.sql(&doc.schema, &doc.kinds)).await?, f.kind));
            }
            st.streams.insert(
                stream.table.clone(),
                StreamStatements {
                    page_first: match sql::page(doc, &stream.table, false) {
                        Some(q) => Some(prep(q).await?),
                        None => None,
                    },
                    page_after: match sql::page(doc, &stream.table, true) {
                        Some(q) => Some(prep(q).await?),
                        None => None,
                    },
                    head: match sql::head(doc, &stream.table) {
                        Some(q) => Some(prep(q).await?),
                        None => None,
                    },
                    fan_out,
                },
            );
        }
        Ok(st)
    }

    fn stream(&self, s: &str) -> Result<&StreamStatements> {
        self.streams.get(s).ok_or_else(|| Error::SourceSchema(format!("{s} is not a table of the document")))
    }
    pub fn page_first(&self, s: &str) -> Result<&Statement> {
        self.stream(s)?.page_first.as_ref().ok_or_else(|| untimed(s))
    }
    pub fn page_after(&self, s: &str) -> Result<&Statement> {
        self.stream(s)?.page_after.as_ref().ok_or_else(|| untimed(s))
    }
    pub fn head(&self, s: &str) -> Result<&Statement> {
        self.stream(s)?.head.as_ref().ok_or_else(|| untimed(s))
    }
    pub fn fan_out(&self, s: &str) -> Result<&[(Statement, crate::position::KeyKind)]> {
        Ok(&self.stream(s)?.fan_out)
    }
}

fn untimed(table: &str) -> Error {
    Error::SourceSetup(format!("{table} has no timestamp column, so polling cannot read its changes by it"))
}
