//! The definition file as written: TOML with every value's place kept, so that an error names the
//! file and the line. Nothing here looks at Postgres or the index; `resolve.rs` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::settings::PG2ES_DEFINITION;

/// The cinema definition (movies, genres, persons), built into the binary: the default.
pub const CINEMA: &str = include_str!("../../catalog/cinema.toml");
/// The index schemas the cinema definition names, by file name.
pub const CINEMA_SCHEMAS: [(&str, &str); 3] = [
    ("movies.es.json", include_str!("../../catalog/movies.es.json")),
    ("genres.es.json", include_str!("../../catalog/genres.es.json")),
    ("persons.es.json", include_str!("../../catalog/persons.es.json")),
];

/// Where a definition came from, for messages and for paths relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Builtin,
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin => f.write_str("the built-in cinema definition"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A definition file's text, with what it takes to point at a line of it.
#[derive(Debug, Clone)]
pub struct Source {
    pub origin: Origin,
    pub text: String,
}

impl Source {
    pub fn builtin() -> Source {
        Source { origin: Origin::Builtin, text: CINEMA.to_string() }
    }

    pub fn read(path: &Path) -> Result<Source> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Definition(format!("{}: cannot read it: {e}; set {PG2ES_DEFINITION} to a definition file", path.display())))?;
        Ok(Source { origin: Origin::File(path.to_path_buf()), text })
    }

    /// `file:line: message. fix`, for the value at `span`.
    pub fn error(&self, span: std::ops::Range<usize>, message: impl std::fmt::Display) -> Error {
        Error::Definition(format!("{}:{}: {message}", self.origin, self.line(span.start)))
    }

    pub fn line(&self, offset: usize) -> usize {
        self.text.as_bytes()[..offset.min(self.text.len())].iter().filter(|b| **b == b'\n').count() + 1
    }

    pub fn parse(&self) -> Result<RawDefinition> {
        toml::from_str::<RawDefinition>(&self.text).map_err(|e| {
            let at = e.span().map(|s| format!(":{}", self.line(s.start))).unwrap_or_default();
            Error::Definition(format!("{}{at}: {}; see docs/definition.md for the format", self.origin, e.message().trim_end()))
        })
    }
}

