//! Which search engine answers at `ES_URL`, read from `GET /` before anything else is sent: the
//! versions pg2es is tested on are accepted, others are refused with a message that says so.

use reqwest::Method;
use serde_json::Value;

use super::ElasticsearchSink;
use crate::error::{Error, Result};
use crate::retry::retry;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Elasticsearch,
    OpenSearch,
}

/// The engine and its version, as `GET /` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    pub kind: EngineKind,
    pub version: String,
    pub major: u32,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            EngineKind::Elasticsearch => "Elasticsearch",
            EngineKind::OpenSearch => "OpenSearch",
        };
        write!(f, "{name} {}", self.version)
    }
}

/// Major versions pg2es supports: what the test matrix covers (README, "Engines").
const SUPPORTED: &str = "Elasticsearch 7.10 or later 7.x, 8.x or 9.x, or OpenSearch 2.x or 3.x";

impl Engine {
    /// Reads the body of `GET /`; `None` when it is not an Elasticsearch or OpenSearch answer.
    pub fn from_root(body: &Value) -> Option<Engine> {
        let version = body.get("version")?;
        let number = version.get("number")?.as_str()?.to_string();
        let kind = match version.get("distribution").and_then(Value::as_str) {
            Some("opensearch") => EngineKind::OpenSearch,
            Some(_) => return None,
            None => EngineKind::Elasticsearch,
        };
        let major = number.split('.').next()?.parse().ok()?;
        Some(Engine { kind, version: number, major })
    }

    /// Whether pg2es supports this engine.
    pub fn check(&self) -> Result<()> {
        let minor: u32 = self.version.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
        let supported = match self.kind {
            EngineKind::Elasticsearch => matches!(self.major, 8 | 9) || (self.major == 7 && minor >= 10),
            EngineKind::OpenSearch => matches!(self.major, 2 | 3),
        };
        if supported {
            Ok(())
        } else {
            Err(Error::UnsupportedEngine(format!("{self} is not supported; pg2es works with {SUPPORTED}")))
        }
    }
}

impl ElasticsearchSink {
    /// Asks `GET /` which engine this is, and refuses one pg2es does not support.
    pub async fn engine(&self, shutdown: &Shutdown) -> Result<Engine> {
        let context = "read engine version";
        let raw = retry(&self.retry, shutdown, context, || self.send_ok(Method::GET, "", context, None)).await?;
        let engine = serde_json::from_slice(&raw).ok().and_then(|body: Value| Engine::from_root(&body)).ok_or_else(|| {
            Error::UnsupportedEngine(format!(
                "{} answers GET / with something that is neither Elasticsearch nor OpenSearch ({})",
                self.nodes,
                super::truncate(&raw)
            ))
        })?;
        engine.check()?;
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/root/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
    }

    #[test]
    fn real_root_answers_are_read() {
        let es7 = Engine::from_root(&root("elasticsearch-7.10.2")).unwrap();
        assert_eq!((es7.kind, es7.major, es7.to_string().as_str()), (EngineKind::Elasticsearch, 7, "Elasticsearch 7.10.2"));
        let os2 = Engine::from_root(&root("opensearch-2.19.1")).unwrap();
        assert_eq!((os2.kind, os2.major), (EngineKind::OpenSearch, 2));
        let es8 = Engine::from_root(&root("elasticsearch-8.19.21-standin")).unwrap();
        assert_eq!((es8.kind, es8.major), (EngineKind::Elasticsearch, 8));
        for e in [es7, os2, es8] {
            e.check().unwrap();
        }
    }

    #[test]
    fn other_versions_and_servers_are_refused() {
        for (kind, version) in [
            (EngineKind::Elasticsearch, "6.8.23"),
            (EngineKind::Elasticsearch, "7.9.3"),
            (EngineKind::Elasticsearch, "10.0.0"),
            (EngineKind::OpenSearch, "1.3.20"),
        ] {
            let major = version.split('.').next().unwrap().parse().unwrap();
            let err = Engine { kind, version: version.into(), major }.check().unwrap_err().to_string();
            assert!(err.contains(version) && err.contains("pg2es works with"), "{err}");
        }
        assert_eq!(Engine::from_root(&serde_json::json!({"status": "ok"})), None);
        assert_eq!(Engine::from_root(&serde_json::json!({"version": {"number": "1.0", "distribution": "other"}})), None);
    }
}
