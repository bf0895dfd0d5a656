//! `pg2es verify`: compares the index with what the transform would make of Postgres now.
//!
//! Both sides are read in id order, one page at a time, and merge-joined, so memory holds at most
//! a page of each however large the tables are. Documents come from Elasticsearch sorted on the
//! `id` keyword, with `search_after`, in the UTF-8 byte order of their ids. Records come from
//! Postgres by keyset in the byte order of their key's text (`COLLATE "C"`), which is the same
//! order: for a uuid key that is the key's own order (an index range scan); for an integer or
//! text key each page sorts the table. A document whose `id` is not its `_id` has no place in
//! that order: it is counted as extra (and its record, if there is one, as missing).
//!
//! Neither side is a snapshot: a long transaction would hold back the commit horizon of a running
//! pipeline. Against a live pipeline, records changed during the check can show as stale; a second
//! run tells. Verify only reads, and takes no lock.
//!
//! Without the delete capture triggers, a record deleted in Postgres stays in the index (extra)
//! until reconciliation, and a deleted link stays in its record's document (stale); a write that
//! leaves the change column alone is never seen by polling. The report's hints say so, for the
//! source kind and what is installed ([`Setup`]).

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::catalog::{IndexSpec, Record};
use crate::config::{Config, SourceKind};
use crate::error::{Error, Result};
use crate::retry::{retry, RetryPolicy};
use crate::settings::{ETL_RECONCILE_SEC, PG2ES_DOCUMENTS};
use crate::shutdown::Shutdown;
use crate::sink::ElasticsearchSink;
use crate::source::DocumentSpec;
use crate::source::{delete_log, PgSource, PgTls};
use crate::transform::build;

mod repair;
pub use repair::Repairer;

/// Ids listed per kind of difference; the counts are always complete.
pub const SAMPLE_SIZE: usize = 20;

/// Elasticsearch refuses a larger `size` unless `index.max_result_window` is raised.
const MAX_SEARCH_SIZE: usize = 10_000;

/// What verify found. Consistent when nothing is missing, stale or extra. Serialized with its
/// [`hints`](VerifyReport::hints).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    /// Records read from Postgres.
    pub checked: u64,
    /// Records without a document.
    pub missing: Discrepancies<String>,
    /// Documents that differ from what the transform makes of their record now.
    pub stale: Discrepancies<StaleDocument>,
    /// Documents (by `_id`) whose record is not in Postgres.
    pub extra: Discrepancies<String>,
    /// How pg2es reads this catalog: the hints depend on it.
    pub setup: Setup,
    /// What `verify --repair` wrote (`None`: only compared).
    pub repaired: Option<Repaired>,
}

/// What `verify --repair` did about the differences it found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Repaired {
    /// Documents written again from their record as Postgres has it now (missing or stale ones,
    /// and extra ones whose record exists by the time it was read again).
    pub indexed: u64,
    /// Documents deleted: no record makes them any more.
    pub deleted: u64,
    /// Writes of the last pass the index refused because it holds a newer version of the
    /// document. Written since by `pg2es run`, that is as it should be; but if the same documents
    /// stay stale, the index
    /// was written from a source with higher WAL positions (another server, or before a restore),
    /// and only `pg2es reindex` into a new index, or deleting the index, brings it back.
    pub older_than_index: u64,
    /// Documents Elasticsearch refused for good (written to the dead-letter file).
    pub dead_lettered: u64,
    /// Passes over the whole document (see [`repair_document`]).
    pub passes: u32,
}

/// What the hints depend on: how pg2es finds changes, and whether the delete capture is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Setup {
    /// `PG2ES_SOURCE=replication`: every committed write and delete is in the stream.
    pub replication: bool,
    /// The delete capture triggers are installed on PG_SCHEMA (complete and enabled).
    pub delete_capture: bool,
}

/// A count, and the first [`SAMPLE_SIZE`] of what was counted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discrepancies<T> {
    pub count: u64,
    pub first: Vec<T>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleDocument {
    pub id: String,
    /// The first field (in name order) whose stored value differs.
    pub field: String,
}

