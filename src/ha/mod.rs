//! Several `pg2es run` processes with the same settings (`PG2ES_STATE_STORE=postgres`): each
//! document has one leader at a time, the others stand by, and the state lives in Postgres
//! ([`store::PgStore`]), so whoever leads next reads on from where the last one stopped.
//!
//! Everything is in pg2es's own schema of the source database (`pg2es`):
//! - `pg2es.leases`: per key (a document's state key, or the run's slot in replication mode), the
//!   holder, an epoch that grows at each takeover, and when the lease runs out (the server's
//!   clock: instances need no common clock). The leader renews it every third of
//!   `PG2ES_LEASE_SEC`; a standby takes it once it has run out, or at once when the leader's
//!   session is gone: each instance holds a session advisory lock named after it for its whole
//!   life, which Postgres frees when its connection dies, so a killed leader is replaced within a
//!   second or two (a paused one keeps its session, and is replaced once its lease runs out).
//! - `pg2es.state`: each document's state, saved only while the saver's lease (holder and epoch)
//!   is the current one, in the same statement: a leader that lost its lease saves nothing.
//! - `pg2es.instances`: the live instances (a heartbeat), so the documents spread over them:
//!   an instance leads at most its share, the documents divided by the live instances, rounded
//!   up, and hands back one above it.
//!
//! Before each request to Elasticsearch and each save, the leader checks its lease ([`Fence`]):
//! past its last renewal plus the lease (less a second), it writes nothing, so a leader that was
//! paused (SIGSTOP) or cut off writes nothing after a standby may have taken over.

pub mod store;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::settings::{PG2ES_INSTANCE, PG2ES_STATE_STORE};
use crate::source::SourceSettings;

/// pg2es's tables for leadership and the state, created when missing.
const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS pg2es;
CREATE TABLE IF NOT EXISTS pg2es.leases (
    key text PRIMARY KEY,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    since timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    given_up boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS pg2es.state (
    key text PRIMARY KEY,
    state jsonb NOT NULL,
    saved_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS pg2es.dead_letters (
    key text NOT NULL,
    id text NOT NULL,
    index text NOT NULL,
    status integer NOT NULL,
    reason text NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_key ON pg2es.dead_letters (key, at);
CREATE TABLE IF NOT EXISTS pg2es.status (
    key text PRIMARY KEY,
    status jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS pg2es.instances (
    id text PRIMARY KEY,
    started timestamptz NOT NULL,
    seen_at timestamptz NOT NULL
);";

/// Who is this process, for the leases: `PG2ES_INSTANCE`, else `<host>:<pid>`.
pub fn instance_id(configured: Option<&str>) -> String {
    configured.map(str::to_string).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).unwrap_or_else(|| "host".into());
        format!("{host}:{}", std::process::id())
    })
}

/// The lease and the instances' registry, on one connection of this process (its advisory locks
/// say the leader lives).
pub struct Coordinator {
    settings: SourceSettings,
    instance: String,
    ttl: Duration,
    client: tokio::sync::Mutex<Option<Client>>,
    /// Keys this instance leads now.
    held: AtomicUsize,
    connected_before: std::sync::atomic::AtomicBool,
}

/// A lease this instance holds.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub key: String,
    pub epoch: i64,
    pub fence: Arc<Fence>,
    /// Who held it before, and why it could be taken: `given up`, `ran out` (the holder was
    /// paused, cut off, or stopped without giving it up) or `holder gone` (its session ended).
    pub previous: Option<(String, String)>,
}

