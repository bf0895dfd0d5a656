//! The write capture (`pg2es delete-capture install --writes`) on the real stack: writes that
//! leave `updated_at` alone, which polling by timestamps cannot see, reach the index.

mod common;

use std::time::Duration;

use common::TestEnv;
use pg2es::source::delete_log;

/// Passes until verify agrees, at most 30 (the log's window waits for write transactions open
/// anywhere on the server, such as another test cloning a database).
async fn passes_until_consistent(env: &TestEnv) {
    for _ in 0..30 {
        env.pass().await;
        if env.verify().await.is_consistent() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("not consistent after 30 passes: {:?}", env.verify().await);
}

/// Writes of every table that keep the rows' timestamps, as Django's `QuerySet.update()`,
/// `bulk_update()`, `save(update_fields=...)` and `loaddata` do.
const QUIET_WRITES: &str = "
    UPDATE content.film_work SET title = 'Renamed quietly' WHERE id = (SELECT id FROM content.film_work ORDER BY id LIMIT 1);
    UPDATE content.film_work SET rating = 1.5 WHERE id = (SELECT id FROM content.film_work ORDER BY id OFFSET 1 LIMIT 1);
    UPDATE content.person SET full_name = 'Quiet Person' WHERE id = (SELECT person_id FROM content.person_film_work ORDER BY id LIMIT 1);
    UPDATE content.genre SET name = 'Quiet genre' WHERE id = (SELECT genre_id FROM content.genre_film_work ORDER BY id LIMIT 1);
    UPDATE content.person_film_work SET role = 'director' WHERE id = (SELECT id FROM content.person_film_work WHERE role = 'actor' ORDER BY id OFFSET 3 LIMIT 1);
    INSERT INTO content.film_work (id, title, created_at, updated_at) VALUES ('00000000-0000-4000-8000-000000000001', 'Loaded with old stamps', '2001-01-01', '2001-01-01');
    INSERT INTO content.genre_film_work (id, genre_id, film_work_id, created_at, updated_at)
        SELECT gen_random_uuid(), (SELECT id FROM content.genre ORDER BY id LIMIT 1), '00000000-0000-4000-8000-000000000001', '2001-01-01', '2001-01-01';
    INSERT INTO content.person_film_work (id, film_work_id, person_id, role, created_at, updated_at)
        SELECT gen_random_uuid(), (SELECT id FROM content.film_work ORDER BY id OFFSET 7 LIMIT 1), (SELECT id FROM content.person ORDER BY id LIMIT 1), 'writer', '2001-01-01', '2001-01-01';
";

#[tokio::test]
async fn writes_that_keep_the_timestamps_reach_the_index() {
    let env = TestEnv::new("wc_quiet").await;
    delete_log::install_writes(&env.db, &common::capture(&env.db, "content").await).await.expect("install the write capture");
    env.pass().await;
    assert!(env.verify().await.is_consistent());
    env.db.batch_execute(QUIET_WRITES).await.unwrap();
    passes_until_consistent(&env).await;
    assert_eq!(env.doc("00000000-0000-4000-8000-000000000001").await["genre"].as_array().map(Vec::len), Some(1));
    // Deletes still reach it (the delete capture is part of it).
    env.sql("DELETE FROM content.person WHERE id = (SELECT person_id FROM content.person_film_work ORDER BY id LIMIT 1)").await;
    env.sql("DELETE FROM content.film_work WHERE id = '00000000-0000-4000-8000-000000000001'").await;
    passes_until_consistent(&env).await;
    env.cleanup().await;
}

/// The same writes with the delete capture alone: polling cannot see them (this is what the write
/// capture is for); installing it later loads every film again, and the index heals.
#[tokio::test]
async fn without_it_they_are_missed_and_installing_it_heals() {
    let env = TestEnv::new("wc_without").await;
    delete_log::install(&env.db, &common::capture(&env.db, "content").await).await.expect("install the delete capture");
    env.pass().await;
    env.db.batch_execute(QUIET_WRITES).await.unwrap();
    for _ in 0..3 {
        env.pass().await;
    }
    let stale = env.verify().await;
    assert!(!stale.is_consistent(), "polling by timestamps saw writes that keep them: {stale:?}");
    let installed = delete_log::install_writes(&env.db, &common::capture(&env.db, "content").await).await.expect("install the write capture");
    assert!(installed.positions_dropped >= 1, "{installed:?}");
    passes_until_consistent(&env).await;
    env.cleanup().await;
}

/// `print --writes` holds both parts, `remove` drops them all.
#[tokio::test]
async fn print_and_remove_cover_the_write_capture() {
    let env = TestEnv::new("wc_print").await;
    let o = common::pg2es_command(&env.env_vars(), &["delete-capture", "print", "--writes"]).output().unwrap();
    let sql = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success());
    for t in &common::capture(&env.db, "content").await.triggers {
        assert!(sql.contains(&format!("CREATE TRIGGER {} AFTER", t.name)) || sql.contains(&format!("CREATE TRIGGER {} BEFORE", t.name)), "{}", t.name);
    }
    let o = common::pg2es_command(&env.env_vars(), &["delete-capture", "install", "--writes"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(delete_log::status(&env.db, &common::capture(&env.db, "content").await).await.unwrap().writes_complete());
    // One write trigger gone (as a migration that recreates a table does): said, with the fix.
    env.sql("DROP TRIGGER pg2es_movies_updated ON content.film_work").await;
    let o = common::pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    assert!(log.contains("the write capture is incomplete") && log.contains("film_work: pg2es_movies_updated") && log.contains("install --writes"), "{log}");
    let o = common::pg2es_command(&env.env_vars(), &["delete-capture", "remove"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let left = env.scalar_i64("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pg2es%'").await;
    assert_eq!(left, 0);
    env.cleanup().await;
}
