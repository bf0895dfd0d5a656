//! Postgres: finds what changed since the saved watermarks and reads the affected films.
//!
//! Five change streams (film_work, genre, person and the two link tables) are each read in keyset
//! order on `(timestamp, id)`: rows with equal timestamps across a page boundary are neither
//! skipped nor read twice. A changed genre or person fans out to every film it is linked to.

mod change;
pub mod delete_log;
pub mod pgoutput;
mod polling;
mod queries;
mod reading;
mod recent;
mod replication;
mod tls;
mod version;

pub use change::{Change, ChangeBatch, ChangeSource, CyclePlan, ReadReport, Receipt};
pub use polling::PollingSource;
pub use recent::{RecentlyLoaded, RowVersion};
pub use replication::ReplicationSource;
pub use version::{server_version, PgVersion, OLDEST_SUPPORTED_MAJOR};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::checkpoint::{SourceIdentity, Stream, Watermark};
use crate::config::{Config, HorizonPolicy, TimestampColumn};
use crate::error::{Error, Result};
use crate::transform::{FilmWork, PersonLink};

pub use queries::Layout;

/// The full load's query (every film in id order), for measuring it on its own.
pub fn full_load_sql(schema: &str) -> String {
    queries::films_scan_sql(schema, false)
}

/// A connected source with its queries prepared for the detected layout.
pub struct PgSource {
    client: Client,
    version: PgVersion,
    layout: Layout,
    statements: queries::Statements,
}

/// One page of changed rows of one stream.
#[derive(Debug)]
pub struct ChangePage {
    pub stream: Stream,
    /// Films to re-index because of this page (deduplicated, sorted).
    pub film_ids: Vec<Uuid>,
    /// The rows of the page that had not been loaded already: remembered once their films are.
    pub fresh: Vec<RowVersion>,
    /// Rows of the page whose films were loaded in an earlier cycle, unchanged since.
    pub already_loaded: usize,
    /// Position of the last row of the page: the stream's watermark once the films are loaded.
    pub last: Watermark,
    pub rows: usize,
}

impl PgSource {
    pub async fn connect(pg: &tokio_postgres::Config, tls: &PgTls, schema: &str, ts: &TimestampColumn) -> Result<PgSource> {
        let client = delete_log::connect(pg, tls).await?;
        let version = server_version(&client).await?;
        let layout = Layout::detect(&client, schema, ts).await?;
        let statements = queries::Statements::prepare(&client, &layout).await?;
        Ok(PgSource { client, version, layout, statements })
    }

    pub fn version(&self) -> PgVersion {
        self.version
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The films linked to these genres or people (`stream` Genre or Person).
    pub async fn films_of(&self, stream: Stream, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let rows = self.client.query(self.statements.fan_out(stream), &[&ids]).await.map_err(Error::postgres("find films of changed rows"))?;
        rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<Uuid>, _>>().map_err(Error::postgres("read film id"))
    }

    /// The WAL insert position now: it only grows, and every commit before it is visible to a
    /// query that starts after it.
    pub async fn wal_position(&self) -> Result<u64> {
        let row = self.client.query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[]).await.map_err(Error::postgres("read the WAL position"))?;
        let text: String = row.try_get(0).map_err(Error::postgres("read the WAL position"))?;
        pgoutput::parse_lsn(&text).ok_or_else(|| Error::SourceSetup(format!("{text:?} is not a WAL position")))
    }

    /// Which of these films exist.
    pub async fn existing(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let rows = self.client.query(&self.statements.existing, &[&ids]).await.map_err(Error::postgres("look up films"))?;
        rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<Uuid>, _>>().map_err(Error::postgres("read film id"))
    }

