//! The pipeline's ordering and commit rules, without services: an in-memory source and sink
//! (the real ones are tested against the real stack in `pipeline.rs`).

use pg2es::position::Key;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pg2es::catalog::{Cell, Document, LiveSchema, Record, Selection, Source, TableKeys, Value as Cv};
use pg2es::checkpoint::{Checkpoint, PositionDelta, Snapshot, SourceIdentity, State};
use pg2es::error::{Error, Result};
use pg2es::pipeline::{run_cycles, Mode, Options};
use pg2es::progress::Progress;
use pg2es::retry::RetryPolicy;
use pg2es::shutdown::Shutdown;
use pg2es::sink::{IdPage, IndexAction, IndexOwner, IndexSettings, IndexSink, LoadReport};
use pg2es::source::{Change, ChangeBatch, ChangeSource, CyclePlan, ReadReport, Receipt};
use tokio::sync::mpsc;
use uuid::Uuid;

/// A one-table document (`film`: id, title), resolved without Postgres, once for every test of
/// this file (they run at once: one file written once).
fn document() -> std::sync::Arc<Document> {
    static DOC: std::sync::OnceLock<std::sync::Arc<Document>> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("films.json"), r#"{"mappings":{"properties":{"id":{"type":"keyword"},"title":{"type":"text"}}}}"#).unwrap();
        let path = dir.path().join("films.toml");
        std::fs::write(
            &path,
            "[[documents]]\nname = \"films\"\nindex_schema = \"films.json\"\ntable = \"film\"\nfields = [{ name = \"id\", column = \"id\" }, { name = \"title\", column = \"title\" }]\n",
        )
        .unwrap();
        let cols = [("id", "uuid"), ("title", "text"), ("updated_at", "timestamp with time zone")];
        let live = LiveSchema {
            schema: "s".into(),
            columns: [("film".to_string(), cols.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect())].into(),
            keys: [("film".to_string(), TableKeys { primary: Some(vec!["id".into()]), unique: vec![] })].into(),
            ..LiveSchema::default()
        };
        std::sync::Arc::new(Selection::default().resolve(&Source::read(&path).unwrap(), &live).unwrap().remove(0))
    })
    .clone()
}

/// Film `n`'s key: the uuid `n`.
fn key(n: u128) -> Key {
    Key::text(Uuid::from_u128(n).to_string())
}

fn number(k: &Key) -> u128 {
    Uuid::parse_str(&k.to_string()).unwrap().as_u128()
}

fn film(n: u128) -> Record {
    Record { key: key(n), cells: vec![Cell::One(Cv::Uuid(Uuid::from_u128(n))), Cell::One(Cv::Text(format!("film {n}")))] }
}

/// A full load of `batches` batches of `per_batch` films (ids 1, 2, ...), in id order.
struct MemorySource {
    batches: u128,
    per_batch: u128,
    /// Batches whose position was acknowledged, in the order it happened.
    acknowledged: Mutex<Vec<u128>>,
}

impl ChangeSource for MemorySource {
    async fn prepare(&mut self, state: &State) -> Result<CyclePlan> {
        let before = if state.needs_full_load() { vec![PositionDelta::BeginFullLoad { heads: vec![] }] } else { vec![] };
        Ok(CyclePlan { identity: None, wal: None, before, full_load: state.needs_full_load() || state.snapshot_in_progress().is_some(), columns: None })
    }

    async fn read(&self, state: &State, tx: mpsc::Sender<ChangeBatch>, _: &Shutdown, _: Option<&Progress>) -> Result<ReadReport> {
        let done_through = state.snapshot.clone().and_then(|s| s.after).map_or(0, |id| number(&id) / self.per_batch);
        for b in done_through..self.batches {
            let ids = (b * self.per_batch + 1)..=((b + 1) * self.per_batch);
            let changes = ids.map(|n| Change::Upsert(film(n))).collect();
            let after = Some(key((b + 1) * self.per_batch));
            let completes = vec![PositionDelta::FullLoad(Snapshot { after, done: b + 1 == self.batches })];
            if tx.send(ChangeBatch { changes, completes, ..ChangeBatch::default() }).await.is_err() {
                break;
            }
        }
        Ok(ReadReport::default())
    }

    fn document(&self) -> Option<std::sync::Arc<Document>> {
        Some(document())
    }

    fn acknowledge(&self, _: Receipt) {
        let mut acked = self.acknowledged.lock().unwrap();
        let n = acked.len() as u128;
        acked.push(n);
    }

    async fn existing(&self, ids: &[Key]) -> Result<Vec<Key>> {
        Ok(ids.to_vec())
    }
}

/// Stores documents after a delay that makes later batches finish first; fails on one batch.
struct MemorySink {
    per_batch: u128,
    docs: Mutex<BTreeMap<String, String>>,
    /// Batches fully written, by number.
    written: Mutex<BTreeSet<u128>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    fail_batch: Option<u128>,
    /// Whom the index is kept for (as the real sink records it in the mapping's `_meta`).
    owner: Mutex<Option<IndexOwner>>,
}