impl<T> Default for Discrepancies<T> {
    fn default() -> Self {
        Discrepancies { count: 0, first: Vec::new() }
    }
}

impl<T> Discrepancies<T> {
    /// Counts `count` more, keeping as many of `items` as the sample still has room for.
    fn add(&mut self, count: u64, items: impl IntoIterator<Item = T>) {
        self.count += count;
        let room = SAMPLE_SIZE.saturating_sub(self.first.len());
        self.first.extend(items.into_iter().take(room));
    }

    fn record(&mut self, item: T) {
        self.add(1, [item]);
    }
}

/// The last resort of a missing or stale document's hint.
const REPAIR: &str = "run `pg2es verify --repair`, which writes those documents again from Postgres as it is (README, 'The bad day: what to run')";

impl VerifyReport {
    pub fn is_consistent(&self) -> bool {
        self.missing.count == 0 && self.stale.count == 0 && self.extra.count == 0
    }

    /// One line: the three counts.
    pub fn summary(&self) -> String {
        format!("{} missing, {} stale, {} extra of {} records checked", self.missing.count, self.stale.count, self.extra.count, self.checked)
    }

    /// Why each kind of difference found usually happens in this setup, and what to do about it.
    pub fn hints(&self) -> Vec<String> {
        let documents = |n: u64| if n == 1 { "document" } else { "documents" };
        let Setup { replication, delete_capture } = self.setup;
        let mut hints = Vec::new();
        if self.missing.count > 0 {
            let n = self.missing.count;
            let why = if replication {
                "records not loaded yet; pg2es loads them at its next cycle (the replication stream carries every committed write). One still missing after that: "
            } else {
                "records not loaded yet; `pg2es run` loads them at its next cycle. One still missing after that was written with a change column that is NULL or older than what pg2es had read (an import that keeps old timestamps), which polling does not see: set the column in such writes (UPDATE ... SET updated_at = now() on those rows), or "
            };
            hints.push(format!("{n} missing {}: {why}{REPAIR}", documents(n)));
        }
        if self.stale.count > 0 {
            let n = self.stale.count;
            let why = match (replication, delete_capture) {
                (true, _) => "a change not loaded yet: run verify again after pg2es's next cycle (the replication stream carries every committed write and delete). One still stale after that: ",
                (false, true) => "a change not loaded yet: run verify again after pg2es's next cycle. One still stale after that was changed by a write that left the change column as it was (an UPDATE that does not set updated_at, such as Django's QuerySet.update()), which polling never sees: set the column in such writes (UPDATE ... SET updated_at = now() on those rows), or ",
                (false, false) => "a change not loaded yet: run verify again after pg2es's next cycle. One still stale after that lost a related row or a link deleted in Postgres, which polling sees only with the delete capture triggers (README, 'Deletes': `pg2es delete-capture install`), or was changed by a write that left the change column as it was (an UPDATE that does not set updated_at, such as Django's QuerySet.update()), which polling never sees: set the column in such writes, or ",
            };
            hints.push(format!("{n} stale {}: {why}{REPAIR}", documents(n)));
        }
        if let Some(r) = self.repaired.filter(|r| r.older_than_index > 0) {
            hints.push(format!(
                "{} of the repairs were refused as older than the index's version of the document: if `pg2es run` wrote those documents meanwhile, verify shows them equal; if they stay stale, the index was written from a source whose WAL positions are higher (another server, or the database before a restore), so that every write from this one looks older: rebuild it with `pg2es reindex`, or delete the index and its state",
                r.older_than_index
            ));
        }
        if self.extra.count > 0 {
            let n = self.extra.count;
            let why = match (replication, delete_capture) {
                (true, _) => format!("records deleted in Postgres; pg2es deletes their documents at its next cycle (the replication stream carries deletes), and reconciliation within {ETL_RECONCILE_SEC}"),
                (false, true) => format!("records deleted in Postgres; pg2es deletes their documents at its next cycle (the delete capture), and reconciliation within {ETL_RECONCILE_SEC}"),
                (false, false) => format!("records deleted in Postgres; reconciliation deletes their documents within {ETL_RECONCILE_SEC} (at the next cycle with the delete capture triggers: README, 'Deletes')"),
            };
            hints.push(format!("{n} extra {}: {why}", documents(n)));
        }
        hints
    }