    /// Which database this is: the state file is tied to it.
    pub async fn identity(&self, schema: &str) -> Result<SourceIdentity> {
        let row = self
            .client
            .query_one("SELECT system_identifier::text, current_database()::text FROM pg_control_system()", &[])
            .await
            .map_err(Error::postgres("read the database's identity"))?;
        Ok(SourceIdentity {
            system_identifier: row.try_get(0).map_err(Error::postgres("read system identifier"))?,
            database: row.try_get(1).map_err(Error::postgres("read database name"))?,
            schema: schema.to_string(),
        })
    }

    /// The next page of changes of `stream` after `after` (all rows when `None`).
    /// Rows in `loaded` (unchanged since their films were loaded) lead to no film.
    pub async fn next_page(&self, stream: Stream, after: Option<Watermark>, limit: usize, loaded: &RecentlyLoaded) -> Result<Option<ChangePage>> {
        let limit = limit as i64;
        let rows = match after {
            Some(w) => self.client.query(self.statements.page_after(stream), &[&w.ts, &w.id, &limit]).await.map_err(Error::postgres("read changed rows"))?,
            None => self.client.query(self.statements.page_first(stream), &[&limit]).await.map_err(Error::postgres("read changed rows"))?,
        };
        let Some(last_row) = rows.last() else { return Ok(None) };
        let last = Watermark { ts: last_row.try_get(0).map_err(Error::postgres("read ts"))?, id: last_row.try_get(1).map_err(Error::postgres("read id"))? };
        let mut ids: Vec<Uuid> = Vec::with_capacity(rows.len());
        let mut fresh = Vec::with_capacity(rows.len());
        for r in &rows {
            let version = RowVersion {
                ts: r.try_get(0).map_err(Error::postgres("read ts"))?,
                id: r.try_get(1).map_err(Error::postgres("read id"))?,
                xmin: r.try_get(3).map_err(Error::postgres("read row version"))?,
            };
            if loaded.contains(stream, &version) {
                continue;
            }
            fresh.push(version);
            ids.push(r.try_get(2).map_err(Error::postgres("read row key"))?);
        }
        let already_loaded = rows.len() - fresh.len();
        let mut film_ids = match stream {
            Stream::FilmWork | Stream::GenreFilmWork | Stream::PersonFilmWork => ids,
            Stream::Genre | Stream::Person if ids.is_empty() => ids,
            Stream::Genre | Stream::Person => {
                let fanned = self.client.query(self.statements.fan_out(stream), &[&ids]).await.map_err(Error::postgres("find films of changed rows"))?;
                fanned.iter().map(|r| r.try_get(0)).collect::<Result<Vec<Uuid>, _>>().map_err(Error::postgres("read film id"))?
            }
        };
        film_ids.sort_unstable();
        film_ids.dedup();
        Ok(Some(ChangePage { stream, film_ids, fresh, already_loaded, last, rows: rows.len() }))
    }

    /// The newest position of a stream now, or `None` for an empty table.
    pub async fn head(&self, stream: Stream) -> Result<Option<Watermark>> {
        let row = self.client.query_opt(self.statements.head(stream), &[]).await.map_err(Error::postgres("read newest change"))?;
        match row {
            None => Ok(None),
            Some(r) => {
                let ts: DateTime<Utc> = r.try_get(0).map_err(Error::postgres("read ts"))?;
                let id: Uuid = r.try_get(1).map_err(Error::postgres("read id"))?;
                Ok(Some(Watermark { ts, id }))
            }
        }
    }

    /// The commit horizon now: every row that is not yet visible to us will carry a change
    /// timestamp at or after it. Read before the changes themselves.
    pub async fn horizon(&self, policy: &HorizonPolicy) -> Result<Horizon> {
        let row = self.client.query_one(queries::HORIZON_SQL, &[]).await.map_err(Error::postgres("read open transactions"))?;
        let now: DateTime<Utc> = row.try_get(0).map_err(Error::postgres("read clock"))?;
        let oldest: Option<DateTime<Utc>> = row.try_get(1).map_err(Error::postgres("read open transactions"))?;
        let held_by: Option<i32> = row.try_get(2).map_err(Error::postgres("read open transactions"))?;
        let sees_all: bool = row.try_get(3).map_err(Error::postgres("read role"))?;
        Ok(Horizon::compute(now, oldest.zip(held_by), sees_all, policy))
    }

