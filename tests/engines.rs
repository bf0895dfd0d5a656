//! The engine matrix beyond Elasticsearch 7.10 and OpenSearch 2: a document refused for good and
//! an outage, on Elasticsearch 8 (`PG2ES_TEST_ES8_URL`, the node `scripts/stack.sh up es8` starts).
//! The outage stops and starts that node, so this runs with the fault tests (`make test-faults`,
//! one thread). A missing `PG2ES_TEST_ES8_URL` fails the test: nothing is skipped. Every loop is
//! bounded in count and time, and each test ends with `verify`.
#![cfg(feature = "fault-tests")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{signal, wait_exit, TestEnv};
use pg2es::shutdown::Shutdown;
use serde_json::json;

const FILM: &str = "24eafcd7-1018-4951-9e17-583e2554ef0a";
const FILM_NO_DIRECTOR: &str = "479f20b0-58d1-4f16-8944-9b82f5b1f22a";

/// The Elasticsearch 8 node under test; the test fails without it.
fn es8_url() -> String {
    std::env::var("PG2ES_TEST_ES8_URL").unwrap_or_else(|_| {
        panic!(
            "PG2ES_TEST_ES8_URL is not set: it must name the Elasticsearch 8 node \
             (`make test-faults` sets it; `scripts/stack.sh up es8` starts one on http://127.0.0.1:9202)"
        )
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stack(action: &str, service: &str) {
    let status = Command::new(repo().join("scripts/stack.sh")).args([action, service]).status().expect("run scripts/stack.sh");
    assert!(status.success(), "scripts/stack.sh {action} {service} failed");
}

/// A test env on the Elasticsearch 8 node, after checking that the node is one (GET /).
async fn es8_env(name: &str) -> TestEnv {
    let url = es8_url();
    let root: serde_json::Value = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach Elasticsearch 8 at {url}: {e}; start it with `scripts/stack.sh up es8`"))
        .json()
        .await
        .expect("GET / answers JSON");
    let version = root["version"]["number"].as_str().unwrap_or_default().to_string();
    assert!(version.starts_with("8."), "{url} is not Elasticsearch 8: GET / says {root}");
    TestEnv::on(name, &url).await
}

async fn assert_consistent(env: &TestEnv) {
    env.refresh().await;
    let (_t, shutdown) = Shutdown::new();
    let report = pg2es::verify::verify(&env.config(), &shutdown).await.expect("verify");
    assert!(report.is_consistent(), "Elasticsearch 8 differs from Postgres: {report:?}");
}

fn spawn(env: &TestEnv, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pg2es"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(env.env_vars())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn pg2es")
}

/// A 40 kB title is an immense term for the keyword sub-field `title.raw`: Elasticsearch 8 refuses
/// that one bulk item (400) and takes the rest. pg2es dead-letters it and moves on; fixing the row
/// brings the film in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es8_bulk_item_rejection_is_dead_lettered_and_the_load_goes_on() {
    let env = es8_env("es8_dead_letter").await;
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
    // Elasticsearch 7 names the cause at the top ("immense term"); 8 wraps it in a
    // document_parsing_exception that names the field (and previews the value).
    let reason = lines[0]["reason"].as_str().unwrap();
    assert!(reason.contains("title.raw"), "{}", reason.chars().take(300).collect::<String>());

    assert_eq!(env.run_once().await.films, 0, "the watermark moved past the refused film");
    env.sql(&format!("UPDATE content.film_work SET title = 'Fixed', updated_at = now() WHERE id = '{FILM_NO_DIRECTOR}'")).await;
    assert_eq!(env.run_once().await.stored, 1);
    assert_eq!(env.count().await, 999);
    assert_eq!(env.doc(FILM_NO_DIRECTOR).await["title"], json!("Fixed"));
    assert_consistent(&env).await;
    env.cleanup().await;
}

/// The Elasticsearch 8 node goes away for 15 s while pg2es runs: pg2es says what it waits for,
/// retries with backoff, and a change made just before the outage arrives after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es8_outage_is_waited_out() {
    let mut env = es8_env("es8_outage").await;
    env.extra_env.push(("ETL_BACKOFF_INITIAL_MS".into(), "200".into()));
    env.extra_env.push(("ETL_BACKOFF_MAX_SEC".into(), "4".into()));
    env.extra_env.push(("ETL_CYCLE_SEC".into(), "0.5".into()));
    let log = env.dir.path().join("pg2es.log");
    let mut child = spawn(&env, &log);
    common::eventually(Duration::from_secs(60), "initial load on Elasticsearch 8", || async {
        env.try_count().await == Some(999)
    })
    .await;

    env.sql(&format!("UPDATE content.film_work SET title = 'During the outage', updated_at = now() WHERE id = '{FILM}'")).await;
    let down_at = Instant::now();
    stack("stop", "es8");
    tokio::time::sleep(Duration::from_secs(15)).await;
    stack("start", "es8");

    common::eventually(Duration::from_secs(90), "change loaded after the Elasticsearch 8 outage", || async {
        env.refresh().await;
        let v: serde_json::Value =
            env.http.get(format!("{}/{}/_doc/{FILM}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
        v["_source"]["title"] == json!("During the outage")
    })
    .await;
    println!("es8 outage: change visible {:?} after the node was stopped", down_at.elapsed());
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
