//! The state in Postgres (`PG2ES_STATE_STORE=postgres`): one row of `pg2es.state` per document,
//! keyed by its state file's name as configured. A save happens only while the saver's lease
//! is the current one: the lease row is locked (`FOR SHARE`) by the saving statement itself, so a
//! takeover waits for it, and a leader whose lease moved on saves nothing and stops.
//!
//! With the delete capture installed, each save also moves the document's position in its log
//! (`pg2es.consumers`) to the state's, in the same statement.
//!
//! The store's calls are blocking, as a file's fsync is ([`crate::checkpoint::StateStore`]): each
//! runs on a thread of the store's own, with its own connection and runtime. The document's dead
//! letters go beside its state, to `pg2es.dead_letters`.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use crate::checkpoint::{parse_state, RunStatus, State, StateStore};
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::source::SourceSettings;

enum Job {
    Load(mpsc::Sender<Result<Option<String>>>),
    /// The state, and its position in the delete log (`pg2es.consumers`, moved in the same
    /// statement when the log is there).
    Save(String, Option<String>, mpsc::Sender<Result<u64>>),
    /// Refused documents of an index: ids, statuses, reasons.
    DeadLetters(String, Vec<String>, Vec<i32>, Vec<String>, mpsc::Sender<Result<u64>>),
    /// What `run` says of the document (`RunStatus` as JSON), for `pg2es status` on any host;
    /// nobody waits for it.
    Report(String),
}

/// How often a leader publishes its status at most, unless its error or its wait changes.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// One document's row in `pg2es.state`, saved under the lease `lease_key` held as `holder` in
/// `epoch`.
#[derive(Debug)]
pub struct PgStore {
    key: String,
    lease_key: String,
    fence: Arc<Fence>,
    jobs: mpsc::Sender<Job>,
    /// When the status was last published, and its error and wait then.
    reported: Option<(std::time::Instant, String)>,
}

/// How errors name a row: as a path, since the state's errors name its file.
pub fn row_name(key: &str) -> PathBuf {
    PathBuf::from(format!("pg2es.state[{key}]"))
}

/// The thread that runs a store's statements on its own connection and runtime, reconnecting
/// after a failure.
fn worker(settings: &SourceSettings, key: &str, lease_key: &str, holder: &str, epoch: i64) -> Result<mpsc::Sender<Job>> {
    let (jobs, inbox) = mpsc::channel::<Job>();
    let (settings, key_owned, lease_owned, holder) = (settings.clone(), key.to_string(), lease_key.to_string(), holder.to_string());
    let cannot = |source| Error::Io { context: "cannot start the state store's thread", path: row_name(key), source };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(cannot)?;
    std::thread::Builder::new()
        .name("pg2es-state".into())
        .spawn(move || {
            let mut client: Option<tokio_postgres::Client> = None;
            while let Ok(job) = inbox.recv() {
                runtime.block_on(async {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = crate::source::delete_log::connect_with(&settings)
                            .await
                            .map_err(|e| tracing::debug!(error = %e, "state store: cannot connect"))
                            .ok();
                    }
                    let Some(c) = client.as_ref() else {
                        let down = || Error::SourceSetup("the state store cannot reach Postgres".into());
                        match job {
                            Job::Load(reply) => drop(reply.send(Err(down()))),
                            Job::Save(_, _, reply) | Job::DeadLetters(_, _, _, _, reply) => drop(reply.send(Err(down()))),
                            Job::Report(_) => {}
                        }
                        return;
                    };
                    match job {
                        Job::Load(reply) => {
                            let row = c.query_opt("SELECT state::text FROM pg2es.state WHERE key = $1", &[&key_owned]).await;
                            let out = row
                                .map_err(Error::postgres("read the state"))
                                .and_then(|r| r.map(|r| r.try_get::<_, String>(0).map_err(Error::postgres("read the state"))).transpose());
                            let _ = reply.send(out);
                        }
                        Job::Save(state, delete_log, reply) => {
                            // With the delete capture installed, the consumer's position in its log
                            // moves with the state, in the same statement (never back, never created:
                            // a missing row means the log lost deletes, which the source handles).
                            let has_log = match delete_log {
                                Some(_) => c.query_one("SELECT to_regclass('pg2es.consumers') IS NOT NULL", &[]).await.ok().and_then(|r| r.try_get::<_, bool>(0).ok()).unwrap_or(false),
                                None => false,
                            };
                            let saved = if has_log {
                                c.query_one(
                                    "WITH lease AS (SELECT 1 FROM pg2es.leases WHERE key = $2 AND holder = $3 AND epoch = $4 AND expires_at > now() FOR SHARE), \
                                     saved AS (INSERT INTO pg2es.state (key, state, saved_at) SELECT $1, $5::text::jsonb, now() FROM lease \
                                               ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, saved_at = EXCLUDED.saved_at RETURNING 1), \
                                     consumer AS (UPDATE pg2es.consumers SET done_xid = $6::text::xid8, seen_at = now() \
                                                  WHERE source_schema = $7 AND consumer = $8 AND done_xid < $6::text::xid8 AND EXISTS (SELECT 1 FROM saved)) \
                                     SELECT count(*) FROM saved",
                                    &[&key_owned, &lease_owned, &holder, &epoch, &state, &delete_log, &settings.schema, &settings.consumer],
                                )
                                .await
                                .and_then(|r| r.try_get::<_, i64>(0))
                                .map(|n| n as u64)
                                .map_err(Error::postgres("save the state"))
                            } else {
                                c.execute(
                                    "WITH lease AS (SELECT 1 FROM pg2es.leases WHERE key = $2 AND holder = $3 AND epoch = $4 AND expires_at > now() FOR SHARE) \
                                     INSERT INTO pg2es.state (key, state, saved_at) SELECT $1, $5::text::jsonb, now() FROM lease \
                                     ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, saved_at = EXCLUDED.saved_at",
                                    &[&key_owned, &lease_owned, &holder, &epoch, &state],
                                )
                                .await
                                .map_err(Error::postgres("save the state"))
                            };
                            let _ = reply.send(saved);
                        }
                        Job::DeadLetters(index, ids, statuses, reasons, reply) => {
                            let written = c
                                .execute(
                                    "INSERT INTO pg2es.dead_letters (key, id, index, status, reason, at) \
                                     SELECT $1, i, $2, s, r, now() FROM unnest($3::text[], $4::int[], $5::text[]) AS t(i, s, r)",
                                    &[&key_owned, &index, &ids, &statuses, &reasons],
                                )
                                .await
                                .map_err(Error::postgres("record the dead letters"));
                            let _ = reply.send(written);
                        }
                        Job::Report(status) => {
                            // Under the lease, as a save is: a leader that was replaced says nothing.
                            let written = c
                                .execute(
                                    "INSERT INTO pg2es.status (key, status, updated_at) SELECT $1, $5::text::jsonb, now() \
                                     WHERE EXISTS (SELECT 1 FROM pg2es.leases WHERE key = $2 AND holder = $3 AND epoch = $4) \
                                     ON CONFLICT (key) DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
                                    &[&key_owned, &lease_owned, &holder, &epoch, &status],
                                )
                                .await;
                            if let Err(e) = written {
                                tracing::debug!(error = %e, "status not published");
                            }
                        }
                    }
                });
            }
        })
        .map_err(cannot)?;
    Ok(jobs)
}

