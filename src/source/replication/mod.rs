//! The replication source (`PG2ES_SOURCE=replication`): every committed insert, update, delete
//! and truncate of the document's tables, in commit order, from a `pgoutput` logical replication slot.
//!
//! The stream is read through SQL on the source's own connection: each cycle takes its window of
//! the changes committed before the WAL position read at its start, from the run's one slot
//! ([`ReplicationStream`]: one peek, `pg_logical_slot_peek_binary_changes`, for every document),
//! and the slot is advanced (`pg_replication_slot_advance`) to the lowest position the documents
//! saved once the index has their changes. A change names records to read again, as polling does: a root
//! row, a link row (its root, before and after), a changed related row (every record linked to
//! it). So a change read twice, or one already in the full load's snapshot, is harmless, and the
//! first full load needs no exported snapshot: the slot is created before it starts, and every
//! change after that point is streamed. Every write carries the stream position the record was read
//! after as its version (`external_gte`): a late, older state never overwrites a newer one.

mod resync;
mod setup;
mod stream;
mod window;

pub use setup::{replica_identities, role_may_replicate};
pub use stream::ReplicationStream;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::change::{ChangeBatch, ChangeSource, CyclePlan, ReadReport, Receipt};
use super::pgoutput::Lsn;
use super::reading::{self, Versioning};
use super::{delete_log, DocumentSpec, PgSource, PgTls, ReplicationSettings, SourceSettings};
use crate::catalog::Document;
use crate::checkpoint::{PositionDelta, State, StreamSetup};
use crate::error::{Error, Result};
use crate::position::Key;
use crate::progress::Progress;
use crate::shutdown::Shutdown;
use resync::{Decision, Observed};
use setup::{check_identities, check_role, ensure_publication, report_slot};

/// How often the publication, the tables' identities and columns are checked against the state.
const SETUP_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the slot's retained WAL and lag are logged.
const SLOT_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

pub struct ReplicationSource {
    /// What every source reads with (connection, schema, batch size).
    base: SourceSettings,
    spec: DocumentSpec,
    settings: ReplicationSettings,
    /// The run's slot, shared by its documents.
    stream: Arc<ReplicationStream>,
    tls: PgTls,
    pg: Option<PgSource>,
    /// wal_level and the role's REPLICATION checked on this connection.
    checked: bool,
    /// The setup last checked, and when.
    setup: Option<(StreamSetup, Instant)>,
    /// A slot moved past the saved position by another consumer was taken over once in this
    /// process: a second time, two consumers are reading it at once.
    took_over_slot: bool,
    /// This cycle's window ends here: changes committed before it are read.
    until: Option<Lsn>,
    /// This cycle reads the slot its position was read through before the run's slot, by itself.
    previous: Option<String>,
    /// When the stream was last read to its end: the lag in the log is the time since.
    caught_up_at: std::sync::Mutex<Instant>,
    reported_at: Option<Instant>,
}

impl ReplicationSource {
    pub fn new(base: &SourceSettings, settings: &ReplicationSettings, spec: DocumentSpec, stream: Arc<ReplicationStream>) -> Result<ReplicationSource> {
        Ok(ReplicationSource {
            base: base.clone(),
            spec,
            settings: settings.clone(),
            stream,
            tls: PgTls::new(base)?,
            pg: None,
            checked: false,
            setup: None,
            took_over_slot: false,
            until: None,
            previous: None,
            caught_up_at: std::sync::Mutex::new(Instant::now()),
            reported_at: None,
        })
    }

    fn pg(&self) -> Result<&PgSource> {
        self.pg.as_ref().ok_or_else(|| Error::SourceSetup("the replication source was read before it was prepared".into()))
    }

    /// What the stream is read through, checked now: replica identities, the columns pg2es
    /// reads, the publication (created when missing, tables added when pg2es may). Whatever
    /// cannot be fixed here is an error that names the fix.
    async fn check_setup(&self, pg: &PgSource, schema: &str, recorded: Option<&StreamSetup>) -> Result<StreamSetup> {
        check_identities(pg, schema).await?;
        self.spec.resolve(pg.client(), schema).await.map_err(|e| match e {
            Error::Definition(why) | Error::SourceSchema(why) => {
                let what = if why.contains("not found") { "renamed or dropped" } else { "changed" };
                Error::SourceSchema(format!(
                    "{why} ({what} by a migration?): pg2es reads it; restore it, or change the definition to match, then start pg2es again (changes made meanwhile are loaded again)"
                ))
            }
            other => other,
        })?;
        let objects = ensure_publication(pg, schema, &self.settings.publication, &pg.document().tables(), recorded.map(|r| &r.objects)).await?;
        Ok(StreamSetup { slot: self.settings.slot.clone(), objects })
    }

