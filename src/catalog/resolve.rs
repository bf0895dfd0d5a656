//! A parsed definition checked against the live schema and the index mapping, and resolved into
//! [`Document`]s. Every error names the definition's file and line, and the fix.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::definition::{RawDocument, RawField, RawRelation, Source, Text};
use super::model::*;
use crate::error::Result;

/// What the definition is checked against: the schema's columns (table -> column -> data type)
/// and its single-column foreign keys.
#[derive(Debug, Clone, Default)]
pub struct LiveSchema {
    pub schema: String,
    pub columns: BTreeMap<String, BTreeMap<String, String>>,
    pub foreign_keys: Vec<ForeignKey>,
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

pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_') && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') && s.len() <= 63
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
    for (i, d) in raw.documents.iter().enumerate() {
        let d = d.get_ref();
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
            return Err(src.error(
                d.index.as_ref().map_or(d.name.span(), |s| s.span()),
                format!("index {index:?}: use a lower-case index name without spaces or any of \\/*?\"<>|,#:"),
            ));
        }
        if heads.iter().any(|(_, o)| o.name == index) {
            return Err(src.error(d.name.span(), format!("index {index:?} is already another document's: give each document its own index")));
        }
        let schema: Json = serde_json::from_str(&text).map_err(|e| src.error(d.index_schema.span(), format!("index schema {origin} is not JSON: {e}")))?;
        if properties(&schema).is_none() {
            return Err(src.error(d.index_schema.span(), format!("index schema {origin} has no mappings.properties")));
        }
        heads.push((name.clone(), IndexSpec { name: index, schema_origin: origin, schema }));
    }
    Ok(heads)
}

/// A name Elasticsearch and OpenSearch accept for an index: lower case, at most 255 bytes, not
/// `.` or `..`, none of `\/*?"<>|,#:` or spaces, not starting with `-`, `_` or `+`.
pub fn is_index_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && !s.starts_with(['-', '_', '+'])
        && s.chars().all(|c| !c.is_ascii_uppercase() && !c.is_whitespace() && !"\\/*?\"<>|,#:".contains(c))
}