impl Coordinator {
    /// Connects, creates pg2es's tables when missing, and registers this instance.
    pub async fn start(settings: &SourceSettings, instance: String, ttl: Duration) -> Result<Arc<Coordinator>> {
        let c = Arc::new(Coordinator {
            settings: settings.clone(),
            instance,
            ttl,
            client: tokio::sync::Mutex::new(None),
            held: AtomicUsize::new(0),
            connected_before: Default::default(),
        });
        c.with_client("create pg2es's tables", |client| {
            Box::pin(async move {
                // Two instances starting at once must not race on CREATE TABLE.
                create_tables(client).await
            })
        })
        .await?;
        c.heartbeat().await?;
        Ok(c)
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Runs `work` on the connection, opening it when there is none; a failed one is dropped, so
    /// the next call opens a new one (this instance's advisory locks went with it).
    async fn with_client<T>(
        &self,
        what: &'static str,
        work: impl for<'c> FnOnce(&'c Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'c>>,
    ) -> Result<T> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let client = crate::source::delete_log::connect_with(&self.settings).await?;
            // This instance lives while this session does (a standby reads it so).
            let row =
                client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(&self.instance)]).await.map_err(Error::postgres("say this instance lives"))?;
            if !row.try_get::<_, bool>(0).map_err(Error::postgres("say this instance lives"))? {
                if self.connected_before.load(Ordering::SeqCst) {
                    // The session before this one has not ended on the server yet.
                    return Err(Error::Unreadable { context: "say this instance lives", reason: "its earlier session still holds its lock".into() });
                }
                return Err(Error::Config(format!(
                    "{PG2ES_INSTANCE}={}: another live pg2es process has this name (its session holds the name's lock): give each instance its own, or leave {PG2ES_INSTANCE} unset",
                    self.instance
                )));
            }
            *guard = Some(client);
            self.connected_before.store(true, Ordering::SeqCst);
        }
        let client = guard.as_ref().ok_or_else(|| Error::SourceSetup(format!("no connection to {what}")))?;
        let out = work(client).await;
        if out.is_err() && client.is_closed() {
            *guard = None;
        }
        out
    }

    /// Says this instance lives, and counts the live ones (seen within a lease).
    pub async fn heartbeat(&self) -> Result<usize> {
        let (id, ttl) = (self.instance.clone(), self.ttl.as_secs_f64());
        self.with_client("say this instance lives", move |client| {
            Box::pin(async move {
                client
                    .execute(
                        "INSERT INTO pg2es.instances (id, started, seen_at) VALUES ($1, now(), now()) ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                        &[&id],
                    )
                    .await
                    .map_err(Error::postgres("say this instance lives"))?;
                // Rows of instances gone for a day are of no use to anyone.
                client
                    .execute("DELETE FROM pg2es.instances WHERE seen_at < now() - interval '1 day'", &[])
                    .await
                    .map_err(Error::postgres("count the live instances"))?;
                // An instance whose lock is free is gone (killed): it counts no more, at once.
                let rows = client
                    .query("SELECT id FROM pg2es.instances WHERE seen_at > now() - make_interval(secs => $1) AND id <> $2", &[&ttl, &id])
                    .await
                    .map_err(Error::postgres("count the live instances"))?;
                let mut live = 1;
                for row in rows {
                    let other: String = row.try_get(0).map_err(Error::postgres("count the live instances"))?;
                    let lock = lock_key(&other);
                    let free: bool = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&lock])
                        .await
                        .and_then(|r| r.try_get(0))
                        .map_err(Error::postgres("count the live instances"))?;
                    if free {
                        client.execute("SELECT pg_advisory_unlock($1)", &[&lock]).await.map_err(Error::postgres("count the live instances"))?;
                        client.execute("DELETE FROM pg2es.instances WHERE id = $1", &[&other]).await.map_err(Error::postgres("count the live instances"))?;
                    } else {
                        live += 1;
                    }
                }
                Ok(live)
            })
        })
        .await
    }

    /// How many keys this instance should lead at most: `keys` shared by the live instances.
    pub fn share(keys: usize, live: usize) -> usize {
        keys.div_ceil(live.max(1))
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Takes the lease of `key` when it is free, has run out, or its holder's session is gone;
    /// `None` while another instance holds it.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<Leadership>> {
        let (key_owned, id, ttl) = (key.to_string(), self.instance.clone(), self.ttl.as_secs_f64());
        let sent = Instant::now();
        let taken = self
            .with_client("take a lease", move |client| {
                Box::pin(async move {
                    // The holder's session is gone when its lock is free (taken, then let go).
                    let holder: Option<String> = client
                        .query_opt("SELECT holder FROM pg2es.leases WHERE key = $1", &[&key_owned])
                        .await
                        .map_err(Error::postgres("take a lease"))?
                        .map(|r| r.try_get(0))
                        .transpose()
                        .map_err(Error::postgres("take a lease"))?;
                    let holder_gone = match holder.filter(|h| *h != id) {
                        Some(h) => {
                            let lock = lock_key(&h);
                            let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock]).await.map_err(Error::postgres("take a lease"))?;
                            let free: bool = row.try_get(0).map_err(Error::postgres("take a lease"))?;
                            if free {
                                client.execute("SELECT pg_advisory_unlock($1)", &[&lock]).await.map_err(Error::postgres("take a lease"))?;
                            }
                            free
                        }
                        None => false,
                    };
                    let row = client
                        .query_opt(
                            "WITH old AS (SELECT holder, CASE WHEN given_up THEN 'given up' WHEN expires_at <= now() THEN 'ran out' ELSE 'holder gone' END AS why FROM pg2es.leases WHERE key = $1) \
                             INSERT INTO pg2es.leases AS l (key, holder, epoch, since, expires_at) \
                             VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3)) \
                             ON CONFLICT (key) DO UPDATE SET holder = EXCLUDED.holder, epoch = l.epoch + 1, since = now(), expires_at = EXCLUDED.expires_at, given_up = false \
                             WHERE l.expires_at <= now() OR $4 OR l.holder = $2 \
                             RETURNING l.epoch, (SELECT holder FROM old), (SELECT why FROM old)",
                            &[&key_owned, &id, &ttl, &holder_gone],
                        )
                        .await
                        .map_err(Error::postgres("take a lease"))?;
                    match row {
                        Some(row) => {
                            let epoch: i64 = row.try_get(0).map_err(Error::postgres("take a lease"))?;
                            let before: Option<String> = row.try_get(1).map_err(Error::postgres("take a lease"))?;
                            let why: Option<String> = row.try_get(2).map_err(Error::postgres("take a lease"))?;
                            Ok(Some((epoch, before.map(|b| (b, why.unwrap_or_default())))))
                        }
                        None => Ok(None),
                    }
                })
            })
            .await?;
        Ok(taken.map(|(epoch, previous)| {
            self.held.fetch_add(1, Ordering::SeqCst);
            Leadership {
                key: key.to_string(),
                epoch,
                fence: Arc::new(Fence::new(key, sent + self.ttl.saturating_sub(MARGIN))),
                previous: previous.filter(|(holder, _)| *holder != self.instance),
            }
        }))
    }

    /// Renews the lease: `false` when another instance holds it now (the fence is then lost).
    pub async fn renew(&self, lead: &Leadership) -> Result<bool> {
        let (key, id, epoch, ttl) = (lead.key.clone(), self.instance.clone(), lead.epoch, self.ttl.as_secs_f64());
        let sent = Instant::now();
        let kept = self
            .with_client("renew a lease", move |client| {
                Box::pin(async move {
                    let n = client
                        .execute(
                            "UPDATE pg2es.leases SET expires_at = now() + make_interval(secs => $4) WHERE key = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
                            &[&key, &id, &epoch, &ttl],
                        )
                        .await
                        .map_err(Error::postgres("renew a lease"))?;
                    Ok(n == 1)
                })
            })
            .await?;
        if kept {
            lead.fence.extend(sent + self.ttl.saturating_sub(MARGIN));
        } else {
            lead.fence.lose("another instance holds it now (it ran out before it was renewed)");
        }
        Ok(kept)
    }

    /// Gives the lease up, so that a standby takes it at once.
    pub async fn release(&self, lead: &Leadership) {
        lead.fence.lose("given up by this instance");
        self.held.fetch_sub(1, Ordering::SeqCst);
        let (key, id, epoch) = (lead.key.clone(), self.instance.clone(), lead.epoch);
        let released = self
            .with_client("give a lease up", move |client| {
                Box::pin(async move {
                    client
                        .execute(
                            "UPDATE pg2es.leases SET expires_at = now(), given_up = true WHERE key = $1 AND holder = $2 AND epoch = $3",
                            &[&key, &id, &epoch],
                        )
                        .await
                        .map_err(Error::postgres("give a lease up"))?;
                    Ok(())
                })
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(key = %lead.key, error = %e, "could not give the lease up; it runs out by itself");
        }
    }

    /// Who holds `key`'s lease, since when, and whether it has run out.
    pub async fn holder(&self, key: &str) -> Result<Option<(String, String, bool)>> {
        let key = key.to_string();
        self.with_client("read a lease", move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt("SELECT holder, since::text, expires_at <= now() FROM pg2es.leases WHERE key = $1", &[&key])
                    .await
                    .map_err(Error::postgres("read a lease"))?;
                row.map(|r| {
                    Ok((
                        r.try_get(0).map_err(Error::postgres("read a lease"))?,
                        r.try_get(1).map_err(Error::postgres("read a lease"))?,
                        r.try_get(2).map_err(Error::postgres("read a lease"))?,
                    ))
                })
                .transpose()
            })
        })
        .await
    }

    /// This instance leaves the registry (a clean stop): the others' share grows at once.
    pub async fn leave(&self) {
        let id = self.instance.clone();
        let _ = self
            .with_client("leave", move |client| {
                Box::pin(async move { client.execute("DELETE FROM pg2es.instances WHERE id = $1", &[&id]).await.map(|_| ()).map_err(Error::postgres("leave")) })
            })
            .await;
    }
}

