//! The replication source (`PG2ES_SOURCE=replication`): every committed insert, update, delete
//! and truncate of the document's tables, in commit order, from a `pgoutput` logical replication slot.
//!
//! The stream is read through SQL on the source's own connection: each cycle peeks the slot's
//! changes committed before the WAL position read at its start (`pg_logical_slot_peek_binary_changes`),
//! and the next cycle advances the slot to the position saved once the index has them
//! (`pg_replication_slot_advance`). A change names records to read again, as polling does: a root
//! row, a link row (its root, before and after), a changed related row (every record linked to
//! it). So a change read twice, or one already in the full load's snapshot, is harmless, and the
//! first full load needs no exported snapshot: the slot is created before it starts, and every
//! change after that point is streamed. Every write carries the stream position the record was read
//! after as its version (`external_gte`): a late, older state never overwrites a newer one.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::position::{Key, KeyKind};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::change::{ChangeBatch, ChangeSource, CyclePlan, ReadReport, Receipt};
use super::pgoutput::{self, format_lsn, parse_lsn, Lsn, Message, Relations};
use super::reading::{self, Versioning};
use super::{delete_log, DocumentSpec, PgSource, PgTls, ReplicationSettings, SourceSettings};
use crate::catalog::Document;
use crate::checkpoint::{PositionDelta, State, StreamSetup};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::shutdown::Shutdown;

/// Changes (rows of the peek) decoded per cycle at most; whole transactions are always read, and
/// what is left is read by the next cycle right away.
const WINDOW_CHANGES: i32 = 20_000;

/// How often the publication, the tables' identities and columns are checked against the state.
const SETUP_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a slot creation that waits for open transactions says so.
const SLOT_WAIT_REPORT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the slot's retained WAL and lag are logged.
const SLOT_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

pub struct ReplicationSource {
    /// What every source reads with (connection, schema, batch size).
    base: SourceSettings,
    spec: DocumentSpec,
    settings: ReplicationSettings,
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
    /// When the stream was last read to its end: the lag in the log is the time since.
    caught_up_at: std::sync::Mutex<Instant>,
    reported_at: Option<Instant>,
}

