//! The replication source (`PG2ES_SOURCE=replication`): every committed insert, update, delete
//! and truncate of the five tables, in commit order, from a `pgoutput` logical replication slot.
//!
//! The stream is read through SQL on the source's own connection: each cycle peeks the slot's
//! changes committed before the WAL position read at its start (`pg_logical_slot_peek_binary_changes`),
//! and the next cycle advances the slot to the position saved once the index has them
//! (`pg_replication_slot_advance`). A change names films to read again, as polling does: a film
//! row, a link row (its film, before and after), a renamed genre or person (every film linked to
//! it). So a change read twice, or one already in the full load's snapshot, is harmless, and the
//! first full load needs no exported snapshot: the slot is created before it starts, and every
//! change after that point is streamed. Every write carries the stream position the film was read
//! after as its version (`external_gte`): a late, older state never overwrites a newer one.

use std::collections::BTreeSet;
use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::change::{ChangeBatch, ChangeSource, CyclePlan, ReadReport, Receipt};
use super::pgoutput::{self, format_lsn, parse_lsn, Lsn, Message, Relations};
use super::reading::{self, Versioning};
use super::{PgSource, PgTls};
use crate::checkpoint::{PositionDelta, State, Stream};
use crate::config::{Config, ReplicationSettings};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::shutdown::Shutdown;

/// Changes (rows of the peek) decoded per cycle at most; whole transactions are always read, and
/// what is left is read by the next cycle right away.
const WINDOW_CHANGES: i32 = 20_000;

/// How often the slot's retained WAL and lag are logged.
const SLOT_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The five tables the publication holds.
const TABLES: [&str; 5] = ["film_work", "genre", "person", "genre_film_work", "person_film_work"];

pub struct ReplicationSource {
    config: Config,
    settings: ReplicationSettings,
    tls: PgTls,
    pg: Option<PgSource>,
    /// Prerequisites and publication checked on this connection.
    checked: bool,
    /// This cycle's window ends here: changes committed before it are read.
    until: Option<Lsn>,
    /// When the stream was last read to its end: the lag in the log is the time since.
    caught_up_at: std::sync::Mutex<Instant>,
    reported_at: Option<Instant>,
}

impl ReplicationSource {
    pub fn new(config: &Config, settings: &ReplicationSettings) -> Result<ReplicationSource> {
        Ok(ReplicationSource {
            config: config.clone(),
            settings: settings.clone(),
            tls: PgTls::from_config(config)?,
            pg: None,
            checked: false,
            until: None,
            caught_up_at: std::sync::Mutex::new(Instant::now()),
            reported_at: None,
        })
    }

    fn pg(&self) -> Result<&PgSource> {
        self.pg.as_ref().ok_or_else(|| Error::SourceSetup("the replication source was read before it was prepared".into()))
    }

