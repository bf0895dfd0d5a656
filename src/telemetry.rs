//! What pg2es says about itself while it runs: the metrics, each declared once in [`METRICS`]
//! (name, kind, labels, description; the README's table is checked against it), and each
//! document's health (its last progress, what it waits for, its last error), which `/healthz`
//! judges and the status file shows.
//!
//! Which document a measurement belongs to is the task's: the pipeline runs each document inside
//! [`in_document`], and the stages below it (the sink, the retries) record without knowing it.
//! Recording goes through the `metrics` facade: with no exporter installed (`PG2ES_METRICS_ADDR`
//! unset, or in tests) it costs a lookup and does nothing. A leaf: it imports nothing of pg2es.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod serve;
pub use serve::{serve, HealthBound};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric as exported: its name, kind, labels and meaning.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind, labels, help }
}

const DOC: &[&str] = &["document"];

pub const INDEXED: Metric = metric("pg2es_documents_indexed_total", Kind::Counter, DOC, "documents written to the index (stored by a bulk request)");
pub const DELETED: Metric =
    metric("pg2es_documents_deleted_total", Kind::Counter, DOC, "documents deleted from the index (their record is gone, or left out by the document's where)");
pub const BULK_REQUESTS: Metric = metric("pg2es_bulk_requests_total", Kind::Counter, DOC, "bulk requests answered by Elasticsearch");
pub const BULK_SECONDS: Metric =
    metric("pg2es_bulk_request_duration_seconds", Kind::Histogram, DOC, "time from sending a bulk request to reading its whole answer");
pub const ITEM_FAILURES: Metric = metric(
    "pg2es_bulk_item_failures_total",
    Kind::Counter,
    &["document", "reason"],
    "bulk items not stored, by reason: retried (429 or 5xx, sent again), rejected (refused for good, dead-lettered), older (the index holds a newer version)",
);
pub const RETRIES: Metric =
    metric("pg2es_retries_total", Kind::Counter, &["document", "service"], "waits for an unavailable service (postgres or elasticsearch) before trying again");
pub const BACKOFF_MS: Metric = metric("pg2es_backoff_milliseconds_total", Kind::Counter, &["document", "service"], "time spent waiting before those retries");
pub const NODE_FAILURES: Metric = metric(
    "pg2es_elasticsearch_node_failures_total",
    Kind::Counter,
    DOC,
    "requests a node of the cluster did not answer (no connection, a timeout, a 502, 503 or 504), each sent at once to the next node",
);
pub const COMMIT_TO_STORED: Metric = metric(
    "pg2es_commit_to_stored_seconds",
    Kind::Histogram,
    DOC,
    "per batch of changes, from the commit of its oldest change (polling: that row's change timestamp) to the batch stored",
);
pub const LAG_SECONDS: Metric = metric(
    "pg2es_lag_seconds",
    Kind::Gauge,
    DOC,
    "age of the oldest change that may not be in the index yet: every change committed before the start of the last cycle that read everything is stored",
);
pub const LAST_SUCCESS: Metric =
    metric("pg2es_last_success_timestamp_seconds", Kind::Gauge, DOC, "Unix time of the last cycle that completed (or full-load batch stored)");
pub const DEAD_LETTERS: Metric = metric("pg2es_dead_letters_total", Kind::Counter, DOC, "documents refused for good and written to the dead-letter file");
pub const FULL_LOAD_DONE: Metric = metric("pg2es_full_load_records", Kind::Gauge, DOC, "records loaded so far by the full load under way (0 when none is)");
pub const FULL_LOAD_TOTAL: Metric = metric("pg2es_full_load_records_total", Kind::Gauge, DOC, "records the full load under way reads in all (0 when none is)");
pub const SLOT_RETAINED: Metric =
    metric("pg2es_slot_retained_wal_bytes", Kind::Gauge, &["slot"], "WAL the replication slot keeps on the server (replication mode)");

/// Every metric pg2es exports, in the README's order.
pub const METRICS: &[&Metric] = &[
    &INDEXED,
    &DELETED,
    &BULK_REQUESTS,
    &BULK_SECONDS,
    &ITEM_FAILURES,
    &RETRIES,
    &BACKOFF_MS,
    &NODE_FAILURES,
    &COMMIT_TO_STORED,
    &LAG_SECONDS,
    &LAST_SUCCESS,
    &DEAD_LETTERS,
    &FULL_LOAD_DONE,
    &FULL_LOAD_TOTAL,
    &SLOT_RETAINED,
];

/// The README's table of metrics, one row per metric of [`METRICS`].
pub fn readme_table() -> String {
    let mut out = String::from("| metric | kind | labels | meaning |\n|---|---|---|---|\n");
    for m in METRICS {
        out.push_str(&format!("| `{}` | {} | {} | {} |\n", m.name, m.kind.as_str(), m.labels.join(", "), m.help));
    }
    out
}