/// Kept off a lease's end: what the leader counts on is the renewal's send time plus the lease
/// less this, so that a lease running out on the server's clock finds it stopped already.
const MARGIN: Duration = Duration::from_secs(1);

/// The advisory lock an instance holds for its life, named after it.
fn lock_key(key: &str) -> i64 {
    // FNV-1a: stable across builds and hosts (every instance must name the same lock).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"pg2es instance ".iter().chain(key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

fn schema_error(e: tokio_postgres::Error) -> Error {
    match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => Error::SourceSetup(format!(
            "{PG2ES_STATE_STORE}=postgres keeps the state in schema pg2es of the source database, which this role may not create ({}): GRANT CREATE ON DATABASE to it, or create schema pg2es owned by it",
            e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
        )),
        _ => Error::postgres("create pg2es's tables")(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_spread_over_the_live_instances() {
        assert_eq!(Coordinator::share(3, 3), 1);
        assert_eq!(Coordinator::share(3, 2), 2);
        assert_eq!(Coordinator::share(3, 1), 3);
        assert_eq!(Coordinator::share(1, 5), 1);
        assert_eq!(Coordinator::share(3, 0), 3);
    }

    #[test]
    fn the_lock_of_a_key_is_the_same_everywhere() {
        assert_eq!(lock_key("state/pg2es-state.json"), lock_key("state/pg2es-state.json"));
        assert_ne!(lock_key("state/pg2es-state.json"), lock_key("state/pg2es-state.genres.json"));
    }
}

/// One connection for a one-off look at pg2es's tables (`status`, `verify --repair`, `reset`,
/// `state import`); `None` when they are not there yet.
async fn tables(settings: &SourceSettings) -> Result<Option<Client>> {
    let client = crate::source::delete_log::connect_with(settings).await?;
    Ok(has_tables(&client).await?.then_some(client))
}

/// Creates pg2es's tables when missing; two instances starting at once do not race on them.
async fn create_tables(client: &Client) -> Result<()> {
    client.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock(hashtext('pg2es schema')); {SCHEMA_SQL} COMMIT;")).await.map_err(schema_error)
}

async fn has_tables(client: &Client) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass('pg2es.state') IS NOT NULL AND to_regclass('pg2es.leases') IS NOT NULL", &[])
        .await
        .map_err(Error::postgres("look for pg2es's tables"))?;
    row.try_get::<_, bool>(0).map_err(Error::postgres("look for pg2es's tables"))
}

/// The state saved under `key`, read without a lease (it is one whole row, possibly one save old).
pub async fn read_state(settings: &SourceSettings, key: &str, index: &str) -> Result<Option<crate::checkpoint::State>> {
    let Some(client) = tables(settings).await? else { return Ok(None) };
    let row = client.query_opt("SELECT state::text FROM pg2es.state WHERE key = $1", &[&key]).await.map_err(Error::postgres("read the state"))?;
    match row {
        Some(r) => {
            let text: String = r.try_get(0).map_err(Error::postgres("read the state"))?;
            crate::checkpoint::parse_state(&store::row_name(key), text.as_bytes(), index).map(Some)
        }
        None => Ok(None),
    }
}

/// Who leads `key`, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseStatus {
    pub holder: String,
    pub since: String,
    pub epoch: i64,
    /// The lease has not run out (its holder renews it).
    pub held: bool,
}

