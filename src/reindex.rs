//! `pg2es reindex [DOCUMENT]`: a rebuild with no downtime and no lost write.
//!
//! 1. `<index>_<n>` is created from the index schema (the next `n` after the index the name
//!    points at now; an unfinished one of that name, which no alias points at, is deleted first).
//! 2. It is loaded by a pipeline of its own, as `run` would load it (its own state file,
//!    `<state>.reindex.json`, and its own position in the delete log), then caught up with every
//!    change made meanwhile, from its own positions, while the running `run` keeps the index the
//!    name points at, which search keeps using.
//! 3. Its positions are left for `run` (`<state>.handoff.json`), then the name is moved to it in
//!    one `_aliases` request: before the first rebuild the name is a concrete index, which the
//!    same request deletes so the alias can take its name; after, the old index is deleted
//!    unless `--keep-old`.
//! 4. `run` sees the move within 2 s (or at its next start) and takes the hand-over: it reads on
//!    from the rebuild's positions, which are before every change the rebuild did not read, so
//!    what `run` wrote to the old index after them is written to the new one too.
//!
//! With `PG2ES_SOURCE=replication` the rebuild reads a temporary slot of its own
//! (`<slot>_reindex`, dropped by Postgres when the rebuild's session ends, a crash included),
//! created before its full load: the load, then the stream up to the WAL position then, as `run`
//! loads a new index. After the move it reads on up to the WAL position read just after it:
//! every change `run` wrote to the old index before the move was committed before that, and
//! every change committed after it, `run` writes through the name into the new index. `run`
//! keeps its own slot and position and takes only the new index from the hand-over.

use crate::checkpoint::{self, Checkpoint};
use crate::config::{Config, SourceKind};
use crate::error::{Error, Result};
use crate::names::replication_name;
use crate::pipeline::{self, Mode, Options};
use crate::settings::{ES_INDEX, ES_INDEX_PREFIX};
use crate::shutdown::Shutdown;
use crate::sink::ElasticsearchSink;
use crate::source::{ChangeSource, ReplicationSource, ReplicationStream};
use crate::source::{DocumentSpec, PollingSource};

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// The concrete index the name pointed at before (the name itself before the first rebuild).
    pub old: String,
    pub new: String,
    /// Records loaded and changes caught up.
    pub records: usize,
    /// The old index is kept (`--keep-old`).
    pub kept_old: bool,
}

/// The number after `<index>_` in `concrete`, if it is one of this name's rebuilds.
fn generation(index: &str, concrete: &str) -> Option<u64> {
    concrete.strip_prefix(index)?.strip_prefix('_')?.parse().ok()
}

