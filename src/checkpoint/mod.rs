//! Durable state that only moves forward.
//!
//! Contract: a watermark advances only after the sink reported every document read up to it as
//! durable in Elasticsearch. Delivery is at-least-once; documents are idempotent by `_id`, so
//! re-reading after a crash is harmless. The file is replaced atomically (temp file, fsync,
//! rename, fsync of the directory), so a crash leaves either the old state or the new one.

mod lock;
mod status;
pub use status::{read_status, status_path, write_status, CycleSummary, RunStatus};

pub use lock::InstanceLock;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::position::Key;
pub use crate::position::PositionError;
use crate::settings::{ETL_STATE_FILE, PG_DSN, PG_SCHEMA};

/// The state format this build writes; it refuses to read newer ones. Version 2 added the first
/// load's position (`snapshot`) and the index settings to restore (`tuned`); a version 1 file has
/// neither and reads as such.
pub const STATE_VERSION: u32 = 2;
const OLDEST_READABLE_VERSION: u32 = 1;

/// One change feed of the source: a table of the document, by the name the definition gives it
/// (the state file keys watermarks by it).
pub type Stream = String;

/// The last row of a stream known to be loaded: keyset position (timestamp, id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Watermark {
    pub ts: DateTime<Utc>,
    /// The row's key: its text for one column (a uuid as the string it always was), an array
    /// for a composite key.
    pub id: Key,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The index these watermarks were loaded into: state is refused for another index.
    pub index: String,
    /// The database these watermarks were read from: state is refused for another one. Absent
    /// in files written before it was recorded; the first connection records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceIdentity>,
    pub watermarks: BTreeMap<Stream, Watermark>,
    /// The first full load, which reads every record in key order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// Index settings changed for the full load, with the values to put back (`None`: the
    /// setting was not set on the index, and is reset to its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<BTreeMap<String, Option<String>>>,
    /// The delete log (`pg2es delete-capture`): every record logged by a transaction with an id
    /// below this one is loaded. Absent until the log is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_log: Option<u64>,
    /// Logical replication: every change committed before this WAL position is loaded (the
    /// slot is advanced to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<u64>,
    /// When the index's documents were last checked against Postgres's records (reconciliation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled_at: Option<DateTime<Utc>>,
    /// Logical replication: what the position was read through (the slot, the publication and
    /// its tables). Absent in files written before it was recorded: the first cycle records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_setup: Option<StreamSetup>,
    /// How many times the source took a fresh position because the stream could not be followed
    /// from the saved one (each logged as a warning with its reason).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resyncs: u64,
    /// The fingerprint of the definition the documents were built from (`catalog::definition::
    /// fingerprint`). Absent in files written before it was recorded: the first run records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// The concrete index these positions were loaded into: the index name itself, or the one
    /// its alias points at after `pg2es reindex`. Absent in files written before it was
    /// recorded: the first cycle records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The source's WAL position as a cycle began, at the last write of this state: the
    /// documents written from it have versions at least this high. A source whose position is
    /// now lower went back (a restore from a backup, a failover onto a standby that was behind),
    /// and every write would look older than the index's documents. Absent in files written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_seen: Option<u64>,
    /// The columns of the document's tables when its documents were read (`table.column`: its
    /// place in the table and its type). Absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<BTreeMap<String, String>>,
}

/// The columns of `was` that are in `now` as another column or of another type
/// (`table.column: was -> now`); one gone or added is not among them.
pub fn changed_columns(was: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    was.iter().filter_map(|(name, was)| now.get(name).filter(|now| *now != was).map(|now| format!("{name}: {was} -> {now}"))).collect()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a stream position is valid for: the name of the slot it was read from, and the
/// identities of the objects the stream was read through (a publication's oid and row version,
/// each published table's oid and membership), as `name -> identity` text. A position read
/// through other objects may have missed changes: a table recreated by a migration, a
/// publication dropped or altered, another slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSetup {
    pub slot: String,
    pub objects: BTreeMap<String, String>,
}

impl StreamSetup {
    /// What differs from `other`, for a person: `slot a -> b`, `x: 1 -> 2`, `y: gone`.
    pub fn differences(&self, other: &StreamSetup) -> Vec<String> {
        let mut out = Vec::new();
        if self.slot != other.slot {
            out.push(format!("slot {} -> {}", self.slot, other.slot));
        }
        for (name, was) in &self.objects {
            match other.objects.get(name) {
                Some(now) if now != was => out.push(format!("{name}: {was} -> {now}")),
                Some(_) => {}
                None => out.push(format!("{name}: {was} -> gone")),
            }
        }
        for (name, now) in &other.objects {
            if !self.objects.contains_key(name) {
                out.push(format!("{name}: new ({now})"));
            }
        }
        out
    }
}

