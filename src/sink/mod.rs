//! Elasticsearch (or OpenSearch): index bootstrap, bulk loading, response classification.
//!
//! Contract with the pipeline: `load` returns only when every document it was given is either
//! stored (acknowledged by Elasticsearch) or written to the dead-letter file; only then may the
//! watermark advance. Documents carry `_id` = the record's key, so loading one twice is harmless.

pub mod alias;
pub mod bulk;
mod claim;
pub mod engine;
mod inspect;
mod nodes;
pub use nodes::shown_urls;
mod settings;
pub mod tuning;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::retry::{retry, RetryPolicy};
use crate::settings::{ES_API_KEY, ES_CA_FILE, ES_SCHEMA_FILE, ES_URL};
use crate::shutdown::Shutdown;
use bulk::{BulkItemOutcome, BulkResponse, EncodedDoc};
pub use claim::IndexOwner;
pub use settings::{EsAuth, SinkSettings};

/// Attempts for items answered 429/5xx before the whole batch is handed back as transient.
const MAX_ITEM_ATTEMPTS: u32 = 8;

/// Time to open a connection: a server that does not accept within it is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Slowest ingest rate a healthy node is expected to keep up while reading a bulk body: the
/// time limit of a bulk request grows by one second per this many bytes.
const BULK_BYTES_PER_SEC: usize = 256 * 1024;

/// The time limit of a request with a body of `body_len` bytes: `base` plus one second per
/// `BULK_BYTES_PER_SEC`, so a large bulk request on a slow node is not cut off and retried forever.
fn timeout_for(base: Duration, body_len: usize) -> Duration {
    base + Duration::from_secs((body_len / BULK_BYTES_PER_SEC) as u64)
}

pub struct ElasticsearchSink {
    http: reqwest::Client,
    nodes: nodes::Nodes,
    index: String,
    max_docs: usize,
    max_bytes: usize,
    dead_letter: PathBuf,
    /// Where refused documents are recorded: `None`, the dead-letter file; with
    /// `PG2ES_STATE_STORE=postgres`, beside the state (`pg2es.dead_letters`).
    dead_letters: Option<Box<dyn DeadLetterStore>>,
    retry: RetryPolicy,
    auth: EsAuth,
    /// Time limit of one request (a bulk request gets more, see `timeout_for`).
    timeout: Duration,
    rejections: Mutex<RejectionWindow>,
    /// The owner recorded in (or found in) the index's `_meta` by `claim`: checked once.
    claimed: Mutex<Option<IndexOwner>>,
    /// The lease this instance leads the document under (`PG2ES_STATE_STORE=postgres`): every
    /// request checks it first, so a leader that lost it sends nothing more.
    fence: Option<std::sync::Arc<crate::fence::Fence>>,
}

/// Outcomes of the last documents sent, to tell bad rows (a few refused) from a bad mapping (most
/// refused), which must stop the pipeline instead of emptying the catalog into the dead-letter file.
#[derive(Debug)]
struct RejectionWindow {
    /// `true` for a document refused for good; the newest at the back.
    recent: VecDeque<bool>,
    max_ratio: f64,
}

/// Documents the rejection check looks back over, and the fewest it judges.
const REJECTION_WINDOW: usize = 100;
const REJECTION_MIN_SAMPLE: usize = 10;

impl RejectionWindow {
    fn new(max_ratio: f64) -> RejectionWindow {
        RejectionWindow { recent: VecDeque::with_capacity(REJECTION_WINDOW), max_ratio }
    }

    /// Records a request's outcomes, or refuses them when, with the documents before them, too
    /// many were refused: then `(rejected, sent)` over the window and the request.
    fn record(&mut self, sent: usize, rejected: usize) -> std::result::Result<(), (usize, usize)> {
        let before = self.recent.len().min(REJECTION_WINDOW.saturating_sub(sent));
        let earlier = self.recent.iter().rev().take(before).filter(|r| **r).count();
        let (total, refused) = (sent + before, rejected + earlier);
        if self.max_ratio < 1.0 && total >= REJECTION_MIN_SAMPLE && refused as f64 > self.max_ratio * total as f64 {
            return Err((refused, total));
        }
        let outcomes = std::iter::repeat_n(true, rejected).chain(std::iter::repeat_n(false, sent - rejected));
        for o in outcomes.skip((sent).saturating_sub(REJECTION_WINDOW)) {
            if self.recent.len() == REJECTION_WINDOW {
                self.recent.pop_front();
            }
            self.recent.push_back(o);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexBootstrap {
    Created,
    Existing,
}

impl std::fmt::Display for IndexBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexBootstrap::Created => "created",
            IndexBootstrap::Existing => "existing",
        })
    }
}

