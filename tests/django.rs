//! The catalog's real client against the real stack: the Django project in `tests/django` makes
//! the schema by its own migrations, gets the reference catalog, and writes it through every ORM
//! path while `pg2es run` runs; after each path `verify` must find no difference.
//!
//! Needs `PG2ES_TEST_DJANGO_PYTHON`, the python of the venv `make test-django` makes
//! (`common::django`).
#![cfg(feature = "django-tests")]

mod common;

use std::time::Duration;

use common::django::{dsn_of, empty_env, heal, install_delete_capture, manage, settle, Running};
use common::TestEnv;
use pg2es::config::SourceKind;
use pg2es::verify::VerifyReport;

/// How long a path's changes may take to reach the index (a cycle is 0.2 s).
const SETTLE: Duration = Duration::from_secs(15);

/// An empty database, the schema by Django's migrations (up to `migration`, or all), the
/// reference catalog copied in, and an empty index.
async fn django_env(name: &str, migration: Option<&str>) -> TestEnv {
    let mut env = empty_env(&format!("django_{name}")).await;
    match migration {
        Some(m) => manage(&env, &["migrate", "--no-input", "movies", m]),
        None => manage(&env, &["migrate", "--no-input", "movies"]),
    };
    print!("{}", manage(&env, &["copy_catalog", "--from-dsn", &dsn_of("movies_ref")]));
    assert_eq!(env.scalar_i64("SELECT count(*) FROM content.film_work").await, 999, "the reference catalog (run scripts/load-dump.sh)");
    // Django writes its timestamps with the application's clock, as the admin does; deletes reach
    // the index only by the capture or the stream, never by reconciliation.
    env.extra_env.push(("ETL_CLOCK_SKEW_MS".into(), "1000".into()));
    env.extra_env.push(("ETL_RECONCILE_SEC".into(), "0".into()));
    env
}

struct PathResult {
    path: String,
    report: VerifyReport,
}

/// Each path alone (`--only`), then, when `together`, all of them in one run; verify after each.
/// Polling reads the rows changed within `ETL_CLOCK_SKEW_MS` again at its next cycles: the next
/// path waits `quiet` for that, so a film re-read for the last path does not hide this one's.
async fn drive(env: &TestEnv, paths: &[&str], together: bool, quiet: Duration) -> Vec<PathResult> {
    let mut runs: Vec<(String, Vec<&str>)> = paths.iter().map(|p| (p.to_string(), vec!["--only", *p])).collect();
    if together {
        runs.push(("all paths in one run".into(), Vec::new()));
    }
    let mut results = Vec::new();
    for (path, only) in runs {
        let mut args = vec!["drive_writes"];
        args.extend(only);
        print!("{}", manage(env, &args));
        let report = settle(env, SETTLE).await;
        println!("{path}: {}", report.summary());
        if !report.is_consistent() {
            print!("{}", report.render());
            heal(env, "UPDATE content.film_work SET updated_at = now()", SETTLE, &path).await;
        }
        results.push(PathResult { path, report });
        tokio::time::sleep(quiet).await;
    }
    results
}