pub async fn lease_status(settings: &SourceSettings, key: &str) -> Result<Option<LeaseStatus>> {
    let Some(client) = tables(settings).await? else { return Ok(None) };
    let row = client
        .query_opt("SELECT holder, since::text, epoch, expires_at > now() AND NOT given_up FROM pg2es.leases WHERE key = $1", &[&key])
        .await
        .map_err(Error::postgres("read a lease"))?;
    let read = Error::postgres("read a lease");
    row.map(|r| -> std::result::Result<LeaseStatus, tokio_postgres::Error> {
        Ok(LeaseStatus { holder: r.try_get(0)?, since: r.try_get(1)?, epoch: r.try_get(2)?, held: r.try_get(3)? })
    })
    .transpose()
    .map_err(read)
}

/// Removes the state and the published status saved under `key` (`pg2es reset`); refused while
/// an instance leads it.
pub async fn forget(settings: &SourceSettings, key: &str, lease_key: &str) -> Result<()> {
    if let Some(lease) = lease_status(settings, lease_key).await?.filter(|l| l.held) {
        return Err(Error::Led { key: lease_key.to_string(), holder: lease.holder, what: "reset runs" });
    }
    let Some(client) = tables(settings).await? else { return Ok(()) };
    client.execute("DELETE FROM pg2es.state WHERE key = $1", &[&key]).await.map_err(Error::postgres("remove the state"))?;
    if client.query_one("SELECT to_regclass('pg2es.status') IS NOT NULL", &[]).await.ok().and_then(|r| r.try_get::<_, bool>(0).ok()) == Some(true) {
        client.execute("DELETE FROM pg2es.status WHERE key = $1", &[&key]).await.map_err(Error::postgres("remove the status"))?;
    }
    Ok(())
}

