//! The capture's DDL: the log (`sql/capture.sql`), the generated triggers, what `print` shows and
//! what `remove` runs.

use super::*;

const DDL: &str = include_str!("../../../sql/capture.sql");

/// The trigger functions of pg2es before definitions: their triggers are dropped by `install`
/// (which puts the generated ones in their place) and by `remove`.
pub(super) const LEGACY_FUNCTIONS: [&str; 8] = [
    "log_deleted_films",
    "log_unlinked_films",
    "log_moved_links",
    "log_linked_films",
    "log_truncate",
    "log_written_films",
    "log_written_links",
    "log_renamed_linked",
];

/// The functions of `sql/capture.sql`, and the legacy ones, dropped once no trigger uses them.
const FUNCTIONS: &str =
    "pg2es.capture_rows(), pg2es.capture_moved(), pg2es.capture_referencing(), pg2es.capture_referencing_written(), pg2es.capture_truncate(), \
     pg2es.log_deleted_films(), pg2es.log_unlinked_films(), pg2es.log_moved_links(), pg2es.log_linked_films(), pg2es.log_truncate(), \
     pg2es.log_written_films(), pg2es.log_written_links(), pg2es.log_renamed_linked()";

/// Drops the triggers of pg2es on `schema`'s tables, those whose function also meets `also` (SQL
/// on `p`, or nothing).
fn drop_triggers_sql(schema: &str, also: &str) -> String {
    let lit = quote_literal(schema);
    format!(
        "DO $$\nDECLARE r record;\nBEGIN\n    FOR r IN SELECT t.tgname, c.relname FROM {}\n             WHERE n.nspname = {lit} AND pn.nspname = 'pg2es' {also} LOOP\n        EXECUTE format('DROP TRIGGER %I ON %I.%I', r.tgname, {lit}, r.relname);\n    END LOOP;\nEND $$;\n",
        pg2es_triggers!()
    )
}

/// Drops the triggers of pg2es before definitions on the schema's tables (they are replaced in
/// the same transaction, so the log never misses a change).
fn legacy_drop_sql(schema: &str) -> String {
    let list = LEGACY_FUNCTIONS.iter().map(|f| quote_literal(f)).collect::<Vec<_>>().join(", ");
    drop_triggers_sql(schema, &format!("AND p.proname IN ({list})"))
}

/// The statements that install the capture of `set` (idempotent): the log and functions, the
/// legacy triggers dropped, the delete triggers, and with `writes` the write capture's.
pub fn ddl(set: &TriggerSet, writes: bool) -> String {
    format!("{DDL}\n{}{}{}", legacy_drop_sql(&set.schema), set.create_sql(writes), drop_functions_sql())
}

/// The DDL for an owner to apply by hand (`pg2es delete-capture print`): [`ddl`], first dropping
/// the schema's positions in the log when the log or a trigger is missing, as `install` does.
pub fn print_ddl(set: &TriggerSet, writes: bool) -> String {
    let wanted: Vec<(&str, &str)> = set.triggers.iter().filter(|t| writes || !t.writes).map(|t| (t.table.as_str(), t.name.as_str())).collect();
    let (tables, triggers): (Vec<&str>, Vec<&str>) = wanted.into_iter().unzip();
    let list = |names: Vec<&str>| names.iter().map(|n| quote_literal(n)).collect::<Vec<_>>().join(", ");
    format!(
        "-- Changes made while the log or a trigger was missing were not recorded: positions in the log\n\
         -- are dropped then, so each pg2es reading it loads every document again instead of trusting them.\n\
         DO $$\nBEGIN\n    IF pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL AND (COALESCE(pg_catalog.to_regclass('pg2es.changes'), pg_catalog.to_regclass('pg2es.film_changes')) IS NULL\n       OR EXISTS (SELECT 1 FROM unnest(ARRAY[{}], ARRAY[{}]) AS want(tbl, name)\n                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgname = want.name AND t.tgenabled <> 'D'\n                                      AND t.tgrelid = pg_catalog.to_regclass(quote_ident({schema}) || '.' || quote_ident(want.tbl))))) THEN\n        DELETE FROM pg2es.consumers WHERE source_schema = {schema} OR COALESCE(pg_catalog.to_regclass('pg2es.changes'), pg_catalog.to_regclass('pg2es.film_changes')) IS NULL;\n    END IF;\nEND $$;\n\n{}",
        list(tables),
        list(triggers),
        ddl(set, writes),
        schema = quote_literal(&set.schema),
    )
}

