//! `verify --repair`: the documents verify found missing, stale or extra are written again from
//! Postgres as it is when each page of them is read, the way `run` applies a change: the WAL
//! position first, then the records, then one index action per key carrying that position as
//! its external version. A record found is indexed; one that is gone (or that the document's own
//! `where` leaves out) has its document deleted. Beside a running `pg2es run` this is safe: of
//! two writes of one document, Elasticsearch keeps the one read later (the higher version),
//! whichever arrives last, so a repair never undoes a newer change and `run` never undoes a
//! repair with an older one. Documents whose `_id` no record key can have are deleted as they are.
//! Memory holds one page of keys.

use std::collections::HashSet;

use super::{Connection, Repaired};
use crate::catalog::Document;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::position::Key;
use crate::retry::{retry, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::sink::{ElasticsearchSink, IndexAction, IndexSink, LoadReport};
use crate::source::DocumentSpec;
use crate::transform::build;

/// Documents without an `id` field deleted per request (each round then refreshes and looks again).
const WITHOUT_ID_PAGE: usize = 1_000;

/// Writes documents again from Postgres by id; `verify --repair` and `dlq replay` use it.
pub struct Repairer<'a> {
    pg: Connection<'a>,
    sink: &'a ElasticsearchSink,
    policy: RetryPolicy,
    shutdown: &'a Shutdown,
    page: usize,
    doc: std::sync::Arc<Document>,
    /// Records whose documents are written again (or deleted) at the next flush.
    keys: Vec<Key>,
    /// `_id`s no record can have: deleted as they are.
    orphans: Vec<String>,
    pub done: Repaired,
}

impl<'a> Repairer<'a> {
    /// Refuses when a repair would not be what it looks like: while `run`'s full load is under way
    /// (it writes every record anyway, and verify finds what it has not reached yet).
    pub async fn new(config: &'a Config, spec: &DocumentSpec, sink: &'a ElasticsearchSink, shutdown: &'a Shutdown) -> Result<Repairer<'a>> {
        if let Some(state) = crate::pipeline::saved_state(config).await? {
            if state.snapshot_in_progress().is_some() || state.needs_full_load() {
                return Err(Error::Refused(format!(
                    "the full load of index {} is not finished (state file {}): it writes every record, and verify counts those it has not reached yet as missing. Let `pg2es run` finish it, then run `pg2es verify --repair` if verify still finds differences",
                    config.es_index,
                    config.state_file.display()
                )));
            }
        }
        let pg = Connection::new(config, spec.clone())?;
        let policy = config.retry_policy();
        let source = retry(&policy, shutdown, "connect to repair", || pg.take()).await?;
        let doc = source.document().clone();
        pg.put(source).await;
        Ok(Repairer { pg, sink, policy, shutdown, page: config.batch_size.max(1), doc, keys: Vec::new(), orphans: Vec::new(), done: Repaired::default() })
    }

    /// The `_id`s of documents found to differ: records' keys, and `_id`s no key can be.
    pub fn take(&mut self, found: Vec<String>, unplaced: Vec<String>) {
        for id in found {
            match self.doc.key_of(&id) {
                Some(key) => self.keys.push(key),
                None => self.orphans.push(id),
            }
        }
        self.orphans.extend(unplaced);
    }

    /// Writes whole pages of what was found; with `all`, the rest too.
    pub async fn flush(&mut self, all: bool) -> Result<()> {
        while self.keys.len() >= self.page || (all && !self.keys.is_empty()) {
            let rest = self.keys.split_off(self.keys.len().min(self.page));
            let keys = std::mem::replace(&mut self.keys, rest);
            let (indexes, deletes) = retry(&self.policy, self.shutdown, "read records to repair", || self.actions(&keys)).await?;
            let indexed = self.write(indexes).await?;
            self.done.indexed += indexed;
            let deleted = self.write(deletes).await?;
            self.done.deleted += deleted;
        }
        if self.orphans.len() >= self.page || (all && !self.orphans.is_empty()) {
            let actions = std::mem::take(&mut self.orphans).into_iter().map(|id| IndexAction::Delete { id, version: None }).collect();
            let deleted = self.write(actions).await?;
            self.done.deleted += deleted;
        }
        Ok(())
    }

    /// The WAL position, then the records: each found is indexed and each absent deleted, with
    /// that position as the version.
    async fn actions(&self, keys: &[Key]) -> Result<(Vec<IndexAction>, Vec<IndexAction>)> {
        let source = self.pg.take().await?;
        let read = async {
            let version = source.wal_position().await?;
            Ok::<_, Error>((version, source.records(keys).await?))
        }
        .await;
        self.pg.put(source).await;
        let (version, records) = read?;
        let mut indexes = Vec::with_capacity(records.len());
        let mut found = HashSet::with_capacity(records.len());
        for record in &records {
            let (body, _) = build(&self.doc, record).map_err(|e| Error::SourceSchema(e.0))?;
            found.insert(record.key.clone());
            indexes.push(IndexAction::Index { id: record.key.to_string(), body, version: Some(version) });
        }
        let deletes = keys.iter().filter(|k| !found.contains(*k)).map(|k| IndexAction::Delete { id: k.to_string(), version: Some(version) }).collect();
        Ok((indexes, deletes))
    }

    /// Has the sink apply `actions`; how many were stored (the refused are counted apart).
    async fn write(&mut self, actions: Vec<IndexAction>) -> Result<u64> {
        if actions.is_empty() {
            return Ok(0);
        }
        let report: LoadReport = self.sink.write(actions, self.shutdown).await?;
        self.done.older_than_index += report.older as u64;
        self.done.dead_lettered += report.dead_lettered as u64;
        Ok(report.stored as u64)
    }

    /// Deletes the documents that have no `id` field (`count` of them were found), a page at a
    /// time, looking again after each refresh; at most as many rounds as pages were found.
    pub async fn remove_without_id(&mut self, count: u64) -> Result<()> {
        let rounds = count.div_ceil(WITHOUT_ID_PAGE as u64);
        for _ in 0..rounds {
            let (_, ids) = self.sink.documents_without_id(WITHOUT_ID_PAGE, self.shutdown).await?;
            if ids.is_empty() {
                break;
            }
            let deleted = self.write(ids.into_iter().map(|id| IndexAction::Delete { id, version: None }).collect()).await?;
            self.done.deleted += deleted;
            self.sink.refresh().await?;
        }
        Ok(())
    }
}
