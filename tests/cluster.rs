//! Several Elasticsearch nodes in `ES_URL`: requests go to a node that answers, and one that
//! fails is skipped. Here against the stack's one node with a dead address beside it (nothing
//! listens there): the load costs one failed request, not a wait.

mod common;

use common::TestEnv;

/// A port nothing listens on now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The dead node first: the first request fails on it and goes to the live one at once; from
/// then on the live one leads, so the whole full load (and the reconciliation after it) logs
/// one failure and waits for nothing.
#[tokio::test]
async fn a_dead_node_in_es_url_costs_one_failed_request() {
    let env = TestEnv::new("cluster_dead_node").await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut vars = env.env_vars();
    vars.retain(|(k, _)| k != "ES_URL");
    vars.push(("ES_URL".into(), format!("{dead},{}", env.es)));
    let out = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    env.refresh().await;
    assert_eq!(env.count().await, 999);
    assert_eq!(stderr.matches("sending the request to the next node of ES_URL").count(), 1, "{stderr}");
    assert!(!stderr.contains("retrying"), "no backoff wait: {stderr}");
    // The started line names both nodes.
    assert!(stderr.contains(&dead), "{stderr}");
    env.cleanup().await;
}
