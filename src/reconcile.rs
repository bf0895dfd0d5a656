//! Reconciliation, a stage of its own: documents whose record is gone from Postgres are deleted.
//! The index's ids a page at a time (memory holds one page), each page looked up in Postgres. A
//! record created after its page was looked up is read by the change streams after this, so it
//! is never lost.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::catalog::Document;
use crate::checkpoint::{Checkpoint, PositionDelta, State};
use crate::error::Result;
use crate::shutdown::Shutdown;
use crate::sink::{IndexAction, IndexSink};
use crate::source::ChangeSource;

/// Document ids compared with Postgres per request (at most the index's `max_result_window`,
/// 10 000 by default).
const PAGE: usize = 5_000;

/// What one reconciliation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub checked: usize,
    pub deleted: usize,
}

/// Whether a reconciliation is due: `every` has passed since the last (`None`: only after a
/// full load), and no full load is under way.
pub fn due(state: &State, every: Option<Duration>) -> bool {
    let Some(every) = every else { return false };
    let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
    state.snapshot_in_progress().is_none() && state.reconciled_at.is_none_or(|at| chrono::Utc::now() - at >= every)
}

/// A full load into an index that was empty when it began leaves nothing to reconcile: recorded
/// as a reconciliation.
pub fn skip(checkpoint: &mut Checkpoint) -> Result<()> {
    checkpoint.commit(&[PositionDelta::Reconciled { at: chrono::Utc::now() }])
}

/// Deletes the documents of the index whose record is gone, then records when it started.
pub async fn run<S: ChangeSource, K: IndexSink>(doc: &Document, source: &S, sink: &K, checkpoint: &mut Checkpoint, shutdown: &Shutdown) -> Result<Reconciled> {
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let (mut checked, mut deleted, mut cursor) = (0, 0, None);
    loop {
        let page = sink.id_page(cursor, PAGE, shutdown).await?;
        checked += page.ids.len();
        let keys: Vec<crate::position::Key> = page.ids.iter().filter_map(|id| doc.key_of(id)).collect();
        let existing: HashSet<crate::position::Key> = source.existing(&keys).await?.into_iter().collect();
        let gone: Vec<IndexAction> = keys.iter().filter(|k| !existing.contains(k)).map(|k| IndexAction::Delete { id: k.to_string(), version: None }).collect();
        if !gone.is_empty() {
            deleted += gone.len();
            sink.write(gone, shutdown).await?;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    checkpoint.commit(&[PositionDelta::Reconciled { at: started_at }])?;
    tracing::info!(documents = checked, deleted, elapsed_ms = clock.elapsed().as_millis() as u64, "reconciled the index with postgres");
    Ok(Reconciled { checked, deleted })
}
