//! Postgres: finds what changed since the saved watermarks and reads the affected records.
//!
//! Every table of a document is a change stream, read in keyset order on `(timestamp, key)`:
//! rows with equal timestamps across a page boundary are neither skipped nor read twice. A
//! changed row leads to the root records that contain it, through its own columns or the
//! document's fan-out queries (both from the catalog).

mod change;
pub mod delete_log;
pub mod pgoutput;
mod polling;
mod queries;
mod reading;
mod recent;
mod replication;
mod settings;
mod tls;
mod version;

pub use change::{Change, ChangeBatch, ChangeSource, CyclePlan, ReadReport, Receipt};
pub use polling::{untimed_without_capture, PollingSource};
pub use recent::{RecentlyLoaded, RowVersion};
pub use replication::{replica_identities, role_may_replicate, ReplicationSource, ReplicationStream};
pub use settings::{HorizonPolicy, PgSslMode, ReplicationSettings, SourceSettings};
pub use version::{server_version, PgVersion, OLDEST_SUPPORTED_MAJOR};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::catalog::{Cell, ColumnType, Document, Record, Selection, Source, Value};
use crate::checkpoint::{SourceIdentity, Stream, Watermark};
use crate::error::{Error, Result};
use crate::position::{Key, KeyKind, KeyPart};

pub use queries::{describe, live_schema, missing_indexes};

/// Which document a source reads: the definition, and the document's name in it. Resolved
/// against the live schema at every connect, so a migration is seen.
#[derive(Debug, Clone)]
pub struct DocumentSpec {
    pub source: Source,
    pub selection: Selection,
    pub name: String,
    /// The definition's first document (it keeps the settings and log rows of pg2es before
    /// definitions).
    pub first: bool,
}

impl DocumentSpec {
    /// Which rows of the change log are this document's.
    pub fn log_document(&self, shape: delete_log::LogShape) -> delete_log::LogDocument {
        delete_log::LogDocument { name: self.name.clone(), first: self.first, shape }
    }
}

impl DocumentSpec {
    /// The document, resolved against the schema as it is now.
    pub async fn resolve(&self, client: &Client, schema: &str) -> Result<Document> {
        let live = live_schema(client, schema).await?;
        let docs = Selection { documents: vec![self.name.clone()], ..self.selection.clone() }.resolve(&self.source, &live)?;
        docs.into_iter().next().ok_or_else(|| Error::Definition(format!("{}: no document {:?}", self.source.origin, self.name)))
    }
}

/// The change capture's triggers for these documents, resolved against `schema` now.
pub async fn trigger_set(client: &Client, schema: &str, specs: &[DocumentSpec]) -> Result<crate::catalog::triggers::TriggerSet> {
    delete_log::schema_database(client, schema).await?;
    let mut docs = Vec::new();
    for spec in specs {
        docs.push(spec.resolve(client, schema).await?);
    }
    Ok(crate::catalog::triggers::capture(schema, &docs))
}

/// A connected source with the document's queries prepared.
pub struct PgSource {
    client: Client,
    version: PgVersion,
    doc: Arc<Document>,
    statements: queries::Statements,
    /// The columns of the document's tables as they were at connect ([`queries::column_identities`]).
    columns: BTreeMap<String, String>,
}

/// One page of changed rows of one stream.
#[derive(Debug)]
pub struct ChangePage {
    pub stream: Stream,
    /// Records to re-index because of this page (deduplicated, sorted).
    pub keys: Vec<Key>,
    /// The rows of the page that had not been loaded already: remembered once their records are.
    pub fresh: Vec<RowVersion>,
    /// Rows of the page whose records were loaded in an earlier cycle, unchanged since.
    pub already_loaded: usize,
    /// Position of the last row of the page: the stream's watermark once the records are loaded.
    pub last: Watermark,
    pub rows: usize,
}

impl PgSource {
    pub async fn connect(pg: &tokio_postgres::Config, tls: &PgTls, schema: &str, spec: &DocumentSpec) -> Result<PgSource> {
        let client = delete_log::connect(pg, tls).await?;
        let version = server_version(&client).await?;
        let doc = Arc::new(spec.resolve(&client, schema).await?);
        let statements = queries::Statements::prepare(&client, &doc).await?;
        let columns = queries::column_identities(&client, schema, &doc.tables()).await?;
        Ok(PgSource { client, version, doc, statements, columns })
    }

