//! Wires source -> transform -> sink -> checkpoint.
//!
//! One cycle: the source says what to save before it reads (a full load beginning) and whether
//! the cycle is a full load; then the reader (the source) and the writer (transform and sink) run
//! at once, joined by a bounded channel. The writer keeps up to `ES_BULK_CONCURRENCY` batches
//! loading and takes their results back in read order: a batch's position is committed only after
//! the sink stored (or dead-lettered) every change of it and of every batch before it. Writes carry
//! the version of the state they were read in, so two states of one record in flight at once end as
//! the newer. Around a full load the sink tunes the index and puts its settings back
//! (`sink::tuning`); between cycles the reconcile stage removes documents whose record is gone,
//! every `ETL_RECONCILE_SEC` and after a full load.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use std::sync::Arc;

use crate::catalog::{Document, IndexSpec};
use crate::checkpoint::{Checkpoint, PositionDelta};
use crate::config::{Config, SourceKind};
use crate::error::{Error, Result, Retry};
use crate::progress::Progress;
use crate::reconcile;
use crate::retry::{retry, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::sink::tuning::{restore_settings, tune_for_full_load};
use crate::sink::{ElasticsearchSink, IndexAction, IndexBootstrap, IndexOwner, IndexSink, LoadReport};
use crate::source::{Change, ChangeBatch, ChangeSource, DocumentSpec, PollingSource, Receipt, ReplicationSource, ReplicationStream};
use crate::telemetry;
use crate::transform::build;

mod led;

/// Batches read ahead of the writer. Small: memory stays flat however large the tables are.
const CHANNEL_DEPTH: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One pass over every change, then return.
    Once,
    /// A pass every `ETL_CYCLE_SEC` until shutdown.
    Continuous,
}

/// How the cycles run: from the configuration, or set by tests.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub cycle: Duration,
    pub bulk_concurrency: usize,
    /// Between two reconciliations; `None`: only after a full load.
    pub reconcile_every: Option<Duration>,
    pub retry: RetryPolicy,
    /// The index held no document when pg2es started: a first full load into it has nothing
    /// to reconcile.
    pub index_empty_at_start: bool,
}

impl Options {
    pub fn from_config(config: &Config, mode: Mode) -> Options {
        Options {
            mode,
            cycle: config.cycle,
            bulk_concurrency: config.bulk_concurrency,
            reconcile_every: config.reconcile_every,
            retry: config.retry_policy(),
            index_empty_at_start: false,
        }
    }
}

/// What one cycle did, for the per-cycle log line and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// The document the cycle kept.
    pub document: String,
    /// The document's root table (its rows are `root_rows` in the log line).
    pub root: String,
    /// Changed rows read, per stream (table).
    pub rows: BTreeMap<String, usize>,
    /// Changed rows read again (the commit horizon) and unchanged since their records were loaded:
    /// their records were not sent again.
    pub already_loaded: usize,
    /// Records named by the delete log or the replication stream.
    pub logged: usize,
    /// Records re-indexed (a record reached twice counts twice).
    pub records: usize,
    /// Documents deleted because their record is gone (by a change or by reconciliation).
    pub deleted: usize,
    pub stored: usize,
    /// Writes the index refused because it holds a newer version: written since by a later
    /// change, or the index was written from another source whose positions are higher.
    pub older: usize,
    pub dead_lettered: usize,
    /// Related rows no field keeps (their `where` values are none of the wanted ones).
    pub unmatched: usize,
    /// Some of the values behind `unmatched` (at most [`UNMATCHED_VALUES_SHOWN`]), for the
    /// cycle's one line about them.
    pub unmatched_values: std::collections::BTreeSet<String>,
    /// Numbers the index cannot store, loaded as unknown.
    pub bad_numbers: usize,
    /// Documents checked by reconciliation this cycle (`None`: it did not run).
    pub reconciled: Option<usize>,
    /// Shutdown came before every change was loaded.
    pub interrupted: bool,
    /// The source has more changes waiting (the next cycle starts at once).
    pub more: bool,
}