/// Saves `state` under `key` when nothing is saved there yet (`pg2es state import`): `false`
/// when a state is there already (it is kept).
pub async fn import(settings: &SourceSettings, key: &str, state: &crate::checkpoint::State) -> Result<bool> {
    let client = crate::source::delete_log::connect_with(settings).await?;
    create_tables(&client).await?;
    let text = serde_json::to_string(state).map_err(|e| Error::State { path: store::row_name(key), reason: e.to_string() })?;
    let n = client
        .execute("INSERT INTO pg2es.state (key, state, saved_at) VALUES ($1, $2::text::jsonb, now()) ON CONFLICT (key) DO NOTHING", &[&key, &text])
        .await
        .map_err(Error::postgres("import the state"))?;
    Ok(n == 1)
}

/// A document's key in `pg2es.state`: its state file as configured, which tells the documents
/// and the deployments apart as the files did.
pub fn state_key(state_file: &std::path::Path) -> String {
    state_file.display().to_string()
}

/// The key of the lease a document is led under: its state key with polling; with replication
/// the run's slot (`slot`), which one session at a time reads for all of the run's documents.
pub fn lease_key(state_file: &std::path::Path, slot: Option<&str>) -> String {
    match slot {
        Some(slot) => format!("slot {slot}"),
        None => state_key(state_file),
    }
}

