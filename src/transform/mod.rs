//! Records -> documents, as the definition says. Pure functions, no I/O.
//!
//! One [`Record`] (a root row with its relations' rows, as the source reads it) becomes one JSON
//! document with the fields in the definition's order. The rules (also in docs/definition.md):
//!
//! - **Unknown text.** Text that is missing, empty, whitespace only or `N/A` (any case, any
//!   padding) is unknown: a field is `null`, a list leaves it out, an object whose `required`
//!   field is unknown is left out. Unknown never reaches the index as text. The key field `id`
//!   is the key as stored, whatever its text.
//! - **Known text is kept exactly as stored**, padding included.
//! - **Filters** (`where`) compare by the column's type: text trimmed and ignoring ASCII case,
//!   enum labels exactly, integers, booleans and uuids by value, or NULL. Rows of a relation that
//!   no field keeps are reported in [`Notes`] (counted, their values named), for the cycle's
//!   summary.
//! - **Lists** are never null; rows repeated by joins collapse (by the related key, or by value
//!   with `distinct = "value"`); lists are sorted by their `order` columns, then the key, so a
//!   document does not depend on row order.
//! - **Numbers** a `float` field cannot hold (NaN, infinite, beyond `f32`) are unknown.

#[cfg(test)]
mod oracle;

use std::cmp::Ordering;

use crate::catalog::{Cell, Distinct, Document, FieldKind, Filter, Record, Relation, SubField, Value, KEY_FIELD};

/// What the transform left out of a document, for the cycle's counters and a log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notes {
    /// Related rows no field keeps (their `where` values are none of the wanted ones).
    pub unmatched: usize,
    /// The distinct values behind `unmatched` (text trimmed and in lower case, sorted;
    /// [`NO_VALUE`] for a missing or blank one).
    pub unmatched_values: Vec<String>,
    /// Objects left out because a `required` field is unknown.
    pub incomplete: usize,
    /// Numbers the index cannot store (NaN, infinite, beyond a `float` field): left unknown.
    pub bad_numbers: usize,
}

/// How [`Notes::unmatched_values`] shows a missing or blank value.
pub const NO_VALUE: &str = "(none)";

impl Notes {
    fn unmatched(&mut self, raw: &Value) {
        self.unmatched += 1;
        let name = raw.label().unwrap_or_else(|| NO_VALUE.to_string());
        if let Err(at) = self.unmatched_values.binary_search(&name) {
            self.unmatched_values.insert(at, name);
        }
    }
}

/// A record that does not fit its document's columns (arrays of one relation differ in length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

/// `false` for missing, empty, whitespace-only and `N/A` text, and for numbers the field cannot
/// hold (counted in `notes`).
fn known(v: &Value, f32: bool, notes: &mut Notes) -> bool {
    match v {
        Value::Null => false,
        Value::Text(t) => {
            let t = t.trim();
            !(t.is_empty() || t.eq_ignore_ascii_case("n/a"))
        }
        Value::Float(f) => {
            let ok = f.is_finite() && (!f32 || f.abs() <= f64::from(f32::MAX));
            if !ok {
                notes.bad_numbers += 1;
            }
            ok
        }
        _ => true,
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    // Writing to a Vec cannot fail; strings are escaped by serde_json.
    let _ = match v {
        Value::Null => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Value::Text(s) => serde_json::to_writer(&mut *out, s),
        Value::Uuid(u) => serde_json::to_writer(&mut *out, u),
        Value::Int(i) => serde_json::to_writer(&mut *out, i),
        Value::Float(f) => serde_json::to_writer(&mut *out, f),
        Value::Bool(b) => serde_json::to_writer(&mut *out, b),
        Value::Json(j) => {
            out.extend_from_slice(j.as_bytes());
            Ok(())
        }
    };
}

/// Writes `v`, or `null` when unknown.
fn write_known(out: &mut Vec<u8>, v: &Value, f32: bool, notes: &mut Notes) {
    if known(v, f32, notes) {
        write_value(out, v)
    } else {
        out.extend_from_slice(b"null")
    }
}

/// `[a,b,...]`, each item written by `item`.
fn write_list<T>(out: &mut Vec<u8>, items: &[T], item: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (j, v) in items.iter().enumerate() {
        if j > 0 {
            out.push(b',');
        }
        item(out, v);
    }
    out.push(b']');
}

fn write_key(out: &mut Vec<u8>, name: &str) {
    let _ = serde_json::to_writer(&mut *out, name);
    out.push(b':');
}

/// The rows of one relation in a record: row `i` is `values[c][i]` for each relation column `c`.
struct Rows<'a> {
    columns: Vec<&'a [Value]>,
    len: usize,
}

