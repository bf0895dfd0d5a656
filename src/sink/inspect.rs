//! Read-only checks of the index, for `pg2es verify`: it exists, and its mapping is the one in
//! `ES_SCHEMA_FILE`. Nothing here writes to Elasticsearch.
//!
//! Without them, verify's first search fails with Elasticsearch's own JSON (`index_not_found`,
//! or a sort on a field the mapping does not have).

use reqwest::Method;
use serde_json::Value;

use super::{mapping_difference, ElasticsearchSink};
use crate::error::{status_is_transient, Error, Result};
use crate::retry::retry;
use crate::settings::{ES_INDEX, ES_URL};
use crate::shutdown::Shutdown;

impl ElasticsearchSink {
    /// Fails with what is wrong, and what to do, when the index is absent or its mapping is not
    /// the definition's.
    pub async fn check_index(&self, definition: &Value, shutdown: &Shutdown) -> Result<()> {
        let context = "check index";
        let status = retry(&self.retry, shutdown, context, || async {
            let (status, _) = self.send(Method::HEAD, &self.index, context, None).await?;
            if status_is_transient(status) {
                return Err(Error::ElasticsearchStatus { context, status, body: String::new() });
            }
            Ok(status)
        })
        .await?;
        match status {
            200..=299 => {}
            404 => {
                let body = format!("index '{}' does not exist: run `pg2es run` first, or check {ES_URL} and {ES_INDEX}", self.index);
                return Err(Error::ElasticsearchStatus { context, status, body });
            }
            _ => return Err(Error::ElasticsearchStatus { context, status, body: String::new() }),
        }
        match self.mapping_difference(definition, shutdown).await? {
            Some(difference) => Err(Error::MappingConflict { index: self.index.clone(), difference }),
            None => Ok(()),
        }
    }

    /// The first place where the index's mapping differs from the definition's
    /// (`mappings.properties.id.type: expected "keyword", found "text"`), if any.
    pub async fn mapping_difference(&self, definition: &Value, shutdown: &Shutdown) -> Result<Option<String>> {
        let context = "read mapping";
        let path = format!("{}/_mapping", self.index);
        let raw = retry(&self.retry, shutdown, context, || self.send_ok(Method::GET, &path, context, None)).await?;
        let all: Value =
            serde_json::from_slice(&raw).map_err(|e| Error::ElasticsearchStatus { context, status: 200, body: format!("unreadable response: {e}") })?;
        // Keyed by the concrete index name (ES_INDEX may be an alias of it).
        let actual = all.as_object().and_then(|o| o.values().next()).and_then(|v| v.get("mappings")).unwrap_or(&Value::Null);
        let expected = definition.get("mappings").unwrap_or(&Value::Null);
        Ok(mapping_difference(expected, actual))
    }
}