    /// Reads the slot's changes in this cycle's window and sends the films they name.
    async fn read_stream(&self, state: &State, tx: &mpsc::Sender<ChangeBatch>, report: &mut ReadReport) -> Result<()> {
        let (pg, until) = (self.pg()?, self.until.ok_or_else(|| Error::SourceSetup("no window: the source was not prepared".into()))?);
        let Some(from) = state.replication else { return Ok(()) };
        let window = read_window(pg, &self.settings, &self.config.pg_schema, until).await?;
        report.logged_films += window.films.len();
        let mut films = window.films;
        for (stream, ids) in [(Stream::Person, &window.persons), (Stream::Genre, &window.genres)] {
            if !ids.is_empty() {
                let ids: Vec<Uuid> = ids.iter().copied().collect();
                films.extend(pg.films_of(stream, &ids).await?);
            }
        }
        report.more = !window.exhausted;
        if window.exhausted {
            *self.caught_up_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        let position = if window.exhausted { until } else { window.last_commit_end.unwrap_or(from) };
        if position <= from && films.is_empty() && !window.reload {
            return Ok(());
        }
        let mut completes = vec![PositionDelta::Replication { lsn: position.max(from) }];
        if window.reload {
            tracing::warn!(schema = %self.config.pg_schema, "a source table was truncated: every film is loaded again, and documents of films that are gone are removed after");
            completes.push(PositionDelta::BeginFullLoad { heads: Vec::new() });
        }
        let ids: Vec<Uuid> = films.into_iter().collect();
        // Read after `position`: every state read now is at least as new as the stream there.
        reading::send_films(pg, tx, &ids, self.config.batch_size, Versioning::Fixed(position.max(from)), completes, Receipt::default()).await?;
        Ok(())
    }

}

/// Logs the slot's retained WAL and lag, with a warning past the threshold.
async fn report_slot(pg: &PgSource, settings: &ReplicationSettings, lag_sec: u64) -> Result<()> {
    let row = pg
        .client()
        .query_opt(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint, \
                    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&settings.slot],
        )
        .await
        .map_err(Error::postgres("read the replication slot"))?;
    let Some(row) = row else { return Ok(()) };
    let retained: Option<i64> = row.try_get(0).map_err(Error::postgres("read the replication slot"))?;
    let unconfirmed: Option<i64> = row.try_get(1).map_err(Error::postgres("read the replication slot"))?;
    let (retained, unconfirmed) = (retained.unwrap_or(0).max(0) as u64, unconfirmed.unwrap_or(0).max(0) as u64);
    if retained > settings.max_retained_bytes {
        tracing::warn!(slot = %settings.slot, retained_bytes = retained, unconfirmed_bytes = unconfirmed, lag_sec, limit_mb = settings.max_retained_bytes >> 20, "the replication slot retains more WAL than ETL_SLOT_MAX_RETAINED_MB: Postgres keeps it until pg2es has loaded the changes (an open transaction also holds it)");
    } else {
        tracing::info!(slot = %settings.slot, retained_bytes = retained, unconfirmed_bytes = unconfirmed, lag_sec, "replication slot");
    }
    Ok(())
}

/// What one window of the stream names.
#[derive(Debug, Default)]
struct Window {
    films: BTreeSet<Uuid>,
    /// Renamed (updated) people and genres: their films are read again.
    persons: BTreeSet<Uuid>,
    genres: BTreeSet<Uuid>,
    /// A table was truncated.
    reload: bool,
    /// The end of the last transaction read.
    last_commit_end: Option<Lsn>,
    /// Every change before the window's end was read (fewer than `WINDOW_CHANGES`).
    exhausted: bool,
}

const PEEK_SQL: &str = "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
     'proto_version', '1', 'publication_names', $4)";

async fn read_window(pg: &PgSource, settings: &ReplicationSettings, schema: &str, until: Lsn) -> Result<Window> {
    let until_text = format_lsn(until);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&settings.slot, &until_text, &WINDOW_CHANGES, &settings.publication];
    let rows = pg.client().query_raw(PEEK_SQL, params).await.map_err(Error::postgres("read the replication slot"))?;
    futures_util::pin_mut!(rows);
    let (mut window, mut relations, mut read) = (Window::default(), Relations::default(), 0);
    while let Some(row) = rows.next().await {
        let row = row.map_err(Error::postgres("read the replication slot"))?;
        read += 1;
        let data: &[u8] = row.try_get(0).map_err(Error::postgres("read the replication slot"))?;
        apply(&mut window, &mut relations, schema, pgoutput::decode(data).map_err(|e| Error::SourceSetup(e.to_string()))?)?;
    }
    window.exhausted = read < WINDOW_CHANGES as usize;
    Ok(window)
}

/// What one message adds to the window.
fn apply(window: &mut Window, relations: &mut Relations, schema: &str, message: Message) -> Result<()> {
    let ours = |relations: &Relations, id: u32| relations.get(id).is_some_and(|r| r.namespace == schema && TABLES.contains(&r.name.as_str()));
    match message {
        Message::Relation(r) => relations.remember(r),
        Message::Commit { end_lsn, .. } => window.last_commit_end = Some(end_lsn),
        Message::Truncate { relations: ids, .. } => window.reload |= ids.iter().any(|id| ours(relations, *id)),
        Message::Insert { relation, new } | Message::Update { relation, new, old: None } if ours(relations, relation) => {
            note(window, relations, relation, &new, false)?;
        }
        Message::Update { relation, new, old: Some(old) } if ours(relations, relation) => {
            note(window, relations, relation, &new, false)?;
            note(window, relations, relation, &old, true)?;
        }
        Message::Delete { relation, old } if ours(relations, relation) => note(window, relations, relation, &old, true)?,
        _ => {}
    }
    Ok(())
}