impl<'a> Rows<'a> {
    fn of(rel: &Relation, rec: &'a Record) -> Result<Rows<'a>, ShapeError> {
        let cells =
            rec.cells.get(rel.first..rel.first + rel.columns.len()).ok_or_else(|| ShapeError(format!("record {} lacks relation {}", rec.key, rel.name)))?;
        let columns: Vec<&[Value]> = cells
            .iter()
            .map(|c| match c {
                Cell::Many(v) => v.as_slice(),
                Cell::One(v) => std::slice::from_ref(v),
            })
            .collect();
        let mut len = columns.first().map_or(0, |c| c.len());
        if columns.iter().any(|c| c.len() != len) {
            let lens: Vec<String> = columns.iter().map(|c| c.len().to_string()).collect();
            return Err(ShapeError(format!("{} {}: the columns of relation {} differ in number ({})", rel.table, rec.key, rel.name, lens.join(", "))));
        }
        // Many-to-one: no related row when its key is null.
        if !rel.join.to_many() && rel.key_column.is_some_and(|k| columns[k].first().is_none_or(|v| *v == Value::Null)) {
            len = 0;
        }
        Ok(Rows { columns, len })
    }

    fn get(&self, row: usize, column: usize) -> &'a Value {
        &self.columns[column][row]
    }

    fn kept(&self, filter: &[Filter]) -> Vec<usize> {
        (0..self.len).filter(|&i| filter.iter().all(|f| f.keeps(self.get(i, f.column)))).collect()
    }

    /// Row indexes sorted by `order` columns, then the key (when read), then row index.
    fn sort(&self, rows: &mut [usize], order: &[usize], key: Option<usize>) {
        rows.sort_by(|&a, &b| {
            order
                .iter()
                .chain(key.iter())
                .map(|&c| self.get(a, c).compare(self.get(b, c)))
                .find(|o| *o != Ordering::Equal)
                .unwrap_or(Ordering::Equal)
                .then(a.cmp(&b))
        });
    }
}

/// The document for `rec`, as JSON.
pub fn build(doc: &Document, rec: &Record) -> Result<(Vec<u8>, Notes), ShapeError> {
    let mut notes = Notes::default();
    let mut out = Vec::with_capacity(1024);
    let rows: Vec<Rows> = doc.relations.iter().map(|r| Rows::of(r, rec)).collect::<Result<_, _>>()?;
    for (r, relation_rows) in rows.iter().enumerate() {
        note_unmatched(doc, r, relation_rows, &mut notes);
    }
    out.push(b'{');
    for (i, field) in doc.fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(&mut out, &field.name);
        match &field.kind {
            // The key as it is, even a blank or `N/A` one: it is the document's `_id`, and
            // `verify` and `--repair` match records and documents by it.
            FieldKind::Id => write_value(&mut out, &Value::Text(rec.key.to_string())),
            FieldKind::Column { column, .. } if field.name == KEY_FIELD => match rec.cells.get(*column) {
                Some(Cell::One(v)) => write_value(&mut out, v),
                _ => return Err(ShapeError(format!("record {}: column {column} of {} is not a value", rec.key, doc.root))),
            },
            FieldKind::Column { column, f32 } => match rec.cells.get(*column) {
                Some(Cell::One(v)) => write_known(&mut out, v, *f32, &mut notes),
                _ => return Err(ShapeError(format!("record {}: column {column} of {} is not a value", rec.key, doc.root))),
            },
            FieldKind::Concat { columns, separator } => {
                let mut parts = Vec::with_capacity(columns.len());
                for column in columns {
                    match rec.cells.get(*column) {
                        Some(Cell::One(v)) => parts.push(v),
                        _ => return Err(ShapeError(format!("record {}: column {column} of {} is not a value", rec.key, doc.root))),
                    }
                }
                write_known(&mut out, &joined(parts, separator), false, &mut notes);
            }
            FieldKind::Values { relation, column, filter, order, distinct, f32 } => {
                let (rel, rows) = (&doc.relations[*relation], &rows[*relation]);
                let mut kept = rows.kept(filter);
                rows.sort(&mut kept, order, rel.key_column);
                let mut values: Vec<&Value> = Vec::with_capacity(kept.len());
                let mut keys: Vec<&Value> = Vec::new();
                for i in kept {
                    let v = rows.get(i, *column);
                    let duplicate = match (distinct, rel.key_column) {
                        (Distinct::Value, _) => values.contains(&v),
                        (Distinct::Row, Some(k)) => keys.contains(&rows.get(i, k)),
                        (Distinct::Row, None) => false,
                    };
                    if duplicate || !known(v, *f32, &mut notes) {
                        continue;
                    }
                    if let Some(k) = rel.key_column {
                        keys.push(rows.get(i, k));
                    }
                    values.push(v);
                }
                if rel.join.to_many() {
                    write_list(&mut out, &values, |o, v| write_value(o, v));
                } else {
                    write_value(&mut out, values.first().copied().unwrap_or(&Value::Null));
                }
            }
            FieldKind::Objects { relation, filter, order, fields } => {
                let (rel, rows) = (&doc.relations[*relation], &rows[*relation]);
                let key = rel.key_column.expect("objects read the key");
                let mut kept = rows.kept(filter);
                rows.sort(&mut kept, order, Some(key));
                let mut objects: Vec<Vec<u8>> = Vec::new();
                let mut seen: Vec<&Value> = Vec::new();
                for &i in &kept {
                    let k = rows.get(i, key);
                    if seen.contains(&k) {
                        continue;
                    }
                    // A row whose required value is unknown does not stand for its related row:
                    // another row of the same one may (joins can repeat it with other values).
                    if fields.iter().any(|f| f.required && !f.list && !known(&sub_value(rows, i, f), f.f32, &mut Notes::default())) {
                        notes.incomplete += 1;
                        continue;
                    }
                    seen.push(k);
                    // Every row of this related row (several link rows join it once each).
                    let same: Vec<usize> = kept.iter().copied().filter(|&j| rows.get(j, key) == k).collect();
                    if let Some(obj) = object(fields, rows, i, &same, &mut notes) {
                        objects.push(obj);
                    }
                }
                if rel.join.to_many() {
                    write_list(&mut out, &objects, |o, obj| o.extend_from_slice(obj));
                } else {
                    match objects.first() {
                        Some(o) => out.extend_from_slice(o),
                        None => out.extend_from_slice(b"null"),
                    }
                }
            }
        }
    }
    out.push(b'}');
    Ok((out, notes))
}

