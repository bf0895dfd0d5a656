//! The change capture's triggers, generated from the documents (the functions they call are in
//! `sql/capture.sql`). For every table of a document: a delete logs the keys of the documents it
//! changes (a root's own key, a link's or child's root column, the roots of a related row through
//! its link or the root's reference to it, before the cascade), a row moved away from its root
//! logs the old root, a truncate asks for a reload; with the write capture, inserts and updates
//! are logged the same way.

use super::model::Document;
use super::resolve::{qualified, quote};

/// One trigger on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub table: String,
    pub name: String,
    /// Part of the write capture (`install --writes`).
    pub writes: bool,
    /// The `CREATE TRIGGER` statement.
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

fn args(values: &[&str]) -> String {
    values.iter().map(|v| literal(v)).collect::<Vec<_>>().join(", ")
}

/// The capture of `docs` (all of one schema).
pub fn capture(schema: &str, docs: &[Document]) -> TriggerSet {
    let mut triggers: Vec<Trigger> = Vec::new();
    let mut add = |table: &str, kind: &str, doc: &str, writes: bool, body: String| {
        let base = format!("pg2es_{doc}_{kind}");
        let same = triggers.iter().filter(|t| t.table == table && (t.name == base || t.name.starts_with(&format!("{base}_")))).count();
        let name = if same == 0 { base } else { format!("{base}_{}", same + 1) };
        let create = format!("CREATE TRIGGER {name} {body}").replace("{table}", &qualified(schema, table));
        triggers.push(Trigger { table: table.to_string(), name, writes, create });
    };
    for doc in docs {
        let d = doc.name.as_str();
        for s in &doc.streams {
            let t = s.table.as_str();
            for c in &s.direct {
                add(
                    t,
                    "deleted",
                    d,
                    false,
                    format!(
                        "AFTER DELETE ON {{table}} REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pg2es.capture_rows({})",
                        args(&[d, c])
                    ),
                );
                if *c != s.key {
                    add(
                        t,
                        "moved",
                        d,
                        false,
                        format!("AFTER UPDATE ON {{table}} REFERENCING OLD TABLE AS gone NEW TABLE AS kept FOR EACH STATEMENT EXECUTE FUNCTION pg2es.capture_moved({})", args(&[d, c, &s.key, c])),
                    );
                }
                add(
                    t,
                    "inserted",
                    d,
                    true,
                    format!(
                        "AFTER INSERT ON {{table}} REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pg2es.capture_rows({})",
                        args(&[d, c])
                    ),
                );
                add(
                    t,
                    "updated",
                    d,
                    true,
                    format!(
                        "AFTER UPDATE ON {{table}} REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pg2es.capture_rows({})",
                        args(&[d, c])
                    ),
                );
            }
            for r in &s.references {
                add(
                    t,
                    "reference_moved",
                    d,
                    false,
                    format!(
                        "AFTER UPDATE ON {{table}} REFERENCING OLD TABLE AS gone NEW TABLE AS kept FOR EACH STATEMENT EXECUTE FUNCTION pg2es.capture_moved({})",
                        args(&[d, &s.key, &s.key, r])
                    ),
                );
            }
            for f in &s.fan_out {
                add(
                    t,
                    "linked",
                    d,
                    false,
                    format!(
                        "BEFORE DELETE ON {{table}} FOR EACH ROW EXECUTE FUNCTION pg2es.capture_referencing({})",
                        args(&[d, &f.table, &f.select, &f.matching, &s.key])
                    ),
                );
                add(
                    t,
                    "linked_updated",
                    d,
                    true,
                    format!(
                        "AFTER UPDATE ON {{table}} REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pg2es.capture_referencing_written({})",
                        args(&[d, &f.table, &f.select, &f.matching, &s.key])
                    ),
                );
            }
            add(t, "truncated", d, false, format!("AFTER TRUNCATE ON {{table}} FOR EACH STATEMENT EXECUTE FUNCTION pg2es.capture_truncate({})", args(&[d])));
        }
    }
    let mut tables: Vec<String> = triggers.iter().map(|t| t.table.clone()).collect();
    tables.sort();
    tables.dedup();
    TriggerSet { schema: schema.to_string(), documents: docs.iter().map(|d| d.name.clone()).collect(), tables, triggers }
}

impl TriggerSet {
    /// The statements that create the triggers (after `sql/capture.sql`), each dropped first;
    /// with `writes`, the write capture's too.
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

    /// `"schema"."table"` of a table of the capture.
    pub fn table(&self, table: &str) -> String {
        qualified(&self.schema, table)
    }

    pub fn quoted_schema(&self) -> String {
        quote(&self.schema)
    }
}