/// The films one row version of one of the five tables names. `gone`: an old row (deleted, or
/// before an update).
fn note(window: &mut Window, relations: &Relations, relation: u32, tuple: &pgoutput::Tuple, gone: bool) -> Result<()> {
    let uuid = |column: &str| -> Result<Option<Uuid>> {
        let text = relations.text(relation, tuple, column).map_err(|e| Error::SourceSetup(e.to_string()))?;
        text.map(|t| Uuid::parse_str(t).map_err(|_| Error::SourceSetup(format!("{column} {t:?} is not a uuid")))).transpose()
    };
    let table = relations.get(relation).map_or("", |r| r.name.as_str());
    match table {
        "film_work" => window.films.extend(uuid("id")?),
        "genre_film_work" | "person_film_work" => window.films.extend(uuid("film_work_id")?),
        // A renamed genre or person changes its films; a deleted one's links are deleted in the
        // same transaction (the foreign keys cascade), and those deletes name the films.
        "person" if !gone => window.persons.extend(uuid("id")?),
        "genre" if !gone => window.genres.extend(uuid("id")?),
        _ => {}
    }
    Ok(())
}

impl ChangeSource for ReplicationSource {
    async fn prepare(&mut self, state: &State) -> Result<CyclePlan> {
        if self.pg.as_ref().is_none_or(PgSource::is_closed) {
            let c = &self.config;
            let pg = PgSource::connect(&c.pg, &self.tls, &c.pg_schema, &c.timestamp_column).await?;
            tracing::info!(postgres_version = %pg.version(), schema = %c.pg_schema, slot = %self.settings.slot, publication = %self.settings.publication, "connected to postgres for logical replication");
            self.pg = Some(pg);
            self.checked = false;
        }
        let pg = self.pg.as_ref().ok_or_else(|| Error::SourceSetup("no connection".into()))?;
        let schema = self.config.pg_schema.clone();
        let identity = pg.identity(&schema).await?;
        if !self.checked {
            check_prerequisites(pg, &schema).await?;
            ensure_publication(pg, &schema, &self.settings.publication).await?;
        }
        let slot = ensure_slot(pg, &self.settings.slot).await?;
        let mut before = Vec::new();
        let reload = match (state.replication, slot) {
            (None, Slot::Created(at) | Slot::Existing(at)) => {
                before.push(PositionDelta::Replication { lsn: at });
                // A state that polling wrote: changes since its last cycle are not in the slot.
                !state.needs_full_load()
            }
            (Some(saved), Slot::Existing(confirmed)) => {
                if saved > confirmed {
                    advance_slot(pg, &self.settings.slot, saved).await?;
                }
                false
            }
            (Some(_), Slot::Created(at)) => {
                tracing::warn!(slot = %self.settings.slot, "the replication slot was gone and is created again: changes made meanwhile are lost to it, so every film is loaded again");
                before.push(PositionDelta::Replication { lsn: at });
                true
            }
        };
        if state.needs_full_load() || reload {
            before.push(PositionDelta::BeginFullLoad { heads: Vec::new() });
            tracing::info!("full load: every film is read in id order; the replication stream is read from where the slot starts once it is done");
        }
        let until = pg.wal_position().await?;
        self.until = Some(until);
        self.checked = true;
        if self.reported_at.is_none_or(|t| t.elapsed() >= SLOT_REPORT_EVERY) {
            self.reported_at = Some(Instant::now());
            let lag_sec = self.caught_up_at.lock().unwrap_or_else(|p| p.into_inner()).elapsed().as_secs();
            report_slot(pg, &self.settings, lag_sec).await?;
        }
        let full_load = state.needs_full_load() || reload || state.snapshot_in_progress().is_some();
        Ok(CyclePlan { identity: Some(identity), before, full_load })
    }

    async fn read(&self, state: &State, tx: mpsc::Sender<ChangeBatch>, shutdown: &Shutdown, progress: Option<&Progress>) -> Result<ReadReport> {
        let mut report = ReadReport::default();
        if let Some(snapshot) = state.snapshot_in_progress() {
            // Versioned with the stream's position at the load's start: every change after it
            // carries a higher version.
            let (films, finished) = reading::full_load(self.pg()?, snapshot, self.config.batch_size, state.replication, &tx, shutdown, progress).await?;
            report.rows.insert(Stream::FilmWork, films);
            if !finished {
                return Ok(report);
            }
        }
        if !shutdown.is_triggered() {
            self.read_stream(state, &tx, &mut report).await?;
        }
        Ok(report)
    }

