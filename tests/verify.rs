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

/// Copies of a document under other `_id`s (written by another tool, say) share its `id`: paging
/// by `id`, a page that ends on that `id` stepped over the copies beyond it, and verify found the
/// index consistent. They are extra, and repair deletes them and keeps the document.
#[tokio::test]
async fn copies_sharing_an_id_across_a_page_boundary_are_extra() {
    let mut env = TestEnv::new("verify_copies").await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "7".into()));
    env.run_once().await;
    let end_of_page = film_id(&env, "SELECT id::text FROM content.film_work ORDER BY id LIMIT 1 OFFSET 6").await;
    let real = env.doc(&end_of_page).await;
    let mut copies = vec![random_uuid(&env).await, random_uuid(&env).await];
    for copy in &copies {
        es(&env, reqwest::Method::PUT, &format!("_doc/{copy}"), Some(real.clone())).await;
    }
    env.refresh().await;
    let report = check(&env).await;
    assert_eq!((report.missing.count, report.stale.count, report.extra.count), (0, 0, 2), "{report:?}");
    let mut extra = report.extra.first.clone();
    extra.sort();
    copies.sort();
    assert_eq!(extra, copies);

    let out = run(&env, &["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let after = check(&env).await;
    assert!(after.is_consistent(), "{after:?}");
    assert_eq!(env.doc(&end_of_page).await, real);
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

/// `verify --repair` writes every difference again from Postgres, pages of 7 so that they sit
/// across page boundaries: records missing from the index, documents edited in the index, a
/// change polling never sees (an UPDATE that leaves `updated_at` alone), a deleted record, a
/// stray document and one without an `id`. Verify then finds nothing, and run finds nothing to do.
#[tokio::test]
async fn repair_writes_each_difference_again_and_verify_then_finds_none() {
    let mut env = TestEnv::new("verify_repair").await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "7".into()));
    env.run_once().await;
    let nth = |n: usize| format!("SELECT id::text FROM content.film_work ORDER BY id LIMIT 1 OFFSET {n}");
    let (gone_a, gone_b, edited, unseen, deleted) = (
        film_id(&env, &nth(6)).await,
        film_id(&env, &nth(7)).await,
        film_id(&env, &nth(13)).await,
        film_id(&env, &nth(14)).await,
        film_id(&env, &nth(20)).await,
    );
    let (stray, no_id) = (random_uuid(&env).await, random_uuid(&env).await);
    es(&env, reqwest::Method::DELETE, &format!("_doc/{gone_a}"), None).await;
    es(&env, reqwest::Method::DELETE, &format!("_doc/{gone_b}"), None).await;
    es(&env, reqwest::Method::POST, &format!("_update/{edited}"), Some(json!({"doc": {"title": "Edited in the index"}}))).await;
    es(&env, reqwest::Method::PUT, &format!("_doc/{stray}"), Some(json!({"id": stray, "title": "Not a film"}))).await;
    es(&env, reqwest::Method::PUT, &format!("_doc/{no_id}"), Some(json!({"title": "No id field"}))).await;
    env.sql(&format!("UPDATE content.film_work SET title = 'Changed behind the change column' WHERE id = '{unseen}'")).await;
    env.sql(&format!("DELETE FROM content.film_work WHERE id = '{deleted}'")).await;
    env.refresh().await;
    let before = check(&env).await;
    assert_eq!((before.missing.count, before.stale.count, before.extra.count), (2, 2, 3), "{before:?}");

    let out = run(&env, &["verify", "--repair", "--json"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(
        (report["missing"]["count"].as_u64(), report["stale"]["count"].as_u64(), report["extra"]["count"].as_u64()),
        (Some(2), Some(2), Some(3)),
        "{report}"
    );
    // The first pass wrote 4 and deleted 3; the second found nothing.
    assert_eq!(report["repaired"], json!({"indexed": 4, "deleted": 3, "older_than_index": 0, "dead_lettered": 0, "passes": 2}), "{report}");
    assert!(stderr.contains("4 documents indexed, 3 deleted"), "{stderr}");

    let after = check(&env).await;
    assert!(after.is_consistent(), "{after:?}");
    assert_eq!(after.checked, 998);
    assert_eq!(env.doc(&unseen).await["title"], "Changed behind the change column");
    assert_eq!(env.doc(&edited).await["title"], film_id(&env, &format!("SELECT title FROM content.film_work WHERE id = '{edited}'")).await);
    // The versions are the pipeline's own scale: its next pass rewrites nothing and loses nothing.
    let next = env.run_once().await;
    assert_eq!((next.older, next.dead_lettered), (0, 0), "{next:?}");
    assert!(check(&env).await.is_consistent());
    env.cleanup().await;
}

/// A repair while `pg2es run` keeps the index and a writer keeps renaming films: versioned
/// writes keep the newer state of each document whichever process wrote it, and the index ends
/// equal to Postgres once the writer stops. The 40 documents deleted or edited in the index are
/// ones the writer leaves alone, so only the repair can mend them; the renamed ones are stale
/// while `run` is a cycle behind, so the repair writes them too, racing `run`. Bounded: 150
/// renames, one repair.
#[tokio::test]
async fn repair_beside_a_running_pipeline_and_a_writer_ends_equal() {
    let mut env = TestEnv::new("verify_repair_live").await;
    env.extra_env.push(("ETL_CYCLE_SEC".into(), "0.5".into()));
    let mut pipeline = pg2es(&env, &["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start pg2es run");
    common::eventually(Duration::from_secs(60), "the running pipeline loads 999 documents", || async { env.try_count().await == Some(999) }).await;
    // Differences run never sees by itself: documents gone from the index and edited in it.
    let films: Vec<String> =
        env.db.query("SELECT id::text FROM content.film_work ORDER BY id LIMIT 100", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    for film in &films[..20] {
        es(&env, reqwest::Method::DELETE, &format!("_doc/{film}"), None).await;
    }
    for film in &films[20..40] {
        es(&env, reqwest::Method::POST, &format!("_update/{film}"), Some(json!({"doc": {"title": "Edited in the index"}}))).await;
    }
    env.refresh().await;

    let writer = {
        let dsn = env.dsn.clone();
        let renamed = films[40..].to_vec();
        tokio::spawn(async move {
            let db = common::connect(&dsn).await;
            for n in 0..150 {
                let film = &renamed[n % renamed.len()];
                db.execute("UPDATE content.film_work SET title = $1, updated_at = now() WHERE id::text = $2", &[&format!("Renamed {n}"), film])
                    .await
                    .expect("rename");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The writer runs on this test's runtime: the repair waits on a thread of its own.
    let mut repair = pg2es(&env, &["verify", "--repair"]);
    let repair = tokio::task::spawn_blocking(move || repair.output().expect("run pg2es")).await.expect("repair");
    let (stdout, stderr) = (String::from_utf8_lossy(&repair.stdout), String::from_utf8_lossy(&repair.stderr));
    writer.await.expect("writer");
    // Refusals as older are `run`'s newer writes winning, which the exit code may report.
    assert!(repair.status.code() == Some(0) || repair.status.code() == Some(1), "{stdout}{stderr}");
    let indexed: u64 =
        stdout.split("repaired: ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{stdout}{stderr}"));
    assert!(indexed >= 40, "the 40 documents only the repair mends: {stdout}");

    common::eventually(Duration::from_secs(60), "the index equals postgres after the writer stopped", || async {
        env.refresh().await;
        check(&env).await.is_consistent()
    })
    .await;
    let _ = pipeline.kill();
    let _ = pipeline.wait();
    env.cleanup().await;
}

/// During the first full load verify counts every record not reached yet as missing: a repair
/// then would only race the load, and is refused with what to do.
#[tokio::test]
async fn repair_is_refused_while_the_full_load_is_unfinished() {
    let env = TestEnv::new("verify_repair_refused").await;
    env.run_once().await;
    let mut state: Value = serde_json::from_slice(&std::fs::read(env.state_file()).unwrap()).unwrap();
    state["snapshot"] = json!({"after": null, "done": false});
    std::fs::write(env.state_file(), serde_json::to_vec(&state).unwrap()).unwrap();
    let out = run(&env, &["verify", "--repair"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused: the full load of index") && stderr.contains("Let `pg2es run` finish it"), "{stderr}");
    env.cleanup().await;
}
