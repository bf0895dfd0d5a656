//! The catalog: which documents pg2es keeps, built from a definition file (docs/definition.md).
//!
//! The one module that knows tables, relations, fan-out and document shape. It reads the
//! definition (`definition.rs`), checks it against the live schema and the index mapping and
//! resolves it (`resolve.rs`) into [`Document`]s (`model.rs`), and generates the SQL each
//! document is read with (`sql.rs`) and the delete capture's triggers (`triggers.rs`). The other
//! layers take a [`Document`] and know nothing of any catalog.

pub mod definition;
mod model;
mod resolve;
pub mod sql;
pub mod triggers;

use std::path::{Path, PathBuf};

pub use definition::{Origin, Source};
pub use model::*;
pub use resolve::{qualified, quote, sql_ident, sql_table, FirstIndex, ForeignKey, LiveSchema, TableKeys, TimestampChoice};

use crate::error::Result;
use crate::settings::PG2ES_DOCUMENTS;

/// What picks the documents: the definition (built-in when `None`), the documents to keep
/// (all when empty), and the settings that rename the first one's index.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub definition: Option<PathBuf>,
    pub documents: Vec<String>,
    pub first: FirstIndex,
    pub timestamps: Option<String>,
}

impl Selection {
    pub fn source(&self) -> Result<Source> {
        match &self.definition {
            None => Ok(Source::builtin()),
            Some(p) => Source::read(p),
        }
    }

    /// The selected documents' positions in the definition, names and indexes, from the file
    /// alone.
    pub fn heads(&self, src: &Source) -> Result<Vec<(usize, String, IndexSpec)>> {
        let all = resolve::heads(src, &self.first, &|name| schema_of(src, name))?;
        let all: Vec<(usize, String, IndexSpec)> = all.into_iter().enumerate().map(|(i, (n, index))| (i, n, index)).collect();
        self.pick(src, all, |(_, n, _)| n)
    }

    fn pick<T>(&self, src: &Source, all: Vec<T>, name: impl Fn(&T) -> &String) -> Result<Vec<T>> {
        if self.documents.is_empty() {
            return Ok(all);
        }
        for wanted in &self.documents {
            if !all.iter().any(|d| name(d) == wanted) {
                let names: Vec<&str> = all.iter().map(|d| name(d).as_str()).collect();
                return Err(crate::error::Error::Config(format!(
                    "{PG2ES_DOCUMENTS} names {wanted:?}, which {} does not define (it has: {})",
                    src.origin,
                    names.join(", ")
                )));
            }
        }
        Ok(all.into_iter().filter(|d| self.documents.contains(name(d))).collect())
    }

    /// The selected documents of `src`, resolved against `live`.
    pub fn resolve(&self, src: &Source, live: &LiveSchema) -> Result<Vec<Document>> {
        let ts = match &self.timestamps {
            None => TimestampChoice::Auto,
            Some(c) => TimestampChoice::Named(c.clone()),
        };
        let all = resolve::resolve(src, live, &ts, &self.first, &|name| schema_of(src, name))?;
        self.pick(src, all, |d| &d.name)
    }
}

/// An index schema named in `src`: built in, or relative to the definition file.
fn schema_of(src: &Source, name: &str) -> std::result::Result<(String, String), String> {
    match &src.origin {
        Origin::Builtin => definition::CINEMA_SCHEMAS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| (format!("(built-in {n})"), text.to_string()))
            .ok_or_else(|| format!("no built-in index schema {name:?}")),
        Origin::File(p) => {
            let path = p.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf).join(name);
            std::fs::read_to_string(&path)
                .map(|t| (path.display().to_string(), t))
                .map_err(|e| format!("index schema {}: {e}; the path is relative to the definition file", path.display()))
        }
    }
}

#[cfg(test)]
pub mod testing {
    //! The cinema's schema as Postgres describes it, for unit tests without a server.
    use super::*;
    use std::collections::BTreeMap;

    pub fn cinema_live() -> LiveSchema {
        let tz = "timestamp with time zone";
        let table = |cols: &[(&str, &str)]| -> BTreeMap<String, String> { cols.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect() };
        let mut columns = BTreeMap::new();
        columns.insert(
            "film_work".into(),
            table(&[("id", "uuid"), ("title", "text"), ("description", "text"), ("rating", "double precision"), ("creation_date", "date"), ("updated_at", tz)]),
        );
        columns.insert("genre".into(), table(&[("id", "uuid"), ("name", "text"), ("description", "text"), ("updated_at", tz)]));
        columns.insert("person".into(), table(&[("id", "uuid"), ("full_name", "text"), ("updated_at", tz)]));
        columns.insert("genre_film_work".into(), table(&[("id", "uuid"), ("genre_id", "uuid"), ("film_work_id", "uuid"), ("created_at", tz)]));
        columns
            .insert("person_film_work".into(), table(&[("id", "uuid"), ("film_work_id", "uuid"), ("person_id", "uuid"), ("role", "text"), ("created_at", tz)]));
        let keys = ["film_work", "genre", "person", "genre_film_work", "person_film_work"]
            .iter()
            .map(|t| (t.to_string(), TableKeys { primary: Some(vec!["id".into()]), unique: vec![] }))
            .collect();
        LiveSchema { schema: "content".into(), columns, foreign_keys: vec![], keys, ..LiveSchema::default() }
    }

    pub fn cinema() -> Vec<Document> {
        Selection::default().resolve(&Source::builtin(), &cinema_live()).expect("the cinema definition resolves")
    }
}

#[cfg(test)]
mod tests;
