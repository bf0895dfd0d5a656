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
    // The change was timed from its row's timestamp to its batch stored.
    let page = get(&env.http, &metrics).await.1;
    assert!(sample(&page, r#"pg2es_commit_to_stored_seconds_count{document="movies"}"#).is_some_and(|n| n >= 1.0), "{page}");
    let (code, body) = get(&env.http, &format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "movies: ok\n"));

    common::signal(&run, "-TERM");
    common::wait_exit(&mut run, Duration::from_secs(30));
    let (code, after, _) = status(&vars);
    assert_eq!(code, Some(6), "a stopped run is failing: {after}");
    env.cleanup().await;
}

/// While a live `run` does its first full load (one long cycle), `status` says behind (5) and
/// names the run's pid, and keeps seeing its progress: it is not "no run is running it" (6).
#[tokio::test]
async fn status_during_the_first_full_load_says_behind_not_failing() {
    let mut env = TestEnv::new("ops_status_load").await;
    // One film per bulk request: the load takes seconds.
    env.extra_env.extend([("ETL_BATCH_SIZE".to_string(), "1".to_string()), ("ES_BULK_CONCURRENCY".to_string(), "1".to_string())]);
    let vars = env.env_vars();
    let log = env.dir.path().join("run.log");
    let mut run = common::spawn_run(&env, &log);
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let mut during = None;
    while started.elapsed() < Duration::from_secs(60) {
        let (code, now, _) = status(&vars);
        let movies = now["movies"].clone();
        if movies["position"]["full_load"].is_null() && movies["documents"].as_u64() == Some(999) {
            break;
        }
        // The state says the load is under way: the run has started it.
        if !movies["position"]["full_load"].is_null() {
            seen.push((code, movies["running"].as_u64()));
            during.get_or_insert(movies);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!seen.is_empty(), "status never saw the full load under way (it took {:?})", started.elapsed());
    assert!(seen.iter().all(|s| *s == (Some(5), Some(u64::from(run.id())))), "behind with the run's pid throughout: {seen:?}; first: {during:?}");
    common::signal(&run, "-TERM");
    common::wait_exit(&mut run, Duration::from_secs(30));
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

fn pg2es(vars: &[(String, String)], args: &[&str]) -> (Option<i32>, String, String) {
    let out = common::pg2es_command(vars, args).output().expect("run pg2es");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn dead_letters(vars: &[(String, String)]) -> Vec<Value> {
    let (code, stdout, stderr) = pg2es(vars, &["dlq", "list", "--json"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// Three films Elasticsearch refuses (a 40 kB title is an immense term for `title.raw`) are
/// dead-lettered. One is then fixed and one deleted in Postgres, by writes polling never sees
/// (the change column is left alone): `dlq replay` builds each from Postgres as it is now, so the
/// fixed one is indexed, the deleted one leaves the file, and the one still refused stays in it
/// with its new refusal. Once it is fixed too, a second replay empties the file.
#[tokio::test]
async fn dlq_replay_rebuilds_dead_letters_from_postgres_as_it_is_now() {
    let env = TestEnv::new("ops_dlq").await;
    let vars = env.env_vars();
    let films: Vec<String> = env.db.query("SELECT id::text FROM content.film_work ORDER BY id LIMIT 3", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let long_title = "Ж".repeat(20_000);
    for film in &films {
        env.sql(&format!("UPDATE content.film_work SET title = '{long_title}' WHERE id = '{film}'")).await;
    }
    let r = env.run_once().await;
    assert_eq!((r.stored, r.dead_lettered), (996, 3), "{r:?}");
    let listed = dead_letters(&vars);
    assert_eq!(listed.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect::<Vec<_>>(), films);
    assert!(listed.iter().all(|d| d["status"] == 400 && d["reason"].as_str().unwrap().contains("title.raw")), "{listed:?}");
    let (code, text, _) = pg2es(&vars, &["dlq", "list"]);
    assert_eq!(code, Some(0));
    assert!(text.contains(": 3 dead letters"), "{text}");

    let (fixed, broken, deleted) = (&films[0], &films[1], &films[2]);
    env.sql(&format!("UPDATE content.film_work SET title = 'Fixed quietly' WHERE id = '{fixed}'")).await;
    env.sql(&format!("DELETE FROM content.film_work WHERE id = '{deleted}'")).await;
    let (code, stdout, stderr) = pg2es(&vars, &["dlq", "replay"]);
    assert_eq!(code, Some(1), "one is refused again: {stdout}{stderr}");
    assert!(stdout.contains("3 documents replayed: 1 indexed, 1 deleted (their record is gone), 1 refused again"), "{stdout}{stderr}");
    env.refresh().await;
    assert_eq!(env.doc(fixed).await["title"], "Fixed quietly");
    let left = dead_letters(&vars);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], broken.as_str());
    assert_ne!(left[0]["time"], listed[1]["time"], "the refusal is the replay's own");

    env.sql(&format!("UPDATE content.film_work SET title = 'Fixed as well' WHERE id = '{broken}'")).await;
    let (code, stdout, stderr) = pg2es(&vars, &["dlq", "replay"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("1 documents replayed: 1 indexed"), "{stdout}");
    assert!(dead_letters(&vars).is_empty());
    assert!(env.verify().await.is_consistent());
    env.cleanup().await;
}

/// `reset` needs `--yes`, refuses while a run keeps the document (exit 3), and then removes the
/// state so that the next run loads every record again; in replication mode it drops the slot.
#[tokio::test]
async fn reset_forgets_the_position_and_drops_the_slot() {
    let env = TestEnv::replicated("ops_reset").await;
    let vars = env.env_vars();
    assert_eq!(env.run_once().await.records, 999);
    assert_eq!(env.run_once().await.records, 0);
    let slot = format!("pg2es_{}", env.index);
    let count = format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'");
    assert_eq!(env.scalar_i64(&count).await, 1);

    let (code, _, stderr) = pg2es(&vars, &["reset"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Add --yes to do it"), "{stderr}");
    assert!(env.state_file().exists());

    let log = env.dir.path().join("run.log");
    let mut run = common::spawn_run(&env, &log);
    common::log_shows(&log, "pg2es started", Duration::from_secs(30)).await;
    let (code, _, stderr) = pg2es(&vars, &["reset", "movies", "--yes"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("another pg2es instance is running"), "{stderr}");
    common::signal(&run, "-TERM");
    common::wait_exit(&mut run, Duration::from_secs(30));

    let (code, stdout, stderr) = pg2es(&vars, &["reset", "--yes"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("dropped the replication slot {slot}")), "{stdout}");
    assert!(!env.state_file().exists());
    assert_eq!(env.scalar_i64(&count).await, 0);
    assert_eq!(env.run_once().await.records, 999, "everything is loaded again");
    assert_eq!(env.scalar_i64(&count).await, 1);
    env.cleanup().await;
}

/// A server that accepts connections and never says a word: its port, and the sockets held open.
fn silent_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: the test process ends long before.
        for stream in listener.incoming().take(100) {
            held.push(stream);
        }
    });
    port
}

/// Elasticsearch, then Postgres, accepts the connection and never answers: within a few seconds,
/// well before the request's timeout, the log says what pg2es waits for and where.
#[tokio::test]
async fn a_server_that_accepts_and_never_answers_is_named_before_the_timeout() {
    let mut env = TestEnv::new("ops_silent").await;
    let es_port = silent_server();
    env.extra_env.push(("ES_URL".into(), format!("http://127.0.0.1:{es_port}")));
    env.extra_env.push(("ES_TIMEOUT_SEC".into(), "60".into()));
    let log = env.dir.path().join("es.log");
    let mut run = common::spawn_run(&env, &log);
    common::log_shows(&log, "elasticsearch has not answered for 5 s; still waiting, at most until the 60 s timeout", Duration::from_secs(15)).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains(&format!("at=\"http://127.0.0.1:{es_port}/\"")) && said.contains("operation=\"read engine version\""), "{said}");
    let _ = run.kill();
    let _ = run.wait();

    let pg_port = silent_server();
    env.extra_env.retain(|(k, _)| k != "ES_URL");
    env.extra_env.push(("PG_DSN".into(), format!("postgres://app@127.0.0.1:{pg_port}/movies?connect_timeout=60")));
    let log = env.dir.path().join("pg.log");
    let mut run = common::spawn_run(&env, &log);
    // Postgres is first met after the index is checked, which a busy Elasticsearch can take a while to do.
    common::log_shows(&log, "postgres has not answered for 5 s; still waiting, at most until the 60 s timeout", Duration::from_secs(60)).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains(&format!("at=\"127.0.0.1:{pg_port}/movies\"")), "{said}");
    let _ = run.kill();
    let _ = run.wait();
    env.cleanup().await;
}

/// `pg2es check` looks at each index as `run` would find it: there with the index schema's
/// mapping (0), or with another, which `run` refuses: check fails too (1), naming `reindex`.
#[tokio::test]
async fn check_refuses_an_index_whose_mapping_run_would_refuse() {
    let mut env = TestEnv::new("ops_check_index").await;
    env.run_once().await;
    let out = common::pg2es_command(&env.env_vars(), &["check"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.lines().count() == 1 && said.contains("; it exists with this mapping), "), "{said}");

    let mut schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::schema_file()).unwrap()).unwrap();
    schema["mappings"]["properties"]["extra_field"] = serde_json::json!({"type": "keyword"});
    let changed = env.dir.path().join("changed.es.json");
    std::fs::write(&changed, schema.to_string()).unwrap();
    env.extra_env.push(("ES_SCHEMA_FILE".into(), changed.display().to_string()));
    let out = common::pg2es_command(&env.env_vars(), &["check"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("exists with a different mapping") && said.contains("extra_field") && said.contains("pg2es reindex"), "{said}");
    env.cleanup().await;
}