/// Runs the paths (all the driver has when `paths` is empty) while `pg2es run` runs, and fails
/// naming every path that left a difference.
async fn every_path_reaches_the_index(env: TestEnv, mode: &str, paths: &[&str], together: bool) {
    let config = env.config();
    let quiet = match config.source {
        SourceKind::Polling => config.postgres.horizon.clock_skew + Duration::from_secs(1),
        SourceKind::Replication(_) => Duration::ZERO,
    };
    let listed = manage(&env, &["drive_writes", "--list"]);
    let every: Vec<&str> = listed.lines().collect();
    assert!(every.len() >= 14 && paths.iter().all(|p| every.contains(p)), "the driver's paths: {every:?}");
    let paths = if paths.is_empty() { every.clone() } else { paths.to_vec() };
    let log = env.dir.path().join("pg2es.log");
    let mut run = Running(common::spawn_run(&env, &log));
    common::eventually(Duration::from_secs(120), "full load", || async { env.try_count().await == Some(999) }).await;
    let before = env.verify().await;
    assert!(before.is_consistent(), "after the full load:\n{}", before.render());

    let results = drive(&env, &paths, together, quiet).await;
    assert!(run.0.try_wait().unwrap().is_none(), "pg2es run stopped: {}", std::fs::read_to_string(&log).unwrap_or_default());
    common::signal(&run.0, "-TERM");
    let status = common::wait_exit(&mut run.0, Duration::from_secs(30));
    assert!(status.success(), "pg2es run: {status}\n{}", std::fs::read_to_string(&log).unwrap_or_default());

    let table: String = results.iter().map(|r| format!("  {:<22} {}\n", r.path, r.report.summary())).collect();
    println!("{mode}:\n{table}");
    let failed: Vec<String> = results.iter().filter(|r| !r.report.is_consistent()).map(|r| format!("{}:\n{}", r.path, r.report.render())).collect();
    assert!(failed.is_empty(), "{mode}: {} of {} runs left the index different from Postgres:\n{table}\n{}", failed.len(), results.len(), failed.join("\n"));
    env.cleanup().await;
}

/// With the project's second migration (`REPLICA IDENTITY FULL` on the link tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_sees_every_orm_write() {
    let mut env = django_env("replication", None).await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM pg_class WHERE relnamespace = 'content'::regnamespace AND relreplident = 'f'").await, 2);
    env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into()));
    every_path_reaches_the_index(env, "replication", &[], true).await;
}

/// Polling with the write capture (`delete-capture install --writes`, the README's setup for
/// Django without `wal_level = logical`), on the schema of the first migration only (the default
/// replica identity, as an admin without pg2es's migration has it).
/// `PG2ES_TEST_DJANGO_CAPTURE=deletes` runs it with the delete capture alone, which the README's
/// table reports on: the writes that leave `updated_at` alone are then missed, and it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_with_the_write_capture_sees_every_orm_write() {
    let env = django_env("polling", Some("0001")).await;
    let deletes_only = std::env::var("PG2ES_TEST_DJANGO_CAPTURE").is_ok_and(|v| v == "deletes");
    install_delete_capture(&env, if deletes_only { &[] } else { &["--writes"] });
    let mode = if deletes_only { "polling with the delete capture alone" } else { "polling with the write capture" };
    every_path_reaches_the_index(env, mode, &[], true).await;
}

/// Django's schema is not sql/schema.sql: foreign keys `DEFERRABLE INITIALLY DEFERRED` without
/// `ON DELETE CASCADE` (the ORM deletes the links itself), a nullable role, no unique
/// (film_work, genre), no (updated_at, id) indexes. The delete capture installs on it, and the
/// ORM's deletes and cascades reach the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orm_deletes_and_cascades_reach_the_index_through_the_delete_capture() {
    let env = django_env("schema", Some("0001")).await;
    let fks = "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'content'::regnamespace";
    assert_eq!(env.scalar_i64(fks).await, 4);
    assert_eq!(env.scalar_i64(&format!("{fks} AND condeferrable AND condeferred AND confdeltype = 'a'")).await, 4, "deferred, no action on delete");
    let nullable = "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'content' AND table_name = 'person_film_work' AND column_name = 'role' AND is_nullable = 'YES'";
    assert_eq!(env.scalar_i64(nullable).await, 1);
    let unique = "SELECT count(*) FROM pg_index WHERE indrelid = 'content.genre_film_work'::regclass AND indisunique AND NOT indisprimary";
    assert_eq!(env.scalar_i64(unique).await, 0);
    let by_time = "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'content'::regnamespace AND a.attname = 'updated_at'";
    assert_eq!(env.scalar_i64(by_time).await, 0);
    install_delete_capture(&env, &[]);
    let paths = ["delete", "queryset_delete", "m2m_remove", "m2m_set", "schema_edges"];
    every_path_reaches_the_index(env, "ORM deletes with the delete capture", &paths, false).await;
}
