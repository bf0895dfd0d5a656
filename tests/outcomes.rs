//! Every failure a clear, bounded outcome: servers that never answer, stops during outages,
//! exit codes that follow one rule.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{log_shows, signal, spawn_logged, wait_exit, TestEnv};

/// A TCP server that accepts connections and never answers, for at most `life`.
fn silent_server(life: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut held = Vec::new();
        while start.elapsed() < life && held.len() < 1000 {
            match listener.accept() {
                Ok((socket, _)) => held.push(socket),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    url
}

/// An address where nothing listens: connections are refused at once.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

fn set(vars: &mut Vec<(String, String)>, key: &str, value: &str) {
    vars.retain(|(k, _)| k != key);
    vars.push((key.to_string(), value.to_string()));
}

#[tokio::test]
async fn an_elasticsearch_that_never_answers_times_out_and_sigterm_is_honoured() {
    let env = TestEnv::new("out_silent_es").await;
    let mut vars = env.env_vars();
    set(&mut vars, "ES_URL", &silent_server(Duration::from_secs(60)));
    set(&mut vars, "ES_TIMEOUT_SEC", "1");
    let log = env.dir.path().join("pg2es.log");
    let mut child = spawn_logged(&vars, &["run", "--once"], &log);
    // The timeout is an outage: logged with what it waits for, and retried.
    log_shows(&log, "waiting_for=elasticsearch", Duration::from_secs(20)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("timed out"), "{text}");
    let asked = Instant::now();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(8), "SIGTERM took {took:?} to be honoured");
    assert_eq!(status.code(), Some(4), "an interrupted --once is not a success");
    env.cleanup().await;
}

/// One rule: a continuous `run` stopped by SIGTERM exits 0; a `run --once` or a `verify` stopped
/// before it was complete exits 4, whichever service it was waiting for.
#[tokio::test]
async fn exit_codes_after_sigterm_follow_one_rule() {
    let env = TestEnv::new("out_exit_codes").await;
    let es_down = {
        let mut v = env.env_vars();
        set(&mut v, "ES_URL", &format!("http://{}", closed_port()));
        v
    };
    let pg_down = {
        let mut v = env.env_vars();
        set(&mut v, "PG_DSN", &format!("postgres://app:123qwe@{}/movies", closed_port()));
        v
    };
    // What pg2es waits for, its settings, its arguments, and the exit code after SIGTERM.
    type Case<'a> = (&'a str, &'a Vec<(String, String)>, &'a [&'a str], i32);
    let cases: [Case; 5] = [
        ("elasticsearch", &es_down, &["run", "--once"], 4),
        ("postgres", &pg_down, &["run", "--once"], 4),
        ("elasticsearch", &es_down, &["verify"], 4),
        ("elasticsearch", &es_down, &["run"], 0),
        ("postgres", &pg_down, &["run"], 0),
    ];
    for (i, (waiting_for, vars, args, code)) in cases.into_iter().enumerate() {
        let log = env.dir.path().join(format!("case{i}.log"));
        let mut child = spawn_logged(vars, args, &log);
        log_shows(&log, &format!("waiting_for={waiting_for}"), Duration::from_secs(30)).await;
        signal(&child, "-TERM");
        let status = wait_exit(&mut child, Duration::from_secs(10));
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(code), "{args:?} waiting for {waiting_for}: {text}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_once_pass_interrupted_during_the_full_load_exits_4_and_resumes() {
    let mut env = TestEnv::new("out_once_mid_load").await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "5".into()));
    env.extra_env.push(("ES_BULK_CONCURRENCY".into(), "1".into()));
    let log = env.dir.path().join("pg2es.log");
    let mut child = spawn_logged(&env.env_vars(), &["run", "--once"], &log);
    common::eventually(Duration::from_secs(60), "some documents loaded", || async { env.try_count().await.unwrap_or(0) > 0 }).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let loaded = env.try_count().await.unwrap_or(0);
    assert!(loaded < 999, "the pass finished before SIGTERM ({loaded} documents): make the batches smaller");
    assert_eq!(status.code(), Some(4), "{}", std::fs::read_to_string(&log).unwrap());
    let again = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    env.refresh().await;
    assert_eq!(env.count().await, 999);
    env.cleanup().await;
}

#[tokio::test]
async fn a_state_file_is_refused_for_another_database() {
    let first = TestEnv::new("out_state_db_a").await;
    let second = TestEnv::new("out_state_db_b").await;
    second.sql("DELETE FROM content.person_film_work").await;
    second.sql("DELETE FROM content.genre_film_work").await;
    second.sql("DELETE FROM content.film_work WHERE id IN (SELECT id FROM content.film_work ORDER BY id LIMIT 500)").await;
    let o = common::pg2es_command(&first.env_vars(), &["run", "--once"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same state file and index, another database.
    let mut vars = first.env_vars();
    set(&mut vars, "PG_DSN", &second.dsn);
    let before = std::fs::read(first.state_file()).unwrap();
    let o = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("database 'pg2es_t_out_state_db_a'") && err.contains("database 'pg2es_t_out_state_db_b'"), "{err}");
    assert!(err.contains("ETL_STATE_FILE"), "{err}");
    assert_eq!(std::fs::read(first.state_file()).unwrap(), before, "the refused state is left as it was");
    first.refresh().await;
    assert_eq!(first.count().await, 999, "nothing from the other database reached the index");
    second.cleanup().await;
    first.cleanup().await;
}

#[tokio::test]
async fn a_state_that_cannot_be_written_is_refused_before_elasticsearch_is_touched() {
    let env = TestEnv::new("out_state_unwritable").await;
    // Where the state's temp file goes there is a directory: no state can be saved.
    std::fs::create_dir(env.state_file().with_extension("tmp")).unwrap();
    let o = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("state.tmp"), "{err}");
    assert_eq!(env.try_count().await, None, "the index was not even created");
    env.cleanup().await;
}

/// A mapping that refuses every document is not "bad rows": pg2es stops, saves no progress and
/// does not empty the catalog into the dead-letter file.
#[tokio::test]
async fn a_mapping_that_refuses_every_document_stops_without_progress() {
    let env = TestEnv::new("out_refuse_all").await;
    let mut definition: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::schema_file()).unwrap()).unwrap();
    definition["mappings"]["properties"]["title"] = serde_json::json!({"type": "integer"});
    let schema = env.dir.path().join("bad_schema.json");
    std::fs::write(&schema, definition.to_string()).unwrap();
    let mut vars = env.env_vars();
    set(&mut vars, "ES_SCHEMA_FILE", &schema.display().to_string());
    let o = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refused") && err.contains("ES_SCHEMA_FILE"), "{err}");
    assert!(!env.dir.path().join("dead.jsonl").exists(), "documents were dead-lettered");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(env.state_file()).unwrap()).unwrap();
    assert!(state["snapshot"]["after"].is_null(), "the full load's position moved: {state}");
    env.cleanup().await;
}

