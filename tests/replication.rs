//! `PG2ES_SOURCE=replication` against the real stack: the full load, every propagation rule,
//! restarts, truncate, the setup errors, versions, and slot hygiene.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use pg2es::config::{Config, Sources};
use pg2es::pipeline::{self, Mode};
use pg2es::shutdown::Shutdown;
use serde_json::Value;

/// The stored document by a realtime get (no refresh needed), or None when absent.
async fn stored(env: &TestEnv, id: &str) -> Option<Value> {
    let v: Value = env.http.get(format!("{}/{}/_doc/{id}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
    (v["found"] == Value::Bool(true)).then(|| v["_source"].clone())
}

async fn film(env: &TestEnv, offset: i64) -> String {
    env.scalar_uuid(&format!("SELECT id FROM content.film_work ORDER BY id OFFSET {offset} LIMIT 1")).await.to_string()
}

/// Polls `check` every 20 ms for at most `limit`; the time it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not true after {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_index_within_a_second_or_so() {
    let env = TestEnv::replicated("repl_rules").await;
    let config = env.config();
    let (trigger, shutdown) = Shutdown::new();
    let run = tokio::spawn(async move { pipeline::run(&config, Mode::Continuous, &shutdown).await });
    common::eventually(Duration::from_secs(60), "full load", || async { env.try_count().await == Some(999) }).await;
    let limit = Duration::from_secs(10);

    let a = env.scalar_uuid("SELECT film_work_id FROM content.genre_film_work ORDER BY film_work_id LIMIT 1").await.to_string();
    env.sql(&format!("UPDATE content.film_work SET title = 'Streamed' WHERE id = '{a}'")).await;
    let took = within(limit, "film update", || async { stored(&env, &a).await.is_some_and(|d| d["title"] == "Streamed") }).await;
    println!("film update stored after {took:?}");

    env.sql("INSERT INTO content.film_work (id, title, created_at, updated_at) VALUES ('00000000-0000-4000-8000-0000000000aa', 'Inserted', now(), now())")
        .await;
    within(limit, "film insert", || async { stored(&env, "00000000-0000-4000-8000-0000000000aa").await.is_some() }).await;

    let b = film(&env, 500).await;
    env.sql(&format!("DELETE FROM content.film_work WHERE id = '{b}'")).await;
    within(limit, "film delete", || async { stored(&env, &b).await.is_none() }).await;

    // Link rows: inserted, updated (moved to another film), deleted.
    let c = film(&env, 502).await;
    let person = env.scalar_uuid("SELECT id FROM content.person ORDER BY id LIMIT 1").await;
    let name: String = env.db.query_one(&format!("SELECT full_name FROM content.person WHERE id = '{person}'"), &[]).await.unwrap().get(0);
    env.sql(&format!("INSERT INTO content.person_film_work (id, film_work_id, person_id, role, created_at, updated_at) VALUES ('00000000-0000-4000-8000-0000000000bb', '{c}', '{person}', 'writer', now(), now())")).await;
    within(limit, "link insert", || async {
        stored(&env, &c).await.is_some_and(|d| d["writers_names"].as_array().unwrap().iter().any(|w| w == name.as_str()))
    })
    .await;
    let d = film(&env, 503).await;
    env.sql(&format!("UPDATE content.person_film_work SET film_work_id = '{d}' WHERE id = '00000000-0000-4000-8000-0000000000bb'")).await;
    within(limit, "link moved away", || async { !stored(&env, &c).await.unwrap()["writers_names"].as_array().unwrap().iter().any(|w| w == name.as_str()) })
        .await;
    within(limit, "link moved here", || async { stored(&env, &d).await.unwrap()["writers_names"].as_array().unwrap().iter().any(|w| w == name.as_str()) })
        .await;
    env.sql("DELETE FROM content.person_film_work WHERE id = '00000000-0000-4000-8000-0000000000bb'").await;
    within(limit, "link delete", || async { !stored(&env, &d).await.unwrap()["writers_names"].as_array().unwrap().iter().any(|w| w == name.as_str()) }).await;
    let gfw = env.scalar_uuid(&format!("SELECT id FROM content.genre_film_work WHERE film_work_id = '{a}' LIMIT 1")).await;
    let genres_before = stored(&env, &a).await.unwrap()["genre"].as_array().unwrap().len();
    env.sql(&format!("DELETE FROM content.genre_film_work WHERE id = '{gfw}'")).await;
    within(limit, "genre link delete", || async { stored(&env, &a).await.unwrap()["genre"].as_array().unwrap().len() == genres_before - 1 }).await;

    // A person renamed, a person and a genre deleted: every film that has (had) them.
    let busy = env.scalar_uuid("SELECT person_id FROM content.person_film_work GROUP BY person_id ORDER BY count(*) DESC, person_id LIMIT 1").await;
    env.sql(&format!("UPDATE content.person SET full_name = 'Renamed Everywhere' WHERE id = '{busy}'")).await;
    let other = env
        .scalar_uuid(&format!(
            "SELECT person_id FROM content.person_film_work WHERE person_id <> '{busy}' GROUP BY person_id HAVING count(*) >= 2 ORDER BY person_id LIMIT 1"
        ))
        .await;
    env.sql(&format!("DELETE FROM content.person WHERE id = '{other}'")).await;
    let genre = env.scalar_uuid("SELECT genre_id FROM content.genre_film_work GROUP BY genre_id ORDER BY count(*), genre_id LIMIT 1").await;
    env.sql(&format!("DELETE FROM content.genre WHERE id = '{genre}'")).await;
    within(Duration::from_secs(30), "verify agrees", || async { env.verify().await.is_consistent() }).await;

    trigger.trigger();
    run.await.unwrap().expect("pipeline run");
    env.cleanup().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_confirmed_position_and_truncate_reloads() {
    let env = TestEnv::replicated("repl_restart").await;
    env.pass().await;
    let a = film(&env, 5).await;
    let lsn = "(pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";
    let before = env.scalar_i64(&format!("SELECT {lsn}")).await;
    env.sql(&format!("UPDATE content.film_work SET title = 'While stopped' WHERE id = '{a}'")).await;
    let r = env.pass().await;
    assert_eq!(r.iter().map(|r| r.records).sum::<usize>(), 1, "{r:?}");
    assert_eq!(stored(&env, &a).await.unwrap()["title"], "While stopped");
    // The pass confirmed what it stored: the slot keeps no WAL of it for the next run.
    let slot = format!("pg2es_{}", env.index);
    let confirmed = env.scalar_i64(&format!("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '{slot}'")).await;
    assert!(confirmed > before, "slot {slot} confirmed {confirmed}, not past the update made at {before}");
    // Nothing changed: nothing read again.
    let r = env.pass().await;
    assert_eq!(r.iter().map(|r| r.records).sum::<usize>(), 0, "{r:?}");

    env.sql("TRUNCATE content.person_film_work").await;
    let r = env.pass().await;
    assert!(r.iter().any(|r| r.records >= 999), "the truncate reloaded every film: {r:?}");
    assert!(env.verify().await.is_consistent());
    env.sql("TRUNCATE content.film_work CASCADE").await;
    env.pass().await;
    assert_eq!(env.count().await, 0);
    env.cleanup().await;
}

/// What Postgres lacks is named with the fix.
#[tokio::test]
async fn setup_errors_say_what_to_change() {
    let mut env = TestEnv::new("repl_setup").await;
    env.sql("ALTER TABLE content.genre_film_work REPLICA IDENTITY DEFAULT").await;
    env.sql("ALTER TABLE content.person_film_work REPLICA IDENTITY DEFAULT").await;
    env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into()));
    let o = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    // Every table that lacks it, in one error.
    assert!(err.contains("ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL"), "{err}");
    assert!(err.contains("ALTER TABLE content.person_film_work REPLICA IDENTITY FULL"), "{err}");
    // The failed setup left no empty index behind.
    let head = env.http.head(format!("{}/{}", env.es, env.index)).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 404, "{err}");

    env.sql("ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL").await;
    env.sql("ALTER TABLE content.person_film_work REPLICA IDENTITY FULL").await;
    let _ = env.db.batch_execute("DROP OWNED BY pg2es_t_norepl; DROP ROLE IF EXISTS pg2es_t_norepl").await;
    env.sql("CREATE ROLE pg2es_t_norepl LOGIN PASSWORD 'x' NOREPLICATION").await;
    env.sql("GRANT USAGE ON SCHEMA content TO pg2es_t_norepl").await;
    env.sql("GRANT SELECT ON ALL TABLES IN SCHEMA content TO pg2es_t_norepl").await;
    let mut vars = env.env_vars();
    vars.retain(|(k, _)| k != "PG_DSN" && k != "ETL_STATE_FILE");
    vars.push(("PG_DSN".into(), env.dsn.replace("app:123qwe", "pg2es_t_norepl:x")));
    vars.push(("ETL_STATE_FILE".into(), env.dir.path().join("norepl.json").display().to_string()));
    let o = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("lacks the REPLICATION attribute") && err.contains("ALTER ROLE pg2es_t_norepl REPLICATION"), "{err}");
    env.cleanup().await;
    let admin = common::connect(&common::pg_admin_dsn()).await;
    admin.batch_execute("DROP OWNED BY pg2es_t_norepl; DROP ROLE IF EXISTS pg2es_t_norepl").await.unwrap();
}

