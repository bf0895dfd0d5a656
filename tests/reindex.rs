//! `pg2es reindex` on the real stack: a rebuild while `pg2es run` keeps the index and a writer
//! keeps changing films, with a search loop running the whole time; and a rebuild while `run` is
//! stopped, taken over at its next start without a reload.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestEnv;
use serde_json::Value;

fn reindex(vars: &[(String, String)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["reindex"];
    all.extend_from_slice(args);
    let out = common::pg2es_command(vars, &all).output().expect("run pg2es reindex");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The indexes the name points at (`None`: it is not an alias).
async fn alias_of(env: &TestEnv) -> Option<Vec<String>> {
    let resp = env.http.get(format!("{}/_alias/{}", env.es, env.index)).send().await.unwrap();
    if resp.status() == 404 {
        return None;
    }
    let v: Value = resp.json().await.unwrap();
    let mut names: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    names.sort();
    Some(names)
}

/// A fresh environment without the rebuilds an earlier, failed run of the test left.
async fn fresh(name: &str) -> TestEnv {
    cleared(TestEnv::new(name).await).await
}

async fn cleared(env: TestEnv) -> TestEnv {
    for n in 1..=3 {
        let _ = env.http.delete(format!("{}/{}_{n}", env.es, env.index)).send().await;
    }
    env.delete_index().await;
    env
}

async fn exists(env: &TestEnv, index: &str) -> bool {
    env.http.head(format!("{}/{index}", env.es)).send().await.unwrap().status() == 200
}

/// Renames random films of `films` every 15 ms until told to stop (at most 3,000), counting them.
fn writer(dsn: &str, films: Vec<String>, stop: Arc<AtomicBool>, renames: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let dsn = dsn.to_string();
    tokio::spawn(async move {
        let db = common::connect(&dsn).await;
        let mut rng = common::Rng::from_clock("reindex writer");
        for n in 0..3_000u64 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let film = &films[(rng.next() % films.len() as u64) as usize];
            db.execute("UPDATE content.film_work SET title = $1, updated_at = now() WHERE id::text = $2", &[&format!("Renamed during the rebuild {n}"), film])
                .await
                .expect("rename");
            renames.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    })
}

/// Searches the name every 20 ms until told to stop: counts answers that are not a 200 with hits.
fn search_loop(env: &TestEnv, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64, Vec<String>)> {
    let (http, url) = (env.http.clone(), format!("{}/{}/_search?q=title:*&size=1", env.es, env.index));
    tokio::spawn(async move {
        let (mut ok, mut bad, mut why) = (0u64, 0u64, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match http.get(&url).timeout(Duration::from_secs(5)).send().await {
                Ok(resp) if resp.status() == 200 => {
                    let body: Value = resp.json().await.unwrap_or_default();
                    if body["hits"]["total"]["value"].as_u64().unwrap_or(0) > 0 {
                        ok += 1;
                    } else {
                        bad += 1;
                        why.push(format!("no hits: {body}"));
                    }
                }
                Ok(resp) => {
                    bad += 1;
                    why.push(format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default()));
                }
                Err(e) => {
                    bad += 1;
                    why.push(e.to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, bad, why)
    })
}

/// Three rebuilds while `run` keeps the index and a writer renames films; the renames made during
/// each are in the new index, and `verify` finds no difference at the end. The first turns the
/// concrete index into an alias, deleting the old index in the same step, which fails a search
/// under way on it at that instant: the search loop starts after it. During the next two (the
/// old index deleted 5 s after the move, then kept with `--keep-old`) search never fails and
/// never comes back empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_a_writer_keeps_search_serving_and_loses_no_write() {
    let env = fresh("reindex_live").await;
    let vars = env.env_vars();
    let log = env.dir.path().join("run.log");
    let mut run = common::spawn_run(&env, &log);
    common::eventually(Duration::from_secs(60), "the running pipeline loads 999 documents", || async { env.try_count().await == Some(999) }).await;
    let films: Vec<String> = env.db.query("SELECT id::text FROM content.film_work ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let renames = Arc::new(AtomicU64::new(0));
    let writer = writer(&env.dsn, films, stop.clone(), renames.clone());

    let rebuild = |args: &'static [&'static str]| {
        let vars = vars.clone();
        async move {
            let (code, stdout, stderr) = tokio::task::spawn_blocking(move || reindex(&vars, args)).await.unwrap();
            assert_eq!(code, Some(0), "{stdout}{stderr}");
            stdout
        }
    };
    let converted = rebuild(&[]).await;
    let first = format!("{}_1", env.index);
    assert!(converted.contains(&format!("{} now points at {first}", env.index)), "{converted}");
    assert_eq!(alias_of(&env).await, Some(vec![first.clone()]));
    common::log_shows(&log, "following the rebuild", Duration::from_secs(30)).await;
    let during_first = renames.load(Ordering::Relaxed);

    let searches = search_loop(&env, stop.clone());
    rebuild(&[]).await;
    let new = format!("{}_2", env.index);
    assert_eq!(alias_of(&env).await, Some(vec![new.clone()]));
    assert!(!exists(&env, &first).await, "the old index is deleted after the move");
    rebuild(&["--keep-old"]).await;
    let newer = format!("{}_3", env.index);
    assert_eq!(alias_of(&env).await, Some(vec![newer.clone()]));
    assert!(exists(&env, &new).await, "--keep-old kept {new}");

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let (ok, bad, why) = searches.await.unwrap();
    assert!(renames.load(Ordering::Relaxed) > during_first && during_first > 0, "the writer ran during both rebuilds");
    assert_eq!(bad, 0, "search failed or came back empty {bad} times of {}: {:?}", ok + bad, &why[..why.len().min(5)]);
    assert!(ok > 20, "the search loop ran: {ok}");

    common::eventually(Duration::from_secs(60), "the index equals postgres after the writer stopped", || async {
        env.refresh().await;
        env.verify().await.is_consistent()
    })
    .await;
    // The last rename of a film is in the index the name points at now.
    let last: (String, String) = {
        let row = env.db.query_one("SELECT id::text, title FROM content.film_work ORDER BY updated_at DESC LIMIT 1", &[]).await.unwrap();
        (row.get(0), row.get(1))
    };
    let doc: Value = env.http.get(format!("{}/{newer}/_doc/{}", env.es, last.0)).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["_source"]["title"], last.1.as_str());
    common::signal(&run, "-TERM");
    common::wait_exit(&mut run, Duration::from_secs(30));
    let _ = env.http.delete(format!("{}/{new}", env.es)).send().await;
    let _ = env.http.delete(format!("{}/{newer}", env.es)).send().await;
    env.cleanup().await;
}

/// With `run` stopped, a rebuild leaves its positions behind; the next `run` takes them over and
/// reads on from there instead of loading everything again, and a change made after the rebuild
/// reaches the new index.
#[tokio::test]
async fn a_rebuild_while_run_is_stopped_is_taken_over_at_its_start() {
    let env = fresh("reindex_stopped").await;
    let vars = env.env_vars();
    assert_eq!(env.run_once().await.records, 999);
    let (code, stdout, stderr) = reindex(&vars, &["--keep-old"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("cannot be kept"), "{stderr}");
    let (code, stdout, stderr) = reindex(&vars, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("999 records loaded"), "{stdout}");
    let film: String = env.db.query_one("SELECT id::text FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    env.sql(&format!("UPDATE content.film_work SET title = 'After the rebuild', updated_at = now() WHERE id = '{film}'")).await;
    let next = env.run_once().await;
    assert!(next.records < 10, "the hand-over is taken, nothing is loaded again: {next:?}");
    env.refresh().await;
    assert_eq!(env.doc(&film).await["title"], "After the rebuild");
    assert!(env.verify().await.is_consistent());
    let state: Value = serde_json::from_slice(&std::fs::read(env.state_file()).unwrap()).unwrap();
    assert_eq!(state["target"], format!("{}_1", env.index));
    let out = common::pg2es_command(&vars, &["status", "--json"]).output().unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(status["movies"]["serving"], format!("{}_1", env.index), "{status}");
    let _ = env.http.delete(format!("{}/{}_1", env.es, env.index)).send().await;
    env.cleanup().await;
}

/// A mapping change: the index schema gains a sub-field of `title` (the documents stay the same).
/// `reindex` with the new schema builds the new index while the old `run` keeps the live one; once
/// the name moves, the old `run` stops, saying to restart it with that schema, and restarted with
/// it, it takes the hand-over and loads nothing again.
#[tokio::test]
async fn a_mapping_change_goes_through_reindex_and_a_restart() {
    let env = fresh("reindex_mapping").await;
    let log = env.dir.path().join("run.log");
    let mut old_run = common::spawn_run(&env, &log);
    common::eventually(Duration::from_secs(60), "the running pipeline loads 999 documents", || async { env.try_count().await == Some(999) }).await;

    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(common::schema_file()).unwrap()).unwrap();
    schema["mappings"]["properties"]["title"]["fields"]["sort"] = serde_json::json!({"type": "keyword", "ignore_above": 256});
    let new_schema = env.dir.path().join("es_schema.v2.json");
    std::fs::write(&new_schema, serde_json::to_vec_pretty(&schema).unwrap()).unwrap();
    let mut vars = env.env_vars();
    vars.retain(|(k, _)| k != "ES_SCHEMA_FILE");
    vars.push(("ES_SCHEMA_FILE".into(), new_schema.display().to_string()));

    let (code, stdout, stderr) = reindex(&vars, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let status = common::wait_exit(&mut old_run, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "the old run stops");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("built from another definition than this run's: restart `pg2es run` with that definition"), "{said}");

    let film: String = env.db.query_one("SELECT id::text FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    env.sql(&format!("UPDATE content.film_work SET title = 'After the mapping change', updated_at = now() WHERE id = '{film}'")).await;
    let out = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("following the rebuild"), "{stderr}");
    assert!(!stderr.contains("full load started"), "nothing is loaded again: {stderr}");
    env.refresh().await;
    assert_eq!(env.doc(&film).await["title"], "After the mapping change");
    let mapping: Value = env.http.get(format!("{}/{}/_mapping", env.es, env.index)).send().await.unwrap().json().await.unwrap();
    assert_eq!(mapping[format!("{}_1", env.index)]["mappings"]["properties"]["title"]["fields"]["sort"]["type"], "keyword", "{mapping}");
    let _ = env.http.delete(format!("{}/{}_1", env.es, env.index)).send().await;
    env.cleanup().await;
}

/// A restore onto another database (the same data, another source): `run` refuses the state and
/// the index it kept from the first, and names `reindex`. The rebuild, from the restored
/// database, builds a new index while the old one serves; `run` pointed at the restored database
/// then takes its positions, and the writes made to it reach the index.
#[tokio::test]
async fn a_restore_elsewhere_goes_through_reindex() {
    let env = fresh("reindex_restore").await;
    assert_eq!(env.run_once().await.records, 999);
    // The restore: the same catalog in another database.
    let admin = common::connect(&common::pg_admin_dsn()).await;
    let restored = format!("pg2es_t_{}_restored", env.name);
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {restored} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {restored} TEMPLATE movies_ref")).await.unwrap();
    let dsn = env.dsn.replace(&format!("/pg2es_t_{}", env.name), &format!("/{restored}"));
    let mut vars = env.env_vars();
    vars.retain(|(k, _)| k != "PG_DSN");
    vars.push(("PG_DSN".into(), dsn.clone()));

    let out = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds progress read from") && stderr.contains("`pg2es reindex`"), "{stderr}");

    let db = common::connect(&dsn).await;
    let film: String = db.query_one("SELECT id::text FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    db.execute("UPDATE content.film_work SET title = 'Written after the restore', updated_at = now() WHERE id::text = $1", &[&film]).await.unwrap();
    let (code, stdout, stderr) = reindex(&vars, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    db.execute("UPDATE content.film_work SET title = 'Written after the rebuild', updated_at = now() WHERE id::text = $1", &[&film]).await.unwrap();
    let out = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("following the rebuild"), "{stderr}");
    env.refresh().await;
    assert_eq!(env.doc(&film).await["title"], "Written after the rebuild");
    let out = common::pg2es_command(&vars, &["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    drop(db);
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {restored} WITH (FORCE)")).await.unwrap();
    let _ = env.http.delete(format!("{}/{}_1", env.es, env.index)).send().await;
    env.cleanup().await;
}

/// The WAL position of the database now.
async fn wal_now(db: &tokio_postgres::Client) -> u64 {
    let text: String = db.query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    pg2es::position::parse_lsn(&text).unwrap()
}

fn run_once_with(vars: &[(String, String)]) -> (Option<i32>, String) {
    let out = common::pg2es_command(vars, &["run", "--once"]).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The source's WAL went back on the same server (a restore from a backup of it, a failover onto
/// a standby that was behind): the state and the index hold a document written at a position the
/// database has not reached. Without the check, every write of that film would be dropped by
/// Elasticsearch as older, and its old title would stay. `run` refuses and names `reindex`, which
/// builds a new index at the positions as they are now; `run` then takes its positions.
#[tokio::test]
async fn a_wal_that_went_back_goes_through_reindex() {
    let env = fresh("reindex_wal_back").await;
    assert_eq!(env.run_once().await.records, 999);
    let film: String = env.db.query_one("SELECT id::text FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    // What this server wrote before it was restored from an older backup: the state, and the
    // film's document, at a WAL position 4 GiB past where the database is now.
    let ahead = wal_now(&env.db).await + (1 << 32);
    let path = env.state_file();
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["wal_seen"] = ahead.into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let mut doc = env.doc(&film).await;
    doc["title"] = "Written before the restore".into();
    let put = env.http.put(format!("{}/{}/_doc/{film}?version={ahead}&version_type=external_gte", env.es, env.index)).json(&doc).send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());

    env.sql(&format!("UPDATE content.film_work SET title = 'Written after the restore', updated_at = now() WHERE id::text = '{film}'")).await;
    let vars = env.env_vars();
    let (code, stderr) = run_once_with(&vars);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("went back") && stderr.contains("`pg2es reindex`"), "{stderr}");
    let (code, stdout, stderr) = reindex(&vars, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stderr) = run_once_with(&vars);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("following the rebuild"), "{stderr}");
    env.refresh().await;
    assert_eq!(env.doc(&film).await["title"], "Written after the restore");
    assert!(env.verify().await.is_consistent());
    let _ = env.http.delete(format!("{}/{}_1", env.es, env.index)).send().await;
    env.cleanup().await;
}

/// A dump restored onto another server: `PG2ES_TEST_RESTORE_PG_DSN` names its admin connection
/// (`make test-pg-matrix` gives one of the matrix's servers, a newer major, freshly started, so
/// its WAL positions are far below this one's). The database has the same name: only the
/// cluster differs. `run` refuses the state, `reindex` rebuilds from the new server while search
/// keeps the old index (the name is an alias already: the first rebuild, the conversion, is
/// made before the move), and `run` pointed at the new server keeps the index equal to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// It needs a second server: built with the tests that need more than the stack (`fault-tests`),
// and run by `make test-pg-matrix` with PG2ES_TEST_RESTORE_PG_DSN; without it, it fails.
#[cfg(feature = "fault-tests")]
async fn a_dump_restored_onto_another_server_goes_through_reindex() {
    let other_admin = std::env::var("PG2ES_TEST_RESTORE_PG_DSN")
        .expect("PG2ES_TEST_RESTORE_PG_DSN: the admin connection of another server, such as postgres://app:123qwe@127.0.0.1:5416/postgres");
    let env = fresh("reindex_server").await;
    assert_eq!(env.run_once().await.records, 999);
    let vars = env.env_vars();
    let (code, stdout, stderr) = reindex(&vars, &[]);
    assert_eq!(code, Some(0), "the conversion into an alias, on the first server: {stdout}{stderr}");

    // The restore: pg_dump of the first server, loaded by psql into a database of the same name.
    let db_name = format!("pg2es_t_{}", env.name);
    let other = common::connect(&other_admin).await;
    other.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).await.unwrap();
    other.batch_execute(&format!("CREATE DATABASE {db_name}")).await.unwrap();
    let other_dsn = common::replace_db(&other_admin, &db_name);
    let dump = std::process::Command::new("pg_dump").args(["--no-owner", "--no-acl", &env.dsn]).output().expect("run pg_dump");
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    let restore_file = env.dir.path().join("dump.sql");
    std::fs::write(&restore_file, &dump.stdout).unwrap();
    let restore = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", restore_file.to_str().unwrap(), &other_dsn])
        .output()
        .expect("run psql");
    assert!(restore.status.success(), "psql: {}", String::from_utf8_lossy(&restore.stderr));
    let db = common::connect(&other_dsn).await;
    let (before, after) = (wal_now(&env.db).await, wal_now(&db).await);
    assert!(after < before, "the new server's WAL ({after}) is below the first's ({before}): what makes the old index's versions meaningless there");

    let mut vars = vars;
    vars.retain(|(k, _)| k != "PG_DSN");
    vars.push(("PG_DSN".into(), other_dsn.clone()));
    let (code, stderr) = run_once_with(&vars);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("holds progress read from") && stderr.contains("`pg2es reindex`"), "{stderr}");

    let film: String = db.query_one("SELECT id::text FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    let rename = |title: &'static str| {
        let (db, film) = (&db, &film);
        async move { db.execute("UPDATE content.film_work SET title = $1, updated_at = now() WHERE id::text = $2", &[&title, film]).await.unwrap() }
    };
    rename("Written after the restore").await;
    let stop = Arc::new(AtomicBool::new(false));
    let searches = search_loop(&env, stop.clone());
    let rebuild_vars = vars.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || reindex(&rebuild_vars, &[])).await.unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    rename("Written after the rebuild").await;
    let (code, stderr) = tokio::task::spawn_blocking({
        let vars = vars.clone();
        move || run_once_with(&vars)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("following the rebuild"), "{stderr}");
    stop.store(true, Ordering::Relaxed);
    let (ok, bad, why) = searches.await.unwrap();
    assert_eq!(bad, 0, "search failed or came back empty {bad} times of {}: {:?}", ok + bad, &why[..why.len().min(5)]);
    assert!(ok > 5, "the search loop ran: {ok}");
    env.refresh().await;
    assert_eq!(env.doc(&film).await["title"], "Written after the rebuild");
    let out = common::pg2es_command(&vars, &["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    drop(db);
    other.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).await.unwrap();
    for n in 1..=2 {
        let _ = env.http.delete(format!("{}/{}_{n}", env.es, env.index)).send().await;
    }
    env.cleanup().await;
}

/// `PG2ES_SOURCE=replication`: while `run` keeps the index from the run's slot and a writer
/// renames films, a rebuild (after the first, the conversion into an alias) with a search loop
/// running. It reads a temporary slot of its own, gone when it ends; `run` keeps its slot and
/// position and writes into the new index. No search fails or comes back empty, and the index
/// ends equal to Postgres with the last rename in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_in_replication_mode_reads_a_slot_of_its_own_and_loses_no_write() {
    let env = cleared(TestEnv::replicated("reindex_repl").await).await;
    let vars = env.env_vars();
    let log = env.dir.path().join("run.log");
    let mut run = common::spawn_run(&env, &log);
    common::eventually(Duration::from_secs(60), "the running pipeline loads 999 documents", || async { env.try_count().await == Some(999) }).await;
    let films: Vec<String> = env.db.query("SELECT id::text FROM content.film_work ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let (stop, renames) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = writer(&env.dsn, films, stop.clone(), renames.clone());
    let rebuild = || {
        let vars = vars.clone();
        async move {
            let (code, stdout, stderr) = tokio::task::spawn_blocking(move || reindex(&vars, &[])).await.unwrap();
            assert_eq!(code, Some(0), "{stdout}{stderr}");
        }
    };
    rebuild().await;
    common::log_shows(&log, "following the rebuild", Duration::from_secs(30)).await;
    let searches = search_loop(&env, stop.clone());
    let before = renames.load(Ordering::Relaxed);
    rebuild().await;
    let new = format!("{}_2", env.index);
    assert_eq!(alias_of(&env).await, Some(vec![new.clone()]));
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let (ok, bad, why) = searches.await.unwrap();
    assert!(renames.load(Ordering::Relaxed) > before && before > 0, "the writer ran during both rebuilds");
    assert_eq!(bad, 0, "search failed or came back empty {bad} times of {}: {:?}", ok + bad, &why[..why.len().min(5)]);

    let slots: Vec<String> = env
        .db
        .query("SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slots.len(), 1, "only the run's slot is left: {slots:?}");
    assert!(!slots[0].ends_with("_reindex"), "{slots:?}");
    common::eventually(Duration::from_secs(60), "the index equals postgres after the writer stopped", || async {
        env.refresh().await;
        env.verify().await.is_consistent()
    })
    .await;
    let last: (String, String) = {
        let row = env.db.query_one("SELECT id::text, title FROM content.film_work ORDER BY updated_at DESC LIMIT 1", &[]).await.unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(env.doc(&last.0).await["title"], last.1.as_str());
    common::signal(&run, "-TERM");
    common::wait_exit(&mut run, Duration::from_secs(30));
    // `run` read on from its own slot: no fresh position, no second full load.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("taking a fresh one") && text.matches("full load: every record").count() == 1, "{text}");
    let _ = env.http.delete(format!("{}/{new}", env.es)).send().await;
    env.cleanup().await;
}