/// Runs until shutdown (continuous) or after one full pass (once), every selected document of
/// the definition at once, each in its own index with its own state. Fatal errors return (and
/// stop the other documents); transient ones are waited out with backoff. The indexes have their
/// own settings again when this returns.
pub async fn run(config: &Config, mode: Mode, shutdown: &Shutdown) -> Result<Vec<CycleReport>> {
    let runs = documents(config)?;
    if config.state_in_postgres {
        return Box::pin(led::run(config, runs, mode, shutdown)).await;
    }
    run_documents(runs, mode, shutdown, None).await
}

/// The documents of one run (or, led, of one lease), each on its own task.
async fn run_documents(runs: Vec<(Config, DocumentSpec, IndexSpec)>, mode: Mode, shutdown: &Shutdown, lead: Option<&led::Lead>) -> Result<Vec<CycleReport>> {
    // Replication: one slot for the run, read once for all of its documents.
    let stream = runs.first().and_then(|(c, _, _)| match &c.source {
        SourceKind::Replication(settings) => Some(ReplicationStream::new(settings, runs.len())),
        SourceKind::Polling => None,
    });
    let stream = stream.as_ref();
    if let [(c, spec, index)] = runs.as_slice() {
        return Box::pin(telemetry::in_document(&spec.name, run_document(c, spec.clone(), index, stream, mode, shutdown, lead))).await;
    }
    // One task per document, so that their transforms use every core. One fails for good: the
    // others stop too (and save what they loaded).
    let (stop, local) = Shutdown::new();
    let stop = std::sync::Arc::new(stop);
    let mut tasks = tokio::task::JoinSet::new();
    for (position, (c, spec, index)) in runs.into_iter().enumerate() {
        let (stream, local, stop, lead) = (stream.cloned(), local.clone(), stop.clone(), lead.cloned());
        tasks.spawn(async move {
            let name = spec.name.clone();
            let out = telemetry::in_document(&name, run_document(&c, spec, &index, stream.as_ref(), mode, &local, lead.as_ref())).await;
            if out.is_err() {
                stop.trigger();
            }
            (position, out)
        });
    }
    join_in_order(tasks, &stop, shutdown, "a document's task").await
}

