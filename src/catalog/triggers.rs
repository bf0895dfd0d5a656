//! The change capture's triggers, generated from the documents (the log itself is made by
//! `sql/capture.sql`). For every table of a document: a delete logs the keys of the documents it
//! changes (a root's own key, a link's or child's root column, the roots of a related row through
//! its link or the root's reference to it, before the cascade), a row moved away from its root
//! logs the old root, a truncate asks for a reload; with the write capture, inserts and updates
//! are logged the same way.
//!
//! Each trigger calls a function of its own, `pg2es.capture_<hash>()`, whose statement is written
//! out (names quoted, the document a literal): PL/pgSQL keeps its plan, where one generic
//! function building its statement with `EXECUTE` would plan it at every call, on the
//! application's writes. The functions are `SECURITY DEFINER` with `search_path` pinned, and
//! only their owner may run them.

use super::model::{Document, FanOut};
use super::resolve::{qualified, quote};
use super::sql::key_text;

/// `columns` (qualified by `prefix`) all hold a value.
fn not_null(prefix: &str, columns: &[String]) -> String {
    columns.iter().map(|c| format!("{prefix}{} IS NOT NULL", quote(c))).collect::<Vec<_>>().join(" AND ")
}

/// One trigger on one table, and the function it calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub table: String,
    pub name: String,
    /// Part of the write capture (`install --writes`).
    pub writes: bool,
    /// `pg2es."capture_<hash>"`.
    pub function: String,
    /// The `CREATE FUNCTION` and `CREATE TRIGGER` statements.
    pub create: String,
}

/// Everything the capture installs on one schema for these documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSet {
    pub schema: String,
    /// The documents, in the log's `document` column.
    pub documents: Vec<String>,
    /// The tables, in the order their locks are taken.
    pub tables: Vec<String>,
    pub triggers: Vec<Trigger>,
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// FNV-1a: a function name that is the same for the same trigger in every build (and a
/// definition's fingerprint, `definition::fingerprint`).
pub(crate) fn hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The log's `key` is the document's key as text (`film_id`, a uuid, is the column the triggers
/// of earlier releases write).
const INSERT: &str = "INSERT INTO pg2es.changes (source_schema, document, key)";

/// What a trigger does, as the statement its function runs.
enum Body<'a> {
    /// The rows (a transition table `changed`): their columns (a root key's).
    Rows {
        columns: &'a [String],
    },
    /// Rows updated so that `watched` changed: their old `logged` (a root key's columns).
    Moved {
        logged: &'a [String],
        key: &'a [String],
        watched: &'a str,
    },
    /// A row about to be deleted: the roots its `key` leads to by the fan-out (the `select`
    /// column of `table`'s rows whose `matching` holds it, through `via` for a relation's relation).
    Referencing {
        fan_out: &'a FanOut,
        key: &'a str,
    },
    /// Rows updated (`changed`): as `Referencing`, for each.
    ReferencingWritten {
        fan_out: &'a FanOut,
        key: &'a str,
    },
    Truncate,
}

impl Body<'_> {
    fn sql(&self, schema: &str, doc: &str) -> String {
        let d = literal(doc);
        match self {
            Body::Rows { columns } => {
                format!(
                    "{INSERT} SELECT DISTINCT TG_TABLE_SCHEMA, {d}, {} FROM changed c WHERE {};\n    RETURN NULL;",
                    key_text("c.", columns),
                    not_null("c.", columns)
                )
            }
            Body::Moved { logged, key, watched } => {
                let w = quote(watched);
                let same: String = key.iter().map(|k| format!("k.{k} = g.{k} AND ", k = quote(k))).collect();
                format!(
                    "{INSERT} SELECT DISTINCT TG_TABLE_SCHEMA, {d}, {} FROM gone g WHERE {}\n        AND NOT EXISTS (SELECT 1 FROM kept k WHERE {same}k.{w} IS NOT DISTINCT FROM g.{w});\n    RETURN NULL;",
                    key_text("g.", logged),
                    not_null("g.", logged)
                )
            }
            Body::Referencing { fan_out, key } => {
                let (s, m, k) = (key_text("r.", &fan_out.select), quote(&fan_out.matching), quote(key));
                let present = not_null("r.", &fan_out.select);
                let condition = match fan_out.via_select(schema, &|c: &str| format!("{c} = OLD.{k}")) {
                    None => format!("r.{m} = OLD.{k}"),
                    Some(sub) => format!("r.{m} IN ({sub})"),
                };
                format!(
                    "{INSERT} SELECT DISTINCT TG_TABLE_SCHEMA, {d}, {s} FROM {} r WHERE {condition} AND {present};\n    RETURN OLD;",
                    qualified(schema, &fan_out.table)
                )
            }
            Body::ReferencingWritten { fan_out, key } => {
                let (s, m, k) = (key_text("r.", &fan_out.select), quote(&fan_out.matching), quote(key));
                let present = not_null("r.", &fan_out.select);
                let table = qualified(schema, &fan_out.table);
                match fan_out.via_select(schema, &|c: &str| format!("{c} IN (SELECT c.{k} FROM changed c)")) {
                    None => format!(
                        "{INSERT} SELECT DISTINCT TG_TABLE_SCHEMA, {d}, {s} FROM {table} r JOIN changed c ON r.{m} = c.{k} WHERE {present};\n    RETURN NULL;"
                    ),
                    Some(sub) => {
                        format!("{INSERT} SELECT DISTINCT TG_TABLE_SCHEMA, {d}, {s} FROM {table} r WHERE r.{m} IN ({sub}) AND {present};\n    RETURN NULL;")
                    }
                }
            }
            Body::Truncate => format!("{INSERT} VALUES (TG_TABLE_SCHEMA, {d}, NULL);\n    RETURN NULL;"),
        }
    }
}

