//! Deletes reach the index, against the real stack: through the delete log's triggers, and
//! through reconciliation where no trigger is installed.

mod common;

use common::TestEnv;
use pg2es::pipeline::CycleReport;
use pg2es::shutdown::Shutdown;
use serde_json::Value;

/// Passes until `done` holds, at most 30 (deletes wait for write transactions still open anywhere
/// on the server, such as another test cloning a database). Returns every cycle's report.
async fn passes_until<F, Fut>(env: &TestEnv, what: &str, mut done: F) -> Vec<CycleReport>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut all = Vec::new();
    for _ in 0..30 {
        all.extend(env.pass().await);
        if done().await {
            return all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{what}: not done after 30 passes: {all:?}");
}

fn sum(reports: &[CycleReport], field: fn(&CycleReport) -> usize) -> usize {
    reports.iter().map(field).sum()
}

async fn assert_consistent(env: &TestEnv) {
    let (_t, shutdown) = Shutdown::new();
    let report = pg2es::verify::verify(&env.config(), &shutdown).await.expect("verify");
    assert!(report.is_consistent(), "the index differs from Postgres: {report:?}");
}

async fn exists(env: &TestEnv, id: &str) -> bool {
    let v: Value = env.http.get(format!("{}/{}/_doc/{id}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
    v["found"] == Value::Bool(true)
}

async fn first_film_with(env: &TestEnv, sql_condition: &str) -> String {
    env.scalar_uuid(&format!("SELECT fw.id FROM content.film_work fw WHERE {sql_condition} ORDER BY fw.id LIMIT 1")).await.to_string()
}

async fn install_triggers(env: &TestEnv) {
    pg2es::source::delete_log::install(&env.db, &common::capture(&env.db, "content").await).await.expect("install the delete capture triggers");
}

#[tokio::test]
async fn with_the_triggers_every_kind_of_delete_reaches_the_index() {
    let env = TestEnv::new("del_triggers").await;
    install_triggers(&env).await;
    env.pass().await;
    assert_eq!(env.count().await, 999);

    // A film: its document goes.
    let film = first_film_with(&env, "true").await;
    env.sql(&format!("DELETE FROM content.film_work WHERE id = '{film}'")).await;
    let r = passes_until(&env, "film document deleted", || async { !exists(&env, &film).await }).await;
    assert_eq!(sum(&r, |r| r.deleted), 1, "{r:?}");

    // A genre link: the film loses the genre.
    let film = first_film_with(&env, "(SELECT count(*) FROM content.genre_film_work g WHERE g.film_work_id = fw.id) >= 2").await;
    let genre: String = env.db.query_one(&format!("SELECT g.name FROM content.genre g JOIN content.genre_film_work l ON l.genre_id = g.id WHERE l.film_work_id = '{film}' ORDER BY g.name LIMIT 1"), &[]).await.unwrap().get(0);
    env.sql(&format!(
        "DELETE FROM content.genre_film_work l USING content.genre g WHERE l.genre_id = g.id AND l.film_work_id = '{film}' AND g.name = '{genre}'"
    ))
    .await;
    passes_until(&env, "genre gone from the film", || async {
        !env.doc(&film).await["genre"].as_array().unwrap().iter().any(|g| g == &Value::String(genre.clone()))
    })
    .await;

    // A person link: the film loses the person.
    let film = first_film_with(&env, "EXISTS (SELECT 1 FROM content.person_film_work p WHERE p.film_work_id = fw.id AND p.role = 'actor')").await;
    let actor: String = env.db.query_one(&format!("SELECT p.full_name FROM content.person p JOIN content.person_film_work l ON l.person_id = p.id WHERE l.film_work_id = '{film}' AND l.role = 'actor' ORDER BY p.id LIMIT 1"), &[]).await.unwrap().get(0);
    env.sql(&format!("DELETE FROM content.person_film_work l USING content.person p WHERE l.person_id = p.id AND l.film_work_id = '{film}' AND p.full_name = '{}' AND l.role = 'actor'", actor.replace('\'', "''"))).await;
    passes_until(&env, "actor gone from the film", || async {
        !env.doc(&film).await["actors_names"].as_array().unwrap().iter().any(|a| a == &Value::String(actor.clone()))
    })
    .await;

    // A person in several films, and a genre: every film that had them is rebuilt.
    let person = env
        .scalar_uuid("SELECT person_id FROM content.person_film_work GROUP BY person_id HAVING count(DISTINCT film_work_id) >= 2 ORDER BY person_id LIMIT 1")
        .await;
    let films_of_person = env.scalar_i64(&format!("SELECT count(DISTINCT film_work_id) FROM content.person_film_work WHERE person_id = '{person}'")).await;
    env.sql(&format!("DELETE FROM content.person WHERE id = '{person}'")).await;
    let genre = env.scalar_uuid("SELECT genre_id FROM content.genre_film_work GROUP BY genre_id ORDER BY count(*) LIMIT 1").await;
    env.sql(&format!("DELETE FROM content.genre WHERE id = '{genre}'")).await;
    let r = passes_until(&env, "person and genre gone from every film", || async { env.verify().await.is_consistent() }).await;
    assert!(sum(&r, |r| r.logged) as i64 >= films_of_person, "{r:?}");
    env.cleanup().await;
}

/// TRUNCATE with the triggers: the log asks for a reload, and the same `--once` pass does it.
#[tokio::test]
async fn with_the_triggers_a_truncate_reloads_the_catalog() {
    let env = TestEnv::new("del_truncate").await;
    install_triggers(&env).await;
    env.pass().await;
    env.sql("TRUNCATE content.person_film_work").await;
    let film = first_film_with(&env, "true").await;
    let reports = passes_until(&env, "people gone from every film", || async { env.verify().await.is_consistent() }).await;
    assert!(reports.iter().any(|r| r.records == 999), "the reload re-indexed every film: {reports:?}");
    assert_eq!(env.doc(&film).await["actors_names"], serde_json::json!([]));

    env.sql("TRUNCATE content.film_work CASCADE").await;
    passes_until(&env, "every document deleted", || async { env.count().await == 0 }).await;
    assert_consistent(&env).await;
    env.cleanup().await;
}

/// Without the triggers, reconciliation removes the documents of deleted films (not the
/// people or genres of deleted links: that needs the triggers).
#[tokio::test]
async fn without_triggers_reconciliation_removes_deleted_films() {
    let mut env = TestEnv::new("del_reconcile").await;
    env.extra_env.push(("ETL_RECONCILE_SEC".into(), "1".into()));
    env.pass().await;
    env.sql("DELETE FROM content.film_work WHERE id IN (SELECT id FROM content.film_work ORDER BY id DESC LIMIT 3)").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = env.pass().await;
    assert_eq!((r[0].reconciled, r[0].deleted), (Some(999), 3), "{r:?}");
    assert_eq!(env.count().await, 996);
    assert_consistent(&env).await;

    env.sql("TRUNCATE content.film_work CASCADE").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    env.pass().await;
    assert_eq!(env.count().await, 0);
    env.cleanup().await;
}

/// A state whose index already held documents (deleted state file, reload): the full load is
/// followed by reconciliation, so documents of films deleted meanwhile go.
#[tokio::test]
async fn a_full_load_into_a_used_index_removes_documents_of_gone_films() {
    let env = TestEnv::new("del_reload").await;
    env.pass().await;
    env.sql("DELETE FROM content.film_work WHERE id IN (SELECT id FROM content.film_work ORDER BY id LIMIT 2)").await;
    std::fs::remove_file(env.state_file()).unwrap();
    let r = env.pass().await;
    assert_eq!(r[0].deleted, 2, "{r:?}");
    assert_eq!(env.count().await, 997);
    env.cleanup().await;
}
