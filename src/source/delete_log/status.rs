//! Which parts of the capture are on a schema now.

use super::*;

/// What of the capture is on the schema: the log table, and the triggers that are not there
/// (or disabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub log_table: bool,
    /// `(table, trigger)` of the delete capture missing or disabled.
    pub missing: Vec<(String, String)>,
    /// `(table, trigger)` of the write capture missing or disabled.
    pub writes_missing: Vec<(String, String)>,
    /// How many triggers each part has.
    pub deletes_wanted: usize,
    pub writes_wanted: usize,
    /// Triggers of pg2es before definitions are on the schema (replaced by `install`).
    pub legacy: bool,
    /// Among them, the write capture's.
    pub legacy_writes: bool,
    /// They stand in for the generated ones (see [`Capture::with_legacy_for`]).
    pub legacy_in_use: bool,
    /// Which columns the log has (an earlier release's log gets the others at `install`).
    pub shape: LogShape,
}

impl Capture {
    /// For the definition's first document (`first`), the capture of a release before
    /// definitions stands in for the generated one until `install` replaces it: its triggers log
    /// that document's keys (as rows without a document, which it reads), so an upgrade neither
    /// loses the log's position nor reloads.
    pub fn with_legacy_for(mut self, first: bool) -> Capture {
        if first && self.legacy && self.missing.len() == self.deletes_wanted {
            self.missing.clear();
            self.legacy_in_use = true;
            if self.legacy_writes && self.writes_missing.len() == self.writes_wanted {
                self.writes_missing.clear();
            }
        }
        self
    }

    /// The delete capture and the write capture: every change of a document is logged.
    pub fn writes_complete(&self) -> bool {
        self.complete() && self.writes_missing.is_empty()
    }

    /// The log table and every trigger: deletes are recorded.
    pub fn complete(&self) -> bool {
        self.log_table && self.missing.is_empty()
    }

    /// No trigger of the delete capture at all.
    pub fn nothing_installed(&self) -> bool {
        self.missing.len() == self.deletes_wanted
    }

    /// What is missing, for a log line: `table pg2es.changes; <table>: pg2es_<document>_deleted, pg2es_<document>_truncated`.
    pub fn describe_missing(&self) -> String {
        let mut parts = Vec::new();
        if !self.log_table {
            parts.push("table pg2es.changes".to_string());
        }
        let mut tables: Vec<&str> = self.missing.iter().map(|(t, _)| t.as_str()).collect();
        tables.dedup();
        for table in tables {
            let names: Vec<&str> = self.missing.iter().filter(|(t, _)| t == table).map(|(_, n)| n.as_str()).collect();
            parts.push(format!("{table}: {}", names.join(", ")));
        }
        parts.join("; ")
    }
}