    /// The columns of the document's tables as they were when this connection read them.
    pub fn columns(&self) -> &BTreeMap<String, String> {
        &self.columns
    }

    /// Whether a column of the document's tables was dropped and added again, or its type
    /// altered, since this connection read them: its statements and decoders are of the old
    /// ones, so the source connects again (a column added or dropped elsewhere changes nothing).
    pub async fn columns_moved(&self, schema: &str) -> Result<bool> {
        let now = queries::column_identities(&self.client, schema, &self.doc.tables()).await?;
        let changed = crate::checkpoint::changed_columns(&self.columns, &now);
        if !changed.is_empty() {
            tracing::info!(document = %self.doc.name, changed = %changed.join("; "), "a column of the document's tables was dropped and added again, or its type altered: connecting again");
        }
        Ok(!changed.is_empty())
    }

    pub fn version(&self) -> PgVersion {
        self.version
    }

    pub fn document(&self) -> &Arc<Document> {
        &self.doc
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The root keys of the records that contain these rows of `stream` (by its fan-out queries;
    /// none for a stream whose rows name their roots themselves).
    pub async fn roots_of(&self, stream: &str, ids: &[Key]) -> Result<Vec<Key>> {
        let mut roots = Vec::new();
        if ids.is_empty() {
            return Ok(roots);
        }
        for (st, kind) in self.statements.fan_out(stream)? {
            let params = key_arrays(ids, &[*kind]);
            let rows = self.client.query(st, &as_params(&params)).await.map_err(Error::postgres("find the records of changed rows"))?;
            for r in &rows {
                roots.extend(nullable_key(r, 0, &self.doc.kinds)?);
            }
        }
        Ok(roots)
    }

    /// The WAL insert position now: it only grows, and every commit before it is visible to a
    /// query that starts after it.
    pub async fn wal_position(&self) -> Result<u64> {
        wal_position(&self.client).await
    }

    /// Which of these records exist (and pass the document's own `where`).
    pub async fn existing(&self, ids: &[Key]) -> Result<Vec<Key>> {
        let params = key_arrays(ids, &self.doc.kinds);
        let rows = self.client.query(&self.statements.existing, &as_params(&params)).await.map_err(Error::postgres("look up records"))?;
        if self.doc.filter.is_empty() {
            let mut keys = Vec::with_capacity(rows.len());
            for r in &rows {
                keys.extend(nullable_key(r, 0, &self.doc.kinds)?);
            }
            return Ok(keys);
        }
        // The query read the root's columns: the record without its relations.
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let root = record_from_row(&self.doc, r, self.doc.root_columns.len())?;
            if self.doc.keeps(&root) {
                keys.push(root.key);
            }
        }
        Ok(keys)
    }

    /// Which database this is (the state file is tied to it), and its WAL position now.
    pub async fn identity(&self, schema: &str) -> Result<(SourceIdentity, u64)> {
        let row = self
            .client
            .query_one("SELECT system_identifier::text, current_database()::text, pg_catalog.pg_current_wal_lsn()::text FROM pg_control_system()", &[])
            .await
            .map_err(Error::postgres("read the database's identity"))?;
        let identity = SourceIdentity {
            system_identifier: row.try_get(0).map_err(Error::postgres("read system identifier"))?,
            database: row.try_get(1).map_err(Error::postgres("read database name"))?,
            schema: schema.to_string(),
        };
        let wal: String = row.try_get(2).map_err(Error::postgres("read the WAL position"))?;
        Ok((identity, pgoutput::parse_lsn(&wal).ok_or_else(|| Error::SourceSetup(format!("{wal:?} is not a WAL position")))?))
    }

    /// The next page of changes of `stream` after `after` (all rows when `None`).
    /// Rows in `loaded` (unchanged since their records were loaded) lead to no record.
    pub async fn next_page(&self, stream: &str, after: Option<&Watermark>, limit: usize, loaded: &RecentlyLoaded) -> Result<Option<ChangePage>> {
        let limit = limit as i64;
        let read = Error::postgres("read changed rows");
        let st = self.doc.stream(stream).ok_or_else(|| Error::SourceSchema(format!("no stream {stream} in document {}", self.doc.name)))?;
        let rows = match after {
            Some(w) => {
                let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(w.ts)];
                params.extend(w.id.parts().iter().map(part_param));
                params.push(Box::new(limit));
                self.client.query(self.statements.page_after(stream)?, &as_params(&params)).await.map_err(read)?
            }
            None => self.client.query(self.statements.page_first(stream)?, &[&limit]).await.map_err(read)?,
        };
        let Some(last_row) = rows.last() else { return Ok(None) };
        let width = st.key.len();
        let last = Watermark { ts: last_row.try_get(0).map_err(Error::postgres("read ts"))?, id: row_key(last_row, 1, &st.kinds)? };
        // Columns: timestamp, the key's, the direct root columns (a root key's each), xmin.
        let direct = st.direct.len() * self.doc.kinds.len();
        let mut roots: Vec<Key> = Vec::with_capacity(rows.len());
        let mut own: Vec<Key> = Vec::new();
        let mut fresh = Vec::with_capacity(rows.len());
        for r in &rows {
            let version = RowVersion {
                ts: r.try_get(0).map_err(Error::postgres("read ts"))?,
                id: row_key(r, 1, &st.kinds)?,
                xmin: r.try_get(1 + width + direct).map_err(Error::postgres("read row version"))?,
            };
            if loaded.contains(stream, &version) {
                continue;
            }
            for c in (0..direct).step_by(self.doc.kinds.len()) {
                roots.extend(nullable_key(r, 1 + width + c, &self.doc.kinds)?);
            }
            own.push(version.id.clone());
            fresh.push(version);
        }
        let already_loaded = rows.len() - fresh.len();
        roots.extend(self.roots_of(stream, &own).await?);
        roots.sort_unstable();
        roots.dedup();
        Ok(Some(ChangePage { stream: stream.to_string(), keys: roots, fresh, already_loaded, last, rows: rows.len() }))
    }