/// A write with a lower version than the stored document's is refused by the index and counts as
/// done: an older state read earlier never overwrites a newer one, deletes included.
#[tokio::test]
async fn an_older_version_never_overwrites_a_newer_one() {
    use pg2es::sink::{ElasticsearchSink, IndexAction, IndexSink};
    let env = TestEnv::new("repl_versions").await;
    env.run_once().await;
    let config = env.config();
    let sink = ElasticsearchSink::new(&config.sink_settings()).unwrap();
    let (_t, shutdown) = Shutdown::new();
    let id = film(&env, 0).await;
    // The full load versioned every document with the WAL position it was read after.
    let loaded: Value = env.http.get(format!("{}/{}/_doc/{id}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
    let v = loaded["_version"].as_u64().unwrap();
    assert!(v > 1_000, "the full load's writes carry a WAL position as their version, not a count: {v}");
    let mut doc = env.doc(&id).await;
    doc["title"] = "Newer".into();
    let body = |d: &Value| serde_json::to_vec(d).unwrap();
    let report = sink.write(vec![IndexAction::Index { id: id.clone(), body: body(&doc), version: Some(v + 200) }], &shutdown).await.unwrap();
    assert_eq!(report.stored, 1);
    doc["title"] = "Older".into();
    let report = sink.write(vec![IndexAction::Index { id: id.clone(), body: body(&doc), version: Some(v + 100) }], &shutdown).await.unwrap();
    assert_eq!((report.stored, report.older, report.dead_lettered), (0, 1, 0), "a superseded write is done, and counted apart as older");
    assert_eq!(stored(&env, &id).await.unwrap()["title"], "Newer");
    // An older delete does not remove a newer document either; a newer one does.
    sink.write(vec![IndexAction::Delete { id: id.clone(), version: Some(v + 150) }], &shutdown).await.unwrap();
    assert!(stored(&env, &id).await.is_some());
    sink.write(vec![IndexAction::Delete { id: id.clone(), version: Some(v + 300) }], &shutdown).await.unwrap();
    assert!(stored(&env, &id).await.is_none());
    env.cleanup().await;
}

/// WAL written only by tables outside the publication does not pile up in the slot: pg2es moves
/// the slot to the WAL position of each cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_does_not_retain_wal_of_unrelated_tables() {
    let env = TestEnv::replicated("repl_hygiene").await;
    let config = env.config();
    let (trigger, shutdown) = Shutdown::new();
    let run = tokio::spawn(async move { pipeline::run(&config, Mode::Continuous, &shutdown).await });
    common::eventually(Duration::from_secs(60), "full load", || async { env.try_count().await == Some(999) }).await;
    env.sql("CREATE TABLE public.noise (x text)").await;
    let start: i64 = env.scalar_i64("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").await;
    // About 200 MB of WAL, in 20 transactions.
    for _ in 0..20 {
        env.sql("INSERT INTO public.noise SELECT repeat(md5(random()::text), 60) FROM generate_series(1, 5000)").await;
    }
    let written = env.scalar_i64("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").await - start;
    println!("WAL written: {} MiB", written >> 20);
    assert!(written > 150 << 20, "the test wrote only {written} bytes of WAL");
    let slot = format!("pg2es_{}", env.index);
    let retained = || async {
        env.scalar_i64(&format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '{slot}'")).await
    };
    // The slot's restart point moves only past a running-transactions record, which Postgres
    // writes every 15 s while WAL is written: 20 s was too tight with another test beside it.
    within(Duration::from_secs(40), "the slot retains under 16 MiB", || async { retained().await < 16 << 20 }).await;
    println!("retained after: {} KiB", retained().await >> 10);
    trigger.trigger();
    run.await.unwrap().expect("pipeline run");
    env.cleanup().await;
}

/// A polling full load cut short, then the same state read with `PG2ES_SOURCE=replication`: the
/// load starts again through the stream and ends equal to Postgres. Before, every run refused the
/// state: "a full load is already under way".
#[tokio::test]
async fn a_polling_full_load_cut_short_goes_on_in_replication() {
    let mut env = TestEnv::replicated("repl_after_polling_load").await;
    env.extra_env.retain(|(k, _)| k != "PG2ES_SOURCE");
    let mut polling = env.env_vars();
    polling.extend([
        ("PG2ES_SOURCE".to_string(), "polling".to_string()),
        ("ETL_BATCH_SIZE".to_string(), "1".to_string()),
        ("ES_BULK_CONCURRENCY".to_string(), "1".to_string()),
    ]);
    let log = env.dir.path().join("polling.log");
    let mut run = common::spawn_logged(&polling, &["run", "--once"], &log);
    // The state where it is kept: its file, or its row of pg2es.state (PG2ES_TEST_STATE_STORE).
    let polling_config = Config::from_sources(&Sources::gather(None, polling.clone()).unwrap()).unwrap();
    let saved = || async { pipeline::saved_state(&polling_config).await.ok().flatten().and_then(|s| s.snapshot_in_progress()) };
    within(Duration::from_secs(60), "the polling full load is under way", || async { saved().await.is_some_and(|s| s.after.is_some()) }).await;
    common::signal(&run, "-TERM");
    common::wait_exit(&mut run, Duration::from_secs(30));
    assert!(saved().await.is_some(), "the load was cut short: {:?}", pipeline::saved_state(&polling_config).await);

    env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into()));
    let out = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    env.refresh().await;
    assert_eq!(env.count().await, 999);
    let report = env.verify().await;
    assert!(report.is_consistent(), "{}", report.render());
    env.cleanup().await;
}