/// Which parts of the capture of `set` are on its schema now.
pub async fn status(client: &impl GenericClient, set: &TriggerSet) -> Result<Capture> {
    let all: Vec<(&str, &str, bool)> = set.triggers.iter().map(|t| (t.table.as_str(), t.name.as_str(), t.writes)).collect();
    let tables: Vec<&str> = all.iter().map(|t| t.0).collect();
    let triggers: Vec<&str> = all.iter().map(|t| t.1).collect();
    let legacy: Vec<&str> = LEGACY_FUNCTIONS.to_vec();
    let context = "check the capture triggers";
    let row = client
        .query_one(
            concat!(
                "SELECT COALESCE(pg_catalog.to_regclass('pg2es.changes'), pg_catalog.to_regclass('pg2es.film_changes')) IS NOT NULL, \
                    ARRAY(SELECT want.n FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS want(tbl, name, n) \
                          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                                            WHERE t.tgrelid = pg_catalog.to_regclass(quote_ident($1) || '.' || quote_ident(want.tbl)) \
                                              AND t.tgname = want.name AND t.tgenabled <> 'D') \
                          ORDER BY want.n), \
                    legacy.any, legacy.writes, \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                            WHERE a.attrelid = COALESCE(pg_catalog.to_regclass('pg2es.changes'), pg_catalog.to_regclass('pg2es.film_changes')) \
                            AND a.attname = 'document' AND NOT a.attisdropped), \
                    pg_catalog.to_regclass('pg2es.changes') IS NOT NULL \
                 FROM (SELECT count(*) > 0 AS any, count(*) FILTER (WHERE p.proname LIKE 'log\\_written%') > 0 AS writes FROM ",
                pg2es_triggers!(),
                " WHERE n.nspname = $1 AND pn.nspname = 'pg2es' AND p.proname = ANY($4) AND t.tgenabled <> 'D') legacy"
            ),
            &[&set.schema, &tables, &triggers, &legacy],
        )
        .await
        .map_err(Error::postgres(context))?;
    let log_table: bool = row.try_get(0).map_err(Error::postgres(context))?;
    let missing: Vec<i64> = row.try_get(1).map_err(Error::postgres(context))?;
    let legacy: bool = row.try_get(2).map_err(Error::postgres(context))?;
    let legacy_writes: bool = row.try_get(3).map_err(Error::postgres(context))?;
    let documented: bool = row.try_get(4).map_err(Error::postgres(context))?;
    let keyed: bool = row.try_get(5).map_err(Error::postgres(context))?;
    let shape = match (documented, keyed) {
        (true, true) => LogShape::Keyed,
        (true, false) => LogShape::Documented,
        (false, _) => LogShape::Undocumented,
    };
    let (mut deletes, mut writes) = (Vec::new(), Vec::new());
    for n in missing {
        if let Some((table, name, w)) = usize::try_from(n - 1).ok().and_then(|i| all.get(i)) {
            let entry = (table.to_string(), name.to_string());
            if *w {
                writes.push(entry)
            } else {
                deletes.push(entry)
            }
        }
    }
    Ok(Capture {
        log_table,
        missing: deletes,
        writes_missing: writes,
        deletes_wanted: all.iter().filter(|t| !t.2).count(),
        writes_wanted: all.iter().filter(|t| t.2).count(),
        legacy,
        legacy_writes,
        legacy_in_use: false,
        shape,
    })
}

/// True when the log table exists and every delete trigger of `set` is there, enabled.
pub async fn installed(client: &impl GenericClient, set: &TriggerSet) -> Result<bool> {
    Ok(status(client, set).await?.complete())
}

/// [`installed`], with an earlier release's capture counted for the first document.
pub async fn installed_for(client: &impl GenericClient, set: &TriggerSet, first: bool) -> Result<bool> {
    Ok(status(client, set).await?.with_legacy_for(first).complete())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_missing_is_said_by_table() {
        let pair = |t: &str, n: &str| (t.to_string(), n.to_string());
        let capture = |log_table, missing: Vec<(String, String)>| Capture {
            log_table,
            missing,
            writes_missing: vec![],
            deletes_wanted: 12,
            writes_wanted: 8,
            legacy: false,
            legacy_writes: false,
            legacy_in_use: false,
            shape: LogShape::Keyed,
        };
        let c = capture(true, vec![pair("genre_film_work", "pg2es_movies_deleted"), pair("genre_film_work", "pg2es_movies_truncated")]);
        assert!(!c.complete() && !c.nothing_installed());
        assert_eq!(c.describe_missing(), "genre_film_work: pg2es_movies_deleted, pg2es_movies_truncated");
        let c = capture(false, vec![pair("film_work", "pg2es_movies_deleted"), pair("person", "pg2es_movies_truncated")]);
        assert_eq!(c.describe_missing(), "table pg2es.changes; film_work: pg2es_movies_deleted; person: pg2es_movies_truncated");
        assert!(capture(true, vec![]).complete());
        // An earlier release's capture stands in for the first document only, and only while
        // none of the generated triggers is there.
        let all_missing: Vec<(String, String)> = (0..12).map(|i| pair("t", &i.to_string())).collect();
        let legacy = Capture { legacy: true, ..capture(true, all_missing.clone()) };
        assert!(legacy.clone().with_legacy_for(true).complete() && legacy.clone().with_legacy_for(true).legacy_in_use);
        assert!(!legacy.clone().with_legacy_for(false).complete());
        assert!(!Capture { legacy: true, ..capture(true, all_missing[..3].to_vec()) }.with_legacy_for(true).complete());
        assert!(capture(true, (0..12).map(|i| pair("t", &i.to_string())).collect()).nothing_installed());
    }
}
