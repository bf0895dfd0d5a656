//! The nodes of one Elasticsearch cluster (`ES_URL`, comma-separated). Each request goes first
//! to the node that answered last. A node that does not answer (no connection, a timeout, a
//! broken answer, or a 502, 503 or 504 from a proxy in front of it) is skipped for
//! [`SKIP_FOR`], and the request is sent to the next node at once. Writes are versioned, so a
//! bulk request sent again elsewhere, after a node that died may have applied it, is harmless.
//! Only when every node failed is the request an error, which the caller retries with backoff as
//! it does for one node's outage.

use crate::settings::ES_URL;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Url;

/// How long a node that failed goes to the back of the order.
const SKIP_FOR: Duration = Duration::from_secs(10);

pub struct Nodes {
    urls: Vec<Url>,
    state: Mutex<State>,
}

struct State {
    /// The node tried first: the last one that answered.
    preferred: usize,
    /// Per node: when it last failed.
    failed_at: Vec<Option<Instant>>,
}

impl Nodes {
    /// Each URL as a base that paths join onto (a trailing `/` added). At least one.
    pub fn new(urls: &[Url]) -> Nodes {
        let urls: Vec<Url> = urls
            .iter()
            .map(|u| {
                let mut base = u.clone();
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                base
            })
            .collect();
        assert!(!urls.is_empty(), "{ES_URL} names at least one node");
        let failed_at = vec![None; urls.len()];
        Nodes { urls, state: Mutex::new(State { preferred: 0, failed_at }) }
    }

    /// The nodes to try, in order: the preferred one, then the others in turn; those that failed
    /// in the last [`SKIP_FOR`] after the rest, the one that failed longest ago first.
    pub fn order(&self) -> Vec<usize> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.urls.len();
        let mut order: Vec<usize> = (0..n).map(|i| (state.preferred + i) % n).collect();
        let recent = |i: usize| state.failed_at[i].filter(|at| at.elapsed() < SKIP_FOR);
        // Stable: nodes not failed lately keep their turn, then the failed ones, oldest first.
        order.sort_by_key(|&i| recent(i).map(|at| (1, Some(at))).unwrap_or((0, None)));
        order
    }

    pub fn url(&self, node: usize, path: &str) -> Url {
        // `path` is built from a validated index name and fixed API paths.
        let base = &self.urls[node];
        base.join(path).unwrap_or_else(|_| base.clone())
    }

    /// The node's URL as logs show it: without credentials.
    pub fn shown(&self, node: usize, path: &str) -> String {
        without_credentials(&self.url(node, path))
    }

    pub fn failed(&self, node: usize) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).failed_at[node] = Some(Instant::now());
    }

    pub fn answered(&self, node: usize) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.failed_at[node] = None;
        state.preferred = node;
    }
}

fn without_credentials(url: &Url) -> String {
    let mut at = url.clone();
    let _ = (at.set_username(""), at.set_password(None));
    at.to_string()
}

/// Node URLs as `print-config` and the start's log line show them: credentials in a URL as `***`.
pub fn shown_urls(urls: &[Url]) -> String {
    let shown: Vec<String> = urls
        .iter()
        .map(|u| {
            let mut at = u.clone();
            if !u.username().is_empty() || u.password().is_some() {
                let _ = (at.set_username("***"), at.set_password(None));
            }
            at.to_string()
        })
        .collect();
    shown.join(",")
}

/// The nodes as logs and messages show them: comma-separated, without credentials.
impl fmt::Display for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.urls.iter().map(without_credentials).collect();
        f.write_str(&shown.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Nodes {
        let urls: Vec<Url> = (0..n).map(|i| Url::parse(&format!("http://user:secret@127.0.0.1:{}", 9221 + i)).unwrap()).collect();
        Nodes::new(&urls)
    }

    #[test]
    fn a_failed_node_goes_to_the_back_and_the_one_that_answered_leads() {
        let n = nodes(3);
        assert_eq!(n.order(), vec![0, 1, 2]);
        n.failed(0);
        assert_eq!(n.order(), vec![1, 2, 0]);
        n.answered(1);
        assert_eq!(n.order(), vec![1, 2, 0]);
        n.failed(1);
        // Both failed lately: the one that failed first is tried first among them.
        assert_eq!(n.order(), vec![2, 0, 1]);
        n.answered(0);
        assert_eq!(n.order(), vec![0, 2, 1]);
        assert_eq!(nodes(1).order(), vec![0]);
    }

    #[test]
    fn paths_join_each_node_and_logs_show_no_credentials() {
        let n = nodes(2);
        assert_eq!(n.url(1, "movies/_bulk").as_str(), "http://user:secret@127.0.0.1:9222/movies/_bulk");
        assert_eq!(n.shown(1, "movies/_bulk"), "http://127.0.0.1:9222/movies/_bulk");
        assert_eq!(n.to_string(), "http://127.0.0.1:9221/,http://127.0.0.1:9222/");
        let prefixed = Nodes::new(&[Url::parse("https://proxy.example/es").unwrap()]);
        assert_eq!(prefixed.url(0, "_cluster/health").as_str(), "https://proxy.example/es/_cluster/health");
    }
}
