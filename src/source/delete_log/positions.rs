//! Consumer positions in the log (each vouches that the log is complete since it), and trimming.

use super::*;

/// Trims what every consumer of `schema`'s log seen in the last 7 days has read (a consumer gone
/// longer holds nothing back). Through `pg2es.film_changes`: the log itself before `install`
/// renames it, the view of `pg2es.changes` after.
const TRIM_SQL: &str = "DELETE FROM pg2es.film_changes WHERE source_schema = $1 AND xid < \
       (SELECT done_xid FROM pg2es.consumers WHERE source_schema = $1 AND seen_at > now() - interval '7 days' \
        ORDER BY done_xid LIMIT 1)";

/// Records that `consumer` has read `schema`'s log below `done` (a new consumer starts there),
/// and trims what every consumer seen in the last 7 days has read.
pub async fn acknowledge(client: &impl GenericClient, schema: &str, consumer: &str, done: u64) -> Result<()> {
    let done = done.to_string();
    client
        .execute(
            "INSERT INTO pg2es.consumers (source_schema, consumer, done_xid) VALUES ($1, $2, $3::text::xid8) \
             ON CONFLICT (source_schema, consumer) DO UPDATE SET done_xid = EXCLUDED.done_xid, seen_at = now()",
            &[&schema, &consumer, &done],
        )
        .await
        .map_err(Error::postgres("record the delete log position"))?;
    client.execute(TRIM_SQL, &[&schema]).await.map_err(Error::postgres("trim the delete log"))?;
    Ok(())
}

/// Whether a consumer's position in the log still stands for every delete since it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The position was moved forward: the log holds every delete after it.
    Kept,
    /// The consumer's row is gone: `install` dropped it because the log or a trigger had been
    /// missing (deletes meanwhile were not recorded), or `remove` ran, or the table was recreated.
    Dropped,
    /// The consumer was not seen for over 7 days: others may have trimmed rows it had not read.
    Expired,
}

/// Moves an existing consumer's position forward and trims what every consumer has read; says
/// whether the position was still there to move. Unlike [`acknowledge`] it never creates the
/// row: a missing row means the log lost deletes after the position.
pub async fn advance(client: &impl GenericClient, schema: &str, consumer: &str, done: u64) -> Result<Continuity> {
    let context = "record the delete log position";
    let row = client
        .query_opt(
            "WITH old AS (SELECT seen_at FROM pg2es.consumers WHERE source_schema = $1 AND consumer = $2 FOR UPDATE) \
             UPDATE pg2es.consumers c SET done_xid = $3::text::xid8, seen_at = now() FROM old \
             WHERE c.source_schema = $1 AND c.consumer = $2 \
             RETURNING old.seen_at > now() - interval '7 days'",
            &[&schema, &consumer, &done.to_string()],
        )
        .await
        .map_err(Error::postgres(context))?;
    let continuity = match row {
        None => Continuity::Dropped,
        Some(row) if row.try_get::<_, bool>(0).map_err(Error::postgres(context))? => Continuity::Kept,
        Some(_) => Continuity::Expired,
    };
    client.execute(TRIM_SQL, &[&schema]).await.map_err(Error::postgres("trim the delete log"))?;
    Ok(continuity)
}

/// True when `consumer` has a position in `schema`'s log (it read the log once and the triggers
/// were not installed again since).
pub async fn is_consumer(client: &impl GenericClient, schema: &str, consumer: &str) -> Result<bool> {
    let context = "read the delete log consumers";
    let row = client.query_one("SELECT pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL", &[]).await.map_err(Error::postgres(context))?;
    if !row.try_get::<_, bool>(0).map_err(Error::postgres(context))? {
        return Ok(false);
    }
    let row = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg2es.consumers WHERE source_schema = $1 AND consumer = $2)", &[&schema, &consumer])
        .await
        .map_err(Error::postgres(context))?;
    row.try_get(0).map_err(Error::postgres(context))
}

/// For a replication-mode instance, which does not read the log: drops `consumer`'s position in
/// `schema`'s log and trims every row that no polling consumer seen in the last 7 days still
/// needs (all rows below the current [`boundary`] when there is none). Returns the rows deleted;
/// 0 when the log tables do not exist.
pub async fn trim_for_replication(client: &impl GenericClient, schema: &str, consumer: &str) -> Result<u64> {
    let context = "trim the delete log";
    let row = client
        .query_one("SELECT pg_catalog.to_regclass('pg2es.film_changes') IS NOT NULL AND pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL", &[])
        .await
        .map_err(Error::postgres(context))?;
    if !row.try_get::<_, bool>(0).map_err(Error::postgres(context))? {
        return Ok(0);
    }
    // One statement: the consumer's row is ignored by the subquery rather than deleted first
    // (a data-modifying CTE's effect is not visible to the rest of its statement).
    client
        .execute(
            "WITH gone AS (DELETE FROM pg2es.consumers WHERE source_schema = $1 AND consumer = $2) \
             DELETE FROM pg2es.film_changes WHERE source_schema = $1 AND xid < COALESCE( \
               (SELECT done_xid FROM pg2es.consumers WHERE source_schema = $1 AND consumer <> $2 \
                  AND seen_at > now() - interval '7 days' ORDER BY done_xid LIMIT 1), \
               pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()))",
            &[&schema, &consumer],
        )
        .await
        .map_err(Error::postgres(context))
}

/// Drops `consumer`'s position in `schema`'s log, if the log and the position exist (a rebuild's
/// position from the rebuild before).
pub async fn forget_consumer(client: &impl GenericClient, schema: &str, consumer: &str) -> Result<()> {
    let context = "drop a delete log position";
    let row = client.query_one("SELECT pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL", &[]).await.map_err(Error::postgres(context))?;
    if row.try_get::<_, bool>(0).map_err(Error::postgres(context))? {
        client
            .execute("DELETE FROM pg2es.consumers WHERE source_schema = $1 AND consumer = $2", &[&schema, &consumer])
            .await
            .map_err(Error::postgres(context))?;
    }
    Ok(())
}