    /// A short table for a person: counts, then the first ids of each kind, then the hints.
    pub fn render(&self) -> String {
        const IDS_AT: usize = 20;
        let mut out = format!("{:<8} {:>9}  first ids\n{:<8} {:>9}\n", "", "count", "checked", self.checked);
        let stale = self.stale.first.iter().map(|s| format!("{}  ({})", s.id, s.field)).collect();
        for (kind, count, ids) in [
            ("missing", self.missing.count, self.missing.first.clone()),
            ("stale", self.stale.count, stale),
            ("extra", self.extra.count, self.extra.first.clone()),
        ] {
            let row = format!("{kind:<8} {count:>9}  {}", ids.first().map_or("", String::as_str));
            let _ = writeln!(out, "{}", row.trim_end());
            for id in ids.iter().skip(1) {
                let _ = writeln!(out, "{:IDS_AT$}{id}", "");
            }
            if count > ids.len() as u64 {
                let _ = writeln!(out, "{:IDS_AT$}… {} more", "", count - ids.len() as u64);
            }
        }
        if let Some(r) = self.repaired {
            let _ = writeln!(
                out,
                "repaired: {} indexed, {} deleted, {} refused as older than the index, {} dead-lettered ({} passes)",
                r.indexed, r.deleted, r.older_than_index, r.dead_lettered, r.passes
            );
        }
        for hint in self.hints() {
            let _ = writeln!(out, "hint: {hint}");
        }
        out
    }
}

impl Serialize for VerifyReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("VerifyReport", 6)?;
        s.serialize_field("checked", &self.checked)?;
        s.serialize_field("missing", &self.missing)?;
        s.serialize_field("stale", &self.stale)?;
        s.serialize_field("extra", &self.extra)?;
        if let Some(r) = &self.repaired {
            s.serialize_field("repaired", r)?;
        }
        s.serialize_field("hints", &self.hints())?;
        s.end()
    }
}

/// [`verify_document`] for the one document the settings select (PG2ES_DOCUMENTS).
pub async fn verify(config: &Config, shutdown: &Shutdown) -> Result<VerifyReport> {
    let docs = crate::pipeline::documents(config)?;
    match docs.as_slice() {
        [(c, spec, index)] => verify_document(c, spec.clone(), index, shutdown).await,
        _ => Err(Error::Config(format!("{} documents are selected: name one with {PG2ES_DOCUMENTS}", docs.len()))),
    }
}

/// Reads both sides of one document and compares them; see the module notes.
pub async fn verify_document(config: &Config, spec: DocumentSpec, index: &IndexSpec, shutdown: &Shutdown) -> Result<VerifyReport> {
    compare(config, spec, index, false, shutdown).await
}

/// Passes of `verify --repair` at most: the first, and again while the one before wrote anything.
pub const REPAIR_PASSES: u32 = 3;

/// `verify --repair` of one document: compares as [`verify_document`] does, and has every
/// document found missing, stale or extra written again from Postgres as it is at that moment
/// ([`Repairer`]), a page at a time. A pass that wrote anything is followed by another (at most
/// [`REPAIR_PASSES`]): a record changed while its page was repaired can have its repair land over
/// `run`'s newer write of it (each process's versions are in its own reading order, not in each
/// other's), and the next pass writes it again. The report is of what the first pass found, with
/// what every pass wrote.
pub async fn repair_document(config: &Config, spec: DocumentSpec, index: &IndexSpec, shutdown: &Shutdown) -> Result<VerifyReport> {
    let mut first: Option<VerifyReport> = None;
    let mut total = Repaired::default();
    for pass in 1..=REPAIR_PASSES {
        let report = compare(config, spec.clone(), index, true, shutdown).await?;
        let done = report.repaired.unwrap_or_default();
        total.indexed += done.indexed;
        total.deleted += done.deleted;
        // A refusal that a later pass does not meet again was `run`'s newer write: what counts
        // is the last pass's.
        total.older_than_index = done.older_than_index;
        total.dead_lettered += done.dead_lettered;
        total.passes = pass;
        first.get_or_insert(report);
        if done.indexed + done.deleted == 0 {
            break;
        }
    }
    let mut report = first.unwrap_or_default();
    report.repaired = Some(total);
    Ok(report)
}