    fn acknowledge(&self, _: Receipt) {}

    async fn existing(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        self.pg()?.existing(ids).await
    }
}

enum Slot {
    /// Created now, at this position.
    Created(Lsn),
    /// Already there, confirmed up to this position.
    Existing(Lsn),
}

fn lsn_of(text: String) -> Result<Lsn> {
    parse_lsn(&text).ok_or_else(|| Error::SourceSetup(format!("{text:?} is not a WAL position")))
}

async fn ensure_slot(pg: &PgSource, slot: &str) -> Result<Slot> {
    let row = pg
        .client()
        .query_opt(
            "SELECT plugin, database = current_database(), confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::postgres("read the replication slot"))?;
    if let Some(row) = row {
        let plugin: Option<String> = row.try_get(0).map_err(Error::postgres("read the replication slot"))?;
        let here: Option<bool> = row.try_get(1).map_err(Error::postgres("read the replication slot"))?;
        if plugin.as_deref() != Some("pgoutput") || here != Some(true) {
            return Err(Error::SourceSetup(format!(
                "replication slot {slot} exists but is not a pgoutput slot of this database; set PG_REPLICATION_SLOT to another name, or drop it (SELECT pg_drop_replication_slot('{slot}'))"
            )));
        }
        let confirmed: Option<String> = row.try_get(2).map_err(Error::postgres("read the replication slot"))?;
        return Ok(Slot::Existing(lsn_of(confirmed.unwrap_or_default())?));
    }
    // Waits for transactions open now to end: the slot then starts at a consistent point.
    let row = pg
        .client()
        .query_one("SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await
        .map_err(|e| setup_error(e, &format!("create replication slot {slot}")))?;
    let at = lsn_of(row.try_get(0).map_err(Error::postgres("create the replication slot"))?)?;
    tracing::info!(slot, at = %format_lsn(at), "created the replication slot: Postgres keeps WAL from here until pg2es has loaded it (drop the slot if pg2es is retired)");
    Ok(Slot::Created(at))
}

async fn advance_slot(pg: &PgSource, slot: &str, to: Lsn) -> Result<()> {
    pg.client()
        .execute("SELECT pg_catalog.pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&slot, &format_lsn(to)])
        .await
        .map_err(Error::postgres("advance the replication slot"))?;
    Ok(())
}

/// `wal_level`, the role's `REPLICATION`, and replica identities that give a deleted row's film.
async fn check_prerequisites(pg: &PgSource, schema: &str) -> Result<()> {
    let c = pg.client();
    let row = c
        .query_one("SELECT current_setting('wal_level'), (SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), current_user::text", &[])
        .await
        .map_err(Error::postgres("check replication settings"))?;
    let (wal_level, may_replicate, role): (String, Option<bool>, String) = (row.get(0), row.get(1), row.get(2));
    if wal_level != "logical" {
        return Err(Error::SourceSetup(format!(
            "wal_level is {wal_level}, logical replication needs logical: set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart Postgres, or use PG2ES_SOURCE=polling"
        )));
    }
    if may_replicate != Some(true) {
        return Err(Error::SourceSetup(format!(
            "role {role} lacks the REPLICATION attribute that replication slots need: ALTER ROLE {role} REPLICATION (as a superuser), or use PG2ES_SOURCE=polling"
        )));
    }
    // Which columns a deleted row's old tuple carries, per table.
    let rows = c
        .query(
            "SELECT c.relname::text, c.relreplident::text, \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.pg_index i \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                          WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = ANY($2)",
            &[&schema, &TABLES.to_vec()],
        )
        .await
        .map_err(Error::postgres("check replica identities"))?;
    for (table, needed) in [("film_work", "id"), ("genre_film_work", "film_work_id"), ("person_film_work", "film_work_id")] {
        let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == table) else {
            return Err(Error::SourceSchema(format!("table {schema}.{table} not found; check PG_SCHEMA")));
        };
        let (identity, key): (String, Vec<String>) = (row.get(1), row.get(2));
        if identity != "f" && !key.iter().any(|k| k == needed) {
            return Err(Error::SourceSetup(format!(
                "the replica identity of {schema}.{table} does not give a deleted row's {needed}, so its film could not be found: ALTER TABLE {schema}.{table} REPLICA IDENTITY FULL"
            )));
        }
    }
    Ok(())
}

async fn ensure_publication(pg: &PgSource, schema: &str, publication: &str) -> Result<()> {
    let c = pg.client();
    let present: Vec<String> = c
        .query("SELECT tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname = $2", &[&publication, &schema])
        .await
        .map_err(Error::postgres("read the publication"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exists = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)", &[&publication])
        .await
        .map_err(Error::postgres("read the publication"))?
        .get::<_, bool>(0);
    let quoted: Vec<String> = TABLES.iter().map(|t| format!("\"{schema}\".\"{t}\"")).collect();
    if !exists {
        let sql = format!("CREATE PUBLICATION \"{publication}\" FOR TABLE {}", quoted.join(", "));
        c.batch_execute(&sql).await.map_err(|e| setup_error(e, &format!("create publication {publication} (as an owner of the tables: {sql})")))?;
        tracing::info!(publication, "created the publication");
        return Ok(());
    }
    let missing: Vec<&str> = TABLES.iter().copied().filter(|t| !present.iter().any(|p| p == t)).collect();
    if !missing.is_empty() {
        let add: Vec<String> = missing.iter().map(|t| format!("\"{schema}\".\"{t}\"")).collect();
        return Err(Error::SourceSetup(format!(
            "publication {publication} lacks {}: ALTER PUBLICATION \"{publication}\" ADD TABLE {}",
            missing.join(", "),
            add.join(", ")
        )));
    }
    Ok(())
}

/// A refused setup step: missing privileges are the operator's to fix, the rest as usual.
fn setup_error(e: tokio_postgres::Error, what: &str) -> Error {
    match e.code() {
        Some(code) if *code == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => Error::SourceSetup(format!("cannot {what}: {}", e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string()))),
        _ => Error::Postgres { context: "set up logical replication", source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(id: u32, name: &str, columns: &[&str]) -> Message {
        Message::Relation(pgoutput::Relation {
            id,
            namespace: "content".into(),
            name: name.into(),
            replica_identity: b'f',
            columns: columns.iter().map(|c| pgoutput::Column { key: true, name: c.to_string(), type_oid: 25, type_modifier: -1 }).collect(),
        })
    }

    fn text(values: &[&str]) -> pgoutput::Tuple {
        values.iter().map(|v| pgoutput::Datum::Text(v.to_string())).collect()
    }

    const A: &str = "00000000-0000-0000-0000-00000000000a";
    const B: &str = "00000000-0000-0000-0000-00000000000b";
    const P: &str = "00000000-0000-0000-0000-0000000000ff";

    #[test]
    fn changes_name_the_films_to_read_again() {
        let (mut w, mut r) = (Window::default(), Relations::default());
        for m in [
            relation(1, "film_work", &["id", "title"]),
            relation(2, "person_film_work", &["id", "film_work_id", "person_id"]),
            relation(3, "person", &["id", "full_name"]),
            Message::Insert { relation: 1, new: text(&[A, "t"]) },
            // A link moved from film A to film B names both.
            Message::Update { relation: 2, old: Some(text(&[P, A, P])), new: text(&[P, B, P]) },
            Message::Update { relation: 3, old: None, new: text(&[P, "Renamed"]) },
            Message::Delete { relation: 3, old: text(&[B, "Gone"]) },
            Message::Commit { flags: 0, commit_lsn: 10, end_lsn: 20, commit_time_us: 0 },
        ] {
            apply(&mut w, &mut r, "content", m).unwrap();
        }
        let films: Vec<String> = w.films.iter().map(Uuid::to_string).collect();
        assert_eq!(films, [A, B]);
        assert_eq!(w.persons.iter().map(Uuid::to_string).collect::<Vec<_>>(), [P]);
        assert_eq!((w.last_commit_end, w.reload), (Some(20), false));
        apply(&mut w, &mut r, "content", Message::Truncate { options: 0, relations: vec![2] }).unwrap();
        assert!(w.reload);
        // Another schema's relation (same names) is not ours.
        let mut other = Window::default();
        let mut rel = Relations::default();
        apply(&mut other, &mut rel, "elsewhere", relation(1, "film_work", &["id"])).unwrap();
        apply(&mut other, &mut rel, "elsewhere", Message::Insert { relation: 1, new: text(&[A]) }).unwrap();
        assert!(other.films.is_empty());
    }
}
