//! A definition resolved against the live schema and the index mapping: what every other layer
//! reads. Names here are the definition's; nothing is of any particular catalog.

use uuid::Uuid;

use crate::position::{Key, KeyKind, KeyPart};

/// How a column is read and how its value goes into a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Uuid,
    Int,
    Float,
    Bool,
    /// Dates and timestamps, as ISO 8601 text made by Postgres.
    Time,
    /// `json`/`jsonb`, as JSON.
    Json,
    /// An array of any element type, as a JSON array (`to_json`).
    Array,
    /// `character(n)`: read as stored, padded to its length (a cast to `text` would trim it).
    Char,
}

impl ColumnType {
    /// From `information_schema.columns.data_type`; anything else is read as its text.
    pub fn of(data_type: &str) -> ColumnType {
        match data_type {
            "uuid" => ColumnType::Uuid,
            "smallint" | "integer" | "bigint" => ColumnType::Int,
            "real" | "double precision" | "numeric" => ColumnType::Float,
            "boolean" => ColumnType::Bool,
            "date" | "timestamp with time zone" | "timestamp without time zone" => ColumnType::Time,
            "json" | "jsonb" => ColumnType::Json,
            "ARRAY" => ColumnType::Array,
            "character" => ColumnType::Char,
            _ => ColumnType::Text,
        }
    }

    /// The SQL expression reading `column` (already qualified and quoted) as this type.
    pub fn select(self, column: &str) -> String {
        match self {
            ColumnType::Text | ColumnType::Json => format!("{column}::text"),
            ColumnType::Uuid | ColumnType::Bool | ColumnType::Char => column.to_string(),
            ColumnType::Array => format!("to_json({column})::text"),
            ColumnType::Int => format!("{column}::int8"),
            ColumnType::Float => format!("{column}::float8"),
            ColumnType::Time => format!("to_json({column})#>>'{{}}'"),
        }
    }
}

/// One value read from Postgres.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Uuid(Uuid),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// JSON text, as Postgres wrote it.
    Json(String),
}

impl Value {
    /// Ordering for lists: nulls first, then by value (text by bytes).
    pub fn compare(&self, other: &Value) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Null, _) => Ordering::Less,
            (_, Null) => Ordering::Greater,
            (Text(a), Text(b)) | (Json(a), Json(b)) => a.cmp(b),
            (Uuid(a), Uuid(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Bool(a), Bool(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }

    /// Text a filter compares: trimmed; `None` when the value is not text-like.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s.trim()),
            _ => None,
        }
    }

    /// The value as a log line names it: text trimmed and in lower case, others as written;
    /// `None` for NULL and blank text.
    pub fn label(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Text(s) => Some(s.trim().to_lowercase()).filter(|s| !s.is_empty()),
            Value::Json(j) => Some(j.clone()),
            Value::Uuid(u) => Some(u.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
        }
    }
}

/// One column of a record row: a value of the root (or of a many-to-one relation), or the values
/// of a to-many relation's rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    One(Value),
    Many(Vec<Value>),
}

/// A root row as the record query reads it: its key, and the cells in [`Document::columns`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: Key,
    pub cells: Vec<Cell>,
}

/// A column of the record query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordColumn {
    pub ty: ColumnType,
    /// An array (a to-many relation's values) rather than a single value.
    pub many: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// Many-to-many: a link table with a column holding the root's key and one holding the
    /// related row's key.
    Through { link: String, link_key: Vec<String>, link_kinds: Vec<KeyKind>, root: String, related: String },
    /// Many-to-one: the root's column holds the related row's key.
    RootColumn(String),
    /// One-to-many: the related table's column holds the root's key.
    RelatedColumn(String),
}

impl Join {
    pub fn to_many(&self) -> bool {
        !matches!(self, Join::RootColumn(_))
    }
}

/// Which table a relation column is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Related,
    Link,
    /// A relation of the relation's rows: `Relation::nested[i]`.
    Nested(usize),
}

/// A many-to-one relation of a relation's rows, or of another one of these: `column` of the
/// table above it (the relation's table when `parent` is `None`, else `nested[parent]`'s) holds
/// this table's `key`. Read with the relation's rows by a `LEFT JOIN`, so that its columns line
/// up with them; named in fields by its `path` (`country`, `country.continent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nested {
    pub path: String,
    pub table: String,
    pub key: String,
    pub kind: KeyKind,
    pub parent: Option<usize>,
    pub column: String,
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub side: Side,
    pub name: String,
    pub ty: ColumnType,
}

