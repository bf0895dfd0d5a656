//! Upgrading from the release before definitions: its state file and its delete capture keep
//! working, and nothing is loaded again.

mod common;

use common::TestEnv;
use pg2es::source::delete_log::{self, LogDocument};

/// A state file the previous release wrote (tests/fixtures/legacy/state.json, after a full load
/// of the reference catalog), bound to this test's database and index.
async fn legacy_state(env: &TestEnv) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/legacy/state.json")).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let row = env.db.query_one("SELECT system_identifier::text, current_database()::text FROM pg_control_system()", &[]).await.unwrap();
    state["source"]["system_identifier"] = row.get::<_, String>(0).into();
    state["source"]["database"] = row.get::<_, String>(1).into();
    state["index"] = env.index.clone().into();
    serde_json::to_string_pretty(&state).unwrap()
}

#[tokio::test]
async fn a_state_file_of_the_previous_release_loads_nothing_again() {
    let env = TestEnv::new("up_state").await;
    assert_eq!(env.pass().await.iter().map(|r| r.records).sum::<usize>(), 999);
    std::fs::write(env.state_file(), legacy_state(&env).await).unwrap();
    let reports = env.pass().await;
    assert_eq!(reports.iter().map(|r| r.records).sum::<usize>(), 0, "{reports:?}");
    // It goes on from its watermarks: a change after them is loaded.
    env.sql("UPDATE content.film_work SET title = 'After the upgrade', updated_at = now() WHERE id = (SELECT id FROM content.film_work ORDER BY id LIMIT 1)")
        .await;
    let reports = env.pass().await;
    assert_eq!(reports.iter().map(|r| r.records).sum::<usize>(), 1, "{reports:?}");
    assert!(env.verify().await.is_consistent());
    env.cleanup().await;
}

/// The previous release's triggers, installed as it did, are replaced by `install` in one
/// transaction: the positions stay (no reload), rows they logged are read by the first document,
/// and no trigger of theirs remains.
#[tokio::test]
async fn install_replaces_the_previous_triggers_and_keeps_the_positions() {
    let env = TestEnv::new("up_triggers").await;
    let legacy = |file: &str| {
        std::fs::read_to_string(format!("{}/tests/fixtures/legacy/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap().replace("{schema}", "\"content\"")
    };
    env.db.batch_execute(&legacy("delete_capture.sql")).await.unwrap();
    env.db.batch_execute(&legacy("write_capture.sql")).await.unwrap();
    let old_triggers = "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE p.proname LIKE 'log\\_%'";
    assert_eq!(env.scalar_i64(old_triggers).await, 12 + 8);
    let from = delete_log::boundary(&env.db).await.unwrap();
    delete_log::acknowledge(&env.db, "content", "a", from).await.unwrap();
    // A delete logged by the old triggers, before the upgrade.
    let film: uuid::Uuid = env.db.query_one("SELECT id FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    env.db.execute("DELETE FROM content.film_work WHERE id = $1", &[&film]).await.unwrap();

    let set = common::capture(&env.db, "content").await;
    let installed = delete_log::install_writes(&env.db, &set).await.unwrap();
    assert_eq!((installed.positions_dropped, installed.replaced_legacy), (0, true));
    assert_eq!(env.scalar_i64(old_triggers).await, 0);
    assert!(delete_log::status(&env.db, &set).await.unwrap().writes_complete());
    assert!(delete_log::is_consumer(&env.db, "content", "a").await.unwrap());

    // A delete after the upgrade, logged by the generated triggers for the movies document.
    let second: uuid::Uuid = env.db.query_one("SELECT id FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    env.db.execute("DELETE FROM content.film_work WHERE id = $1", &[&second]).await.unwrap();
    let to = delete_log::boundary(&env.db).await.unwrap();
    let movies = LogDocument { name: "movies".into(), first: true, shape: delete_log::LogShape::Keyed };
    let page = delete_log::keys_between(&env.db, "content", &movies, from, to, None, 10).await.unwrap();
    assert!(page.keys.contains(&film.to_string()) && page.keys.contains(&second.to_string()), "{page:?}");
    // Another document does not read the rows of the old triggers.
    let genres = LogDocument { name: "genres".into(), first: false, shape: delete_log::LogShape::Keyed };
    assert!(delete_log::keys_between(&env.db, "content", &genres, from, to, None, 10).await.unwrap().keys.is_empty());
    env.cleanup().await;
}

/// Upgraded but not installed yet: the previous release's capture is read for the first
/// document (no position lost, no reload), and `install` later replaces it without a reload.
#[tokio::test]
async fn before_install_the_previous_capture_is_read_and_install_reloads_nothing() {
    let mut env = TestEnv::new("up_before_install").await;
    // Deletes reach the index only through the log: no reconciliation.
    env.extra_env.push(("ETL_RECONCILE_SEC".into(), "0".into()));
    let legacy = |file: &str| {
        std::fs::read_to_string(format!("{}/tests/fixtures/legacy/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap().replace("{schema}", "\"content\"")
    };
    env.db.batch_execute(&legacy("delete_capture.sql")).await.unwrap();
    let records = |reports: &[pg2es::pipeline::CycleReport]| reports.iter().map(|r| r.records).sum::<usize>();
    let deleted = |reports: &[pg2es::pipeline::CycleReport]| reports.iter().map(|r| r.deleted).sum::<usize>();
    assert_eq!(records(&env.pass().await), 999);
    assert!(env.checkpoint().state().delete_log.is_some(), "the previous capture's log was adopted");
    let film = || async { env.db.query_one("SELECT id FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get::<_, uuid::Uuid>(0) };
    let first = film().await;
    env.db.execute("DELETE FROM content.film_work WHERE id = $1", &[&first]).await.unwrap();
    let reports = env.pass().await;
    assert_eq!((records(&reports), deleted(&reports)), (0, 1), "the delete came through the previous triggers' log: {reports:?}");

    let set = common::capture(&env.db, "content").await;
    assert_eq!(delete_log::install(&env.db, &set).await.unwrap().positions_dropped, 0);
    let second = film().await;
    env.db.execute("DELETE FROM content.film_work WHERE id = $1", &[&second]).await.unwrap();
    let reports = env.pass().await;
    assert_eq!((records(&reports), deleted(&reports)), (0, 1), "no reload after install, and the generated triggers' delete is read: {reports:?}");
    assert!(env.verify().await.is_consistent());
    env.cleanup().await;
}