/// What the pipeline asks of the index for one changed record.
// Deletes are the rare case: boxing the document would cost an allocation per indexed document.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum IndexAction {
    /// `body`: the document's JSON.
    Index {
        id: String,
        body: Vec<u8>,
        version: Option<u64>,
    },
    Delete {
        id: String,
        version: Option<u64>,
    },
}

/// Index settings by flat name; `None`: not set on the index (its default applies).
pub type IndexSettings = BTreeMap<String, Option<String>>;

/// Index settings during a full load: no refresh, no replicas (they are copied once at the end).
pub const FULL_LOAD_SETTINGS: [(&str, &str); 2] = [("index.refresh_interval", "-1"), ("index.number_of_replicas", "0")];

/// The index as the pipeline uses it.
///
/// Contract: `write` returns only when every action it was given is stored (acknowledged by the
/// engine) or written to the dead-letter file; only then may the source's position advance.
/// Documents carry `_id` = the record's key, so applying an action twice is harmless, and deleting a
/// document that is not there counts as done.
pub trait IndexSink: Sync {
    /// Ties the index to the source and document it is kept from, before anything is written:
    /// an index another source keeps is refused ([`Error::IndexClaimed`]), one that records
    /// none is adopted.
    fn claim(&self, owner: &IndexOwner, shutdown: &Shutdown) -> impl Future<Output = Result<()>> + Send;

    fn write(&self, actions: Vec<IndexAction>, shutdown: &Shutdown) -> impl Future<Output = Result<LoadReport>> + Send;

    /// The concrete index writes land in (the name's alias target after `pg2es reindex`);
    /// `None` for a sink that has no such thing.
    fn target_index(&self, shutdown: &Shutdown) -> impl Future<Output = Result<Option<String>>> + Send {
        let _ = shutdown;
        async { Ok(None) }
    }

    /// The current values of the settings a full load changes: what to put back after it.
    fn settings_before_full_load(&self, shutdown: &Shutdown) -> impl Future<Output = Result<IndexSettings>> + Send;

    /// Refresh and replicas off for a full load.
    fn tune_for_full_load(&self, shutdown: &Shutdown) -> impl Future<Output = Result<()>> + Send;

    /// Puts settings back, then makes everything written visible to search.
    fn restore_settings(&self, original: &IndexSettings, shutdown: &Shutdown) -> impl Future<Output = Result<()>> + Send;

    /// One page of up to `limit` document ids, in no particular order (reconciliation): the first
    /// page with `cursor` `None`, each next with the cursor the previous returned; the last page
    /// returns no cursor. Every document is listed once.
    fn id_page(&self, cursor: Option<String>, limit: usize, shutdown: &Shutdown) -> impl Future<Output = Result<IdPage>> + Send;
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    pub stored: usize,
    /// Writes the index refused as older than the version it holds (not in `stored`).
    pub older: usize,
    pub dead_lettered: usize,
    pub retried_items: usize,
}

