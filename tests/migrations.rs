//! Replication mode against schema migrations and operators' mistakes, on the real stack: each
//! case ends with `verify` reporting no difference after its documented outcome (README,
//! "When the schema or the setup changes"), with no manual step beyond the one the error names.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::{connect, eventually, log_shows, signal, spawn_run, wait_exit, TestEnv};
use pg2es::shutdown::Shutdown;
use tokio::sync::watch;

async fn consistent(env: &TestEnv) -> bool {
    env.refresh().await;
    let (_t, shutdown) = Shutdown::new();
    match pg2es::verify::verify(&env.config(), &shutdown).await {
        Ok(report) => report.is_consistent(),
        Err(_) => false,
    }
}

/// Waits (bounded) until the index equals Postgres, then checks it once more a cycle later.
async fn converges(env: &TestEnv, limit: Duration) {
    eventually(limit, "verify reports no difference", || consistent(env)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.refresh().await;
    let (_t, shutdown) = Shutdown::new();
    let report = pg2es::verify::verify(&env.config(), &shutdown).await.expect("verify");
    assert!(report.is_consistent(), "{report:?}");
}

fn log_path(env: &TestEnv, name: &str) -> PathBuf {
    env.dir.path().join(format!("{name}.log"))
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Starts `pg2es run` and waits for its first full load to be whole.
async fn start(env: &TestEnv, log: &Path) -> Child {
    let child = spawn_run(env, log);
    converges(env, Duration::from_secs(60)).await;
    child
}

fn stop(mut child: Child) {
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "pg2es run exited with {status}");
}

/// Changes film titles, and adds and deletes links, while a case plays out; errors (a table being
/// recreated, a column renamed) are counted, not fatal. Bounded by count and by `stop`.
fn writer(env: &TestEnv) -> (watch::Sender<bool>, tokio::task::JoinHandle<(usize, usize)>) {
    let (tx, rx) = watch::channel(false);
    let dsn = env.dsn.clone();
    let task = tokio::spawn(async move {
        let db = connect(&dsn).await;
        let (mut done, mut failed) = (0usize, 0usize);
        let film = |n: usize| format!("(SELECT id FROM content.film_work ORDER BY id OFFSET {} LIMIT 1)", n * 37 % 990);
        while !*rx.borrow() && done + failed < 3_000 {
            let n = done + failed;
            let sql = match n % 4 {
                0 | 1 => format!("UPDATE content.film_work SET title = 'Written {n}', updated_at = now() WHERE id = {}", film(n)),
                2 => {
                    format!("DELETE FROM content.genre_film_work WHERE id = (SELECT id FROM content.genre_film_work WHERE film_work_id = {} LIMIT 1)", film(n))
                }
                _ => format!(
                    "INSERT INTO content.person_film_work (id, film_work_id, person_id, role, created_at, updated_at) \
                     SELECT gen_random_uuid(), f.id, p.id, 'writer', now(), now() FROM {} f(id), \
                     (SELECT id FROM content.person ORDER BY id OFFSET {} LIMIT 1) p(id)",
                    film(n),
                    n * 13 % 4000
                ),
            };
            match db.execute(&sql, &[]).await {
                Ok(_) => done += 1,
                Err(_) => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (done, failed)
    });
    (tx, task)
}

async fn stop_writer(w: (watch::Sender<bool>, tokio::task::JoinHandle<(usize, usize)>)) -> usize {
    w.0.send(true).unwrap();
    let (done, _failed) = w.1.await.unwrap();
    assert!(done > 10, "the writer changed {done} rows");
    done
}

const FRESH: &str = "taking a fresh one";

/// Dropped while pg2es runs: it creates the publication again and takes a fresh position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publication_is_created_again_and_the_index_heals() {
    let env = TestEnv::replicated("mig_pub_dropped").await;
    let log = log_path(&env, "run");
    let child = start(&env, &log).await;
    let w = writer(&env);
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.sql("DROP PUBLICATION pg2es_content").await;
    log_shows(&log, FRESH, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_writer(w).await;
    converges(&env, Duration::from_secs(60)).await;
    assert!(env.scalar_i64("SELECT count(*) FROM pg_publication WHERE pubname = 'pg2es_content'").await == 1);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(env.state_file()).unwrap()).unwrap();
    assert!(state["resyncs"].as_u64() >= Some(1), "{state}");
    stop(child);
    env.cleanup().await;
}

/// A migration that recreates a link table (new table, rows copied, old one dropped, new one
/// renamed): the new table is added to the publication pg2es made, and a fresh position taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_recreated_by_a_migration_rejoins_the_publication_and_the_index_heals() {
    let env = TestEnv::replicated("mig_table_recreated").await;
    let log = log_path(&env, "run");
    let child = start(&env, &log).await;
    let w = writer(&env);
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.db
        .batch_execute(
            "BEGIN;
             CREATE TABLE content.genre_film_work_new (LIKE content.genre_film_work INCLUDING ALL);
             ALTER TABLE content.genre_film_work_new REPLICA IDENTITY FULL;
             INSERT INTO content.genre_film_work_new SELECT * FROM content.genre_film_work;
             DELETE FROM content.genre_film_work_new WHERE id IN (SELECT id FROM content.genre_film_work_new ORDER BY id LIMIT 25);
             DROP TABLE content.genre_film_work;
             ALTER TABLE content.genre_film_work_new RENAME TO genre_film_work;
             ALTER TABLE content.genre_film_work ADD FOREIGN KEY (film_work_id) REFERENCES content.film_work (id) ON DELETE CASCADE;
             ALTER TABLE content.genre_film_work ADD FOREIGN KEY (genre_id) REFERENCES content.genre (id) ON DELETE CASCADE;
             COMMIT;",
        )
        .await
        .unwrap();
    log_shows(&log, "tables were missing from the publication", Duration::from_secs(20)).await;
    log_shows(&log, FRESH, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_writer(w).await;
    converges(&env, Duration::from_secs(60)).await;
    stop(child);
    env.cleanup().await;
}

/// Set back to DEFAULT while running: pg2es stops with the fix; after it, the next start takes a
/// fresh position, since deletes made meanwhile did not carry their films.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_identity_set_back_stops_with_the_fix_and_the_next_start_heals() {
    let env = TestEnv::replicated("mig_identity").await;
    let log = log_path(&env, "run");
    let mut child = start(&env, &log).await;
    // Deletes committed just before the change reach the stream with the old identity too.
    env.sql("ALTER TABLE content.genre_film_work REPLICA IDENTITY DEFAULT").await;
    env.sql("DELETE FROM content.genre_film_work WHERE id IN (SELECT id FROM content.genre_film_work ORDER BY id LIMIT 3)").await;
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", log_text(&log));
    assert!(log_text(&log).contains("ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL"), "{}", log_text(&log));
    env.sql("ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL").await;
    let log2 = log_path(&env, "after_fix");
    let child = spawn_run(&env, &log2);
    converges(&env, Duration::from_secs(60)).await;
    assert!(log_text(&log2).contains(FRESH), "{}", log_text(&log2));
    stop(child);
    env.cleanup().await;
}

/// A column pg2es reads, renamed while running and renamed back: pg2es stops naming it, and once
/// it is back the next start takes a fresh position (the stream has changes without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_renamed_and_back_stops_with_the_fix_and_the_next_start_heals() {
    let env = TestEnv::replicated("mig_column").await;
    let log = log_path(&env, "run");
    let mut child = start(&env, &log).await;
    let w = writer(&env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.sql("ALTER TABLE content.person_film_work RENAME COLUMN film_work_id TO film_id").await;
    // A change the stream carries without the column.
    env.sql("UPDATE content.person_film_work SET role = 'producer' WHERE id = (SELECT id FROM content.person_film_work ORDER BY id LIMIT 1)").await;
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_ne!(status.code(), Some(0), "{}", log_text(&log));
    assert!(log_text(&log).contains("film_work_id") && log_text(&log).contains("renamed or dropped by a migration"), "{}", log_text(&log));
    env.sql("ALTER TABLE content.person_film_work RENAME COLUMN film_id TO film_work_id").await;
    let log2 = log_path(&env, "after_fix");
    let child = spawn_run(&env, &log2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_writer(w).await;
    converges(&env, Duration::from_secs(60)).await;
    assert!(log_text(&log2).contains(FRESH), "{}", log_text(&log2));
    stop(child);
    env.cleanup().await;
}

/// A column dropped and added again, or altered, in place: the next pass loads every record.
#[tokio::test]
async fn a_column_changed_in_place_reloads_every_record() {
    let env = TestEnv::replicated("mig_column_in_place").await;
    common::columns_changed_in_place_reload_every_record(&env).await;
    env.cleanup().await;
}

/// A publication that stops publishing deletes: pg2es stops with the fix; after it, the next
/// start sees the publication was altered and takes a fresh position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_without_deletes_stops_with_the_fix_and_the_next_start_heals() {
    let env = TestEnv::replicated("mig_publish").await;
    let log = log_path(&env, "run");
    let mut child = start(&env, &log).await;
    env.sql("ALTER PUBLICATION pg2es_content SET (publish = 'insert, update')").await;
    env.sql("DELETE FROM content.film_work WHERE id = (SELECT id FROM content.film_work ORDER BY id LIMIT 1)").await;
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", log_text(&log));
    assert!(log_text(&log).contains("SET (publish = 'insert, update, delete, truncate')"), "{}", log_text(&log));
    env.sql("ALTER PUBLICATION pg2es_content SET (publish = 'insert, update, delete, truncate')").await;
    let log2 = log_path(&env, "after_fix");
    let child = spawn_run(&env, &log2);
    converges(&env, Duration::from_secs(60)).await;
    assert!(log_text(&log2).contains(FRESH), "{}", log_text(&log2));
    stop(child);

    // Created that way before the first start: refused before a slot is made.
    let mut fresh = TestEnv::replicated("mig_publish_new").await;
    fresh.sql("CREATE PUBLICATION pg2es_partial FOR TABLE content.film_work, content.genre, content.person, content.genre_film_work, content.person_film_work WITH (publish = 'insert, update')").await;
    fresh.extra_env.push(("PG_PUBLICATION".into(), "pg2es_partial".into()));
    let o = common::pg2es_command(&fresh.env_vars(), &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("does not publish delete, truncate"), "{err}");
    fresh.sql("ALTER PUBLICATION pg2es_partial SET (publish = 'insert, update, delete, truncate')").await;
    let o = common::pg2es_command(&fresh.env_vars(), &["run", "--once"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    converges(&fresh, Duration::from_secs(30)).await;
    fresh.cleanup().await;
    env.cleanup().await;
}

/// Two instances with their own state files and indexes, one slot, in turns: each finds the slot
/// moved past its state by the other, says so, and takes a fresh position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_slot_are_detected_and_each_heals() {
    let mut a = TestEnv::replicated("mig_shared").await;
    a.extra_env.push(("PG_REPLICATION_SLOT".into(), "pg2es_t_shared".into()));
    // The second instance: the same database and slot, its own index and state file.
    let mut b_vars = a.env_vars();
    let b_index = format!("{}_b", a.index);
    let b_state = a.dir.path().join("b.json");
    for (k, v) in b_vars.iter_mut() {
        match k.as_str() {
            "ES_INDEX" => *v = b_index.clone(),
            "ETL_STATE_FILE" => *v = b_state.display().to_string(),
            _ => {}
        }
    }
    b_vars.push(("RUST_LOG".into(), "info".into()));
    let b_config = || pg2es::config::Config::from_sources(&pg2es::config::Sources::gather(None, b_vars.clone()).unwrap()).unwrap();
    let b_consistent = || async {
        let _ = a.http.post(format!("{}/{b_index}/_refresh", a.es)).send().await;
        let (_t, shutdown) = Shutdown::new();
        pg2es::verify::verify(&b_config(), &shutdown).await.is_ok_and(|r| r.is_consistent())
    };
    let film =
        |n: usize| format!("UPDATE content.film_work SET title = 'Turn {n}' WHERE id = (SELECT id FROM content.film_work ORDER BY id OFFSET {n} LIMIT 1)");
    let log_a = log_path(&a, "a");
    let log_b = log_path(&a, "b");
    for turn in 0..2 {
        let child = start(&a, &log_a).await;
        a.sql(&film(turn * 2)).await;
        converges(&a, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        stop(child);
        a.sql(&film(turn * 2 + 1)).await;
        let child = common::spawn_logged(&b_vars, &["run"], &log_b);
        eventually(Duration::from_secs(60), "instance b converges", b_consistent).await;
        a.sql(&film(100 + turn)).await;
        eventually(Duration::from_secs(30), "instance b converges", b_consistent).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        stop(child);
    }
    // Each saw the slot moved past it by the other, and loaded every film again.
    assert!(log_text(&log_a).contains("past this state's"), "{}", log_text(&log_a));
    assert!(log_text(&log_b).contains("past this state's"), "{}", log_text(&log_b));
    let child = start(&a, &log_a).await;
    stop(child);
    let _ = a.http.delete(format!("{}/{b_index}", a.es)).send().await;
    a.cleanup().await;
}

/// Slot creation waits for transactions open anywhere on the server: the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_creation_says_what_it_waits_for() {
    let env = TestEnv::replicated("mig_slot_wait").await;
    let other = connect(&common::pg_admin_dsn()).await;
    other.batch_execute("BEGIN; SELECT pg_current_xact_id();").await.unwrap();
    let log = log_path(&env, "run");
    let child = spawn_run(&env, &log);
    log_shows(&log, "Postgres waits for the transactions open now to end", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    other.batch_execute("COMMIT").await.unwrap();
    converges(&env, Duration::from_secs(60)).await;
    stop(child);
    env.cleanup().await;
}

/// A slot of the same name in another database is named with that database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_of_another_database_is_named_with_it() {
    let mut env = TestEnv::replicated("mig_slot_elsewhere").await;
    env.extra_env.push(("PG_REPLICATION_SLOT".into(), "pg2es_t_elsewhere".into()));
    let admin = connect(&common::pg_admin_dsn()).await;
    let _ = admin.execute("SELECT pg_drop_replication_slot('pg2es_t_elsewhere')", &[]).await;
    admin.execute("SELECT pg_create_logical_replication_slot('pg2es_t_elsewhere', 'pgoutput')", &[]).await.unwrap();
    let o = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is a slot of database postgres") && err.contains("SELECT pg_drop_replication_slot('pg2es_t_elsewhere')"), "{err}");
    // The fix it names, done there: the next start converges.
    admin.execute("SELECT pg_drop_replication_slot('pg2es_t_elsewhere')", &[]).await.unwrap();
    let o = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    converges(&env, Duration::from_secs(30)).await;
    env.cleanup().await;
}

/// An idle run logs a summary, not a line per cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cycles_are_quiet() {
    let env = TestEnv::replicated("mig_idle").await;
    let log = log_path(&env, "run");
    let child = start(&env, &log).await;
    let before = log_text(&log).matches("cycle done").count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = log_text(&log).matches("cycle done").count() - before;
    // 0.2 s cycles: 20 lines in 4 s before; a change still gets its line.
    assert!(idle <= 1, "{idle} cycle lines while idle:\n{}", log_text(&log));
    env.sql("UPDATE content.film_work SET title = 'Not idle' WHERE id = (SELECT id FROM content.film_work ORDER BY id LIMIT 1)").await;
    let busy = log_text(&log).matches("cycle done").count();
    eventually(Duration::from_secs(10), "a busy cycle is logged", || async { log_text(&log).matches("cycle done").count() > busy }).await;
    converges(&env, Duration::from_secs(30)).await;
    stop(child);
    env.cleanup().await;
}

/// With the delete capture installed, replication mode (which does not read its log) says so and
/// trims what no polling instance needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_trims_the_delete_capture_log() {
    let env = TestEnv::replicated("mig_trim").await;
    pg2es::source::delete_log::install(&env.db, &common::capture(&env.db, "content").await).await.expect("install the delete capture");
    env.sql("DELETE FROM content.film_work WHERE id IN (SELECT id FROM content.film_work ORDER BY id LIMIT 3)").await;
    assert!(env.scalar_i64("SELECT count(*) FROM pg2es.changes").await > 0);
    let o = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("replication mode does not read them"), "{err}");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM pg2es.changes").await, 0, "{err}");
    converges(&env, Duration::from_secs(30)).await;
    env.cleanup().await;
}