/// The documents of the definition, resolved against `live` (with their [`heads`]).
pub fn resolve(src: &Source, live: &LiveSchema, ts: &TimestampChoice, first: &FirstIndex, schema_of: &SchemaOf<'_>) -> Result<Vec<Document>> {
    let heads = heads(src, first, schema_of)?;
    let raw = src.parse()?;
    let r = Resolver { src, live, ts };
    let mut docs = Vec::new();
    for (d, (_, index)) in raw.documents.iter().zip(heads) {
        let mapping = properties(&index.schema).cloned().unwrap_or_default();
        docs.push(r.document(d.get_ref(), index, &mapping)?);
    }
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
        self.live.columns.get(table.get_ref()).ok_or_else(|| {
            self.src.error(
                table.span(),
                format!("table {}.{} not found; check the name, and that PG_SCHEMA names the schema that holds it", self.live.schema, table.get_ref()),
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

    fn uuid_key(&self, table: &Text, key: &Text) -> Result<()> {
        if self.column(table, key)? != ColumnType::Uuid || self.columns(table)?.get(key.get_ref()).map(String::as_str) != Some("uuid") {
            return Err(self
                .src
                .error(key.span(), format!("{}.{} must be of type uuid: pg2es keys documents and change positions by uuid", table.get_ref(), key.get_ref())));
        }
        Ok(())
    }

    fn timestamp(&self, table: &Text, named: Option<&Text>, link: bool) -> Result<String> {
        let cols = self.columns(table)?;
        let is_time = |c: &str| cols.get(c).is_some_and(|t| t == "timestamp with time zone" || t == "timestamp without time zone");
        if let Some(n) = named {
            if !is_time(n.get_ref()) {
                return Err(self.src.error(n.span(), format!("{}.{} is not a timestamp column", table.get_ref(), n.get_ref())));
            }
            return Ok(n.get_ref().clone());
        }
        let mut candidates: Vec<&str> = match self.ts {
            TimestampChoice::Named(n) => vec![n.as_str()],
            TimestampChoice::Auto => vec!["updated_at", "modified"],
        };
        // A link row is added and removed, not edited: its creation time is its change time.
        if link {
            candidates.extend(["created_at", "created"]);
        }
        match candidates.iter().find(|c| is_time(c)) {
            Some(c) if is_identifier(c) => Ok(c.to_string()),
            _ => Err(self.src.error(
                table.span(),
                format!(
                    "table {}.{} has no timestamp column among {}; set ETL_TIMESTAMP_COLUMN, or `timestamp = \"...\"` here, to the column that records changes",
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

    fn join(&self, root: &Text, root_key: &str, name: &str, rel: &RawRelation, span: std::ops::Range<usize>) -> Result<Join> {
        let related = rel.table.get_ref();
        if let (Some(_), Some(on)) = (&rel.through, &rel.on) {
            return Err(self
                .src
                .error(on.span(), format!("relation {name} has both `through` and `on`: keep `through` for a link table, or `on` for a direct join")));
        }
        if let Some(through) = &rel.through {
            let t = through.get_ref();
            let pick = |given: &Option<Text>, to: &str, what: &str| -> Result<String> {
                if let Some(c) = given {
                    self.column(&t.table, c)?;
                    return Ok(c.get_ref().clone());
                }
                match self.foreign_key(t.table.get_ref(), to).as_slice() {
                    [one] => Ok(one.column.clone()),
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
            let root_col = pick(&t.root, root.get_ref(), "root")?;
            let related_col = pick(&t.related, related, "related")?;
            let link_key = t.key.as_ref().map_or("id".to_string(), |k| k.get_ref().clone());
            let key_text = t.key.clone().unwrap_or_else(|| toml::Spanned::new(t.table.span(), "id".to_string()));
            self.uuid_key(&t.table, &key_text)?;
            let _ = self.timestamp(&t.table, t.timestamp.as_ref(), true)?;
            return Ok(Join::Through { link: t.table.get_ref().clone(), link_key, root: root_col, related: related_col });
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
            ([f], []) => Ok(Join::RootColumn(f.column.clone())),
            ([], [f]) if f.referenced_column == root_key => Ok(Join::RelatedColumn(f.column.clone())),
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

    fn document(&self, d: &RawDocument, index: IndexSpec, mapping: &serde_json::Map<String, Json>) -> Result<Document> {
        let schema = &self.live.schema;
        self.columns(&d.table)?;
        let key_text = d.key.clone().unwrap_or_else(|| toml::Spanned::new(d.table.span(), "id".to_string()));
        self.uuid_key(&d.table, &key_text)?;
        let key = key_text.get_ref().clone();
        let root_ts = self.timestamp(&d.table, d.timestamp.as_ref(), false)?;

        // Relations in the order fields first use them.
        let mut order: Vec<&String> = Vec::new();
        for f in &d.fields {
            if let Some(from) = &f.get_ref().from {
                let Some((name, _)) = d.relations.get_key_value(from.get_ref()) else {
                    return Err(self.src.error(
                        from.span(),
                        format!("no relation named {:?}; the document has: {}", from.get_ref(), d.relations.keys().cloned().collect::<Vec<_>>().join(", ")),
                    ));
                };
                if !order.contains(&name) {
                    order.push(name);
                }
            }
        }
        let mut root_columns: Vec<(String, ColumnType)> = vec![(key.clone(), ColumnType::Uuid)];
        let mut relations: Vec<Relation> = Vec::new();
        for name in &order {
            let rel = d.relations[*name].get_ref();
            let span = d.relations[*name].span();
            self.columns(&rel.table)?;
            let rkey = rel.key.clone().unwrap_or_else(|| toml::Spanned::new(rel.table.span(), "id".to_string()));
            self.uuid_key(&rel.table, &rkey)?;
            let join = self.join(&d.table, &key, name, rel, span)?;
            // The related key is read only when a field needs it: objects, one entry per row, a
            // many-to-one relation (whether there is a row at all).
            let needs_key = !join.to_many()
                || d.fields.iter().map(|f| f.get_ref()).any(|f| {
                    f.from.as_ref().is_some_and(|n| n.get_ref() == *name) && (f.fields.is_some() || f.distinct.as_ref().is_none_or(|v| v.get_ref() != "value"))
                });
            let columns = if needs_key { vec![RelationColumn { side: Side::Related, name: rkey.get_ref().clone(), ty: ColumnType::Uuid }] } else { vec![] };
            relations.push(Relation {
                name: (*name).clone(),
                table: rel.table.get_ref().clone(),
                key: rkey.get_ref().clone(),
                join,
                key_column: needs_key.then_some(0),
                columns,
                first: 0,
            });
        }

        let mut fields = Vec::new();
        for f in &d.fields {
            let field = self.field(d, f.get_ref(), f.span(), &order, &mut relations, &mut root_columns, mapping)?;
            if fields.iter().any(|o: &Field| o.name == field.name) {
                return Err(self.src.error(f.get_ref().name.span(), format!("a second field named {:?}", field.name)));
            }
            fields.push(field);
        }
        // Unused relations are an error: they would be tracked for nothing.
        for (name, rel) in &d.relations {
            if !order.contains(&name) {
                return Err(self.src.error(rel.span(), format!("relation {name} is not used by any field; remove it or add a field with `from = \"{name}\"`")));
            }
        }

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
            timestamp: root_ts,
            direct: vec![key.clone()],
            fan_out: vec![],
            references: vec![],
            link: false,
        }];
        for (rel, name) in relations.iter().zip(&order) {
            let raw = d.relations[*name].get_ref();
            let (direct, fan_out) = match &rel.join {
                Join::Through { link, root, related, link_key } => {
                    let t = raw.through.as_ref().map(|t| t.get_ref());
                    let ts = self.timestamp(&t.expect("through").table, t.and_then(|t| t.timestamp.as_ref()), true)?;
                    add_stream(
                        &mut streams,
                        Stream {
                            table: link.clone(),
                            key: link_key.clone(),
                            timestamp: ts,
                            direct: vec![root.clone()],
                            fan_out: vec![],
                            references: vec![],
                            link: true,
                        },
                    );
                    (vec![], vec![FanOut { table: link.clone(), select: root.clone(), matching: related.clone() }])
                }
                Join::RelatedColumn(c) => (vec![c.clone()], vec![]),
                Join::RootColumn(c) => {
                    streams[0].references.push(c.clone());
                    (vec![], vec![FanOut { table: d.table.get_ref().clone(), select: key.clone(), matching: c.clone() }])
                }
            };
            let ts = self.timestamp(&raw.table, raw.timestamp.as_ref(), false)?;
            add_stream(
                &mut streams,
                Stream { table: rel.table.clone(), key: rel.key.clone(), timestamp: ts, direct, fan_out, references: vec![], link: false },
            );
        }
        Ok(Document {
            name: d.name.get_ref().clone(),
            index,
            schema: schema.clone(),
            root: d.table.get_ref().clone(),
            key,
            columns,
            root_columns,
            relations,
            fields,
            streams,
        })
    }

    /// A relation column named in the definition (`c` of the related table, `link.c` of the
    /// link table): its index in the relation's columns, added when first named.
    fn relation_column(&self, rel: &mut Relation, raw: &RawRelation, column: &Text) -> Result<usize> {
        let (side, name, table) = match column.get_ref().strip_prefix("link.") {
            Some(c) => match &raw.through {
                Some(t) => (Side::Link, c.to_string(), t.get_ref().table.clone()),
                None => return Err(self.src.error(column.span(), format!("{:?}: relation {} has no link table (`through`)", column.get_ref(), rel.name))),
            },
            None => (Side::Related, column.get_ref().clone(), raw.table.clone()),
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
    ) -> Result<Field> {
        let name = f.name.get_ref().clone();
        let Some(mapped) = mapping.get(&name) else {
            return Err(self.src.error(
                f.name.span(),
                format!("field {name:?} is not in the index mapping; add it to the index schema's mappings.properties, or remove the field"),
            ));
        };
        let Some(from) = &f.from else {
            let Some(column) = &f.column else {
                return Err(self
                    .src
                    .error(span, format!("field {name}: give `column = \"...\"` (a column of {}), or `from = \"relation\"`", d.table.get_ref())));
            };
            if f.fields.is_some() || !f.filter.is_empty() || f.order.is_some() || f.distinct.is_some() {
                return Err(self.src.error(span, format!("field {name}: `fields`, `where`, `order` and `distinct` need `from = \"relation\"`")));
            }
            let ty = self.column(&d.table, column)?;
            let at = match root_columns.iter().position(|(c, _)| c == column.get_ref()) {
                Some(i) => i,
                None => {
                    root_columns.push((column.get_ref().clone(), ty));
                    root_columns.len() - 1
                }
            };
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
        let mut subs_at = Vec::new();
        for s in f.fields.iter().flatten() {
            subs_at.push(self.relation_column(rel, raw, &s.get_ref().column)?);
        }
        let mut filter = Vec::new();
        for (column, values) in &f.filter {
            let c = self.relation_column(rel, raw, &toml::Spanned::new(values.span(), column.clone()))?;
            filter.push(Filter { column: c, values: values.get_ref().values().iter().map(|v| v.trim().to_string()).collect() });
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
                for (s, c) in subs.iter().zip(subs_at) {
                    let s = s.get_ref();
                    let sub = s.name.get_ref();
                    let Some(m) = props.and_then(|p| p.get(sub)) else {
                        return Err(self.src.error(
                            s.name.span(),
                            format!("field {name}.{sub} is not in the index mapping; add it under {name}'s properties in the index schema"),
                        ));
                    };
                    if s.list && rel.columns[c].side != Side::Link {
                        return Err(self.src.error(
                            s.column.span(),
                            format!("`list = true` collects a link table's column (`link.<column>`); {:?} is the related table's", s.column.get_ref()),
                        ));
                    }
                    fields.push(SubField { name: sub.clone(), column: c, required: s.required, list: s.list, f32: is_f32(Some(m)) });
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