/// One step forward of the state: what a batch completes once it is stored. Each kind of source
/// position has its own variant, and [`State::apply`] moves each only forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PositionDelta {
    /// A change stream has every row up to here loaded.
    Stream { stream: Stream, to: Watermark },
    /// A full load starts: every record is read in key order from the first, the streams start at
    /// these heads. Also a reload of a catalog whose full load is done (after a TRUNCATE).
    BeginFullLoad { heads: Vec<(Stream, Watermark)> },
    /// The full load has every record up to here loaded.
    FullLoad(Snapshot),
    /// The delete log is loaded below this transaction id.
    DeleteLog { done: u64 },
    /// The index's documents were checked against Postgres's records at this time.
    Reconciled { at: DateTime<Utc> },
    /// Logical replication is loaded up to this WAL position.
    Replication { lsn: u64 },
    /// The stream is read through this setup from now on (recorded, nothing else changes).
    StreamSetup(StreamSetup),
    /// A fresh position: the stream is read from `lsn` through `setup`, and every record is loaded
    /// again from the first (restarting a full load under way), since changes before `lsn` may
    /// be missing from what was loaded. Counted in `resyncs`.
    Resync { lsn: u64, setup: StreamSetup },
    /// The delete log can no longer be trusted from the saved position (its triggers or its table
    /// went missing, or its position was dropped): it is forgotten, and read again only after a
    /// reload once it is back.
    DeleteLogLost,
    /// The positions are of this concrete index (recorded once; another one after a rebuild
    /// without a hand-over starts the full load over: [`Checkpoint::adopt`] is the other way).
    Target { index: String },
    /// The documents are built from the definition with this fingerprint from now on. Recorded
    /// the first time; another one than recorded means every document may be built otherwise,
    /// so every record is loaded again from the first (a full load under way starts over),
    /// the streams kept.
    Definition { fingerprint: String },
    /// The columns of the document's tables now: a column read before that was dropped and added
    /// again, or whose type was altered, holds other values than the documents were built from,
    /// and every record is loaded again.
    Columns { columns: BTreeMap<String, String> },
}

/// Which database a state belongs to. Watermarks and the full load's position mean nothing in
/// another database, even one with the same tables: loading from it would mix two catalogs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    /// `pg_control_system().system_identifier`: the cluster (a restore into a new cluster or a
    /// pg_upgrade gets a new one; a streaming replica keeps it).
    pub system_identifier: String,
    pub database: String,
    pub schema: String,
}

impl std::fmt::Display for SourceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database '{}', schema '{}' of cluster {}", self.database, self.schema, self.system_identifier)
    }
}

/// Progress of the first full load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every record with a key up to this one is loaded (`None`: none yet).
    pub after: Option<Key>,
    pub done: bool,
}

impl State {
    pub fn new(index: &str) -> State {
        State { version: STATE_VERSION, index: index.to_string(), ..State::default() }
    }

    /// True before anything was ever loaded: the next cycle starts the full load.
    pub fn needs_full_load(&self) -> bool {
        self.snapshot.is_none() && self.watermarks.is_empty()
    }

    /// The columns recorded with the documents that are not the same column of the same type in
    /// `now` (`table.column: was -> now`). One gone or added is none: a column the document reads
    /// that is gone stops the source, and one it does not read changes nothing.
    pub fn columns_changed(&self, now: &BTreeMap<String, String>) -> Vec<String> {
        self.columns.as_ref().map_or_else(Vec::new, |was| changed_columns(was, now))
    }

    /// Whether documents were built from another definition than `fingerprint`: some are loaded,
    /// and the recorded fingerprint differs (none recorded: an earlier release's, taken as this).
    pub fn definition_changes(&self, fingerprint: &str) -> bool {
        !self.needs_full_load() && self.definition.as_deref().is_some_and(|d| d != fingerprint)
    }

    /// The full load's position while it is under way.
    pub fn snapshot_in_progress(&self) -> Option<Snapshot> {
        self.snapshot.clone().filter(|s| !s.done)
    }

    pub fn watermark(&self, stream: &str) -> Option<Watermark> {
        self.watermarks.get(stream).cloned()
    }

    /// Moves a stream forward; refuses to move it back (that would re-deliver or, worse, mean
    /// two writers disagree about progress).
    pub fn try_advance(&mut self, stream: &str, to: Watermark) -> Result<(), PositionError> {
        match self.watermarks.get(stream) {
            Some(current) if to < *current => Err(PositionError::Backwards {
                what: format!("watermark of {stream}"),
                from: format!("{} {}", current.ts, current.id),
                to: format!("{} {}", to.ts, to.id),
            }),
            _ => {
                self.watermarks.insert(stream.to_string(), to);
                Ok(())
            }
        }
    }