impl ReplicationSource {
    pub fn new(base: &SourceSettings, settings: &ReplicationSettings, spec: DocumentSpec) -> Result<ReplicationSource> {
        Ok(ReplicationSource {
            base: base.clone(),
            spec,
            settings: settings.clone(),
            tls: PgTls::new(base)?,
            pg: None,
            checked: false,
            setup: None,
            took_over_slot: false,
            until: None,
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
    async fn check_setup(&self, pg: &PgSource, schema: &str) -> Result<StreamSetup> {
        check_identities(pg, schema).await?;
        self.spec.resolve(pg.client(), schema).await.map_err(|e| match e {
            Error::Definition(why) | Error::SourceSchema(why) => Error::SourceSchema(format!(
                "{why} (renamed or dropped by a migration?): pg2es reads it; restore it, then start pg2es again (changes made meanwhile are loaded again)"
            )),
            other => other,
        })?;
        let objects = ensure_publication(pg, schema, &self.settings.publication, &pg.document().tables()).await?;
        Ok(StreamSetup { slot: self.settings.slot.clone(), objects })
    }

    /// Reads the slot's changes in this cycle's window and sends the records they name.
    async fn read_stream(&self, state: &State, tx: &mpsc::Sender<ChangeBatch>, report: &mut ReadReport) -> Result<()> {
        let (pg, until) = (self.pg()?, self.until.ok_or_else(|| Error::SourceSetup("no window: the source was not prepared".into()))?);
        let Some(from) = state.replication else { return Ok(()) };
        if from >= until {
            // Nothing committed in the window (a fresh position was just taken at its end).
            return Ok(());
        }
        let window = match read_window(pg, &self.settings, &self.base.schema, until).await? {
            Ok(window) => window,
            Err(lost) => {
                // Changes in the stream that cannot be followed: if Postgres is set up right now,
                // take a fresh position at the window's end (the records are all loaded again after
                // it); otherwise the check names what to fix, and the next start comes back here.
                let setup = self.check_setup(pg, &self.base.schema).await?;
                tracing::warn!(slot = %self.settings.slot, reason = %lost, resyncs = state.resyncs + 1, "the replication stream cannot be followed from the saved position: taking a fresh one; every record is loaded again, then documents of records that are gone are removed");
                let completes = vec![PositionDelta::Resync { lsn: until, setup }];
                // A closed channel: the writer stopped, and says why.
                let _ = tx.send(ChangeBatch { changes: Vec::new(), completes, version: Some(until), receipt: Receipt::default() }).await;
                return Ok(());
            }
        };
        report.logged += window.roots.len();
        let mut roots = window.roots;
        for (stream, ids) in &window.fanned {
            let ids: Vec<Key> = ids.iter().cloned().collect();
            roots.extend(pg.roots_of(stream, &ids).await?);
        }
        report.more = !window.exhausted;
        if window.exhausted {
            *self.caught_up_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        let position = if window.exhausted { until } else { window.last_commit_end.unwrap_or(from) };
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
        reading::send_records(pg, tx, &ids, self.base.batch_size, Versioning::Fixed(position.max(from)), completes, Receipt::default()).await?;
        Ok(())
    }
}

/// Logs the slot's retained WAL and lag, with a warning past the threshold.
async fn report_slot(pg: &PgSource, settings: &ReplicationSettings, lag_sec: u64) -> Result<()> {
    let row = pg
        .client()
        .query_opt(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint, \
                    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&settings.slot],
        )
        .await
        .map_err(Error::postgres("read the replication slot"))?;
    let Some(row) = row else { return Ok(()) };
    let retained: Option<i64> = row.try_get(0).map_err(Error::postgres("read the replication slot"))?;
    let unconfirmed: Option<i64> = row.try_get(1).map_err(Error::postgres("read the replication slot"))?;
    let (retained, unconfirmed) = (retained.unwrap_or(0).max(0) as u64, unconfirmed.unwrap_or(0).max(0) as u64);
    if retained > settings.max_retained_bytes {
        tracing::warn!(slot = %settings.slot, retained_bytes = retained, unconfirmed_bytes = unconfirmed, lag_sec, limit_mb = settings.max_retained_bytes >> 20, "the replication slot retains more WAL than ETL_SLOT_MAX_RETAINED_MB: Postgres keeps it until pg2es has loaded the changes (an open transaction also holds it)");
    } else {
        tracing::info!(slot = %settings.slot, retained_bytes = retained, unconfirmed_bytes = unconfirmed, lag_sec, "replication slot");
    }
    Ok(())
}

/// What one window of the stream names.
#[derive(Debug, Default)]
struct Window {
    /// Root keys named by the changes themselves.
    roots: BTreeSet<Key>,
    /// Changed rows, by table, whose roots are found by the document's fan-out queries.
    fanned: std::collections::BTreeMap<String, BTreeSet<Key>>,
    /// A table was truncated.
    reload: bool,
    /// The end of the last transaction read.
    last_commit_end: Option<Lsn>,
    /// Every change before the window's end was read (fewer than `WINDOW_CHANGES`).
    exhausted: bool,
}

const PEEK_SQL: &str = "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
     'proto_version', '1', 'publication_names', $4)";

/// The window's changes, or (inner `Err`) why the stream cannot be followed through it: a change
/// whose records cannot be named (a column pg2es reads is gone from the table, a link table's
/// replica identity does not carry its root's key), or a publication that no longer exists.
async fn read_window(pg: &PgSource, settings: &ReplicationSettings, schema: &str, until: Lsn) -> Result<std::result::Result<Window, String>> {
    let until_text = format_lsn(until);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&settings.slot, &until_text, &WINDOW_CHANGES, &settings.publication];
    let lost = |e: &tokio_postgres::Error| {
        let db = e.as_db_error()?;
        (db.code() == &tokio_postgres::error::SqlState::UNDEFINED_OBJECT && db.message().contains("publication")).then(|| db.message().to_string())
    };
    let rows = match pg.client().query_raw(PEEK_SQL, params).await {
        Ok(rows) => rows,
        Err(e) => return lost(&e).map(Err).ok_or_else(|| Error::postgres("read the replication slot")(e)),
    };
    futures_util::pin_mut!(rows);
    let (mut window, mut relations, mut read) = (Window::default(), Relations::default(), 0);
    while let Some(row) = rows.next().await {
        let row = match row {
            Ok(row) => row,
            Err(e) => return lost(&e).map(Err).ok_or_else(|| Error::postgres("read the replication slot")(e)),
        };
        read += 1;
        let data: &[u8] = row.try_get(0).map_err(Error::postgres("read the replication slot"))?;
        let message = pgoutput::decode(data).map_err(|e| Error::SourceSetup(e.to_string()))?;
        if let Err(why) = apply(&mut window, &mut relations, pg.document(), schema, message) {
            return Ok(Err(why));
        }
    }
    window.exhausted = read < WINDOW_CHANGES as usize;
    Ok(Ok(window))
}

/// What one message adds to the window; `Err`: the records a change touched cannot be named.
fn apply(window: &mut Window, relations: &mut Relations, doc: &Document, schema: &str, message: Message) -> std::result::Result<(), String> {
    let ours = |relations: &Relations, id: u32| relations.get(id).is_some_and(|r| r.namespace == schema && doc.stream(&r.name).is_some());
    match message {
        Message::Relation(r) => relations.remember(r),
        Message::Commit { end_lsn, .. } => window.last_commit_end = Some(end_lsn),
        Message::Truncate { relations: ids, .. } => window.reload |= ids.iter().any(|id| ours(relations, *id)),
        Message::Insert { relation, new } if ours(relations, relation) => note(window, relations, doc, relation, &new, false)?,
        Message::Update { relation, new, old } if ours(relations, relation) => {
            identity_names_roots(relations, doc, relation)?;
            note(window, relations, doc, relation, &new, false)?;
            if let Some(old) = old {
                note(window, relations, doc, relation, &old, true)?;
            }
        }
        Message::Delete { relation, old } if ours(relations, relation) => {
            identity_names_roots(relations, doc, relation)?;
            note(window, relations, doc, relation, &old, true)?;
        }
        _ => {}
    }
    Ok(())
}

/// An update or delete of a table whose replica identity (as the stream announced it) does not
/// carry the columns that name the row's roots: the old row's roots are not in the stream.
fn identity_names_roots(relations: &Relations, doc: &Document, relation: u32) -> std::result::Result<(), String> {
    let Some(r) = relations.get(relation) else { return Ok(()) };
    let Some(stream) = doc.stream(&r.name) else { return Ok(()) };
    for column in &stream.direct {
        let carried = r.replica_identity == b'f' || r.columns.iter().any(|c| c.key && &c.name == column);
        if !carried {
            return Err(format!(
                "an update or delete of {}.{} was made while its replica identity did not carry {column}, so its {} record is unknown",
                r.namespace, r.name, doc.name
            ));
        }
    }
    Ok(())
}

/// The roots one row version of a table of the document names. `gone`: an old row (deleted, or
/// before an update).
fn note(window: &mut Window, relations: &Relations, doc: &Document, relation: u32, tuple: &pgoutput::Tuple, gone: bool) -> std::result::Result<(), String> {
    let key = |column: &str, kind: KeyKind| -> std::result::Result<Option<Key>, String> {
        let text = relations.text(relation, tuple, column).map_err(|e| format!("a change cannot be read: {e} (renamed or dropped by a migration?)"))?;
        text.map(|t| kind.parse(t).map(|p| Key::new(vec![p])).ok_or_else(|| format!("{column} {t:?} is not a key of {} (its type changed?)", doc.name)))
            .transpose()
    };
    let Some(stream) = relations.get(relation).and_then(|r| doc.stream(&r.name)) else { return Ok(()) };
    for column in &stream.direct {
        window.roots.extend(key(column, doc.key_kind)?);
    }
    // A changed related row changes the records that contain it. A deleted one's links are
    // deleted in the same transaction (the foreign keys cascade, or set null on the root), and
    // those changes name the records.
    if !gone && !stream.fan_out.is_empty() {
        if let Some(id) = key(&stream.key[0], stream.kinds[0])? {
            window.fanned.entry(stream.table.clone()).or_default().insert(id);
        }
    }
    Ok(())
}

impl ChangeSource for ReplicationSource {
    async fn prepare(&mut self, state: &State) -> Result<CyclePlan> {
        if self.pg.as_ref().is_none_or(PgSource::is_closed) {
            let c = &self.base;
            let pg = PgSource::connect(&c.pg, &self.tls, &c.schema, &self.spec).await?;
            tracing::info!(postgres_version = %pg.version(), schema = %c.schema, slot = %self.settings.slot, publication = %self.settings.publication, "connected to postgres for logical replication");
            self.pg = Some(pg);
            self.checked = false;
            self.setup = None;
        }
        let pg = self.pg.as_ref().ok_or_else(|| Error::SourceSetup("no connection".into()))?;
        let schema = self.base.schema.clone();
        let identity = pg.identity(&schema).await?;
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
                let setup = self.check_setup(pg, &schema).await?;
                self.setup = Some((setup.clone(), Instant::now()));
                setup
            }
        };
        let slot = ensure_slot(pg, &self.settings.slot).await?;
        let until = pg.wal_position().await?;
        let mut before = Vec::new();
        let mut reload = false;
        let mut resync = None;
        match (state.replication, slot) {
            (None, Slot::Created(at) | Slot::Existing(at)) => {
                before.push(PositionDelta::Replication { lsn: at });
                before.push(PositionDelta::StreamSetup(setup.clone()));
                // A state that polling wrote: changes since its last cycle are not in the slot.
                reload = !state.needs_full_load();
            }
            (Some(saved), Slot::Existing(confirmed)) => {
                match &state.stream_setup {
                    Some(recorded) if *recorded != setup => {
                        warn_if_slot_left(pg, recorded, &setup).await?;
                        resync = Some(format!("the stream was read through other objects: {} (a table recreated or taken out of the publication, the publication dropped or altered, another slot): changes may be missing", recorded.differences(&setup).join("; ")));
                    }
                    Some(_) => {}
                    // Written before the setup was recorded: this is the setup from now on.
                    None => before.push(PositionDelta::StreamSetup(setup.clone())),
                }
                if resync.is_none() && confirmed > saved {
                    if self.took_over_slot {
                        return Err(Error::SourceSetup(format!(
                            "replication slot {slot} was moved past this state's position again while pg2es ran ({} > {}): another consumer reads it at the same time. Give each pg2es its own PG_REPLICATION_SLOT (and ETL_STATE_FILE), then start again: this state then loads every record from its own slot",
                            format_lsn(confirmed),
                            format_lsn(saved),
                            slot = self.settings.slot
                        )));
                    }
                    self.took_over_slot = true;
                    resync = Some(format!(
                        "slot {} is confirmed up to {}, past this state's {}: another consumer (a second pg2es with another ETL_STATE_FILE?) read it, so the changes between are missing here; give each pg2es its own PG_REPLICATION_SLOT",
                        self.settings.slot,
                        format_lsn(confirmed),
                        format_lsn(saved)
                    ));
                }
                if resync.is_none() && saved > confirmed {
                    advance_slot(pg, &self.settings.slot, saved).await?;
                }
            }
            (Some(_), Slot::Created(_)) => {
                resync = Some("the replication slot was gone (dropped or invalidated) and is created again: changes made meanwhile are not in it".to_string());
            }
        }
        if let Some(reason) = &resync {
            // The fresh position is recorded with the setup as it is now.
            let setup = if cached.is_some() { self.check_setup(pg, &schema).await? } else { setup };
            self.setup = Some((setup.clone(), Instant::now()));
            tracing::warn!(slot = %self.settings.slot, reason = %reason, resyncs = state.resyncs + 1, "the replication stream cannot be followed from the saved position: taking a fresh one; every record is loaded again, then documents of records that are gone are removed");
            before.push(PositionDelta::Resync { lsn: until, setup });
        } else if state.needs_full_load() || reload {
            before.push(PositionDelta::BeginFullLoad { heads: Vec::new() });
            tracing::info!("full load: every record is read in key order; the replication stream is read from where the slot starts once it is done");
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
        Ok(CyclePlan { identity: Some(identity), before, full_load })
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

    async fn existing(&self, ids: &[Key]) -> Result<Vec<Key>> {
        self.pg()?.existing(ids).await
    }
}

enum Slot {
    /// Created now, at this position.
    Created(Lsn),
    /// Already there, confirmed up to this position.
    Existing(Lsn),
}

fn lsn_of(text: String) -> Result<Lsn> {
    parse_lsn(&text).ok_or_else(|| Error::SourceSetup(format!("{text:?} is not a WAL position")))
}

async fn ensure_slot(pg: &PgSource, slot: &str) -> Result<Slot> {
    let context = "read the replication slot";
    let row = pg
        .client()
        .query_opt(
            "SELECT plugin::text, database::text, database = current_database(), confirmed_flush_lsn::text, wal_status::text \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::postgres(context))?;
    if let Some(row) = row {
        let plugin: Option<String> = row.try_get(0).map_err(Error::postgres(context))?;
        let database: Option<String> = row.try_get(1).map_err(Error::postgres(context))?;
        let here: Option<bool> = row.try_get(2).map_err(Error::postgres(context))?;
        if here != Some(true) {
            let owner = database.map_or_else(|| "a physical slot".to_string(), |d| format!("a slot of database {d}"));
            return Err(Error::SourceSetup(format!(
                "replication slot {slot} is {owner}, not of this one: set PG_REPLICATION_SLOT to another name (or, if nothing uses it, drop it there: SELECT pg_drop_replication_slot('{slot}'))"
            )));
        }
        if plugin.as_deref() != Some("pgoutput") {
            return Err(Error::SourceSetup(format!(
                "replication slot {slot} decodes with {}, not pgoutput: set PG_REPLICATION_SLOT to another name (or, if nothing uses it, drop it: SELECT pg_drop_replication_slot('{slot}'))",
                plugin.unwrap_or_default()
            )));
        }
        let wal_status: Option<String> = row.try_get(4).map_err(Error::postgres(context))?;
        if wal_status.as_deref() == Some("lost") {
            // Postgres removed WAL the slot needed (max_slot_wal_keep_size): it can never be read
            // or advanced again. It is pg2es's slot; a new one is the only way on.
            tracing::warn!(slot, "the replication slot was invalidated (wal_status lost: Postgres removed WAL it still needed, see max_slot_wal_keep_size): dropping it and creating it again");
            pg.client()
                .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|e| setup_error(e, &format!("drop the invalidated replication slot {slot}")))?;
            return create_slot(pg, slot).await.map(Slot::Created);
        }
        let confirmed: Option<String> = row.try_get(3).map_err(Error::postgres(context))?;
        return Ok(Slot::Existing(lsn_of(confirmed.unwrap_or_default())?));
    }
    create_slot(pg, slot).await.map(Slot::Created)
}

/// Creates the slot. Postgres waits for every transaction open now, in any database, to end,
/// so the slot starts at a consistent point: the log says so while it waits.
async fn create_slot(pg: &PgSource, slot: &str) -> Result<Lsn> {
    let open = pg
        .client()
        .query_one(
            "SELECT count(*), min(xact_start)::text, string_agg(DISTINCT datname::text, ', ') FROM pg_catalog.pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_catalog.pg_backend_pid()",
            &[],
        )
        .await
        .map_err(Error::postgres("read open transactions"))?;
    let count: i64 = open.try_get(0).map_err(Error::postgres("read open transactions"))?;
    if count > 0 {
        let oldest: Option<String> = open.try_get(1).map_err(Error::postgres("read open transactions"))?;
        let databases: Option<String> = open.try_get(2).map_err(Error::postgres("read open transactions"))?;
        tracing::info!(
            slot,
            open_transactions = count,
            oldest_since = oldest.as_deref().unwrap_or("?"),
            databases = databases.as_deref().unwrap_or("?"),
            "creating the replication slot: Postgres waits for the transactions open now to end"
        );
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slot];
    let create = pg.client().query_one("SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')", &params);
    futures_util::pin_mut!(create);
    let started = Instant::now();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + SLOT_WAIT_REPORT, SLOT_WAIT_REPORT);
    let row = loop {
        tokio::select! {
            row = &mut create => break row.map_err(|e| create_slot_error(e, slot))?,
            _ = ticker.tick() => tracing::info!(slot, waited_sec = started.elapsed().as_secs(), "still creating the replication slot: a transaction open since before it started has not ended (see pg_stat_activity)"),
        }
    };
    let at = lsn_of(row.try_get(0).map_err(Error::postgres("create the replication slot"))?)?;
    tracing::info!(slot, at = %format_lsn(at), "created the replication slot: Postgres keeps WAL from here until pg2es has loaded it (drop the slot if pg2es is retired)");
    Ok(at)
}