/// A document's dead letters in `pg2es.dead_letters`, beside its state.
#[derive(Debug)]
pub struct PgDeadLetters {
    jobs: mpsc::Sender<Job>,
}

impl PgDeadLetters {
    /// On a connection of its own (`pg2es dlq replay`, which holds no lease).
    pub fn open(settings: &SourceSettings, key: &str) -> Result<PgDeadLetters> {
        Ok(PgDeadLetters { jobs: worker(settings, key, "", "", 0)? })
    }
}

impl crate::sink::DeadLetterStore for PgDeadLetters {
    fn append(&self, index: &str, rejected: &[(&str, u16, String)]) -> Result<()> {
        let ids = rejected.iter().map(|(id, _, _)| id.to_string()).collect();
        let statuses = rejected.iter().map(|(_, s, _)| i32::from(*s)).collect();
        let reasons = rejected.iter().map(|(_, _, r)| r.clone()).collect();
        let (reply, answer) = mpsc::channel();
        self.jobs.send(Job::DeadLetters(index.to_string(), ids, statuses, reasons, reply)).map_err(|_| PgStore::gone())?;
        answer.recv().map_err(|_| PgStore::gone())?.map(|_| ())
    }
}

impl PgStore {
    pub fn new(settings: &SourceSettings, key: &str, lease_key: &str, holder: &str, epoch: i64, fence: Arc<Fence>) -> Result<PgStore> {
        let jobs = worker(settings, key, lease_key, holder, epoch)?;
        Ok(PgStore { key: key.to_string(), lease_key: lease_key.to_string(), fence, jobs, reported: None })
    }

    /// The document's dead letters, kept beside its state, through this store's connection.
    pub fn dead_letters(&self) -> PgDeadLetters {
        PgDeadLetters { jobs: self.jobs.clone() }
    }

    fn gone() -> Error {
        Error::SourceSetup("the state store's thread has stopped".into())
    }
}

impl StateStore for PgStore {
    fn load(&mut self, index: &str) -> Result<Option<State>> {
        let (reply, answer) = mpsc::channel();
        self.jobs.send(Job::Load(reply)).map_err(|_| PgStore::gone())?;
        match answer.recv().map_err(|_| PgStore::gone())?? {
            Some(text) => parse_state(&row_name(&self.key), text.as_bytes(), index).map(Some),
            None => Ok(None),
        }
    }

    fn save(&mut self, state: &State) -> Result<()> {
        self.fence.check()?;
        let text = serde_json::to_string(state).map_err(|e| Error::State { path: row_name(&self.key), reason: e.to_string() })?;
        let (reply, answer) = mpsc::channel();
        self.jobs.send(Job::Save(text, state.delete_log.map(|d| d.to_string()), reply)).map_err(|_| PgStore::gone())?;
        match answer.recv().map_err(|_| PgStore::gone())?? {
            1 => Ok(()),
            _ => {
                self.fence.lose("another instance holds it now");
                Err(Error::LeaseLost { key: self.lease_key.clone(), why: "another instance holds it now: this state was not saved".into() })
            }
        }
    }

    /// Published every [`REPORT_EVERY`] at most (a replication run reports 5 times a second),
    /// and at once when its error or its wait changes.
    fn report(&mut self, status: &RunStatus) {
        if self.fence.check().is_err() {
            return;
        }
        let trouble = serde_json::to_string(&(&status.health.waiting, &status.health.last_error)).unwrap_or_default();
        if self.reported.as_ref().is_some_and(|(at, was)| at.elapsed() < REPORT_EVERY && *was == trouble) {
            return;
        }
        if let Ok(text) = serde_json::to_string(status) {
            if self.jobs.send(Job::Report(text)).is_ok() {
                self.reported = Some((std::time::Instant::now(), trouble));
            }
        }
    }
}