async fn compare(config: &Config, spec: DocumentSpec, index: &IndexSpec, repair: bool, shutdown: &Shutdown) -> Result<VerifyReport> {
    let started = Instant::now();
    let sink = ElasticsearchSink::new(&config.sink_settings())?;
    // A missing index or another mapping is said as such, not as the first search's error.
    sink.engine(shutdown).await?;
    sink.check_index(&index.schema, shutdown).await?;
    // What pg2es stored is searchable only after a refresh: right after `run --once` it may not
    // be yet. Best effort: a role that may only read still gets its report.
    if let Err(e) = sink.refresh().await {
        tracing::debug!(error = %e, "index not refreshed before verify");
    }
    let mut records = RecordPages::new(config, spec.clone(), shutdown)?;
    let mut documents = DocumentPages::new(&sink, config.batch_size.min(MAX_SEARCH_SIZE), shutdown);
    tracing::info!(index = %config.es_index, page_size = config.batch_size, "verifying index against postgres");

    let setup = Setup {
        replication: matches!(config.source, SourceKind::Replication(_)),
        delete_capture: retry(&config.retry_policy(), shutdown, "check the delete capture", || delete_capture_installed(config, &spec)).await?,
    };
    let mut report = VerifyReport { setup, ..VerifyReport::default() };
    let mut repairer = match repair {
        true => Some(Repairer::new(config, &spec, &sink, shutdown).await?),
        false => None,
    };
    let (mut expected, mut stored) = (VecDeque::new(), VecDeque::new());
    while !(records.done && documents.done && expected.is_empty() && stored.is_empty()) {
        if shutdown.is_triggered() {
            return Err(Error::Shutdown);
        }
        let mut unplaced = Vec::new();
        tokio::try_join!(records.fill(&mut expected), documents.fill(&mut stored, &mut unplaced))?;
        let mut found = Vec::new();
        join(&mut expected, &mut stored, records.done, documents.done, &mut report, &mut found);
        report.extra.add(unplaced.len() as u64, unplaced.iter().cloned());
        if let Some(r) = repairer.as_mut() {
            r.take(found, unplaced);
            r.flush(false).await?;
        }
    }
    let (count, ids) = sink.documents_without_id(SAMPLE_SIZE, shutdown).await?;
    report.extra.add(count, ids);
    if let Some(mut r) = repairer {
        r.flush(true).await?;
        r.remove_without_id(count).await?;
        report.repaired = Some(r.done);
    }

    tracing::info!(
        checked = report.checked,
        missing = report.missing.count,
        stale = report.stale.count,
        extra = report.extra.count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "verify done"
    );
    Ok(report)
}

async fn delete_capture_installed(config: &Config, spec: &DocumentSpec) -> Result<bool> {
    let client = delete_log::connect_with(&config.source_settings()).await?;
    let doc = spec.resolve(&client, &config.postgres.schema).await?;
    delete_log::installed_for(&client, &crate::catalog::triggers::capture(&config.postgres.schema, &[doc]), spec.first).await
}

/// A document in the join: the record key it stands for, and its source.
#[derive(Debug, Clone, PartialEq)]
struct OrderedDoc {
    /// The key's text, the document's `_id`.
    id: String,
    source: Value,
}