/// A related table, joined one level from the root. Its columns are read as
/// `Document::columns[first..first + columns.len()]`; `key_column` is where its key is, when a
/// field needs it (objects, one entry per row, many-to-one). `key` is the column that tells its
/// rows apart: the key, or for a one-to-many table keyed by (root column, column) that column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    pub table: String,
    pub key: String,
    /// The table's key (its change stream's), and how each of its columns is read.
    pub table_key: Vec<String>,
    pub kinds: Vec<KeyKind>,
    pub join: Join,
    pub columns: Vec<RelationColumn>,
    pub key_column: Option<usize>,
    pub first: usize,
    /// The relations of its rows, parents before their children.
    pub nested: Vec<Nested>,
}

/// Rows a filter keeps: `column` (an index into the relation's columns, or into the record's
/// root columns for a document's own `where`) passes `test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub column: usize,
    pub test: Test,
}

/// What a `where` asks of a column, checked against the column's type when the definition is
/// resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// Equal to one of these.
    AnyOf(Vec<Expected>),
    /// NULL (`true`) or not NULL (`false`).
    Null(bool),
}

/// A value a `where` compares with, typed as its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Text: trimmed and in ASCII lower case; compared with the value trimmed, ignoring ASCII case.
    Text(String),
    /// An enum label (or a uuid's text): compared exactly.
    Exact(String),
    Int(i64),
    Bool(bool),
    Uuid(Uuid),
}

impl Expected {
    fn matches(&self, value: &Value) -> bool {
        match (self, value) {
            (Expected::Text(want), Value::Text(v)) => v.trim().eq_ignore_ascii_case(want),
            (Expected::Exact(want), Value::Text(v)) => v == want,
            (Expected::Int(want), Value::Int(v)) => v == want,
            (Expected::Bool(want), Value::Bool(v)) => v == want,
            (Expected::Uuid(want), Value::Uuid(v)) => v == want,
            _ => false,
        }
    }
}