    /// Takes this cycle's window of the stream and sends the records it names.
    async fn read_stream(&self, state: &State, tx: &mpsc::Sender<ChangeBatch>, report: &mut ReadReport) -> Result<()> {
        let (pg, until) = (self.pg()?, self.until.ok_or_else(|| Error::SourceSetup("no window: the source was not prepared".into()))?);
        let Some(from) = state.replication else { return Ok(()) };
        if from >= until {
            // Nothing committed in the window (a fresh position was just taken at its end).
            return Ok(());
        }
        let peek = match &self.previous {
            // A slot of this document alone, read only until it reaches the run's slot.
            Some(slot) => window::peek(pg, slot, &self.settings.publication, until).await?.map(Arc::new),
            None => self.stream.peek(pg, until).await?,
        };
        let window = match peek.and_then(|peek| window::window_of(&peek, pg.document(), &self.base.schema, from, until)) {
            Ok(window) => window,
            Err(lost) => {
                // Changes in the stream that cannot be followed: if Postgres is set up right now,
                // take a fresh position at the window's end (the records are all loaded again after
                // it); otherwise the check names what to fix, and the next start comes back here.
                let setup = self.check_setup(pg, &self.base.schema, state.stream_setup.as_ref()).await?;
                tracing::warn!(document = %self.spec.name, slot = %self.settings.slot, reason = %lost, resyncs = state.resyncs + 1, "the replication stream cannot be followed from the saved position: taking a fresh one; every record is loaded again, then documents of records that are gone are removed");
                let completes = vec![PositionDelta::Resync { lsn: until, setup }];
                // A closed channel: the writer stopped, and says why.
                let _ = tx.send(ChangeBatch { changes: Vec::new(), completes, version: Some(until), receipt: Receipt::default(), committed: None }).await;
                return Ok(());
            }
        };
        report.logged += window.roots.len();
        let mut roots = window.roots;
        for (stream, ids) in &window.fanned {
            let ids: Vec<Key> = ids.iter().cloned().collect();
            roots.extend(pg.roots_of(stream, &ids).await?);
        }
        if window.exhausted {
            *self.caught_up_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        let position = if window.exhausted { until } else { window.last_commit_end.unwrap_or(from) };
        // Cut short, more is waiting; but a window with nothing past this document's position
        // waits for the slot to move (the slowest document), not in a loop.
        report.more = !window.exhausted && position > from;
        if position <= from && roots.is_empty() && !window.reload {
            return Ok(());
        }
        let mut completes = vec![PositionDelta::Replication { lsn: position.max(from) }];
        if window.reload {
            tracing::warn!(schema = %self.base.schema, document = %self.spec.name, "a source table was truncated: every record is loaded again, and documents of records that are gone are removed after");
            completes.push(PositionDelta::BeginFullLoad { heads: Vec::new() });
        }
        let ids: Vec<Key> = roots.into_iter().collect();
        // Read after `position`: every state read now is at least as new as the stream there.
        let committed = window.oldest_commit.and_then(crate::source::pgoutput::commit_time);
        reading::send_records(pg, tx, &ids, self.base.batch_size, Versioning::Fixed(position.max(from)), completes, Receipt::default(), committed).await?;
        Ok(())
    }
}

impl ChangeSource for ReplicationSource {
    async fn prepare(&mut self, state: &State) -> Result<CyclePlan> {
        let check_due = self.setup.as_ref().is_none_or(|(_, at)| at.elapsed() >= SETUP_CHECK_EVERY);
        if let Some(pg) = self.pg.as_ref().filter(|pg| check_due && !pg.is_closed()) {
            if pg.columns_moved(&self.base.schema).await? {
                self.pg = None;
            }
        }
        if self.pg.as_ref().is_none_or(PgSource::is_closed) {
            let c = &self.base;
            let pg = PgSource::connect(&c.pg, &self.tls, &c.schema, &self.spec).await?;
            tracing::info!(document = %self.spec.name, postgres_version = %pg.version(), schema = %c.schema, slot = %self.settings.slot, publication = %self.settings.publication, "connected to postgres for logical replication");
            self.pg = Some(pg);
            self.checked = false;
            self.setup = None;
        }
        let pg = self.pg.as_ref().ok_or_else(|| Error::SourceSetup("no connection".into()))?;
        let schema = self.base.schema.clone();
        let (identity, wal) = pg.identity(&schema).await?;
        if !self.checked {
            check_role(pg).await?;
        }
        // A migration or an operator may change any of it at any time. Checked every few seconds,
        // not every cycle: whatever a difference found later let through is loaded again by the
        // fresh position it leads to (a change the stream cannot name is found as it is read).
        let cached = self.setup.as_ref().filter(|(_, at)| at.elapsed() < SETUP_CHECK_EVERY).map(|(setup, _)| setup.clone());
        let setup = match cached.clone() {
            Some(setup) => setup,
            None => {
                let setup = self.check_setup(pg, &schema, state.stream_setup.as_ref()).await?;
                self.setup = Some((setup.clone(), Instant::now()));
                setup
            }
        };
        let slot = self.stream.ensure(pg).await?;
        // The slot the saved position was read through, when it is not the run's: recorded with
        // it, or (a state from before the setup was recorded) this document's slot of old.
        let read_through = state.stream_setup.as_ref().map_or(self.settings.previous_slot.as_str(), |s| s.slot.as_str()).to_string();
        let previous = match state.replication {
            Some(_) if read_through != self.settings.slot => Some((read_through.as_str(), setup::find_slot(pg, &read_through).await?)),
            _ => None,
        };
        let until = pg.wal_position().await?;
        let decision = resync::decide(&Observed {
            saved: state.replication,
            recorded: state.stream_setup.as_ref(),
            setup: &setup,
            slot,
            previous,
            took_over: self.took_over_slot,
        });
        let mut before = Vec::new();
        let mut reload = false;
        let mut resync = None;
        self.previous = None;
        match &decision {
            Decision::Start { at } if state.snapshot_in_progress().is_some() => {
                // Polling's full load was cut short (the source changed meanwhile): it starts
                // again from the first record, read after this position.
                tracing::info!(document = %self.spec.name, "a full load of polling was under way: it starts again, read through the replication stream");
                before.push(PositionDelta::Resync { lsn: *at, setup: setup.clone() });
            }
            Decision::Start { at } => {
                before.push(PositionDelta::Replication { lsn: *at });
                before.push(PositionDelta::StreamSetup(setup.clone()));
                // A state that polling wrote: changes since its last cycle are not in the slot.
                reload = !state.needs_full_load();
            }
            Decision::Follow { record_setup } => {
                if *record_setup {
                    // Written before the setup was recorded: this is the setup from now on.
                    before.push(PositionDelta::StreamSetup(setup.clone()));
                }
            }
            Decision::Previous { slot, advance } => {
                if let Some(to) = advance {
                    setup::advance_slot(pg, slot, *to).await?;
                }
                tracing::info!(document = %self.spec.name, previous_slot = %slot, slot = %self.settings.slot, "reading the slot this state was read through until it reaches the run's slot");
                self.previous = Some(slot.clone());
            }
            Decision::Switch { .. } => {
                tracing::info!(document = %self.spec.name, previous_slot = %read_through, slot = %self.settings.slot, "the state's position is in the run's slot: reading it from now on");
                before.push(PositionDelta::StreamSetup(setup.clone()));
            }
            Decision::Resync(reason) => resync = Some(reason.clone()),
            Decision::TakenOver(reason) => {
                self.took_over_slot = true;
                resync = Some(reason.clone());
            }
            Decision::Stop(why) => return Err(Error::SourceSetup(why.clone())),
        }
        if let Some(old) = resync::left_behind(&decision, previous) {
            // Every change the state needs is in the run's slot (or none can be had from the old
            // one): it only holds WAL back now. Another session may hold it a moment.
            match setup::drop_slot(pg, &old).await {
                Ok(()) => {
                    tracing::info!(document = %self.spec.name, dropped_slot = %old, slot = %self.settings.slot, "dropped the replication slot this state was read through before")
                }
                Err(e) => {
                    tracing::warn!(document = %self.spec.name, old_slot = %old, error = %e, "could not drop the replication slot this state was read through before; it holds WAL back: SELECT pg_drop_replication_slot('{old}')")
                }
            }
        }
        // The run's slot moves to the lowest saved position of its documents.
        self.stream.saved(pg, &self.spec.name, state.replication.unwrap_or(slot.confirmed())).await?;
        if let Some(reason) = &resync {
            // The fresh position is recorded with the setup as it is now.
            let setup = if cached.is_some() { self.check_setup(pg, &schema, state.stream_setup.as_ref()).await? } else { setup };
            self.setup = Some((setup.clone(), Instant::now()));
            tracing::warn!(document = %self.spec.name, slot = %self.settings.slot, reason = %reason, resyncs = state.resyncs + 1, "the replication stream cannot be followed from the saved position: taking a fresh one; every record is loaded again, then documents of records that are gone are removed");
            before.push(PositionDelta::Resync { lsn: until, setup });
        } else if state.needs_full_load() || reload {
            before.push(PositionDelta::BeginFullLoad { heads: Vec::new() });
            tracing::info!(document = %self.spec.name, "full load: every record is read in key order; the replication stream is read from where the slot starts once it is done");
        }
        self.until = Some(until);
        self.checked = true;
        if self.reported_at.is_none_or(|t| t.elapsed() >= SLOT_REPORT_EVERY) {
            if self.reported_at.is_none()
                && delete_log::installed(pg.client(), &crate::catalog::triggers::capture(&schema, std::slice::from_ref(&**pg.document())))
                    .await
                    .unwrap_or(false)
            {
                tracing::warn!(schema = %schema, "the delete capture triggers are installed but replication mode does not read them (its stream carries deletes); their log is trimmed here; `pg2es delete-capture remove` drops them if no polling pg2es reads them");
            }
            // Replication reads no delete log: what no polling instance still needs goes. Only
            // housekeeping: a role without rights on schema pg2es replicates all the same.
            match delete_log::trim_for_replication(pg.client(), &schema, &self.base.consumer).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(schema = %schema, rows, "trimmed the delete capture's log"),
                Err(e) => tracing::warn!(error = %e, "could not trim the delete capture's log"),
            }
            self.reported_at = Some(Instant::now());
            let lag_sec = self.caught_up_at.lock().unwrap_or_else(|p| p.into_inner()).elapsed().as_secs();
            report_slot(pg, &self.settings, lag_sec).await?;
        }
        let full_load = state.needs_full_load() || reload || resync.is_some() || state.snapshot_in_progress().is_some();
        Ok(CyclePlan { identity: Some(identity), wal: Some(wal), before, full_load, columns: Some(pg.columns().clone()) })
    }

