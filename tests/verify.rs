//! `pg2es verify` against the real stack: a clean load, then each kind of difference, made by
//! writing to Elasticsearch or Postgres behind the pipeline's back.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TestEnv;
use pg2es::shutdown::Shutdown;
use pg2es::verify::{verify, StaleDocument, VerifyReport};
use pg2es::Error;
use serde_json::{json, Value};

async fn check(env: &TestEnv) -> VerifyReport {
    let (_trigger, shutdown) = Shutdown::new();
    verify(&env.config(), &shutdown).await.expect("verify")
}

/// Sends a request to the test's index and fails on any status but 2xx.
async fn es(env: &TestEnv, method: reqwest::Method, path: &str, body: Option<Value>) {
    let mut req = env.http.request(method, format!("{}/{}/{path}", env.es, env.index));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("reach elasticsearch");
    let status = resp.status();
    assert!(status.is_success(), "{path}: {status} {}", resp.text().await.unwrap_or_default());
}

async fn film_id(env: &TestEnv, sql: &str) -> String {
    env.db.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

async fn random_uuid(env: &TestEnv) -> String {
    film_id(env, "SELECT gen_random_uuid()::text").await
}

#[tokio::test]
async fn a_postgres_change_not_yet_loaded_is_stale() {
    let env = TestEnv::new("verify_pg_change").await;
    env.run_once().await;
    let report = check(&env).await;
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.checked, 999);

    let film = film_id(&env, "SELECT id::text FROM content.film_work ORDER BY id LIMIT 1 OFFSET 500").await;
    env.sql(&format!("UPDATE content.film_work SET title = 'Changed in postgres', updated_at = now() WHERE id = '{film}'")).await;
    let report = check(&env).await;
    assert_eq!(report.stale.count, 1, "{report:?}");
    assert_eq!(report.stale.first, [StaleDocument { id: film.clone(), field: "title".into() }]);
    assert_eq!((report.missing.count, report.extra.count, report.checked), (0, 0, 999));

    // The pipeline's next cycle is what verify said was owed.
    env.run_once().await;
    assert!(check(&env).await.is_consistent());
    env.cleanup().await;
}

/// Pages of 7: the differences sit on both sides of a page boundary and at the very end.
#[tokio::test]
async fn small_pages_find_each_difference_by_id() {
    let mut env = TestEnv::new("verify_pages").await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "7".into()));
    env.run_once().await;
    let report = check(&env).await;
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.checked, 999);

    let end_of_page = film_id(&env, "SELECT id::text FROM content.film_work ORDER BY id LIMIT 1 OFFSET 6").await;
    let start_of_page = film_id(&env, "SELECT id::text FROM content.film_work ORDER BY id LIMIT 1 OFFSET 7").await;
    let last = film_id(&env, "SELECT id::text FROM content.film_work ORDER BY id DESC LIMIT 1").await;
    let (stray, no_id) = (random_uuid(&env).await, random_uuid(&env).await);
    es(&env, reqwest::Method::DELETE, &format!("_doc/{end_of_page}"), None).await;
    es(&env, reqwest::Method::DELETE, &format!("_doc/{last}"), None).await;
    es(&env, reqwest::Method::POST, &format!("_update/{start_of_page}"), Some(json!({"doc": {"title": "Edited in the index"}}))).await;
    es(&env, reqwest::Method::PUT, &format!("_doc/{stray}"), Some(json!({"id": stray, "title": "Not a film"}))).await;
    es(&env, reqwest::Method::PUT, &format!("_doc/{no_id}"), Some(json!({"title": "No id field"}))).await;
    env.refresh().await;

    let report = check(&env).await;
    assert_eq!(report.checked, 999);
    assert_eq!(report.missing.count, 2, "{report:?}");
    assert_eq!(report.missing.first, [end_of_page, last]);
    assert_eq!(report.stale.count, 1, "{report:?}");
    assert_eq!(report.stale.first, [StaleDocument { id: start_of_page, field: "title".into() }]);
    assert_eq!(report.extra.count, 2, "{report:?}");
    let mut extra = report.extra.first.clone();
    extra.sort();
    let mut want = vec![stray, no_id];
    want.sort();
    assert_eq!(extra, want);
    let table = report.render();
    assert!(table.contains("hint: 2 extra documents: records deleted in Postgres; reconciliation deletes their documents"), "{table}");
    assert!(table.contains("hint: 1 stale document: a change not loaded yet"), "{table}");
    assert!(table.contains("hint: 2 missing documents: records not loaded yet"), "{table}");
    env.cleanup().await;
}