impl MemorySink {
    fn new(per_batch: u128, fail_batch: Option<u128>) -> MemorySink {
        MemorySink {
            per_batch,
            docs: Mutex::default(),
            written: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            fail_batch,
            owner: Mutex::default(),
        }
    }
}

impl IndexSink for MemorySink {
    async fn claim(&self, owner: &IndexOwner, _: &Shutdown) -> Result<()> {
        let mut held = self.owner.lock().unwrap();
        match &*held {
            Some(other) if other != owner => Err(Error::IndexClaimed { index: "memory".into(), holder: other.to_string(), ours: owner.to_string() }),
            _ => {
                *held = Some(owner.clone());
                Ok(())
            }
        }
    }

    async fn write(&self, actions: Vec<IndexAction>, _: &Shutdown) -> Result<LoadReport> {
        let first: u128 = actions[0].id().parse::<Uuid>().unwrap().as_u128();
        let batch = (first - 1) / self.per_batch;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        // Even batches are slow, odd ones quick: with two in flight, odd ones finish first.
        tokio::time::sleep(Duration::from_millis(if batch.is_multiple_of(2) { 30 } else { 1 })).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if Some(batch) == self.fail_batch {
            return Err(Error::Config("this batch is refused".into()));
        }
        let mut docs = self.docs.lock().unwrap();
        for a in &actions {
            match a {
                IndexAction::Index { id, body, .. } => {
                    let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
                    docs.insert(id.clone(), doc["title"].as_str().unwrap_or_default().to_string())
                }
                IndexAction::Delete { id, .. } => docs.remove(id),
            };
        }
        self.written.lock().unwrap().insert(batch);
        Ok(LoadReport { stored: actions.len(), ..LoadReport::default() })
    }

    async fn settings_before_full_load(&self, _: &Shutdown) -> Result<IndexSettings> {
        Ok(IndexSettings::new())
    }

    async fn tune_for_full_load(&self, _: &Shutdown) -> Result<()> {
        Ok(())
    }

    async fn restore_settings(&self, _: &IndexSettings, _: &Shutdown) -> Result<()> {
        Ok(())
    }

    async fn id_page(&self, cursor: Option<String>, limit: usize, _: &Shutdown) -> Result<IdPage> {
        let docs = self.docs.lock().unwrap();
        let ids: Vec<String> = docs.keys().filter(|k| cursor.as_ref().is_none_or(|c| *k > c)).take(limit).cloned().collect();
        let next = (ids.len() == limit).then(|| ids.last().cloned()).flatten();
        Ok(IdPage { ids, next })
    }
}

fn options(concurrency: usize) -> Options {
    Options {
        mode: Mode::Once,
        cycle: Duration::from_millis(10),
        bulk_concurrency: concurrency,
        reconcile_every: None,
        retry: RetryPolicy { initial: Duration::from_millis(1), cap: Duration::from_millis(10) },
        index_empty_at_start: true,
    }
}

#[tokio::test]
async fn several_requests_in_flight_commit_in_read_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut checkpoint = Checkpoint::open(&dir.path().join("state.json"), "memory").unwrap();
    let mut source = MemorySource { batches: 12, per_batch: 5, acknowledged: Mutex::default() };
    let sink = MemorySink::new(5, None);
    let (_trigger, shutdown) = Shutdown::new();
    let reports = run_cycles(&mut source, &sink, &mut checkpoint, &options(3), &shutdown).await.unwrap();
    assert_eq!(reports[0].stored, 60);
    assert!(sink.most_in_flight.load(Ordering::SeqCst) > 1, "requests were never concurrent");
    assert_eq!(sink.docs.lock().unwrap().len(), 60);
    assert_eq!(checkpoint.state().snapshot, Some(Snapshot { after: Some(key(60)), done: true }));
    assert_eq!(source.acknowledged.lock().unwrap().len(), 12);
}

/// Later batches stored before an earlier one failed: none of their positions is saved, so a
/// restart reads them again; nothing after the failure is counted as done.
#[tokio::test]
async fn a_failed_batch_keeps_every_later_position_unsaved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut checkpoint = Checkpoint::open(&path, "memory").unwrap();
    let mut source = MemorySource { batches: 12, per_batch: 5, acknowledged: Mutex::default() };
    let sink = MemorySink::new(5, Some(4));
    let (_trigger, shutdown) = Shutdown::new();
    let err = run_cycles(&mut source, &sink, &mut checkpoint, &options(3), &shutdown).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    // Batch 5 (quick) was written while batch 4 (slow) failed.
    assert!(sink.written.lock().unwrap().contains(&5), "{:?}", sink.written.lock().unwrap());
    assert_eq!(checkpoint.state().snapshot, Some(Snapshot { after: Some(key(20)), done: false }));
    drop(checkpoint);
    let saved = Checkpoint::open(&path, "memory").unwrap();
    assert_eq!(saved.state().snapshot, Some(Snapshot { after: Some(key(20)), done: false }));
    assert_eq!(source.acknowledged.lock().unwrap().len(), 4);
}

