//! A Django app with Django's defaults against the real stack: the bookshelf in
//! `tests/django/shelf` (`BigAutoField` keys, default table names in `public`, the link table
//! Django creates for `Book.tags`, a book's author and the author's country), read by the
//! definition `tests/django/shelf/books.toml`. Its migrations make the schema, `seed_shelf` fills
//! it, and `drive_shelf_writes` writes it through every ORM path while `pg2es run` runs, in both
//! setups the README recommends for a Django admin; after each path `verify` must find no
//! difference.
//!
//! Needs `PG2ES_TEST_DJANGO_PYTHON`, the python of the venv `make test-django` makes.
#![cfg(feature = "django-tests")]

mod common;

use std::time::{Duration, Instant};

use common::django::{empty_env, heal, install_delete_capture, manage, project_dir, settle, Running};
use common::TestEnv;
use pg2es::verify::VerifyReport;

/// How long a path's changes may take to reach the index (a cycle is 0.2 s).
const SETTLE: Duration = Duration::from_secs(15);

/// Books `seed_shelf` writes.
const BOOKS: u64 = 400;

/// An empty database, the bookshelf's schema by its migrations (up to `migration`, or all), the
/// seed, and an empty index, read by the bookshelf's definition.
async fn shelf_env(name: &str, migration: Option<&str>) -> TestEnv {
    let mut env = empty_env(&format!("django_shelf_{name}")).await;
    match migration {
        Some(m) => manage(&env, &["migrate", "--no-input", "shelf", m]),
        None => manage(&env, &["migrate", "--no-input", "shelf"]),
    };
    print!("{}", manage(&env, &["seed_shelf"]));
    assert_eq!(env.scalar_i64("SELECT count(*) FROM public.shelf_book").await, BOOKS as i64);
    let definition = project_dir().join("shelf/books.toml").display().to_string();
    for (k, v) in [
        ("PG2ES_DEFINITION", definition.as_str()),
        ("PG2ES_DOCUMENTS", "books"),
        ("PG_SCHEMA", "public"),
        // Django writes its timestamps with the application's clock; deletes reach the index
        // only by the capture or the stream, never by reconciliation.
        ("ETL_CLOCK_SKEW_MS", "1000"),
        ("ETL_RECONCILE_SEC", "0"),
    ] {
        env.extra_env.push((k.into(), v.into()));
    }
    env
}

/// What makes this schema Django's defaults, so that the tests below are about them: every key a
/// `bigint` primary key named `id`, and the link table Django made with no timestamp and a unique
/// (book_id, tag_id).
async fn assert_django_defaults(env: &TestEnv) {
    let keys = "SELECT count(*) FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ALL (c.conkey) \
                WHERE c.contype = 'p' AND c.conrelid::regclass::text LIKE 'shelf\\_%' AND a.attname = 'id' AND a.atttypid = 'int8'::regtype";
    assert_eq!(env.scalar_i64(keys).await, 6, "six tables keyed by id bigint");
    let columns = "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'shelf_book_tags'";
    let row = env.db.query_one(columns, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "id,book_id,tag_id", "the link table Django creates for Book.tags");
    let pair = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.shelf_book_tags'::regclass AND contype = 'u' AND array_length(conkey, 1) = 2";
    assert_eq!(env.scalar_i64(pair).await, 1, "unique (book_id, tag_id)");
}