pub type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefinition {
    pub documents: Vec<Spanned<RawDocument>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocument {
    pub name: Text,
    pub index: Option<Text>,
    pub index_schema: Text,
    pub table: Text,
    pub key: Option<Text>,
    pub timestamp: Option<Text>,
    /// The rows that have a document: `{ column = value }`, as a field's `where`.
    #[serde(rename = "where", default)]
    pub filter: BTreeMap<String, Spanned<RawCondition>>,
    #[serde(default)]
    pub relations: BTreeMap<String, Spanned<RawRelation>>,
    pub fields: Vec<Spanned<RawField>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelation {
    pub table: Text,
    pub key: Option<Text>,
    pub timestamp: Option<Text>,
    /// Many-to-one relations of this one's rows (`[documents.relations.people.relations.country]`),
    /// read with them: fields name their columns by path (`country.name`).
    #[serde(default)]
    pub relations: BTreeMap<String, Spanned<RawRelation>>,
    pub through: Option<Spanned<RawThrough>>,
    pub on: Option<Spanned<RawOn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrough {
    pub table: Text,
    pub root: Option<Text>,
    pub related: Option<Text>,
    pub key: Option<Text>,
    pub timestamp: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOn {
    pub root: Option<Text>,
    pub related: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    pub name: Text,
    pub column: Option<Text>,
    /// Several columns of one row joined into one text (`separator`, default one space).
    pub concat: Option<Spanned<Vec<String>>>,
    pub separator: Option<Text>,
    pub from: Option<Text>,
    pub fields: Option<Vec<Spanned<RawSubField>>>,
    #[serde(rename = "where", default)]
    pub filter: BTreeMap<String, Spanned<RawCondition>>,
    pub order: Option<Spanned<Vec<String>>>,
    pub distinct: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubField {
    pub name: Text,
    pub column: Option<Text>,
    pub concat: Option<Spanned<Vec<String>>>,
    pub separator: Option<Text>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub list: bool,
}

/// A `where` condition as written: a value, a list of values (any of them), or
/// `{ null = true | false }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawCondition {
    One(Scalar),
    Many(Vec<Scalar>),
    Null { null: bool },
}

/// A value in a `where`: TOML's string, integer, float or boolean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Text(t) => write!(f, "{t:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cinema_definition_parses() {
        let d = Source::builtin().parse().unwrap();
        let names: Vec<&str> = d.documents.iter().map(|d| d.get_ref().name.get_ref().as_str()).collect();
        assert_eq!(names, ["movies", "genres", "persons"]);
    }

    #[test]
    fn a_syntax_error_names_the_line() {
        let s = Source {
            origin: Origin::File("x.toml".into()),
            text: "[[documents]]\nname = \"a\"\nindex_schema = \"s.json\"\ntable = \"t\"\nfields = 3\n".into(),
        };
        let e = s.parse().unwrap_err().to_string();
        assert!(e.contains("x.toml:5"), "{e}");
        let s = Source { origin: Origin::File("x.toml".into()), text: "[[documents]]\nname = \"a\"\ncolour = 1\n".into() };
        let e = s.parse().unwrap_err().to_string();
        assert!(e.contains("x.toml:3") && e.contains("colour"), "{e}");
    }
}

/// What the documents of `document` are built from, as a fingerprint that is the same in every
/// build: its table in the definition (parsed: comments, spacing and the order of keys do not
/// count) and its index schema. The state file keeps it; a run whose definition has another
/// reloads every record (`checkpoint::PositionDelta::Definition`). `None` when the text does not
/// parse, which resolving the definition reports.
pub fn fingerprint(source: &Source, document: &str, index_schema: &serde_json::Value) -> Option<String> {
    let table: toml::Table = toml::from_str(&source.text).ok()?;
    let entry = table.get("documents")?.as_array()?.iter().find(|d| d.get("name").and_then(toml::Value::as_str) == Some(document))?;
    let entry = serde_json::to_string(entry).ok()?;
    let schema = serde_json::to_string(index_schema).ok()?;
    Some(super::triggers::hash(&[&entry, &schema]))
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn a_fingerprint_changes_with_the_document_and_its_schema_only() {
        let source = |text: &str| Source { origin: Origin::Builtin, text: text.to_string() };
        let schema = serde_json::json!({ "mappings": { "properties": { "id": { "type": "keyword" } } } });
        let a = "[[documents]]\nname = \"a\"\ntable = \"t\"\nfields = [{ name = \"id\", column = \"id\" }]\n[[documents]]\nname = \"b\"\ntable = \"u\"\n";
        let base = fingerprint(&source(a), "a", &schema).unwrap();
        // Comments, spacing, the order of keys and the other documents do not count.
        let same = "# the a's\n[[documents]]\ntable   = \"t\"\nname = \"a\"\nfields = [{ column = \"id\", name = \"id\" }]\n[[documents]]\nname = \"b\"\ntable = \"v\"\n";
        assert_eq!(fingerprint(&source(same), "a", &schema).as_deref(), Some(base.as_str()));
        // A field, the table, or the mapping does.
        let other = a.replace("column = \"id\" }]", "column = \"id\" }, { name = \"x\", column = \"x\" }]");
        assert_ne!(fingerprint(&source(&other), "a", &schema).unwrap(), base);
        assert_ne!(fingerprint(&source(&a.replace("\"t\"", "\"t2\"")), "a", &schema).unwrap(), base);
        let mapped = serde_json::json!({ "mappings": { "properties": { "id": { "type": "keyword" }, "x": { "type": "text" } } } });
        assert_ne!(fingerprint(&source(a), "a", &mapped).unwrap(), base);
        assert_eq!(fingerprint(&source(a), "c", &schema), None);
    }
}
