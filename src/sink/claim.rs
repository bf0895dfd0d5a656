//! Which source an index is kept from, recorded in its mapping's `_meta` (`"_meta": {"pg2es":
//! {...}}`), so that two deployments pointed at one index by mistake (staging beside production,
//! two tenants, one definition's index names on one cluster) are refused rather than silently
//! overwrite each other's documents and reconcile each other's away.
//!
//! An index without the record (made by a release before it, or by hand) is adopted: the record
//! is written and nothing is loaded again. `_meta` is not part of the mapping comparison.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ElasticsearchSink;
use crate::checkpoint::SourceIdentity;
use crate::error::{Error, Result};
use crate::retry::retry;
use crate::shutdown::Shutdown;

/// The key of pg2es's record in the mapping's `_meta`.
pub const META_KEY: &str = "pg2es";

/// The source and document an index is kept from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexOwner {
    /// The cluster (`pg_control_system().system_identifier`).
    pub system_identifier: String,
    pub database: String,
    pub schema: String,
    /// The definition's document the index holds.
    pub document: String,
    /// What the documents' external versions are ([`VERSION_SCHEME`]). Absent in records written
    /// before it was recorded, which had the same scheme.
    #[serde(default = "version_scheme")]
    pub versions: String,
}

/// The versions pg2es writes: the source's WAL position when the record was read, so a newer
/// state of a record always has a higher version on one server, and an index written from
/// another server (or one whose WAL went back) holds versions that mean nothing here.
pub const VERSION_SCHEME: &str = "pg_wal_lsn";

fn version_scheme() -> String {
    VERSION_SCHEME.to_string()
}

impl IndexOwner {
    pub fn new(source: &SourceIdentity, document: &str) -> IndexOwner {
        IndexOwner {
            system_identifier: source.system_identifier.clone(),
            database: source.database.clone(),
            schema: source.schema.clone(),
            document: document.to_string(),
            versions: version_scheme(),
        }
    }
}

impl std::fmt::Display for IndexOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document '{}' of database '{}', schema '{}' of cluster {}", self.document, self.database, self.schema, self.system_identifier)
    }
}

/// What an index's `_meta` says of its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No record: an index of an earlier release, or made by hand.
    None,
    Owner(IndexOwner),
    /// A `pg2es` entry that is not an owner (written by hand?): shown as it is.
    Unreadable(String),
}

/// The claim in a `GET <index>/_mapping` answer (keyed by the concrete index name), and the
/// whole `_meta` beside it (kept when the claim is added: a `_meta` put replaces all of it).
pub fn claim_in(mapping_answer: &Value) -> (Claim, serde_json::Map<String, Value>) {
    let meta = mapping_answer.as_object().and_then(|o| o.values().next()).and_then(|v| v.pointer("/mappings/_meta")).and_then(Value::as_object);
    let meta = meta.cloned().unwrap_or_default();
    let claim = match meta.get(META_KEY) {
        None => Claim::None,
        Some(v) => match serde_json::from_value::<IndexOwner>(v.clone()) {
            Ok(owner) => Claim::Owner(owner),
            Err(_) => Claim::Unreadable(v.to_string()),
        },
    };
    (claim, meta)
}

