//! The operator's commands and endpoints against the real stack: `pg2es status`, and the
//! `/metrics` and `/healthz` that `pg2es run` serves on PG2ES_METRICS_ADDR.

mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::Value;

/// A port nothing listens on now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn status(vars: &[(String, String)]) -> (Option<i32>, Value, String) {
    let out = common::pg2es_command(vars, &["status", "--json"]).output().expect("run pg2es status");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {stdout}{stderr}"));
    (out.status.code(), json, stderr)
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(url).timeout(Duration::from_secs(5)).send().await {
        Ok(resp) => (resp.status().as_u16(), resp.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The value of the sample `name{labels}` in a Prometheus text page.
fn sample(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
}

/// Before any run, status says nothing keeps the document (exit 6). With `pg2es run` going it is
/// healthy (exit 0), with documents against records, and `/metrics` counts what the run stores:
/// a change made in Postgres moves the indexed counter and the bulk requests; `/healthz` is 200.
#[tokio::test]
async fn status_and_metrics_follow_a_running_pipeline() {
    let mut env = TestEnv::new("ops_status").await;
    let port = free_port();
    env.extra_env.push(("PG2ES_METRICS_ADDR".into(), format!("127.0.0.1:{port}")));
    let vars = env.env_vars();

    let (code, before, _) = status(&vars);
    assert_eq!(code, Some(6), "{before}");
    assert_eq!(before["movies"]["verdict"], "failing", "{before}");
    assert!(before["movies"]["reasons"].to_string().contains("no `pg2es run` is running it"), "{before}");
    assert_eq!(before["movies"]["records"], 999, "{before}");

    let log = env.dir.path().join("run.log");
    let mut run = common::spawn_run(&env, &log);
    common::eventually(Duration::from_secs(60), "the running pipeline loads 999 documents", || async { env.try_count().await == Some(999) }).await;
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let indexed = r#"pg2es_documents_indexed_total{document="movies"}"#;
    let last = std::cell::RefCell::new(String::new());
    common::eventually(Duration::from_secs(30), "metrics count 999 documents indexed", || async {
        let page = get(&env.http, &metrics).await.1;
        let ok = sample(&page, indexed) == Some(999.0);
        *last.borrow_mut() = page;
        ok
    })
    .await;
    let page = last.borrow().clone();
    assert!(page.contains("# HELP pg2es_documents_indexed_total documents written to the index"), "{page}");
    assert!(page.contains(r#"pg2es_bulk_request_duration_seconds_count{document="movies"}"#), "{page}");
    let bulks = sample(&page, r#"pg2es_bulk_requests_total{document="movies"}"#).expect("bulk requests counted");
    assert!(sample(&page, r#"pg2es_last_success_timestamp_seconds{document="movies"}"#).is_some(), "{page}");

    common::eventually(Duration::from_secs(30), "status says healthy", || async { status(&vars).0 == Some(0) }).await;
    let (_, now, _) = status(&vars);
    let movies = &now["movies"];
    assert_eq!((movies["documents"].as_u64(), movies["records"].as_u64()), (Some(999), Some(999)), "{now}");
    assert_eq!(movies["running"].as_u64(), Some(u64::from(run.id())), "{now}");
    assert_eq!(movies["dead_letters"], 0, "{now}");
    assert!(movies["lag_seconds"].as_f64().is_some_and(|l| l < 30.0), "{now}");
    assert!(movies["position"]["watermarks"]["film_work"].is_string(), "{now}");

    env.sql("UPDATE content.film_work SET title = 'Seen by the metrics', updated_at = now() WHERE id = (SELECT id FROM content.film_work ORDER BY id LIMIT 1)")
        .await;
    common::eventually(Duration::from_secs(30), "the change moves the indexed counter and the bulk requests", || async {
        let page = get(&env.http, &metrics).await.1;
        sample(&page, indexed).is_some_and(|n| n > 999.0) && sample(&page, r#"pg2es_bulk_requests_total{document="movies"}"#).is_some_and(|n| n > bulks)
    })
    .await;
    let (code, body) = get(&env.http, &format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "movies: ok\n"));

    common::signal(&run, "-TERM");
    common::wait_exit(&mut run, Duration::from_secs(30));
    let (code, after, _) = status(&vars);
    assert_eq!(code, Some(6), "a stopped run is failing: {after}");
    env.cleanup().await;
}

/// Elasticsearch does not answer (nothing listens at ES_URL): `/healthz` is 200 within the bound,
/// then 503 naming what pg2es waits for once the wait is older than PG2ES_HEALTH_MAX_AGE_SEC, and
/// the retries are counted by service.
#[tokio::test]
async fn healthz_fails_while_elasticsearch_is_down_past_the_bound() {
    let mut env = TestEnv::new("ops_healthz").await;
    let port = free_port();
    env.extra_env.push(("ES_URL".into(), format!("http://127.0.0.1:{}", free_port())));
    env.extra_env.push(("PG2ES_METRICS_ADDR".into(), format!("127.0.0.1:{port}")));
    env.extra_env.push(("PG2ES_HEALTH_MAX_AGE_SEC".into(), "3".into()));
    let log = env.dir.path().join("run.log");
    let mut run = common::spawn_run(&env, &log);
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    common::eventually(Duration::from_secs(10), "healthz answers", || async { get(&env.http, &healthz).await.0 != 0 }).await;
    let (code, body) = get(&env.http, &healthz).await;
    assert_eq!(code, 200, "within the bound: {body}");
    let last = std::cell::RefCell::new(String::new());
    common::eventually(Duration::from_secs(20), "healthz fails past the bound", || async {
        let (code, b) = get(&env.http, &healthz).await;
        *last.borrow_mut() = b;
        code == 503
    })
    .await;
    let body = last.borrow().clone();
    assert!(body.starts_with("movies: failing: waiting for elasticsearch"), "{body}");
    assert!(body.contains("PG2ES_HEALTH_MAX_AGE_SEC=3"), "{body}");
    let page = get(&env.http, &format!("http://127.0.0.1:{port}/metrics")).await.1;
    assert!(sample(&page, r#"pg2es_retries_total{document="movies",service="elasticsearch"}"#).is_some_and(|n| n >= 2.0), "{page}");
    let _ = run.kill();
    let _ = run.wait();
    env.cleanup().await;
}
