//! Wires source -> transform -> sink -> checkpoint.
//!
//! Within a cycle the reader (Postgres) and the writer (Elasticsearch) run at once, joined by a
//! bounded channel. The writer keeps up to `ES_BULK_CONCURRENCY` batches loading at once, but
//! takes their results in the order they were read: each batch carries the position it
//! completes, committed only after the sink stored (or dead-lettered) every document of it and of
//! every batch before it.
//!
//! The first cycle is a full load: every film in id order through one streamed query, with the
//! index's refresh and replicas off until it is done. Each table's change stream starts at its
//! newest row, so changes made during the load are read after it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::checkpoint::{Checkpoint, Snapshot, State, Stream, Watermark};
use crate::config::Config;
use crate::error::{Error, Result, Retry};
use crate::retry::{retry, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::progress::Progress;
use crate::sink::{bulk, read_index_definition, ElasticsearchSink, LoadReport};
use crate::source::{Horizon, PgSource, PgTls, RecentlyLoaded, RowVersion};
use crate::transform::{into_document, FilmWork};

/// Batches read ahead of the writer. Small: memory stays flat however large the tables are.
const CHANNEL_DEPTH: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One pass over every change, then return.
    Once,
    /// A pass every `ETL_CYCLE_SEC` until shutdown.
    Continuous,
}

/// What one cycle did, for the per-cycle log line and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// Changed rows read, per stream.
    pub rows: BTreeMap<Stream, usize>,
    /// Changed rows read again (the commit horizon) and unchanged since their films were loaded:
    /// their films were not sent again.
    pub already_loaded: usize,
    /// Films re-indexed (a film reached through two streams counts twice).
    pub films: usize,
    pub stored: usize,
    pub dead_lettered: usize,
    pub unknown_roles: usize,
    pub bad_ratings: usize,
    /// Shutdown came before every change was loaded.
    pub interrupted: bool,
}

/// The reader's message to the writer.
struct Batch {
    films: Vec<FilmWork>,
    /// What may be saved once this batch (and every one before it) is stored.
    completes: Option<Completes>,
}

enum Completes {
    /// The last batch of a page of changes: the stream may advance to `last`, and the page's
    /// rows not loaded before are now loaded.
    Stream { stream: Stream, last: Watermark, fresh: Vec<RowVersion> },
    /// The full load has loaded every film up to here.
    FullLoad(Snapshot),
}

/// Index settings during a full load: no refresh, no replicas (they are copied once at the end).
pub const FULL_LOAD_SETTINGS: [(&str, &str); 2] = [("index.refresh_interval", "-1"), ("index.number_of_replicas", "0")];

/// Runs until shutdown (continuous) or after one full pass (once). Fatal errors return; transient
/// ones are waited out with backoff. The index has its own settings again when this returns.
pub async fn run(config: &Config, mode: Mode, shutdown: &Shutdown) -> Result<Vec<CycleReport>> {
    // The lock comes first: a second instance must not even touch Elasticsearch.
    let mut checkpoint = Checkpoint::open(&config.state_file, &config.es_index)?;
    let definition = read_index_definition(&config.es_schema_file)?;
    let sink = ElasticsearchSink::new(config)?;
    let policy = RetryPolicy { initial: config.backoff_initial, cap: config.backoff_max };
    let engine = sink.engine(shutdown).await?;
    let bootstrap = retry(&policy, shutdown, "check index", || sink.ensure_index(&definition)).await?;
    tracing::info!(index = %config.es_index, url = %config.es_url, engine = %engine, bootstrap = %bootstrap, state = %config.state_file.display(), "pg2es started");
    let outcome = run_cycles(config, mode, shutdown, &sink, &mut checkpoint, &policy).await;
    // A full load cut short (shutdown, a fatal error) leaves the index searchable while stopped.
    if let Err(e) = restore_settings(&sink, &mut checkpoint, shutdown).await {
        tracing::warn!(error = %e, "could not put the index settings back; the next start does");
    }
    tracing::info!("pg2es stopped");
    outcome
}