/// Compares the heads of both sides for as long as each side either has a document or is
/// finished; returns when one side needs its next page.
/// The ids of every difference found go to `found` too, in id order: what a repair writes again.
fn join(
    expected: &mut VecDeque<OrderedDoc>,
    stored: &mut VecDeque<OrderedDoc>,
    records_done: bool,
    docs_done: bool,
    report: &mut VerifyReport,
    found: &mut Vec<String>,
) {
    loop {
        let ahead = match (expected.front(), stored.front()) {
            (Some(e), Some(s)) => e.id.cmp(&s.id),
            (Some(_), None) if docs_done => std::cmp::Ordering::Less,
            (None, Some(_)) if records_done => std::cmp::Ordering::Greater,
            _ => return,
        };
        match ahead {
            std::cmp::Ordering::Less => {
                let Some(record) = expected.pop_front() else { return };
                report.checked += 1;
                tracing::debug!(key = %record.id, "document missing");
                found.push(record.id.clone());
                report.missing.record(record.id);
            }
            std::cmp::Ordering::Greater => {
                let Some(doc) = stored.pop_front() else { return };
                tracing::debug!(document = %doc.id, "document without record");
                found.push(doc.id.clone());
                report.extra.record(doc.id);
            }
            std::cmp::Ordering::Equal => {
                let (Some(record), Some(doc)) = (expected.pop_front(), stored.pop_front()) else { return };
                report.checked += 1;
                if let Some(field) = first_difference(&record.source, &doc.source) {
                    tracing::debug!(key = %record.id, field = %field, "document stale");
                    found.push(record.id.clone());
                    report.stale.record(StaleDocument { id: record.id, field });
                }
            }
        }
    }
}

/// The first top-level field, in name order, where `stored` differs from `expected`.
fn first_difference(expected: &Value, stored: &Value) -> Option<String> {
    let d = crate::diff::first_difference(expected, stored, same_value)?;
    Some(d.path.first().map_or("_source", |f| *f).to_string())
}

/// Exact equality, except that numbers (the rating) may differ by rounding.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| (x - y).abs() < 1e-9),
        _ => a == b,
    }
}

/// One connection to Postgres for the document, opened when first needed and again after it
/// broke: a keyset page or a lookup can simply be read again.
struct Connection<'a> {
    config: &'a Config,
    spec: DocumentSpec,
    tls: PgTls,
    source: Mutex<Option<PgSource>>,
}

impl<'a> Connection<'a> {
    fn new(config: &'a Config, spec: DocumentSpec) -> Result<Connection<'a>> {
        Ok(Connection { config, spec, tls: PgTls::new(&config.source_settings())?, source: Mutex::new(None) })
    }

    /// The open connection, or a new one; hand it back with [`Connection::put`].
    async fn take(&self) -> Result<PgSource> {
        match self.source.lock().await.take() {
            Some(s) if !s.is_closed() => Ok(s),
            _ => PgSource::connect(&self.config.postgres.pg, &self.tls, &self.config.postgres.schema, &self.spec).await,
        }
    }

    async fn put(&self, source: PgSource) {
        *self.source.lock().await = Some(source);
    }
}

/// Records in key order, as documents, a page at a time. Reconnects when the connection breaks.
struct RecordPages<'a> {
    config: &'a Config,
    pg: Connection<'a>,
    policy: RetryPolicy,
    shutdown: &'a Shutdown,
    /// The text of the last record's key (`None`: none read yet).
    after: Option<String>,
    done: bool,
}

impl<'a> RecordPages<'a> {
    fn new(config: &'a Config, spec: DocumentSpec, shutdown: &'a Shutdown) -> Result<RecordPages<'a>> {
        Ok(RecordPages { config, pg: Connection::new(config, spec)?, policy: config.retry_policy(), shutdown, after: None, done: false })
    }

    async fn fill(&mut self, out: &mut VecDeque<OrderedDoc>) -> Result<()> {
        if self.done || !out.is_empty() {
            return Ok(());
        }
        let (doc, records) = retry(&self.policy, self.shutdown, "read records", || self.read_page(self.after.as_deref())).await?;
        self.done = records.len() < self.config.batch_size;
        for record in &records {
            let (body, _) = build(&doc, record).map_err(|e| Error::SourceSchema(e.0))?;
            let source = serde_json::from_slice(&body).map_err(|e| Error::Encode(format!("{} {}: {e}", doc.name, record.key)))?;
            let id = record.key.to_string();
            self.after = Some(id.clone());
            out.push_back(OrderedDoc { id, source });
        }
        Ok(())
    }

    async fn read_page(&self, after: Option<&str>) -> Result<(std::sync::Arc<crate::catalog::Document>, Vec<Record>)> {
        let source = self.pg.take().await?;
        let records = source.records_after(after, self.config.batch_size).await;
        let doc = source.document().clone();
        self.pg.put(source).await;
        Ok((doc, records?))
    }
}