    /// Reads the films with these ids, with their genres and people. Films that no longer exist
    /// are simply absent from the result.
    pub async fn films(&self, ids: &[Uuid]) -> Result<Vec<FilmWork>> {
        let rows = self.client.query(&self.statements.films, &[&ids]).await.map_err(Error::postgres("read films"))?;
        rows.iter().map(film_from_row).collect()
    }

    /// Every film in id order (after `after` when given), streamed: rows are decoded as they are
    /// consumed, and the connection stops reading from the socket while the consumer is behind,
    /// so memory does not grow with the table. Postgres holds one snapshot for the whole scan.
    pub async fn scan_films(&self, after: Option<Uuid>) -> Result<impl futures_util::Stream<Item = Result<FilmWork>> + Send + 'static> {
        let rows = match after {
            Some(id) => self.client.query_raw(&self.statements.scan_after, [&id as &(dyn tokio_postgres::types::ToSql + Sync)]).await,
            None => self.client.query_raw(&self.statements.scan_first, std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>()).await,
        }
        .map_err(Error::postgres("read every film"))?;
        Ok(rows.map(|row| row.map_err(Error::postgres("read every film")).and_then(|r| film_from_row(&r))))
    }

    /// How many films a scan after `after` reads (for progress; a film with the nil id is not
    /// counted).
    pub async fn films_left(&self, after: Option<Uuid>) -> Result<u64> {
        let row = self.client.query_one(&self.statements.count_after, &[&after.unwrap_or_else(Uuid::nil)]).await.map_err(Error::postgres("count films"))?;
        Ok(row.try_get::<_, i64>(0).map_err(Error::postgres("count films"))?.max(0) as u64)
    }

    /// Up to `limit` films with ids after `after`, in id order (uuid byte order), read the same
    /// way as [`PgSource::films`]. Keyset paging: each page is one index range scan.
    pub async fn films_after(&self, after: Uuid, limit: usize) -> Result<Vec<FilmWork>> {
        let rows = self.client.query(&self.statements.films_after, &[&after, &(limit as i64)]).await.map_err(Error::postgres("read films in id order"))?;
        rows.iter().map(film_from_row).collect()
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "postgres connection ended");
    }
}

/// How to reach Postgres: plain, or TLS with rustls as the DSN's `sslmode` asks (see
/// [`crate::config::PgSslMode`] and `tls.rs`).
#[derive(Clone)]
pub enum PgTls {
    Off,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl PgTls {
    pub fn from_config(config: &Config) -> Result<PgTls> {
        Ok(match tls::client_config(config)? {
            None => PgTls::Off,
            Some(tls) => PgTls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(tls)),
        })
    }
}

/// The point a watermark may not pass in this cycle.
///
/// A transaction still open when a cycle starts may commit later rows whose timestamps are older
/// than anything the cycle reads (Django stamps rows before it commits; `now()` is the start of
/// the transaction). Polling `ts > last_seen` would skip them for good. So the committed
/// watermark never moves past the start of the oldest open transaction (minus the writers' clock
/// skew): rows after it are read again next cycle, which is harmless because loads are idempotent.
/// Without the right to see other sessions, a fixed window (`ETL_MAX_TX_SEC`) stands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub at: DateTime<Utc>,
    /// The open transaction holding the horizon back: backend pid and start.
    pub held_by: Option<(i32, DateTime<Utc>)>,
    /// False when open transactions of other roles could not be seen.
    pub exact: bool,
}

