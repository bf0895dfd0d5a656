//! Harness for integration tests against the real stack (`scripts/stack.sh up`).
//!
//! Each test gets its own database, cloned from the `movies_ref` template that
//! `scripts/load-dump.sh` leaves, and its own index, so tests run in parallel. A missing service
//! fails the test with a message; nothing is skipped.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use pg2es::checkpoint::Checkpoint;
use pg2es::config::{Config, Sources};
use pg2es::pipeline::{self, CycleReport, Mode};
use pg2es::shutdown::Shutdown;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

#[cfg(feature = "django-tests")]
pub mod django;

pub fn pg_admin_dsn() -> String {
    std::env::var("PG2ES_TEST_PG_DSN").unwrap_or_else(|_| "postgres://app:123qwe@127.0.0.1:5432/postgres".into())
}

/// Prefix of the tests' index names: the Postgres matrix runs the same tests once per version on
/// one Elasticsearch, and a prefix per version keeps them apart.
pub fn index_prefix() -> String {
    std::env::var("PG2ES_TEST_INDEX_PREFIX").unwrap_or_else(|_| "pg2es_t_".into())
}

pub fn es_url() -> String {
    std::env::var("PG2ES_TEST_ES_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

pub fn os_url() -> String {
    std::env::var("PG2ES_TEST_OS_URL").unwrap_or_else(|_| "http://127.0.0.1:9201".into())
}

pub fn schema_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/movies/es_schema.json")
}

/// The bookshop catalog: its definition, index schema, schema and seed.
pub fn bookshop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalog/bookshop")
}

pub async fn connect(dsn: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach Postgres at {dsn}: {e}. Start the stack with `make stack-up` (or scripts/stack.sh up)"));
    tokio::spawn(conn);
    client
}

/// The change capture's triggers of the cinema's movies document on `schema` of `db` (as
/// `pg2es delete-capture install` makes them with `PG2ES_DOCUMENTS=movies`).
pub async fn capture(db: &Client, schema: &str) -> pg2es::catalog::triggers::TriggerSet {
    capture_of(db, schema, &["movies"]).await
}

/// [`capture`] for these documents of the built-in cinema definition.
pub async fn capture_of(db: &Client, schema: &str, documents: &[&str]) -> pg2es::catalog::triggers::TriggerSet {
    let selection = pg2es::catalog::Selection { documents: documents.iter().map(|d| d.to_string()).collect(), ..Default::default() };
    let specs: Vec<pg2es::source::DocumentSpec> = documents
        .iter()
        .map(|d| pg2es::source::DocumentSpec {
            source: pg2es::catalog::Source::builtin(),
            selection: selection.clone(),
            name: d.to_string(),
            first: *d == "movies",
        })
        .collect();
    pg2es::source::trigger_set(db, schema, &specs).await.expect("the capture's triggers")
}

pub struct TestEnv {
    pub name: String,
    pub db: Client,
    pub dsn: String,
    pub es: String,
    pub index: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub extra_env: Vec<(String, String)>,
}

