//! The polling source: finds changes by their timestamps, deletes through the delete log.
//!
//! Each cycle reads, in this order:
//! 1. the full load, while one is under way: every record in key order through one streamed query;
//! 2. a change stream per table of the document (the root, each related and each link table),
//!    each in keyset order on `(timestamp, key)` from its watermark; a changed related row fans
//!    out to every record it is in. Watermarks stop at the commit horizon (see [`Horizon`]);
//! 3. the delete log, when its triggers are installed (`pg2es delete-capture`): the records named by
//!    transactions that ended since the last cycle. The saved position is trusted only while the
//!    log is complete and this instance's row in `pg2es.consumers` is there; otherwise the log is
//!    lost (a WARN that says what is missing) and, once it is back, every record is loaded again.
//!
//! Every change is the record as read now: a record that is gone is a [`Change::Delete`]. So the same
//! record reached twice (through a stream and the log) converges to its latest state, whatever the
//! order the rows changed in.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::change::{ChangeBatch, ChangeSource, CyclePlan, ReadReport, Receipt};
use super::delete_log::{self, Continuity};
use super::reading::{self, Versioning};
use super::SourceSettings;
use super::{DocumentSpec, Horizon, PgSource, PgTls, RecentlyLoaded};
use crate::checkpoint::{PositionDelta, State, Stream, Watermark};
use crate::error::{Error, Result};
use crate::position::Key;
use crate::progress::Progress;
use crate::settings::{ETL_MAX_TX_SEC, PG2ES_SOURCE};
use crate::shutdown::Shutdown;

pub struct PollingSource {
    settings: SourceSettings,
    spec: DocumentSpec,
    tls: PgTls,
    pg: Option<PgSource>,
    /// Read by `prepare`, for the whole cycle.
    horizon: Option<Horizon>,
    /// The delete log's window ends here this cycle (`None`: no log installed).
    log_until: Option<u64>,
    /// The columns of the log read this cycle.
    log_shape: delete_log::LogShape,
    /// The write capture is complete and its log read this cycle: the streams are not read.
    writes_logged: bool,
    /// Kept across cycles, not across restarts: see `recent.rs`.
    recent: Mutex<RecentlyLoaded>,
    notices: LogNotices,
    /// The checks made once per run (replication slots left behind, the streams' indexes) are done.
    started: bool,
}

impl PollingSource {
    /// Checks the TLS settings; connects in `prepare`.
    pub fn new(settings: &SourceSettings, spec: DocumentSpec) -> Result<PollingSource> {
        Ok(PollingSource {
            settings: settings.clone(),
            spec,
            tls: PgTls::new(settings)?,
            pg: None,
            horizon: None,
            log_until: None,
            log_shape: delete_log::LogShape::Keyed,
            writes_logged: false,
            recent: Mutex::new(RecentlyLoaded::default()),
            notices: LogNotices::default(),
            started: false,
        })
    }

    /// The connection of this cycle (`prepare` made it).
    fn pg(&self) -> Result<&PgSource> {
        self.pg.as_ref().ok_or_else(|| crate::Error::SourceSetup("the polling source was read before it was prepared".into()))
    }

    async fn connect(&mut self) -> Result<&PgSource> {
        if let Some(pg) = self.pg.as_ref().filter(|pg| !pg.is_closed()) {
            if pg.columns_moved(&self.settings.schema).await? {
                self.pg = None;
            }
        }
        if self.pg.as_ref().is_none_or(PgSource::is_closed) {
            let c = &self.settings;
            let pg = PgSource::connect(&c.pg, &self.tls, &c.schema, &self.spec).await?;
            tracing::info!(postgres_version = %pg.version(), schema = %c.schema, document = %self.spec.name, change_columns = %super::describe(pg.document()), "connected to postgres");
            self.pg = Some(pg);
        }
        self.pg()
    }

    /// Stream heads for a full load: changes after them are read once the load is done.
    async fn heads(pg: &PgSource, horizon: &Horizon) -> Result<Vec<(Stream, Watermark)>> {
        let mut marks = Vec::new();
        for stream in pg.document().streams.iter().filter(|s| s.timestamp.is_some()) {
            if let Some(head) = pg.head(&stream.table).await? {
                marks.push((stream.table.clone(), horizon.cap(head, &stream.kinds)));
            }
        }
        Ok(marks)
    }

