//! The index name as an alias (`pg2es reindex`): `<index>` is either a concrete index (as pg2es
//! created it before any rebuild) or an alias of exactly one concrete `<index>_<n>`. Writes go to
//! the name, so Elasticsearch sends them to whichever index the alias points at; a swap is one
//! `_aliases` request, so search never sees neither or both.

use reqwest::Method;
use serde_json::{json, Value};

use super::ElasticsearchSink;
use crate::error::{Error, Result};
use crate::retry::retry;
use crate::shutdown::Shutdown;

/// How long an old index outlives the alias move before it is deleted: searches begun on it
/// just before the move end first.
pub const OLD_INDEX_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the index name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// No index or alias of that name.
    Absent,
    /// A concrete index of that name.
    Concrete,
    /// An alias of these indexes.
    Alias(Vec<String>),
}

impl ElasticsearchSink {
    /// What this sink's index name is now.
    pub async fn target(&self, shutdown: &Shutdown) -> Result<Target> {
        let context = "read the index's alias";
        let path = format!("_alias/{}", self.index);
        let (status, body) = retry(&self.retry, shutdown, context, || self.send(Method::GET, &path, context, None)).await?;
        match status {
            200 => {
                let v: Value = serde_json::from_slice(&body).map_err(|e| Error::Unreadable { context, reason: e.to_string() })?;
                let mut indexes: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                indexes.sort();
                Ok(Target::Alias(indexes))
            }
            404 => {
                let (status, _) = self.send(Method::HEAD, &self.index, "check index", None).await?;
                Ok(if status == 200 { Target::Concrete } else { Target::Absent })
            }
            s => Err(Error::ElasticsearchStatus { context, status: s, body: super::truncate(&body) }),
        }
    }

    /// The concrete index behind the name: itself, or the one index its alias points at.
    pub async fn concrete(&self, shutdown: &Shutdown) -> Result<Option<String>> {
        Ok(match self.target(shutdown).await? {
            Target::Absent => None,
            Target::Concrete => Some(self.index.clone()),
            Target::Alias(mut all) if all.len() == 1 => all.pop(),
            Target::Alias(all) => {
                return Err(Error::SourceSetup(format!(
                    "alias {} points at {} indexes ({}): pg2es writes through it, so it must point at one; remove the others from it (POST _aliases)",
                    self.index,
                    all.len(),
                    all.join(", ")
                )))
            }
        })
    }

    /// Points the name at `new` in one request: the alias moves from `old` (an alias's index),
    /// or the concrete index of that name is deleted and the alias takes its name (`old` is the
    /// name itself: a search under way on it at that instant fails). With `drop_old`, an alias's
    /// old index is deleted [`OLD_INDEX_GRACE`] later, once searches begun on it have ended.
    pub async fn swap_alias(&self, old: &str, new: &str, drop_old: bool, shutdown: &Shutdown) -> Result<()> {
        let actions = if old == self.index {
            json!({ "actions": [{ "remove_index": { "index": old } }, { "add": { "index": new, "alias": self.index } }] })
        } else {
            json!({ "actions": [{ "remove": { "index": old, "alias": self.index } }, { "add": { "index": new, "alias": self.index } }] })
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&actions).map_err(|e| Error::Encode(format!("the alias actions: {e}")))?);
        let context = "move the alias";
        retry(&self.retry, shutdown, context, || self.send_ok(Method::POST, "_aliases", context, Some((body.clone(), "application/json")))).await?;
        if drop_old && old != self.index {
            if shutdown.sleep(OLD_INDEX_GRACE).await {
                return Err(Error::Shutdown);
            }
            let context = "delete the old index";
            retry(&self.retry, shutdown, context, || self.send_ok(Method::DELETE, old, context, None)).await?;
        }
        Ok(())
    }

    /// Deletes the concrete index `name` (a rebuild's leftover); absent is fine.
    pub async fn delete_named(&self, name: &str, shutdown: &Shutdown) -> Result<()> {
        let context = "delete an unfinished rebuild";
        let (status, body) = retry(&self.retry, shutdown, context, || self.send(Method::DELETE, name, context, None)).await?;
        match status {
            200..=299 | 404 => Ok(()),
            s => Err(Error::ElasticsearchStatus { context, status: s, body: super::truncate(&body) }),
        }
    }
}
