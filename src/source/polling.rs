//! The polling source: finds changes by their timestamps, deletes through the delete log.
//!
//! Each cycle reads, in this order:
//! 1. the full load, while one is under way: every film in id order through one streamed query;
//! 2. the five change streams (film_work, genre, person and the two link tables), each in keyset
//!    order on `(timestamp, id)` from its watermark; a changed genre or person fans out to every
//!    film linked to it. Watermarks stop at the commit horizon (see [`Horizon`]);
//! 3. the delete log, when its triggers are installed (`pg2es delete-capture`): the films named by
//!    transactions that ended since the last cycle.
//!
//! Every change is the film as read now: a film that is gone is a [`Change::Delete`]. So the same
//! film reached twice (through a stream and the log) converges to its latest state, whatever the
//! order the rows changed in.

use std::sync::Mutex;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::change::{ChangeBatch, ChangeSource, CyclePlan, ReadReport, Receipt};
use super::reading::{self, Versioning};
use super::{delete_log, Horizon, PgSource, PgTls, RecentlyLoaded};
use crate::checkpoint::{PositionDelta, State, Stream, Watermark};
use crate::config::Config;
use crate::error::Result;
use crate::progress::Progress;
use crate::shutdown::Shutdown;

pub struct PollingSource {
    config: Config,
    tls: PgTls,
    pg: Option<PgSource>,
    /// Read by `prepare`, for the whole cycle.
    horizon: Option<Horizon>,
    /// The delete log's window ends here this cycle (`None`: no log installed).
    log_until: Option<u64>,
    /// Kept across cycles, not across restarts: see `recent.rs`.
    recent: Mutex<RecentlyLoaded>,
}

impl PollingSource {
    /// Checks the TLS settings; connects in `prepare`.
    pub fn new(config: &Config) -> Result<PollingSource> {
        Ok(PollingSource {
            config: config.clone(),
            tls: PgTls::from_config(config)?,
            pg: None,
            horizon: None,
            log_until: None,
            recent: Mutex::new(RecentlyLoaded::default()),
        })
    }

    /// The connection of this cycle (`prepare` made it).
    fn pg(&self) -> Result<&PgSource> {
        self.pg.as_ref().ok_or_else(|| crate::Error::SourceSetup("the polling source was read before it was prepared".into()))
    }

    async fn connect(&mut self) -> Result<&PgSource> {
        if self.pg.as_ref().is_none_or(PgSource::is_closed) {
            let c = &self.config;
            let pg = PgSource::connect(&c.pg, &self.tls, &c.pg_schema, &c.timestamp_column).await?;
            tracing::info!(postgres_version = %pg.version(), schema = %c.pg_schema, change_columns = %pg.layout().describe(), "connected to postgres");
            self.pg = Some(pg);
        }
        self.pg()
    }

    /// Stream heads for a full load: changes after them are read once the load is done.
    async fn heads(pg: &PgSource, horizon: &Horizon) -> Result<Vec<(Stream, Watermark)>> {
        let mut marks = Vec::new();
        for stream in Stream::ALL {
            if let Some(head) = pg.head(stream).await? {
                marks.push((stream, horizon.cap(head)));
            }
        }
        Ok(marks)
    }

    /// The change streams from their watermarks. False when stopped early.
    async fn read_streams(&self, state: &State, tx: &mpsc::Sender<ChangeBatch>, shutdown: &Shutdown, report: &mut ReadReport) -> Result<bool> {
        let pg = self.pg()?;
        let horizon = self.horizon.ok_or_else(|| crate::Error::SourceSetup("no horizon: the source was not prepared".into()))?;
        let batch_size = self.config.batch_size;
        let loaded = self.recent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for stream in Stream::ALL {
            let mut cursor = state.watermark(stream);
            // What the stream's watermark is once this cycle's pages are saved.
            let mut saved = cursor;
            loop {
                if shutdown.is_triggered() {
                    return Ok(false);
                }
                let Some(page) = pg.next_page(stream, cursor, batch_size, &loaded).await? else { break };
                *report.rows.entry(stream).or_insert(0) += page.rows;
                report.already_loaded += page.already_loaded;
                // Rows after the horizon are read again next cycle: the watermark stops before them.
                let target = horizon.cap(page.last);
                let mut completes = Vec::new();
                if saved.is_none_or(|s| target > s) {
                    completes.push(PositionDelta::Stream { stream, to: target });
                    saved = Some(target);
                }
                let receipt = Receipt { rows: vec![(stream, page.fresh)] };
                if !reading::send_films(pg, tx, &page.film_ids, batch_size, Versioning::AtRead, completes, receipt).await? {
                    return Ok(false);
                }
                cursor = Some(page.last);
                if page.rows < batch_size {
                    break;
                }
            }
        }
        Ok(true)
    }

