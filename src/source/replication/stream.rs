//! The run's one replication stream: one slot and one publication for every document of a
//! `pg2es run`. A logical slot decodes the whole WAL whoever reads it, so the documents share one
//! peek: the first document that needs changes past the last peek peeks the slot (up to the WAL
//! position then), and every document takes its own window from those decoded messages.
//!
//! Each document keeps its own saved position. The slot is advanced to the lowest of them, once
//! every document has said where it is, and never past one: a document that crashes finds its
//! changes still in the slot. A document ahead of the slot takes only the transactions from its
//! own position on (`window::window_of`).
//!
//! Postgres lets one session at a time use a slot (peek or advance), so both go through one lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::pgoutput::Lsn;
use super::super::{PgSource, ReplicationSettings};
use super::setup::{self, Slot};
use super::window::{self, Peek};
use crate::error::Result;

pub struct ReplicationStream {
    slot: String,
    /// Created temporary ([`ReplicationSettings::temporary`]).
    temporary: bool,
    publication: String,
    /// How many documents read it: the slot moves once each has said where it is.
    documents: usize,
    inner: tokio::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each document's saved position, as it last said.
    positions: BTreeMap<String, Lsn>,
    /// Where the slot is confirmed, as last seen or moved by this run.
    confirmed: Option<Lsn>,
    /// The slot was created by this run, at this position.
    created: Option<Lsn>,
    /// The last peek, and where the slot was confirmed when it was taken.
    peek: Option<(Arc<Peek>, Lsn)>,
}

impl ReplicationStream {
    pub fn new(settings: &ReplicationSettings, documents: usize) -> Arc<ReplicationStream> {
        Arc::new(ReplicationStream {
            slot: settings.slot.clone(),
            temporary: settings.temporary,
            publication: settings.publication.clone(),
            documents: documents.max(1),
            inner: tokio::sync::Mutex::new(Inner::default()),
        })
    }

    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The slot, created when missing: `Created` for every document of the run once this run
    /// created it (whatever any of them saved before is not in it).
    pub(super) async fn ensure(&self, pg: &PgSource) -> Result<Slot> {
        let mut inner = self.inner.lock().await;
        let slot = setup::ensure_slot(pg, &self.slot, self.temporary).await?;
        if let Slot::Created(at) = slot {
            inner.created = Some(at);
            inner.positions.clear();
            inner.peek = None;
        }
        inner.confirmed = Some(slot.confirmed());
        Ok(match inner.created {
            Some(at) if at == slot.confirmed() => Slot::Created(at),
            _ => Slot::Existing(slot.confirmed()),
        })
    }

    /// `document` has every change before `saved` stored: once every document has said so, the
    /// slot is moved to the lowest position, when that is past where it is.
    pub(super) async fn saved(&self, pg: &PgSource, document: &str, saved: Lsn) -> Result<()> {
        let mut inner = self.inner.lock().await;
        inner.positions.insert(document.to_string(), saved);
        if inner.positions.len() < self.documents {
            return Ok(());
        }
        let Some(lowest) = inner.positions.values().min().copied() else { return Ok(()) };
        if inner.confirmed.is_some_and(|c| lowest > c) {
            setup::advance_slot(pg, &self.slot, lowest).await?;
            inner.confirmed = Some(lowest);
        }
        Ok(())
    }

    /// The changes committed before `until`, from the last peek when it reaches that far (and,
    /// cut at `WINDOW_CHANGES`, the slot has not moved since), otherwise from a new one up to
    /// the WAL position now. Inner `Err`: the stream cannot be followed (no publication).
    pub(super) async fn peek(&self, pg: &PgSource, until: Lsn) -> Result<std::result::Result<Arc<Peek>, String>> {
        let mut inner = self.inner.lock().await;
        let confirmed = inner.confirmed.unwrap_or(0);
        if let Some((peek, from)) = &inner.peek {
            if peek.until >= until && (peek.exhausted || *from == confirmed) {
                return Ok(Ok(peek.clone()));
            }
        }
        let now = pg.wal_position().await?.max(until);
        let peek = match window::peek(pg, &self.slot, &self.publication, now).await? {
            Ok(peek) => Arc::new(peek),
            Err(lost) => {
                inner.peek = None;
                return Ok(Err(lost));
            }
        };
        inner.peek = Some((peek.clone(), confirmed));
        Ok(Ok(peek))
    }
}