    /// Applies one delta, only forward. On error the state may be partly changed: apply to a
    /// copy (as [`Checkpoint::commit`] does).
    pub fn apply(&mut self, delta: &PositionDelta) -> Result<(), PositionError> {
        match delta {
            PositionDelta::Stream { stream, to } => self.try_advance(stream, to.clone()),
            PositionDelta::BeginFullLoad { heads } => {
                if self.snapshot_in_progress().is_some() {
                    return Err(PositionError::FullLoadUnderWay);
                }
                self.snapshot = Some(Snapshot::default());
                heads.iter().try_for_each(|(stream, to)| self.try_advance(stream, to.clone()))
            }
            PositionDelta::FullLoad(to) => match &self.snapshot {
                Some(current) if current.done => Err(PositionError::NoFullLoad),
                Some(current) if to.after < current.after => Err(PositionError::Backwards {
                    what: "the full load".into(),
                    from: format!("record {:?}", current.after),
                    to: format!("record {:?}", to.after),
                }),
                Some(_) => {
                    self.snapshot = Some(to.clone());
                    Ok(())
                }
                None => Err(PositionError::NoFullLoad),
            },
            PositionDelta::DeleteLog { done } => match self.delete_log {
                Some(current) if *done < current => {
                    Err(PositionError::Backwards { what: "the delete log".into(), from: format!("transaction {current}"), to: format!("transaction {done}") })
                }
                _ => {
                    self.delete_log = Some(*done);
                    Ok(())
                }
            },
            PositionDelta::Replication { lsn } => match self.replication {
                Some(current) if *lsn < current => Err(PositionError::Backwards {
                    what: "the replication position".into(),
                    from: crate::position::format_lsn(current),
                    to: crate::position::format_lsn(*lsn),
                }),
                _ => {
                    self.replication = Some(*lsn);
                    Ok(())
                }
            },
            PositionDelta::StreamSetup(setup) => {
                self.stream_setup = Some(setup.clone());
                Ok(())
            }
            PositionDelta::Resync { lsn, setup } => {
                self.replication = Some(self.replication.map_or(*lsn, |current| current.max(*lsn)));
                self.stream_setup = Some(setup.clone());
                self.snapshot = Some(Snapshot::default());
                self.resyncs += 1;
                Ok(())
            }
            PositionDelta::Reconciled { at } => {
                self.reconciled_at = Some(self.reconciled_at.map_or(*at, |t| t.max(*at)));
                Ok(())
            }
            PositionDelta::DeleteLogLost => {
                self.delete_log = None;
                Ok(())
            }
            PositionDelta::Target { index } => {
                if self.target.as_deref().is_some_and(|t| t != index) {
                    self.snapshot = Some(Snapshot::default());
                }
                self.target = Some(index.clone());
                Ok(())
            }
            PositionDelta::Definition { fingerprint } => {
                if self.definition_changes(fingerprint) {
                    self.snapshot = Some(Snapshot::default());
                }
                self.definition = Some(fingerprint.clone());
                Ok(())
            }
            PositionDelta::Columns { columns } => {
                if !self.needs_full_load() && !self.columns_changed(columns).is_empty() {
                    self.snapshot = Some(Snapshot::default());
                }
                self.columns = Some(columns.clone());
                Ok(())
            }
        }
    }
}

/// A document's state and where it is kept ([`StateStore`]: the state file and its lock, or a
/// table row behind a lease), held for the life of the process.
#[derive(Debug)]
pub struct Checkpoint {
    /// The state file: where it is kept with the file store, and what the files beside it are
    /// named after (status, hand-over, rebuild) with any store.
    path: PathBuf,
    store: Box<dyn StateStore>,
    state: State,
    /// The fingerprint of the definition this process builds documents from (in memory only):
    /// what a rebuild's hand-over is compared with.
    running: Option<String>,
    /// The highest WAL position a cycle began at, saved with the next write of the state.
    wal_seen: Option<u64>,
    /// The status last reported, and when: a long full load reports it again as it saves.
    reported: Option<(RunStatus, std::time::Instant)>,
}

impl Checkpoint {
    /// Takes the instance lock, then reads the state file (or starts empty when there is none).
    pub fn open(path: &Path, index: &str) -> Result<Checkpoint> {
        Checkpoint::in_store(path, index, Box::new(FileStore::open(path)?))
    }

    /// Reads the state from `store` (or starts empty), for the document whose state file is
    /// `path`.
    pub fn in_store(path: &Path, index: &str, mut store: Box<dyn StateStore>) -> Result<Checkpoint> {
        let mut state = off_runtime(|| store.load(index))?.unwrap_or_else(|| State::new(index));
        // Written once now: a state that cannot be saved (read-only, immutable, a full disk, a
        // lost lease) is refused before anything reaches the index, not after the first batch.
        state.version = STATE_VERSION;
        off_runtime(|| store.save(&state))?;
        Ok(Checkpoint { path: path.to_path_buf(), store, state, running: None, wal_seen: None, reported: None })
    }

    /// Ties the state to the database it is read from: records it the first time, and refuses a
    /// state that belongs to another database.
    pub fn bind_source(&mut self, source: &SourceIdentity) -> Result<()> {
        match &self.state.source {
            Some(bound) if bound == source => Ok(()),
            Some(bound) => Err(Error::State {
                path: self.path.clone(),
                reason: format!(
                    "holds progress read from {bound}, not from {source}; use another {ETL_STATE_FILE} for this database, or check {PG_DSN} and {PG_SCHEMA} (after a restore or pg_upgrade of the same data: `pg2es reindex` builds a new index from this database while search keeps the old one, and `run` takes its positions; or delete the state file to reload everything)"
                ),
            }),
            None => {
                let source = source.clone();
                self.update(|next| {
                    next.source = Some(source);
                    Ok(())
                })
            }
        }
    }

