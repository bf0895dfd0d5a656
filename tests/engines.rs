//! The engine matrix beyond Elasticsearch 7.10 and OpenSearch 2: a document refused for good and
//! an outage, on Elasticsearch 8 (`PG2ES_TEST_ES8_URL`, the node `scripts/stack.sh up es8` starts)
//! and Elasticsearch 9 (`PG2ES_TEST_ES9_URL`, `scripts/stack.sh up es9`). The outage stops and
//! starts that node, so this runs with the fault tests (`make test-faults`, one thread). A missing
//! URL fails the test: nothing is skipped. Every loop is bounded in count and time, and each test
//! ends with `verify`.
#![cfg(feature = "fault-tests")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{signal, wait_exit, TestEnv};
use pg2es::shutdown::Shutdown;
use serde_json::json;

const FILM: &str = "24eafcd7-1018-4951-9e17-583e2554ef0a";
const FILM_NO_DIRECTOR: &str = "479f20b0-58d1-4f16-8944-9b82f5b1f22a";

/// An engine of the matrix under test: its URL variable, its major version, its stack.sh name.
#[derive(Clone, Copy)]
struct Node {
    var: &'static str,
    major: u32,
    stack: &'static str,
}

const ES8: Node = Node { var: "PG2ES_TEST_ES8_URL", major: 8, stack: "es8" };
const ES9: Node = Node { var: "PG2ES_TEST_ES9_URL", major: 9, stack: "es9" };

impl Node {
    /// The node's URL; the test fails without it.
    fn url(self) -> String {
        std::env::var(self.var).unwrap_or_else(|_| {
            panic!(
                "{} is not set: it must name the Elasticsearch {} node (`make test-faults` sets it; \
                 `scripts/stack.sh up {}` starts one)",
                self.var, self.major, self.stack
            )
        })
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stack(action: &str, service: &str) {
    let status = Command::new(repo().join("scripts/stack.sh")).args([action, service]).status().expect("run scripts/stack.sh");
    assert!(status.success(), "scripts/stack.sh {action} {service} failed");
}

/// A test env on the node, after checking that it is the expected engine (GET /).
async fn node_env(node: Node, name: &str) -> TestEnv {
    let url = node.url();
    let root: serde_json::Value = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach {url}: {e}; start it with `scripts/stack.sh up {}`", node.stack))
        .json()
        .await
        .expect("GET / answers JSON");
    let version = root["version"]["number"].as_str().unwrap_or_default().to_string();
    assert!(
        version.starts_with(&format!("{}.", node.major)) && root["version"]["distribution"].is_null(),
        "{url} is not Elasticsearch {}: GET / says {root}",
        node.major
    );
    TestEnv::on(name, &url).await
}

async fn assert_consistent(env: &TestEnv) {
    env.refresh().await;
    let (_t, shutdown) = Shutdown::new();
    let report = pg2es::verify::verify(&env.config(), &shutdown).await.expect("verify");
    assert!(report.is_consistent(), "{} differs from Postgres: {report:?}", env.es);
}

/// A 40 kB title is an immense term for the keyword sub-field `title.raw`: Elasticsearch 8 and 9
/// refuse that one bulk item (400) and take the rest. pg2es dead-letters it and moves on; fixing
/// the row brings the film in.
async fn bulk_item_rejection(node: Node) {
    let env = node_env(node, &format!("{}_dead_letter", node.stack)).await;
    let long_title = "Ж".repeat(20_000);
    env.sql(&format!("UPDATE content.film_work SET title = '{long_title}' WHERE id = '{FILM_NO_DIRECTOR}'")).await;
    let r = env.run_once().await;
    assert_eq!((r.stored, r.dead_lettered), (998, 1), "{r:?}");
    assert_eq!(env.count().await, 998);

    let dead = std::fs::read_to_string(env.dir.path().join("dead.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{}", dead.chars().take(600).collect::<String>());
    assert_eq!(lines[0]["id"], json!(FILM_NO_DIRECTOR));
    assert_eq!(lines[0]["index"], json!(env.index));
    assert_eq!(lines[0]["status"], json!(400));
    // Elasticsearch 7 names the cause at the top ("immense term"); 8 and 9 wrap it in a
    // document_parsing_exception that names the field (and previews the value).
    let reason = lines[0]["reason"].as_str().unwrap();
    assert!(reason.contains("title.raw"), "{}", reason.chars().take(300).collect::<String>());

    assert_eq!(env.run_once().await.records, 0, "the watermark moved past the refused film");
    env.sql(&format!("UPDATE content.film_work SET title = 'Fixed', updated_at = now() WHERE id = '{FILM_NO_DIRECTOR}'")).await;
    assert_eq!(env.run_once().await.stored, 1);
    assert_eq!(env.count().await, 999);
    assert_eq!(env.doc(FILM_NO_DIRECTOR).await["title"], json!("Fixed"));
    assert_consistent(&env).await;
    env.cleanup().await;
}

/// The node goes away for 15 s while pg2es runs: pg2es says what it waits for, retries with
/// backoff, and a change made during the outage arrives after it.
async fn outage(node: Node) {
    let mut env = node_env(node, &format!("{}_outage", node.stack)).await;
    env.extra_env.push(("ETL_BACKOFF_INITIAL_MS".into(), "200".into()));
    env.extra_env.push(("ETL_BACKOFF_MAX_SEC".into(), "4".into()));
    env.extra_env.push(("ETL_CYCLE_SEC".into(), "0.5".into()));
    let log = env.dir.path().join("pg2es.log");
    let mut child = common::spawn_run(&env, &log);
    common::eventually(Duration::from_secs(60), "initial load", || async { env.try_count().await == Some(999) }).await;

    // The change is made once the node is down: made just before, a 0.5 s cycle could load it
    // before the node is gone, and nothing would wait.
    let down_at = Instant::now();
    stack("stop", node.stack);
    env.sql(&format!("UPDATE content.film_work SET title = 'During the outage', updated_at = now() WHERE id = '{FILM}'")).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    stack("start", node.stack);

    common::eventually(Duration::from_secs(90), "change loaded after the outage", || async {
        env.refresh().await;
        let v: serde_json::Value = env.http.get(format!("{}/{}/_doc/{FILM}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
        v["_source"]["title"] == json!("During the outage")
    })
    .await;
    println!("{} outage: change visible {:?} after the node was stopped", node.stack, down_at.elapsed());
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success(), "pg2es exits 0 on SIGTERM");

    let text = std::fs::read_to_string(&log).unwrap();
    let attempts = text.lines().filter(|l| l.contains("waiting_for=elasticsearch")).count();
    assert!(attempts >= 3, "expected pg2es to wait with retries during the outage, saw {attempts}:\n{text}");
    assert!(attempts <= 40, "{attempts} failed attempts in a 15 s outage with a 4 s cap is a retry storm:\n{text}");
    assert!(text.contains("elasticsearch unavailable, retrying"), "the log must say what it waits for:\n{text}");
    assert_consistent(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es8_bulk_item_rejection_is_dead_lettered_and_the_load_goes_on() {
    bulk_item_rejection(ES8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es8_outage_is_waited_out() {
    outage(ES8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es9_bulk_item_rejection_is_dead_lettered_and_the_load_goes_on() {
    bulk_item_rejection(ES9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es9_outage_is_waited_out() {
    outage(ES9).await;
}