    /// The newest position of a stream now, or `None` for an empty table.
    pub async fn head(&self, stream: &str) -> Result<Option<Watermark>> {
        let row = self.client.query_opt(self.statements.head(stream)?, &[]).await.map_err(Error::postgres("read newest change"))?;
        match row {
            None => Ok(None),
            Some(r) => {
                let ts: DateTime<Utc> = r.try_get(0).map_err(Error::postgres("read ts"))?;
                let st = self.doc.stream(stream).ok_or_else(|| Error::SourceSchema(format!("no stream {stream} in document {}", self.doc.name)))?;
                Ok(Some(Watermark { ts, id: row_key(&r, 1, &st.kinds)? }))
            }
        }
    }

    /// The commit horizon now: every row that is not yet visible to us will carry a change
    /// timestamp at or after it. Read before the changes themselves.
    pub async fn horizon(&self, policy: &HorizonPolicy) -> Result<Horizon> {
        let row = self.client.query_one(queries::HORIZON_SQL, &[]).await.map_err(Error::postgres("read open transactions"))?;
        let now: DateTime<Utc> = row.try_get(0).map_err(Error::postgres("read clock"))?;
        let oldest: Option<DateTime<Utc>> = row.try_get(1).map_err(Error::postgres("read open transactions"))?;
        let held_by: Option<i32> = row.try_get(2).map_err(Error::postgres("read open transactions"))?;
        let sees_all: bool = row.try_get(3).map_err(Error::postgres("read role"))?;
        Ok(Horizon::compute(now, oldest.zip(held_by), sees_all, policy))
    }

    /// Reads the records with these keys, with their relations. Records that no longer exist
    /// are simply absent from the result.
    pub async fn records(&self, ids: &[Key]) -> Result<Vec<Record>> {
        let params = key_arrays(ids, &self.doc.kinds);
        let rows = self.client.query(&self.statements.records, &as_params(&params)).await.map_err(Error::postgres("read records"))?;
        self.kept(&rows)
    }