    /// Refuses a source whose WAL position `now` is below the one the state's documents were
    /// written at (see [`State::wal_seen`]); otherwise keeps it, saved with the next write.
    pub fn check_wal(&mut self, now: u64) -> Result<()> {
        if let Some(seen) = self.state.wal_seen.max(self.wal_seen).filter(|seen| now < *seen) {
            return Err(Error::State {
                path: self.path.clone(),
                reason: format!(
                    "holds documents written at WAL position {}, but the database's WAL position is now {}: it went back (a restore from a backup, a failover onto a standby that was behind), so every write would look older than what the index holds and be dropped. `pg2es reindex` builds a new index from the database as it is now while search keeps the old one, and `run` takes its positions",
                    crate::position::format_lsn(seen),
                    crate::position::format_lsn(now)
                ),
            });
        }
        self.wal_seen = self.wal_seen.max(Some(now));
        Ok(())
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the status file beside the state, and hands the status to the store (the
    /// Postgres store publishes it in `pg2es.status`); best effort: it is news, not progress.
    pub fn report(&mut self, status: &RunStatus) {
        if let Err(e) = off_runtime(|| write_status(&self.path, status)) {
            tracing::debug!(error = %e, "status file not written");
        }
        self.store.report(status);
        self.reported = Some((status.clone(), std::time::Instant::now()));
    }

    /// The status reported last, with the document's health as it is now, once it is
    /// [`REPORT_AGAIN`] old: within a cycle (a full load's batches) the status keeps up too.
    fn report_again(&mut self) {
        let Some((last, at)) = &self.reported else { return };
        if at.elapsed() < REPORT_AGAIN {
            return;
        }
        let status = RunStatus { updated: Utc::now(), health: crate::telemetry::health(&crate::telemetry::document()).lock().clone(), ..last.clone() };
        self.report(&status);
    }

    /// The fingerprint of the definition this process builds documents from (see `running`).
    pub fn running_definition(&self) -> Option<&str> {
        self.running.as_deref().or(self.state.definition.as_deref())
    }

    pub fn set_running_definition(&mut self, fingerprint: String) {
        self.running = Some(fingerprint);
    }

    /// Applies the deltas in order to a copy of the state and makes it durable; only then is it
    /// the state. A delta that does not fit leaves the state and the file as they were.
    pub fn commit(&mut self, deltas: &[PositionDelta]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        self.update(|next| deltas.iter().try_for_each(|d| next.apply(d)))?;
        self.report_again();
        Ok(())
    }

    /// Takes `state` as it is, in place of the saved one: the positions `pg2es reindex` reached
    /// for the index it built and the alias now points at (its hand-over). The one change that
    /// may move positions back: they are the new index's, read after its full load began, so
    /// reading on from them loses nothing, and what is read twice is written twice, harmlessly.
    ///
    /// Logical replication keeps its own stream position: the rebuild read a slot of its own,
    /// up to a point after the move, so every change this run wrote to the old index before the
    /// move is in the new one too; reading on from this run's slot loses nothing.
    pub fn adopt(&mut self, state: State) -> Result<()> {
        // The new index's documents were written at the rebuild's positions, not this run's.
        self.wal_seen = None;
        self.update(|next| {
            let index = std::mem::take(&mut next.index);
            let stream = next.replication.map(|at| (at, next.stream_setup.take(), next.resyncs));
            *next = State { index, ..state };
            if let Some((at, setup, resyncs)) = stream {
                (next.replication, next.stream_setup, next.resyncs) = (Some(at), setup, resyncs);
            }
            Ok(())
        })
    }

    /// Records (or, with `None`, clears) the index settings to put back after the full load.
    pub fn set_tuned(&mut self, tuned: Option<BTreeMap<String, Option<String>>>) -> Result<()> {
        self.update(|next| {
            next.tuned = tuned;
            Ok(())
        })
    }

    /// Applies `change` to a copy of the state, writes it, and only then adopts it.
    fn update(&mut self, change: impl FnOnce(&mut State) -> Result<(), PositionError>) -> Result<()> {
        let mut next = self.state.clone();
        change(&mut next).map_err(|source| Error::Position { path: self.path.clone(), source })?;
        next.wal_seen = next.wal_seen.max(self.wal_seen);
        next.version = STATE_VERSION;
        let store = &mut self.store;
        off_runtime(|| store.save(&next))?;
        self.state = next;
        Ok(())
    }
}

/// The state as saved, read without the instance lock (`status`, `verify --repair`, beside a
/// running `run`): `None` when there is no file yet. The file is replaced by a rename, so what
/// is read is one whole state, possibly one commit old.
pub fn read(path: &Path, index: &str) -> Result<Option<State>> {
    match fs::read(path) {
        Ok(bytes) => parse_state(path, &bytes, index).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { context: "cannot read state file", path: path.to_path_buf(), source }),
    }
}

/// Runs `work` (a write and its fsync) so that it does not hold up the other tasks of a
/// multi-threaded runtime (`block_in_place`: the worker hands its tasks to another first); on a
/// current-thread runtime or none, simply runs it.
pub fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// Where `pg2es reindex` leaves its positions for `run` to take over (`<state>.handoff.json`).
pub fn handoff_path(state: &Path) -> PathBuf {
    beside(state, ".handoff.json")
}

/// The file beside `path` whose name is `path`'s with `suffix` added (`state.json.lock`): the
/// lock, status, hand-over and rebuild files of a state, the dead-letter file's rotations.
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `state` to `path` atomically (a hand-over, by `pg2es reindex`).
pub fn write_state(path: &Path, state: &State) -> Result<()> {
    let mut state = state.clone();
    state.version = STATE_VERSION;
    write_atomically(path, &state)
}

pub fn lock_path(state: &Path) -> PathBuf {
    beside(state, ".lock")
}

/// The state file and its instance lock: one `run` per state file on this host.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    _lock: InstanceLock,
}