/// Reconciliation deletes documents whose film the source no longer has.
#[tokio::test]
async fn reconciliation_removes_documents_of_films_that_are_gone() {
    struct Shrunk(MemorySource);
    impl ChangeSource for Shrunk {
        async fn prepare(&mut self, state: &State) -> Result<CyclePlan> {
            self.0.prepare(state).await
        }
        async fn read(&self, state: &State, tx: mpsc::Sender<ChangeBatch>, s: &Shutdown, p: Option<&Progress>) -> Result<ReadReport> {
            self.0.read(state, tx, s, p).await
        }
        fn document(&self) -> Option<std::sync::Arc<Document>> {
            Some(document())
        }

        fn acknowledge(&self, r: Receipt) {
            self.0.acknowledge(r)
        }
        async fn existing(&self, ids: &[Key]) -> Result<Vec<Key>> {
            Ok(ids.iter().filter(|id| !number(id).is_multiple_of(3)).cloned().collect())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut checkpoint = Checkpoint::open(&dir.path().join("state.json"), "memory").unwrap();
    let mut source = Shrunk(MemorySource { batches: 4, per_batch: 5, acknowledged: Mutex::default() });
    let sink = MemorySink::new(5, None);
    let (_trigger, shutdown) = Shutdown::new();
    // The index was not empty at the start: the full load is followed by reconciliation.
    let opts = Options { index_empty_at_start: false, ..options(2) };
    let reports = run_cycles(&mut source, &sink, &mut checkpoint, &opts, &shutdown).await.unwrap();
    assert_eq!(reports[0].reconciled, Some(20));
    assert_eq!(reports[0].deleted, 6);
    let docs = sink.docs.lock().unwrap();
    assert_eq!(docs.len(), 14);
    assert!(docs.keys().all(|id| id.parse::<Uuid>().unwrap().as_u128() % 3 != 0));
    assert!(checkpoint.state().reconciled_at.is_some());
}

/// A source that says which database it reads, as the real ones do.
struct Identified(MemorySource, SourceIdentity);

impl ChangeSource for Identified {
    async fn prepare(&mut self, state: &State) -> Result<CyclePlan> {
        Ok(CyclePlan { identity: Some(self.1.clone()), ..self.0.prepare(state).await? })
    }
    async fn read(&self, state: &State, tx: mpsc::Sender<ChangeBatch>, s: &Shutdown, p: Option<&Progress>) -> Result<ReadReport> {
        self.0.read(state, tx, s, p).await
    }
    fn document(&self) -> Option<std::sync::Arc<Document>> {
        Some(document())
    }
    fn acknowledge(&self, r: Receipt) {
        self.0.acknowledge(r)
    }
    async fn existing(&self, ids: &[Key]) -> Result<Vec<Key>> {
        self.0.existing(ids).await
    }
}

/// The index is claimed for the source's database and the document before anything is written:
/// one kept for another database is refused, and neither the index nor the state is touched.
#[tokio::test]
async fn an_index_kept_for_another_database_is_refused_before_any_write() {
    let identity = |database: &str| SourceIdentity { system_identifier: "7642011472967116994".into(), database: database.into(), schema: "s".into() };
    let dir = tempfile::tempdir().unwrap();
    let (_trigger, shutdown) = Shutdown::new();

    let mut checkpoint = Checkpoint::open(&dir.path().join("a.json"), "memory").unwrap();
    let sink = MemorySink::new(5, None);
    let mut source = Identified(MemorySource { batches: 2, per_batch: 5, acknowledged: Mutex::default() }, identity("production"));
    run_cycles(&mut source, &sink, &mut checkpoint, &options(2), &shutdown).await.unwrap();
    assert_eq!(*sink.owner.lock().unwrap(), Some(IndexOwner::new(&identity("production"), "films")));
    assert_eq!(sink.docs.lock().unwrap().len(), 10);

    // Another database's run, with a state of its own, on the same index.
    let mut checkpoint = Checkpoint::open(&dir.path().join("b.json"), "memory").unwrap();
    let mut source = Identified(MemorySource { batches: 3, per_batch: 5, acknowledged: Mutex::default() }, identity("staging"));
    let err = run_cycles(&mut source, &sink, &mut checkpoint, &options(2), &shutdown).await.unwrap_err();
    assert!(matches!(err, Error::IndexClaimed { .. }), "{err}");
    assert!(err.to_string().contains("database 'production'") && err.to_string().contains("database 'staging'"), "{err}");
    assert_eq!(sink.docs.lock().unwrap().len(), 10, "nothing written");
    // Its own state is bound to its own database, and holds no progress.
    assert_eq!(checkpoint.state().source, Some(identity("staging")));
    assert_eq!(checkpoint.state().snapshot, None, "no full load begun");
}