async fn run_cycles(
    config: &Config,
    mode: Mode,
    shutdown: &Shutdown,
    sink: &ElasticsearchSink,
    checkpoint: &mut Checkpoint,
    policy: &RetryPolicy,
) -> Result<Vec<CycleReport>> {
    let mut source: Option<PgSource> = None;
    // Kept across cycles (not across restarts): rows read again only because of the horizon.
    let mut loaded = RecentlyLoaded::default();
    let mut delays = policy.delays();
    let mut reports = Vec::new();
    loop {
        let started = Instant::now();
        // Bounded: a server that stops answering mid-cycle cannot hold a stop back.
        let outcome = shutdown.bounded(async {
            let src = match source.take() {
                Some(s) if !s.is_closed() => s,
                _ => {
                    let src = connect_source(config, policy, shutdown).await?;
                    checkpoint.bind_source(&src.identity(&config.pg_schema).await?)?;
                    src
                }
            };
            let report = run_cycle(&src, sink, checkpoint, &mut loaded, config, shutdown).await;
            source = Some(src);
            report
        })
        .await;
        match outcome {
            Ok(report) => {
                delays = policy.delays();
                log_cycle(&report, started.elapsed());
                let interrupted = report.interrupted;
                reports.push(report);
                if interrupted || mode == Mode::Once {
                    break;
                }
            }
            Err(Error::Shutdown) => break,
            Err(e) => match e.retry() {
                Retry::WaitFor(service) => {
                    source = None;
                    let delay = delays.next().unwrap_or(policy.cap);
                    tracing::warn!(waiting_for = %service, retry_in_ms = delay.as_millis() as u64, error = %e, "cycle failed, {service} unavailable; progress is kept, retrying");
                    if shutdown.sleep(delay).await {
                        break;
                    }
                    continue;
                }
                Retry::GiveUp => return Err(e),
            },
        }
        if shutdown.sleep(config.cycle).await {
            break;
        }
    }
    Ok(reports)
}

async fn connect_source(config: &Config, policy: &RetryPolicy, shutdown: &Shutdown) -> Result<PgSource> {
    let tls = PgTls::from_config(config)?;
    let src = retry(policy, shutdown, "connect to postgres", || {
        PgSource::connect(&config.pg, &tls, &config.pg_schema, &config.timestamp_column)
    })
    .await?;
    tracing::info!(schema = %config.pg_schema, change_columns = %src.layout().describe(), "connected to postgres");
    Ok(src)
}

fn log_horizon(h: &Horizon) {
    if !h.exact {
        tracing::warn!(horizon = %h.at, "cannot see other sessions' open transactions: watermarks stay ETL_MAX_TX_SEC behind; grant pg_read_all_stats to read less again");
    }
    if let Some((pid, since)) = h.held_by {
        let age = chrono::Utc::now().signed_duration_since(since);
        if age > chrono::Duration::seconds(60) {
            tracing::warn!(pid, since = %since, age_sec = age.num_seconds(), "an open transaction holds watermarks back; changes after its start are re-read every cycle until it ends");
        }
    }
}

fn log_cycle(r: &CycleReport, elapsed: Duration) {
    let rows = |s: Stream| r.rows.get(&s).copied().unwrap_or(0);
    tracing::info!(
        film_rows = rows(Stream::FilmWork),
        genre_rows = rows(Stream::Genre),
        person_rows = rows(Stream::Person),
        link_rows = rows(Stream::GenreFilmWork) + rows(Stream::PersonFilmWork),
        rows_already_loaded = r.already_loaded,
        films = r.films,
        stored = r.stored,
        dead_lettered = r.dead_lettered,
        unknown_roles = r.unknown_roles,
        bad_ratings = r.bad_ratings,
        elapsed_ms = elapsed.as_millis() as u64,
        interrupted = r.interrupted,
        "cycle done"
    );
}

/// One pass over every stream, from the saved watermarks to the newest change.
pub async fn run_cycle(
    source: &PgSource,
    sink: &ElasticsearchSink,
    checkpoint: &mut Checkpoint,
    loaded: &mut RecentlyLoaded,
    config: &Config,
    shutdown: &Shutdown,
) -> Result<CycleReport> {
    // Before reading anything: whatever is not visible yet will be stamped after this point.
    let horizon = source.horizon(&config.commit_horizon).await?;
    log_horizon(&horizon);
    if checkpoint.state().needs_full_load() {
        begin_full_load(source, checkpoint, &horizon).await?;
    }
    let progress = match checkpoint.state().snapshot_in_progress() {
        Some(_) => {
            tune_for_full_load(sink, checkpoint, shutdown).await?;
            Some(Progress::for_stderr())
        }
        // Left tuned by a crash after its full load was done.
        None => {
            restore_settings(sink, checkpoint, shutdown).await?;
            None
        }
    };
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let start = checkpoint.state().clone();
    // The reader filters with what was loaded before this cycle; the writer adds to it.
    let before = loaded.clone();
    let (read, written) = tokio::join!(
        read_changes(source, &start, &before, config.batch_size, tx, shutdown, progress.as_ref()),
        write_batches(rx, sink, checkpoint, loaded, &horizon, config.bulk_concurrency, shutdown, progress.as_ref()),
    );
    drop(progress);
    // A writer error is the cause when both failed: the reader only saw the channel close.
    let mut report = written?;
    (report.rows, report.already_loaded) = read?;
    report.interrupted |= shutdown.is_triggered();
    // The full load is over, or stopped by shutdown: the index gets its own settings back.
    restore_settings(sink, checkpoint, shutdown).await?;
    Ok(report)
}