impl FileStore {
    /// Creates the state's directory if missing and takes the lock.
    pub fn open(path: &Path) -> Result<FileStore> {
        if let Some(dir) = parent(path) {
            fs::create_dir_all(dir).map_err(|source| Error::Io { context: "cannot create state directory", path: dir.to_path_buf(), source })?;
        }
        Ok(FileStore { path: path.to_path_buf(), _lock: InstanceLock::acquire(&lock_path(path))? })
    }
}

impl StateStore for FileStore {
    fn load(&mut self, index: &str) -> Result<Option<State>> {
        read(&self.path, index)
    }

    fn save(&mut self, state: &State) -> Result<()> {
        write_atomically(&self.path, state)
    }
}

/// The state as a store hands it over (a file's bytes, a table's `jsonb`): the version checked
/// first, then the index. `path` names it in errors.
pub fn parse_state(path: &Path, bytes: &[u8], index: &str) -> Result<State> {
    let bad = |reason: String| Error::State { path: path.to_path_buf(), reason };
    // Read the version first, so a newer format is refused as such, not as "corrupt".
    let probe: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("is not valid JSON ({e}); it may be corrupt: restore it from a backup, or delete it to reload everything")))?;
    match probe.get("version").and_then(|v| v.as_u64()) {
        Some(v) if (u64::from(OLDEST_READABLE_VERSION)..=u64::from(STATE_VERSION)).contains(&v) => {}
        Some(v) if v > u64::from(STATE_VERSION) => {
            return Err(bad(format!("was written by a newer pg2es (state version {v}, this build reads {STATE_VERSION}); upgrade pg2es")))
        }
        _ => return Err(bad("has no known state version; it may be corrupt: restore it, or delete it to reload everything".into())),
    }
    let state: State = serde_json::from_value(probe).map_err(|e| bad(format!("is not a pg2es state ({e}); restore it, or delete it to reload everything")))?;
    if state.index != index {
        return Err(bad(format!("holds progress for index '{}', not '{index}'; use another {ETL_STATE_FILE} for this index", state.index)));
    }
    Ok(state)
}

fn write_atomically(path: &Path, state: &State) -> Result<()> {
    let io = |context: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { context, path: p, source }
    };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::State { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut file = File::create(&tmp).map_err(io("cannot create", &tmp))?;
    let written = file.write_all(&bytes).map_err(io("cannot write", &tmp)).and_then(|()| file.sync_all().map_err(io("cannot fsync", &tmp))).and_then(|()| {
        drop(file);
        fs::rename(&tmp, path).map_err(io("cannot rename state file onto", path))
    });
    if let Err(e) = written {
        // Nothing is left behind: the old state stays as it was.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable only once the directory entry is.
    let dir = parent(path).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("cannot fsync directory", dir))?;
    Ok(())
}

/// Where a document's state is kept. Each save replaces the whole state, durably, before the
/// pipeline goes on: the positions it holds are what a restart reads on from. Calls are
/// blocking (the pipeline makes them off the async runtime's workers, as a file's fsync).
/// How old the status may grow while a cycle saves progress before it is reported again.
const REPORT_AGAIN: std::time::Duration = std::time::Duration::from_secs(2);

pub trait StateStore: Send + std::fmt::Debug {
    /// The saved state, `None` when nothing is saved yet; one saved for another index is refused.
    fn load(&mut self, index: &str) -> Result<Option<State>>;
    /// Replaces the saved state with `state`. A store fenced by a lease refuses once the lease
    /// is lost ([`Error::LeaseLost`]), and saves nothing.
    fn save(&mut self, state: &State) -> Result<()>;
    /// Publishes what `run` says of the document (its health, its last cycle) where `pg2es
    /// status` reads it from other hosts; best effort. The status file beside the state is
    /// written in any case ([`Checkpoint::report`]), so the file store has nothing more to do.
    fn report(&mut self, _status: &RunStatus) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn wm(secs: i64, id: u128) -> Watermark {
        Watermark { ts: Utc.timestamp_opt(secs, 0).unwrap(), id: Key::int(id as i64) }
    }

    fn stream(stream: &str, to: Watermark) -> PositionDelta {
        PositionDelta::Stream { stream: stream.to_string(), to }
    }

