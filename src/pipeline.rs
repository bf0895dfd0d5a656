//! Wires source -> transform -> sink -> checkpoint.
//!
//! Within a cycle the reader (Postgres) and the writer (Elasticsearch) run at once, joined by a
//! bounded channel. Each batch carries the watermark it completes; the writer commits it only
//! after the sink has stored (or dead-lettered) every document of the batch, in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::checkpoint::{Checkpoint, Stream, Watermark};
use crate::config::Config;
use crate::error::{Error, Result, Retry};
use crate::retry::{retry, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::sink::{bulk, read_index_definition, ElasticsearchSink};
use crate::source::{Horizon, PgSource, PgTls};
use crate::transform::{to_document, FilmWork};

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
    /// Set on the last batch of a page: the stream may advance to here once the batch is stored.
    completes: Option<(Stream, Watermark)>,
}

/// Runs until shutdown (continuous) or after one full pass (once). Fatal errors return; transient
/// ones are waited out with backoff.
pub async fn run(config: &Config, mode: Mode, shutdown: &Shutdown) -> Result<Vec<CycleReport>> {
    // The lock comes first: a second instance must not even touch Elasticsearch.
    let mut checkpoint = Checkpoint::open(&config.state_file, &config.es_index)?;
    let definition = read_index_definition(&config.es_schema_file)?;
    let sink = ElasticsearchSink::new(config)?;
    let policy = RetryPolicy { initial: config.backoff_initial, cap: config.backoff_max };
    let bootstrap = retry(&policy, shutdown, "check index", || sink.ensure_index(&definition)).await?;
    tracing::info!(index = %config.es_index, url = %config.es_url, bootstrap = ?bootstrap, state = %config.state_file.display(), "pg2es started");

    let mut source: Option<PgSource> = None;
    let mut delays = policy.delays();
    let mut reports = Vec::new();
    loop {
        let started = Instant::now();
        let outcome = async {
            let src = match source.take() {
                Some(s) if !s.is_closed() => s,
                _ => connect_source(config, &policy, shutdown).await?,
            };
            let report = run_cycle(&src, &sink, &mut checkpoint, config, shutdown).await;
            source = Some(src);
            report
        }
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
    tracing::info!("pg2es stopped");
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
    config: &Config,
    shutdown: &Shutdown,
) -> Result<CycleReport> {
    // Before reading anything: whatever is not visible yet will be stamped after this point.
    let horizon = source.horizon(&config.commit_horizon).await?;
    log_horizon(&horizon);
    if checkpoint.state().watermarks.is_empty() {
        start_first_load(source, checkpoint, &horizon).await?;
    }
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let start = checkpoint.state().clone();
    let (read, written) = tokio::join!(
        read_changes(source, &start.watermarks, config.batch_size, tx, shutdown),
        write_batches(rx, sink, checkpoint, &horizon, shutdown),
    );
    // A writer error is the cause when both failed: the reader only saw the channel close.
    let mut report = written?;
    report.rows = read?;
    report.interrupted |= shutdown.is_triggered();
    Ok(report)
}

/// A first load reads every film anyway, so the other streams start at their newest row instead
/// of re-indexing every film once per genre, person and link. Their positions are read before the
/// films are, so a change committed during the load is still seen by the next cycle.
async fn start_first_load(source: &PgSource, checkpoint: &mut Checkpoint, horizon: &Horizon) -> Result<()> {
    let mut marks = Vec::new();
    for stream in [Stream::Genre, Stream::Person, Stream::GenreFilmWork, Stream::PersonFilmWork] {
        if let Some(head) = source.head(stream).await? {
            marks.push((stream, horizon.cap(head)));
        }
    }
    checkpoint.commit_many(&marks)?;
    tracing::info!(streams = marks.len(), "first load: related tables start at their newest row, every film is read");
    Ok(())
}

async fn read_changes(
    source: &PgSource,
    start: &BTreeMap<Stream, Watermark>,
    batch_size: usize,
    tx: mpsc::Sender<Batch>,
    shutdown: &Shutdown,
) -> Result<BTreeMap<Stream, usize>> {
    let mut rows = BTreeMap::new();
    for stream in Stream::ALL {
        let mut cursor = start.get(&stream).copied();
        loop {
            if shutdown.is_triggered() {
                return Ok(rows);
            }
            let Some(page) = source.next_page(stream, cursor, batch_size).await? else { break };
            *rows.entry(stream).or_insert(0) += page.rows;
            let chunks: Vec<&[uuid::Uuid]> = page.film_ids.chunks(batch_size).collect();
            let last_chunk = chunks.len().saturating_sub(1);
            if chunks.is_empty() {
                // Changed rows linked to no film: nothing to load, but the position still moves.
                if tx.send(Batch { films: Vec::new(), completes: Some((stream, page.last)) }).await.is_err() {
                    return Ok(rows);
                }
            }
            for (i, ids) in chunks.into_iter().enumerate() {
                let films = source.films(ids).await?;
                let completes = (i == last_chunk).then_some((stream, page.last));
                if tx.send(Batch { films, completes }).await.is_err() {
                    return Ok(rows);
                }
            }
            cursor = Some(page.last);
            if page.rows < batch_size {
                break;
            }
        }
    }
    Ok(rows)
}

async fn write_batches(
    mut rx: mpsc::Receiver<Batch>,
    sink: &ElasticsearchSink,
    checkpoint: &mut Checkpoint,
    horizon: &Horizon,
    shutdown: &Shutdown,
) -> Result<CycleReport> {
    let mut report = CycleReport::default();
    while let Some(batch) = rx.recv().await {
        let mut docs = Vec::with_capacity(batch.films.len());
        for film in &batch.films {
            let (doc, notes) = to_document(film);
            report.unknown_roles += notes.unknown_roles;
            report.bad_ratings += notes.bad_ratings;
            if notes.bad_ratings > 0 {
                tracing::warn!(film = %doc.id, rating = ?film.rating, "rating cannot be stored in the index, loaded as unknown");
            }
            let id = doc.id.to_string();
            docs.push(bulk::encode(sink.index(), &id, &doc).map_err(|e| Error::Config(format!("cannot encode film {id}: {e}")))?);
        }
        let loaded = sink.load(&docs, shutdown).await?;
        report.films += batch.films.len();
        report.stored += loaded.stored;
        report.dead_lettered += loaded.dead_lettered;
        if let Some((stream, mark)) = batch.completes {
            let target = horizon.cap(mark);
            if checkpoint.state().watermark(stream).is_none_or(|current| target > current) {
                checkpoint.commit(stream, target)?;
            }
        }
        if shutdown.is_triggered() {
            report.interrupted = true;
            break;
        }
    }
    Ok(report)
}