/// Registers each metric's description with the installed recorder (for `# HELP`).
pub fn describe() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

tokio::task_local! {
    static DOCUMENT: Arc<str>;
}

/// Runs `work` as document `name`'s: what it records is labelled with it.
pub async fn in_document<F: std::future::Future>(name: &str, work: F) -> F::Output {
    DOCUMENT.scope(Arc::from(name), work).await
}

/// The document of the task running now ("" outside one: a command's own requests).
pub fn document() -> Arc<str> {
    DOCUMENT.try_with(Arc::clone).unwrap_or_else(|_| Arc::from(""))
}

pub fn count(m: &Metric, n: u64) {
    if n > 0 {
        metrics::counter!(m.name, "document" => document().to_string()).increment(n);
    }
}

pub fn bulk_request(took: Duration) {
    let doc = document().to_string();
    metrics::counter!(BULK_REQUESTS.name, "document" => doc.clone()).increment(1);
    metrics::histogram!(BULK_SECONDS.name, "document" => doc).record(took.as_secs_f64());
}

pub fn commit_to_stored(committed: DateTime<Utc>) {
    let seconds = (Utc::now() - committed).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!(COMMIT_TO_STORED.name, "document" => document().to_string()).record(seconds);
}

pub fn item_failures(reason: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!(ITEM_FAILURES.name, "document" => document().to_string(), "reason" => reason).increment(n as u64);
    }
}

/// A wait for `service` of `delay` before the next attempt; the document's health says so.
pub fn waiting(service: &str, operation: &str, error: &str, delay: Duration) {
    let doc = document();
    metrics::counter!(RETRIES.name, "document" => doc.to_string(), "service" => service.to_string()).increment(1);
    metrics::counter!(BACKOFF_MS.name, "document" => doc.to_string(), "service" => service.to_string()).increment(delay.as_millis() as u64);
    let health = health(&doc);
    let mut h = health.lock();
    let now = Utc::now();
    let since = h.waiting.as_ref().filter(|w| w.service == service).map_or(now, |w| w.since);
    h.waiting = Some(Waiting { service: service.to_string(), operation: operation.to_string(), since });
    h.last_error = Some(LastError { at: now, message: error.to_string() });
}

/// The service answered again.
pub fn recovered() {
    health(&document()).lock().waiting = None;
}

/// Work was stored: a cycle completed, or a batch of a full load.
pub fn progressed() {
    let now = Utc::now();
    let doc = document();
    health(&doc).lock().last_progress = Some(now);
    metrics::gauge!(LAST_SUCCESS.name, "document" => doc.to_string()).set(now.timestamp() as f64);
}

/// A cycle read everything there was when it began at `started`.
pub fn caught_up(started: DateTime<Utc>) {
    let doc = document();
    health(&doc).lock().caught_up = Some(started);
    set_lag(&doc, started);
}

fn set_lag(doc: &str, caught_up: DateTime<Utc>) {
    let lag = (Utc::now() - caught_up).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::gauge!(LAG_SECONDS.name, "document" => doc.to_string()).set(lag);
}

/// The full load's progress (both 0 when none is under way).
pub fn full_load(done: u64, total: u64) {
    let doc = document().to_string();
    metrics::gauge!(FULL_LOAD_DONE.name, "document" => doc.clone()).set(done as f64);
    metrics::gauge!(FULL_LOAD_TOTAL.name, "document" => doc).set(total as f64);
}

pub fn slot_retained(slot: &str, bytes: u64) {
    metrics::gauge!(SLOT_RETAINED.name, "slot" => slot.to_string()).set(bytes as f64);
}

/// How long a request may go unanswered before the log says what pg2es waits for.
pub const SLOW_ANSWER: Duration = Duration::from_secs(5);

/// Awaits `work`; when it has not finished after [`SLOW_ANSWER`] (a server that accepted the
/// connection and says nothing), logs once what pg2es waits for, where, and for how much longer
/// at most (`limit`: the request's timeout, when it has one), then goes on waiting.
pub async fn watched<T>(service: &str, what: &str, target: &str, limit: Option<Duration>, work: impl std::future::Future<Output = T>) -> T {
    // On the heap: every request goes through here, and its future would otherwise grow every
    // caller's (a test's whole pipeline sits on its thread's stack).
    let mut work = Box::pin(work);
    tokio::select! {
        out = &mut work => return out,
        () = tokio::time::sleep(SLOW_ANSWER) => {}
    }
    match limit {
        Some(limit) => tracing::warn!(
            waiting_for = %service,
            operation = what,
            at = target,
            waited_sec = SLOW_ANSWER.as_secs(),
            timeout_sec = limit.as_secs(),
            "{service} has not answered for {} s; still waiting, at most until the {} s timeout", SLOW_ANSWER.as_secs(), limit.as_secs()
        ),
        None => {
            tracing::warn!(waiting_for = %service, operation = what, at = target, waited_sec = SLOW_ANSWER.as_secs(), "{service} has not answered for {} s; still waiting", SLOW_ANSWER.as_secs())
        }
    }
    work.await
}

