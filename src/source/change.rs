//! What crosses from a source to the rest of the pipeline: changes, in batches, each with the
//! position it completes. Any source (polling today, logical replication next) implements
//! [`ChangeSource`].
//!
//! Contract: a batch's `completes` may be saved once the sink has stored (or dead-lettered) every
//! change of it and of every batch before it, and only then. Delivery is at-least-once; a change
//! applied twice is harmless, because every change is the record's state as read, not a diff.

use std::collections::BTreeMap;
use std::future::Future;

use tokio::sync::mpsc;

use crate::catalog::{Document, Record};
use crate::checkpoint::{PositionDelta, SourceIdentity, State, Stream};
use crate::error::Result;
use crate::position::Key;
use crate::progress::Progress;
use crate::shutdown::Shutdown;
use crate::source::RowVersion;

/// One record's new state in the source.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The record as it is now, with its relations: index it.
    Upsert(Record),
    /// The record is gone: delete its document.
    Delete(Key),
}

/// Changes read together, and what saving them completes.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    /// Applied to the state, in order, once this batch and every one before it are stored.
    pub completes: Vec<PositionDelta>,
    /// Handed back to [`ChangeSource::acknowledge`] once `completes` is durable.
    pub receipt: Receipt,
    /// Orders the states the changes were read in (a WAL position): a write carrying a lower
    /// version than the document's is refused by the index, so a late older state never
    /// overwrites a newer one. `None`: unversioned (a batch with no changes).
    pub version: Option<u64>,
    /// When the oldest change this batch stands for was made (its commit, or its row's change
    /// timestamp in polling); `None` for a full load's batches, which stand for no change.
    pub committed: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a source wants to hear back once a batch is durable (polling: the rows whose records are
/// now stored, so that reading them again sends nothing).
#[derive(Debug, Default)]
pub struct Receipt {
    pub rows: Vec<(Stream, Vec<RowVersion>)>,
}

/// What a source needs before a cycle reads anything.
#[derive(Debug, Default)]
pub struct CyclePlan {
    /// The database read from: the state must belong to it.
    pub identity: Option<SourceIdentity>,
    /// The source's WAL position as the cycle began: every version the cycle writes is at least
    /// this (the state refuses a position below what it was written at: [`crate::checkpoint::
    /// Checkpoint::check_wal`]).
    pub wal: Option<u64>,
    /// Saved before reading (a full load beginning, the start of the delete log).
    pub before: Vec<PositionDelta>,
    /// Whether this cycle reads the whole catalog (the index is tuned for it).
    pub full_load: bool,
    /// The columns of the document's tables as the connection read them
    /// ([`crate::source::PgSource::columns`]): one changed in place reloads every record.
    pub columns: Option<BTreeMap<String, String>>,
}

/// What one cycle read, for the cycle's log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadReport {
    /// Changed rows read, per stream (the full load counts as root rows).
    pub rows: BTreeMap<Stream, usize>,
    /// Rows read again only because of the commit horizon, unchanged: their records were not sent.
    pub already_loaded: usize,
    /// Records named by the delete log (polling) or the replication stream.
    pub logged: usize,
    /// More changes are waiting: the next cycle starts at once.
    pub more: bool,
}

pub trait ChangeSource: Sync {
    /// Gets ready for a cycle: connects if needed, and says what to save before reading.
    fn prepare(&mut self, state: &State) -> impl Future<Output = Result<CyclePlan>> + Send;

    /// Reads every change after `state`, sending batches in read order until done, shutdown, or
    /// the receiver is gone. `progress` is started with the size of a full load.
    fn read(
        &self,
        state: &State,
        tx: mpsc::Sender<ChangeBatch>,
        shutdown: &Shutdown,
        progress: Option<&Progress>,
    ) -> impl Future<Output = Result<ReadReport>> + Send;

    /// A batch's `completes` is durable.
    fn acknowledge(&self, receipt: Receipt);

    /// The state was replaced by positions further back (a rebuild's hand-over): what the source
    /// remembers of rows already loaded is of the index before, and is forgotten.
    fn rewound(&self) {}

    /// The pass of `run --once` is over and `state` is durable: what the next cycle's `prepare`
    /// would confirm to Postgres is confirmed now (the replication slot is moved past it).
    fn finish(&self, _state: &State) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// The document the records of this cycle are read as (after `prepare`).
    fn document(&self) -> Option<std::sync::Arc<Document>>;

    /// Which of these records exist now (reconciliation removes the documents of the others).
    fn existing(&self, ids: &[Key]) -> impl Future<Output = Result<Vec<Key>>> + Send;
}
