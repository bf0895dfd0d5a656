//! The SQL a document is read with, generated from its definition. Identifiers come from the live
//! schema (checked in `resolve.rs`) and are quoted; every value is a parameter.
//!
//! A record row is the root's columns, then each relation's columns: for a to-many relation one
//! array per column (`array_agg` over the same rows, so the arrays line up), for many-to-one the
//! values themselves. Two forms: a lookup per root (`LEFT JOIN LATERAL`, through the link
//! table's index on its root column: cheap for a few hundred ids), and the full scan, where each
//! relation is aggregated once in a whole-table join the planner can merge or hash.

use super::model::{Document, Join, Relation, Side, Stream};
use super::resolve::{qualified, quote};
use crate::position::KeyKind;

/// A key column read as pg2es keeps a key part: integers as `int8`, anything else as its text.
pub fn read_key(kind: KeyKind, column: &str) -> String {
    match kind {
        KeyKind::Int => format!("{column}::int8"),
        KeyKind::Uuid | KeyKind::Text => format!("{column}::text"),
    }
}

/// Parameter `$n`, an array of key parts (`int8[]` or `text[]`), as the column's type.
pub fn key_array(kind: KeyKind, n: usize) -> String {
    match kind {
        KeyKind::Int => format!("${n}::int8[]"),
        KeyKind::Uuid => format!("${n}::text[]::uuid[]"),
        KeyKind::Text => format!("${n}::text[]"),
    }
}

/// Parameter `$n`, one key part, as the column's type (and, for text, compared by bytes).
fn key_param(kind: KeyKind, n: usize) -> String {
    match kind {
        KeyKind::Int => format!("${n}::int8"),
        KeyKind::Uuid => format!("${n}::text::uuid"),
        KeyKind::Text => format!("${n}::text COLLATE \"C\""),
    }
}

/// A key column as it is ordered: text by its bytes, so that Postgres's order is pg2es's.
fn ordered(kind: KeyKind, column: &str) -> String {
    match kind {
        KeyKind::Text => format!("{column} COLLATE \"C\""),
        KeyKind::Int | KeyKind::Uuid => column.to_string(),
    }
}

/// The key columns `columns` (already qualified) as one SQL operand: the column, or a row of them.
fn operand(parts: Vec<String>) -> String {
    match parts.as_slice() {
        [one] => one.clone(),
        _ => format!("({})", parts.join(", ")),
    }
}

/// `columns` (qualified by `prefix`) hold one of the keys given as parameters from `$first` on,
/// an array per column (`existing`, `records`): `= ANY` for one column, `IN (SELECT * FROM
/// unnest(...))` of the arrays side by side for several, which the planner joins to the key's index.
fn keys_in(prefix: &str, columns: &[String], kinds: &[KeyKind], first: usize) -> String {
    let cols: Vec<String> = columns.iter().map(|c| format!("{prefix}{}", quote(c))).collect();
    let arrays: Vec<String> = kinds.iter().enumerate().map(|(i, k)| key_array(*k, first + i)).collect();
    match (cols.as_slice(), arrays.as_slice()) {
        ([c], [a]) => format!("{c} = ANY({a})"),
        _ => format!("{} IN (SELECT * FROM unnest({}))", operand(cols), arrays.join(", ")),
    }
}

/// The root's key columns (of `t`) after the key given as parameters from `$first` on, in key order.
fn key_after(doc: &Document, first: usize) -> String {
    let cols = doc.key.iter().zip(&doc.kinds).map(|(c, k)| ordered(*k, &format!("{ROOT}.{}", quote(c)))).collect();
    let params = doc.kinds.iter().enumerate().map(|(i, k)| key_param(*k, first + i)).collect();
    format!("{} > {}", operand(cols), operand(params))
}

/// The root's key columns (of `t`) in key order, for `ORDER BY`.
fn key_order(doc: &Document) -> String {
    doc.key.iter().zip(&doc.kinds).map(|(c, k)| ordered(*k, &format!("{ROOT}.{}", quote(c)))).collect::<Vec<_>>().join(", ")
}

/// The text of a key in SQL, a document's `_id` (see `position::Key`): the column's text for one
/// column; for several each part with `%` written `%25` and `|` written `%7C`, joined by `|`.
/// `prefix` qualifies the columns (`c.`, `OLD.`).
pub fn key_text(prefix: &str, columns: &[String]) -> String {
    match columns {
        [one] => format!("{prefix}{}::text", quote(one)),
        _ => columns.iter().map(|c| format!("replace(replace({prefix}{}::text, '%', '%25'), '|', '%7C')", quote(c))).collect::<Vec<_>>().join(" || '|' || "),
    }
}

/// The stream's key columns, as ordered, with `dir` after each.
fn stream_order(st: &Stream, dir: &str) -> String {
    st.key.iter().zip(&st.kinds).map(|(c, k)| format!("{}{dir}", ordered(*k, &quote(c)))).collect::<Vec<_>>().join(", ")
}

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
                    c.ty.select(&format!("{}.{}", table_alias(&alias(i), &alias(i), c.side), quote(&c.name)))
                }
                _ => format!("{}.c{j}", alias(i)),
            });
        }
    }
    cols.join(", ")
}