/// JSON logs carry values as a user writes them: numbers as numbers, settings as `key=value`,
/// nothing in Rust's debug notation.
#[tokio::test]
async fn json_logs_hold_plain_values() {
    let env = TestEnv::new("out_json_logs").await;
    let mut vars = env.env_vars();
    set(&mut vars, "LOG_FORMAT", "json");
    vars.push(("RUST_LOG".into(), "info".into()));
    let o = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let events: Vec<serde_json::Value> =
        err.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(!err.contains("Some(") && !err.contains("None"), "{err}");
    let field = |message: &str, name: &str| -> serde_json::Value {
        let event = events.iter().find(|e| e["fields"]["message"] == message).unwrap_or_else(|| panic!("no {message:?} in {err}"));
        event["fields"][name].clone()
    };
    assert_eq!(field("cycle done", "stored"), serde_json::json!(999));
    assert_eq!(field("pg2es started", "bootstrap"), serde_json::json!("created"));
    let restore = field("index tuned for the full load", "restore");
    assert!(restore.as_str().is_some_and(|r| r.contains("index.refresh_interval=1s")), "{restore}");
    env.cleanup().await;
}

/// A server answering `GET /` as an engine version pg2es does not support (no such engine runs
/// here, so a few lines of HTTP stand in for its root answer): refused before anything is sent.
#[tokio::test]
async fn an_unsupported_engine_is_refused_by_name() {
    let env = TestEnv::new("out_old_engine").await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let body = r#"{"name":"old","version":{"number":"6.8.23","lucene_version":"7.7.3"},"tagline":"You Know, for Search"}"#;
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    let mut vars = env.env_vars();
    set(&mut vars, "ES_URL", &url);
    for args in [&["run", "--once"][..], &["verify"][..]] {
        let o = common::pg2es_command(&vars, args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("Elasticsearch 6.8.23 is not supported") && err.contains("ES_URL"), "{args:?}: {err}");
    }
    env.cleanup().await;
}

/// A change stream's keyset reads with no index to serve them are reported at start, with the
/// statement that creates it (Django's migrations make none of them).
#[tokio::test]
async fn a_missing_change_index_is_reported_with_the_statement_to_run() {
    let env = TestEnv::new("out_missing_index").await;
    env.sql("DROP INDEX content.person_updated_at_id_idx").await;
    let o = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains(r#"CREATE INDEX CONCURRENTLY ON "content"."person" ("updated_at", "id");"#), "{err}");
    assert_eq!(err.matches("CREATE INDEX").count(), 1, "{err}");
    env.cleanup().await;
}