impl Horizon {
    pub fn compute(now: DateTime<Utc>, oldest: Option<(DateTime<Utc>, i32)>, sees_all: bool, policy: &HorizonPolicy) -> Horizon {
        let skew = chrono::Duration::from_std(policy.clock_skew).unwrap_or(chrono::Duration::MAX);
        let window = chrono::Duration::from_std(policy.max_transaction).unwrap_or(chrono::Duration::MAX);
        let (base, held_by) = match oldest {
            Some((start, pid)) if start < now => (start, Some((pid, start))),
            _ => (now, None),
        };
        let mut at = base.checked_sub_signed(skew).unwrap_or(base);
        if !sees_all {
            at = at.min(now.checked_sub_signed(window).unwrap_or(now));
        }
        Horizon { at, held_by, exact: sees_all }
    }

    /// The furthest a stream may advance: rows at the horizon itself are read again.
    pub fn cap(&self, mark: Watermark) -> Watermark {
        mark.min(Watermark { ts: self.at, id: Uuid::nil() })
    }
}

/// One row of the film queries (columns in `queries::FILM_COLUMNS` order) as a film.
fn film_from_row(row: &tokio_postgres::Row) -> Result<FilmWork> {
    let ctx = Error::postgres;
    let texts = |i: usize, what: &'static str| -> Result<Vec<Option<String>>> {
        Ok(row.try_get::<_, Option<Vec<Option<String>>>>(i).map_err(ctx(what))?.unwrap_or_default())
    };
    let person_ids: Vec<Option<Uuid>> = row.try_get::<_, Option<Vec<Option<Uuid>>>>(5).map_err(ctx("read person ids"))?.unwrap_or_default();
    let names = texts(6, "read person names")?;
    let roles = texts(7, "read roles")?;
    if names.len() != person_ids.len() || roles.len() != person_ids.len() {
        return Err(Error::SourceSchema(format!(
            "film {:?}: person ids, names and roles differ in number ({}, {}, {})",
            row.try_get::<_, Uuid>(0).ok(),
            person_ids.len(),
            names.len(),
            roles.len()
        )));
    }
    let persons = person_ids
        .into_iter()
        .zip(names)
        .zip(roles)
        // Joined through the person's primary key: the id is never NULL.
        .filter_map(|((id, name), role)| Some(PersonLink { id: id?, name, role }))
        .collect();
    Ok(FilmWork {
        id: row.try_get(0).map_err(ctx("read film id"))?,
        title: row.try_get(1).map_err(ctx("read title"))?,
        description: row.try_get(2).map_err(ctx("read description"))?,
        rating: row.try_get(3).map_err(ctx("read rating"))?,
        genres: texts(4, "read genres")?.into_iter().flatten().collect(),
        persons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    const POLICY: HorizonPolicy = HorizonPolicy { clock_skew: Duration::from_secs(1), max_transaction: Duration::from_secs(60) };

    #[test]
    fn horizon_stops_at_the_oldest_open_transaction() {
        let h = Horizon::compute(t(100), Some((t(40), 7)), true, &POLICY);
        assert_eq!(h.at, t(39));
        assert_eq!(h.held_by, Some((7, t(40))));
        let h = Horizon::compute(t(100), None, true, &POLICY);
        assert_eq!((h.at, h.held_by), (t(99), None));
    }

    #[test]
    fn without_visibility_a_fixed_window_stands_in() {
        let h = Horizon::compute(t(100), None, false, &POLICY);
        assert_eq!(h.at, t(40));
        assert!(!h.exact);
    }

    #[test]
    fn cap_keeps_rows_at_the_horizon_for_the_next_cycle() {
        let h = Horizon::compute(t(100), None, true, &POLICY);
        let later = Watermark { ts: t(99), id: Uuid::from_u128(5) };
        assert_eq!(h.cap(later), Watermark { ts: t(99), id: Uuid::nil() });
        let earlier = Watermark { ts: t(50), id: Uuid::from_u128(5) };
        assert_eq!(h.cap(earlier), earlier);
    }
}
