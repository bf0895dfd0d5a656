//! Crashes and outages against the real stack. These stop and start the shared services, so they
//! run alone (`make test-faults`, one thread). Every loop is bounded in count and time, and every
//! test ends with `verify`: Elasticsearch must hold exactly what Postgres says.
#![cfg(feature = "fault-tests")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{signal, wait_exit, TestEnv};
use pg2es::retry::RetryPolicy;
use pg2es::shutdown::Shutdown;

const FILM: &str = "24eafcd7-1018-4951-9e17-583e2554ef0a";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stack(action: &str, service: &str) {
    let status = Command::new(repo().join("scripts/stack.sh")).args([action, service]).status().expect("run scripts/stack.sh");
    assert!(status.success(), "scripts/stack.sh {action} {service} failed");
}

/// One pass with the binary, to completion; its log.
fn run_once(env: &TestEnv) -> String {
    let o = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    log
}

async fn assert_consistent(env: &TestEnv) {
    env.refresh().await;
    let (_t, shutdown) = Shutdown::new();
    let report = pg2es::verify::verify(&env.config(), &shutdown).await.expect("verify");
    assert!(report.is_consistent(), "Elasticsearch differs from Postgres: {report:?}");
    let films = env.scalar_i64("SELECT count(*) FROM content.film_work").await as u64;
    assert_eq!(env.count().await, films);
}

/// Changes films, persons, genres and links while pg2es runs, until told to stop (bounded):
/// inserts, updates and deletes in all five tables, deletes being about half of the writes.
async fn mutate(dsn: String, seed: u64, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let db = common::connect(&dsn).await;
    let mut rng = common::Rng::new(seed);
    let mut done = 0;
    // Rows picked by position among those left: a position past the end picks nothing.
    let film = |n: u64| format!("(SELECT id FROM content.film_work ORDER BY id OFFSET {} LIMIT 1)", n % 999);
    let person = |n: u64| format!("(SELECT id FROM content.person ORDER BY id OFFSET {} LIMIT 1)", n * 7 % 4166);
    while !*stop.borrow() && done < 5_000 {
        let n = rng.below(1000);
        // No genre renames here: each re-indexes hundreds of films and would heal exactly the
        // losses this test exists to catch (genre fan-out has its own test).
        let sql = match rng.below(12) {
            0 => format!("UPDATE content.film_work SET title = 'Film {n}', updated_at = now() WHERE id = {}", film(n)),
            1 => format!("UPDATE content.person SET full_name = 'Person {n}', updated_at = now() WHERE id = {}", person(n)),
            2 => format!(
                "INSERT INTO content.person_film_work (id, film_work_id, person_id, role, created_at, updated_at)
                 SELECT gen_random_uuid(), f.id, p.id, 'actor', now(), now() FROM {} f(id), {} p(id)",
                film(n),
                person(n)
            ),
            3 => format!(
                "INSERT INTO content.film_work (id, title, created_at, updated_at) VALUES (gen_random_uuid(), 'New film {n}', now(), now())"
            ),
            4 => format!("DELETE FROM content.film_work WHERE id = {}", film(n)),
            5 => format!("DELETE FROM content.person_film_work WHERE id = (SELECT id FROM content.person_film_work WHERE film_work_id = {} LIMIT 1)", film(n)),
            6 => format!("DELETE FROM content.genre_film_work WHERE id = (SELECT id FROM content.genre_film_work WHERE film_work_id = {} LIMIT 1)", film(n)),
            7 => format!("DELETE FROM content.person WHERE id = {}", person(n)),
            // Genres of their own (the reference genres stay: renaming or deleting one re-indexes
            // hundreds of films, which would heal losses): created on a film, then deleted.
            8 => format!(
                "WITH g AS (INSERT INTO content.genre (id, name, created_at, updated_at) VALUES (gen_random_uuid(), 'Genre {n}', now(), now()) RETURNING id)
                 INSERT INTO content.genre_film_work (id, genre_id, film_work_id, created_at, updated_at)
                 SELECT gen_random_uuid(), g.id, f.id, now(), now() FROM g, {} f(id)",
                film(n)
            ),
            9 => "DELETE FROM content.genre WHERE id = (SELECT id FROM content.genre WHERE name LIKE 'Genre %' ORDER BY id LIMIT 1)".to_string(),
            10 => format!("UPDATE content.genre SET name = 'Genre {n} renamed', updated_at = now() WHERE id = (SELECT id FROM content.genre WHERE name LIKE 'Genre %' ORDER BY id DESC LIMIT 1)"),
            _ => format!(
                "UPDATE content.person_film_work SET role = 'director', updated_at = now() WHERE id = (SELECT id FROM content.person_film_work WHERE film_work_id = {} LIMIT 1)",
                film(n)
            ),
        };
        db.execute(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        done += 1;
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80))).await;
    }
    done
}