/// Documents in `id` order, a page at a time.
struct DocumentPages<'a> {
    sink: &'a ElasticsearchSink,
    size: usize,
    shutdown: &'a Shutdown,
    /// The sort value of the last document read: where the next page starts.
    after: Option<String>,
    last_placed: Option<String>,
    done: bool,
}

impl<'a> DocumentPages<'a> {
    fn new(sink: &'a ElasticsearchSink, size: usize, shutdown: &'a Shutdown) -> DocumentPages<'a> {
        DocumentPages { sink, size, shutdown, after: None, last_placed: None, done: false }
    }

    /// Reads the next page into `out`; the `_id`s of documents that have no place in id order go
    /// to `unplaced`.
    async fn fill(&mut self, out: &mut VecDeque<OrderedDoc>, unplaced: &mut Vec<String>) -> Result<()> {
        if self.done || !out.is_empty() {
            return Ok(());
        }
        let mut page = self.sink.documents_after(self.after.as_deref(), self.size, self.shutdown).await?;
        self.done = page.len() < self.size;
        // The next page starts after the last `id`: documents beyond this page that share it (a
        // copy under another `_id`) are read with this page, or they would never be seen.
        let last = page.last().and_then(|d| d.sort.first()).and_then(Value::as_str).map(str::to_string);
        if let (false, Some(last)) = (self.done, last) {
            let read: Vec<String> =
                page.iter().rev().take_while(|d| d.sort.first().and_then(Value::as_str) == Some(last.as_str())).map(|d| d.id.clone()).collect();
            for mut doc in self.sink.documents_with_id(&last, MAX_SEARCH_SIZE, self.shutdown).await? {
                if !read.contains(&doc.id) {
                    doc.sort = vec![Value::String(last.clone())];
                    page.push(doc);
                }
            }
            // Of these, the one whose `_id` is its `id` (if any) is placed below, the others are extra.
        }
        for doc in page {
            let out_of_order = |why: String| Error::ElasticsearchStatus { context: "read documents", status: 200, body: why };
            let Some(Value::String(key)) = doc.sort.first() else {
                return Err(out_of_order(format!("document {} came without its id as sort value", doc.id)));
            };
            self.after = Some(key.clone());
            let Some(id) = placed(key, &doc.id) else {
                tracing::debug!(document = %doc.id, id = %key, "document id is not its _id");
                unplaced.push(doc.id);
                continue;
            };
            if self.last_placed.as_ref().is_some_and(|last| id <= *last) {
                return Err(out_of_order(format!(
                    "documents are not in id order at id {key}; is the id field a keyword sorted with a normalizer, or not a keyword?"
                )));
            }
            self.last_placed = Some(id.clone());
            out.push_back(OrderedDoc { id, source: doc.source });
        }
        Ok(())
    }
}

