//! The log's window by transaction id, and a document's page of keys in it.

use super::*;

/// The transaction id below which every transaction has ended: log rows under it are final.
/// Held back by the oldest open transaction of the whole server (prepared ones too).
pub async fn boundary(client: &impl GenericClient) -> Result<u64> {
    let row = client
        .query_one("SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text", &[])
        .await
        .map_err(Error::postgres("read the transaction boundary"))?;
    let text: String = row.try_get(0).map_err(Error::postgres("read the transaction boundary"))?;
    text.parse().map_err(|_| Error::SourceSchema(format!("transaction id {text:?} is not a number")))
}

/// One page of the log's window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage {
    /// Records to rebuild or delete, as the text of their keys: distinct, ascending (by bytes),
    /// after the page's `after`.
    pub keys: Vec<String>,
    /// A table was truncated in the window: the whole catalog must be reloaded.
    pub reload: bool,
}

/// The window's page of keys in the log `$log`: `$key` is a row's key as text, `$filter` chooses
/// the document's rows.
macro_rules! keys_between_sql {
    ($log:literal, $key:literal, $filter:literal) => {
        concat!(
            "SELECT EXISTS (SELECT 1 FROM ",
            $log,
            " WHERE source_schema = $1 AND xid >= $2::text::xid8 AND xid < $3::text::xid8 AND ",
            $key,
            " IS NULL AND ",
            $filter,
            "), ARRAY(SELECT DISTINCT ",
            $key,
            " COLLATE \"C\" FROM ",
            $log,
            " WHERE source_schema = $1 AND xid >= $2::text::xid8 AND xid < $3::text::xid8 AND ",
            $filter,
            " AND ",
            $key,
            " IS NOT NULL AND ($4::text IS NULL OR ",
            $key,
            " COLLATE \"C\" > $4::text COLLATE \"C\") ORDER BY 1 LIMIT $5)"
        )
    };
}

/// The document's rows (`$6`), and for the first document (`$7`) the rows without a document;
/// the key in `key` (this release's triggers) or `film_id` (earlier ones').
const KEYS_BETWEEN_SQL: &str = keys_between_sql!("pg2es.changes", "COALESCE(key, film_id::text)", "(document = $6 OR ($7 AND document IS NULL))");

/// An earlier release's log, `pg2es.film_changes` before its `key` column: every key is a uuid,
/// in `film_id`.
const KEYS_BETWEEN_UNKEYED_SQL: &str = keys_between_sql!("pg2es.film_changes", "film_id::text", "(document = $6 OR ($7 AND document IS NULL))");

/// An earlier release's log, without the `document` column: every row is the first document's.
const KEYS_BETWEEN_UNDOCUMENTED_SQL: &str = keys_between_sql!("pg2es.film_changes", "film_id::text", "($6::text IS NOT NULL AND $7)");

/// Which document's rows of the log to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDocument {
    pub name: String,
    /// The definition's first document also reads the rows the triggers of pg2es before
    /// definitions wrote (with no document).
    pub first: bool,
    /// Which columns the log has ([`Capture::shape`]): an earlier release's log, not installed
    /// again yet, may have no `document` (all its rows are the first document's) or no `key`.
    pub shape: LogShape,
}

/// The columns of the log: each release of pg2es added one, at `install`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogShape {
    /// `film_id` only.
    Undocumented,
    /// `document`, and the uuid `film_id`.
    Documented,
    /// `pg2es.changes`: `document`, and the key as text in `key` (`film_id` still read: earlier
    /// triggers wrote it, through the view `pg2es.film_changes`).
    #[default]
    Keyed,
}

/// Up to `limit` keys logged for `schema`'s `document` by transactions in `[from, to)`, after `after`.
#[allow(clippy::too_many_arguments)]
pub async fn keys_between(
    client: &impl GenericClient,
    schema: &str,
    document: &LogDocument,
    from: u64,
    to: u64,
    after: Option<&str>,
    limit: usize,
) -> Result<LogPage> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = match document.shape {
        LogShape::Keyed => KEYS_BETWEEN_SQL,
        LogShape::Documented => KEYS_BETWEEN_UNKEYED_SQL,
        LogShape::Undocumented => KEYS_BETWEEN_UNDOCUMENTED_SQL,
    };
    let row = client
        .query_one(sql, &[&schema, &from.to_string(), &to.to_string(), &after, &limit, &document.name, &document.first])
        .await
        .map_err(Error::postgres("read the delete log"))?;
    Ok(LogPage {
        reload: row.try_get(0).map_err(Error::postgres("read the delete log"))?,
        keys: row.try_get(1).map_err(Error::postgres("read the delete log"))?,
    })
}