async fn install_delete_capture(env: &TestEnv) {
    pg2es::source::delete_log::install(&env.db, &common::capture(&env.db, "content").await).await.expect("install the delete capture triggers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_at_random_moments() {
    kills(Source::Polling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_at_random_moments_with_replication() {
    kills(Source::Replication).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// With the delete capture triggers installed.
    Polling,
    Replication,
}

/// A test database set up for the source: triggers for polling, `PG2ES_SOURCE` for replication
/// (the template's link tables have the replica identity it needs).
async fn env_for(name: &str, source: Source) -> TestEnv {
    let suffix = if source == Source::Replication { "_repl" } else { "" };
    let mut env = TestEnv::new(&format!("{name}{suffix}")).await;
    match source {
        Source::Polling => install_delete_capture(&env).await,
        Source::Replication => env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into())),
    }
    env
}

async fn kills(source: Source) {
    let mut env = env_for("fault_kill", source).await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "40".into()));
    env.extra_env.push(("ETL_CYCLE_SEC".into(), "0.2".into()));
    // The default margin, not the harness's 0: Postgres takes a statement's now() before the
    // transaction shows in pg_stat_activity, and under load (both kill tests at once on 2 cores)
    // a cycle can read the horizon in between and pass a row that commits just after.
    env.extra_env.push(("ETL_CLOCK_SKEW_MS".into(), "1000".into()));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("kill test seed {seed}");
    let mut rng = common::Rng::new(seed);
    let log = env.dir.path().join("pg2es.log");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mutator = tokio::spawn(mutate(env.dsn.clone(), seed, stop_rx));
    let started = Instant::now();
    let mut kills = 0;
    // 22 kills (PG2ES_TEST_KILLS: fewer for the Postgres matrix), the first ones during the
    // initial load; bounded to 3 minutes in all.
    let wanted = kill_count();
    while kills < wanted && started.elapsed() < Duration::from_secs(180) {
        let mut child = common::spawn_run(&env, &log);
        let alive = Duration::from_millis(150 + rng.below(1500));
        tokio::time::sleep(alive).await;
        signal(&child, "-KILL");
        wait_exit(&mut child, Duration::from_secs(10));
        kills += 1;
    }
    stop_tx.send(true).unwrap();
    let changes = mutator.await.unwrap();
    println!("kills survived: {kills}, changes made meanwhile: {changes}");
    assert_eq!(kills, wanted);

    run_once(&env);
    assert_consistent(&env).await;
    // Kills during the full load left the index tuned; the run after them put its settings back.
    assert_settings_restored(&env).await;
    env.cleanup().await;
}

/// How many kills: 22, or PG2ES_TEST_KILLS (1 to 22).
fn kill_count() -> usize {
    match std::env::var("PG2ES_TEST_KILLS") {
        Err(_) => 22,
        Ok(v) => match v.parse() {
            Ok(n @ 1..=22) => n,
            _ => panic!("PG2ES_TEST_KILLS={v:?}: a number of kills from 1 to 22"),
        },
    }
}

async fn assert_settings_restored(env: &TestEnv) {
    assert_eq!(env.settings().await["index.refresh_interval"], serde_json::json!("1s"));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(env.state_file()).unwrap()).unwrap();
    assert!(state.get("tuned").is_none(), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_exits_cleanly_and_keeps_state_consistent() {
    let mut env = TestEnv::new("fault_term").await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "10".into()));
    let log = env.dir.path().join("pg2es.log");
    let mut child = common::spawn_run(&env, &log);
    common::eventually(Duration::from_secs(60), "some documents loaded", || async { env.try_count().await.unwrap_or(0) > 0 }).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("pg2es stopped"), "{text}");
    let loaded = env.try_count().await.unwrap_or(0);
    println!("documents loaded before SIGTERM: {loaded}");
    // The state file is whole and resumable.
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(env.state_file()).unwrap()).unwrap();
    assert_eq!(state["version"], serde_json::json!(pg2es::checkpoint::STATE_VERSION));
    // Stopped mid-load, the index has its own settings back.
    assert_settings_restored(&env).await;
    run_once(&env);
    assert_consistent(&env).await;
    env.cleanup().await;
}

/// Counts the failed attempts the log reports while waiting for `service`.
fn attempts(log: &Path, service: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines().filter(|l| l.contains(&format!("waiting_for={service}"))).count()
}