impl ElasticsearchSink {
    /// Builds the client; no request is sent.
    pub fn new(settings: &SinkSettings) -> Result<ElasticsearchSink> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &settings.ca_file {
            for cert in crate::pem::ca_certificates(ES_CA_FILE.name, path)? {
                let cert = reqwest::Certificate::from_der(&cert)
                    .map_err(|e| Error::Config(format!("{ES_CA_FILE}='{}': unusable certificate ({e})", path.display())))?;
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.connect_timeout(settings.timeout.min(CONNECT_TIMEOUT)).build().map_err(Error::es_transport("build http client"))?;
        Ok(ElasticsearchSink {
            http,
            nodes: nodes::Nodes::new(&settings.urls),
            index: settings.index.clone(),
            max_docs: settings.max_docs,
            max_bytes: settings.max_bytes,
            dead_letter: settings.dead_letter_file.clone(),
            retry: settings.retry,
            auth: settings.auth.clone(),
            timeout: settings.timeout,
            rejections: Mutex::new(RejectionWindow::new(settings.dead_letter_max_ratio)),
            claimed: Mutex::new(None),
            fence: None,
            dead_letters: None,
        })
    }

    /// Records refused documents in `store` instead of the dead-letter file.
    pub fn with_dead_letters(mut self, store: Box<dyn DeadLetterStore>) -> ElasticsearchSink {
        self.dead_letters = Some(store);
        self
    }

    /// Sends nothing once `fence`'s lease is lost.
    pub fn fenced(mut self, fence: std::sync::Arc<crate::fence::Fence>) -> ElasticsearchSink {
        self.fence = Some(fence);
        self
    }

    pub fn index(&self) -> &str {
        &self.index
    }

    /// Sends the request to the nodes in turn ([`nodes::Nodes`]) until one answers: the status
    /// and body of the first that does, or the failure of the last.
    async fn send(&self, method: Method, path: &str, context: &'static str, body: Option<(bytes::Bytes, &'static str)>) -> Result<(u16, Vec<u8>)> {
        if let Some(fence) = &self.fence {
            fence.check()?;
        }
        let order = self.nodes.order();
        let mut outcome = Err(Error::Config(format!("{ES_URL} names no node")));
        for (n, &node) in order.iter().enumerate() {
            outcome = self.send_to(node, method.clone(), path, context, body.clone()).await;
            let failed = match &outcome {
                Ok((status, _)) => matches!(status, 502..=504),
                Err(e) => matches!(e, Error::ElasticsearchTransport { .. }),
            };
            if !failed {
                self.nodes.answered(node);
                return outcome;
            }
            self.nodes.failed(node);
            if let Some(&next) = order.get(n + 1) {
                let why = match &outcome {
                    Ok((status, _)) => format!("answered {status}"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(node = %self.nodes.shown(node, ""), next = %self.nodes.shown(next, ""), context, why = %why, "elasticsearch node failed; sending the request to the next node of {ES_URL}");
                crate::telemetry::count(&crate::telemetry::NODE_FAILURES, 1);
            }
        }
        outcome
    }

    /// One request to one node.
    async fn send_to(
        &self,
        node: usize,
        method: Method,
        path: &str,
        context: &'static str,
        body: Option<(bytes::Bytes, &'static str)>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = self.http.request(method, self.nodes.url(node, path));
        req = match &self.auth {
            EsAuth::None => req,
            EsAuth::Basic { username, password } => req.basic_auth(username, Some(password.expose())),
            EsAuth::ApiKey(key) => {
                let mut v = HeaderValue::from_str(&format!("ApiKey {}", key.expose()))
                    .map_err(|_| Error::Config(format!("{ES_API_KEY} holds characters not allowed in an HTTP header")))?;
                v.set_sensitive(true);
                req.header(AUTHORIZATION, v)
            }
        };
        let body_len = body.as_ref().map_or(0, |(b, _)| b.len());
        let limit = timeout_for(self.timeout, body_len);
        req = req.timeout(limit);
        if let Some((body, content_type)) = body {
            req = req.header(CONTENT_TYPE, content_type).body(body);
        }
        let exchange = async {
            let resp = req.send().await.map_err(Error::es_transport(context))?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(Error::es_transport(context))?;
            Ok((status, bytes.to_vec()))
        };
        crate::telemetry::watched("elasticsearch", context, &self.nodes.shown(node, path), Some(limit), exchange).await
    }

    /// Like `send`, but any status other than 2xx is an error carrying the body.
    async fn send_ok(&self, method: Method, path: &str, context: &'static str, body: Option<(bytes::Bytes, &'static str)>) -> Result<Vec<u8>> {
        let (status, bytes) = self.send(method, path, context, body).await?;
        if (200..300).contains(&status) {
            Ok(bytes)
        } else {
            Err(Error::ElasticsearchStatus { context, status, body: truncate(&bytes) })
        }
    }

    /// Creates the index from its definition when absent; refuses an existing one whose mapping
    /// differs from the definition's.
    pub async fn ensure_index(&self, definition: &Value) -> Result<IndexBootstrap> {
        let (status, _) = self.send(Method::HEAD, &self.index, "check index", None).await?;
        let outcome = match status {
            200 => IndexBootstrap::Existing,
            404 => {
                let body = serde_json::to_vec(definition).map_err(|e| Error::Encode(format!("the index definition: {e}")))?;
                let (status, resp) = self.send(Method::PUT, &self.index, "create index", Some((body.into(), "application/json"))).await?;
                match status {
                    200..=299 => {
                        tracing::info!(index = %self.index, "created index");
                        return Ok(IndexBootstrap::Created);
                    }
                    // Another writer created it between our two requests: compare below.
                    400 if String::from_utf8_lossy(&resp).contains("resource_already_exists_exception") => IndexBootstrap::Existing,
                    _ => return Err(Error::ElasticsearchStatus { context: "create index", status, body: truncate(&resp) }),
                }
            }
            s => return Err(Error::ElasticsearchStatus { context: "check index", status: s, body: String::new() }),
        };
        let raw = self.send_ok(Method::GET, &format!("{}/_mapping", self.index), "read mapping", None).await?;
        let actual: Value = serde_json::from_slice(&raw).map_err(|e| Error::Unreadable { context: "read mapping", reason: e.to_string() })?;
        let actual = actual.as_object().and_then(|o| o.values().next()).and_then(|v| v.get("mappings")).cloned().unwrap_or(Value::Null);
        let expected = definition.get("mappings").cloned().unwrap_or(Value::Null);
        if let Some(difference) = mapping_difference(&expected, &actual) {
            return Err(Error::MappingConflict { index: self.index.clone(), difference });
        }
        Ok(outcome)
    }

    /// Loads documents; see the module contract.
    pub async fn load(&self, docs: &[EncodedDoc], shutdown: &Shutdown) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        for range in bulk::chunk(docs, self.max_docs, self.max_bytes) {
            self.load_chunk(&docs[range], shutdown, &mut report).await?;
        }
        Ok(report)
    }

    async fn load_chunk(&self, docs: &[EncodedDoc], shutdown: &Shutdown, report: &mut LoadReport) -> Result<()> {
        let mut pending: Vec<&EncodedDoc> = docs.iter().collect();
        let mut delays = self.retry.delays();
        for attempt in 1..=MAX_ITEM_ATTEMPTS {
            let body = bulk::body(pending.iter().copied());
            let raw = retry(&self.retry, shutdown, "bulk", || async {
                let sent = std::time::Instant::now();
                let raw = self.send_ok(Method::POST, "_bulk", "bulk", Some((body.clone(), "application/x-ndjson"))).await?;
                crate::telemetry::bulk_request(sent.elapsed());
                Ok(raw)
            })
            .await?;
            let unreadable = |e: serde_json::Error| Error::Unreadable { context: "bulk", reason: e.to_string() };
            let summary: bulk::BulkSummary = serde_json::from_slice(&raw).map_err(unreadable)?;
            if !summary.errors && summary.items.len() == pending.len() {
                report.stored += pending.len();
                self.record_rejections(pending.len(), &[])?;
                return Ok(());
            }
            let resp: BulkResponse = serde_json::from_slice(&raw).map_err(unreadable)?;
            let outcomes = bulk::classify(&resp, pending.len()).map_err(|reason| Error::Unreadable { context: "bulk", reason })?;
            let sent = pending.len();
            let older_before = report.older;
            let mut again = Vec::new();
            let mut last_reason = String::new();
            let mut rejected = Vec::new();
            for (doc, outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    BulkItemOutcome::Stored => report.stored += 1,
                    BulkItemOutcome::Older => report.older += 1,
                    BulkItemOutcome::Retry { reason } => {
                        last_reason = reason;
                        again.push(doc);
                    }
                    BulkItemOutcome::Rejected { status, reason } => rejected.push((doc.id.as_str(), status, reason)),
                }
            }
            crate::telemetry::item_failures("retried", again.len());
            crate::telemetry::item_failures("rejected", rejected.len());
            crate::telemetry::item_failures("older", report.older - older_before);
            // Judged on the documents settled by this response (stored or refused).
            self.record_rejections(sent - again.len(), &rejected)?;
            if !rejected.is_empty() {
                let place = match &self.dead_letters {
                    Some(store) => {
                        crate::checkpoint::off_runtime(|| store.append(&self.index, &rejected))?;
                        "pg2es.dead_letters".to_string()
                    }
                    None => {
                        crate::checkpoint::off_runtime(|| write_dead_letters(&self.dead_letter, &self.index, &rejected))?;
                        self.dead_letter.display().to_string()
                    }
                };
                crate::telemetry::count(&crate::telemetry::DEAD_LETTERS, rejected.len() as u64);
                report.dead_lettered += rejected.len();
                tracing::warn!(count = rejected.len(), file = %place, first_reason = %rejected[0].2, "documents rejected by elasticsearch, written to dead-letter file");
            }
            if again.is_empty() {
                return Ok(());
            }
            report.retried_items += again.len();
            let delay = delays.next().unwrap_or(self.retry.cap);
            tracing::warn!(waiting_for = "elasticsearch", count = again.len(), attempt, retry_in_ms = delay.as_millis() as u64, reason = %last_reason, "bulk items throttled or failed, retrying them");
            if attempt == MAX_ITEM_ATTEMPTS {
                return Err(Error::BulkRetriesExhausted { count: again.len(), last_reason });
            }
            if shutdown.sleep(delay).await {
                return Err(Error::Shutdown);
            }
            pending = again;
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Counts a response's settled documents; an error when most recent ones were refused.
    fn record_rejections(&self, settled: usize, rejected: &[(&str, u16, String)]) -> Result<()> {
        let mut window = self.rejections.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        window.record(settled, rejected.len()).map_err(|(rejected_n, sent)| Error::SystematicRejection {
            rejected: rejected_n,
            sent,
            reason: rejected.first().map(|r| r.2.clone()).unwrap_or_else(|| "earlier requests".into()),
        })
    }

    /// The current values of some index settings (flat names such as `index.refresh_interval`);
    /// `None` for a setting not set on the index (it has its default).
    pub async fn settings(&self, keys: &[&str], shutdown: &Shutdown) -> Result<BTreeMap<String, Option<String>>> {
        let path = format!("{}/_settings?flat_settings=true", self.index);
        let raw = retry(&self.retry, shutdown, "read index settings", || self.send_ok(Method::GET, &path, "read index settings", None)).await?;
        let all: Value = serde_json::from_slice(&raw).map_err(|e| Error::Unreadable { context: "read index settings", reason: e.to_string() })?;
        // Keyed by the concrete index name (ES_INDEX may be an alias of it).
        let settings = all.as_object().and_then(|o| o.values().next()).and_then(|v| v.get("settings"));
        Ok(keys
            .iter()
            .map(|k| {
                let value = settings.and_then(|s| s.get(*k)).and_then(scalar_text);
                (k.to_string(), value)
            })
            .collect())
    }

    /// Sets index settings; `None` resets a setting to its default.
    pub async fn put_settings(&self, values: &BTreeMap<String, Option<String>>, shutdown: &Shutdown) -> Result<()> {
        let body = bytes::Bytes::from(serde_json::to_vec(values).map_err(|e| Error::Encode(format!("index settings: {e}")))?);
        let path = format!("{}/_settings", self.index);
        retry(&self.retry, shutdown, "change index settings", || {
            self.send_ok(Method::PUT, &path, "change index settings", Some((body.clone(), "application/json")))
        })
        .await
        .map(|_| ())
    }

    /// How many documents the index holds (recent writes may not be counted yet).
    pub async fn count(&self, shutdown: &Shutdown) -> Result<u64> {
        let path = format!("{}/_count", self.index);
        let raw = retry(&self.retry, shutdown, "count documents", || self.send_ok(Method::GET, &path, "count documents", None)).await?;
        let body: Value = serde_json::from_slice(&raw).map_err(|e| Error::Unreadable { context: "count documents", reason: e.to_string() })?;
        body.get("count").and_then(Value::as_u64).ok_or_else(|| Error::Unreadable { context: "count documents", reason: "no count in the answer".into() })
    }

    /// Deletes the index when it holds no document: one created at start by a run that then
    /// failed before loading anything (a setup error) is not left behind. True when removed.
    pub async fn remove_if_empty(&self, shutdown: &Shutdown) -> Result<bool> {
        self.refresh().await?;
        if self.count(shutdown).await? != 0 {
            return Ok(false);
        }
        self.send_ok(Method::DELETE, &self.index, "delete the empty index", None).await?;
        Ok(true)
    }

    /// Makes recent writes visible to search (`verify`, tests and `make demo` summaries).
    pub async fn refresh(&self) -> Result<()> {
        self.send_ok(Method::POST, &format!("{}/_refresh", self.index), "refresh", None).await.map(|_| ())
    }

    /// Up to `size` documents that have an `id`, sorted by it (keyword order), after the one whose
    /// `id` is `after`. `size` is at most `index.max_result_window` (10 000 by default).
    pub async fn documents_after(&self, after: Option<&str>, size: usize, shutdown: &Shutdown) -> Result<Vec<StoredDocument>> {
        let mut query = serde_json::json!({
            "size": size,
            "sort": [{ "id": "asc" }],
            "_source": true,
            "track_total_hits": false,
            "query": { "exists": { "field": "id" } },
        });
        if let Some(after) = after {
            query["search_after"] = serde_json::json!([after]);
        }
        Ok(self.search(&query, "read documents", shutdown).await?.hits.hits)
    }

    /// Up to `limit` documents whose `id` is `id`. Paging by `id` with `search_after` steps over
    /// every document after the first whose `id` is the page's last.
    pub async fn documents_with_id(&self, id: &str, limit: usize, shutdown: &Shutdown) -> Result<Vec<StoredDocument>> {
        let query = serde_json::json!({ "size": limit, "_source": true, "track_total_hits": false, "query": { "term": { "id": id } } });
        Ok(self.search(&query, "read documents of one id", shutdown).await?.hits.hits)
    }

    /// How many documents have no `id` (they cannot be sorted by it), and the `_id` of the first
    /// `limit` of them.
    pub async fn documents_without_id(&self, limit: usize, shutdown: &Shutdown) -> Result<(u64, Vec<String>)> {
        let query = serde_json::json!({
            "size": limit,
            "_source": false,
            "track_total_hits": true,
            "query": { "bool": { "must_not": { "exists": { "field": "id" } } } },
        });
        let hits = self.search(&query, "find documents without id", shutdown).await?.hits;
        let ids = hits.hits.into_iter().map(|h| h.id).collect();
        Ok((hits.total.map_or(0, |t| t.value), ids))
    }

    async fn search(&self, query: &Value, context: &'static str, shutdown: &Shutdown) -> Result<SearchResponse> {
        let body = bytes::Bytes::from(serde_json::to_vec(query).map_err(|e| Error::Encode(format!("a search: {e}")))?);
        let path = format!("{}/_search", self.index);
        let raw = retry(&self.retry, shutdown, context, || self.send_ok(Method::POST, &path, context, Some((body.clone(), "application/json")))).await?;
        serde_json::from_slice(&raw).map_err(|e| Error::Unreadable { context, reason: e.to_string() })
    }
}

impl IndexSink for ElasticsearchSink {
    async fn claim(&self, owner: &IndexOwner, shutdown: &Shutdown) -> Result<()> {
        self.claim_index(owner, shutdown).await
    }

    async fn write(&self, actions: Vec<IndexAction>, shutdown: &Shutdown) -> Result<LoadReport> {
        let mut encoded = Vec::with_capacity(actions.len());
        for action in actions {
            let line = match &action {
                IndexAction::Index { id, body, version } => bulk::encode(&self.index, id, *version, body),
                IndexAction::Delete { id, version } => bulk::encode_delete(&self.index, id, *version),
            };
            encoded.push(line.map_err(|e| Error::Encode(format!("document {}: {e}", action.id())))?);
        }
        self.load(&encoded, shutdown).await
    }

    async fn target_index(&self, shutdown: &Shutdown) -> Result<Option<String>> {
        self.concrete(shutdown).await
    }

    async fn settings_before_full_load(&self, shutdown: &Shutdown) -> Result<IndexSettings> {
        let keys: Vec<&str> = FULL_LOAD_SETTINGS.iter().map(|(k, _)| *k).collect();
        self.settings(&keys, shutdown).await
    }

    async fn tune_for_full_load(&self, shutdown: &Shutdown) -> Result<()> {
        self.put_settings(&full_load_settings(), shutdown).await
    }

    async fn restore_settings(&self, original: &IndexSettings, shutdown: &Shutdown) -> Result<()> {
        self.put_settings(original, shutdown).await?;
        self.refresh().await
    }

    /// A scroll in index order (`_doc`): each page costs the same however far in, where a sorted
    /// `search_after` sorts the whole index again for every page. A page lost to a retried
    /// request is only checked at the next reconciliation.
    async fn id_page(&self, cursor: Option<String>, limit: usize, shutdown: &Shutdown) -> Result<IdPage> {
        const KEEP: &str = "2m";
        let context = "read document ids";
        let (path, body) = match &cursor {
            None => (format!("{}/_search?scroll={KEEP}", self.index), serde_json::json!({ "size": limit, "sort": ["_doc"], "_source": false })),
            Some(id) => ("_search/scroll".to_string(), serde_json::json!({ "scroll": KEEP, "scroll_id": id })),
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&body).map_err(|e| Error::Encode(format!("a scroll: {e}")))?);
        let raw = retry(&self.retry, shutdown, context, || self.send_ok(Method::POST, &path, context, Some((body.clone(), "application/json")))).await?;
        let page: SearchResponse = serde_json::from_slice(&raw).map_err(|e| Error::Unreadable { context, reason: e.to_string() })?;
        let ids: Vec<String> = page.hits.hits.into_iter().map(|h| h.id).collect();
        let next = page.scroll_id.clone().filter(|_| ids.len() == limit);
        if next.is_none() {
            if let Some(scroll_id) = page.scroll_id.or(cursor) {
                // Frees the scroll now rather than when it expires; a failure here costs nothing.
                let body = serde_json::json!({ "scroll_id": [scroll_id] }).to_string();
                let _ = self.send(Method::DELETE, "_search/scroll", "clear scroll", Some((body.into(), "application/json"))).await;
            }
        }
        Ok(IdPage { ids, next })
    }
}

/// A page of [`IndexSink::id_page`].
#[derive(Debug, Default)]
pub struct IdPage {
    pub ids: Vec<String>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<String>,
}

/// [`FULL_LOAD_SETTINGS`] as settings to put.
pub fn full_load_settings() -> IndexSettings {
    FULL_LOAD_SETTINGS.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect()
}

impl IndexAction {
    pub fn id(&self) -> &str {
        match self {
            IndexAction::Index { id, .. } | IndexAction::Delete { id, .. } => id,
        }
    }
}

/// One hit of a search: the document as it was sent, and its sort value (the `id` keyword).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct StoredDocument {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_source", default)]
    pub source: Value,
    #[serde(default)]
    pub sort: Vec<Value>,
}