/// The state's stream was read through another slot that still exists: it holds WAL back.
async fn warn_if_slot_left(pg: &PgSource, recorded: &StreamSetup, now: &StreamSetup) -> Result<()> {
    if recorded.slot == now.slot {
        return Ok(());
    }
    let row = pg
        .client()
        .query_opt(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&recorded.slot],
        )
        .await
        .map_err(Error::postgres("read the replication slot"))?;
    if let Some(row) = row {
        let retained: Option<i64> = row.try_get(0).map_err(Error::postgres("read the replication slot"))?;
        tracing::warn!(old_slot = %recorded.slot, slot = %now.slot, retained_bytes = retained.unwrap_or(0), "this state was read through another replication slot, which still retains WAL: drop it if nothing uses it (SELECT pg_drop_replication_slot('{}'))", recorded.slot);
    }
    Ok(())
}

async fn advance_slot(pg: &PgSource, slot: &str, to: Lsn) -> Result<()> {
    pg.client()
        .execute("SELECT pg_catalog.pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&slot, &format_lsn(to)])
        .await
        .map_err(Error::postgres("advance the replication slot"))?;
    Ok(())
}

/// `wal_level` and the role's `REPLICATION`.
async fn check_role(pg: &PgSource) -> Result<()> {
    let context = "check replication settings";
    let row = pg
        .client()
        .query_one("SELECT current_setting('wal_level'), (SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), current_user::text", &[])
        .await
        .map_err(Error::postgres(context))?;
    let wal_level: String = row.try_get(0).map_err(Error::postgres(context))?;
    let may_replicate: Option<bool> = row.try_get(1).map_err(Error::postgres(context))?;
    let role: String = row.try_get(2).map_err(Error::postgres(context))?;
    if wal_level != "logical" {
        return Err(Error::SourceSetup(format!(
            "wal_level is {wal_level}, logical replication needs logical: set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart Postgres, or use PG2ES_SOURCE=polling"
        )));
    }
    if may_replicate != Some(true) {
        return Err(Error::SourceSetup(format!(
            "role {role} lacks the REPLICATION attribute that replication slots need: ALTER ROLE {role} REPLICATION (as a superuser), or use PG2ES_SOURCE=polling"
        )));
    }
    Ok(())
}

/// Replica identities that give an updated or deleted row's root, every table that lacks one
/// named in one error.
async fn check_identities(pg: &PgSource, schema: &str) -> Result<()> {
    let doc = pg.document();
    let context = "check replica identities";
    let rows = pg
        .client()
        .query(
            "SELECT c.relname::text, c.relreplident::text, \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.pg_index i \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                          WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')",
            &[&schema, &doc.tables()],
        )
        .await
        .map_err(Error::postgres(context))?;
    let mut lacking = Vec::new();
    for st in &doc.streams {
        let table = st.table.as_str();
        let Some(needed) = st.direct.iter().find(|c| st.key.len() != 1 || **c != st.key[0]) else { continue };
        let Some(row) = rows.iter().find(|r| r.try_get::<_, String>(0).is_ok_and(|name| name == table)) else {
            return Err(Error::SourceSchema(format!("table {schema}.{table} not found; check PG_SCHEMA")));
        };
        let identity: String = row.try_get(1).map_err(Error::postgres(context))?;
        let key: Vec<String> = row.try_get(2).map_err(Error::postgres(context))?;
        if identity != "f" && !key.iter().any(|k| k == needed) {
            lacking.push((table, needed));
        }
    }
    if lacking.is_empty() {
        return Ok(());
    }
    let what: Vec<String> = lacking.iter().map(|(t, c)| format!("{schema}.{t} (its {c})")).collect();
    let fix: Vec<String> = lacking.iter().map(|(t, _)| format!("ALTER TABLE {schema}.{t} REPLICA IDENTITY FULL;")).collect();
    Err(Error::SourceSetup(format!(
        "the replica identity of {} does not give an updated or deleted row's {} record, so it could not be found: {}",
        what.join(", "),
        doc.name,
        fix.join(" ")
    )))
}

/// The publication's identity and options, and each table's oid and membership: created when
/// missing, tables added when pg2es may; what cannot be fixed here is an error with the fix.
async fn ensure_publication(pg: &PgSource, schema: &str, publication: &str, tables: &[&str]) -> Result<std::collections::BTreeMap<String, String>> {
    let c = pg.client();
    let context = "read the publication";
    let quoted = |t: &str| crate::catalog::qualified(schema, t);
    // The documents of one run share the publication and set it up at once: a CREATE or an ADD
    // refused as a duplicate was done by another of them meanwhile, so it is read again. Each
    // refusal means another made progress, so a few rounds settle it.
    let mut added = false;
    // Rounds spent reading again for a membership row not seen yet (below); a table published
    // by schema or for all tables has none, and is taken as such after these.
    let mut rereads = 0;
    for _ in 0..9 {
        let row = c
            .query_opt(
                "SELECT p.oid::bigint, p.xmin::text, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, \
                        pg_catalog.pg_has_role(current_user, p.pubowner, 'USAGE') \
                 FROM pg_catalog.pg_publication p WHERE p.pubname = $1",
                &[&publication],
            )
            .await
            .map_err(Error::postgres(context))?;
        let Some(row) = row else {
            let sql = format!("CREATE PUBLICATION \"{publication}\" FOR TABLE {}", tables.iter().map(|t| quoted(t)).collect::<Vec<_>>().join(", "));
            match c.batch_execute(&sql).await {
                Ok(()) => tracing::info!(publication, "created the publication"),
                Err(e) if lost_race(&e) => tracing::debug!(publication, "the publication was created meanwhile by another document"),
                Err(e) => return Err(setup_error(e, &format!("create publication {publication} (as an owner of the tables: {sql})"))),
            }
            continue;
        };
        let oid: i64 = row.try_get(0).map_err(Error::postgres(context))?;
        let version: String = row.try_get(1).map_err(Error::postgres(context))?;
        let mut unpublished = Vec::new();
        for (i, kind) in ["insert", "update", "delete", "truncate"].into_iter().enumerate() {
            if !row.try_get::<_, bool>(2 + i).map_err(Error::postgres(context))? {
                unpublished.push(kind);
            }
        }
        if !unpublished.is_empty() {
            return Err(Error::SourceSetup(format!(
                "publication {publication} does not publish {}, so those changes would never reach the index: ALTER PUBLICATION \"{publication}\" SET (publish = 'insert, update, delete, truncate')",
                unpublished.join(", ")
            )));
        }
        let owned: bool = row.try_get(6).map_err(Error::postgres(context))?;
        let rows_of_tables = c
            .query(
                "SELECT c.relname::text, c.oid::bigint, \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables t WHERE t.pubname = $2 AND t.schemaname = $1 AND t.tablename = c.relname), \
                        (SELECT r.oid::bigint FROM pg_catalog.pg_publication_rel r WHERE r.prpubid = $3::bigint::oid AND r.prrelid = c.oid) \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = ANY($4) AND c.relkind IN ('r', 'p')",
                &[&schema, &publication, &oid, &tables.to_vec()],
            )
            .await
            .map_err(Error::postgres(context))?;
        let mut objects = std::collections::BTreeMap::new();
        objects.insert(format!("publication {publication}"), format!("oid {oid} version {version}"));
        let mut missing = Vec::new();
        let mut without_row = false;
        for &table in tables {
            let Some(row) = rows_of_tables.iter().find(|r| r.try_get::<_, String>(0).is_ok_and(|name| name == table)) else {
                return Err(Error::SourceSchema(format!("table {schema}.{table} not found; check PG_SCHEMA")));
            };
            let table_oid: i64 = row.try_get(1).map_err(Error::postgres(context))?;
            let member: bool = row.try_get(2).map_err(Error::postgres(context))?;
            let membership: Option<i64> = row.try_get(3).map_err(Error::postgres(context))?;
            if !member {
                missing.push(table);
            }
            without_row |= member && membership.is_none();
            let membership = membership.map_or_else(|| "by schema or all tables".to_string(), |m| format!("membership {m}"));
            objects.insert(format!("table {schema}.{table}"), format!("oid {table_oid} {membership}"));
        }
        // `pg_publication_tables` reads the catalog as it is when the view runs, the membership
        // row as it was when the statement began: a table another document added in between is
        // a member without its row, and would be recorded "by schema", then differ at the next
        // check (a needless fresh position and full load). Read again: the next statement sees it.
        if without_row && rereads < 3 {
            rereads += 1;
            continue;
        }
        if missing.is_empty() {
            return Ok(objects);
        }
        let add = format!("ALTER PUBLICATION \"{publication}\" ADD TABLE {}", missing.iter().map(|t| quoted(t)).collect::<Vec<_>>().join(", "));
        if owned && !added {
            // A migration that recreates a table leaves the new one out of the publication.
            match c.batch_execute(&add).await {
                Ok(()) => {
                    added = true;
                    tracing::warn!(publication, tables = %missing.join(", "), "tables were missing from the publication (a new document, or recreated by a migration?): added them");
                }
                Err(e) if lost_race(&e) => tracing::debug!(publication, "tables were added to the publication meanwhile by another document"),
                Err(e) => return Err(setup_error(e, &format!("add {} to publication {publication} ({add})", missing.join(", ")))),
            }
            continue;
        }
        return Err(Error::SourceSetup(format!(
            "publication {publication} lacks {} (recreated by a migration?), so their changes are lost: {add}; the next start then loads every record again",
            missing.join(", ")
        )));
    }
    Err(Error::SourceSetup(format!("publication {publication} could not be set up; check that pg2es may create it (CREATE on the database) or create it: CREATE PUBLICATION \"{publication}\" FOR TABLE {}", tables.iter().map(|t| quoted(t)).collect::<Vec<_>>().join(", "))))
}

/// Refused because the object was just made by another session: `duplicate_object`, or the
/// catalog's unique index when both committed at once.
fn lost_race(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|code| *code == SqlState::DUPLICATE_OBJECT || *code == SqlState::UNIQUE_VIOLATION)
}