/// Waits for every task of `tasks`, each `(position, its reports)`; a shutdown asked for reaches
/// them all through `stop` (they then finish as one does alone). The reports in `position`
/// order; the error of the first position that failed, whichever failed first.
async fn join_in_order(
    mut tasks: tokio::task::JoinSet<(usize, Result<Vec<CycleReport>>)>,
    stop: &crate::shutdown::ShutdownTrigger,
    shutdown: &Shutdown,
    what: &str,
) -> Result<Vec<CycleReport>> {
    let mut results = Vec::new();
    let mut asked = false;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(r)) => results.push(r),
                Some(Err(e)) => {
                    stop.trigger();
                    results.push((usize::MAX, Err(Error::SourceSetup(format!("{what} ended abnormally: {e}")))));
                }
            },
            () = shutdown.wait(), if !asked => {
                asked = true;
                stop.trigger();
            }
        }
    }
    results.sort_by_key(|(position, _)| *position);
    let mut reports = Vec::new();
    let mut first_error = None;
    for (_, r) in results {
        match r {
            Ok(mut rs) => reports.append(&mut rs),
            Err(Error::Shutdown) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}

/// The document's saved state where it is kept (its state file, or its row of `pg2es.state`),
/// read without the lock or the lease: possibly one save old.
pub async fn saved_state(config: &Config) -> Result<Option<crate::checkpoint::State>> {
    if config.state_in_postgres {
        crate::ha::read_state(&config.source_settings(), &crate::ha::state_key(&config.state_file), &config.es_index).await
    } else {
        crate::checkpoint::read(&config.state_file, &config.es_index)
    }
}

/// The key of the lease the document is led under (`PG2ES_STATE_STORE=postgres`).
pub fn lease_key(config: &Config) -> String {
    let slot = match &config.source {
        SourceKind::Replication(r) => Some(r.slot.as_str()),
        SourceKind::Polling => None,
    };
    crate::ha::lease_key(&config.state_file, slot)
}

/// The selected documents of the definition, each with its own settings (index, state file,
/// slot: [`Config::documents`]), from the definition file alone.
pub fn documents(config: &Config) -> Result<Vec<(Config, DocumentSpec, IndexSpec)>> {
    let selection = config.selection()?;
    let source = selection.source()?;
    Ok(config
        .documents(&selection, &source)?
        .into_iter()
        .map(|d| {
            let spec = DocumentSpec { source: source.clone(), selection: selection.clone(), name: d.name, first: d.position == 0 };
            (d.config, spec, d.index)
        })
        .collect())
}

/// One document: its index, its state, its source.
async fn run_document(
    config: &Config,
    spec: DocumentSpec,
    index: &IndexSpec,
    stream: Option<&Arc<ReplicationStream>>,
    mode: Mode,
    shutdown: &Shutdown,
    lead: Option<&led::Lead>,
) -> Result<Vec<CycleReport>> {
    // The lock (or the lease) comes first: a second instance must not even touch Elasticsearch.
    let (mut checkpoint, sink) = match lead {
        None => (Checkpoint::open(&config.state_file, &config.es_index)?, ElasticsearchSink::new(&config.sink_settings())?),
        Some(lead) => {
            let store = lead.store(config)?;
            let sink = ElasticsearchSink::new(&config.sink_settings())?.fenced(lead.fence()).with_dead_letters(Box::new(store.dead_letters()));
            (Checkpoint::in_store(&config.state_file, &config.es_index, Box::new(store))?, sink)
        }
    };
    adopt_definition(&mut checkpoint, &spec, index)?;
    let definition = index.schema.clone();
    let mut options = Options::from_config(config, mode);
    let engine = sink.engine(shutdown).await?;
    let bootstrap = retry(&options.retry, shutdown, "check index", || sink.ensure_index(&definition)).await?;
    options.index_empty_at_start = bootstrap == IndexBootstrap::Created || sink.count(shutdown).await? == 0;
    let name = spec.name.clone();
    tracing::info!(document = %name, index = %config.es_index, url = %crate::sink::shown_urls(&config.sink.urls), engine = %engine, bootstrap = %bootstrap, state = %config.state_file.display(), "pg2es started");
    let outcome = match &config.source {
        SourceKind::Polling => run_cycles(&mut PollingSource::new(&config.source_settings(), spec)?, &sink, &mut checkpoint, &options, shutdown).await,
        SourceKind::Replication(settings) => {
            let stream = stream.cloned().unwrap_or_else(|| ReplicationStream::new(settings, 1));
            run_cycles(&mut ReplicationSource::new(&config.source_settings(), settings, spec, stream)?, &sink, &mut checkpoint, &options, shutdown).await
        }
    };
    // A full load cut short (shutdown, a fatal error) leaves the index searchable while stopped.
    if let Err(e) = restore_settings(&sink, &mut checkpoint, shutdown).await {
        tracing::warn!(error = %e, "could not put the index settings back; the next start does");
    }
    // A run that failed before loading anything (a setup error) leaves no empty index behind.
    if bootstrap == IndexBootstrap::Created && matches!(&outcome, Err(e) if !matches!(e, Error::Shutdown)) {
        match sink.remove_if_empty(shutdown).await {
            Ok(true) => tracing::info!(index = %config.es_index, "removed the index created at start: nothing was loaded before the error"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove the empty index created at start"),
        }
    }
    tracing::info!(document = %name, "pg2es stopped");
    outcome
}

/// Records which definition the documents are built from; after a change to it (a `where`, a
/// field reading another column), every record is loaded again over the live index, and the
/// reconciliation after it removes the documents the definition no longer makes.
pub fn adopt_definition(checkpoint: &mut Checkpoint, spec: &DocumentSpec, index: &IndexSpec) -> Result<()> {
    let Some(fingerprint) = crate::catalog::definition::fingerprint(&spec.source, &spec.name, &index.schema) else { return Ok(()) };
    checkpoint.set_running_definition(fingerprint.clone());
    if checkpoint.state().definition.as_deref() == Some(fingerprint.as_str()) {
        return Ok(());
    }
    // A rebuild from this definition waits to be taken over (`follow_rebuild`): its positions are
    // of documents built from it, nothing is loaded again.
    let handoff = crate::checkpoint::read(&crate::checkpoint::handoff_path(checkpoint.path()), &checkpoint.state().index).ok().flatten();
    if handoff.is_some_and(|h| h.definition.as_deref() == Some(fingerprint.as_str())) {
        return Ok(());
    }
    if checkpoint.state().definition_changes(&fingerprint) {
        tracing::warn!(
            document = %spec.name,
            index = %index.name,
            "the definition of this document (or its index schema) changed since its documents were built: every record is loaded again, over the index as it is, then documents no record makes any more are removed"
        );
    }
    checkpoint.commit(&[PositionDelta::Definition { fingerprint }])
}

/// The cycle loop, for any source and sink.
pub async fn run_cycles<S: ChangeSource, K: IndexSink>(
    source: &mut S,
    sink: &K,
    checkpoint: &mut Checkpoint,
    options: &Options,
    shutdown: &Shutdown,
) -> Result<Vec<CycleReport>> {
    let mut delays = options.retry.delays();
    let mut reports = Vec::new();
    let mut index_empty = options.index_empty_at_start;
    let mut idle = IdleCycles::default();
    let mut status = Status::new();
    // At once: `pg2es status` tells a run that is in its first cycle (a full load) from none.
    status.write(checkpoint);
    let mut rebuild_checked: Option<Instant> = None;
    loop {
        if options.mode == Mode::Once || rebuild_checked.is_none_or(|t| t.elapsed() >= REBUILD_CHECK_EVERY) {
            // Boxed, like the cycle: the loop's own future stays small (debug builds nest deep).
            match Box::pin(follow_rebuild(sink, checkpoint, shutdown)).await {
                Ok(adopted) => {
                    rebuild_checked = Some(Instant::now());
                    if adopted {
                        source.rewound();
                    }
                }
                Err(e) if matches!(e.retry(), Retry::WaitFor(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let started = Instant::now();
        let began = chrono::Utc::now();
        // Bounded: a server that stops answering mid-cycle cannot hold a stop back.
        let outcome = shutdown.bounded(Box::pin(run_cycle(source, sink, checkpoint, options, &mut index_empty, shutdown))).await;
        if let Some(report) = outcome.as_ref().ok().filter(|r| !r.interrupted) {
            telemetry::progressed();
            if !report.more && checkpoint.state().snapshot_in_progress().is_none() {
                telemetry::caught_up(began);
            }
            status.cycle(report, started.elapsed());
        }
        match outcome {
            Ok(report) => {
                delays = options.retry.delays();
                if options.mode == Mode::Once {
                    // One pass asked for: its report is the answer, whatever it found.
                    log_cycle(&report, started.elapsed());
                } else {
                    idle.log(&report, started.elapsed());
                }
                let (interrupted, more) = (report.interrupted, report.more);
                reports.push(report);
                status.write(checkpoint);
                // A pass is whole once no full load is pending (a TRUNCATE starts a reload) and
                // the source has nothing more waiting.
                let pending = more || checkpoint.state().snapshot_in_progress().is_some();
                if interrupted {
                    break;
                }
                if options.mode == Mode::Once && !pending {
                    // Without it the slot would keep this pass's changes until the next run.
                    if let Err(e) = source.finish(checkpoint.state()).await {
                        tracing::warn!(error = %e, "the pass is stored, but the replication slot was not moved past it: the next run reads those changes again");
                    }
                    break;
                }
                if pending {
                    continue;
                }
            }
            Err(Error::Shutdown) => break,
            Err(e) => match e.retry() {
                Retry::WaitFor(service) => {
                    let delay = delays.next().unwrap_or(options.retry.cap);
                    tracing::warn!(waiting_for = %service, retry_in_ms = delay.as_millis() as u64, error = %e, "cycle failed, {service} unavailable; progress is kept, retrying");
                    telemetry::waiting(&service.to_string(), "cycle", &e.to_string(), delay);
                    status.write(checkpoint);
                    if shutdown.sleep(delay).await {
                        break;
                    }
                    continue;
                }
                Retry::GiveUp => return Err(e),
            },
        }
        if shutdown.sleep(options.cycle).await {
            break;
        }
    }
    Ok(reports)
}

/// How often a running pipeline looks whether `pg2es reindex` moved the index's alias.
const REBUILD_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Follows a rebuild by `pg2es reindex`: once the index name points at another concrete index
/// than the positions were loaded into, the rebuild's hand-over (its positions in the new index,
/// `checkpoint::handoff_path`) becomes the state, and the cycles read on from there; a
/// hand-over from another definition stops the run (restarted with that definition, it takes
/// it). Without a hand-over the new index is loaded in full.
/// True when a hand-over was taken.
async fn follow_rebuild<K: IndexSink>(sink: &K, checkpoint: &mut Checkpoint, shutdown: &Shutdown) -> Result<bool> {
    let Some(target) = sink.target_index(shutdown).await? else { return Ok(false) };
    let recorded = checkpoint.state().target.clone();
    if recorded.as_deref() == Some(target.as_str()) {
        return Ok(false);
    }
    let path = crate::checkpoint::handoff_path(checkpoint.path());
    let handoff = crate::checkpoint::read(&path, &checkpoint.state().index)?.filter(|h| h.target.as_deref() == Some(target.as_str()));
    let Some(handoff) = handoff else {
        if recorded.is_some() {
            tracing::warn!(index = %checkpoint.state().index, now = %target, before = ?recorded, "the index name points at another index and no rebuild handed its positions over: every record is loaded into it");
        }
        checkpoint.commit(&[PositionDelta::Target { index: target }])?;
        return Ok(false);
    };
    if let (Some(theirs), Some(ours)) = (&handoff.definition, checkpoint.running_definition()) {
        if theirs != ours {
            return Err(Error::Refused(format!(
                "index {} now points at {target}, which `pg2es reindex` built from another definition than this run's: restart `pg2es run` with that definition (it takes the rebuild's positions, {})",
                checkpoint.state().index,
                path.display()
            )));
        }
    }
    checkpoint.adopt(handoff)?;
    let _ = std::fs::remove_file(&path);
    tracing::info!(index = %checkpoint.state().index, now = %target, before = ?recorded, "following the rebuild: reading on from the positions it reached in the new index");
    Ok(true)
}

/// The document's status file (`checkpoint::RunStatus`), rewritten after each cycle and each
/// wait: best effort, since it is news and not progress.
struct Status {
    started: chrono::DateTime<chrono::Utc>,
    last_cycle: Option<crate::checkpoint::CycleSummary>,
}

impl Status {
    fn new() -> Status {
        Status { started: chrono::Utc::now(), last_cycle: None }
    }

    fn cycle(&mut self, r: &CycleReport, elapsed: Duration) {
        self.last_cycle = Some(crate::checkpoint::CycleSummary {
            at: Some(chrono::Utc::now()),
            elapsed_ms: elapsed.as_millis() as u64,
            records: r.records,
            stored: r.stored,
            deleted: r.deleted,
            dead_lettered: r.dead_lettered,
            older_than_index: r.older,
        });
    }

    fn write(&self, checkpoint: &mut Checkpoint) {
        let status = crate::checkpoint::RunStatus {
            pid: std::process::id(),
            started: self.started,
            updated: chrono::Utc::now(),
            health: telemetry::health(&telemetry::document()).lock().clone(),
            last_cycle: self.last_cycle.clone(),
        };
        checkpoint.report(&status);
    }
}

/// One pass: every change after the saved position, then reconciliation when it is due.
async fn run_cycle<S: ChangeSource, K: IndexSink>(
    source: &mut S,
    sink: &K,
    checkpoint: &mut Checkpoint,
    options: &Options,
    index_empty: &mut bool,
    shutdown: &Shutdown,
) -> Result<CycleReport> {
    let plan = source.prepare(checkpoint.state()).await?;
    let doc = source.document().ok_or_else(|| Error::SourceSetup("the source has no document after prepare".into()))?;
    if let Some(identity) = &plan.identity {
        checkpoint.bind_source(identity)?;
        if let Some(wal) = plan.wal {
            checkpoint.check_wal(wal)?;
        }
        // Before anything is written: an index another source keeps is refused.
        sink.claim(&IndexOwner::new(identity, &doc.name), shutdown).await?;
    }
    checkpoint.commit(&plan.before)?;
    if let Some(columns) = plan.columns.as_ref().filter(|c| checkpoint.state().columns.as_ref() != Some(*c)) {
        let changed = checkpoint.state().columns_changed(columns);
        checkpoint.commit(&[PositionDelta::Columns { columns: columns.clone() }])?;
        if !changed.is_empty() {
            tracing::warn!(document = %doc.name, changed = %changed.join("; "), "a column the documents were read from was dropped and added again, or its type altered: they hold the values read before; every record is loaded again, over the index as it is");
            // The next cycle, at once, is the full load.
            return Ok(CycleReport { document: doc.name.clone(), root: doc.root.clone(), more: true, ..CycleReport::default() });
        }
    }
    let progress = if plan.full_load {
        tune_for_full_load(sink, checkpoint, shutdown).await?;
        Some(Progress::for_stderr())
    } else {
        // Left tuned by a crash after its full load was done.
        restore_settings(sink, checkpoint, shutdown).await?;
        None
    };
    // Every write is versioned with the state it was read in, so requests may finish in any order.
    let concurrency = options.bulk_concurrency;
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let start = checkpoint.state().clone();
    let reader: &S = source;
    let (read, written) = tokio::join!(
        reader.read(&start, tx, shutdown, progress.as_ref()),
        write_batches(rx, reader, &doc, sink, checkpoint, concurrency, shutdown, progress.as_ref()),
    );
    drop(progress);
    // A writer error is the cause when both failed: the reader only saw the channel close.
    let mut report = written?;
    let read = read?;
    // Documents stored outside a full load make the index non-empty: a later reload reconciles.
    *index_empty &= plan.full_load || report.stored == 0;
    (report.rows, report.already_loaded, report.logged, report.more) = (read.rows, read.already_loaded, read.logged, read.more);
    (report.document, report.root) = (doc.name.clone(), doc.root.clone());
    report.interrupted |= shutdown.is_triggered();
    // The full load is over, or stopped by shutdown: the index gets its own settings back.
    restore_settings(sink, checkpoint, shutdown).await?;
    let full_load_done = plan.full_load && checkpoint.state().snapshot_in_progress().is_none();
    if report.interrupted {
        return Ok(report);
    }
    // A full load rewrote every record that exists; documents of others may remain, unless the
    // index was empty when it began.
    let after_full_load = full_load_done && !std::mem::take(index_empty);
    if full_load_done && !after_full_load {
        reconcile::skip(checkpoint)?;
    }
    if after_full_load || reconcile::due(checkpoint.state(), options.reconcile_every) {
        let done = reconcile::run(&doc, reader, sink, checkpoint, shutdown).await?;
        report.reconciled = Some(done.checked);
        report.deleted += done.deleted;
        telemetry::count(&telemetry::DELETED, done.deleted as u64);
    }
    Ok(report)
}

/// The cycle line, at the level given: INFO, or DEBUG for a cycle that found nothing.
macro_rules! cycle_line {
    ($level:ident, $r:expr, $elapsed:expr) => {{
        let (r, elapsed): (&CycleReport, Duration) = ($r, $elapsed);
        let root_rows = r.rows.get(&r.root).copied().unwrap_or(0);
        tracing::$level!(
            document = %r.document,
            root_rows,
            related_rows = r.rows.values().sum::<usize>() - root_rows,
            rows_already_loaded = r.already_loaded,
            logged = r.logged,
            records = r.records,
            deleted = r.deleted,
            stored = r.stored,
            older_than_index = r.older,
            dead_lettered = r.dead_lettered,
            unmatched = r.unmatched,
            bad_numbers = r.bad_numbers,
            reconciled = r.reconciled.unwrap_or(0),
            elapsed_ms = elapsed.as_millis() as u64,
            interrupted = r.interrupted,
            "cycle done"
        )
    }};
}

/// How often cycles that found nothing are summed up in one line.
const IDLE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Cycles that found nothing to do log at DEBUG; one INFO line a minute sums them up.
#[derive(Default)]
struct IdleCycles {
    count: u64,
    since: Option<Instant>,
}

impl IdleCycles {
    fn log(&mut self, r: &CycleReport, elapsed: Duration) {
        // Rows read again only because of the commit horizon, unchanged, are not news.
        let busy = r.rows.values().sum::<usize>() > r.already_loaded
            || r.logged > 0
            || r.records > 0
            || r.deleted > 0
            || r.stored > 0
            || r.older > 0
            || r.dead_lettered > 0
            || r.reconciled.is_some()
            || r.interrupted;
        if busy {
            log_cycle(r, elapsed);
            return;
        }
        cycle_line!(debug, r, elapsed);
        self.count += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= IDLE_SUMMARY_EVERY {
            tracing::info!(document = %r.document, idle_cycles = self.count, over_sec = since.elapsed().as_secs(), "no change in Postgres");
            (self.count, self.since) = (0, Some(Instant::now()));
        }
    }
}

fn log_cycle(r: &CycleReport, elapsed: Duration) {
    cycle_line!(info, r, elapsed);
    if r.older > 0 {
        tracing::warn!(document = %r.document, refused = r.older, "writes refused because the index holds a newer version of the document: expected now and then, when a document changed while it was written; if many are, or the same documents stay stale in `pg2es verify`, the index was written from a source whose WAL positions are higher (another server, or before a restore), and every write from this one looks older: rebuild it with `pg2es reindex`");
    }
    if r.unmatched > 0 {
        // Left out on purpose, mostly (`where`): one line a cycle, not one per document.
        let values: Vec<&str> = r.unmatched_values.iter().map(String::as_str).collect();
        tracing::info!(document = %r.document, rows = r.unmatched, values = %values.join(","), "related rows that no field's where keeps were left out");
    }
}

/// How many distinct values of rows no field keeps a cycle's line names.
pub const UNMATCHED_VALUES_SHOWN: usize = 20;

fn note_values(into: &mut std::collections::BTreeSet<String>, values: impl IntoIterator<Item = String>) {
    for v in values {
        if into.len() >= UNMATCHED_VALUES_SHOWN {
            break;
        }
        into.insert(v);
    }
}

/// What loading one batch did.
struct Loaded {
    records: usize,
    deleted: usize,
    load: LoadReport,
    unmatched: usize,
    unmatched_values: std::collections::BTreeSet<String>,
    bad_numbers: usize,
    completes: Vec<PositionDelta>,
    receipt: Receipt,
    committed: Option<chrono::DateTime<chrono::Utc>>,
}

/// Transforms one batch's changes into index actions and has the sink apply them.
async fn load_batch<K: IndexSink>(batch: ChangeBatch, doc: &Document, sink: &K, shutdown: &Shutdown) -> Result<Loaded> {
    let mut actions = Vec::with_capacity(batch.changes.len());
    let (mut records, mut deleted, mut unmatched, mut bad_numbers) = (0, 0, 0, 0);
    let mut unmatched_values = std::collections::BTreeSet::new();
    for change in batch.changes {
        let record = match change {
            Change::Upsert(record) => record,
            Change::Delete(id) => {
                deleted += 1;
                actions.push(IndexAction::Delete { id: id.to_string(), version: batch.version });
                continue;
            }
        };
        records += 1;
        let (body, notes) = build(doc, &record).map_err(|e| Error::SourceSchema(e.0))?;
        unmatched += notes.unmatched;
        bad_numbers += notes.bad_numbers;
        if notes.bad_numbers > 0 {
            tracing::warn!(document = %doc.name, key = %record.key, numbers = notes.bad_numbers, "numbers the index cannot store (NaN, infinite, beyond a float field) loaded as unknown");
        }
        note_values(&mut unmatched_values, notes.unmatched_values);
        actions.push(IndexAction::Index { id: record.key.to_string(), body, version: batch.version });
    }
    let load = if actions.is_empty() { LoadReport::default() } else { sink.write(actions, shutdown).await? };
    Ok(Loaded {
        records,
        deleted,
        load,
        unmatched,
        unmatched_values,
        bad_numbers,
        completes: batch.completes,
        receipt: batch.receipt,
        committed: batch.committed,
    })
}

#[allow(clippy::too_many_arguments)]
async fn write_batches<S: ChangeSource, K: IndexSink>(
    mut rx: mpsc::Receiver<ChangeBatch>,
    source: &S,
    doc: &Arc<Document>,
    sink: &K,
    checkpoint: &mut Checkpoint,
    concurrency: usize,
    shutdown: &Shutdown,
    progress: Option<&Progress>,
) -> Result<CycleReport> {
    let mut report = CycleReport::default();
    // Up to `concurrency` batches load at once; `buffered` hands their results back in order.
    // After shutdown no new batch starts; the ones under way finish and are saved.
    let mut loads = futures_util::stream::poll_fn(|cx| rx.poll_recv(cx))
        .take_while(|_| std::future::ready(!shutdown.is_triggered()))
        .map(|batch| load_batch(batch, doc, sink, shutdown))
        .buffered(concurrency.max(1));
    while let Some(loaded) = loads.next().await {
        let loaded = loaded?;
        report.records += loaded.records;
        report.deleted += loaded.deleted;
        report.stored += loaded.load.stored;
        report.older += loaded.load.older;
        report.dead_lettered += loaded.load.dead_lettered;
        report.unmatched += loaded.unmatched;
        note_values(&mut report.unmatched_values, loaded.unmatched_values);
        report.bad_numbers += loaded.bad_numbers;
        checkpoint.commit(&loaded.completes)?;
        source.acknowledge(loaded.receipt);
        telemetry::count(&telemetry::INDEXED, loaded.records.saturating_sub(loaded.load.dead_lettered) as u64);
        telemetry::count(&telemetry::DELETED, loaded.deleted as u64);
        telemetry::progressed();
        if let Some(at) = loaded.committed.filter(|_| loaded.records + loaded.deleted > 0) {
            telemetry::commit_to_stored(at);
        }
        if let (Some(p), true) = (progress, loaded.completes.iter().any(|d| matches!(d, PositionDelta::FullLoad(_)))) {
            p.advance(loaded.records as u64);
        }
    }
    Ok(report)
}