/// The alias a column's table has: the related table's `related`, the link's `l`, a relation of
/// the relation's `<prefix>n<i>`.
fn table_alias(related: &str, prefix: &str, side: Side) -> String {
    match side {
        Side::Related => related.to_string(),
        Side::Link => "l".to_string(),
        Side::Nested(i) => format!("{prefix}n{i}"),
    }
}

/// The `LEFT JOIN`s of a relation's relations, after its table (aliased `related`); theirs are
/// `<prefix>n<i>`. Many-to-one each: the relation's rows stay as many, so the arrays line up.
fn nested_joins(rel: &Relation, schema: &str, related: &str, prefix: &str) -> String {
    rel.nested
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let above = n.parent.map_or_else(|| related.to_string(), |p| format!("{prefix}n{p}"));
            format!(" LEFT JOIN {} {prefix}n{i} ON {prefix}n{i}.{} = {above}.{}", qualified(schema, &n.table), quote(&n.key), quote(&n.column))
        })
        .collect()
}

/// `array_agg(...) AS cN` for each column of a to-many relation, the related table as `r`, the
/// link as `l`.
fn aggregates(rel: &Relation) -> String {
    rel.columns
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let table = table_alias("r", "", c.side);
            let expr = c.ty.select(&format!("{table}.{}", quote(&c.name)));
            format!("array_agg({expr}) AS c{j}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lookup_joins(doc: &Document) -> String {
    let s = &doc.schema;
    // A to-many relation is of a root with a key of one column (see `resolve.rs`).
    let key = format!("{ROOT}.{}", quote(&doc.key[0]));
    let mut out = String::new();
    for (i, rel) in doc.relations.iter().enumerate() {
        let related = qualified(s, &rel.table);
        let a = alias(i);
        let join = match &rel.join {
            Join::Through { link, root, related: rcol, .. } => format!(
                "LEFT JOIN LATERAL (SELECT {} FROM {} l JOIN {related} r ON r.{} = l.{}{} WHERE l.{} = {key}) {a} ON true",
                aggregates(rel),
                qualified(s, link),
                quote(&rel.key),
                quote(rcol),
                nested_joins(rel, s, "r", ""),
                quote(root)
            ),
            Join::RelatedColumn(c) => {
                format!(
                    "LEFT JOIN LATERAL (SELECT {} FROM {related} r{} WHERE r.{} = {key}) {a} ON true",
                    aggregates(rel),
                    nested_joins(rel, s, "r", ""),
                    quote(c)
                )
            }
            Join::RootColumn(c) => format!("LEFT JOIN {related} {a} ON {a}.{} = {ROOT}.{}{}", quote(&rel.key), quote(c), nested_joins(rel, s, &a, &a)),
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

/// The records with these keys (`$1`, an array of key parts; `$1`, `$2`.. for a composite key).
pub fn records(doc: &Document) -> String {
    lookup(doc, &format!("WHERE {}", keys_in(&format!("{ROOT}."), &doc.key, &doc.kinds, 1)))
}

/// The next `$2` records after the key whose text is `$1` (NULL: from the first), in the order of
/// the keys' text by its bytes, which is the order of an index's keyword `_id`s. For a uuid key
/// that is the key's own order, and this an index range scan (from the nil uuid, which no row
/// has: `$1` is never NULL); for other keys it is a sort of the table at each page.
pub fn records_after(doc: &Document) -> String {
    let k = format!("{ROOT}.{}", quote(&doc.key[0]));
    let by = match doc.kinds.as_slice() {
        [KeyKind::Uuid] => return lookup(doc, &format!("WHERE {k} > $1::text::uuid ORDER BY {k} LIMIT $2")),
        [KeyKind::Int] => format!("{k}::text COLLATE \"C\""),
        [KeyKind::Text] => format!("{k} COLLATE \"C\""),
        _ => format!("({}) COLLATE \"C\"", key_text(&format!("{ROOT}."), &doc.key)),
    };
    lookup(doc, &format!("WHERE ($1::text IS NULL OR {by} > $1::text COLLATE \"C\") ORDER BY {by} LIMIT $2"))
}

/// Every record in key order (after `$1`, or `$1`, `$2`.. for a composite key, when `after`), for
/// the full load.
pub fn scan(doc: &Document, after: bool) -> String {
    let s = &doc.schema;
    let key = format!("{ROOT}.{}", quote(&doc.key[0]));
    let key_kind = doc.kinds[0];
    let mut joins = String::new();
    for (i, rel) in doc.relations.iter().enumerate() {
        let related = qualified(s, &rel.table);
        let a = alias(i);
        let join = match &rel.join {
            Join::Through { link, root, related: rcol, .. } => {
                let only =
                    if after { format!("WHERE {} > {} ", ordered(key_kind, &format!("l.{}", quote(root))), key_param(key_kind, 1)) } else { String::new() };
                format!(
                    "LEFT JOIN (SELECT l.{root_q} AS k, {} FROM {} l JOIN {related} r ON r.{} = l.{}{} {only}GROUP BY l.{root_q}) {a} ON {a}.k = {key}",
                    aggregates(rel),
                    qualified(s, link),
                    quote(&rel.key),
                    quote(rcol),
                    nested_joins(rel, s, "r", ""),
                    root_q = quote(root)
                )
            }
            Join::RelatedColumn(c) => {
                let only = if after { format!("WHERE {} > {} ", ordered(key_kind, &format!("r.{}", quote(c))), key_param(key_kind, 1)) } else { String::new() };
                format!(
                    "LEFT JOIN (SELECT r.{c_q} AS k, {} FROM {related} r{} {only}GROUP BY r.{c_q}) {a} ON {a}.k = {key}",
                    aggregates(rel),
                    nested_joins(rel, s, "r", ""),
                    c_q = quote(c)
                )
            }
            Join::RootColumn(c) => format!("LEFT JOIN {related} {a} ON {a}.{} = {ROOT}.{}{}", quote(&rel.key), quote(c), nested_joins(rel, s, &a, &a)),
        };
        joins.push('\n');
        joins.push_str(&join);
    }
    let filter = if after { format!("\nWHERE {}", key_after(doc, 1)) } else { String::new() };
    format!("SELECT {}\nFROM {} {ROOT}{joins}{filter}\nORDER BY {}", select_list(doc), qualified(s, &doc.root), key_order(doc))
}

/// How many records have a key after `$1` (`$1`, `$2`.. for a composite key).
pub fn count_after(doc: &Document) -> String {
    format!("SELECT count(*) FROM {} {ROOT} WHERE {}", qualified(&doc.schema, &doc.root), key_after(doc, 1))
}

/// Which of the keys `$1` exist: the key, and for a document with a `where` of its own every
/// root column (the filter is the catalog's, applied to the row as to a record).
pub fn existing(doc: &Document) -> String {
    if doc.filter.is_empty() {
        let key: Vec<String> = doc.key.iter().zip(&doc.kinds).map(|(c, k)| read_key(*k, &quote(c))).collect();
        return format!("SELECT {} FROM {} WHERE {}", key.join(", "), qualified(&doc.schema, &doc.root), keys_in("", &doc.key, &doc.kinds, 1));
    }
    let columns: Vec<String> = doc.root_columns.iter().map(|(c, ty)| ty.select(&format!("{ROOT}.{}", quote(c)))).collect();
    format!("SELECT {} FROM {} {ROOT} WHERE {}", columns.join(", "), qualified(&doc.schema, &doc.root), keys_in(&format!("{ROOT}."), &doc.key, &doc.kinds, 1))
}

/// The stream's key columns as read.
fn stream_key(st: &Stream) -> String {
    st.key.iter().zip(&st.kinds).map(|(c, k)| read_key(*k, &quote(c))).collect::<Vec<_>>().join(", ")
}

/// A stream's page after `($1, $2..)` (the timestamp, then a parameter per key column; then the
/// limit), or the first page (`$1` rows): timestamp, the key columns, the direct columns (root
/// keys), then `xmin` (the row version). `None` for a table without a timestamp.
pub fn page(doc: &Document, table: &str, after: bool) -> Option<String> {
    let st = doc.stream(table).expect("a stream of the document");
    let ts = quote(st.timestamp.as_deref()?);
    let direct: String = st.direct.iter().flat_map(|columns| columns.iter().zip(&doc.kinds)).map(|(c, k)| format!(", {}", read_key(*k, &quote(c)))).collect();
    let select = format!("SELECT {ts}::timestamptz, {}{direct}, xmin::text::bigint FROM {}", stream_key(st), qualified(&doc.schema, table));
    let order = stream_order(st, "");
    Some(if after {
        let columns: Vec<String> = st.key.iter().zip(&st.kinds).map(|(c, k)| ordered(*k, &quote(c))).collect();
        let params: Vec<String> = st.kinds.iter().enumerate().map(|(i, k)| key_param(*k, i + 2)).collect();
        format!("{select} WHERE ({ts}, {}) > ($1::timestamptz, {}) ORDER BY {ts}, {order} LIMIT ${}", columns.join(", "), params.join(", "), st.key.len() + 2)
    } else {
        format!("{select} WHERE {ts} IS NOT NULL ORDER BY {ts}, {order} LIMIT $1")
    })
}

/// A stream's newest position: timestamp, the key columns (`None` without a timestamp).
pub fn head(doc: &Document, table: &str) -> Option<String> {
    let st = doc.stream(table).expect("a stream of the document");
    let ts = quote(st.timestamp.as_deref()?);
    Some(format!(
        "SELECT {ts}::timestamptz, {} FROM {} WHERE {ts} IS NOT NULL ORDER BY {ts} DESC, {} LIMIT 1",
        stream_key(st),
        qualified(&doc.schema, table),
        stream_order(st, " DESC")
    ))
}
