//! The SQL a document is read with, generated from its definition. Identifiers come from the live
//! schema (checked in `resolve.rs`) and are quoted; every value is a parameter.
//!
//! A record row is the root's columns, then each relation's columns: for a to-many relation one
//! array per column (`array_agg` over the same rows, so the arrays line up), for many-to-one the
//! values themselves. Two forms: a lookup per root (`LEFT JOIN LATERAL`, through the link
//! table's index on its root column: cheap for a few hundred ids), and the full scan, where each
//! relation is aggregated once in a whole-table join the planner can merge or hash.

use super::model::{Document, Join, Relation, Side};
use super::resolve::{qualified, quote};

const ROOT: &str = "t";

fn alias(i: usize) -> String {
    format!("r{i}")
}

/// The record query's select list.
fn select_list(doc: &Document) -> String {
    let mut cols: Vec<String> = doc.root_columns.iter().map(|(c, ty)| ty.select(&format!("{ROOT}.{}", quote(c)))).collect();
    for (i, rel) in doc.relations.iter().enumerate() {
        for j in 0..rel.columns.len() {
            cols.push(match rel.join {
                Join::RootColumn(_) => {
                    let c = &rel.columns[j];
                    c.ty.select(&format!("{}.{}", alias(i), quote(&c.name)))
                }
                _ => format!("{}.c{j}", alias(i)),
            });
        }
    }
    cols.join(", ")
}