/// A document's dead letters in `pg2es.dead_letters` (`pg2es dlq list`), oldest first: id,
/// index, status, reason, time.
pub async fn dead_letters(settings: &SourceSettings, key: &str) -> Result<Vec<(String, String, i32, String, String)>> {
    let Some(client) = tables(settings).await? else { return Ok(Vec::new()) };
    let read = || Error::postgres("read the dead letters");
    let rows = client
        .query("SELECT id, index, status, reason, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM pg2es.dead_letters WHERE key = $1 ORDER BY at", &[&key])
        .await
        .map_err(read())?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(read())?,
                r.try_get(1).map_err(read())?,
                r.try_get(2).map_err(read())?,
                r.try_get(3).map_err(read())?,
                r.try_get(4).map_err(read())?,
            ))
        })
        .collect()
}

/// What the document's leader last published of its run (`pg2es.status`), from any host; `None`
/// when no leader has (or pg2es's tables are not there yet).
pub async fn read_run_status(settings: &SourceSettings, key: &str) -> Result<Option<crate::checkpoint::RunStatus>> {
    let Some(client) = tables(settings).await? else { return Ok(None) };
    let read = || Error::postgres("read the status");
    // A deployment whose tables an older pg2es made has none until a newer `run` starts.
    if !client.query_one("SELECT to_regclass('pg2es.status') IS NOT NULL", &[]).await.map_err(read())?.try_get::<_, bool>(0).map_err(read())? {
        return Ok(None);
    }
    let row = client.query_opt("SELECT status::text FROM pg2es.status WHERE key = $1", &[&key]).await.map_err(read())?;
    let Some(text) = row.map(|r| r.try_get::<_, String>(0)).transpose().map_err(read())? else { return Ok(None) };
    serde_json::from_str(&text).map(Some).map_err(|e| Error::State { path: store::row_name(&format!("status {key}")), reason: e.to_string() })
}

/// How many dead letters of `index` the document has in `pg2es.dead_letters`.
pub async fn count_dead_letters(settings: &SourceSettings, key: &str, index: &str) -> Result<u64> {
    let Some(client) = tables(settings).await? else { return Ok(0) };
    let read = || Error::postgres("count the dead letters");
    let n: i64 = client
        .query_one("SELECT count(*) FROM pg2es.dead_letters WHERE key = $1 AND index = $2", &[&key, &index])
        .await
        .map_err(read())?
        .try_get(0)
        .map_err(read())?;
    Ok(n as u64)
}

/// The distinct ids of a document's dead letters of `index`, and the server's time as they were
/// read: what a replay sends again, and then removes ([`forget_dead_letters`]).
pub async fn dead_letter_ids(settings: &SourceSettings, key: &str, index: &str) -> Result<(Vec<String>, String)> {
    let client = crate::source::delete_log::connect_with(settings).await?;
    let read = || Error::postgres("read the dead letters");
    let now: String = client.query_one("SELECT now()::text", &[]).await.map_err(read())?.try_get(0).map_err(read())?;
    if !has_tables(&client).await? {
        return Ok((Vec::new(), now));
    }
    let rows = client
        .query("SELECT DISTINCT id FROM pg2es.dead_letters WHERE key = $1 AND index = $2 AND at <= $3::text::timestamptz", &[&key, &index, &now])
        .await
        .map_err(read())?;
    Ok((rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>().map_err(read())?, now))
}

/// Removes the dead letters of `index` recorded up to `until` (a replay's start: what was
/// refused again during it stays).
pub async fn forget_dead_letters(settings: &SourceSettings, key: &str, index: &str, until: &str) -> Result<u64> {
    let client = crate::source::delete_log::connect_with(settings).await?;
    client
        .execute("DELETE FROM pg2es.dead_letters WHERE key = $1 AND index = $2 AND at <= $3::text::timestamptz", &[&key, &index, &until])
        .await
        .map_err(Error::postgres("remove the replayed dead letters"))
}