/// A full load reads every film anyway, so every stream starts at its newest row instead of
/// re-indexing each film once per genre, person and link. The positions are read before the
/// films are, so a change committed during the load is still read after it.
async fn begin_full_load(source: &PgSource, checkpoint: &mut Checkpoint, horizon: &Horizon) -> Result<()> {
    let mut marks = Vec::new();
    for stream in Stream::ALL {
        if let Some(head) = source.head(stream).await? {
            marks.push((stream, horizon.cap(head)));
        }
    }
    checkpoint.begin_full_load(&marks)?;
    tracing::info!("full load: every film is read in id order; each table's changes are read from its newest row once it is done");
    Ok(())
}

/// Turns refresh and replicas off for the full load, after saving the values to put back.
async fn tune_for_full_load(sink: &ElasticsearchSink, checkpoint: &mut Checkpoint, shutdown: &Shutdown) -> Result<()> {
    if checkpoint.state().tuned.is_some() {
        // A crash during the full load left them off, and the originals on disk.
        return Ok(());
    }
    let keys: Vec<&str> = FULL_LOAD_SETTINGS.iter().map(|(k, _)| *k).collect();
    let original = sink.settings(&keys, shutdown).await?;
    // On disk first: a crash after the change still knows what to put back.
    checkpoint.set_tuned(Some(original.clone()))?;
    let fast = FULL_LOAD_SETTINGS.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect();
    sink.put_settings(&fast, shutdown).await?;
    let during: BTreeMap<String, Option<String>> = FULL_LOAD_SETTINGS.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect();
    tracing::info!(settings = %settings_text(&during), restore = %settings_text(&original), "index tuned for the full load");
    Ok(())
}

/// Settings as an operator writes them: `index.number_of_replicas=1, index.refresh_interval=(default)`.
fn settings_text(settings: &BTreeMap<String, Option<String>>) -> String {
    let pairs: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("(default)"))).collect();
    pairs.join(", ")
}

/// Puts back the settings `tune_for_full_load` changed, then makes the load visible to search.
async fn restore_settings(sink: &ElasticsearchSink, checkpoint: &mut Checkpoint, shutdown: &Shutdown) -> Result<()> {
    let Some(original) = checkpoint.state().tuned.clone() else { return Ok(()) };
    sink.put_settings(&original, shutdown).await?;
    sink.refresh().await?;
    checkpoint.set_tuned(None)?;
    tracing::info!(settings = %settings_text(&original), "index settings restored");
    Ok(())
}

async fn read_changes(
    source: &PgSource,
    start: &State,
    loaded: &RecentlyLoaded,
    batch_size: usize,
    tx: mpsc::Sender<Batch>,
    shutdown: &Shutdown,
    progress: Option<&Progress>,
) -> Result<(BTreeMap<Stream, usize>, usize)> {
    let mut rows = BTreeMap::new();
    let mut already_loaded = 0;
    if let Some(snapshot) = start.snapshot_in_progress() {
        let (films, finished) = read_full_load(source, snapshot, batch_size, &tx, shutdown, progress).await?;
        rows.insert(Stream::FilmWork, films);
        if !finished {
            return Ok((rows, already_loaded));
        }
    }
    for stream in Stream::ALL {
        let mut cursor = start.watermark(stream);
        loop {
            if shutdown.is_triggered() {
                return Ok((rows, already_loaded));
            }
            let Some(page) = source.next_page(stream, cursor, batch_size, loaded).await? else { break };
            *rows.entry(stream).or_insert(0) += page.rows;
            already_loaded += page.already_loaded;
            let (last, full_page) = (page.last, page.rows == batch_size);
            let mut completes = Some(Completes::Stream { stream, last, fresh: page.fresh });
            // Changed rows linked to no film still move the position: one empty batch then.
            let chunks: Vec<&[uuid::Uuid]> = page.film_ids.chunks(batch_size).collect();
            let last_chunk = chunks.len().saturating_sub(1);
            if chunks.is_empty() && !send(&tx, Vec::new(), completes.take()).await {
                return Ok((rows, already_loaded));
            }
            for (i, ids) in chunks.into_iter().enumerate() {
                let films = source.films(ids).await?;
                let done = if i == last_chunk { completes.take() } else { None };
                if !send(&tx, films, done).await {
                    return Ok((rows, already_loaded));
                }
            }
            cursor = Some(last);
            if !full_page {
                break;
            }
        }
    }
    Ok((rows, already_loaded))
}

/// Sends a batch; false when the writer has stopped.
async fn send(tx: &mpsc::Sender<Batch>, films: Vec<FilmWork>, completes: Option<Completes>) -> bool {
    tx.send(Batch { films, completes }).await.is_ok()
}