    /// The rows as records, but those the document's own `where` leaves out: they have no
    /// document, so a change to one deletes it.
    fn kept(&self, rows: &[tokio_postgres::Row]) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let rec = record_from_row(&self.doc, r, self.doc.columns.len())?;
            if self.doc.keeps(&rec) {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Every record in key order (after `after` when given), streamed: rows are decoded as they are
    /// consumed, and the connection stops reading from the socket while the consumer is behind,
    /// so memory does not grow with the table. Postgres holds one snapshot for the whole scan.
    pub async fn scan_records(&self, after: Option<&Key>) -> Result<impl futures_util::Stream<Item = Result<Record>> + Send + 'static> {
        let rows = match after {
            Some(key) => {
                let params: Vec<_> = key.parts().iter().map(part_param).collect();
                self.client.query_raw(&self.statements.scan_after, as_params(&params)).await
            }
            None => self.client.query_raw(&self.statements.scan_first, std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>()).await,
        }
        .map_err(Error::postgres("read every record"))?;
        let doc = self.doc.clone();
        let keeps = {
            let doc = doc.clone();
            move |r: &Result<Record>| std::future::ready(r.as_ref().map_or(true, |r| doc.keeps(r)))
        };
        Ok(rows.map(move |row| row.map_err(Error::postgres("read every record")).and_then(|r| record_from_row(&doc, &r, doc.columns.len()))).filter(keeps))
    }

    /// How many records a scan after `after` reads (for progress; a record with the least key of
    /// its type, the nil uuid say, is not counted).
    pub async fn records_left(&self, after: Option<&Key>) -> Result<u64> {
        let least = Key::least(&self.doc.kinds);
        let params: Vec<_> = after.unwrap_or(&least).parts().iter().map(part_param).collect();
        let row = self.client.query_one(&self.statements.count_after, &as_params(&params)).await.map_err(Error::postgres("count records"))?;
        Ok(row.try_get::<_, i64>(0).map_err(Error::postgres("count records"))?.max(0) as u64)
    }

    /// Up to `limit` records whose key's text comes after `after` (`None`: from the first), in the
    /// byte order of the keys' text (an index's order of keyword `_id`s), read the same way as
    /// [`PgSource::records`]. Keyset paging: for a uuid key each page is one index range scan.
    /// Fewer than `limit` only at the end: pages that the document's own `where` thins out are
    /// followed by the next.
    pub async fn records_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let nil = KeyKind::Uuid.least().to_string();
        let mut after: Option<String> = after.map(str::to_string).or_else(|| (self.doc.kinds == [KeyKind::Uuid]).then_some(nil));
        loop {
            let rows =
                self.client.query(&self.statements.records_after, &[&after, &(limit as i64)]).await.map_err(Error::postgres("read records in key order"))?;
            let Some(last) = rows.last() else { return Ok(out) };
            let recs = self.kept(&rows)?;
            after = Some(record_from_row(&self.doc, last, self.doc.key.len())?.key.to_string());
            out.extend(recs);
            if rows.len() < limit || out.len() >= limit {
                return Ok(out);
            }
        }
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "postgres connection ended");
    }
}

/// How to reach Postgres: plain, or TLS with rustls as the DSN's `sslmode` asks (see
/// [`PgSslMode`] and `tls.rs`).
#[derive(Clone)]
pub enum PgTls {
    Off,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl PgTls {
    pub fn new(settings: &SourceSettings) -> Result<PgTls> {
        Ok(match tls::client_config(settings.ssl_mode, settings.ca_file.as_deref())? {
            None => PgTls::Off,
            Some(tls) => PgTls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(tls)),
        })
    }
}

/// The point a watermark may not pass in this cycle.
///
/// A transaction still open when a cycle starts may commit later rows whose timestamps are older
/// than anything the cycle reads (Django stamps rows before it commits; `now()` is the start of
/// the transaction). Polling `ts > last_seen` would skip them for good. So the committed
/// watermark never moves past the start of the oldest open transaction (minus the writers' clock
/// skew): rows after it are read again next cycle, which is harmless because loads are idempotent.
/// Without the right to see other sessions, a fixed window (`ETL_MAX_TX_SEC`) stands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub at: DateTime<Utc>,
    /// The open transaction holding the horizon back: backend pid and start.
    pub held_by: Option<(i32, DateTime<Utc>)>,
    /// False when open transactions of other roles could not be seen.
    pub exact: bool,
}