    async fn read(&self, state: &State, tx: mpsc::Sender<ChangeBatch>, shutdown: &Shutdown, progress: Option<&Progress>) -> Result<ReadReport> {
        let mut report = ReadReport::default();
        if let Some(snapshot) = state.snapshot_in_progress() {
            // Versioned with the stream's position at the load's start: every change after it
            // carries a higher version.
            let (records, finished) = reading::full_load(self.pg()?, snapshot, self.base.batch_size, state.replication, &tx, shutdown, progress).await?;
            report.rows.insert(self.pg()?.document().root.clone(), records);
            if !finished {
                return Ok(report);
            }
        }
        if !shutdown.is_triggered() {
            self.read_stream(state, &tx, &mut report).await?;
        }
        Ok(report)
    }

    fn document(&self) -> Option<std::sync::Arc<Document>> {
        self.pg.as_ref().map(|pg| pg.document().clone())
    }

    fn acknowledge(&self, _: Receipt) {}

    async fn finish(&self, state: &State) -> Result<()> {
        match (&self.pg, state.replication) {
            // Read through an older slot this pass: the run's slot is not this document's yet.
            (Some(pg), Some(saved)) if self.previous.is_none() => self.stream.saved(pg, &self.spec.name, saved).await,
            _ => Ok(()),
        }
    }

    async fn existing(&self, ids: &[Key]) -> Result<Vec<Key>> {
        self.pg()?.existing(ids).await
    }
}