/// A document's health as this process sees it; also the body of its status file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// When work was last stored (a cycle completed, a full-load batch).
    pub last_progress: Option<DateTime<Utc>>,
    /// The start of the last cycle that read every change there was: everything committed
    /// before it is in the index.
    pub caught_up: Option<DateTime<Utc>>,
    /// What it waits for now, since when.
    pub waiting: Option<Waiting>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub service: String,
    pub operation: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub at: DateTime<Utc>,
    pub message: String,
}

impl Health {
    /// Why this document is unhealthy at `now` with bound `max_age`: no progress for longer
    /// (since `started` when there has been none), or waiting for a service for longer.
    pub fn unhealthy(&self, now: DateTime<Utc>, started: DateTime<Utc>, max_age: Duration) -> Option<String> {
        let bound = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let last = self.last_progress.unwrap_or(started);
        let stalled = now - last > bound;
        let nothing = match self.last_progress {
            Some(at) => format!("nothing stored since {}", at.to_rfc3339()),
            None => format!("nothing stored since the start at {}", started.to_rfc3339()),
        };
        match &self.waiting {
            // What it waits for is the news, whichever bound was passed first.
            Some(w) if stalled || now - w.since > bound => {
                Some(format!("waiting for {} ({}) since {}; {nothing}", w.service, w.operation, w.since.to_rfc3339()))
            }
            _ => stalled.then_some(nothing),
        }
    }

    /// The lag at `now`: see [`LAG_SECONDS`]; `None` before a cycle caught up.
    pub fn lag(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.caught_up.map(|at| (now - at).to_std().unwrap_or_default())
    }
}

/// The shared health of one document, for the pipeline to write and `/healthz` to read.
#[derive(Debug, Default)]
pub struct SharedHealth(Mutex<Health>);

impl SharedHealth {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn registry() -> &'static Mutex<BTreeMap<String, Arc<SharedHealth>>> {
    static R: OnceLock<Mutex<BTreeMap<String, Arc<SharedHealth>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Document `name`'s health (created on first use).
pub fn health(name: &str) -> Arc<SharedHealth> {
    registry().lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone()
}

/// Every document's health, by name (`/healthz`), with the lag gauges brought up to date.
pub fn all_health() -> Vec<(String, Health)> {
    let all: Vec<(String, Health)> = registry().lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(n, h)| (n.clone(), h.lock().clone())).collect();
    for (name, h) in &all {
        if let Some(at) = h.caught_up {
            set_lag(name, at);
        }
    }
    all.into_iter().filter(|(n, _)| !n.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_metric_is_declared_once_with_a_unit_in_its_name() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for m in METRICS {
            assert!(m.name.starts_with("pg2es_"), "{}", m.name);
            if m.kind == Kind::Counter {
                assert!(m.name.ends_with("_total"), "a counter ends in _total: {}", m.name);
            }
        }
    }

    #[test]
    fn the_readme_table_is_the_list() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("<!-- metrics table: generated from src/telemetry.rs METRICS -->\n")
            .nth(1)
            .and_then(|t| t.split("<!-- end of metrics table -->").next());
        assert_eq!(table, Some(readme_table().as_str()), "put telemetry::readme_table() between the README's markers");
    }

    #[test]
    fn health_fails_past_the_bound_of_progress_or_of_a_wait() {
        let t0 = Utc::now();
        let bound = Duration::from_secs(60);
        let mut h = Health::default();
        assert_eq!(h.unhealthy(t0 + chrono::Duration::seconds(30), t0, bound), None);
        assert!(h.unhealthy(t0 + chrono::Duration::seconds(61), t0, bound).unwrap().starts_with("nothing stored since the start"));
        h.last_progress = Some(t0 + chrono::Duration::seconds(50));
        assert_eq!(h.unhealthy(t0 + chrono::Duration::seconds(100), t0, bound), None);
        h.waiting = Some(Waiting { service: "elasticsearch".into(), operation: "bulk".into(), since: t0 + chrono::Duration::seconds(20) });
        assert!(h.unhealthy(t0 + chrono::Duration::seconds(100), t0, bound).unwrap().starts_with("waiting for elasticsearch (bulk)"));
        h.caught_up = Some(t0);
        assert_eq!(h.lag(t0 + chrono::Duration::seconds(5)), Some(Duration::from_secs(5)));
    }
}