/// The capture of `docs` (all of one schema).
pub fn capture(schema: &str, docs: &[Document]) -> TriggerSet {
    let mut triggers: Vec<Trigger> = Vec::new();
    let mut add = |table: &str, kind: &str, doc: &str, writes: bool, when: &str, body: Body| {
        let base = format!("pg2es_{doc}_{kind}");
        let same = triggers.iter().filter(|t| t.table == table && (t.name == base || t.name.starts_with(&format!("{base}_")))).count();
        let name = if same == 0 { base } else { format!("{base}_{}", same + 1) };
        let function = format!("pg2es.{}", quote(&format!("capture_{}", hash(&[schema, table, &name]))));
        let create = format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger\nLANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$\nBEGIN\n    {}\nEND $$;\n\
             REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;\n\
             CREATE TRIGGER {name} {} EXECUTE FUNCTION {function}()",
            body.sql(schema, doc),
            when.replace("{table}", &qualified(schema, table))
        );
        triggers.push(Trigger { table: table.to_string(), name, writes, function, create });
    };
    const OLD_ROWS: &str = "AFTER DELETE ON {table} REFERENCING OLD TABLE AS changed FOR EACH STATEMENT";
    const MOVED: &str = "AFTER UPDATE ON {table} REFERENCING OLD TABLE AS gone NEW TABLE AS kept FOR EACH STATEMENT";
    const INSERTED: &str = "AFTER INSERT ON {table} REFERENCING NEW TABLE AS changed FOR EACH STATEMENT";
    const UPDATED: &str = "AFTER UPDATE ON {table} REFERENCING NEW TABLE AS changed FOR EACH STATEMENT";
    for doc in docs {
        let d = doc.name.as_str();
        for s in &doc.streams {
            let t = s.table.as_str();
            for c in &s.direct {
                add(t, "deleted", d, false, OLD_ROWS, Body::Rows { columns: c });
                // A column naming the root, not the row's own key: a row can move to another root.
                if *c != s.key {
                    add(t, "moved", d, false, MOVED, Body::Moved { logged: c, key: &s.key, watched: &c[0] });
                }
                add(t, "inserted", d, true, INSERTED, Body::Rows { columns: c });
                add(t, "updated", d, true, UPDATED, Body::Rows { columns: c });
            }
            for r in &s.references {
                add(t, "reference_moved", d, false, MOVED, Body::Moved { logged: &s.key, key: &s.key, watched: r });
            }
            for f in &s.fan_out {
                let key = s.key[0].as_str();
                add(t, "linked", d, false, "BEFORE DELETE ON {table} FOR EACH ROW", Body::Referencing { fan_out: f, key });
                add(t, "linked_updated", d, true, UPDATED, Body::ReferencingWritten { fan_out: f, key });
            }
            add(t, "truncated", d, false, "AFTER TRUNCATE ON {table} FOR EACH STATEMENT", Body::Truncate);
        }
    }
    let mut tables: Vec<String> = triggers.iter().map(|t| t.table.clone()).collect();
    tables.sort();
    tables.dedup();
    TriggerSet { schema: schema.to_string(), documents: docs.iter().map(|d| d.name.clone()).collect(), tables, triggers }
}

impl TriggerSet {
    /// The statements that create the functions and triggers (after `sql/capture.sql`), each
    /// trigger dropped first; with `writes`, the write capture's too.
    pub fn create_sql(&self, writes: bool) -> String {
        let mut sql = String::new();
        for t in self.triggers.iter().filter(|t| writes || !t.writes) {
            sql.push_str(&format!("DROP TRIGGER IF EXISTS {} ON {};\n{};\n", t.name, qualified(&self.schema, &t.table), t.create));
        }
        sql
    }

    pub fn deletes(&self) -> impl Iterator<Item = &Trigger> {
        self.triggers.iter().filter(|t| !t.writes)
    }

    pub fn writes(&self) -> impl Iterator<Item = &Trigger> {
        self.triggers.iter().filter(|t| t.writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_trigger_has_a_function_of_its_own_with_its_statement_written_out() {
        let set = capture("content", &crate::catalog::testing::cinema()[..1]);
        assert_eq!(set.deletes().count(), 12);
        assert_eq!(set.writes().count(), 8);
        let mut functions: Vec<&str> = set.triggers.iter().map(|t| t.function.as_str()).collect();
        functions.sort_unstable();
        functions.dedup();
        assert_eq!(functions.len(), set.triggers.len(), "one function per trigger");
        let linked = set.triggers.iter().find(|t| t.table == "person" && t.name == "pg2es_movies_linked").unwrap();
        assert!(linked.create.contains(r#"FROM "content"."person_film_work" r WHERE r."person_id" = OLD."id""#), "{}", linked.create);
        assert!(linked.create.contains("BEFORE DELETE ON \"content\".\"person\" FOR EACH ROW"), "{}", linked.create);
        assert!(!set.triggers.iter().any(|t| t.create.contains("EXECUTE format")));
        // The same trigger gets the same function in every build.
        assert_eq!(capture("content", &crate::catalog::testing::cinema()[..1]), set);
        assert_eq!(hash(&["content", "person", "pg2es_movies_linked"]).len(), 16);
    }
}