/// `array_agg(...) AS cN` for each column of a to-many relation, the related table as `r`, the
/// link as `l`.
fn aggregates(rel: &Relation) -> String {
    rel.columns
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let table = if c.side == Side::Link { "l" } else { "r" };
            let expr = c.ty.select(&format!("{table}.{}", quote(&c.name)));
            format!("array_agg({expr}) AS c{j}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lookup_joins(doc: &Document) -> String {
    let s = &doc.schema;
    let key = format!("{ROOT}.{}", quote(&doc.key));
    let mut out = String::new();
    for (i, rel) in doc.relations.iter().enumerate() {
        let related = qualified(s, &rel.table);
        let a = alias(i);
        let join = match &rel.join {
            Join::Through { link, root, related: rcol, .. } => format!(
                "LEFT JOIN LATERAL (SELECT {} FROM {} l JOIN {related} r ON r.{} = l.{} WHERE l.{} = {key}) {a} ON true",
                aggregates(rel),
                qualified(s, link),
                quote(&rel.key),
                quote(rcol),
                quote(root)
            ),
            Join::RelatedColumn(c) => format!("LEFT JOIN LATERAL (SELECT {} FROM {related} r WHERE r.{} = {key}) {a} ON true", aggregates(rel), quote(c)),
            Join::RootColumn(c) => format!("LEFT JOIN {related} {a} ON {a}.{} = {ROOT}.{}", quote(&rel.key), quote(c)),
        };
        out.push('\n');
        out.push_str(&join);
    }
    out
}

/// Records picked by `filter`, a fixed clause on `t` whose values are parameters.
pub fn lookup(doc: &Document, filter: &str) -> String {
    format!("SELECT {}\nFROM {} {ROOT}{}\n{filter}", select_list(doc), qualified(&doc.schema, &doc.root), lookup_joins(doc))
}

/// The records with these keys (`$1`, uuid[]).
pub fn records(doc: &Document) -> String {
    lookup(doc, &format!("WHERE {ROOT}.{} = ANY($1::uuid[])", quote(&doc.key)))
}

/// The next `$2` records after key `$1`, in key order.
pub fn records_after(doc: &Document) -> String {
    let k = format!("{ROOT}.{}", quote(&doc.key));
    lookup(doc, &format!("WHERE {k} > $1 ORDER BY {k} LIMIT $2"))
}

/// Every record in key order (after `$1` when `after`), for the full load.
pub fn scan(doc: &Document, after: bool) -> String {
    let s = &doc.schema;
    let key = format!("{ROOT}.{}", quote(&doc.key));
    let mut joins = String::new();
    for (i, rel) in doc.relations.iter().enumerate() {
        let related = qualified(s, &rel.table);
        let a = alias(i);
        let join = match &rel.join {
            Join::Through { link, root, related: rcol, .. } => {
                let only = if after { format!("WHERE l.{} > $1 ", quote(root)) } else { String::new() };
                format!(
                    "LEFT JOIN (SELECT l.{root_q} AS k, {} FROM {} l JOIN {related} r ON r.{} = l.{} {only}GROUP BY l.{root_q}) {a} ON {a}.k = {key}",
                    aggregates(rel),
                    qualified(s, link),
                    quote(&rel.key),
                    quote(rcol),
                    root_q = quote(root)
                )
            }
            Join::RelatedColumn(c) => {
                let only = if after { format!("WHERE r.{} > $1 ", quote(c)) } else { String::new() };
                format!("LEFT JOIN (SELECT r.{c_q} AS k, {} FROM {related} r {only}GROUP BY r.{c_q}) {a} ON {a}.k = {key}", aggregates(rel), c_q = quote(c))
            }
            Join::RootColumn(c) => format!("LEFT JOIN {related} {a} ON {a}.{} = {ROOT}.{}", quote(&rel.key), quote(c)),
        };
        joins.push('\n');
        joins.push_str(&join);
    }
    let filter = if after { format!("\nWHERE {key} > $1") } else { String::new() };
    format!("SELECT {}\nFROM {} {ROOT}{joins}{filter}\nORDER BY {key}", select_list(doc), qualified(s, &doc.root))
}

/// How many records have a key after `$1`.
pub fn count_after(doc: &Document) -> String {
    format!("SELECT count(*) FROM {} WHERE {} > $1", qualified(&doc.schema, &doc.root), quote(&doc.key))
}

/// Which of the keys `$1` exist: the key, and for a document with a `where` of its own every
/// root column (the filter is the catalog's, applied to the row as to a record).
pub fn existing(doc: &Document) -> String {
    let k = quote(&doc.key);
    if doc.filter.is_empty() {
        return format!("SELECT {k} FROM {} WHERE {k} = ANY($1::uuid[])", qualified(&doc.schema, &doc.root));
    }
    let columns: Vec<String> = doc.root_columns.iter().map(|(c, ty)| ty.select(&format!("{ROOT}.{}", quote(c)))).collect();
    format!("SELECT {} FROM {} {ROOT} WHERE {ROOT}.{k} = ANY($1::uuid[])", columns.join(", "), qualified(&doc.schema, &doc.root))
}

/// A stream's page after `($1, $2)` (`$3` rows), or the first page (`$1` rows): timestamp, key,
/// the direct columns, then `xmin` (the row version).
pub fn page(doc: &Document, table: &str, after: bool) -> String {
    let st = doc.stream(table).expect("a stream of the document");
    let (ts, key) = (quote(&st.timestamp), quote(&st.key));
    let direct: String = st.direct.iter().map(|c| format!(", {}", quote(c))).collect();
    let select = format!("SELECT {ts}::timestamptz, {key}{direct}, xmin::text::bigint FROM {}", qualified(&doc.schema, table));
    if after {
        format!("{select} WHERE ({ts}, {key}) > ($1::timestamptz, $2::uuid) ORDER BY {ts}, {key} LIMIT $3")
    } else {
        format!("{select} WHERE {ts} IS NOT NULL ORDER BY {ts}, {key} LIMIT $1")
    }
}

/// A stream's newest position.
pub fn head(doc: &Document, table: &str) -> String {
    let st = doc.stream(table).expect("a stream of the document");
    let (ts, key) = (quote(&st.timestamp), quote(&st.key));
    format!("SELECT {ts}::timestamptz, {key} FROM {} WHERE {ts} IS NOT NULL ORDER BY {ts} DESC, {key} DESC LIMIT 1", qualified(&doc.schema, table))
}
