//! A three-node Elasticsearch 7.10.2 cluster that loses a node (`scripts/stack.sh up escluster`,
//! `make test-cluster`): one node SIGKILLed in the middle of a full load, and again during
//! continuous sync under a writer that updates and deletes films; and the deletes a node restart
//! makes Elasticsearch forget. pg2es gets every node in `ES_URL`; each test ends with `verify`
//! reporting no difference.
//!
//! The cluster's URLs come from `PG2ES_TEST_ES_CLUSTER_URLS` (comma-separated, nodes 1, 2 and 3 of
//! `scripts/stack.sh escluster` in that order); nodes are killed and started again through that
//! script. Each test starts by making sure all three nodes are in the cluster, and starts again
//! every node it killed. The test indexes have 3 shards and 1 replica (the cinema's index schema
//! with those two settings), so each node holds one primary and one replica of them.
#![cfg(feature = "fault-tests")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, Rng, TestEnv};
use serde_json::{json, Value};

const NEXT_NODE: &str = "sending the request to the next node of ES_URL";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cluster's node URLs, node 1 first; a test without them fails (it must not pass unrun).
fn cluster_urls() -> Vec<String> {
    let raw = std::env::var("PG2ES_TEST_ES_CLUSTER_URLS").unwrap_or_else(|_| {
        panic!(
            "PG2ES_TEST_ES_CLUSTER_URLS is not set: the URLs of the three nodes of `scripts/stack.sh up escluster`, comma-separated \
             (http://127.0.0.1:9221,http://127.0.0.1:9222,http://127.0.0.1:9223); `make test-cluster` sets it"
        )
    });
    let urls: Vec<String> = raw.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect();
    assert_eq!(urls.len(), 3, "PG2ES_TEST_ES_CLUSTER_URLS={raw:?}: the three nodes of escluster, comma-separated");
    urls
}

/// `scripts/stack.sh <action> escluster <n>` (kill-node waits until the JVM is gone, start-node
/// until the cluster has three nodes), off the async workers so a writer task keeps writing.
async fn node(action: &'static str, n: usize) -> Duration {
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || Command::new(repo().join("scripts/stack.sh")).args([action, "escluster", &n.to_string()]).status())
        .await
        .unwrap()
        .expect("run scripts/stack.sh");
    assert!(status.success(), "scripts/stack.sh {action} escluster {n} failed");
    if action == "kill-node" {
        ports_closed(n).await;
        left_the_cluster(n).await;
    }
    started.elapsed()
}