    #[test]
    fn a_resync_restarts_the_full_load_and_never_moves_the_stream_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::open(&dir.path().join("s.json"), "movies").unwrap();
        let setup = StreamSetup { slot: "s".into(), objects: [("table t".to_string(), "oid 1".to_string())].into() };
        c.commit(&[PositionDelta::Replication { lsn: 100 }, PositionDelta::BeginFullLoad { heads: Vec::new() }]).unwrap();
        c.commit(&[PositionDelta::FullLoad(Snapshot { after: Some(Key::int(7)), done: false })]).unwrap();
        // Under way or not, the load starts again from the first record.
        c.commit(&[PositionDelta::Resync { lsn: 50, setup: setup.clone() }]).unwrap();
        let s = c.state();
        assert_eq!((s.replication, s.snapshot.clone(), s.resyncs), (Some(100), Some(Snapshot::default()), 1));
        assert_eq!(s.stream_setup.as_ref(), Some(&setup));
        let moved =
            StreamSetup { slot: "t".into(), objects: [("table t".to_string(), "oid 2".to_string()), ("table u".to_string(), "oid 3".to_string())].into() };
        assert_eq!(setup.differences(&moved), ["slot s -> t", "table t: oid 1 -> oid 2", "table u: new (oid 3)"]);
        // Older files have neither field, and read as before.
        let old: State = serde_json::from_str(r#"{"version":2,"index":"movies","watermarks":{}}"#).unwrap();
        assert_eq!((old.stream_setup, old.resyncs), (None, 0));
    }