/// `pg2es check` of the environment: the definition must be accepted on this schema.
fn check(env: &TestEnv) {
    let o = common::pg2es_command(&env.env_vars(), &["check"]).output().unwrap();
    assert!(o.status.success(), "pg2es check: {}\n{}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// Runs each of the driver's paths alone, then all in one run, while `pg2es run` runs (the writes
/// start once `log_shows`, when given, is in its log); fails naming every run that left a difference.
async fn every_path_reaches_the_index(env: TestEnv, mode: &str, log_shows: Option<&str>) {
    let started = Instant::now();
    check(&env);
    let listed = manage(&env, &["drive_shelf_writes", "--list"]);
    let paths: Vec<&str> = listed.lines().collect();
    assert!(paths.len() >= 15, "the driver's paths: {paths:?}");
    let log = env.dir.path().join("pg2es.log");
    let mut run = Running(common::spawn_run(&env, &log));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    while env.try_count().await != Some(BOOKS) {
        if let Some(status) = run.0.try_wait().unwrap() {
            panic!("pg2es run stopped ({status}) before its full load:\n{}", log_text());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no full load after 60 s:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(text) = log_shows {
        common::log_shows(&log, text, Duration::from_secs(10)).await;
    }
    let before = env.verify().await;
    assert!(before.is_consistent(), "after the full load:\n{}", before.render());
    println!("{mode}, full load: {} ({:.1} s after check)", before.summary(), started.elapsed().as_secs_f64());

    let mut runs: Vec<(String, Vec<&str>)> = paths.iter().map(|p| (p.to_string(), vec!["--only", *p])).collect();
    runs.push(("all paths in one run".into(), Vec::new()));
    let mut results: Vec<(String, VerifyReport)> = Vec::new();
    for (path, only) in runs {
        let mut args = vec!["drive_shelf_writes", "--pause", "0.3"];
        args.extend(only);
        let started = Instant::now();
        print!("{}", manage(&env, &args));
        let written = started.elapsed();
        let report = settle(&env, SETTLE).await;
        println!(
            "{mode}, {path}: {} (written in {:.1} s, verified {:.1} s later)",
            report.summary(),
            written.as_secs_f64(),
            (started.elapsed() - written).as_secs_f64()
        );
        if !report.is_consistent() {
            print!("{}", report.render());
            heal(&env, "UPDATE public.shelf_book SET updated_at = now()", SETTLE, &path).await;
        }
        results.push((path, report));
    }
    assert!(run.0.try_wait().unwrap().is_none(), "pg2es run stopped:\n{}", log_text());
    common::signal(&run.0, "-TERM");
    let status = common::wait_exit(&mut run.0, Duration::from_secs(30));
    assert!(status.success(), "pg2es run: {status}\n{}", log_text());

    let table: String = results.iter().map(|(p, r)| format!("  {p:<22} {}\n", r.summary())).collect();
    println!("{mode}, in {:.1} s:\n{table}", started.elapsed().as_secs_f64());
    let failed: Vec<String> = results.iter().filter(|(_, r)| !r.is_consistent()).map(|(p, r)| format!("{p}:\n{}", r.render())).collect();
    assert!(failed.is_empty(), "{mode}: {} of {} runs left the index different from Postgres:\n{table}\n{}", failed.len(), results.len(), failed.join("\n"));
    env.cleanup().await;
}

/// Polling with the write capture (`delete-capture install --writes`), on the first migration
/// only: Django's tables as `migrate` leaves them. The write capture logs every insert, update
/// and delete, so no timestamp is read (the link table has none): polling must say it found it
/// before the writes start, or a path judged in the timestamps' re-read window could pass by luck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_with_the_write_capture_sees_every_orm_write_of_django_defaults() {
    let env = shelf_env("polling", Some("0001")).await;
    assert_django_defaults(&env).await;
    // Before the write capture, check refuses what run would: the link table has no timestamp.
    let o = common::pg2es_command(&env.env_vars(), &["check"]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(said.contains("shelf_book_tags has no timestamp column") && said.contains("delete-capture install --writes"), "{said}");
    install_delete_capture(&env, &["--writes"]);
    every_path_reaches_the_index(env, "polling with the write capture", Some("write capture found")).await;
}

/// Replication, with the app's second migration (`REPLICA IDENTITY FULL` on the link table and
/// the reviews, whose deleted rows must name their book).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_sees_every_orm_write_of_django_defaults() {
    let mut env = shelf_env("replication", None).await;
    assert_django_defaults(&env).await;
    let full =
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname IN ('shelf_book_tags', 'shelf_review') AND relreplident = 'f'";
    assert_eq!(env.scalar_i64(full).await, 2);
    env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into()));
    every_path_reaches_the_index(env, "replication", None).await;
}