/// Without the delete capture triggers (and before reconciliation is due), a film deleted in
/// Postgres stays in the index, and a person taken off a film stays in its document. Verify finds
/// both and says why.
#[tokio::test]
async fn deletes_in_postgres_show_as_extra_and_stale_with_the_reason() {
    const DELETES_HINT: &str = "records deleted in Postgres; reconciliation deletes their documents within ETL_RECONCILE_SEC (at the next cycle with the delete capture triggers: README, 'Deletes')";
    let env = TestEnv::new("verify_deletes").await;
    env.run_once().await;
    let deleted = film_id(&env, "SELECT id::text FROM content.film_work ORDER BY id LIMIT 1 OFFSET 10").await;
    let unlinked = film_id(&env, "SELECT film_work_id::text FROM content.person_film_work WHERE role = 'actor' ORDER BY film_work_id LIMIT 1").await;
    env.sql(&format!("DELETE FROM content.film_work WHERE id = '{deleted}'")).await;
    env.sql(&format!("DELETE FROM content.person_film_work WHERE film_work_id = '{unlinked}' AND role = 'actor'")).await;
    env.run_once().await;

    let report = check(&env).await;
    assert_eq!(report.extra.first, [deleted], "{report:?}");
    assert_eq!(report.stale.first, [StaleDocument { id: unlinked, field: "actors".into() }], "{report:?}");
    assert_eq!((report.missing.count, report.checked), (0, 998));
    let hints = report.hints();
    assert!(hints.contains(&format!("1 extra document: {DELETES_HINT}")), "{hints:?}");
    assert!(hints.iter().any(|h| h.starts_with("1 stale document:") && h.contains("link deleted in Postgres")), "{hints:?}");

    let out = run(&env, &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("verify --json prints JSON");
    assert_eq!(json["hints"], json!(hints));
    env.cleanup().await;
}

fn pg2es(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg2es"));
    cmd.args(args).env_clear().envs(env.env_vars());
    cmd
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    pg2es(env, args).output().expect("run pg2es")
}

/// The binary's exit code says whether the index is consistent, and verify takes no lock: it
/// runs while `pg2es run` holds the state file.
#[tokio::test]
async fn the_binary_exits_1_on_a_difference_beside_a_running_pipeline() {
    let env = TestEnv::new("verify_bin").await;
    let mut pipeline = pg2es(&env, &["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start pg2es run");
    common::eventually(Duration::from_secs(60), "the running pipeline loads 999 documents", || async { env.try_count().await == Some(999) }).await;

    let clean = run(&env, &["verify"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&clean.stdout), String::from_utf8_lossy(&clean.stderr));
    assert_eq!(clean.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("checked") && l.ends_with(" 999")), "{stdout}");

    let film = film_id(&env, "SELECT id::text FROM content.film_work ORDER BY id LIMIT 1").await;
    es(&env, reqwest::Method::DELETE, &format!("_doc/{film}"), None).await;
    env.refresh().await;
    let differs = run(&env, &["verify", "--json"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&differs.stdout), String::from_utf8_lossy(&differs.stderr));
    assert_eq!(differs.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("differs from postgres: 1 missing, 0 stale, 0 extra of 999 records checked"), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(report["missing"], json!({"count": 1, "first": [film]}));

    let _ = pipeline.kill();
    let _ = pipeline.wait();
    env.cleanup().await;
}

/// Without an index there is nothing to compare: verify says so and what to do, through the
/// library and the binary, instead of Elasticsearch's `index_not_found_exception`.
#[tokio::test]
async fn a_missing_index_is_named_with_a_hint() {
    let env = TestEnv::new("verify_no_index").await;
    let (_trigger, shutdown) = Shutdown::new();
    let err = verify(&env.config(), &shutdown).await.expect_err("verify without an index");
    assert!(matches!(err, Error::ElasticsearchStatus { status: 404, .. }), "{err:?}");
    let want = format!("index '{}' does not exist: run `pg2es run` first, or check ES_URL and ES_INDEX", env.index);
    assert!(err.to_string().contains(&want), "{err}");

    let out = run(&env, &["verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!stderr.contains("index_not_found_exception") && !stderr.contains('{'), "raw elasticsearch json: {stderr}");
    env.cleanup().await;
}

/// An index made with another mapping (here `id` as text, which cannot be sorted on) is refused
/// with the first path that differs from ES_SCHEMA_FILE, as `pg2es run` refuses it.
#[tokio::test]
async fn an_index_with_another_mapping_names_the_first_difference() {
    let env = TestEnv::new("verify_other_mapping").await;
    let mut definition: Value = serde_json::from_str(&std::fs::read_to_string(common::schema_file()).unwrap()).unwrap();
    definition["mappings"]["properties"]["id"] = json!({"type": "text"});
    let resp = env.http.put(format!("{}/{}", env.es, env.index)).json(&definition).send().await.expect("reach elasticsearch");
    assert!(resp.status().is_success(), "create index: {}", resp.text().await.unwrap_or_default());

    let (_trigger, shutdown) = Shutdown::new();
    let err = verify(&env.config(), &shutdown).await.expect_err("verify against another mapping");
    let Error::MappingConflict { index, difference } = &err else { panic!("not a mapping conflict: {err:?}") };
    assert_eq!(index, &env.index);
    assert_eq!(difference, r#"mappings.properties.id.type: expected "keyword", found "text""#);

    let out = run(&env, &["verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("index '{}' exists with a different mapping (mappings.properties.id.type", env.index)), "{stderr}");
    assert!(!stderr.contains("exception"), "raw elasticsearch json: {stderr}");
    env.cleanup().await;
}