/// The statements that remove the capture from `schema`: every trigger of pg2es on its tables
/// (whatever the definition), and the functions once no schema uses them. The log tables are
/// left with their rows (other schemas may share them).
pub fn remove_ddl(schema: &str) -> String {
    let mut sql = format!("-- Removes pg2es change capture from schema {schema}; the tables in schema pg2es are kept.\n{}", drop_triggers_sql(schema, ""));
    sql.push_str(&drop_functions_sql());
    sql.push_str(&format!(
        "-- The instances reading this schema's log learn that it stopped.\nDO $$\nBEGIN\n    IF pg_catalog.to_regclass('pg2es.consumers') IS NOT NULL THEN\n        DELETE FROM pg2es.consumers WHERE source_schema = {};\n    END IF;\nEND $$;\n",
        quote_literal(schema)
    ));
    sql
}

/// Drops the generated functions no trigger calls any more (a trigger dropped, or a definition
/// changed), and the functions of earlier releases once no trigger uses any function of pg2es.
fn drop_functions_sql() -> String {
    format!(
        "DO $$\nDECLARE f record;\nBEGIN\n    FOR f IN SELECT p.oid::regprocedure AS name FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace\n             WHERE n.nspname = 'pg2es' AND p.proname LIKE 'capture\\_%' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid) LOOP\n        EXECUTE 'DROP FUNCTION ' || f.name;\n    END LOOP;\n    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid\n                   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pg2es' AND p.proname NOT LIKE 'capture\\_%') THEN\n        DROP FUNCTION IF EXISTS {FUNCTIONS};\n    END IF;\nEND $$;\n"
    )
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movies() -> TriggerSet {
        crate::catalog::triggers::capture("content", &crate::catalog::testing::cinema()[..1])
    }

    #[test]
    fn ddl_names_the_schema_everywhere() {
        let set = movies();
        let sql = ddl(&set, false);
        assert!(sql.contains(r#"ON "content"."person_film_work""#));
        for t in set.deletes() {
            assert!(sql.contains(&format!("CREATE TRIGGER {} ", t.name)), "{}", t.name);
            assert!(sql.contains(&format!("DROP TRIGGER IF EXISTS {} ON \"content\".\"{}\";", t.name, t.table)), "{} on {}", t.name, t.table);
        }
        assert_eq!(sql.matches("CREATE TRIGGER").count(), set.deletes().count());
        assert_eq!(ddl(&set, true).matches("CREATE TRIGGER").count(), set.triggers.len());
        let weird = crate::catalog::triggers::capture(r#"we"ird"#, &crate::catalog::testing::cinema()[..1]);
        assert!(ddl(&weird, false).contains(r#""we""ird"."film_work""#));
    }

    #[test]
    fn remove_drops_every_trigger_of_pg2es_and_the_functions() {
        let sql = remove_ddl("content");
        assert!(sql.contains("pn.nspname = 'pg2es'") && sql.contains("DROP TRIGGER %I ON %I.%I"), "{sql}");
        for f in FUNCTIONS.split(", ") {
            assert!(sql.contains(f.trim()), "{f}");
        }
        assert!(sql.contains("p.proname LIKE 'capture\\_%' AND NOT EXISTS"), "{sql}");
        assert!(sql.contains("DELETE FROM pg2es.consumers WHERE source_schema = 'content'"), "{sql}");
        assert!(remove_ddl("o'brien").contains("source_schema = 'o''brien'"));
    }

    #[test]
    fn the_printed_ddl_drops_positions_when_something_was_missing_then_installs() {
        let set = movies();
        let sql = print_ddl(&set, false);
        assert!(sql.ends_with(&ddl(&set, false)));
        assert!(sql.contains("DELETE FROM pg2es.consumers WHERE source_schema = 'content'"), "{sql}");
        for t in set.deletes() {
            assert!(sql.contains(&format!("'{}'", t.table)) && sql.contains(&format!("'{}'", t.name)), "{} on {}", t.name, t.table);
        }
    }
}
