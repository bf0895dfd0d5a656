//! The state in Postgres (`PG2ES_STATE_STORE=postgres`): one row of `pg2es.state` per document,
//! keyed by its state file's name as configured. A save happens only while the saver's lease
//! is the current one: the lease row is locked (`FOR SHARE`) by the saving statement itself, so a
//! takeover waits for it, and a leader whose lease moved on saves nothing and stops.
//!
//! The store's calls are blocking, as a file's fsync is ([`crate::checkpoint::StateStore`]): each
//! runs on a thread of the store's own, with its own connection and runtime.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use crate::checkpoint::{parse_state, State, StateStore};
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::source::SourceSettings;

enum Job {
    Load(mpsc::Sender<Result<Option<String>>>),
    Save(String, mpsc::Sender<Result<u64>>),
}

/// One document's row in `pg2es.state`, saved under the lease `lease_key` held as `holder` in
/// `epoch`.
#[derive(Debug)]
pub struct PgStore {
    key: String,
    lease_key: String,
    fence: Arc<Fence>,
    jobs: mpsc::Sender<Job>,
}

/// How errors name a row: as a path, since the state's errors name its file.
pub fn row_name(key: &str) -> PathBuf {
    PathBuf::from(format!("pg2es.state[{key}]"))
}

impl PgStore {
    pub fn new(settings: &SourceSettings, key: &str, lease_key: &str, holder: &str, epoch: i64, fence: Arc<Fence>) -> Result<PgStore> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (settings, key_owned, lease_owned, holder) = (settings.clone(), key.to_string(), lease_key.to_string(), holder.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|source| Error::Io {
            context: "cannot start the state store's thread",
            path: row_name(key),
            source,
        })?;
        std::thread::Builder::new()
            .name("pg2es-state".into())
            .spawn(move || {
                let mut client: Option<tokio_postgres::Client> = None;
                while let Ok(job) = inbox.recv() {
                    runtime.block_on(async {
                        if client.as_ref().is_none_or(|c| c.is_closed()) {
                            client = crate::source::delete_log::connect_with(&settings).await.map_err(|e| tracing::debug!(error = %e, "state store: cannot connect")).ok();
                        }
                        let Some(c) = client.as_ref() else {
                            let down = || Error::SourceSetup("the state store cannot reach Postgres".into());
                            match job {
                                Job::Load(reply) => drop(reply.send(Err(down()))),
                                Job::Save(_, reply) => drop(reply.send(Err(down()))),
                            }
                            return;
                        };
                        match job {
                            Job::Load(reply) => {
                                let row = c.query_opt("SELECT state::text FROM pg2es.state WHERE key = $1", &[&key_owned]).await;
                                let out = row.map_err(Error::postgres("read the state")).and_then(|r| {
                                    r.map(|r| r.try_get::<_, String>(0).map_err(Error::postgres("read the state"))).transpose()
                                });
                                let _ = reply.send(out);
                            }
                            Job::Save(state, reply) => {
                                let saved = c
                                    .execute(
                                        "WITH lease AS (SELECT 1 FROM pg2es.leases WHERE key = $2 AND holder = $3 AND epoch = $4 AND expires_at > now() FOR SHARE) \
                                         INSERT INTO pg2es.state (key, state, saved_at) SELECT $1, $5::text::jsonb, now() FROM lease \
                                         ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, saved_at = EXCLUDED.saved_at",
                                        &[&key_owned, &lease_owned, &holder, &epoch, &state],
                                    )
                                    .await
                                    .map_err(Error::postgres("save the state"));
                                let _ = reply.send(saved);
                            }
                        }
                    });
                }
            })
            .map_err(|source| Error::Io { context: "cannot start the state store's thread", path: row_name(key), source })?;
        Ok(PgStore { key: key.to_string(), lease_key: lease_key.to_string(), fence, jobs })
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
        self.jobs.send(Job::Save(text, reply)).map_err(|_| PgStore::gone())?;
        match answer.recv().map_err(|_| PgStore::gone())?? {
            1 => Ok(()),
            _ => {
                self.fence.lose("another instance holds it now");
                Err(Error::LeaseLost { key: self.lease_key.clone(), why: "another instance holds it now: this state was not saved".into() })
            }
        }
    }
}
