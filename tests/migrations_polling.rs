//! Polling mode when the delete capture breaks, against the real stack: a migration that
//! recreates a table (its triggers go with it), log tables altered by someone, an install on an
//! index loaded without the triggers, and a replication slot left behind. Each case ends with
//! verify reporting no difference after the documented outcome and the one step the log names.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, log_shows, pg2es_command, signal, spawn_run, wait_exit, TestEnv};
use pg2es::source::delete_log;
use pg2es::verify::VerifyReport;
use uuid::Uuid;

const SCHEMA: &str = "content";

/// `pg2es verify` (the binary) exits 0: the index matches Postgres.
fn assert_binary_verify_clean(env: &TestEnv) {
    let out = pg2es_command(&env.env_vars(), &["verify"]).output().unwrap();
    assert!(out.status.success(), "verify: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Verify until it reports no difference, at most `limit` (a running pg2es converges; deletes wait
/// for write transactions open anywhere on the server, such as another test cloning a database).
async fn verify_until_clean(env: &TestEnv, limit: Duration) {
    let start = Instant::now();
    loop {
        env.refresh().await;
        let report = env.verify().await;
        if report.is_consistent() {
            return;
        }
        assert!(start.elapsed() < limit, "the index still differs after {limit:?}: {report:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Films that have a genre link, the first `n` by id: their documents list a genre.
async fn films_with_genre_links(env: &TestEnv, n: i64) -> Vec<Uuid> {
    let rows = env.db.query("SELECT DISTINCT film_work_id FROM content.genre_film_work ORDER BY film_work_id LIMIT $1", &[&n]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

fn stale_ids(report: &VerifyReport) -> Vec<String> {
    report.stale.first.iter().map(|s| s.id.clone()).collect()
}

/// Recreates `content.genre_film_work` the way a migration does: a new table like it, the rows
/// copied, the old one dropped (with the triggers on it), the new one renamed, the foreign keys
/// added again.
const RECREATE_GENRE_LINKS: &str = "BEGIN;
    CREATE TABLE content.genre_film_work_new (LIKE content.genre_film_work INCLUDING ALL);
    INSERT INTO content.genre_film_work_new SELECT * FROM content.genre_film_work;
    DROP TABLE content.genre_film_work;
    ALTER TABLE content.genre_film_work_new RENAME TO genre_film_work;
    ALTER TABLE content.genre_film_work
        ADD CONSTRAINT genre_film_work_genre_id_fkey FOREIGN KEY (genre_id) REFERENCES content.genre (id) ON DELETE CASCADE,
        ADD CONSTRAINT genre_film_work_film_work_id_fkey FOREIGN KEY (film_work_id) REFERENCES content.film_work (id) ON DELETE CASCADE;
    ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL;
    COMMIT;";

/// Keeps changing the last films by id (never the ones the test unlinks) until `stop`, at most
/// 600 changes or 120 s. Returns how many it made.
fn spawn_writer(dsn: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let db = connect(&dsn).await;
        let films: Vec<Uuid> = db.query("SELECT id FROM content.film_work ORDER BY id DESC LIMIT 50", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        let start = Instant::now();
        let mut made = 0;
        while made < 600 && start.elapsed() < Duration::from_secs(120) && !stop.load(Ordering::Relaxed) {
            let film = films[made % films.len()];
            db.execute("UPDATE content.film_work SET rating = round((random() * 10)::numeric, 1), updated_at = now() WHERE id = $1", &[&film])
                .await
                .expect("writer update");
            made += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        made
    })
}

/// A migration recreates a link table while `pg2es run` polls and a writer keeps changing films:
/// the triggers on it are gone, links deleted meanwhile are not logged. pg2es says so (WARN, which
/// tables lack which triggers, the fix); after `pg2es delete-capture install` it loads every film
/// again and reconciles, and the index converges with no other step.
/// A column dropped and added again, or altered, in place: the next pass loads every record.
#[tokio::test]
async fn a_column_changed_in_place_reloads_every_record() {
    let env = TestEnv::new("migp_column_in_place").await;
    common::columns_changed_in_place_reload_every_record(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_migration_that_recreates_a_table_is_warned_about_and_healed_after_install() {
    let env = TestEnv::new("dc_mig_recreate").await;
    delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.expect("install the delete capture");
    let log = env.dir.path().join("run.log");
    let mut child = spawn_run(&env, &log);
    common::eventually(Duration::from_secs(90), "the first full load", || async { env.try_count().await == Some(999) }).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(env.dsn.clone(), stop.clone());

    env.db.batch_execute(RECREATE_GENRE_LINKS).await.expect("the migration");
    // In the gap: links deleted (not logged), and a film deleted (logged by film_work's trigger,
    // but the log is no longer trusted from pg2es's position).
    let unlinked = films_with_genre_links(&env, 3).await;
    env.db.execute("DELETE FROM content.genre_film_work WHERE film_work_id = ANY($1)", &[&unlinked]).await.unwrap();
    let deleted: Uuid = env.scalar_uuid("SELECT id FROM content.film_work ORDER BY id OFFSET 500 LIMIT 1").await;
    env.sql(&format!("DELETE FROM content.film_work WHERE id = '{deleted}'")).await;

    log_shows(&log, "the delete capture is incomplete", Duration::from_secs(30)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("genre_film_work: pg2es_movies_deleted, pg2es_movies_moved, pg2es_movies_truncated"), "names the table and its triggers: {text}");
    assert!(text.contains("pg2es delete-capture install"), "names the fix: {text}");
    // Until the fix, the unlinked films' documents are stale: the case is real.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = env.verify().await;
    let stale = stale_ids(&report);
    assert!(unlinked.iter().all(|f| stale.contains(&f.to_string())), "unlinked films stale before the fix: {report:?}");
    assert!(report.extra.first.contains(&deleted.to_string()), "the deleted film's document is still there: {report:?}");
    // Once a minute at most: a single warning for the few seconds this took.
    assert_eq!(std::fs::read_to_string(&log).unwrap().matches("the delete capture is incomplete").count(), 1);

    let install = pg2es_command(&env.env_vars(), &["delete-capture", "install"]).output().unwrap();
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));
    let out = String::from_utf8_lossy(&install.stdout);
    assert!(out.contains("1 pg2es position(s) in the log were dropped"), "{out}");
    log_shows(&log, "delete capture found on an index loaded without it", Duration::from_secs(30)).await;
    log_shows(&log, "reconciled the index with postgres", Duration::from_secs(90)).await;

    stop.store(true, Ordering::Relaxed);
    let made = writer.await.unwrap();
    assert!(made > 0, "the writer changed films while pg2es ran");
    verify_until_clean(&env, Duration::from_secs(60)).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}: {}", std::fs::read_to_string(&log).unwrap());
    assert_binary_verify_clean(&env);
    env.cleanup().await;
}

/// Someone altered `pg2es.film_changes` so that inserts fail: the application's DELETEs fail,
/// and `install` refuses, naming the column and the fix. After the fix (drop the table, install
/// again) DELETEs work, and the next pass reloads (the unread rows went with the table) so that
/// verify is clean.
#[tokio::test]
async fn an_altered_log_table_is_refused_by_install_and_the_fix_converges() {
    let env = TestEnv::new("dc_mig_altered").await;
    delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.expect("install the delete capture");
    env.pass().await;
    // Logged, not read yet: lost with the table below.
    let [lost_link_film, later_film] = <[Uuid; 2]>::try_from(films_with_genre_links(&env, 2).await).unwrap();
    env.db.execute("DELETE FROM content.genre_film_work WHERE film_work_id = $1", &[&lost_link_film]).await.unwrap();

    env.db
        .batch_execute("ALTER TABLE pg2es.changes ADD COLUMN note text NOT NULL DEFAULT 'x'; ALTER TABLE pg2es.changes ALTER COLUMN note DROP DEFAULT")
        .await
        .unwrap();
    let err = env.db.execute("DELETE FROM content.genre_film_work WHERE film_work_id = $1", &[&later_film]).await.expect_err("the application's DELETE fails");
    assert!(err.as_db_error().is_some_and(|e| e.column() == Some("note")), "{err:?}");

    let install = pg2es_command(&env.env_vars(), &["delete-capture", "install"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&install.stderr);
    assert_eq!(install.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("column pg2es.changes.note is NOT NULL without a default"), "names the column and what differs: {stderr}");
    assert!(stderr.contains("DROP TABLE pg2es.changes CASCADE; then run `pg2es delete-capture install` again"), "names the fix: {stderr}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM pg_attribute WHERE attrelid = 'pg2es.changes'::regclass AND attname = 'note'").await,
        1,
        "nothing was changed"
    );

    env.sql("DROP TABLE pg2es.changes CASCADE").await;
    let install = pg2es_command(&env.env_vars(), &["delete-capture", "install"]).output().unwrap();
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));
    env.db.execute("DELETE FROM content.genre_film_work WHERE film_work_id = $1", &[&later_film]).await.expect("the application's DELETE works again");
    let report = env.verify().await;
    assert!(stale_ids(&report).contains(&lost_link_film.to_string()), "the lost delete left its film stale: {report:?}");

    let reports = env.pass().await;
    assert!(reports.iter().any(|r| r.records >= 999 && r.reconciled.is_some()), "every film loaded again, then reconciled: {reports:?}");
    let report = env.verify().await;
    assert!(report.is_consistent(), "{report:?}");
    assert_binary_verify_clean(&env);
    env.cleanup().await;
}

/// The first install on an index loaded without the triggers: deletes before it were not
/// recorded (a deleted link leaves its film stale), so the next pass loads every film again.
#[tokio::test]
async fn the_first_install_on_a_loaded_index_reloads() {
    let env = TestEnv::new("dc_first_install").await;
    env.pass().await;
    let [film] = <[Uuid; 1]>::try_from(films_with_genre_links(&env, 1).await).unwrap();
    env.db.execute("DELETE FROM content.genre_film_work WHERE film_work_id = $1", &[&film]).await.unwrap();
    env.pass().await;
    assert!(stale_ids(&env.verify().await).contains(&film.to_string()), "without the triggers the film stays stale");

    delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.expect("install the delete capture");
    let reports = env.pass().await;
    assert!(reports.iter().any(|r| r.records >= 999 && r.reconciled.is_some()), "{reports:?}");
    assert!(env.checkpoint().state().delete_log.is_some());
    assert!(env.verify().await.is_consistent());
    // From now on the log is read: no second reload.
    let reports = env.pass().await;
    assert!(reports.iter().all(|r| r.records < 999), "{reports:?}");
    assert_binary_verify_clean(&env);
    env.cleanup().await;
}

/// A polling run in a database where a pg2es replication slot was left behind says so, with the
/// WAL it retains and the fix; it never drops it.
#[tokio::test]
async fn a_polling_run_warns_of_a_replication_slot_left_behind() {
    let env = TestEnv::new("dc_slots").await;
    // The name replication mode would use for this index, another pg2es one, and one not ours.
    let slots = ["pg2es_pg2es_t_dc_slots", "pg2es_dc_slots_leftover", "dc_slots_not_pg2es"];
    for slot in slots {
        env.db.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await.expect("create a logical slot (wal_level=logical)");
    }
    let mut vars = env.env_vars();
    vars.push(("RUST_LOG".into(), "info".into()));
    let out = pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for slot in &slots[..2] {
        let line = log
            .lines()
            .find(|l| l.contains("a logical replication slot of pg2es exists") && l.contains(&format!("slot={slot} ")))
            .unwrap_or_else(|| panic!("no warning for {slot}: {log}"));
        assert!(line.contains("WARN") && line.contains("retained_bytes=") && line.contains(&format!("SELECT pg_drop_replication_slot('{slot}')")), "{line}");
    }
    assert!(!log.contains("slot=dc_slots_not_pg2es"), "{log}");
    assert_eq!(log.matches("a logical replication slot of pg2es exists").count(), 2, "once per run: {log}");
    let kept = env.scalar_i64("SELECT count(*) FROM pg_replication_slots WHERE database = 'pg2es_t_dc_slots'").await;
    assert_eq!(kept, 3, "no slot is dropped");
    assert!(env.verify().await.is_consistent(), "the run loaded the index all the same");
    env.cleanup().await;
}