/// Rebuilds one document's index; see the module notes.
pub async fn reindex(config: &Config, spec: DocumentSpec, index: &crate::catalog::IndexSpec, keep_old: bool, shutdown: &Shutdown) -> Result<Rebuilt> {
    let live = ElasticsearchSink::new(&config.sink_settings())?;
    live.engine(shutdown).await?;
    let Some(old) = live.concrete(shutdown).await? else {
        return Err(Error::Refused(format!("index {} does not exist: `pg2es run` creates and loads it; reindex rebuilds one that exists", config.es_index)));
    };
    if keep_old && old == config.es_index {
        return Err(Error::Refused(format!(
            "the first rebuild turns index {0} into an alias of the same name, so the old index cannot be kept: run it without --keep-old (take a snapshot of {0} first if you need a copy)",
            config.es_index
        )));
    }
    let next = if old == config.es_index { 1 } else { generation(&config.es_index, &old).map_or(1, |n| n + 1) };
    let new = format!("{}_{next}", config.es_index);
    if new.len() > 255 {
        return Err(Error::Refused(format!("{new} is too long for an index name: shorten {ES_INDEX} or {ES_INDEX_PREFIX}")));
    }

    // The rebuild's own pipeline: its index, state and delete-log position.
    let mut own = config.clone();
    own.es_index = new.clone();
    own.state_file = checkpoint::beside(&config.state_file, ".reindex.json");
    let consumer = format!("{}~reindex", config.es_index);
    if let SourceKind::Replication(r) = &mut own.source {
        let slot = replication_name(&format!("{}_reindex", r.slot));
        (r.slot, r.previous_slot, r.slot_explicit, r.temporary) = (slot.clone(), slot, true, true);
    }
    live.delete_named(&new, shutdown).await?;
    // The position of the rebuild before, if the delete capture is on: this one starts afresh.
    let client = crate::source::delete_log::connect_with(&own.source_settings()).await?;
    crate::source::delete_log::forget_consumer(&client, &own.postgres.schema, &consumer).await?;
    drop(client);
    for leftover in [own.state_file.clone(), checkpoint::status_path(&own.state_file)] {
        let _ = std::fs::remove_file(leftover);
    }
    let sink = ElasticsearchSink::new(&own.sink_settings())?;
    sink.ensure_index(&index.schema).await?;
    // Read back: a schema Elasticsearch stores otherwise than written would have `run` refuse
    // the new index after the move.
    sink.ensure_index(&index.schema).await?;
    tracing::info!(document = %spec.name, index = %config.es_index, from = %old, into = %new, "rebuilding: loading the new index while the old one serves");
    let mut checkpoint = Checkpoint::open(&own.state_file, &new)?;
    pipeline::adopt_definition(&mut checkpoint, &spec, index)?;
    let mut options = Options::from_config(&own, Mode::Once);
    options.index_empty_at_start = true;
    let mut settings = own.source_settings();
    settings.consumer = consumer;
    let move_alias = |checkpoint: &Checkpoint| {
        // The hand-over first: a crash before the move leaves one that names an index the alias
        // does not point at, which `run` ignores.
        let mut handoff = checkpoint.state().clone();
        handoff.index = config.es_index.clone();
        handoff.target = Some(new.clone());
        handoff.tuned = None;
        let written = checkpoint::write_state(&checkpoint::handoff_path(&config.state_file), &handoff);
        async {
            written?;
            live.swap_alias(&old, &new, !keep_old, shutdown).await
        }
    };
    let records = match &own.source {
        SourceKind::Polling => {
            let mut source = PollingSource::new(&settings, spec.clone())?;
            let records = load(&mut source, &sink, &mut checkpoint, &options, shutdown).await?;
            move_alias(&checkpoint).await?;
            records
        }
        SourceKind::Replication(r) => {
            let mut source = ReplicationSource::new(&settings, r, spec.clone(), ReplicationStream::new(r, 1))?;
            let mut records = load(&mut source, &sink, &mut checkpoint, &options, shutdown).await?;
            move_alias(&checkpoint).await?;
            let client = crate::source::delete_log::connect_with(&settings).await?;
            let moved = crate::source::wal_position(&client).await?;
            drop(client);
            for _ in 0..CATCH_UP_PASSES {
                if checkpoint.state().replication.is_some_and(|at| at >= moved) {
                    break;
                }
                records += load(&mut source, &sink, &mut checkpoint, &options, shutdown).await?;
            }
            let reached = checkpoint.state().replication.unwrap_or(0);
            if reached < moved {
                return Err(Error::Refused(format!(
                    "the rebuild moved the name to {new} but read its slot only to {} of {} in {CATCH_UP_PASSES} passes: run `pg2es verify --repair` for the changes in between",
                    crate::position::format_lsn(reached),
                    crate::position::format_lsn(moved)
                )));
            }
            records
        }
    };
    drop(checkpoint);
    let _ = std::fs::remove_file(&own.state_file);
    let _ = std::fs::remove_file(checkpoint::status_path(&own.state_file));
    let _ = std::fs::remove_file(checkpoint::lock_path(&own.state_file));
    tracing::info!(document = %spec.name, index = %config.es_index, now = %new, before = %old, kept_old = keep_old && old != config.es_index, records, "rebuilt: the name points at the new index");
    Ok(Rebuilt { old: old.clone(), new, records, kept_old: keep_old && old != config.es_index })
}

/// How many passes over the rebuild's slot may follow the move before it has reached the WAL
/// position read just after it (one does, unless the window of a pass is cut).
const CATCH_UP_PASSES: usize = 20;

/// One pass until nothing is pending (`Mode::Once`): the records it loaded.
async fn load<S: ChangeSource>(source: &mut S, sink: &ElasticsearchSink, checkpoint: &mut Checkpoint, options: &Options, shutdown: &Shutdown) -> Result<usize> {
    let reports = pipeline::run_cycles(source, sink, checkpoint, options, shutdown).await?;
    if reports.last().is_none_or(|r| r.interrupted) {
        return Err(Error::Shutdown);
    }
    Ok(reports.iter().map(|r| r.records).sum())
}