impl Filter {
    pub fn keeps(&self, value: &Value) -> bool {
        match &self.test {
            Test::Null(null) => (*value == Value::Null) == *null,
            Test::AnyOf(values) => values.iter().any(|w| w.matches(value)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distinct {
    /// One entry per related row (by its key).
    Row,
    /// Equal values once.
    Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubField {
    pub name: String,
    /// Index into the relation's columns (the first of `concat`'s).
    pub column: usize,
    /// Columns whose known values are joined by `separator` into the value (none: `column`'s).
    pub concat: Vec<usize>,
    pub separator: String,
    pub required: bool,
    /// Collects the values of every link row joining the same related row.
    pub list: bool,
    /// Into a `float` (f32) mapping field.
    pub f32: bool,
}

/// The field that is the document's key (`_id`): `verify` pages the index sorted by it.
pub const KEY_FIELD: &str = "id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    /// The document's `_id`: the key's text (for a composite key, its parts joined by `|`).
    Id,
    /// A root column (index into `Document::columns`).
    Column { column: usize, f32: bool },
    /// Root columns whose known values are joined by `separator` (none known: null).
    Concat { columns: Vec<usize>, separator: String },
    /// A related column: a list for a to-many relation, a single value for many-to-one.
    Values { relation: usize, column: usize, filter: Vec<Filter>, order: Vec<usize>, distinct: Distinct, f32: bool },
    /// Objects of the related rows: a list, or one object (or null) for many-to-one.
    Objects { relation: usize, filter: Vec<Filter>, order: Vec<usize>, fields: Vec<SubField> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
}

/// How a related row leads to root keys: the rows of `table` whose `matching` column holds the
/// related row's key, and their `select` columns (a link table's root column, or the root's key,
/// a column each of a composite one).
/// For a row of a relation of a relation, `via` goes up first: each hop's `select` of the rows
/// whose `matching` holds the keys below, the first given the changed rows' keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    pub table: String,
    pub select: Vec<String>,
    pub matching: String,
    /// The kind of the changed rows' key (which `matching`, or the first hop's, holds).
    pub kind: KeyKind,
    pub via: Vec<Hop>,
}

/// One step up from a changed row towards the root: the `select` column of `table`'s rows whose
/// `matching` column holds the keys below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub table: String,
    pub select: String,
    pub matching: String,
}

impl FanOut {
    /// The query: `$1` the related rows' keys (of kind `kind`), the root keys (of kinds `root`) out.
    pub fn sql(&self, schema: &str, root: &[KeyKind]) -> String {
        use super::resolve::{qualified, quote};
        let array = super::sql::key_array(self.kind, 1);
        let m = quote(&self.matching);
        let condition = match self.via_select(schema, &|c: &str| format!("{c} = ANY({array})")) {
            None => format!("{m} = ANY({array})"),
            Some(sub) => format!("{m} IN ({sub})"),
        };
        let select: Vec<String> = self.select.iter().zip(root).map(|(c, k)| super::sql::read_key(*k, &quote(c))).collect();
        format!("SELECT DISTINCT {} FROM {} WHERE {condition}", select.join(", "), qualified(schema, &self.table))
    }

    /// The keys that `matching` is looked up by, for a row of a relation of a relation: the
    /// hops of `via` nested, the first's condition made by `first` of its (quoted) column.
    pub fn via_select(&self, schema: &str, first: &dyn Fn(&str) -> String) -> Option<String> {
        use super::resolve::{qualified, quote};
        let mut inner: Option<String> = None;
        for hop in &self.via {
            let m = quote(&hop.matching);
            let condition = match &inner {
                None => first(&m),
                Some(sub) => format!("{m} IN ({sub})"),
            };
            inner = Some(format!("SELECT {} FROM {} WHERE {condition}", quote(&hop.select), qualified(schema, &hop.table)));
        }
        inner
    }
}

/// A table of a document read for changes: its rows in `(timestamp, key)` order, each leading to
/// root keys through `direct` columns of its own, or through `fan_out` lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub table: String,
    /// The table's key columns (several for a composite key), and how each is read.
    pub key: Vec<String>,
    pub kinds: Vec<KeyKind>,
    /// The change-tracking column; `None` for a table that has none (Django's auto-created
    /// many-to-many tables): its changes are read only from the write capture's log or the
    /// replication stream, never by polling its rows.
    pub timestamp: Option<String>,
    /// Columns of this table that hold a root key, one list each (the root's own key columns, a
    /// link's or a child's root column).
    pub direct: Vec<Vec<String>>,
    pub fan_out: Vec<FanOut>,
    /// Columns of this table (the root) that hold a many-to-one relation's key: a change of one
    /// changes the document.
    pub references: Vec<String>,
    /// A link table: rows are added and removed, rarely edited, so a creation time will do.
    pub link: bool,
}

/// The index a document is kept in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: String,
    /// Where the schema came from, for messages.
    pub schema_origin: String,
    /// The index's settings and mappings (JSON).
    pub schema: serde_json::Value,
}

/// One document of the definition, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub name: String,
    pub index: IndexSpec,
    pub schema: String,
    pub root: String,
    /// The root's key columns (the first of `root_columns`, several for a composite key) and how
    /// each is read.
    pub key: Vec<String>,
    pub kinds: Vec<KeyKind>,
    pub columns: Vec<RecordColumn>,
    /// The record query's root columns (SQL of each, in `columns` order before the relations').
    pub root_columns: Vec<(String, ColumnType)>,
    pub relations: Vec<Relation>,
    pub fields: Vec<Field>,
    pub streams: Vec<Stream>,
    /// The document's own `where`, on root columns (indexes into `root_columns`): a row that does
    /// not pass it has no document (a soft-deleted row, say), and one that stops passing leaves
    /// the index.
    pub filter: Vec<Filter>,
}

impl Document {
    /// The key a document id stands for: only the canonical text of a key is pg2es's `_id`
    /// (other documents in the index are left alone, for `verify` to report).
    pub fn key_of(&self, id: &str) -> Option<Key> {
        Key::parse(id, &self.kinds)
    }

    /// Whether the record has a document: it passes the document's own `where`.
    pub fn keeps(&self, rec: &Record) -> bool {
        self.filter.iter().all(|f| matches!(rec.cells.get(f.column), Some(Cell::One(v)) if f.keeps(v)))
    }

    /// Every table this document reads.
    pub fn tables(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.streams.iter().map(|s| s.table.as_str()).collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    pub fn stream(&self, table: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| s.table == table)
    }

    /// The tables with no change-tracking column: polling cannot read their changes by timestamp.
    pub fn untimed(&self) -> Vec<&str> {
        self.streams.iter().filter(|s| s.timestamp.is_none()).map(|s| s.table.as_str()).collect()
    }
}

impl Value {
    /// A key column's value as a key part (integers as numbers, anything else as its text);
    /// `None` for NULL.
    pub fn key_part(&self) -> Option<KeyPart> {
        match self {
            Value::Null => None,
            Value::Int(i) => Some(KeyPart::Int(*i)),
            Value::Uuid(u) => Some(KeyPart::Text(u.to_string())),
            Value::Text(t) | Value::Json(t) => Some(KeyPart::Text(t.clone())),
            Value::Float(f) => Some(KeyPart::Text(f.to_string())),
            Value::Bool(b) => Some(KeyPart::Text(b.to_string())),
        }
    }
}