    /// The delete log's window, from the saved position to `log_until`.
    async fn read_delete_log(&self, state: &State, tx: &mpsc::Sender<ChangeBatch>, shutdown: &Shutdown, report: &mut ReadReport) -> Result<bool> {
        let (Some(from), Some(until)) = (state.delete_log, self.log_until) else { return Ok(true) };
        if until <= from {
            return Ok(true);
        }
        let pg = self.pg()?;
        let schema = &self.config.pg_schema;
        let mut after = None;
        loop {
            if shutdown.is_triggered() {
                return Ok(false);
            }
            let page = delete_log::films_between(pg.client(), schema, from, until, after, self.config.batch_size).await?;
            report.logged_films += page.film_ids.len();
            let last_page = page.film_ids.len() < self.config.batch_size;
            let mut completes = Vec::new();
            if last_page {
                // Nothing logged in the window: the position stays, and the next window is larger.
                if report.logged_films == 0 && !page.reload {
                    return Ok(true);
                }
                completes.push(PositionDelta::DeleteLog { done: until });
                if page.reload {
                    tracing::warn!(schema = %schema, "a source table was truncated: every film is loaded again, and documents of films that are gone are removed after");
                    completes.push(PositionDelta::BeginFullLoad { heads: Vec::new() });
                }
            }
            if !reading::send_films(pg, tx, &page.film_ids, self.config.batch_size, Versioning::AtRead, completes, Receipt::default()).await? {
                return Ok(false);
            }
            if last_page {
                return Ok(true);
            }
            after = page.film_ids.last().copied();
        }
    }
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

impl ChangeSource for PollingSource {
    async fn prepare(&mut self, state: &State) -> Result<CyclePlan> {
        let (schema, consumer, policy) = (self.config.pg_schema.clone(), self.config.es_index.clone(), self.config.commit_horizon);
        let pg = self.connect().await?;
        let identity = pg.identity(&schema).await?;
        // Before reading anything: whatever is not visible yet will be stamped after this point.
        let horizon = pg.horizon(&policy).await?;
        log_horizon(&horizon);
        let log_until = if delete_log::installed(pg.client(), &schema).await? {
            // The saved position is durable: the log below it can go.
            if let Some(done) = state.delete_log {
                delete_log::acknowledge(pg.client(), &schema, &consumer, done).await?;
            }
            Some(delete_log::boundary(pg.client()).await?)
        } else {
            None
        };
        let mut before = Vec::new();
        if state.needs_full_load() {
            // Every stream starts at its newest row instead of re-indexing each film once per
            // genre, person and link; read before the films, so changes during the load follow it.
            before.push(PositionDelta::BeginFullLoad { heads: Self::heads(pg, &horizon).await? });
            tracing::info!("full load: every film is read in id order; each table's changes are read from its newest row once it is done");
        }
        if let (None, Some(until)) = (state.delete_log, log_until) {
            // The log is read from now on; deletes before it were not logged for this state.
            before.push(PositionDelta::DeleteLog { done: until });
            if !state.needs_full_load() {
                tracing::info!(schema = %schema, "delete capture found: deletes are read from the delete log from now on");
            }
        }
        self.horizon = Some(horizon);
        self.log_until = log_until;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for (stream, saved) in &state.watermarks {
            recent.forget_through(*stream, *saved);
        }
        drop(recent);
        let full_load = state.needs_full_load() || state.snapshot_in_progress().is_some();
        Ok(CyclePlan { identity: Some(identity), before, full_load })
    }

    async fn read(&self, state: &State, tx: mpsc::Sender<ChangeBatch>, shutdown: &Shutdown, progress: Option<&Progress>) -> Result<ReadReport> {
        let mut report = ReadReport::default();
        if let Some(snapshot) = state.snapshot_in_progress() {
            // Versioned with the WAL position before the scan: every film read after it has a higher one.
            let pg = self.pg()?;
            let version = Some(pg.wal_position().await?);
            let (films, finished) = reading::full_load(pg, snapshot, self.config.batch_size, version, &tx, shutdown, progress).await?;
            report.rows.insert(Stream::FilmWork, films);
            if !finished {
                return Ok(report);
            }
        }
        if self.read_streams(state, &tx, shutdown, &mut report).await? {
            self.read_delete_log(state, &tx, shutdown, &mut report).await?;
        }
        Ok(report)
    }

    fn acknowledge(&self, receipt: Receipt) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for (stream, rows) in receipt.rows {
            recent.remember(stream, &rows);
        }
    }

    async fn existing(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        self.pg()?.existing(ids).await
    }
}