async fn outage(service: &str, stack_name: &str, source: Source) {
    let mut env = env_for(&format!("fault_outage_{stack_name}"), source).await;
    let policy = RetryPolicy { initial: Duration::from_millis(200), cap: Duration::from_secs(4) };
    env.extra_env.push(("ETL_BACKOFF_INITIAL_MS".into(), "200".into()));
    env.extra_env.push(("ETL_BACKOFF_MAX_SEC".into(), "4".into()));
    env.extra_env.push(("ETL_CYCLE_SEC".into(), "0.5".into()));
    let log = env.dir.path().join("pg2es.log");
    let mut child = common::spawn_run(&env, &log);
    common::eventually(Duration::from_secs(60), "initial load", || async { env.try_count().await == Some(999) }).await;

    // Changes made while the index is down (or, for Postgres, just before it goes down) must
    // arrive after the outage: an update and deletes. Made before Elasticsearch stops, a cycle
    // could load them before it is gone (a cycle is 0.5 s here), and nothing would wait.
    let changes = || async {
        env.sql(&format!("UPDATE content.film_work SET title = 'During the outage', updated_at = now() WHERE id = '{FILM}'")).await;
        env.sql(&format!("DELETE FROM content.film_work WHERE id = (SELECT id FROM content.film_work WHERE id <> '{FILM}' ORDER BY id LIMIT 1)")).await;
        env.sql(&format!(
            "DELETE FROM content.person_film_work WHERE id = (SELECT id FROM content.person_film_work WHERE film_work_id <> '{FILM}' ORDER BY id LIMIT 1)"
        ))
        .await;
    };
    let index_down = service == "elasticsearch";
    if !index_down {
        changes().await;
    }
    let down_at = Instant::now();
    stack("stop", stack_name);
    if index_down {
        changes().await;
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    stack("start", stack_name);
    let outage = down_at.elapsed();

    env.db = common::connect(&env.dsn).await;
    common::eventually(Duration::from_secs(90), "change loaded after the outage", || async {
        env.refresh().await;
        let v: serde_json::Value = env.http.get(format!("{}/{}/_doc/{FILM}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
        v["_source"]["title"] == serde_json::json!("During the outage")
    })
    .await;
    let recovered = down_at.elapsed();
    common::eventually(Duration::from_secs(30), "the deletes made before the outage loaded after it", || async {
        env.refresh().await;
        let (_t, shutdown) = Shutdown::new();
        pg2es::verify::verify(&env.config(), &shutdown).await.is_ok_and(|r| r.is_consistent())
    })
    .await;
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());

    let made = attempts(&log, service);
    // Every failed attempt is one log line; the policy allows at most this many in the window for
    // each bulk request in flight (ES_BULK_CONCURRENCY, 2 by default: each backs off on its own),
    // plus one for the cycle that noticed the loss. A retry storm would be thousands.
    let allowed = policy.max_attempts_within(recovered) * 2 + 1;
    println!("{service} outage of {outage:?} (recovered after {recovered:?}): {made} failed attempts, policy allows {allowed}");
    assert!(made >= 3, "{service}: expected pg2es to wait with retries, saw {made} attempts");
    assert!(made <= allowed, "{service}: {made} attempts in {recovered:?}, more than the backoff allows ({allowed})");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("{service} unavailable")) && text.contains("retrying"), "the log must say what it waits for");
    assert_consistent(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_waited_out_without_a_retry_storm() {
    outage("postgres", "pg", Source::Polling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_with_replication() {
    outage("postgres", "pg", Source::Replication).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_outage_with_replication() {
    outage("elasticsearch", "es", Source::Replication).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_outage_is_waited_out_without_a_retry_storm() {
    outage("elasticsearch", "es", Source::Polling).await;
}

/// A slot invalidated by Postgres (`wal_status = lost`: WAL it needed removed under
/// `max_slot_wal_keep_size`) can never be read again: pg2es drops it, creates it again, and
/// loads every film. Server-wide setting, so it runs here, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_created_again_and_the_index_heals() {
    let env = TestEnv::replicated("fault_slot_lost").await;
    run_once(&env);
    env.sql(&format!("UPDATE content.film_work SET title = 'Lost with the slot' WHERE id = '{FILM}'")).await;
    let admin = common::connect(&common::pg_admin_dsn()).await;
    admin.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'", &[]).await.unwrap();
    admin.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
    env.sql("CREATE TABLE public.filler (id int, pad text)").await;
    let slot = format!("pg2es_{}", env.index);
    let mut status = String::new();
    for _ in 0..12 {
        env.sql("INSERT INTO public.filler SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 20000) g").await;
        admin.execute("SELECT pg_switch_wal()", &[]).await.unwrap();
        admin.execute("CHECKPOINT", &[]).await.unwrap();
        status = admin.query_one("SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().get(0);
        if status == "lost" {
            break;
        }
    }
    admin.execute("ALTER SYSTEM RESET max_slot_wal_keep_size", &[]).await.unwrap();
    admin.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
    assert_eq!(status, "lost", "the slot was not invalidated");
    let err = run_once(&env);
    assert!(err.contains("the replication slot was invalidated") && err.contains("taking a fresh one"), "{err}");
    assert_eq!(env.doc(FILM).await["title"], "Lost with the slot");
    assert_consistent(&env).await;
    env.cleanup().await;
}
