//! A parsed definition checked against the live schema and the index mapping, and resolved into
//! [`Document`]s. Every error names the definition's file and line, and the fix.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;
use toml::Spanned;

use super::definition::{RawCondition, RawDocument, RawField, RawRelation, Scalar, Source, Text};
use super::model::*;
use crate::error::{Error, Result};
use crate::names::{is_identifier, is_index_name, INDEX_NAME_RULE};
use crate::position::KeyKind;
use crate::settings::{ETL_TIMESTAMP_COLUMN, PG_SCHEMA};

/// What the definition is checked against: the schema's columns (table -> column -> data type),
/// its single-column foreign keys, each table's keys, the labels of its enum columns, and which
/// of its relations are views.
#[derive(Debug, Clone, Default)]
pub struct LiveSchema {
    pub schema: String,
    pub columns: BTreeMap<String, BTreeMap<String, String>>,
    pub foreign_keys: Vec<ForeignKey>,
    pub keys: BTreeMap<String, TableKeys>,
    /// table -> column -> the labels of its enum type, in the type's order.
    pub enum_labels: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Plain views: a document cannot read one (no row versions, triggers or publication).
    pub views: BTreeSet<String>,
}

/// A table's primary key and the column sets its unique indexes cover (whole-table, plain
/// columns: a partial or expression index vouches for nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableKeys {
    pub primary: Option<Vec<String>>,
    pub unique: Vec<Vec<String>>,
}

impl TableKeys {
    /// A primary key or unique constraint makes these columns, together, unique: its own
    /// columns are among them.
    fn covers(&self, columns: &[String]) -> bool {
        self.primary.iter().chain(&self.unique).any(|set| !set.is_empty() && set.iter().all(|c| columns.contains(c)))
    }
}

/// A table's key as resolved: its columns and how each is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableKey {
    columns: Vec<String>,
    kinds: Vec<KeyKind>,
}

impl TableKey {
    /// The one column of a key that must have one.
    fn single(&self) -> (String, KeyKind) {
        (self.columns[0].clone(), self.kinds[0])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub table: String,
    pub column: String,
    pub references: String,
    pub referenced_column: String,
}

/// The change-tracking column: `Auto` tries `updated_at`, then `modified` (and, for link tables,
/// `created_at`, `created`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimestampChoice {
    Auto,
    Named(String),
}

/// How the first document's index may be renamed by settings (ES_INDEX, ES_SCHEMA_FILE).
#[derive(Debug, Clone, Default)]
pub struct FirstIndex {
    pub name: Option<String>,
    pub schema: Option<(String, String)>,
}

/// A name as an operator would type it in psql: as it is when Postgres folds it to itself (a
/// plain lower-case identifier), else quoted (`"Node"`). For the SQL in messages.
pub fn sql_ident(name: &str) -> String {
    if is_identifier(name) {
        name.to_string()
    } else {
        quote(name)
    }
}

/// `schema.table` for a message's SQL, each part as [`sql_ident`] writes it.
pub fn sql_table(schema: &str, table: &str) -> String {
    format!("{}.{}", sql_ident(schema), sql_ident(table))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Reads an index schema named in the definition: `Ok((origin, text))`, or why not.
pub type SchemaOf<'a> = dyn Fn(&str) -> std::result::Result<(String, String), String> + 'a;

struct Resolver<'a> {
    src: &'a Source,
    live: &'a LiveSchema,
    ts: &'a TimestampChoice,
}

/// The documents' names and indexes, from the file alone (no Postgres): what the sink needs
/// before the source connects. The index schemas are read by `schema_of` (the name in the file):
/// `Ok((origin, text))`.
pub fn heads(src: &Source, first: &FirstIndex, schema_of: &SchemaOf<'_>) -> Result<Vec<(String, IndexSpec)>> {
    let raw = src.parse()?;
    if raw.documents.is_empty() {
        return Err(src.error(0..0, "no [[documents]]: a definition names at least one document"));
    }
    let mut heads: Vec<(String, IndexSpec)> = Vec::new();
    let mut errors = Errors::default();
    for (i, d) in raw.documents.iter().enumerate() {
        if let Some(head) = errors.keep(head(src, first, schema_of, i, d.get_ref(), &heads)) {
            heads.push(head);
        }
    }
    errors.into_result()?;
    Ok(heads)
}

/// The name and index of document `i` of the definition, checked against those before it.
fn head(src: &Source, first: &FirstIndex, schema_of: &SchemaOf<'_>, i: usize, d: &RawDocument, heads: &[(String, IndexSpec)]) -> Result<(String, IndexSpec)> {
    let name = d.name.get_ref();
    if !is_identifier(name) || name.len() > 40 {
        return Err(src.error(
            d.name.span(),
            format!("document name {name:?}: use lower-case letters, digits and _, at most 40 (it names the delete capture's triggers)"),
        ));
    }
    if heads.iter().any(|(o, _)| o == name) {
        return Err(src.error(d.name.span(), format!("a second document named {name:?}: names must be unique")));
    }
    let mut index = d.index.as_ref().map_or(name.clone(), |s| s.get_ref().clone());
    let (origin, text) = match (i, &first.schema) {
        (0, Some(s)) => s.clone(),
        _ => schema_of(d.index_schema.get_ref()).map_err(|e| src.error(d.index_schema.span(), e))?,
    };
    if i == 0 {
        if let Some(n) = &first.name {
            index = n.clone();
        }
    }
    if !is_index_name(&index) {
        return Err(src.error(d.index.as_ref().map_or(d.name.span(), |s| s.span()), format!("index {index:?}: use {INDEX_NAME_RULE}")));
    }
    if heads.iter().any(|(_, o)| o.name == index) {
        return Err(src.error(d.name.span(), format!("index {index:?} is already another document's: give each document its own index")));
    }
    let schema: Json = serde_json::from_str(&text).map_err(|e| src.error(d.index_schema.span(), format!("index schema {origin} is not JSON: {e}")))?;
    if properties(&schema).is_none() {
        return Err(src.error(d.index_schema.span(), format!("index schema {origin} has no mappings.properties")));
    }
    Ok((name.clone(), IndexSpec { name: index, schema_origin: origin, schema }))
}