impl Horizon {
    pub fn compute(now: DateTime<Utc>, oldest: Option<(DateTime<Utc>, i32)>, sees_all: bool, policy: &HorizonPolicy) -> Horizon {
        let skew = chrono::Duration::from_std(policy.clock_skew).unwrap_or(chrono::Duration::MAX);
        let window = chrono::Duration::from_std(policy.max_transaction).unwrap_or(chrono::Duration::MAX);
        let (base, held_by) = match oldest {
            Some((start, pid)) if start < now => (start, Some((pid, start))),
            _ => (now, None),
        };
        let mut at = base.checked_sub_signed(skew).unwrap_or(base);
        if !sees_all {
            at = at.min(now.checked_sub_signed(window).unwrap_or(now));
        }
        Horizon { at, held_by, exact: sees_all }
    }

    /// The furthest a stream may advance: rows at the horizon itself are read again.
    pub fn cap(&self, mark: Watermark, kinds: &[KeyKind]) -> Watermark {
        mark.min(Watermark { ts: self.at, id: Key::least(kinds) })
    }
}

fn value(row: &tokio_postgres::Row, i: usize, ty: ColumnType) -> Result<Value, tokio_postgres::Error> {
    Ok(match ty {
        ColumnType::Text | ColumnType::Time | ColumnType::Char => row.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Text),
        ColumnType::Json | ColumnType::Array => row.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Json),
        ColumnType::Uuid => row.try_get::<_, Option<uuid::Uuid>>(i)?.map_or(Value::Null, Value::Uuid),
        ColumnType::Int => row.try_get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int),
        ColumnType::Float => row.try_get::<_, Option<f64>>(i)?.map_or(Value::Null, Value::Float),
        ColumnType::Bool => row.try_get::<_, Option<bool>>(i)?.map_or(Value::Null, Value::Bool),
    })
}

fn values<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    row: &tokio_postgres::Row,
    i: usize,
    f: impl Fn(T) -> Value,
) -> Result<Vec<Value>, tokio_postgres::Error> {
    Ok(row.try_get::<_, Option<Vec<Option<T>>>>(i)?.unwrap_or_default().into_iter().map(|v| v.map_or(Value::Null, &f)).collect())
}

fn array(row: &tokio_postgres::Row, i: usize, ty: ColumnType) -> Result<Vec<Value>, tokio_postgres::Error> {
    match ty {
        ColumnType::Text | ColumnType::Time | ColumnType::Char => values(row, i, Value::Text),
        ColumnType::Json | ColumnType::Array => values(row, i, Value::Json),
        ColumnType::Uuid => values(row, i, Value::Uuid),
        ColumnType::Int => values(row, i, Value::Int),
        ColumnType::Float => values(row, i, Value::Float),
        ColumnType::Bool => values(row, i, Value::Bool),
    }
}

/// One row of the record queries (the first `columns` of [`Document::columns`]) as a record.
fn record_from_row(doc: &Document, row: &tokio_postgres::Row, columns: usize) -> Result<Record> {
    let ctx = || Error::postgres("read a record");
    let mut cells = Vec::with_capacity(columns);
    for (i, c) in doc.columns.iter().take(columns).enumerate() {
        cells.push(if c.many { Cell::Many(array(row, i, c.ty).map_err(ctx())?) } else { Cell::One(value(row, i, c.ty).map_err(ctx())?) });
    }
    let mut key = Vec::with_capacity(doc.key.len());
    for (cell, column) in cells.iter().zip(&doc.key) {
        let part = match cell {
            Cell::One(v) => v.key_part(),
            Cell::Many(_) => None,
        };
        key.push(part.ok_or_else(|| Error::SourceSchema(format!("a row of {}.{} has a NULL key {column}", doc.schema, doc.root)))?);
    }
    Ok(Record { key: Key::new(key), cells })
}

/// Column `i`, a key column as `sql::read_key` reads it; `None` for NULL.
fn key_part(row: &tokio_postgres::Row, i: usize, kind: KeyKind) -> Result<Option<KeyPart>, tokio_postgres::Error> {
    Ok(match kind {
        KeyKind::Int => row.try_get::<_, Option<i64>>(i)?.map(KeyPart::Int),
        KeyKind::Uuid | KeyKind::Text => row.try_get::<_, Option<String>>(i)?.map(KeyPart::Text),
    })
}

/// The key in the columns from `first` on, one per kind.
fn row_key(row: &tokio_postgres::Row, first: usize, kinds: &[KeyKind]) -> Result<Key> {
    nullable_key(row, first, kinds)?.ok_or_else(|| Error::SourceSchema("a row has a NULL key column".into()))
}

