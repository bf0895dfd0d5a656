//! What the sink needs to know, and nothing more: the configuration builds it
//! (`Config::sink_settings`), a test builds it by hand.

use std::path::PathBuf;
use std::time::Duration;

use crate::retry::RetryPolicy;
use crate::secret::Secret;

/// The sink's own settings.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// The base URL of each node of the cluster (at least one).
    pub urls: Vec<reqwest::Url>,
    pub index: String,
    pub auth: EsAuth,
    /// CA certificates added to the public roots, for an https URL.
    pub ca_file: Option<PathBuf>,
    /// Per request (bulk requests get more by size).
    pub timeout: Duration,
    /// Documents per bulk request at most.
    pub max_docs: usize,
    /// Bytes per bulk request at most.
    pub max_bytes: usize,
    /// Refused documents are written here.
    pub dead_letter_file: PathBuf,
    /// Above this share of refused documents, the refusals are a bad mapping, not bad rows.
    pub dead_letter_max_ratio: f64,
    /// Items answered 429/5xx, and requests that failed, are retried with this.
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone)]
pub enum EsAuth {
    None,
    Basic { username: String, password: Secret },
    ApiKey(Secret),
}
