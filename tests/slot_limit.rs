//! No replication slot left: `pg2es run --once` in replication mode stops at once with a setup
//! error that names `max_replication_slots` and how to find and drop an unused slot, instead of
//! waiting for Postgres forever.
//!
//! The limit is the server's (`max_replication_slots`, set at start), so the test starts a
//! throwaway cluster of its own with Debian's PostgreSQL 15 binaries (`PG2ES_TEST_PG_BIN` to use
//! others) on a free port, with one slot, and takes that slot first. Missing binaries fail it.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn pg_bin() -> PathBuf {
    PathBuf::from(std::env::var("PG2ES_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A PostgreSQL program, as the `postgres` OS user when the test runs as root (initdb and the
/// server refuse to run as root).
fn pg_program(name: &str) -> Command {
    let program = pg_bin().join(name);
    assert!(program.is_file(), "{} not found: install PostgreSQL 15's server (apt-get install postgresql-15) or set PG2ES_TEST_PG_BIN", program.display());
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program).current_dir("/");
        cmd
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A cluster of its own; stopped and removed when dropped, also when the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(max_replication_slots: u32) -> Cluster {
        let dir = tempfile::Builder::new().prefix("pg2es-slot-limit-").tempdir().expect("a temporary directory");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres").arg(dir.path());
                    c
                },
                "chown the cluster's directory to postgres",
            );
        }
        // A port nobody listens on now (the server takes it a moment later).
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let cluster = Cluster { dir, port };
        let mut initdb = pg_program("initdb");
        initdb.arg("-D").arg(cluster.data()).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]);
        run(initdb, "initdb");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='{}' -c wal_level=logical -c max_replication_slots={max_replication_slots} -c max_wal_senders=2 -c fsync=off",
            cluster.dir.path().display()
        );
        let mut start = pg_program("pg_ctl");
        start.arg("-D").arg(cluster.data()).arg("-l").arg(cluster.dir.path().join("server.log")).args(["-w", "-t", "60", "-o", &options, "start"]);
        run(start, "pg_ctl start");
        cluster
    }

    fn dsn(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = pg_program("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.output();
        // The TempDir removes the directory after this.
    }
}

fn bookshop_file(name: &str) -> String {
    std::fs::read_to_string(common::bookshop_dir().join(name)).unwrap_or_else(|e| panic!("catalog/bookshop/{name}: {e}"))
}

async fn index_exists(http: &reqwest::Client, es: &str, index: &str) -> bool {
    let r = http.head(format!("{es}/{index}")).send().await.unwrap_or_else(|e| panic!("cannot reach Elasticsearch at {es}: {e}"));
    r.status().is_success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_slot_left_stops_with_the_setting_and_the_query_of_unused_slots() {
    let cluster = Cluster::start(1);
    let admin = common::connect(&cluster.dsn("postgres")).await;
    admin.batch_execute("CREATE DATABASE bookshop").await.unwrap();
    // The server's one slot, taken by another consumer.
    admin.batch_execute("SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')").await.unwrap();
    let db = common::connect(&cluster.dsn("bookshop")).await;
    for file in ["schema.sql", "seed.sql"] {
        db.batch_execute(&bookshop_file(file)).await.unwrap_or_else(|e| panic!("catalog/bookshop/{file}: {e}"));
    }

    let es = common::es_url();
    let index = format!("{}slot_limit", common::index_prefix());
    let http = reqwest::Client::new();
    http.delete(format!("{es}/{index}")).send().await.unwrap_or_else(|e| panic!("cannot reach Elasticsearch at {es}: {e}"));
    let state = tempfile::tempdir().unwrap();
    let definition = common::bookshop_dir().join("bookshop.toml").display().to_string();
    let env: Vec<(String, String)> = [
        ("PG_DSN", cluster.dsn("bookshop")),
        ("PG_SCHEMA", "bookshop".to_string()),
        ("PG2ES_DEFINITION", definition),
        ("PG2ES_DOCUMENTS", "books".to_string()),
        ("PG2ES_SOURCE", "replication".to_string()),
        ("ES_URL", es.clone()),
        ("ES_INDEX", index.clone()),
        ("ETL_STATE_FILE", state.path().join("state.json").display().to_string()),
        ("ETL_BACKOFF_INITIAL_MS", "50".to_string()),
        ("ETL_BACKOFF_MAX_SEC", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let log = state.path().join("pg2es.log");
    let started = Instant::now();
    let mut child = common::spawn_logged(&env, &["run", "--once"], &log);
    // Before the fix it retried "postgres unavailable" until killed here.
    let status = common::wait_exit(&mut child, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    println!("exit {status:?} after {:?}\n{text}", started.elapsed());
    assert_eq!(status.code(), Some(1), "a setup error: {text}");
    assert!(!text.contains("postgres unavailable"), "no slot left is not an outage to wait out: {text}");
    let error = text.lines().find(|l| l.starts_with("pg2es: error:")).unwrap_or_else(|| panic!("no error line: {text}"));
    for part in ["postgres setup:", "max_replication_slots", "restart", "FROM pg_replication_slots WHERE NOT active", "SELECT pg_drop_replication_slot('name')"]
    {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
    // The slot it could not take was not made some other way, and the other consumer's is kept.
    let slots: Vec<String> = admin.query("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(slots, ["someone_else"]);
    // The index made at start held nothing, so it is not left behind.
    assert!(!index_exists(&http, &es, &index).await, "index {index} left behind");
    drop(db);
    drop(admin);
    drop(cluster);
}