/// The documents of the definition, resolved against `live` (with their [`heads`]).
pub fn resolve(src: &Source, live: &LiveSchema, ts: &TimestampChoice, first: &FirstIndex, schema_of: &SchemaOf<'_>) -> Result<Vec<Document>> {
    let heads = heads(src, first, schema_of)?;
    let raw = src.parse()?;
    // A named change column that no table has is a typo, not a choice: each table without it
    // falls back to updated_at or modified.
    if let TimestampChoice::Named(n) = ts {
        if !live.columns.values().any(|columns| columns.contains_key(n)) {
            return Err(Error::Config(format!(
                "{ETL_TIMESTAMP_COLUMN}={n}: no table of schema {} has a column {n}; name the column your tables record changes in, or unset it (auto: updated_at, then modified)",
                live.schema
            )));
        }
    }
    let r = Resolver { src, live, ts };
    let (mut docs, mut errors) = (Vec::new(), Errors::default());
    for (d, (_, index)) in raw.documents.iter().zip(heads) {
        let mapping = properties(&index.schema).cloned().unwrap_or_default();
        match r.document(d.get_ref(), index, &mapping) {
            Ok(doc) => docs.push(doc),
            Err(e) => errors.0.extend(e.0),
        }
    }
    errors.into_result()?;
    Ok(docs)
}

fn properties(schema: &Json) -> Option<&serde_json::Map<String, Json>> {
    schema.get("mappings")?.get("properties")?.as_object()
}

fn is_f32(mapping: Option<&Json>) -> bool {
    matches!(mapping.and_then(|m| m.get("type")).and_then(Json::as_str), Some("float" | "half_float"))
}