#[derive(Debug, serde::Deserialize)]
struct SearchResponse {
    hits: SearchHits,
    #[serde(rename = "_scroll_id", default)]
    scroll_id: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct SearchHits {
    #[serde(default)]
    total: Option<TotalHits>,
    hits: Vec<StoredDocument>,
}

#[derive(Debug, serde::Deserialize)]
struct TotalHits {
    value: u64,
}

/// Where refused documents are recorded when not in the dead-letter file: each `(id, status,
/// reason)` of `index`, durably before the position moves past them (a blocking call).
pub trait DeadLetterStore: Send + Sync + std::fmt::Debug {
    fn append(&self, index: &str, rejected: &[(&str, u16, String)]) -> Result<()>;
}

/// Past this size the dead-letter file is rotated to `<file>.1` (replacing an older `.1`): the
/// file is bounded to twice this, and `pg2es dlq` reads both.
pub const DEAD_LETTER_ROTATE_BYTES: u64 = 64 << 20;

/// `<file>.<suffix>` beside a dead-letter file (`1`: the rotated one; `replaying`: a replay's).
pub fn dead_letter_sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    crate::checkpoint::beside(path, &format!(".{suffix}"))
}

fn write_dead_letters(path: &Path, index: &str, rejected: &[(&str, u16, String)]) -> Result<()> {
    let io = |source| Error::Io { context: "cannot write dead-letter file", path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > DEAD_LETTER_ROTATE_BYTES) {
        let rotated = dead_letter_sibling(path, "1");
        tracing::warn!(file = %path.display(), rotated = %rotated.display(), limit_mb = DEAD_LETTER_ROTATE_BYTES >> 20, "the dead-letter file is full: rotated, replacing the one rotated before (`pg2es dlq replay` sends its documents again)");
        std::fs::rename(path, &rotated).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    let time = chrono::Utc::now().to_rfc3339();
    let mut buf = Vec::new();
    for (id, status, reason) in rejected {
        let line = serde_json::json!({ "id": id, "index": index, "status": status, "reason": reason, "time": time });
        serde_json::to_writer(&mut buf, &line).map_err(|e| io(e.into()))?;
        buf.push(b'\n');
    }
    file.write_all(&buf).map_err(io)?;
    // The watermark moves past these documents next: the record of them must be on disk first.
    file.sync_data().map_err(io)
}

/// The first place where an index's mapping differs from its definition's, as
/// "mappings.path: expected X, found Y". `_meta` is not the mapping's shape (pg2es records the
/// index's source there, `claim`): it is left out on both sides.
pub fn mapping_difference(expected: &Value, actual: &Value) -> Option<String> {
    // Elasticsearch may echo scalars as strings ("strict", "true"): compare their text; and
    // numbers as floats (100 as 100.0): compare their value.
    let same =
        |e: &Value, a: &Value| e == a || scalar_text(e).is_some() && scalar_text(e) == scalar_text(a) || e.as_f64().is_some() && e.as_f64() == a.as_f64();
    let (expected, actual) = (without_object_type(&without_meta(expected)), without_object_type(&without_meta(actual)));
    let d = crate::diff::first_difference(&expected, &actual, same)?;
    let path = std::iter::once("mappings").chain(d.path.iter().copied()).collect::<Vec<_>>().join(".");
    Some(match (d.expected, d.found) {
        (Some(e), Some(a)) => format!("{path}: expected {e}, found {a}"),
        (Some(e), None) => format!("{path}: expected {e}, found nothing"),
        (None, Some(a)) => format!("{path}: not in {ES_SCHEMA_FILE}, found {a}"),
        (None, None) => path,
    })
}

fn without_meta(mapping: &Value) -> Value {
    let mut mapping = mapping.clone();
    if let Some(m) = mapping.as_object_mut() {
        m.remove("_meta");
    }
    mapping
}

/// The mapping without `"type": "object"`: the default type of a field with `properties`, which
/// Elasticsearch leaves out of the mapping it returns.
fn without_object_type(mapping: &Value) -> Value {
    match mapping {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, v)| !(k.as_str() == "type" && v.as_str() == Some("object"))).map(|(k, v)| (k.clone(), without_object_type(v))).collect(),
        ),
        other => other.clone(),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn truncate(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() > 500 {
        let cut = (0..=500).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mapping_differences_are_located() {
        let e = json!({"dynamic": "strict", "properties": {"title": {"type": "text", "analyzer": "ru_en"}}});
        assert_eq!(mapping_difference(&e, &e.clone()), None);
        let a = json!({"dynamic": "strict", "properties": {"title": {"type": "keyword"}}});
        let d = mapping_difference(&e, &a).unwrap();
        assert!(d.starts_with("mappings.properties.title."), "{d}");
        let a = json!({"dynamic": "strict", "properties": {"title": {"type": "text", "analyzer": "ru_en"}, "extra": {"type": "keyword"}}});
        let d = mapping_difference(&e, &a).unwrap();
        assert!(d.contains("properties.extra"), "{d}");
        let a = json!({"dynamic": "strict", "properties": {}});
        assert!(mapping_difference(&e, &a).unwrap().contains("found nothing"));
        assert_eq!(mapping_difference(&json!({"x": true}), &json!({"x": "true"})), None);
        // Elasticsearch echoes some numbers as floats (a scaled_float's scaling_factor 100 as 100.0).
        assert_eq!(mapping_difference(&json!({"scaling_factor": 100}), &json!({"scaling_factor": 100.0})), None);
        assert!(mapping_difference(&json!({"scaling_factor": 100}), &json!({"scaling_factor": 10.0})).is_some());
        // An object field's "type": "object" is the default, which Elasticsearch leaves out.
        let object = |t: Option<&str>| {
            let mut field = json!({"properties": {"id": {"type": "keyword"}}});
            if let Some(t) = t {
                field["type"] = json!(t);
            }
            json!({"properties": {"publisher": field}})
        };
        assert_eq!(mapping_difference(&object(Some("object")), &object(None)), None);
        assert_eq!(mapping_difference(&object(None), &object(Some("object"))), None);
        assert!(mapping_difference(&object(Some("nested")), &object(None)).unwrap().contains("publisher.type"));
        // `_meta` (the index's source, recorded by pg2es; anything else) is not compared.
        let with_meta =
            json!({"dynamic": "strict", "_meta": {"pg2es": {"database": "movies"}}, "properties": {"title": {"type": "text", "analyzer": "ru_en"}}});
        assert_eq!(mapping_difference(&e, &with_meta), None);
        assert_eq!(mapping_difference(&with_meta, &e), None);
        let changed = json!({"dynamic": "strict", "_meta": {}, "properties": {"title": {"type": "keyword"}}});
        assert!(mapping_difference(&e, &changed).unwrap().contains("properties.title"));
    }

    #[test]
    fn a_bad_ca_file_names_es_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let settings = SinkSettings {
                urls: vec![reqwest::Url::parse("https://127.0.0.1:9200").unwrap()],
                index: "movies".into(),
                auth: EsAuth::None,
                ca_file: Some(path),
                timeout: Duration::from_secs(30),
                max_docs: 500,
                max_bytes: 8 << 20,
                dead_letter_file: dir.path().join("dead.jsonl"),
                dead_letter_max_ratio: 0.5,
                retry: RetryPolicy { initial: Duration::from_millis(100), cap: Duration::from_secs(1) },
            };
            let err = ElasticsearchSink::new(&settings).err().expect("refused").to_string();
            assert!(err.contains("ES_CA_FILE"), "{err}");
        }
    }

    #[test]
    fn a_few_refused_documents_are_bad_rows_most_are_a_bad_mapping() {
        let mut w = RejectionWindow::new(0.5);
        // One bad document alone, or among good ones: dead-lettered.
        assert_eq!(w.record(1, 1), Ok(()));
        assert_eq!(w.record(500, 1), Ok(()));
        // A whole request refused.
        assert_eq!(w.record(500, 500), Err((500, 500)));
        // Small requests refused one after another add up over the window.
        let mut w = RejectionWindow::new(0.5);
        assert_eq!(w.record(3, 3), Ok(()));
        assert_eq!(w.record(3, 3), Ok(()));
        assert_eq!(w.record(3, 3), Ok(()));
        assert_eq!(w.record(3, 3), Err((12, 12)));
        // Good documents since then dilute older refusals.
        let mut w = RejectionWindow::new(0.5);
        assert_eq!(w.record(5, 5), Ok(()));
        assert_eq!(w.record(100, 0), Ok(()));
        assert_eq!(w.record(5, 5), Ok(()));
        // 1 turns the check off.
        assert_eq!(RejectionWindow::new(1.0).record(500, 500), Ok(()));
    }

    #[test]
    fn bulk_requests_get_more_time_by_size() {
        let base = Duration::from_secs(30);
        assert_eq!(timeout_for(base, 0), base);
        assert_eq!(timeout_for(base, 100), base);
        assert_eq!(timeout_for(base, 8 << 20), Duration::from_secs(62));
    }

    #[test]
    fn truncation_keeps_utf8_whole() {
        let s = "ё".repeat(400);
        let t = truncate(s.as_bytes());
        assert!(t.ends_with('…') && t.len() <= 504);
    }
}