impl ElasticsearchSink {
    /// Ties the index to `owner`: an index recorded as another's is refused (a setup error that
    /// names the fix), one without a record is adopted (the record written, nothing reloaded).
    /// Once per sink: later calls for the same owner send nothing.
    pub async fn claim_index(&self, owner: &IndexOwner, shutdown: &Shutdown) -> Result<()> {
        if self.claimed.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(owner) {
            return Ok(());
        }
        let (claim, mut meta) = self.read_claim(shutdown).await?;
        match claim {
            Claim::Owner(o) if o == *owner => {}
            Claim::None => {
                meta.insert(META_KEY.to_string(), serde_json::to_value(owner).map_err(|e| Error::Encode(format!("the index's owner: {e}")))?);
                let body = bytes::Bytes::from(
                    serde_json::to_vec(&serde_json::json!({ "_meta": meta })).map_err(|e| Error::Encode(format!("the index's _meta: {e}")))?,
                );
                let path = format!("{}/_mapping", self.index);
                let context = "record the index's source";
                retry(&self.retry, shutdown, context, || self.send_ok(Method::PUT, &path, context, Some((body.clone(), "application/json")))).await?;
                // Two deployments adopting one index at the same moment: the one whose record
                // did not stay is refused here.
                match self.read_claim(shutdown).await?.0 {
                    Claim::Owner(o) if o == *owner => {}
                    other => return Err(self.claimed_by_another(&other, owner)),
                }
                tracing::info!(index = %self.index, document = %owner.document, database = %owner.database, schema = %owner.schema, "recorded in the index's _meta which source it is kept from");
            }
            other => return Err(self.claimed_by_another(&other, owner)),
        }
        *self.claimed.lock().unwrap_or_else(|p| p.into_inner()) = Some(owner.clone());
        Ok(())
    }

    async fn read_claim(&self, shutdown: &Shutdown) -> Result<(Claim, serde_json::Map<String, Value>)> {
        let context = "read the index's source";
        let path = format!("{}/_mapping", self.index);
        let raw = retry(&self.retry, shutdown, context, || self.send_ok(Method::GET, &path, context, None)).await?;
        let answer: Value = serde_json::from_slice(&raw).map_err(|e| Error::Unreadable { context, reason: e.to_string() })?;
        Ok(claim_in(&answer))
    }

    fn claimed_by_another(&self, claim: &Claim, ours: &IndexOwner) -> Error {
        let holder = match claim {
            Claim::Owner(o) => o.to_string(),
            Claim::Unreadable(text) => format!("an unreadable record ({text})"),
            Claim::None => "no record".to_string(),
        };
        Error::IndexClaimed { index: self.index.clone(), holder, ours: ours.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner(database: &str) -> IndexOwner {
        IndexOwner {
            system_identifier: "7642011472967116994".into(),
            database: database.into(),
            schema: "content".into(),
            document: "genres".into(),
            versions: version_scheme(),
        }
    }

    #[test]
    fn the_claim_is_read_from_the_mappings_meta() {
        // As Elasticsearch 7.10 and OpenSearch 2.19 answer GET <index>/_mapping.
        let answer =
            |meta: Value| json!({ "genres_v1": { "mappings": { "dynamic": "strict", "_meta": meta, "properties": { "id": { "type": "keyword" } } } } });
        let (claim, meta) = claim_in(&answer(json!({ "pg2es": owner("movies"), "team": "search" })));
        assert_eq!(claim, Claim::Owner(owner("movies")));
        assert_eq!(meta["team"], "search");
        assert_ne!(claim, Claim::Owner(owner("movies_staging")));
        assert_eq!(claim_in(&answer(json!({ "team": "search" }))).0, Claim::None);
        assert_eq!(claim_in(&json!({ "genres": { "mappings": { "properties": {} } } })).0, Claim::None);
        assert!(matches!(claim_in(&answer(json!({ "pg2es": { "database": "movies" } }))).0, Claim::Unreadable(t) if t.contains("movies")));
        // A record of a release before the version scheme was recorded: the same scheme.
        let mut older = serde_json::to_value(owner("movies")).unwrap();
        older.as_object_mut().unwrap().remove("versions");
        assert_eq!(claim_in(&answer(json!({ "pg2es": older }))).0, Claim::Owner(owner("movies")));
        assert_eq!(serde_json::to_value(owner("movies")).unwrap()["versions"], VERSION_SCHEME);
    }

    #[test]
    fn another_owner_is_refused_with_the_fix() {
        let e = Error::IndexClaimed { index: "genres".into(), holder: owner("movies").to_string(), ours: owner("movies_staging").to_string() };
        let text = e.to_string();
        for part in ["'genres'", "database 'movies'", "database 'movies_staging'", "ES_INDEX_PREFIX", "ES_INDEX", "delete the index"] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert_eq!(e.retry(), crate::error::Retry::GiveUp);
    }
}