/// Streams every film after the full load's position, in id order, as batches. Returns the films
/// read and whether the load reached its end.
async fn read_full_load(
    source: &PgSource,
    from: Snapshot,
    batch_size: usize,
    tx: &mpsc::Sender<Batch>,
    shutdown: &Shutdown,
    progress: Option<&Progress>,
) -> Result<(usize, bool)> {
    if let Some(p) = progress {
        p.start(source.films_left(from.after).await?);
    }
    let films = source.scan_films(from.after).await?;
    futures_util::pin_mut!(films);
    let mut read = 0;
    let mut after = from.after;
    let mut batch = Vec::with_capacity(batch_size);
    while let Some(film) = films.next().await {
        let film = film?;
        after = Some(film.id);
        batch.push(film);
        read += 1;
        if batch.len() == batch_size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            let position = Completes::FullLoad(Snapshot { after, done: false });
            if !send(tx, full, Some(position)).await || shutdown.is_triggered() {
                return Ok((read, false));
            }
        }
    }
    let finished = send(tx, batch, Some(Completes::FullLoad(Snapshot { after, done: true }))).await;
    Ok((read, finished))
}

/// What loading one batch did.
struct Loaded {
    films: usize,
    load: LoadReport,
    unknown_roles: usize,
    bad_ratings: usize,
    completes: Option<Completes>,
}

/// Transforms, encodes and loads one batch.
async fn load_batch(batch: Batch, sink: &ElasticsearchSink, shutdown: &Shutdown) -> Result<Loaded> {
    let films = batch.films.len();
    let mut docs = Vec::with_capacity(films);
    let (mut unknown_roles, mut bad_ratings) = (0, 0);
    for film in batch.films {
        let rating = film.rating;
        let (doc, notes) = into_document(film);
        unknown_roles += notes.unknown_roles;
        bad_ratings += notes.bad_ratings;
        if let (true, Some(rating)) = (notes.bad_ratings > 0, rating) {
            // As text: NaN and infinities are not JSON numbers.
            tracing::warn!(film = %doc.id, rating = %rating, "rating cannot be stored in the index, loaded as unknown");
        }
        if !notes.unknown_role_names.is_empty() {
            tracing::warn!(film = %doc.id, roles = %notes.unknown_role_names.join(","), people = notes.unknown_roles, "people with unknown roles left out of the document");
        }
        let id = doc.id.to_string();
        docs.push(bulk::encode(sink.index(), &id, &doc).map_err(|e| Error::Config(format!("cannot encode film {id}: {e}")))?);
    }
    let load = sink.load(&docs, shutdown).await?;
    Ok(Loaded { films, load, unknown_roles, bad_ratings, completes: batch.completes })
}

async fn write_batches(
    mut rx: mpsc::Receiver<Batch>,
    sink: &ElasticsearchSink,
    checkpoint: &mut Checkpoint,
    recent: &mut RecentlyLoaded,
    horizon: &Horizon,
    concurrency: usize,
    shutdown: &Shutdown,
    progress: Option<&Progress>,
) -> Result<CycleReport> {
    let mut report = CycleReport::default();
    // Up to `concurrency` batches load at once; `buffered` hands their results back in order.
    // After shutdown no new batch starts; the ones under way finish and are saved.
    let mut loads = futures_util::stream::poll_fn(|cx| rx.poll_recv(cx))
        .take_while(|_| std::future::ready(!shutdown.is_triggered()))
        .map(|batch| load_batch(batch, sink, shutdown))
        .buffered(concurrency.max(1));
    while let Some(loaded) = loads.next().await {
        let loaded = loaded?;
        report.films += loaded.films;
        report.stored += loaded.load.stored;
        report.dead_lettered += loaded.load.dead_lettered;
        report.unknown_roles += loaded.unknown_roles;
        report.bad_ratings += loaded.bad_ratings;
        match loaded.completes {
            Some(Completes::Stream { stream, last, fresh }) => {
                let target = horizon.cap(last);
                if checkpoint.state().watermark(stream).is_none_or(|current| target > current) {
                    checkpoint.commit(stream, target)?;
                }
                if let Some(committed) = checkpoint.state().watermark(stream) {
                    recent.remember(stream, &fresh, committed);
                }
            }
            Some(Completes::FullLoad(position)) => {
                checkpoint.advance_full_load(position)?;
                if let Some(p) = progress {
                    p.advance(loaded.films as u64);
                }
            }
            None => {}
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_logged_as_an_operator_writes_them() {
        let mut s = BTreeMap::new();
        s.insert("index.number_of_replicas".to_string(), Some("1".to_string()));
        s.insert("index.refresh_interval".to_string(), None);
        assert_eq!(settings_text(&s), "index.number_of_replicas=1, index.refresh_interval=(default)");
    }
}