/// Waits (at most 30 s) until a live node reports two nodes in the cluster: start-node waits for
/// three, which the cluster still reports for a moment after the kill, and was seen to return
/// at once ("in the cluster in 0s") while the node it started was still booting.
async fn left_the_cluster(n: usize) {
    let urls = cluster_urls();
    let http = reqwest::Client::new();
    let live: Vec<&String> = urls.iter().enumerate().filter(|(i, _)| i + 1 != n).map(|(_, u)| u).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for url in &live {
            let health = http.get(format!("{url}/_cluster/health")).timeout(Duration::from_secs(3)).send().await;
            if let Ok(r) = health {
                if r.json::<Value>().await.is_ok_and(|h| h["number_of_nodes"] == 2) {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "the cluster still counts node {n} 30 s after it was killed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 10 s) until nothing accepts on node `n`'s HTTP and transport ports (9220 + n,
/// 9320 + n, as scripts/stack.sh sets them). kill-node returns once the JVM's pid is gone or a
/// zombie, and a start-node right after it was seen to fail with "port 9222 or 9322 of
/// es-cluster-2 is in use": the killed JVM's sockets outlive that moment.
async fn ports_closed(n: usize) {
    let ports = [9220 + n as u16, 9320 + n as u16];
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports.iter().any(|p| std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], *p).into(), Duration::from_millis(200)).is_ok()) {
        assert!(Instant::now() < deadline, "node {n}'s ports {ports:?} still accept 10 s after kill-node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).timeout(Duration::from_secs(65)).send().await.ok()?;
    r.json().await.ok()
}

/// Every node up and in the cluster, the cluster green: a node a test (this one or an earlier
/// one that failed) left down is started again.
async fn all_nodes_up(http: &reqwest::Client, urls: &[String]) {
    for (i, url) in urls.iter().enumerate() {
        let up = http.get(url.as_str()).timeout(Duration::from_secs(3)).send().await.is_ok_and(|r| r.status().is_success());
        if !up {
            println!("node {} ({url}) is down: starting it", i + 1);
            node("start-node", i + 1).await;
        }
    }
    let nodes = get_json(http, &format!("{}/_cat/nodes?format=json&h=name", urls[0])).await.expect("_cat/nodes");
    assert_eq!(nodes.as_array().map(Vec::len), Some(3), "the cluster does not have three nodes: {nodes}");
    wait_green(http, &urls[0], "").await;
}

/// `_cluster/health[/index]` green within 60 s.
async fn wait_green(http: &reqwest::Client, url: &str, index: &str) {
    let health = get_json(http, &format!("{url}/_cluster/health/{index}?wait_for_status=green&timeout=60s")).await.expect("_cluster/health");
    assert!(health["status"] == "green" && health["timed_out"] == false, "not green after 60 s: {health}");
}

/// The index's shard copies: (shard, "p" or "r", state, node name).
async fn shards(http: &reqwest::Client, url: &str, index: &str) -> Vec<(String, String, String, String)> {
    let v = get_json(http, &format!("{url}/_cat/shards/{index}?format=json&h=shard,prirep,state,node")).await.expect("_cat/shards");
    let text = |s: &Value, k: &str| s[k].as_str().unwrap_or("").to_string();
    v.as_array().unwrap().iter().map(|s| (text(s, "shard"), text(s, "prirep"), text(s, "state"), text(s, "node"))).collect()
}

/// Index operations the index's primaries have done (`_stats/indexing`, no refresh needed: the
/// index does not refresh during a full load), through `url`; only the shards that answer count.
async fn indexed(http: &reqwest::Client, url: &str, index: &str) -> Option<u64> {
    let v = get_json(http, &format!("{url}/{index}/_stats/indexing")).await?;
    v["_all"]["primaries"]["indexing"]["index_total"].as_u64()
}

async fn master(http: &reqwest::Client, url: &str) -> String {
    let v = get_json(http, &format!("{url}/_cat/master?format=json")).await.expect("_cat/master");
    v[0]["node"].as_str().unwrap_or("?").to_string()
}

/// `es-cluster-N` -> N.
fn node_number(name: &str) -> usize {
    name.strip_prefix("es-cluster-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a node of escluster: {name}"))
}

/// A test database and index on the cluster; pg2es (and `verify`) get all three nodes in ES_URL,
/// and the cinema's index schema with 3 shards and 1 replica.
async fn cluster_env(name: &str) -> (TestEnv, Vec<String>) {
    let urls = cluster_urls();
    all_nodes_up(&reqwest::Client::new(), &urls).await;
    let mut env = TestEnv::on(name, &urls[0]).await;
    let schema = schema_with_replicas(env.dir.path());
    env.extra_env.push(("ES_URL".into(), urls.join(",")));
    env.extra_env.push(("ES_SCHEMA_FILE".into(), schema.display().to_string()));
    // The default margin, not the harness's 0 (as tests/faults.rs: under load a cycle can read
    // the horizon before a writer's statement shows in pg_stat_activity).
    env.extra_env.push(("ETL_CLOCK_SKEW_MS".into(), "1000".into()));
    (env, urls)
}

/// The cinema's index schema with `number_of_shards: 3` and `number_of_replicas: 1`.
fn schema_with_replicas(dir: &Path) -> PathBuf {
    let mut schema: Value = serde_json::from_slice(&std::fs::read(common::schema_file()).unwrap()).unwrap();
    schema["settings"]["number_of_shards"] = json!(3);
    schema["settings"]["number_of_replicas"] = json!(1);
    let path = dir.join("es_schema_3_shards_1_replica.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&schema).unwrap()).unwrap();
    path
}

async fn install_delete_capture(env: &TestEnv) {
    pg2es::source::delete_log::install(&env.db, &common::capture(&env.db, "content").await).await.expect("install the delete capture triggers");
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// verify reports no difference, and the index holds one document per film.
async fn assert_consistent(env: &TestEnv) {
    let report = env.verify().await;
    assert!(report.is_consistent(), "Elasticsearch differs from Postgres: {report:?}");
    let films = env.scalar_i64("SELECT count(*) FROM content.film_work").await as u64;
    assert_eq!(env.count().await, films);
}

/// Node 1, the first of ES_URL and so the node pg2es sends to first, is SIGKILLed while `pg2es
/// run --once` loads the 999 films (bulk requests of 10, after at least 100 are in), and started
/// again 5 s later. Node 1 rather than the master (which moves between runs): it is both losses
/// at once, the requests in flight to it break and go to the next node at once (asserted from the
/// log), and it holds one of the index's three primaries (asserted).
///
/// During a full load pg2es sets `number_of_replicas` to 0 (src/sink/tuning.rs), so while node 1
/// is down its shard has no copy at all: the index is red (asserted). Nothing acknowledged is
/// lost (the translog is fsynced per request and the shard recovers from node 1's own disk), but
/// every bulk request holding a document of that shard waits inside Elasticsearch for the primary
/// (up to the bulk `timeout`, 1 min by default, after which its items would fail 503
/// `unavailable_shards_exception` and be retried). Observed: the load stalls while the node is
/// down (the run is still going when it is started again, asserted; the two live primaries take
/// only the rest of the requests in flight), pg2es logs "has not answered for 5 s", no bulk item
/// is retried, and the run ends 2 to 4 s after the node is back (12 to 20 s after the kill). The
/// run exits 0, puts `number_of_replicas` back to 1, and verify reports no difference. Not tested
/// here, observed by hand with node 1 down 54 s: each waiting request times out after
/// `ES_TIMEOUT_SEC` (30 s) on node 2, which is then counted as a failed node, and is sent again to
/// node 3, where it waits again until the shard is back (exit 0 after 59 s, verify clean).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_full_load_is_waited_out_and_verify_finds_no_difference() {
    let (mut env, urls) = cluster_env("cluster_kill_load").await;
    // Bulk requests of 10 documents (100 of them): the load lasts long enough to be cut.
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "10".into()));
    let http = reqwest::Client::new();
    let log = env.dir.path().join("pg2es.log");
    let mut vars = env.env_vars();
    vars.push(("RUST_LOG".into(), "info".into()));
    let started = Instant::now();
    let mut run = Run(common::spawn_logged(&vars, &["run", "--once"], &log));
    let child = &mut run.0;

    // Mid-load: some documents stored, the run still loading.
    let deadline = Instant::now() + Duration::from_secs(30);
    let loaded_at_kill = loop {
        assert!(child.try_wait().unwrap().is_none(), "pg2es ended before the kill: {}", read_log(&log));
        let n = env.try_count().await.unwrap_or(0);
        if n >= 100 {
            break n;
        }
        assert!(Instant::now() < deadline, "fewer than 100 documents after 30 s: {}", read_log(&log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let copies = shards(&http, &urls[1], &env.index).await;
    let master_before = master(&http, &urls[1]).await;
    println!("at the kill: {loaded_at_kill} documents, master {master_before}, shards {copies:?}");
    assert!(copies.iter().all(|(_, prirep, _, _)| prirep == "p"), "replicas are off during the full load: {copies:?}");
    assert!(copies.iter().any(|(_, prirep, _, node)| prirep == "p" && node == "es-cluster-1"), "node 1 holds no primary: {copies:?}");

    node("kill-node", 1).await;
    let killed_at = Instant::now();
    assert!(child.try_wait().unwrap().is_none(), "the full load ended before node 1 was killed: {}", read_log(&log));
    let after_kill = indexed(&http, &urls[1], &env.index).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = indexed(&http, &urls[1], &env.index).await;
    let health = get_json(&http, &format!("{}/_cluster/health/{}", urls[1], env.index)).await.unwrap_or_default();
    println!(
        "documents indexed by the two live primaries: {after_kill:?} just after the kill, {later:?} 5 s later; index {}, master {}",
        health["status"],
        master(&http, &urls[1]).await
    );
    assert_eq!(health["status"], "red", "node 1's shard has no other copy during the load: {health}");
    assert!(child.try_wait().unwrap().is_none(), "the load finished without node 1's shard: {}", read_log(&log));
    let restart = node("start-node", 1).await;
    let down_for = killed_at.elapsed();

    let status = common::wait_exit(child, Duration::from_secs(120));
    let text = read_log(&log);
    assert_eq!(status.code(), Some(0), "{text}");
    let moved = lines_with(&text, NEXT_NODE);
    let items_retried = lines_with(&text, "bulk items throttled or failed");
    let slow = lines_with(&text, "has not answered for");
    let retrying = lines_with(&text, "retrying");
    println!(
        "node 1 down {down_for:?} (start-node {restart:?}); pg2es exited 0 {:?} after the kill, {:?} in all; lines: {} next node, {} bulk items retried, {} slow answers, {} retrying",
        killed_at.elapsed(),
        started.elapsed(),
        moved.len(),
        items_retried.len(),
        slow.len(),
        retrying.len()
    );
    for l in moved.iter().chain(&items_retried).chain(&slow) {
        println!("  {l}");
    }
    assert!(moved.iter().any(|l| l.contains(&format!("node={}/", urls[0]))), "the log shows no move off node 1: {text}");

    assert_consistent(&env).await;
    assert_eq!(env.settings().await["index.number_of_replicas"], json!("1"), "replicas put back after the load");
    wait_green(&http, &urls[0], &env.index).await;
    env.cleanup().await;
}

/// Waits for the continuous run's full load: 999 documents and the index's settings back.
async fn full_load(env: &TestEnv, child: &mut std::process::Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(env.try_count().await == Some(999) && read_log(log).contains("index settings restored")) {
        assert!(child.try_wait().unwrap().is_none(), "pg2es stopped during the full load: {}", read_log(log));
        assert!(Instant::now() < deadline, "no full load after 60 s: {}", read_log(log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A film deleted as tests/deletes.rs does, with its link rows, in one transaction.
fn delete_film(id: &str) -> String {
    format!(
        "BEGIN;
         DELETE FROM content.genre_film_work WHERE film_work_id = '{id}';
         DELETE FROM content.person_film_work WHERE film_work_id = '{id}';
         DELETE FROM content.film_work WHERE id = '{id}';
         COMMIT"
    )
}

/// A pg2es process of a test, SIGKILLed when the test ends without stopping it (a failed
/// assertion): it must not go on writing to a database the next run creates again.
struct Run(std::process::Child);

impl Drop for Run {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Updates titles and deletes films (a film's link rows and the film, in one transaction), with
/// 20 to 100 ms between writes, until told to stop (at most 3,000 writes or 2 minutes). Returns
/// (updates, deletes).
async fn titles_and_deletes(dsn: String, seed: u64, stop: tokio::sync::watch::Receiver<bool>) -> (usize, usize) {
    let db = common::connect(&dsn).await;
    let mut rng = Rng::new(seed);
    let (mut updates, mut deletes) = (0, 0);
    let started = Instant::now();
    while !*stop.borrow() && updates + deletes < 3_000 && started.elapsed() < Duration::from_secs(120) {
        let n = rng.below(800);
        let row = db.query_opt(&format!("SELECT id FROM content.film_work ORDER BY id OFFSET {n} LIMIT 1"), &[]).await.unwrap();
        if let Some(row) = row {
            let id: uuid::Uuid = row.get(0);
            if rng.below(4) == 0 {
                db.batch_execute(&delete_film(&id.to_string())).await.unwrap();
                deletes += 1;
            } else {
                db.execute(&format!("UPDATE content.film_work SET title = 'Title {}', updated_at = now() WHERE id = '{id}'", rng.below(1_000_000)), &[])
                    .await
                    .unwrap();
                updates += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80))).await;
    }
    (updates, deletes)
}

/// Continuous sync (`pg2es run`, a cycle every 0.5 s, reconciliation every 5 s, the delete
/// capture installed so deletes reach the index at the next cycle, versioned) on all three
/// nodes. After the full load, with replicas back (index green), a writer updates titles and
/// deletes films; node 1, the node pg2es sends to, is SIGKILLed 2 s into it, and started again 3 s
/// later while the writer goes on. The run's log shows it moved to another node, it never
/// stops, and verify reports no difference once it has caught up. With a replica of every shard
/// nothing waits here: the replicas of node 1's primaries are promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_continuous_sync_with_deletes_is_skipped() {
    let (mut env, urls) = cluster_env("cluster_kill_sync").await;
    install_delete_capture(&env).await;
    env.extra_env.push(("ETL_CYCLE_SEC".into(), "0.5".into()));
    env.extra_env.push(("ETL_RECONCILE_SEC".into(), "5".into()));
    let http = reqwest::Client::new();
    let log = env.dir.path().join("pg2es.log");
    let started = Instant::now();
    let mut run = Run(common::spawn_run(&env, &log));
    let child = &mut run.0;
    full_load(&env, child, &log).await;
    wait_green(&http, &urls[0], &env.index).await;

    let mut rng = Rng::from_clock("cluster sync writer");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(titles_and_deletes(env.dsn.clone(), rng.next(), stop_rx));
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("killing node 1 (master {}): shards {:?}", master(&http, &urls[1]).await, shards(&http, &urls[1], &env.index).await);
    node("kill-node", 1).await;
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart = node("start-node", 1).await;
    let down_for = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).unwrap();
    let (updates, deletes) = writer.await.unwrap();
    let stopped_writing = Instant::now();

    eventually(Duration::from_secs(60), "verify reports no difference", || async { env.verify().await.is_consistent() }).await;
    println!(
        "writer: {updates} updates, {deletes} deletes; node 1 down {down_for:?} (start-node {restart:?}); consistent {:?} after the writer stopped, {:?} in all",
        stopped_writing.elapsed(),
        started.elapsed()
    );
    assert!(deletes > 0 && updates > 0, "the writer wrote: {updates} updates, {deletes} deletes");
    assert_consistent(&env).await;
    let text = read_log(&log);
    let moved = lines_with(&text, NEXT_NODE);
    println!(
        "{} next-node lines, first: {:?}; {} slow answers, {} bulk items retried, {} retrying",
        moved.len(),
        moved.first(),
        lines_with(&text, "has not answered for").len(),
        lines_with(&text, "bulk items throttled or failed").len(),
        lines_with(&text, "retrying").len()
    );
    assert!(moved.iter().any(|l| l.contains(&format!("node={}/", urls[0]))), "the log shows no move off node 1: {text}");
    assert!(child.try_wait().unwrap().is_none(), "pg2es stopped: {text}");
    assert!(!text.contains("pg2es stopped"), "{text}");
    common::signal(child, "-TERM");
    assert!(common::wait_exit(child, Duration::from_secs(20)).success());
    env.cleanup().await;
}

/// The started shard copies of the document `id`: (node number of the primary, node number of
/// the replica), each `None` while it has none.
async fn copies_of(http: &reqwest::Client, url: &str, index: &str, id: &str) -> (Option<usize>, Option<usize>) {
    let v = get_json(http, &format!("{url}/{index}/_search_shards?routing={id}")).await.expect("_search_shards");
    let group = v["shards"][0].as_array().unwrap_or_else(|| panic!("no shard for {id}: {v}"));
    let node_of = |primary: bool| {
        let copy = group.iter().find(|c| c["primary"] == primary && c["state"] == "STARTED")?;
        Some(node_number(v["nodes"][copy["node"].as_str()?]["name"].as_str()?))
    };
    (node_of(true), node_of(false))
}

/// The write of a film as pg2es sent it before the film was deleted, sent again: a request that
/// arrives late (one resent to another node after a time-out while the first copy still waits in
/// a node's queue, src/sink/nodes.rs). Its status and answer.
async fn stale_write(http: &reqwest::Client, url: &str, index: &str, id: &str, version: u64, source: &Value) -> (u16, Value) {
    let r = http
        .put(format!("{url}/{index}/_doc/{id}?version={version}&version_type=external_gte"))
        .json(source)
        .timeout(Duration::from_secs(65))
        .send()
        .await
        .expect("the stale write");
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

/// Elasticsearch remembers a deleted document's version (a tombstone) in memory on each shard
/// copy, for `index.gc_deletes` (60 s by default, left so here). That tombstone is what refuses
/// a write older than the delete (pg2es writes `external_gte` with WAL positions): the film's
/// write as pg2es sent it before the delete, sent again (a request that arrives late), is refused
/// with 409 once the delete capture's versioned delete is in. A node restart loses the tombstone
/// long before the 60 s are up. Here: the node holding the film's replica is SIGKILLed and
/// started again (its copy comes back by recovery, without the tombstone; the primary, not
/// restarted, still refuses the stale write), then the node holding the primary is SIGKILLed, so
/// that the restarted copy becomes the primary. The same stale write is now accepted (201
/// `created`) about 10 s after the delete, and the deleted film is back in the index. Observed by
/// hand beside this: killing the primary's node alone loses nothing (the replica it promotes saw
/// the delete and refuses); with no replica (as during a full load), a restart replays the delete
/// from the translog and remembers it, unless a flush had committed it first.
///
/// pg2es still ends correct through reconciliation: every `ETL_RECONCILE_SEC` (5 s here; 300 s by
/// default) it lists the index's ids, looks them up in Postgres, and deletes the documents whose
/// film is gone, with a delete that carries no version, which needs no tombstone. The resurrected
/// film is deleted by the next reconciliation (asserted from its log line, `deleted=1`) and verify
/// reports no difference. Nothing else in a running pg2es sends that delete again: with
/// `ETL_RECONCILE_SEC=0` the film stays until a full load or `pg2es verify --repair`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_forgotten_by_a_node_restart_is_undone_by_reconciliation() {
    let (mut env, urls) = cluster_env("cluster_gc_deletes").await;
    install_delete_capture(&env).await;
    env.extra_env.push(("ETL_CYCLE_SEC".into(), "0.5".into()));
    env.extra_env.push(("ETL_RECONCILE_SEC".into(), "5".into()));
    let http = reqwest::Client::new();
    let log = env.dir.path().join("pg2es.log");
    let started = Instant::now();
    let mut run = Run(common::spawn_run(&env, &log));
    let child = &mut run.0;
    full_load(&env, child, &log).await;
    wait_green(&http, &urls[0], &env.index).await;

    // The film and the write pg2es made of it.
    let film = env.scalar_uuid("SELECT id FROM content.film_work ORDER BY id LIMIT 1").await.to_string();
    let stored = get_json(&http, &format!("{}/{}/_doc/{film}", urls[0], env.index)).await.unwrap();
    let (version, source) = (stored["_version"].as_u64().expect("a version"), stored["_source"].clone());
    let (Some(primary), Some(replica)) = copies_of(&http, &urls[0], &env.index, &film).await else { panic!("the film's shard is not green") };
    let gc = get_json(&http, &format!("{}/{}/_settings/index.gc_deletes?include_defaults=true&flat_settings=true", urls[0], env.index)).await.unwrap();
    let gc = &gc[&env.index];
    assert_eq!(gc["defaults"]["index.gc_deletes"], "60s", "gc_deletes left at its default: {gc}");
    println!("film {film}: version {version}, primary on node {primary}, replica on node {replica}");

    env.db.batch_execute(&delete_film(&film)).await.unwrap();
    let deleted_at = Instant::now();
    eventually(Duration::from_secs(30), "the delete reaches the index", || async {
        get_json(&http, &format!("{}/{}/_doc/{film}", urls[0], env.index)).await.is_some_and(|v| v["found"] == false)
    })
    .await;

    // Remembered: the stale write is refused.
    let (status, answer) = stale_write(&http, &urls[0], &env.index, &film, version, &source).await;
    assert_eq!(status, 409, "within gc_deletes, the tombstone refuses the older write: {answer}");

    // The replica's node restarted, then the primary's node killed: the restarted copy leads.
    node("kill-node", replica).await;
    node("start-node", replica).await;
    wait_green(&http, &urls[0], &env.index).await;
    assert_eq!(copies_of(&http, &urls[0], &env.index, &film).await, (Some(primary), Some(replica)), "the copies stay where they were");
    // The primary, which was not restarted, still remembers (a write goes to the primary first).
    let (status, answer) = stale_write(&http, &urls[primary - 1], &env.index, &film, version, &source).await;
    assert_eq!(status, 409, "the primary still holds the tombstone: {answer}");
    node("kill-node", primary).await;
    let alive = &urls[replica - 1];
    eventually(Duration::from_secs(30), "the restarted copy is the primary", || async { copies_of(&http, alive, &env.index, &film).await.0 == Some(replica) })
        .await;
    let (status, answer) = stale_write(&http, alive, &env.index, &film, version, &source).await;
    let since_delete = deleted_at.elapsed();
    println!("{since_delete:?} after the delete, the stale write: {status} {answer}");
    assert_eq!(status, 201, "after the restarts the tombstone is gone and the older write creates the film again: {answer}");
    assert!(since_delete < Duration::from_secs(60), "forgotten before gc_deletes (60 s) ran out: {since_delete:?}");
    let resurrected_at = Instant::now();

    // The next reconciliation deletes it; the killed node starts again meanwhile.
    let restart = tokio::spawn(node("start-node", primary));
    eventually(Duration::from_secs(30), "reconciliation deletes the resurrected film", || async {
        get_json(&http, &format!("{alive}/{}/_doc/{film}", env.index)).await.is_some_and(|v| v["found"] == false)
    })
    .await;
    let gone_after = resurrected_at.elapsed();
    restart.await.unwrap();
    let text = read_log(&log);
    let reconciled: Vec<&str> = lines_with(&text, "reconciled the index with postgres").into_iter().filter(|l| l.contains("deleted=1")).collect();
    println!("resurrected film gone {gone_after:?} later; {:?} in all; reconciliations that deleted it: {reconciled:?}", started.elapsed());
    assert!(!reconciled.is_empty(), "no reconciliation deleted the film: {text}");
    assert_consistent(&env).await;
    assert!(child.try_wait().unwrap().is_none(), "pg2es stopped: {text}");
    common::signal(child, "-TERM");
    assert!(common::wait_exit(child, Duration::from_secs(20)).success());
    env.cleanup().await;
}
