//! Reading records for any source: the full load's streamed scan, and "these records changed"
//! turned into batches of upserts (the record as it is now) and deletes (the record is gone).

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::change::{Change, ChangeBatch, Receipt};
use super::PgSource;
use crate::catalog::Record;
use crate::checkpoint::{PositionDelta, Snapshot};
use crate::error::Result;
use crate::position::Key;
use crate::progress::Progress;
use crate::shutdown::Shutdown;

/// Streams every record after the full load's position, in key order, as batches of `batch_size`,
/// each completing the full load up to its last record. Returns the records read and whether the load
/// reached its end.
pub async fn full_load(
    pg: &PgSource,
    from: Snapshot,
    batch_size: usize,
    version: Option<u64>,
    tx: &mpsc::Sender<ChangeBatch>,
    shutdown: &Shutdown,
    progress: Option<&Progress>,
) -> Result<(usize, bool)> {
    if let Some(p) = progress {
        p.start(pg.records_left(from.after.as_ref()).await?);
    }
    let records = pg.scan_records(from.after.as_ref()).await?;
    futures_util::pin_mut!(records);
    let (mut read, mut after) = (0, from.after);
    let mut batch = Vec::with_capacity(batch_size);
    while let Some(record) = records.next().await {
        let record = record?;
        after = Some(record.key.clone());
        batch.push(Change::Upsert(record));
        read += 1;
        if batch.len() == batch_size {
            let changes = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            let completes = vec![PositionDelta::FullLoad(Snapshot { after: after.clone(), done: false })];
            if !send(tx, ChangeBatch { changes, completes, version, ..ChangeBatch::default() }).await || shutdown.is_triggered() {
                return Ok((read, false));
            }
        }
    }
    let completes = vec![PositionDelta::FullLoad(Snapshot { after, done: true })];
    let finished = send(tx, ChangeBatch { changes: batch, completes, version, ..ChangeBatch::default() }).await;
    Ok((read, finished))
}

/// How the writes of a batch are versioned (see `ChangeBatch::version`).
#[derive(Debug, Clone, Copy)]
pub enum Versioning {
    /// This version for every batch (replication: the stream position read up to).
    Fixed(u64),
    /// The WAL insert position read just before each batch's records: it only grows, so a batch
    /// read later has a version at least as high, and a state read after it is at least as new.
    AtRead,
}

/// Reads these records and sends them: those found as upserts, the others as deletes, in batches of
/// `batch_size`. The last batch carries `completes` and `receipt` (also when `ids` is empty).
/// False when the receiver has stopped.
#[allow(clippy::too_many_arguments)]
pub async fn send_records(
    pg: &PgSource,
    tx: &mpsc::Sender<ChangeBatch>,
    ids: &[Key],
    batch_size: usize,
    versioning: Versioning,
    completes: Vec<PositionDelta>,
    receipt: Receipt,
    committed: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<bool> {
    let chunks: Vec<&[Key]> = ids.chunks(batch_size.max(1)).collect();
    if chunks.is_empty() {
        return Ok(send(tx, ChangeBatch { changes: Vec::new(), completes, receipt, version: None, committed: None }).await);
    }
    let (last, mut end) = (chunks.len() - 1, Some((completes, receipt)));
    for (i, ids) in chunks.into_iter().enumerate() {
        let version = Some(match versioning {
            Versioning::Fixed(v) => v,
            Versioning::AtRead => pg.wal_position().await?,
        });
        let changes = upserts_and_deletes(ids, pg.records(ids).await?);
        let (completes, receipt) = if i == last { end.take().unwrap_or_default() } else { Default::default() };
        if !send(tx, ChangeBatch { changes, completes, receipt, version, committed }).await {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The records found, as upserts, and a delete for every key asked for that is gone.
fn upserts_and_deletes(ids: &[Key], records: Vec<Record>) -> Vec<Change> {
    let found: std::collections::HashSet<&Key> = records.iter().map(|r| &r.key).collect();
    let gone: Vec<Change> = ids.iter().filter(|id| !found.contains(id)).map(|id| Change::Delete(id.clone())).collect();
    records.into_iter().map(Change::Upsert).chain(gone).collect()
}

/// Sends a batch; false when the receiver has stopped.
async fn send(tx: &mpsc::Sender<ChangeBatch>, batch: ChangeBatch) -> bool {
    tx.send(batch).await.is_ok()
}