impl Resolver<'_> {
    fn columns(&self, table: &Text) -> Result<&BTreeMap<String, String>> {
        if self.live.views.contains(table.get_ref()) {
            let (schema, t) = (&self.live.schema, table.get_ref());
            return Err(self.src.error(
                table.span(),
                format!(
                    "{schema}.{t} is a view: pg2es reads a table's changes (its row versions, its triggers or its publication), which a view has not; name the table the view reads, and give the document a `where` for the view's condition"
                ),
            ));
        }
        self.live.columns.get(table.get_ref()).ok_or_else(|| {
            self.src.error(
                table.span(),
                format!("table {}.{} not found; check the name, and that {PG_SCHEMA} names the schema that holds it", self.live.schema, table.get_ref()),
            )
        })
    }

    fn column(&self, table: &Text, column: &Text) -> Result<ColumnType> {
        let cols = self.columns(table)?;
        match cols.get(column.get_ref()) {
            Some(ty) => Ok(ColumnType::of(ty)),
            None => Err(self.src.error(
                column.span(),
                format!(
                    "column {:?} not found in {}.{} (it has: {})",
                    column.get_ref(),
                    self.live.schema,
                    table.get_ref(),
                    cols.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// The key of `table`: the column given, or else its primary key (its columns, in the
    /// key's order), or else `id`. Each column is a `smallint`, `integer`, `bigint`, `text`,
    /// `varchar` or `uuid`, and a primary key or a unique constraint covers the columns: changes
    /// are read in `(timestamp, key)` order, and documents and their related rows are told apart
    /// by it. Several columns only where `composite` allows them (a link or one-to-many table).
    fn key(&self, table: &Text, given: Option<&Text>, setting: &str, composite: Option<&str>) -> Result<TableKey> {
        let schema = &self.live.schema;
        let t = table.get_ref();
        let keys = self.live.keys.get(t).cloned().unwrap_or_default();
        let (columns, span) = match (given, &keys.primary) {
            (Some(k), _) => (vec![k.get_ref().clone()], k.span()),
            (None, Some(pk)) => (pk.clone(), table.span()),
            (None, None) if self.live.columns.get(t).is_some_and(|c| c.contains_key("id")) => (vec!["id".to_string()], table.span()),
            (None, None) => {
                let unique: Vec<String> = keys.unique.iter().filter(|u| u.len() == 1).map(|u| u[0].clone()).collect();
                let hint = match unique.first() {
                    Some(c) => format!("name a unique column with `{setting} = \"...\"` (it has the unique column {c})"),
                    None => format!(
                        "name a unique column with `{setting} = \"...\"`, or give it a primary key (ALTER TABLE {} ADD PRIMARY KEY (...))",
                        sql_table(schema, t)
                    ),
                };
                return Err(self
                    .src
                    .error(table.span(), format!("{schema}.{t} has no primary key and no column id, so pg2es cannot tell its rows apart: {hint}")));
            }
        };
        if columns.len() > 1 {
            if let Some(why) = composite {
                return Err(self.src.error(
                    table.span(),
                    format!(
                        "{schema}.{t} has the composite primary key ({}); {why}: add a unique column (ALTER TABLE {target} ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY UNIQUE) and name it with `{setting} = \"id\"`",
                        columns.join(", "),
                        target = sql_table(schema, t),
                    ),
                ));
            }
        }
        let mut kinds = Vec::with_capacity(columns.len());
        for column in &columns {
            self.column(table, &Spanned::new(span.clone(), column.clone()))?;
            let data_type = self.live.columns.get(t).and_then(|c| c.get(column)).map_or("?", String::as_str);
            kinds.push(match data_type {
                "smallint" | "integer" | "bigint" => KeyKind::Int,
                "uuid" => KeyKind::Uuid,
                "text" | "character varying" => KeyKind::Text,
                other => {
                    return Err(self.src.error(
                        span,
                        format!(
                            "{t}.{column} is {other}: a key column is a smallint, integer, bigint, text, varchar or uuid; name a unique column of one of those types with `{setting} = \"...\"`"
                        ),
                    ))
                }
            });
        }
        if !keys.covers(&columns) {
            let list = columns.join(", ");
            let sql_list = columns.iter().map(|c| sql_ident(c)).collect::<Vec<_>>().join(", ");
            return Err(self.src.error(
                span,
                format!(
                    "{schema}.{t}.{list} is not unique: no primary key or unique constraint covers it, and pg2es tells rows apart by it (changes sharing a timestamp would be skipped); make it unique (ALTER TABLE {target} ADD PRIMARY KEY ({sql_list}), or ADD UNIQUE ({sql_list})), or name a unique column with `{setting} = \"...\"`", target = sql_table(schema, t)
                ),
            ));
        }
        Ok(TableKey { columns, kinds })
    }

    /// A `where` on `table.column`, checked against the column's type: what the rows must hold.
    fn test(&self, table: &str, column: &str, ty: ColumnType, cond: &Spanned<RawCondition>) -> Result<Test> {
        let data_type = self.live.columns.get(table).and_then(|c| c.get(column)).map_or("?", String::as_str);
        let labels = self.live.enum_labels.get(table).and_then(|c| c.get(column));
        let bad = |why: String| self.src.error(cond.span(), format!("where {column}: {why}"));
        let values: Vec<&Scalar> = match cond.get_ref() {
            RawCondition::Null { null } => return Ok(Test::Null(*null)),
            RawCondition::One(v) => vec![v],
            RawCondition::Many(v) => v.iter().collect(),
        };
        if values.is_empty() {
            return Err(bad("give at least one value, or `{ null = true }`".into()));
        }
        let mut out = Vec::new();
        for v in values {
            out.push(match (ty, v) {
                (ColumnType::Text | ColumnType::Char, Scalar::Text(t)) => match labels {
                    Some(labels) if labels.contains(t) => Expected::Exact(t.clone()),
                    Some(labels) => return Err(bad(format!("{v} is not a label of the column's enum type (it has: {})", labels.join(", ")))),
                    None => Expected::Text(t.trim().to_ascii_lowercase()),
                },
                (ColumnType::Text | ColumnType::Char, _) => return Err(bad(format!("{table}.{column} is {data_type}: write {v} as a string, \"{v}\""))),
                (ColumnType::Int, Scalar::Int(i)) => Expected::Int(int_in_range(*i, data_type).ok_or_else(|| bad(format!("{i} is out of range for {data_type}")))?),
                (ColumnType::Int, Scalar::Text(t)) => match t.trim().parse::<i64>().ok().and_then(|i| int_in_range(i, data_type)) {
                    Some(i) => Expected::Int(i),
                    None => return Err(bad(format!("{v} is not a {data_type}: write an integer, without quotes"))),
                },
                (ColumnType::Bool, Scalar::Bool(b)) => Expected::Bool(*b),
                (ColumnType::Bool, Scalar::Text(t)) => match pg_bool(t) {
                    Some(b) => Expected::Bool(b),
                    None => return Err(bad(format!("{v} is not a boolean: write true or false, without quotes"))),
                },
                (ColumnType::Uuid, Scalar::Text(t)) => match uuid::Uuid::parse_str(t.trim()) {
                    Ok(u) => Expected::Uuid(u),
                    Err(_) => return Err(bad(format!("{v} is not a uuid"))),
                },
                (ColumnType::Int | ColumnType::Bool | ColumnType::Uuid, _) => {
                    return Err(bad(format!("{table}.{column} is {data_type}, and {v} is not one")));
                }
                _ => {
                    return Err(bad(format!(
                        "{table}.{column} is {data_type}: `where` compares text, integers, booleans, enums and uuids by value, and any column with `{{ null = true }}` or `{{ null = false }}`"
                    )))
                }
            });
        }
        Ok(Test::AnyOf(out))
    }

    /// The change-tracking column of `table`: the one named, or the first candidate it has;
    /// `None` when it has none (its changes are then read only from the write capture's log or the
    /// replication stream: polling without them refuses to start).
    fn timestamp(&self, table: &Text, named: Option<&Text>, link: bool) -> Result<Option<String>> {
        let cols = self.columns(table)?;
        let is_time = |c: &str| cols.get(c).is_some_and(|t| t == "timestamp with time zone" || t == "timestamp without time zone");
        if let Some(n) = named {
            if !is_time(n.get_ref()) {
                return Err(self.src.error(n.span(), format!("{}.{} is not a timestamp column", table.get_ref(), n.get_ref())));
            }
            return Ok(Some(n.get_ref().clone()));
        }
        let mut candidates: Vec<&str> = match self.ts {
            // As documented: the named column where a table has it, else the usual ones.
            TimestampChoice::Named(n) => vec![n.as_str(), "updated_at", "modified"],
            TimestampChoice::Auto => vec!["updated_at", "modified"],
        };
        // A link row is added and removed, not edited: its creation time is its change time.
        if link {
            candidates.extend(["created_at", "created"]);
        }
        match candidates.iter().find(|c| is_time(c)) {
            Some(c) if is_identifier(c) => Ok(Some(c.to_string())),
            None => Ok(None),
            _ => Err(self.src.error(
                table.span(),
                format!(
                    "table {}.{} has no timestamp column among {}; set {ETL_TIMESTAMP_COLUMN}, or `timestamp = \"...\"` here, to the column that records changes",
                    self.live.schema,
                    table.get_ref(),
                    candidates.join(", ")
                ),
            )),
        }
    }

    /// The single-column foreign key from `from` to `to`, if there is exactly one.
    fn foreign_key(&self, from: &str, to: &str) -> Vec<&ForeignKey> {
        self.live.foreign_keys.iter().filter(|f| f.table == from && f.references == to).collect()
    }

    fn join(&self, root: &Text, root_key: &str, name: &str, rel: &RawRelation, related_key: &str, span: std::ops::Range<usize>) -> Result<Join> {
        let related = rel.table.get_ref();
        if let (Some(_), Some(on)) = (&rel.through, &rel.on) {
            return Err(self
                .src
                .error(on.span(), format!("relation {name} has both `through` and `on`: keep `through` for a link table, or `on` for a direct join")));
        }
        if let Some(through) = &rel.through {
            let t = through.get_ref();
            let pick = |given: &Option<Text>, to: &str, to_key: &str, what: &str| -> Result<String> {
                if let Some(c) = given {
                    self.column(&t.table, c)?;
                    return Ok(c.get_ref().clone());
                }
                match self.foreign_key(t.table.get_ref(), to).as_slice() {
                    [one] if one.referenced_column == to_key => Ok(one.column.clone()),
                    [one] => Err(self.src.error(
                        through.span(),
                        format!(
                            "relation {name}: the foreign key {}.{} references {to}.{}, not its key {to}.{to_key}; name the column that holds the key with `{what} = \"...\"` in `through`",
                            t.table.get_ref(),
                            one.column,
                            one.referenced_column
                        ),
                    )),
                    [] => Err(self.src.error(
                        through.span(),
                        format!("relation {name}: {} has no foreign key to {to}; name the column with `{what} = \"...\"` in `through`", t.table.get_ref()),
                    )),
                    _ => Err(self.src.error(
                        through.span(),
                        format!(
                            "relation {name}: {} has several foreign keys to {to}; name the one to use with `{what} = \"...\"` in `through`",
                            t.table.get_ref()
                        ),
                    )),
                }
            };
            let root_col = pick(&t.root, root.get_ref(), root_key, "root")?;
            let related_col = pick(&t.related, related, related_key, "related")?;
            self.columns(&t.table)?;
            let link_key = self.key(&t.table, t.key.as_ref(), "through.key", None)?;
            let _ = self.timestamp(&t.table, t.timestamp.as_ref(), true)?;
            return Ok(Join::Through {
                link: t.table.get_ref().clone(),
                link_key: link_key.columns,
                link_kinds: link_key.kinds,
                root: root_col,
                related: related_col,
            });
        }
        if let Some(on) = &rel.on {
            let o = on.get_ref();
            return match (&o.root, &o.related) {
                (Some(c), None) => {
                    self.column(root, c)?;
                    Ok(Join::RootColumn(c.get_ref().clone()))
                }
                (None, Some(c)) => {
                    self.column(&rel.table, c)?;
                    Ok(Join::RelatedColumn(c.get_ref().clone()))
                }
                _ => Err(self.src.error(
                    on.span(),
                    format!("relation {name}: `on` takes one of `root = \"column\"` (the root's column holding the related key) or `related = \"column\"` (the related table's column holding the root key)"),
                )),
            };
        }
        let out = self.foreign_key(root.get_ref(), related);
        let back = self.foreign_key(related, root.get_ref());
        match (out.as_slice(), back.as_slice()) {
            ([f], []) if f.referenced_column == related_key => Ok(Join::RootColumn(f.column.clone())),
            ([f], []) => Err(self.src.error(
                span,
                format!(
                    "relation {name}: the foreign key {}.{} references {related}.{}, not its key {related}.{related_key}; say how they join with `on = {{ root = \"...\" }}`, or name that column as the relation's `key` if it is unique",
                    root.get_ref(),
                    f.column,
                    f.referenced_column
                ),
            )),
            ([], [f]) if f.referenced_column == root_key => Ok(Join::RelatedColumn(f.column.clone())),
            ([], [f]) => Err(self.src.error(
                span,
                format!(
                    "relation {name}: the foreign key {related}.{} references {}.{}, not the key {}.{root_key}; say how they join with `on = {{ related = \"...\" }}`",
                    f.column,
                    root.get_ref(),
                    f.referenced_column,
                    root.get_ref()
                ),
            )),
            ([], []) => Err(self.src.error(
                span,
                format!(
                    "relation {name}: no foreign key between {} and {related}, and no explicit join; add `on = {{ root = \"...\" }}`, `on = {{ related = \"...\" }}` or `through = {{ table = \"...\" }}`",
                    root.get_ref()
                ),
            )),
            _ => Err(self.src.error(span, format!("relation {name}: several foreign keys between {} and {related}; say which with `on`", root.get_ref()))),
        }
    }

    /// The relations of a relation's rows (`relations` under `table`, the relation `name`'s
    /// table or, with `parent`, `out[parent]`'s), and theirs, into `out`, parents first. Each is
    /// many-to-one: a column of the table above holds its key (`on = { root = "..." }`, or the one
    /// foreign key to it).
    fn nested(&self, table: &Text, relations: &BTreeMap<String, Spanned<RawRelation>>, name: &str, parent: Option<usize>, out: &mut Vec<Nested>) -> Result<()> {
        for (n, raw) in relations {
            let (span, r) = (raw.span(), raw.get_ref());
            let path = match parent {
                None => n.clone(),
                Some(p) => format!("{}.{n}", out[p].path),
            };
            if n == "link" {
                return Err(self.src.error(span, format!("relation {name}.{path}: `link` names the link table's columns; call the relation something else")));
            }
            if r.through.is_some() || r.on.as_ref().is_some_and(|o| o.get_ref().related.is_some()) {
                return Err(self.src.error(
                    span,
                    format!(
                        "relation {name}.{path}: a relation of a relation is many-to-one for now (a column of {} holds its key): give `on = {{ root = \"column\" }}` or leave `on` out to use the foreign key",
                        table.get_ref()
                    ),
                ));
            }
            self.columns(&r.table)?;
            let (key, kind) = self.key(&r.table, r.key.as_ref(), "key", Some("a relation of a relation is found by a key of one column"))?.single();
            let column = match r.on.as_ref().and_then(|o| o.get_ref().root.clone()) {
                Some(c) => {
                    self.column(table, &c)?;
                    c.get_ref().clone()
                }
                None => match self.foreign_key(table.get_ref(), r.table.get_ref()).as_slice() {
                    [one] if one.referenced_column == key => one.column.clone(),
                    [] => {
                        return Err(self.src.error(
                            span,
                            format!("relation {name}.{path}: {} has no foreign key to {}; name the column that holds its key with `on = {{ root = \"...\" }}`", table.get_ref(), r.table.get_ref()),
                        ))
                    }
                    _ => {
                        return Err(self.src.error(
                            span,
                            format!(
                                "relation {name}.{path}: {} has several foreign keys to {} (or one to another column than its key {key}); say which column holds the key with `on = {{ root = \"...\" }}`",
                                table.get_ref(),
                                r.table.get_ref()
                            ),
                        ))
                    }
                },
            };
            let timestamp = self.timestamp(&r.table, r.timestamp.as_ref(), false)?;
            out.push(Nested { path, table: r.table.get_ref().clone(), key, kind, parent, column, timestamp });
            let at = out.len() - 1;
            self.nested(&r.table, &r.relations, name, Some(at), out)?;
        }
        Ok(())
    }

    /// The column that tells a related table's rows apart: its key. A table joined through a
    /// link or by the root's column is found by its key, which must be one column; a one-to-many
    /// table may be keyed by its root column and one more (`(film_id, position)`), which tells
    /// the rows of one document apart.
    fn row_key(&self, table: &Text, name: &str, join: &Join, key: &TableKey) -> Result<String> {
        let t = table.get_ref();
        let schema = &self.live.schema;
        let list = key.columns.join(", ");
        match (join, key.columns.as_slice()) {
            (_, [one]) => Ok(one.clone()),
            (Join::RelatedColumn(c), columns) => {
                let rest: Vec<&String> = columns.iter().filter(|k| *k != c).collect();
                match rest.as_slice() {
                    [one] => Ok((*one).clone()),
                    _ => Err(self.src.error(
                        table.span(),
                        format!(
                            "relation {name}: {schema}.{t} has the composite key ({list}); a one-to-many table's key is its root column {c} and one more column, or one column: add a unique column (ALTER TABLE {target} ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY UNIQUE) and name it with `key = \"id\"`", target = sql_table(schema, t)
                        ),
                    )),
                }
            }
            _ => Err(self.src.error(
                table.span(),
                format!(
                    "relation {name}: {schema}.{t} has the composite primary key ({list}); a table joined through a link table or by a column of the root is found by a key of one column: add a unique column (ALTER TABLE {target} ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY UNIQUE) and name it with `key = \"id\"`", target = sql_table(schema, t)
                ),
            )),
        }
    }

    fn document(&self, d: &RawDocument, index: IndexSpec, mapping: &serde_json::Map<String, Json>) -> std::result::Result<Document, Errors> {
        let schema = &self.live.schema;
        let mut errors = Errors::default();
        self.columns(&d.table)?;
        let key = errors.keep(self.key(&d.table, d.key.as_ref(), "key", None));
        let root_ts = errors.keep(self.timestamp(&d.table, d.timestamp.as_ref(), false));
        let key_columns = key.as_ref().map_or_else(|| vec!["id".to_string()], |k| k.columns.clone());
        // With no key (its error is told), the field id is not checked against one.
        let id_key = key.as_ref().map_or_else(Vec::new, |k| k.columns.clone());
        let key_name = key_columns[0].clone();
        let type_of = |c: &str| ColumnType::of(self.live.columns.get(d.table.get_ref()).and_then(|t| t.get(c)).map_or("", String::as_str));

        // Relations in the order fields first use them.
        let mut order: Vec<&String> = Vec::new();
        for f in &d.fields {
            if let Some(from) = &f.get_ref().from {
                let Some((name, _)) = d.relations.get_key_value(from.get_ref()) else {
                    errors.keep::<()>(Err(self.src.error(
                        from.span(),
                        format!("no relation named {:?}; the document has: {}", from.get_ref(), d.relations.keys().cloned().collect::<Vec<_>>().join(", ")),
                    )));
                    continue;
                };
                if !order.contains(&name) {
                    order.push(name);
                }
            }
        }
        let mut root_columns: Vec<(String, ColumnType)> = key_columns.iter().map(|c| (c.clone(), type_of(c))).collect();
        let mut relations: Vec<Relation> = Vec::new();
        // A relation that does not resolve is left out, with the fields that read it.
        order.retain(|name| {
            let rel = d.relations[*name].get_ref();
            let span = d.relations[*name].span();
            let resolved = (|| -> Result<Relation> {
                self.columns(&rel.table)?;
                let table_key = self.key(&rel.table, rel.key.as_ref(), "key", None)?;
                let join = self.join(&d.table, &key_name, name, rel, &table_key.columns[0], span.clone())?;
                if key_columns.len() > 1 && join.to_many() {
                    let (schema, t) = (&self.live.schema, d.table.get_ref());
                    return Err(self.src.error(
                        span,
                        format!(
                            "relation {name}: the root {schema}.{t} has the composite key ({}), and a link or one-to-many table names its root by one column; a root with a composite key has many-to-one relations only (`on = {{ root = \"...\" }}`): add a unique column to {schema}.{t} (ALTER TABLE {target} ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY UNIQUE) and name it with `key = \"id\"`",
                            key_columns.join(", "),
                            target = sql_table(schema, t),
                        ),
                    ));
                }
                let rkey = self.row_key(&rel.table, name, &join, &table_key)?;
                let key_type = ColumnType::of(self.live.columns.get(rel.table.get_ref()).and_then(|c| c.get(&rkey)).map_or("", String::as_str));
                // The related key is read only when a field needs it: objects, one entry per row,
                // a many-to-one relation (whether there is a row at all).
                let needs_key = !join.to_many()
                    || d.fields.iter().map(|f| f.get_ref()).any(|f| {
                        f.from.as_ref().is_some_and(|n| n.get_ref() == *name)
                            && (f.fields.is_some() || f.distinct.as_ref().is_none_or(|v| v.get_ref() != "value"))
                    });
                let columns = if needs_key { vec![RelationColumn { side: Side::Related, name: rkey.clone(), ty: key_type }] } else { vec![] };
                let mut nested = Vec::new();
                self.nested(&rel.table, &rel.relations, name, None, &mut nested)?;
                Ok(Relation {
                    nested,
                    name: (*name).clone(),
                    table: rel.table.get_ref().clone(),
                    key: rkey,
                    table_key: table_key.columns,
                    kinds: table_key.kinds,
                    join,
                    key_column: needs_key.then_some(0),
                    columns,
                    first: 0,
                })
            })();
            match errors.keep(resolved) {
                Some(r) => {
                    relations.push(r);
                    true
                }
                None => false,
            }
        });

        let mut fields = Vec::new();
        for f in &d.fields {
            if f.get_ref().from.as_ref().is_some_and(|from| !order.iter().any(|n| *n == from.get_ref())) {
                continue;
            }
            let Some(field) = errors.keep(self.field(d, f.get_ref(), f.span(), &order, &mut relations, &mut root_columns, mapping, &id_key)) else {
                continue;
            };
            if fields.iter().any(|o: &Field| o.name == field.name) {
                errors.keep::<()>(Err(self.src.error(f.get_ref().name.span(), format!("a second field named {:?}", field.name))));
                continue;
            }
            fields.push(field);
        }
        // Unused relations are an error: they would be tracked for nothing.
        for (name, rel) in &d.relations {
            let used = d.fields.iter().any(|f| f.get_ref().from.as_ref().is_some_and(|from| from.get_ref() == name));
            if !used {
                errors.keep::<()>(Err(self
                    .src
                    .error(rel.span(), format!("relation {name} is not used by any field; remove it or add a field with `from = \"{name}\"`"))));
            }
        }
        // So are unused relations of relations.
        for rel in &relations {
            for (j, n) in rel.nested.iter().enumerate() {
                let below = |mut k: usize| loop {
                    if k == j {
                        return true;
                    }
                    match rel.nested[k].parent {
                        Some(p) => k = p,
                        None => return false,
                    }
                };
                if !rel.columns.iter().any(|c| matches!(c.side, Side::Nested(k) if below(k))) {
                    errors.keep::<()>(Err(self.src.error(
                        d.relations[&rel.name].span(),
                        format!("relation {}.{} is not used by any field; remove it or name one of its columns (\"{}.<column>\")", rel.name, n.path, n.path),
                    )));
                }
            }
        }
        // The document's own `where`: its columns are read with the record.
        let mut filter = Vec::new();
        for (column, cond) in &d.filter {
            let c = Spanned::new(cond.span(), column.clone());
            let Some(ty) = errors.keep(self.column(&d.table, &c)) else { continue };
            let Some(test) = errors.keep(self.test(d.table.get_ref(), column, ty, cond)) else { continue };
            let at = root_column(&mut root_columns, column, ty);
            filter.push(Filter { column: at, test });
        }
        if !errors.0.is_empty() {
            return Err(errors);
        }
        let (Some(TableKey { columns: key, kinds }), Some(root_ts)) = (key, root_ts) else { unreachable!("their errors were returned") };

        let mut columns: Vec<RecordColumn> = root_columns.iter().map(|(_, ty)| RecordColumn { ty: *ty, many: false }).collect();
        for rel in &mut relations {
            rel.first = columns.len();
            let many = rel.join.to_many();
            columns.extend(rel.columns.iter().map(|c| RecordColumn { ty: c.ty, many }));
        }

        // The change streams: the root, each link table, each related table.
        let mut streams: Vec<Stream> = vec![Stream {
            table: d.table.get_ref().clone(),
            key: key.clone(),
            kinds: kinds.clone(),
            timestamp: root_ts,
            direct: vec![key.clone()],
            fan_out: vec![],
            references: vec![],
            link: false,
        }];
        for (rel, name) in relations.iter().zip(&order) {
            let raw = d.relations[*name].get_ref();
            let (direct, fan_out) = match &rel.join {
                Join::Through { link, root, related, link_key, link_kinds } => {
                    let t = raw.through.as_ref().map(|t| t.get_ref());
                    let ts = self.timestamp(&t.expect("through").table, t.and_then(|t| t.timestamp.as_ref()), true)?;
                    add_stream(
                        &mut streams,
                        Stream {
                            table: link.clone(),
                            key: link_key.clone(),
                            kinds: link_kinds.clone(),
                            timestamp: ts,
                            direct: vec![vec![root.clone()]],
                            fan_out: vec![],
                            references: vec![],
                            link: true,
                        },
                    );
                    (vec![], vec![FanOut { table: link.clone(), select: vec![root.clone()], matching: related.clone(), kind: rel.kinds[0], via: vec![] }])
                }
                Join::RelatedColumn(c) => (vec![vec![c.clone()]], vec![]),
                Join::RootColumn(c) => {
                    streams[0].references.push(c.clone());
                    (vec![], vec![FanOut { table: d.table.get_ref().clone(), select: key.clone(), matching: c.clone(), kind: rel.kinds[0], via: vec![] }])
                }
            };
            let ts = self.timestamp(&raw.table, raw.timestamp.as_ref(), false)?;
            let up = fan_out.first().cloned();
            add_stream(
                &mut streams,
                Stream {
                    table: rel.table.clone(),
                    key: rel.table_key.clone(),
                    kinds: rel.kinds.clone(),
                    timestamp: ts,
                    direct,
                    fan_out,
                    references: vec![],
                    link: false,
                },
            );
            // A relation's relation: its rows lead up to the relation's rows, then to the roots.
            for (j, n) in rel.nested.iter().enumerate() {
                let mut via = Vec::new();
                let mut at = j;
                while let Some(p) = rel.nested[at].parent {
                    via.push(Hop { table: rel.nested[p].table.clone(), select: rel.nested[p].key.clone(), matching: rel.nested[at].column.clone() });
                    at = p;
                }
                let holder = rel.nested[at].column.clone();
                let fan_out = match (&rel.join, &up) {
                    (Join::RelatedColumn(c), _) => FanOut { table: rel.table.clone(), select: vec![c.clone()], matching: holder, kind: n.kind, via },
                    (_, Some(up)) => {
                        via.push(Hop { table: rel.table.clone(), select: rel.key.clone(), matching: holder });
                        FanOut { via, kind: n.kind, ..up.clone() }
                    }
                    (_, None) => unreachable!("a relation through a link or the root's column has a fan-out"),
                };
                add_stream(
                    &mut streams,
                    Stream {
                        table: n.table.clone(),
                        key: vec![n.key.clone()],
                        kinds: vec![n.kind],
                        timestamp: n.timestamp.clone(),
                        direct: vec![],
                        fan_out: vec![fan_out],
                        references: vec![],
                        link: false,
                    },
                );
            }
        }
        Ok(Document {
            name: d.name.get_ref().clone(),
            index,
            schema: schema.clone(),
            root: d.table.get_ref().clone(),
            key,
            kinds,
            columns,
            root_columns,
            relations,
            fields,
            streams,
            filter,
        })
    }

    /// A relation column named in the definition (`c` of the related table, `link.c` of the
    /// link table): its index in the relation's columns, added when first named.
    fn relation_column(&self, rel: &mut Relation, raw: &RawRelation, column: &Text) -> Result<usize> {
        let (side, name, table) = match (column.get_ref().strip_prefix("link."), column.get_ref().rsplit_once('.')) {
            (Some(c), _) => match &raw.through {
                Some(t) => (Side::Link, c.to_string(), t.get_ref().table.clone()),
                None => return Err(self.src.error(column.span(), format!("{:?}: relation {} has no link table (`through`)", column.get_ref(), rel.name))),
            },
            (None, Some((path, c))) => match rel.nested.iter().position(|n| n.path == path) {
                Some(i) => (Side::Nested(i), c.to_string(), Spanned::new(column.span(), rel.nested[i].table.clone())),
                None => {
                    let paths: Vec<&str> = rel.nested.iter().map(|n| n.path.as_str()).collect();
                    return Err(self.src.error(
                        column.span(),
                        format!(
                            "{:?}: relation {} has no relation {path:?} (it has: {}); add `[documents.relations.{}.relations.{path}]`",
                            column.get_ref(),
                            rel.name,
                            if paths.is_empty() { "none".to_string() } else { paths.join(", ") },
                            rel.name
                        ),
                    ));
                }
            },
            (None, None) => (Side::Related, column.get_ref().clone(), raw.table.clone()),
        };
        let ty = self.column(&table, &toml::Spanned::new(column.span(), name.clone()))?;
        if let Some(i) = rel.columns.iter().position(|c| c.side == side && c.name == name) {
            return Ok(i);
        }
        rel.columns.push(RelationColumn { side, name, ty });
        Ok(rel.columns.len() - 1)
    }

    #[allow(clippy::too_many_arguments)]
    fn field(
        &self,
        d: &RawDocument,
        f: &RawField,
        span: std::ops::Range<usize>,
        order: &[&String],
        relations: &mut [Relation],
        root_columns: &mut Vec<(String, ColumnType)>,
        mapping: &serde_json::Map<String, Json>,
        key: &[String],
    ) -> Result<Field> {
        let name = f.name.get_ref().clone();
        let Some(mapped) = mapping.get(&name) else {
            return Err(self.src.error(
                f.name.span(),
                format!("field {name:?} is not in the index mapping; add it to the index schema's mappings.properties, or remove the field"),
            ));
        };
        // `verify` pages the index sorted by `id` and joins it with the records by key: the field
        // must be the key, indexed as its text.
        if name == KEY_FIELD {
            let ty = mapped.get("type").and_then(Json::as_str).unwrap_or("object");
            if ty != "keyword" {
                return Err(self.src.error(
                    f.name.span(),
                    format!("field id is mapped as {ty}: map it as {{ \"type\": \"keyword\" }} (pg2es verify reads the index sorted by id, as text, beside the records by key)"),
                ));
            }
            let bare = f.from.is_none() && f.column.is_none() && f.concat.is_none() && f.fields.is_none();
            match key {
                [] => {}
                [one] if f.from.is_some() || f.column.as_ref().map(|c| c.get_ref().as_str()) != Some(one) => {
                    return Err(self.src.error(
                        span,
                        format!("field id is the document's key: give it `column = \"{one}\"` (pg2es verify joins the index with the records by it), or call this field another name"),
                    ));
                }
                [_] => {}
                _ if bare => return Ok(Field { name, kind: FieldKind::Id }),
                _ => {
                    return Err(self.src.error(
                        span,
                        format!(
                            "field id is the document's key, which is composite ({}): write it `{{ name = \"id\" }}`, with no column, for the _id's text (pg2es verify joins the index with the records by it), or call this field another name",
                            key.join(", ")
                        ),
                    ));
                }
            }
        }
        if f.separator.is_some() && f.concat.is_none() {
            return Err(self.src.error(span, format!("field {name}: `separator` goes with `concat = [\"column\", ...]`")));
        }
        if f.concat.is_some() && (f.column.is_some() || f.fields.is_some()) {
            return Err(self.src.error(span, format!("field {name}: give `concat` (columns of one row joined) or `column`/`fields`, not both")));
        }
        let Some(from) = &f.from else {
            if f.fields.is_some() || !f.filter.is_empty() || f.order.is_some() || f.distinct.is_some() {
                return Err(self.src.error(span, format!("field {name}: `fields`, `where`, `order` and `distinct` need `from = \"relation\"`")));
            }
            if let Some(concat) = &f.concat {
                let mut columns = Vec::new();
                for c in concat_columns(self.src, concat)? {
                    let ty = self.column(&d.table, &c)?;
                    columns.push(root_column(root_columns, c.get_ref(), ty));
                }
                return Ok(Field { name, kind: FieldKind::Concat { columns, separator: separator(&f.separator) } });
            }
            let Some(column) = &f.column else {
                return Err(self.src.error(
                    span,
                    format!("field {name}: give `column = \"...\"` (a column of {}), `concat = [...]`, or `from = \"relation\"`", d.table.get_ref()),
                ));
            };
            let ty = self.column(&d.table, column)?;
            let at = root_column(root_columns, column.get_ref(), ty);
            return Ok(Field { name, kind: FieldKind::Column { column: at, f32: is_f32(Some(mapped)) } });
        };
        let r = order.iter().position(|n| *n == from.get_ref()).expect("relations in use");
        let raw = d.relations[from.get_ref()].get_ref();
        let rel = &mut relations[r];
        // The field's own columns first, then those it filters and sorts by.
        let value = match &f.column {
            Some(c) if f.fields.is_none() => Some(self.relation_column(rel, raw, c)?),
            _ => None,
        };
        if f.concat.is_some() {
            return Err(self.src.error(span, format!("field {name}: with `from`, `concat` goes in a sub-field of `fields`")));
        }
        let mut subs_at: Vec<Vec<usize>> = Vec::new();
        for s in f.fields.iter().flatten() {
            let (sub, sub_span) = (s.get_ref(), s.span());
            let columns = match (&sub.column, &sub.concat) {
                (Some(c), None) if sub.separator.is_none() => vec![c.clone()],
                (None, Some(concat)) => concat_columns(self.src, concat)?,
                _ => {
                    return Err(self.src.error(
                        sub_span,
                        format!("field {name}.{}: give `column = \"...\"`, or `concat = [...]` (with `separator`, if not a space)", sub.name.get_ref()),
                    ))
                }
            };
            let mut at = Vec::new();
            for c in &columns {
                at.push(self.relation_column(rel, raw, c)?);
            }
            subs_at.push(at);
        }
        let mut filter = Vec::new();
        for (column, cond) in &f.filter {
            let c = self.relation_column(rel, raw, &Spanned::new(cond.span(), column.clone()))?;
            let col = &rel.columns[c];
            let table = match col.side {
                Side::Related => raw.table.get_ref().clone(),
                Side::Link => raw.through.as_ref().map_or_else(String::new, |t| t.get_ref().table.get_ref().clone()),
                Side::Nested(i) => rel.nested[i].table.clone(),
            };
            let test = self.test(&table, &col.name, col.ty, cond)?;
            filter.push(Filter { column: c, test });
        }
        let mut sort = Vec::new();
        if let Some(o) = &f.order {
            for column in o.get_ref() {
                sort.push(self.relation_column(rel, raw, &toml::Spanned::new(o.span(), column.clone()))?);
            }
        }
        match (&f.column, &f.fields) {
            (Some(_), None) => {
                let c = value.expect("read above");
                let distinct = match f.distinct.as_ref().map(|d| d.get_ref().as_str()) {
                    None | Some("row") => Distinct::Row,
                    Some("value") => Distinct::Value,
                    Some(other) => return Err(self.src.error(f.distinct.as_ref().unwrap().span(), format!("distinct = {other:?}: use \"row\" or \"value\""))),
                };
                if sort.is_empty() {
                    sort.push(c);
                }
                Ok(Field { name, kind: FieldKind::Values { relation: r, column: c, filter, order: sort, distinct, f32: is_f32(Some(mapped)) } })
            }
            (None, Some(subs)) => {
                if f.distinct.is_some() {
                    return Err(self.src.error(span, format!("field {name}: `distinct` is for a list of values; objects are one per related row")));
                }
                let props = mapped.get("properties").and_then(Json::as_object);
                let mut fields = Vec::new();
                for (s, at) in subs.iter().zip(subs_at) {
                    let (s, c) = (s.get_ref(), at[0]);
                    let sub = s.name.get_ref();
                    let Some(m) = props.and_then(|p| p.get(sub)) else {
                        return Err(self.src.error(
                            s.name.span(),
                            format!("field {name}.{sub} is not in the index mapping; add it under {name}'s properties in the index schema"),
                        ));
                    };
                    if s.list && (rel.columns[c].side != Side::Link || s.concat.is_some()) {
                        return Err(self.src.error(
                            s.name.span(),
                            format!("field {name}.{sub}: `list = true` collects one link table's column (`column = \"link.<column>\"`)"),
                        ));
                    }
                    let concat = if s.concat.is_some() { at } else { Vec::new() };
                    fields.push(SubField {
                        name: sub.clone(),
                        column: c,
                        concat,
                        separator: separator(&s.separator),
                        required: s.required,
                        list: s.list,
                        f32: is_f32(Some(m)),
                    });
                }
                if fields.is_empty() {
                    return Err(self.src.error(span, format!("field {name}: `fields` is empty")));
                }
                if sort.is_empty() {
                    sort.push(rel.key_column.expect("objects read the key"));
                }
                Ok(Field { name, kind: FieldKind::Objects { relation: r, filter, order: sort, fields } })
            }
            (Some(_), Some(_)) => Err(self.src.error(span, format!("field {name}: give `column` (a list of values) or `fields` (objects), not both"))),
            (None, None) => {
                Err(self.src.error(span, format!("field {name}: with `from`, give `column = \"...\"` (a list of values) or `fields = [...]` (objects)")))
            }
        }
    }
}

/// The columns of a `concat`, with the place of the list for errors: at least two.
fn concat_columns(src: &Source, concat: &Spanned<Vec<String>>) -> Result<Vec<Text>> {
    if concat.get_ref().len() < 2 {
        return Err(src.error(concat.span(), "`concat` joins two columns or more: give their names, as `concat = [\"first_name\", \"last_name\"]`"));
    }
    Ok(concat.get_ref().iter().map(|c| Spanned::new(concat.span(), c.clone())).collect())
}

fn separator(given: &Option<Text>) -> String {
    given.as_ref().map_or_else(|| " ".to_string(), |s| s.get_ref().clone())
}

/// The index of `column` among the record's root columns, added when first read.
fn root_column(root_columns: &mut Vec<(String, ColumnType)>, column: &str, ty: ColumnType) -> usize {
    match root_columns.iter().position(|(c, _)| c == column) {
        Some(i) => i,
        None => {
            root_columns.push((column.to_string(), ty));
            root_columns.len() - 1
        }
    }
}

fn add_stream(streams: &mut Vec<Stream>, s: Stream) {
    match streams.iter_mut().find(|o| o.table == s.table) {
        Some(o) => {
            for d in s.direct {
                if !o.direct.contains(&d) {
                    o.direct.push(d);
                }
            }
            o.fan_out.extend(s.fan_out);
            o.references.extend(s.references);
            o.link |= s.link;
        }
        None => streams.push(s),
    }
}

/// `i`, if a column of `data_type` can hold it.
fn int_in_range(i: i64, data_type: &str) -> Option<i64> {
    let fits = match data_type {
        "smallint" => i16::try_from(i).is_ok(),
        "integer" => i32::try_from(i).is_ok(),
        _ => true,
    };
    fits.then_some(i)
}

/// Postgres's boolean input (`true`, `yes`, `on`, `1`, `t`, ... in any case).
fn pg_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Errors gathered while resolving, so that `check` names them all at once.
#[derive(Debug, Default)]
struct Errors(Vec<String>);

impl From<Error> for Errors {
    fn from(e: Error) -> Errors {
        let mut errors = Errors::default();
        errors.keep::<()>(Err(e));
        errors
    }
}

impl Errors {
    /// The value, or `None` with its error kept.
    fn keep<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(Error::Definition(m)) => {
                self.0.push(m);
                None
            }
            Err(e) => {
                self.0.push(e.to_string());
                None
            }
        }
    }

    fn into_result(self) -> Result<()> {
        // One error reads as before; several are listed, one per line.
        match self.0.len() {
            0 => Ok(()),
            1 => Err(Error::Definition(self.0.into_iter().next().unwrap_or_default())),
            n => Err(Error::Definition(format!("{n} errors:\n  {}", self.0.join("\n  ")))),
        }
    }
}
