//! The Django project in `tests/django`, for the tests that write through its ORM
//! (`tests/django.rs`, the cinema; `tests/django_defaults.rs`, the bookshelf).
//!
//! Needs `PG2ES_TEST_DJANGO_PYTHON`, the python of the venv `make test-django` makes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pg2es::verify::VerifyReport;

use super::TestEnv;

pub fn python() -> String {
    std::env::var("PG2ES_TEST_DJANGO_PYTHON")
        .unwrap_or_else(|_| panic!("set PG2ES_TEST_DJANGO_PYTHON to the python of the Django venv: `make test-django` makes tools/django/.venv and sets it"))
}

pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/django")
}

/// The DSN of database `db` on the test server.
pub fn dsn_of(db: &str) -> String {
    let admin = super::pg_admin_dsn();
    let (head, _) = admin.rsplit_once('/').expect("PG2ES_TEST_PG_DSN must be a URL such as postgres://app:123qwe@127.0.0.1:5432/postgres");
    format!("{head}/{db}")
}

/// `manage.py ARGS` on the test database; its stdout.
pub fn manage(env: &TestEnv, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("manage.py")
        .args(args)
        .current_dir(project_dir())
        .env("DATABASE_URL", &env.dsn)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): is PG2ES_TEST_DJANGO_PYTHON the venv's python?", python()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "manage.py {}: {}\n{stdout}{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A new empty database `pg2es_t_<name>` (its slots dropped first) and an empty index of that
/// name: Django's migrations make the rest.
pub async fn empty_env(name: &str) -> TestEnv {
    let db_name = format!("pg2es_t_{name}");
    let admin = super::connect(&super::pg_admin_dsn()).await;
    super::drop_slots(&admin, &db_name).await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db_name}")).await.unwrap();
    let dsn = dsn_of(&db_name);
    let env = TestEnv {
        name: name.to_string(),
        db: super::connect(&dsn).await,
        dsn,
        es: super::es_url(),
        index: db_name,
        dir: tempfile::tempdir().unwrap(),
        http: reqwest::Client::new(),
        extra_env: Vec::new(),
    };
    env.delete_index().await;
    env
}

/// Verify until the index matches, at most `limit`; the last report.
pub async fn settle(env: &TestEnv, limit: Duration) -> VerifyReport {
    let start = Instant::now();
    loop {
        let report = env.verify().await;
        if report.is_consistent() || start.elapsed() > limit {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Brings the index back in step after a driver's path left differences, so the next path is
/// judged alone: `touch` moves every root row's timestamp (all rebuilt), and documents of deleted
/// roots are removed. Verify waits `settle` at most, ten times.
pub async fn heal(env: &TestEnv, touch: &str, settle_for: Duration, path: &str) {
    env.sql(touch).await;
    for _ in 0..10 {
        let report = settle(env, settle_for).await;
        if report.is_consistent() {
            return;
        }
        for id in &report.extra.first {
            env.http.delete(format!("{}/{}/_doc/{id}", env.es, env.index)).send().await.unwrap();
        }
    }
    panic!("the index stays different from Postgres after {path}, even with every record rebuilt ({touch}):\n{}", env.verify().await.render());
}

/// `pg2es run`, killed when the test fails before stopping it.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `pg2es delete-capture install ARGS` with the environment's settings.
pub fn install_delete_capture(env: &TestEnv, args: &[&str]) {
    let o = super::pg2es_command(&env.env_vars(), &[&["delete-capture", "install"], args].concat()).output().unwrap();
    assert!(o.status.success(), "delete-capture install: {}", String::from_utf8_lossy(&o.stderr));
}