/// pg2es's log (INFO, or `RUST_LOG`) goes to the test's captured output: shown when the test
/// fails, so a failure that does not come back says what pg2es saw (a fresh position and why, a
/// reload, a retry).
pub fn show_log_on_failure() {
    // With --nocapture every line would print (the fault tests): those say what they need.
    if std::env::args().any(|a| a == "--nocapture") {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pg2es=info"));
    // Once per test binary; a second call finds the subscriber set and leaves it.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

impl TestEnv {
    /// A fresh copy of the reference catalog and an empty index named after the test.
    pub async fn new(name: &str) -> TestEnv {
        TestEnv::on(name, &es_url()).await
    }

    /// [`TestEnv::new`] set up for `PG2ES_SOURCE=replication`: link tables whose deleted rows
    /// name their film (`REPLICA IDENTITY FULL`).
    pub async fn replicated(name: &str) -> TestEnv {
        let mut env = TestEnv::new(name).await;
        env.sql("ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL").await;
        env.sql("ALTER TABLE content.person_film_work REPLICA IDENTITY FULL").await;
        env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into()));
        env
    }

    pub async fn on(name: &str, es: &str) -> TestEnv {
        show_log_on_failure();
        let admin = connect(&pg_admin_dsn()).await;
        let db_name = format!("pg2es_t_{name}");
        drop_slots(&admin, &db_name).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).await.unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name} TEMPLATE movies_ref"))
            .await
            .unwrap_or_else(|e| panic!("cannot clone template movies_ref ({e}); run scripts/load-dump.sh first"));
        let dsn = replace_db(&pg_admin_dsn(), &db_name);
        let db = connect(&dsn).await;
        let http = reqwest::Client::new();
        let index = format!("{}{name}", index_prefix());
        let env = TestEnv { name: name.to_string(), db, dsn, es: es.to_string(), index, dir: tempfile::tempdir().unwrap(), http, extra_env: Vec::new() };
        env.delete_index().await;
        env
    }

    /// A new database `pg2es_t_<name>` holding the bookshop catalog (`catalog/bookshop`: its
    /// schema.sql, then its seed.sql) and an empty index named after the test, read by the
    /// bookshop's definition: `PG2ES_DOCUMENTS=books`, and no ES_SCHEMA_FILE (the definition's
    /// index_schema, books.es.json).
    pub async fn bookshop(name: &str) -> TestEnv {
        TestEnv::catalog(name, &bookshop_dir(), "bookshop.toml", "bookshop", "books").await
    }

    /// A new database `pg2es_t_<name>` holding the catalog in `dir` (its schema.sql, then its
    /// seed.sql, in `schema`) and an empty index named after the test, read by the definition
    /// `dir/definition` (document `document`; no ES_SCHEMA_FILE: the definition's index_schema).
    pub async fn catalog(name: &str, dir: &std::path::Path, definition: &str, schema: &str, document: &str) -> TestEnv {
        show_log_on_failure();
        let admin = connect(&pg_admin_dsn()).await;
        let db_name = format!("pg2es_t_{name}");
        drop_slots(&admin, &db_name).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {db_name}")).await.unwrap();
        let dsn = replace_db(&pg_admin_dsn(), &db_name);
        let db = connect(&dsn).await;
        for file in ["schema.sql", "seed.sql"] {
            let sql = std::fs::read_to_string(dir.join(file)).unwrap();
            db.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()));
        }
        let index = format!("{}{name}", index_prefix());
        let definition = dir.join(definition).display().to_string();
        let extra_env = [("PG_SCHEMA", schema.to_string()), ("PG2ES_DEFINITION", definition), ("PG2ES_DOCUMENTS", document.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let env = TestEnv { name: name.to_string(), db, dsn, es: es_url(), index, dir: tempfile::tempdir().unwrap(), http: reqwest::Client::new(), extra_env };
        env.delete_index().await;
        env
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("PG_DSN", self.dsn.clone()),
            ("ES_URL", self.es.clone()),
            ("ES_INDEX", self.index.clone()),
            // The movies document of the cinema definition: the index each test names (tests of
            // several documents set PG2ES_DOCUMENTS themselves, in `extra_env`, which wins).
            ("PG2ES_DOCUMENTS", "movies".to_string()),
            ("ES_SCHEMA_FILE", schema_file().display().to_string()),
            ("ETL_STATE_FILE", self.state_file().display().to_string()),
            ("ETL_DEAD_LETTER_FILE", self.dir.path().join("dead.jsonl").display().to_string()),
            ("ETL_CYCLE_SEC", "0.2".to_string()),
            ("ETL_BACKOFF_INITIAL_MS", "50".to_string()),
            ("ETL_BACKOFF_MAX_SEC", "2".to_string()),
            // Tests write timestamps with Postgres' own clock: no skew to allow for, so a cycle
            // right after a change re-reads nothing (the horizon test sets its own).
            ("ETL_CLOCK_SKEW_MS", "0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // What `extra_env` sets replaces the default above. The movies schema belongs to the
        // built-in cinema definition: another definition brings its own index_schema.
        v.retain(|(k, _)| !self.extra_env.iter().any(|(e, _)| e == k));
        if self.extra_env.iter().any(|(k, _)| k == "PG2ES_DEFINITION") {
            v.retain(|(k, _)| k != "ES_SCHEMA_FILE");
        }
        v.extend(self.extra_env.iter().cloned());
        // PG2ES_TEST_STATE_STORE=postgres: the same tests with the state in pg2es.state, led
        // under a lease (`make test` runs some of them so).
        if let Ok(store) = std::env::var("PG2ES_TEST_STATE_STORE") {
            v.push(("PG2ES_STATE_STORE".into(), store));
        }
        v
    }

    pub fn config(&self) -> Config {
        Config::from_sources(&Sources::gather(None, self.env_vars()).unwrap()).unwrap()
    }

    /// One pass of the pipeline, in-process.
    pub async fn run_once(&self) -> CycleReport {
        let (_trigger, shutdown) = Shutdown::new();
        let mut reports = pipeline::run(&self.config(), Mode::Once, &shutdown).await.expect("pipeline run");
        assert_eq!(reports.len(), 1);
        self.refresh().await;
        reports.remove(0)
    }

    /// One `run --once` in-process, however many cycles it takes (a reload adds some); the index
    /// is refreshed after.
    pub async fn pass(&self) -> Vec<CycleReport> {
        let (_trigger, shutdown) = Shutdown::new();
        let reports = pipeline::run(&self.config(), Mode::Once, &shutdown).await.expect("pipeline run");
        self.refresh().await;
        reports
    }

    /// `verify` of this environment, after a refresh.
    pub async fn verify(&self) -> pg2es::verify::VerifyReport {
        self.refresh().await;
        let (_t, shutdown) = Shutdown::new();
        pg2es::verify::verify(&self.config(), &shutdown).await.expect("verify")
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::open(&self.state_file(), &self.index).unwrap()
    }

    pub async fn refresh(&self) {
        let r = self.http.post(format!("{}/{}/_refresh", self.es, self.index)).send().await;
        r.unwrap_or_else(|e| panic!("cannot reach Elasticsearch at {}: {e}; start the stack with `make stack-up`", self.es));
    }

    /// The index's own settings, flat (`index.refresh_interval`, ...).
    pub async fn settings(&self) -> Value {
        self.settings_of(&self.index).await
    }

    /// The settings of any index (flat names), as set on it.
    pub async fn settings_of(&self, index: &str) -> Value {
        let v: Value = self.http.get(format!("{}/{index}/_settings?flat_settings=true", self.es)).send().await.unwrap().json().await.unwrap();
        v[index]["settings"].clone()
    }

    pub async fn count(&self) -> u64 {
        let v: Value = self.http.get(format!("{}/{}/_count", self.es, self.index)).send().await.unwrap().json().await.unwrap();
        v["count"].as_u64().unwrap_or_else(|| panic!("no count in {v}"))
    }

    /// The count after a refresh, or `None` while the index does not exist yet.
    pub async fn try_count(&self) -> Option<u64> {
        let _ = self.http.post(format!("{}/{}/_refresh", self.es, self.index)).send().await;
        let r = self.http.get(format!("{}/{}/_count", self.es, self.index)).send().await.ok()?;
        r.json::<Value>().await.ok()?["count"].as_u64()
    }

    pub async fn doc(&self, id: &str) -> Value {
        let v: Value = self.http.get(format!("{}/{}/_doc/{id}", self.es, self.index)).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["found"], Value::Bool(true), "document {id} not found: {v}");
        v["_source"].clone()
    }

    pub async fn delete_index(&self) {
        let r = self.http.delete(format!("{}/{}", self.es, self.index)).send().await;
        r.unwrap_or_else(|e| panic!("cannot reach Elasticsearch at {}: {e}; start the stack with `make stack-up`", self.es));
    }

    pub async fn sql(&self, sql: &str) -> u64 {
        self.db.execute(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        self.db.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    }

    /// Drops the database and the index (not on panic: the next run starts by dropping them).
    pub async fn cleanup(self) {
        self.delete_index().await;
        drop(self.db);
        let admin = connect(&pg_admin_dsn()).await;
        drop_slots(&admin, &format!("pg2es_t_{}", self.name)).await;
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS pg2es_t_{} WITH (FORCE)", self.name)).await;
    }
}

/// Replication slots of a database keep it from being dropped (and keep WAL): drop them first.
pub async fn drop_slots(admin: &Client, db_name: &str) {
    let _ = admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active", &[&db_name]).await;
}

pub fn replace_db(dsn: &str, db: &str) -> String {
    match dsn.rsplit_once('/') {
        Some((head, tail)) => {
            let query = tail.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
            format!("{head}/{db}{query}")
        }
        None => panic!("PG2ES_TEST_PG_DSN must be a URL such as postgres://app:123qwe@127.0.0.1:5432/postgres"),
    }
}

/// Polls `check` until it is true, at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not true after {limit:?}");
}