/// `pg2es check` in replication mode names every document's tables whose replica identity would
/// stop `run`, all at once (run stops at the first document); polling needs none of it.
#[tokio::test]
async fn check_names_every_missing_replica_identity_at_once() {
    let mut env = TestEnv::new("repl_check_identities").await;
    env.sql("ALTER TABLE content.genre_film_work REPLICA IDENTITY DEFAULT").await;
    env.sql("ALTER TABLE content.person_film_work REPLICA IDENTITY DEFAULT").await;
    env.extra_env.push(("PG2ES_DOCUMENTS".into(), "movies,genres,persons".into()));
    env.extra_env.push(("ES_INDEX_PREFIX".into(), format!("{}_", env.index)));
    let mut vars: Vec<(String, String)> = env.env_vars().into_iter().filter(|(k, _)| k != "ES_INDEX" && k != "ES_SCHEMA_FILE").collect();
    vars.push(("PG2ES_SOURCE".into(), "replication".into()));
    let out = common::pg2es_command(&vars, &["check"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let line = |doc: &str| said.lines().find(|l| l.starts_with(&format!("{doc}: "))).unwrap_or_default().to_string();
    assert!(
        line("movies").contains("ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL; ALTER TABLE content.person_film_work REPLICA IDENTITY FULL;"),
        "{said}"
    );
    assert!(line("persons").contains("ALTER TABLE content.person_film_work REPLICA IDENTITY FULL;"), "{said}");
    assert!(line("genres").starts_with("genres: ok:"), "{said}");
    vars.retain(|(k, _)| k != "PG2ES_SOURCE");
    let out = common::pg2es_command(&vars, &["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "polling needs no replica identity: {}", String::from_utf8_lossy(&out.stdout));
    env.cleanup().await;
}