/// One object from row `first` (and, for `list` fields, every row in `same`); `None` when a
/// required field is unknown.
fn object(fields: &[SubField], rows: &Rows, first: usize, same: &[usize], notes: &mut Notes) -> Option<Vec<u8>> {
    let mut o = vec![b'{'];
    for (n, f) in fields.iter().enumerate() {
        if n > 0 {
            o.push(b',');
        }
        write_key(&mut o, &f.name);
        if f.list {
            let mut values: Vec<&Value> = Vec::new();
            for &j in same {
                let v = rows.get(j, f.column);
                if !values.contains(&v) && known(v, f.f32, notes) {
                    values.push(v);
                }
            }
            values.sort_by(|a, b| a.compare(b));
            write_list(&mut o, &values, |o, v| write_value(o, v));
            continue;
        }
        let v = &sub_value(rows, first, f);
        if !known(v, f.f32, notes) {
            if f.required {
                notes.incomplete += 1;
                return None;
            }
            o.extend_from_slice(b"null");
            continue;
        }
        write_value(&mut o, v);
    }
    o.push(b'}');
    Some(o)
}

/// The known values of `parts` (text as stored, others as a log would write them) joined by
/// `separator`; NULL when none is known.
fn joined<'a>(parts: impl IntoIterator<Item = &'a Value>, separator: &str) -> Value {
    let mut out: Option<String> = None;
    for v in parts {
        if !known(v, false, &mut Notes::default()) {
            continue;
        }
        let text = match v {
            Value::Text(t) => t.clone(),
            other => other.label().unwrap_or_default(),
        };
        match &mut out {
            None => out = Some(text),
            Some(o) => {
                o.push_str(separator);
                o.push_str(&text);
            }
        }
    }
    out.map_or(Value::Null, Value::Text)
}

/// A sub-field's value in row `i`: its column's, or its `concat` columns' joined.
fn sub_value<'a>(rows: &Rows<'a>, i: usize, f: &SubField) -> std::borrow::Cow<'a, Value> {
    if f.concat.is_empty() {
        std::borrow::Cow::Borrowed(rows.get(i, f.column))
    } else {
        std::borrow::Cow::Owned(joined(f.concat.iter().map(|&c| rows.get(i, c)), &f.separator))
    }
}

/// Counts the rows of relation `r` that no field using it keeps (when every such field filters).
fn note_unmatched(doc: &Document, r: usize, rows: &Rows, notes: &mut Notes) {
    let filters: Vec<&[Filter]> = doc
        .fields
        .iter()
        .filter_map(|f| match &f.kind {
            FieldKind::Values { relation, filter, .. } | FieldKind::Objects { relation, filter, .. } if *relation == r => Some(filter.as_slice()),
            _ => None,
        })
        .collect();
    if filters.is_empty() || filters.iter().any(|f| f.is_empty()) {
        return;
    }
    for i in 0..rows.len {
        if !filters.iter().any(|fs| fs.iter().all(|f| f.keeps(rows.get(i, f.column)))) {
            notes.unmatched(rows.get(i, filters[0][0].column));
        }
    }
}

#[cfg(test)]
mod tests;