    /// The change streams from their watermarks. False when stopped early.
    async fn read_streams(&self, state: &State, tx: &mpsc::Sender<ChangeBatch>, shutdown: &Shutdown, report: &mut ReadReport) -> Result<bool> {
        let pg = self.pg()?;
        let horizon = self.horizon.ok_or_else(|| crate::Error::SourceSetup("no horizon: the source was not prepared".into()))?;
        let batch_size = self.settings.batch_size;
        let loaded = self.recent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for st in &pg.document().streams {
            let stream = st.table.as_str();
            let mut cursor = state.watermark(stream);
            // What the stream's watermark is once this cycle's pages are saved.
            let mut saved = cursor.clone();
            loop {
                if shutdown.is_triggered() {
                    return Ok(false);
                }
                let Some(page) = pg.next_page(stream, cursor.as_ref(), batch_size, &loaded).await? else { break };
                *report.rows.entry(stream.to_string()).or_insert(0) += page.rows;
                report.already_loaded += page.already_loaded;
                // Rows after the horizon are read again next cycle: the watermark stops before them.
                let target = horizon.cap(page.last.clone(), &st.kinds);
                let mut completes = Vec::new();
                if saved.as_ref().is_none_or(|s| target > *s) {
                    completes.push(PositionDelta::Stream { stream: stream.to_string(), to: target.clone() });
                    saved = Some(target);
                }
                let committed = page.fresh.iter().map(|r| r.ts).min();
                let receipt = Receipt { rows: vec![(stream.to_string(), page.fresh)] };
                if !reading::send_records(pg, tx, &page.keys, batch_size, Versioning::AtRead, completes, receipt, committed).await? {
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
        let schema = &self.settings.schema;
        let mut after: Option<String> = None;
        loop {
            if shutdown.is_triggered() {
                return Ok(false);
            }
            let document = self.spec.log_document(self.log_shape);
            let page = delete_log::keys_between(pg.client(), schema, &document, from, until, after.as_deref(), self.settings.batch_size).await?;
            report.logged += page.keys.len();
            let last_page = page.keys.len() < self.settings.batch_size;
            let mut completes = Vec::new();
            if last_page {
                // Nothing logged in the window: the position stays, and the next window is larger.
                if report.logged == 0 && !page.reload {
                    return Ok(true);
                }
                completes.push(PositionDelta::DeleteLog { done: until });
                if page.reload {
                    tracing::warn!(schema = %schema, "a source table was truncated: every record is loaded again, and documents of records that are gone are removed after");
                    completes.push(PositionDelta::BeginFullLoad { heads: Vec::new() });
                }
            }
            let doc = pg.document();
            let keys: Vec<Key> = page.keys.iter().filter_map(|text| logged_key(doc, text)).collect();
            if !reading::send_records(pg, tx, &keys, self.settings.batch_size, Versioning::AtRead, completes, Receipt::default(), None).await? {
                return Ok(false);
            }
            if last_page {
                return Ok(true);
            }
            after = page.keys.last().cloned();
        }
    }
}

/// What was said about the delete capture, so that it is said once (or once a minute while the
/// capture stays incomplete).
#[derive(Debug, Default)]
struct LogNotices {
    /// When an incomplete capture was last looked at (and warned about, if it had been in use).
    lost_checked: Option<Instant>,
    deferred_said: bool,
    partial_writes_said: bool,
    legacy_said: bool,
}

const LOST_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Where this cycle's window of the delete log ends (`None`: the log is not read this cycle), and
/// what to save before reading: the log adopted, the log lost, or a reload where deletes were not
/// recorded. The rule: a saved position is used only while the log has recorded every delete
/// since it, which the consumer's row in `pg2es.consumers` vouches for (`install` drops it when
/// the log or a trigger was missing).
async fn plan_delete_log(
    pg: &PgSource,
    schema: &str,
    first: bool,
    consumer: &str,
    state: &State,
    before: &mut Vec<PositionDelta>,
    notices: &mut LogNotices,
) -> Result<Option<LogWindow>> {
    let client = pg.client();
    let capture = delete_log::status(client, &crate::catalog::triggers::capture(schema, std::slice::from_ref(&**pg.document()))).await?.with_legacy_for(first);
    if capture.legacy_in_use && !notices.legacy_said {
        notices.legacy_said = true;
        tracing::warn!(
            schema,
            fix = "pg2es delete-capture install",
            "the delete capture of a release before definitions is installed: it is read for this document until `pg2es delete-capture install` replaces it with the generated triggers (in one transaction, keeping the positions: nothing is loaded again); the other documents have no delete capture until then"
        );
    }
    if !capture.complete() {
        let lost_now = state.delete_log.is_some();
        if lost_now {
            before.push(PositionDelta::DeleteLogLost);
        }
        if notices.lost_checked.is_some_and(|at| at.elapsed() < LOST_WARNING_EVERY) {
            return Ok(None);
        }
        notices.lost_checked = Some(Instant::now());
        // After a restart the state no longer has the position: the consumer's row says the log
        // was read. Some triggers without the others are never meant either.
        let broken = lost_now || !capture.nothing_installed() || delete_log::is_consumer(client, schema, consumer).await?;
        if broken {
            tracing::warn!(
                schema,
                missing = %capture.describe_missing(),
                fix = "pg2es delete-capture install",
                "the delete capture is incomplete (a migration that recreates a table drops its triggers): deletes are not recorded, so documents whose rows were deleted or unlinked meanwhile stay in the index; once it is installed again every record is loaded again and documents of records that are gone are removed (removed on purpose: nothing to do, documents of deleted roots are then removed by reconciliation only)"
            );
        }
        return Ok(None);
    }
    notices.lost_checked = None;
    let mut position = state.delete_log;
    let mut said = false;
    if let Some(done) = position {
        let why = match delete_log::advance(client, schema, consumer, done).await? {
            Continuity::Kept => None,
            Continuity::Dropped => Some("this instance's position in pg2es.consumers is gone: the delete capture was installed again after its log or a trigger had been missing, or removed"),
            Continuity::Expired => Some("this instance was not seen for over 7 days: other instances may have trimmed deletes it had not read"),
        };
        if let Some(why) = why {
            tracing::warn!(schema, consumer, reason = why, "the delete log cannot be trusted from the saved position: deletes are read from it from now on, every record is loaded again and documents of records that are gone are removed");
            before.push(PositionDelta::DeleteLogLost);
            position = None;
            said = true;
        }
    }
    let until = delete_log::boundary(client).await?;
    // Some write triggers without the others (a table recreated, one dropped) is never meant.
    let partial = !capture.writes_missing.is_empty() && capture.writes_missing.len() < capture.writes_wanted;
    if partial && !notices.partial_writes_said {
        let missing: Vec<String> = capture.writes_missing.iter().map(|(table, trigger)| format!("{table}: {trigger}")).collect();
        tracing::warn!(schema, missing = %missing.join("; "), fix = "pg2es delete-capture install --writes", "the write capture is incomplete: changes are found by the tables' timestamps, so writes that leave them alone are missed");
    }
    notices.partial_writes_said = partial;
    let window = LogWindow { until, writes: capture.writes_complete(), shape: capture.shape };
    if position.is_some() {
        return Ok(Some(window));
    }
    let reload = match (state.needs_full_load(), state.snapshot_in_progress()) {
        // The first load reads every record after this point.
        (true, _) => false,
        // Records this load already has may have lost links before the log started: load again once it is done.
        (false, Some(load)) if load.after.is_some() => {
            if !notices.deferred_said {
                notices.deferred_said = true;
                tracing::info!(schema, "delete capture found during a full load: its log is read once the load is done, and every record is loaded again then (deletes of records already loaded were not recorded)");
            }
            return Ok(None);
        }
        (false, Some(_)) => false,
        (false, None) => true,
    };
    // The position is registered now, before the state has it: a row in the log can only be
    // trimmed once every instance has read it.
    delete_log::acknowledge(client, schema, consumer, until).await?;
    before.push(PositionDelta::DeleteLog { done: until });
    if reload {
        before.push(PositionDelta::BeginFullLoad { heads: Vec::new() });
        if !said {
            tracing::warn!(schema, "delete capture found on an index loaded without it (installed for the first time, or again after it was missing): deletes made before it were not recorded, so every record is loaded again, then documents of records that are gone are removed");
        }
    } else if !state.needs_full_load() {
        tracing::info!(schema, "delete capture found: deletes are read from the delete log from now on");
    }
    Ok(Some(window))
}

/// This cycle's window of the log: it ends at `until`; `writes`: the write capture is complete
/// too, so every change is in it and the timestamp streams are not read.
#[derive(Debug, Clone, Copy)]
struct LogWindow {
    until: u64,
    writes: bool,
    /// The columns the log has.
    shape: delete_log::LogShape,
}

/// A key the log names, as a key of the document; `None` (said) for text that is not one: a row
/// written for this document when its key had another type.
fn logged_key(doc: &crate::catalog::Document, text: &str) -> Option<Key> {
    let key = doc.key_of(text);
    if key.is_none() {
        tracing::warn!(document = %doc.name, key = %text, "the delete log names a key that is not one of this document's (its key column had another type when it was logged): skipped");
    }
    key
}

/// The slot name replication mode uses for this index by default (`PG_REPLICATION_SLOT`).
fn default_slot_name(index: &str) -> String {
    crate::names::replication_name(&format!("pg2es_{index}"))
}

/// A logical slot that a replication run of pg2es left in this database holds WAL for nobody
/// while this instance polls, until the disk fills: said at the start of a run, never dropped here.
async fn warn_of_replication_slots(pg: &PgSource, index: &str) -> Result<()> {
    let context = "read the replication slots";
    let rows = pg
        .client()
        .query(
            "SELECT slot_name::text, active, pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_catalog.pg_replication_slots \
             WHERE database = current_database() AND slot_type = 'logical' \
               AND (slot_name = $1 OR (plugin = 'pgoutput' AND NOT active AND slot_name LIKE 'pg2es\\_%'))",
            &[&default_slot_name(index)],
        )
        .await
        .map_err(Error::postgres(context))?;
    for row in &rows {
        let slot: String = row.try_get(0).map_err(Error::postgres(context))?;
        let active: bool = row.try_get(1).map_err(Error::postgres(context))?;
        let retained: Option<i64> = row.try_get(2).map_err(Error::postgres(context))?;
        tracing::warn!(
            slot = %slot,
            active,
            retained_bytes = retained.unwrap_or(0),
            fix = %format!("SELECT pg_drop_replication_slot('{}')", slot.replace('\'', "''")),
            "a logical replication slot of pg2es exists in this database while this instance polls: Postgres keeps WAL for it until it is read or dropped; if no pg2es uses replication on this database, drop it"
        );
    }
    Ok(())
}

fn log_horizon(h: &Horizon) {
    if !h.exact {
        tracing::warn!(horizon = %h.at, "cannot see other sessions' open transactions: watermarks stay {ETL_MAX_TX_SEC} behind; grant pg_read_all_stats to read less again");
    }
    if let Some((pid, since)) = h.held_by {
        let age = chrono::Utc::now().signed_duration_since(since);
        if age > chrono::Duration::seconds(60) {
            tracing::warn!(pid, since = %since, age_sec = age.num_seconds(), "an open transaction holds watermarks back; changes after its start are re-read every cycle until it ends");
        }
    }
}

/// Polling finds changes of tables without a timestamp column only in the write capture's log:
/// without it, what `run` (and `check`) refuse.
pub fn untimed_without_capture(schema: &str, untimed: &[&str]) -> Error {
    let tables: Vec<String> = untimed.iter().map(|t| format!("{schema}.{t}")).collect();
    Error::SourceSetup(format!(
        "{} {} no timestamp column, so polling finds its changes only in the write capture's log, which is not complete on {schema}: \
         install it (pg2es delete-capture install --writes), or read the replication stream ({PG2ES_SOURCE}=replication), or give the table a \
         change column and name it with `timestamp = \"...\"`",
        tables.join(", "),
        if tables.len() == 1 { "has" } else { "have" }
    ))
}

impl ChangeSource for PollingSource {
    async fn prepare(&mut self, state: &State) -> Result<CyclePlan> {
        let (schema, consumer, policy) = (self.settings.schema.clone(), self.settings.consumer.clone(), self.settings.horizon);
        self.connect().await?;
        let Some(pg) = self.pg.as_ref() else { return Err(Error::SourceSetup("the polling source could not connect".into())) };
        let (identity, wal) = pg.identity(&schema).await?;
        // Before reading anything: whatever is not visible yet will be stamped after this point.
        let horizon = pg.horizon(&policy).await?;
        log_horizon(&horizon);
        if !self.started {
            warn_of_replication_slots(pg, &consumer).await?;
        }
        let mut before = Vec::new();
        if state.needs_full_load() {
            // Every stream starts at its newest row instead of re-indexing each record once per
            // related and link row; read before the records, so changes during the load follow it.
            before.push(PositionDelta::BeginFullLoad { heads: Self::heads(pg, &horizon).await? });
            tracing::info!("full load: every record is read in key order; each table's changes are read from its newest row once it is done");
        }
        let window = plan_delete_log(pg, &schema, self.spec.first, &consumer, state, &mut before, &mut self.notices).await?;
        let log_until = window.map(|w| w.until);
        self.log_shape = window.map_or(delete_log::LogShape::Keyed, |w| w.shape);
        let writes_logged = window.is_some_and(|w| w.writes);
        let untimed = pg.document().untimed();
        if !writes_logged && !untimed.is_empty() {
            return Err(untimed_without_capture(&schema, &untimed));
        }
        let notices_partial = self.notices.partial_writes_said;
        if writes_logged != self.writes_logged {
            if writes_logged {
                tracing::info!(schema = %schema, "write capture found: every change is read from the log, the tables' timestamps are not used");
            } else if window.is_some() && !notices_partial {
                tracing::warn!(schema = %schema, "the write capture is gone: changes are found by the tables' timestamps again, so writes that leave them alone are missed (pg2es delete-capture install --writes)");
            }
            self.writes_logged = writes_logged;
        }
        if !writes_logged && !self.started {
            // The timestamp streams are read: each should have its index (not needed with the
            // write capture, which reads the log instead).
            for create in super::missing_indexes(pg.client(), pg.document()).await? {
                tracing::warn!(create = %create, "no index serves a change stream's reads, so every cycle scans the table: create it (or install the write capture, which reads no timestamps)");
            }
        }
        self.started = true;
        self.horizon = Some(horizon);
        self.log_until = log_until;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for (stream, saved) in &state.watermarks {
            recent.forget_through(stream, saved);
        }
        drop(recent);
        // A reload begun here (the delete log found on a loaded index) is a full load too, and
        // reconciliation follows it.
        let reload = before.iter().any(|d| matches!(d, PositionDelta::BeginFullLoad { .. }));
        let full_load = state.needs_full_load() || state.snapshot_in_progress().is_some() || reload;
        Ok(CyclePlan { identity: Some(identity), wal: Some(wal), before, full_load, columns: Some(pg.columns().clone()) })
    }

    async fn read(&self, state: &State, tx: mpsc::Sender<ChangeBatch>, shutdown: &Shutdown, progress: Option<&Progress>) -> Result<ReadReport> {
        let mut report = ReadReport::default();
        if let Some(snapshot) = state.snapshot_in_progress() {
            // Versioned with the WAL position before the scan: every record read after it has a higher one.
            let pg = self.pg()?;
            let version = Some(pg.wal_position().await?);
            let (records, finished) = reading::full_load(pg, snapshot, self.settings.batch_size, version, &tx, shutdown, progress).await?;
            report.rows.insert(pg.document().root.clone(), records);
            if !finished {
                return Ok(report);
            }
        }
        // With the write capture the log has every change: the streams would only send records twice.
        if self.writes_logged || self.read_streams(state, &tx, shutdown, &mut report).await? {
            self.read_delete_log(state, &tx, shutdown, &mut report).await?;
        }
        Ok(report)
    }

    fn document(&self) -> Option<std::sync::Arc<crate::catalog::Document>> {
        self.pg.as_ref().map(|pg| pg.document().clone())
    }

    fn rewound(&self) {
        *self.recent.lock().unwrap_or_else(|p| p.into_inner()) = RecentlyLoaded::default();
    }

    fn acknowledge(&self, receipt: Receipt) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for (stream, rows) in receipt.rows {
            recent.remember(&stream, &rows);
        }
    }

    async fn existing(&self, ids: &[Key]) -> Result<Vec<Key>> {
        self.pg()?.existing(ids).await
    }
}