/// Every slot in use is not an outage to wait out: a slot must be dropped, or the limit raised.
fn create_slot_error(e: tokio_postgres::Error, slot: &str) -> Error {
    if e.code() == Some(&tokio_postgres::error::SqlState::CONFIGURATION_LIMIT_EXCEEDED) {
        return Error::SourceSetup(no_slot_left(slot));
    }
    setup_error(e, &format!("create replication slot {slot}"))
}

fn no_slot_left(slot: &str) -> String {
    format!(
        "cannot create replication slot {slot}: every replication slot is in use (max_replication_slots); \
         list the unused ones: SELECT slot_name, database, active, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) FROM pg_replication_slots WHERE NOT active; \
         drop one that nothing needs: SELECT pg_drop_replication_slot('name'); \
         or raise max_replication_slots in postgresql.conf (it takes a restart of Postgres), then start pg2es again"
    )
}

/// A refused setup step: missing privileges are the operator's to fix, the rest as usual.
fn setup_error(e: tokio_postgres::Error, what: &str) -> Error {
    match e.code() {
        Some(code) if *code == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
            Error::SourceSetup(format!("cannot {what}: {}", e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())))
        }
        _ => Error::Postgres { context: "set up logical replication", source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movies() -> Document {
        crate::catalog::testing::cinema().remove(0)
    }

    fn relation(id: u32, name: &str, columns: &[&str]) -> Message {
        Message::Relation(pgoutput::Relation {
            id,
            namespace: "content".into(),
            name: name.into(),
            replica_identity: b'f',
            columns: columns.iter().map(|c| pgoutput::Column { key: true, name: c.to_string(), type_oid: 25, type_modifier: -1 }).collect(),
        })
    }

    fn text(values: &[&str]) -> pgoutput::Tuple {
        values.iter().map(|v| pgoutput::Datum::Text(v.to_string())).collect()
    }

    const A: &str = "00000000-0000-0000-0000-00000000000a";
    const B: &str = "00000000-0000-0000-0000-00000000000b";
    const P: &str = "00000000-0000-0000-0000-0000000000ff";

    #[test]
    fn changes_name_the_records_to_read_again() {
        let (mut w, mut r, doc) = (Window::default(), Relations::default(), movies());
        for m in [
            relation(1, "film_work", &["id", "title"]),
            relation(2, "person_film_work", &["id", "film_work_id", "person_id"]),
            relation(3, "person", &["id", "full_name"]),
            Message::Insert { relation: 1, new: text(&[A, "t"]) },
            // A link moved from film A to film B names both.
            Message::Update { relation: 2, old: Some(text(&[P, A, P])), new: text(&[P, B, P]) },
            Message::Update { relation: 3, old: None, new: text(&[P, "Renamed"]) },
            Message::Delete { relation: 3, old: text(&[B, "Gone"]) },
            Message::Commit { flags: 0, commit_lsn: 10, end_lsn: 20, commit_time_us: 0 },
        ] {
            apply(&mut w, &mut r, &doc, "content", m).unwrap();
        }
        let roots: Vec<String> = w.roots.iter().map(Key::to_string).collect();
        assert_eq!(roots, [A, B]);
        assert_eq!(w.fanned["person"].iter().map(Key::to_string).collect::<Vec<_>>(), [P]);
        assert_eq!((w.last_commit_end, w.reload), (Some(20), false));
        apply(&mut w, &mut r, &doc, "content", Message::Truncate { options: 0, relations: vec![2] }).unwrap();
        assert!(w.reload);
        // Another schema's relation (same names) is not ours.
        let mut other = Window::default();
        let mut rel = Relations::default();
        apply(&mut other, &mut rel, &doc, "elsewhere", relation(1, "film_work", &["id"])).unwrap();
        apply(&mut other, &mut rel, &doc, "elsewhere", Message::Insert { relation: 1, new: text(&[A]) }).unwrap();
        assert!(other.roots.is_empty());
    }

    #[test]
    fn a_change_whose_record_is_not_in_the_stream_is_reported() {
        let (mut w, mut r, doc) = (Window::default(), Relations::default(), movies());
        // A link table with the default replica identity: a delete carries only its key.
        let mut link = relation(2, "genre_film_work", &["id", "film_work_id", "genre_id"]);
        if let Message::Relation(rel) = &mut link {
            rel.replica_identity = b'd';
            for c in &mut rel.columns {
                c.key = c.name == "id";
            }
        }
        apply(&mut w, &mut r, &doc, "content", link).unwrap();
        apply(&mut w, &mut r, &doc, "content", Message::Insert { relation: 2, new: text(&[P, A, P]) }).unwrap();
        let err = apply(&mut w, &mut r, &doc, "content", Message::Delete { relation: 2, old: text(&[P, "", ""]) }).unwrap_err();
        assert!(err.contains("content.genre_film_work") && err.contains("replica identity"), "{err}");
        // A column pg2es reads, renamed by a migration.
        apply(&mut w, &mut r, &doc, "content", relation(3, "person_film_work", &["id", "film_id", "person_id"])).unwrap();
        let err = apply(&mut w, &mut r, &doc, "content", Message::Insert { relation: 3, new: text(&[P, A, P]) }).unwrap_err();
        assert!(err.contains("has no column film_work_id"), "{err}");
    }
}