    #[test]
    fn a_delta_that_does_not_fit_leaves_state_and_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        c.commit(&[PositionDelta::DeleteLog { done: 10 }, stream("person", wm(10, 5))]).unwrap();
        let before = (c.state().clone(), std::fs::read(&path).unwrap());
        // The first delta fits, the second does not: neither is applied.
        let err = c.commit(&[stream("genre", wm(1, 1)), PositionDelta::DeleteLog { done: 9 }]).unwrap_err();
        assert!(matches!(&err, Error::Position { source: PositionError::Backwards { what, .. }, .. } if what == "the delete log"), "{err}");
        assert_eq!((c.state().clone(), std::fs::read(&path).unwrap()), before);
        let err = c.commit(&[PositionDelta::FullLoad(Snapshot::default())]).unwrap_err();
        assert!(matches!(err, Error::Position { source: PositionError::NoFullLoad, .. }), "{err}");
        c.commit(&[PositionDelta::Replication { lsn: 0x16_B374_D848 }]).unwrap();
        let err = c.commit(&[PositionDelta::Replication { lsn: 5 }]).unwrap_err().to_string();
        assert!(err.contains("from 16/B374D848 to 0/5"), "{err}");
        // Reconciliation times only move forward, silently keeping the later one.
        let t = Utc.timestamp_opt(100, 0).unwrap();
        c.commit(&[PositionDelta::Reconciled { at: t }]).unwrap();
        c.commit(&[PositionDelta::Reconciled { at: Utc.timestamp_opt(50, 0).unwrap() }]).unwrap();
        assert_eq!(c.state().reconciled_at, Some(t));
    }

    #[test]
    fn a_lost_delete_log_is_forgotten_and_can_start_again_lower() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        c.commit(&[PositionDelta::DeleteLog { done: 100 }]).unwrap();
        c.commit(&[PositionDelta::DeleteLogLost]).unwrap();
        assert_eq!(c.state().delete_log, None);
        drop(c);
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        assert_eq!(c.state().delete_log, None);
        // A new log (installed again) may start below the old position.
        c.commit(&[PositionDelta::DeleteLog { done: 5 }, PositionDelta::BeginFullLoad { heads: vec![] }]).unwrap();
        assert_eq!(c.state().delete_log, Some(5));
    }

    #[test]
    fn watermarks_only_move_forward() {
        let mut s = State::new("movies");
        s.try_advance("person", wm(10, 5)).unwrap();
        s.try_advance("person", wm(10, 6)).unwrap();
        s.try_advance("person", wm(10, 6)).unwrap();
        assert!(s.try_advance("person", wm(10, 4)).is_err());
        assert!(s.try_advance("person", wm(9, 9)).is_err());
        s.try_advance("genre", wm(1, 1)).unwrap();
        assert_eq!(s.watermark("person"), Some(wm(10, 6)));
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("s.json");
        {
            let mut c = Checkpoint::open(&path, "movies").unwrap();
            c.commit(&[stream("film_work", wm(100, 1))]).unwrap();
            c.commit(&[stream("genre", wm(5, 2)), stream("person", wm(6, 3)), PositionDelta::DeleteLog { done: 7 }]).unwrap();
        }
        let c = Checkpoint::open(&path, "movies").unwrap();
        assert_eq!(c.state().watermark("film_work"), Some(wm(100, 1)));
        assert_eq!(c.state().watermark("person"), Some(wm(6, 3)));
        assert_eq!(c.state().delete_log, Some(7));
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn the_full_load_moves_forward_durably_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        assert!(c.state().needs_full_load());
        c.commit(&[PositionDelta::BeginFullLoad { heads: vec![("genre".to_string(), wm(5, 2))] }]).unwrap();
        assert!(!c.state().needs_full_load());
        let again = c.commit(&[PositionDelta::BeginFullLoad { heads: vec![] }]).unwrap_err();
        assert!(matches!(again, Error::Position { source: PositionError::FullLoadUnderWay, .. }), "a second start is refused: {again}");
        c.commit(&[PositionDelta::FullLoad(Snapshot { after: Some(Key::int(9)), done: false })]).unwrap();
        let back = c.commit(&[PositionDelta::FullLoad(Snapshot { after: Some(Key::int(3)), done: false })]).unwrap_err();
        assert!(matches!(back, Error::Position { source: PositionError::Backwards { .. }, .. }), "{back}");
        assert!(back.to_string().contains("move back"), "{back}");
        let mut tuned = BTreeMap::new();
        tuned.insert("index.refresh_interval".to_string(), Some("1s".to_string()));
        tuned.insert("index.number_of_replicas".to_string(), None);
        c.set_tuned(Some(tuned.clone())).unwrap();
        drop(c);
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        assert_eq!(c.state().snapshot_in_progress(), Some(Snapshot { after: Some(Key::int(9)), done: false }));
        assert_eq!(c.state().tuned, Some(tuned));
        assert_eq!(c.state().watermark("genre"), Some(wm(5, 2)));
        c.commit(&[PositionDelta::FullLoad(Snapshot { after: Some(Key::int(9)), done: true })]).unwrap();
        assert_eq!(c.state().snapshot_in_progress(), None);
        assert!(!c.state().needs_full_load());
        assert!(c.commit(&[PositionDelta::FullLoad(Snapshot { after: Some(Key::int(10)), done: false })]).is_err());
        // A reload (after a TRUNCATE) starts over from the first record, streams kept.
        c.commit(&[PositionDelta::BeginFullLoad { heads: vec![] }]).unwrap();
        assert_eq!(c.state().snapshot_in_progress(), Some(Snapshot::default()));
        assert_eq!(c.state().watermark("genre"), Some(wm(5, 2)));
    }

    #[test]
    fn a_column_changed_in_place_loads_every_record_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::open(&dir.path().join("s.json"), "movies").unwrap();
        let cols = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let before = cols(&[("film.id", "column 1, uuid"), ("film.title", "column 2, text")]);
        // Recorded with the first full load still to come.
        c.commit(&[PositionDelta::Columns { columns: before.clone() }]).unwrap();
        assert!(c.state().needs_full_load());
        c.commit(&[PositionDelta::BeginFullLoad { heads: vec![("genre".to_string(), wm(5, 2))] }]).unwrap();
        c.commit(&[PositionDelta::FullLoad(Snapshot { after: Some(Key::int(9)), done: true })]).unwrap();
        // A column added, or one gone: nothing read before changed.
        let added = cols(&[("film.id", "column 1, uuid"), ("film.title", "column 2, text"), ("film.rating", "column 3, real")]);
        assert!(c.state().columns_changed(&added).is_empty());
        c.commit(&[PositionDelta::Columns { columns: added.clone() }]).unwrap();
        assert_eq!(c.state().snapshot_in_progress(), None);
        // Dropped and added again: another place in the table; every record again, streams kept.
        let again = cols(&[("film.id", "column 1, uuid"), ("film.title", "column 4, text"), ("film.rating", "column 3, real")]);
        assert_eq!(c.state().columns_changed(&again), ["film.title: column 2, text -> column 4, text"]);
        c.commit(&[PositionDelta::Columns { columns: again.clone() }]).unwrap();
        assert_eq!(c.state().snapshot_in_progress(), Some(Snapshot::default()));
        assert_eq!(c.state().watermark("genre"), Some(wm(5, 2)));
        assert_eq!(c.state().columns, Some(again));
    }

    #[test]
    fn another_definition_than_recorded_loads_every_record_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::open(&dir.path().join("s.json"), "movies").unwrap();
        // Nothing loaded yet: recorded, the first full load is still to come.
        c.commit(&[PositionDelta::Definition { fingerprint: "a".into() }]).unwrap();
        assert!(c.state().needs_full_load());
        c.commit(&[PositionDelta::BeginFullLoad { heads: vec![("genre".to_string(), wm(5, 2))] }]).unwrap();
        c.commit(&[PositionDelta::FullLoad(Snapshot { after: Some(Key::int(9)), done: true })]).unwrap();
        // The same: nothing to do.
        assert!(!c.state().definition_changes("a"));
        c.commit(&[PositionDelta::Definition { fingerprint: "a".into() }]).unwrap();
        assert_eq!(c.state().snapshot_in_progress(), None);
        // Another: every record again from the first, the streams kept.
        assert!(c.state().definition_changes("b"));
        c.commit(&[PositionDelta::Definition { fingerprint: "b".into() }]).unwrap();
        assert_eq!(c.state().snapshot_in_progress(), Some(Snapshot::default()));
        assert_eq!(c.state().watermark("genre"), Some(wm(5, 2)));
        // Changed again during that load: it starts over.
        c.commit(&[PositionDelta::FullLoad(Snapshot { after: Some(Key::int(3)), done: false })]).unwrap();
        c.commit(&[PositionDelta::Definition { fingerprint: "c".into() }]).unwrap();
        assert_eq!(c.state().snapshot_in_progress(), Some(Snapshot::default()));
        // A state of an earlier release has none: it takes the one it is given, loading nothing.
        let mut s = c.state().clone();
        s.definition = None;
        s.snapshot = Some(Snapshot { after: Some(Key::int(9)), done: true });
        assert!(!s.definition_changes("d"));
        s.apply(&PositionDelta::Definition { fingerprint: "d".into() }).unwrap();
        assert_eq!((s.snapshot_in_progress(), s.definition.as_deref()), (None, Some("d")));
    }

    #[test]
    fn a_version_1_state_reads_as_one_without_a_full_load_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(
            &path,
            r#"{"version": 1, "index": "movies", "watermarks": {"film_work": {"ts": "2021-06-16T20:14:09Z", "id": "00000000-0000-0000-0000-000000000001"}}}"#,
        )
        .unwrap();
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        assert_eq!(c.state().snapshot, None);
        assert!(!c.state().needs_full_load());
        c.commit(&[stream("genre", wm(5, 2))]).unwrap();
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["version"], STATE_VERSION);
    }

    fn identity(database: &str) -> SourceIdentity {
        SourceIdentity { system_identifier: "7642011472967116994".into(), database: database.into(), schema: "content".into() }
    }

    #[test]
    fn a_state_is_bound_to_its_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        c.bind_source(&identity("movies")).unwrap();
        c.bind_source(&identity("movies")).unwrap();
        drop(c);
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        assert_eq!(c.state().source, Some(identity("movies")));
        let before = std::fs::read(&path).unwrap();
        let err = c.bind_source(&identity("other")).unwrap_err().to_string();
        assert!(err.contains("database 'movies'") && err.contains("database 'other'") && err.contains("ETL_STATE_FILE"), "{err}");
        let mut cluster = identity("movies");
        cluster.system_identifier = "1".into();
        assert!(c.bind_source(&cluster).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before, "a refused binding leaves the file alone");
    }

    #[test]
    fn a_source_whose_wal_went_back_is_refused_with_reindex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        c.check_wal(0x3_0000_0000).unwrap();
        // Kept in memory until the state is written anyway: no write of its own.
        assert_eq!(c.state().wal_seen, None);
        c.commit(&[stream("genre", wm(5, 2))]).unwrap();
        assert_eq!(c.state().wal_seen, Some(0x3_0000_0000));
        c.check_wal(0x3_0000_0100).unwrap();
        drop(c);
        let mut c = Checkpoint::open(&path, "movies").unwrap();
        c.check_wal(0x3_0000_0000).unwrap();
        let err = c.check_wal(0x1_0000_0000).unwrap_err().to_string();
        assert!(err.contains("3/0") && err.contains("1/0") && err.contains("went back") && err.contains("pg2es reindex"), "{err}");
        // A rebuild's hand-over brings the positions of the new index, read at the WAL as it is.
        let mut handoff = c.state().clone();
        handoff.wal_seen = Some(0x1_0000_0000);
        c.adopt(handoff).unwrap();
        c.check_wal(0x1_0000_0000).unwrap();
        assert_eq!(c.state().wal_seen, Some(0x1_0000_0000));
    }

    #[test]
    fn a_state_that_cannot_be_written_is_refused_at_open_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The state path is a directory: the rename onto it fails after the temp file was written.
        let path = dir.path().join("s.json");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("occupied"), "x").unwrap();
        let state = State::new("movies");
        let err = write_atomically(&path, &state).unwrap_err().to_string();
        assert!(err.contains("cannot rename"), "{err}");
        assert!(!path.with_extension("tmp").exists(), "temp file left behind");
        // At open, before anything else happens.
        let other = dir.path().join("t.json");
        std::fs::create_dir(other.with_extension("tmp")).unwrap();
        let err = Checkpoint::open(&other, "movies").unwrap_err().to_string();
        assert!(err.contains("cannot create"), "{err}");
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let first = Checkpoint::open(&path, "movies").unwrap();
        let err = Checkpoint::open(&path, "movies").unwrap_err();
        assert!(matches!(err, Error::AlreadyRunning { .. }), "{err}");
        drop(first);
        Checkpoint::open(&path, "movies").unwrap();
    }

    #[test]
    fn corrupt_newer_and_foreign_states_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        for (content, expect) in [
            ("{not json", "not valid JSON"),
            ("{\"version\": 99, \"index\": \"movies\", \"watermarks\": {}}", "newer pg2es"),
            ("{\"index\": \"movies\"}", "no known state version"),
            ("{\"version\": 1, \"index\": \"movies\", \"watermarks\": {\"film_work\": 3}}", "not a pg2es state"),
            ("{\"version\": 1, \"index\": \"films\", \"watermarks\": {}}", "index 'films'"),
        ] {
            std::fs::write(&path, content).unwrap();
            let err = Checkpoint::open(&path, "movies").unwrap_err().to_string();
            assert!(err.contains(expect), "{content}: {err}");
            // Refusing must not touch the file.
            assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        }
    }
}