/// Sends a signal (`-TERM`, `-KILL`) to a child process.
pub fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for a child to exit, at most `limit`; kills it and fails otherwise.
pub fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("pg2es did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `pg2es` binary with exactly these environment variables (and PATH).
pub fn pg2es_command(env: &[(String, String)], args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pg2es"));
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(env.iter().cloned());
    cmd
}

/// `pg2es run` of a test environment at log level info, stderr appended to `log`.
pub fn spawn_run(env: &TestEnv, log: &std::path::Path) -> std::process::Child {
    let mut vars = env.env_vars();
    vars.push(("RUST_LOG".into(), "info".into()));
    spawn_logged(&vars, &["run"], log)
}

/// Starts the binary with stderr appended to `log` (read it while the process runs).
pub fn spawn_logged(env: &[(String, String)], args: &[&str], log: &std::path::Path) -> std::process::Child {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    pg2es_command(env, args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::from(file)).spawn().expect("spawn pg2es")
}

/// Waits until `log` contains `text`, at most `limit`.
pub async fn log_shows(log: &std::path::Path, text: &str, limit: Duration) {
    eventually(limit, &format!("log shows {text:?}"), || async { std::fs::read_to_string(log).is_ok_and(|l| l.contains(text)) }).await;
}

impl TestEnv {
    pub async fn scalar_uuid(&self, sql: &str) -> uuid::Uuid {
        self.db.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    }
}

/// Tiny deterministic generator (xorshift); the seed is printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock; the seed is printed under `what`.
    pub fn from_clock(what: &str) -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        println!("{what} seed {seed}");
        Rng::new(seed)
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// [`kill_repeatedly`] 3 times within `limit` while `write` (given the database, a seed and a
/// stop signal; it returns the changes it made) writes; then one `run --once`, which must succeed.
/// The caller checks the index against Postgres.
pub async fn kills_under_a_writer<F>(env: &TestEnv, what: &str, limit: Duration, write: impl FnOnce(String, u64, tokio::sync::watch::Receiver<bool>) -> F)
where
    F: std::future::Future<Output = usize> + Send + 'static,
{
    let mut rng = Rng::from_clock(what);
    let log = env.dir.path().join("pg2es.log");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(write(env.dsn.clone(), rng.next(), stop_rx));
    let kills = kill_repeatedly(env, &log, &mut rng, 3, limit).await;
    stop_tx.send(true).unwrap();
    let changes = writer.await.unwrap();
    println!("kills survived: {kills}, changes made meanwhile: {changes}");
    assert_eq!(kills, 3);
    let o = pg2es_command(&env.env_vars(), &["run", "--once"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `pg2es run` started and SIGKILLed `kills` times, each after 0.3 to 3.3 s (so the first ones
/// land inside the full load), with up to 0.5 s down between, within `limit` in all; each exit
/// must be the kill, not an error of its own. Returns the kills made.
pub async fn kill_repeatedly(env: &TestEnv, log: &std::path::Path, rng: &mut Rng, kills: usize, limit: Duration) -> usize {
    let started = std::time::Instant::now();
    let mut done = 0;
    while done < kills && started.elapsed() < limit {
        let mut child = spawn_run(env, log);
        tokio::time::sleep(Duration::from_millis(300 + rng.below(3000))).await;
        signal(&child, "-KILL");
        let status = wait_exit(&mut child, Duration::from_secs(10));
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}: {}", std::fs::read_to_string(log).unwrap_or_default());
        done += 1;
        // Changes made while it is down too.
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
    }
    done
}

/// A column the documents read dropped and added again (every value gone), then one whose type is
/// altered: each time the next pass loads every record again, and verify finds no difference.
/// Before, the documents kept the values read before, and only `verify` showed it.
pub async fn columns_changed_in_place_reload_every_record(env: &TestEnv) {
    env.pass().await;
    assert!(env.verify().await.is_consistent());
    let described = env.scalar_i64("SELECT count(*) FROM content.film_work WHERE description IS NOT NULL").await;
    assert!(described > 0, "the catalog has descriptions to lose");
    env.sql("ALTER TABLE content.film_work DROP COLUMN description").await;
    env.sql("ALTER TABLE content.film_work ADD COLUMN description text").await;
    let loaded = |r: &[pg2es::pipeline::CycleReport]| r.iter().map(|r| r.records).sum::<usize>();
    let r = env.pass().await;
    assert!(loaded(&r) >= 999, "every record loaded again: {r:?}");
    let report = env.verify().await;
    assert!(report.is_consistent(), "{}", report.render());
    env.sql("ALTER TABLE content.film_work ALTER COLUMN title TYPE varchar(500)").await;
    let r = env.pass().await;
    assert!(loaded(&r) >= 999, "every record loaded again: {r:?}");
    assert!(env.verify().await.is_consistent());
    // Nothing changed since: nothing is loaded again.
    let r = env.pass().await;
    assert!(loaded(&r) < 999, "{r:?}");
}