/// The record a document stands for in the join: its `id` must be its `_id` (the text of its
/// record's key), so that its keyword order is the records' order.
fn placed(key: &str, doc_id: &str) -> Option<String> {
    (key == doc_id).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(n: u128, title: &str) -> OrderedDoc {
        OrderedDoc { id: id(n), source: json!({ "id": id(n), "title": title, "imdb_rating": 7.1 }) }
    }

    fn id(n: u128) -> String {
        uuid::Uuid::from_u128(n).to_string()
    }

    #[test]
    fn join_sorts_out_missing_stale_and_extra() {
        let mut expected: VecDeque<_> = [doc(1, "a"), doc(2, "b"), doc(4, "d"), doc(6, "f")].into();
        let mut stored: VecDeque<_> = [doc(2, "b"), doc(3, "c"), doc(4, "changed"), doc(7, "g")].into();
        let mut report = VerifyReport::default();
        join(&mut expected, &mut stored, true, true, &mut report, &mut Vec::new());
        assert!(expected.is_empty() && stored.is_empty());
        assert_eq!(report.checked, 4);
        assert_eq!(report.missing.first, [id(1), id(6)]);
        assert_eq!(report.extra.first, [id(3), id(7)]);
        assert_eq!(report.stale.first, [StaleDocument { id: id(4), field: "title".into() }]);
        assert!(!report.is_consistent());
    }

    #[test]
    fn join_waits_for_the_next_page_of_an_unfinished_side() {
        let mut expected: VecDeque<_> = [doc(1, "a"), doc(5, "e")].into();
        let mut stored: VecDeque<_> = [doc(1, "a")].into();
        let mut report = VerifyReport::default();
        join(&mut expected, &mut stored, false, false, &mut report, &mut Vec::new());
        // Record 5 may still come on the next page of documents: not missing yet.
        assert_eq!(expected, [doc(5, "e")]);
        assert_eq!((report.checked, report.missing.count), (1, 0));
        stored.push_back(doc(5, "e"));
        join(&mut expected, &mut stored, true, false, &mut report, &mut Vec::new());
        assert!(report.is_consistent());
        assert_eq!(report.checked, 2);
    }

    #[test]
    fn counts_go_on_past_the_sample() {
        let mut expected: VecDeque<_> = (1..=30).map(|n| doc(n, "x")).collect();
        let mut report = VerifyReport::default();
        join(&mut expected, &mut VecDeque::new(), true, true, &mut report, &mut Vec::new());
        assert_eq!(report.missing.count, 30);
        assert_eq!(report.missing.first.len(), SAMPLE_SIZE);
        assert!(report.render().contains("… 10 more"), "{}", report.render());
    }

    #[test]
    fn differences_name_the_first_field() {
        let e = json!({ "id": "x", "imdb_rating": 7.1, "title": "t", "genre": ["a"] });
        assert_eq!(first_difference(&e, &e.clone()), None);
        assert_eq!(first_difference(&e, &json!({ "id": "x", "imdb_rating": 7.1 + 1e-12, "title": "t", "genre": ["a"] })), None);
        assert_eq!(first_difference(&e, &json!({ "id": "x", "imdb_rating": 7.2, "title": "u", "genre": ["a"] })).as_deref(), Some("imdb_rating"));
        assert_eq!(first_difference(&e, &json!({ "id": "x", "imdb_rating": "7.1", "title": "t", "genre": ["a"] })).as_deref(), Some("imdb_rating"));
        assert_eq!(first_difference(&e, &json!({ "id": "x", "imdb_rating": 7.1, "title": "t" })).as_deref(), Some("genre"));
        let more = json!({ "id": "x", "imdb_rating": 7.1, "title": "t", "genre": ["a"], "zzz": 1 });
        assert_eq!(first_difference(&e, &more).as_deref(), Some("zzz"));
        assert_eq!(first_difference(&json!({ "title": null }), &json!({})).as_deref(), Some("title"));
    }

    #[test]
    fn only_ids_equal_to_their_id_are_placed() {
        let u = "0312ed51-8833-413f-bff5-0e139c11264a";
        assert_eq!(placed(u, u).as_deref(), Some(u));
        assert_eq!(placed("42", "42").as_deref(), Some("42"));
        assert_eq!(placed(u, "other"), None);
    }

    /// The join relies on keyword (byte) order of the canonical text of a uuid being the uuid's
    /// order (Postgres's, for a uuid key).
    #[test]
    fn canonical_text_order_is_uuid_order() {
        use uuid::Uuid;
        let mut ids: Vec<Uuid> = (0..500u128).map(|n| Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))).collect();
        ids.push(Uuid::max());
        let mut by_text = ids.clone();
        by_text.sort_by_key(|u| u.to_string());
        ids.sort();
        assert_eq!(ids, by_text);
    }

    #[test]
    fn report_renders_and_serializes() {
        let mut report = VerifyReport { checked: 999, ..VerifyReport::default() };
        assert!(report.is_consistent());
        report.stale.record(StaleDocument { id: id(4), field: "title".into() });
        report.extra.record(id(9));
        let table = report.render();
        assert!(table.contains(&format!("{}  (title)", id(4))), "{table}");
        assert!(table.lines().any(|l| l.starts_with("checked") && l.ends_with("999")), "{table}");
        assert_eq!(report.summary(), "0 missing, 1 stale, 1 extra of 999 records checked");
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["stale"]["first"][0]["field"], "title");
        assert_eq!(v["extra"]["count"], 1);
        assert_eq!(v["hints"], serde_json::to_value(report.hints()).unwrap());
    }

    #[test]
    fn hints_say_why_for_each_kind_found() {
        let mut report = VerifyReport { checked: 999, ..VerifyReport::default() };
        assert!(report.hints().is_empty());
        assert!(!report.render().contains("hint"), "{}", report.render());
        report.extra.add(2, [id(8), id(9)]);
        assert_eq!(
            report.hints(),
            ["2 extra documents: records deleted in Postgres; reconciliation deletes their documents within ETL_RECONCILE_SEC (at the next cycle with the delete capture triggers: README, 'Deletes')"]
        );
        report.stale.record(StaleDocument { id: id(4), field: "actors".into() });
        report.missing.record(id(5));
        let hints = report.hints();
        assert_eq!(hints.len(), 3, "{hints:?}");
        assert!(hints[0].starts_with("1 missing document: records not loaded yet"), "{}", hints[0]);
        assert!(hints[1].starts_with("1 stale document: a change not loaded yet") && hints[1].contains("link deleted"), "{}", hints[1]);
        let table = report.render();
        assert!(table.lines().rev().take(3).all(|l| l.starts_with("hint: ")), "{table}");
    }

    /// One report of each kind, hinted for `setup`.
    fn hints_for(setup: Setup) -> Vec<String> {
        let mut report = VerifyReport { checked: 10, setup, ..VerifyReport::default() };
        report.missing.record(id(1));
        report.stale.record(StaleDocument { id: id(2), field: "actors".into() });
        report.extra.record(id(3));
        let hints = report.hints();
        assert_eq!(hints.len(), 3, "{hints:?}");
        hints
    }

    #[test]
    fn hints_fit_polling_without_the_delete_capture() {
        let [missing, stale, extra] = <[String; 3]>::try_from(hints_for(Setup { replication: false, delete_capture: false })).unwrap();
        assert!(missing.contains("`pg2es run` loads them at its next cycle") && missing.contains("polling does not see"), "{missing}");
        assert!(stale.contains("link deleted in Postgres") && stale.contains("`pg2es delete-capture install`"), "{stale}");
        assert!(stale.contains("QuerySet.update()") && stale.contains("never sees"), "{stale}");
        assert!(extra.contains("reconciliation deletes their documents within ETL_RECONCILE_SEC") && extra.contains("delete capture"), "{extra}");
    }

    #[test]
    fn hints_fit_polling_with_the_delete_capture_installed() {
        let hints = hints_for(Setup { replication: false, delete_capture: true });
        assert!(hints.iter().all(|h| !h.contains("delete-capture install")), "no install suggested when installed: {hints:?}");
        assert!(hints[1].contains("QuerySet.update()") && !hints[1].contains("link deleted"), "{}", hints[1]);
        assert!(hints[2].contains("at its next cycle (the delete capture)"), "{}", hints[2]);
    }

    #[test]
    fn hints_fit_replication_whatever_is_installed() {
        for delete_capture in [false, true] {
            let hints = hints_for(Setup { replication: true, delete_capture });
            assert!(hints.iter().all(|h| !h.contains("delete capture") && !h.contains("delete-capture")), "{hints:?}");
            assert!(hints.iter().all(|h| !h.contains("updated_at")), "replication sees every write: {hints:?}");
            assert!(hints[0].contains("replication stream carries every committed write"), "{}", hints[0]);
            assert!(hints[2].contains("replication stream carries deletes"), "{}", hints[2]);
        }
    }
}