/// The key in the columns from `first` on, one per kind; `None` when one of them is NULL (a
/// link row's root column set null, say).
fn nullable_key(row: &tokio_postgres::Row, first: usize, kinds: &[KeyKind]) -> Result<Option<Key>> {
    let mut parts = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        match key_part(row, first + i, *kind).map_err(Error::postgres("read a key"))? {
            Some(p) => parts.push(p),
            None => return Ok(None),
        }
    }
    Ok(Some(Key::new(parts)))
}

type Param = Box<dyn ToSql + Sync + Send>;

fn as_params(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// One key part as a parameter (`sql::key_param` casts it to the column's type).
fn part_param(part: &KeyPart) -> Param {
    match part {
        KeyPart::Int(i) => Box::new(*i),
        KeyPart::Text(t) => Box::new(t.clone()),
    }
}

/// Keys as the array parameters `sql::key_array` casts, one per key column, the keys' parts side
/// by side (keys of another shape, which no row has, are left out).
fn key_arrays(keys: &[Key], kinds: &[KeyKind]) -> Vec<Param> {
    let fits = |k: &&Key| {
        k.parts().len() == kinds.len()
            && k.parts()
                .iter()
                .zip(kinds)
                .all(|(p, kind)| matches!((p, kind), (KeyPart::Int(_), KeyKind::Int) | (KeyPart::Text(_), KeyKind::Uuid | KeyKind::Text)))
    };
    let keys: Vec<&Key> = keys.iter().filter(fits).collect();
    let column = |i: usize| keys.iter().map(move |k| &k.parts()[i]);
    kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| -> Param {
            match kind {
                KeyKind::Int => Box::new(column(i).filter_map(|p| if let KeyPart::Int(n) = p { Some(*n) } else { None }).collect::<Vec<i64>>()),
                KeyKind::Uuid | KeyKind::Text => {
                    Box::new(column(i).filter_map(|p| if let KeyPart::Text(t) = p { Some(t.clone()) } else { None }).collect::<Vec<String>>())
                }
            }
        })
        .collect()
}

/// The WAL insert position now, on `client`'s server ([`PgSource::wal_position`]).
pub async fn wal_position(client: &Client) -> Result<u64> {
    let row = client.query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[]).await.map_err(Error::postgres("read the WAL position"))?;
    let text: String = row.try_get(0).map_err(Error::postgres("read the WAL position"))?;
    pgoutput::parse_lsn(&text).ok_or_else(|| Error::SourceSetup(format!("{text:?} is not a WAL position")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    const POLICY: HorizonPolicy = HorizonPolicy { clock_skew: Duration::from_secs(1), max_transaction: Duration::from_secs(60) };

    #[test]
    fn horizon_stops_at_the_oldest_open_transaction() {
        let h = Horizon::compute(t(100), Some((t(40), 7)), true, &POLICY);
        assert_eq!(h.at, t(39));
        assert_eq!(h.held_by, Some((7, t(40))));
        let h = Horizon::compute(t(100), None, true, &POLICY);
        assert_eq!((h.at, h.held_by), (t(99), None));
    }

    #[test]
    fn without_visibility_a_fixed_window_stands_in() {
        let h = Horizon::compute(t(100), None, false, &POLICY);
        assert_eq!(h.at, t(40));
        assert!(!h.exact);
    }

    #[test]
    fn cap_keeps_rows_at_the_horizon_for_the_next_cycle() {
        let h = Horizon::compute(t(100), None, true, &POLICY);
        let kinds = [KeyKind::Int];
        let later = Watermark { ts: t(99), id: Key::int(5) };
        assert_eq!(h.cap(later, &kinds), Watermark { ts: t(99), id: Key::int(i64::MIN) });
        let earlier = Watermark { ts: t(50), id: Key::int(5) };
        assert_eq!(h.cap(earlier.clone(), &kinds), earlier);
        let uuid = Watermark { ts: t(99), id: Key::text("67e55044-10b1-426f-9247-bb680e5fe0c8") };
        assert_eq!(h.cap(uuid, &[KeyKind::Uuid]).id.to_string(), "00000000-0000-0000-0000-000000000000");
    }
}
