//! Several `pg2es run` processes with `PG2ES_STATE_STORE=postgres` on the real stack: one leader
//! per document, standbys that take over a killed or paused leader, and the documents spread
//! over the instances. Every instance gets the same settings but its name (`PG2ES_INSTANCE`).

mod common;

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestEnv;

/// The lease the tests use: a paused leader is replaced after it.
const LEASE_SEC: u64 = 4;

struct Instance {
    name: String,
    log: std::path::PathBuf,
    child: Child,
}

fn start(env: &TestEnv, vars: &[(String, String)], name: &str) -> Instance {
    let log = env.dir.path().join(format!("{name}.log"));
    let mut vars = vars.to_vec();
    vars.extend([
        ("PG2ES_STATE_STORE".to_string(), "postgres".to_string()),
        ("PG2ES_INSTANCE".to_string(), name.to_string()),
        ("PG2ES_LEASE_SEC".to_string(), LEASE_SEC.to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    Instance { name: name.to_string(), log: log.clone(), child: common::spawn_logged(&vars, &["run"], &log) }
}

fn log_of(i: &Instance) -> String {
    std::fs::read_to_string(&i.log).unwrap_or_default()
}

/// Who holds each lease now: (key, holder), by key.
async fn leases(env: &TestEnv) -> Vec<(String, String)> {
    let rows = env.db.query("SELECT key, holder FROM pg2es.leases WHERE expires_at > now() ORDER BY key", &[]).await.unwrap_or_default();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

async fn holder(env: &TestEnv, key: &str) -> Option<String> {
    leases(env).await.into_iter().find(|(k, _)| k == key).map(|(_, h)| h)
}

/// Renames random films every 20 ms until told to stop (at most 5,000).
fn writer(env: &TestEnv, stop: Arc<AtomicBool>, renames: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let dsn = env.dsn.clone();
    tokio::spawn(async move {
        let db = common::connect(&dsn).await;
        let films: Vec<String> = db.query("SELECT id::text FROM content.film_work", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        let mut rng = common::Rng::from_clock("ha writer");
        for n in 0..5_000u64 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let film = &films[(rng.next() % films.len() as u64) as usize];
            db.execute("UPDATE content.film_work SET title = $1, updated_at = now() WHERE id::text = $2", &[&format!("Renamed while failing over {n}"), film])
                .await
                .expect("rename");
            renames.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

fn stop_all(instances: &mut [Instance]) {
    for i in instances.iter_mut() {
        let _ = std::process::Command::new("kill").args(["-TERM", &i.child.id().to_string()]).status();
        common::wait_exit(&mut i.child, Duration::from_secs(30));
    }
}

/// Two instances and a writer; the leader is SIGKILLed three times (and started again as a
/// standby). Each time the other takes over within 10 s, as its log says ("took over, the
/// previous leader's session is gone"), and at the end the index equals Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_seconds_and_nothing_is_lost() {
    let env = TestEnv::new("ha_kill").await;
    let vars = env.env_vars();
    let key = env.state_file().display().to_string();
    let mut instances = vec![start(&env, &vars, "ha-a"), start(&env, &vars, "ha-b")];
    common::eventually(Duration::from_secs(60), "one instance leads and loads 999 documents", || async {
        holder(&env, &key).await.is_some() && env.try_count().await == Some(999)
    })
    .await;
    let (stop, renames) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writing = writer(&env, stop.clone(), renames.clone());
    let mut takeovers = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = holder(&env, &key).await.expect("a leader");
        let at = instances.iter().position(|i| i.name == leader).expect("the leader is one of ours");
        let killed = Instant::now();
        instances[at].child.kill().unwrap();
        let _ = instances[at].child.wait();
        let mut new_leader = None;
        while killed.elapsed() < Duration::from_secs(20) {
            match holder(&env, &key).await {
                Some(h) if h != leader => {
                    new_leader = Some(h);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let took = killed.elapsed();
        let new_leader = new_leader.unwrap_or_else(|| panic!("round {round}: nobody took over from {leader} within 20 s"));
        takeovers.push(took);
        let other = instances.iter().find(|i| i.name == new_leader).unwrap();
        common::log_shows(&other.log, "took over, the previous leader's session is gone", Duration::from_secs(5)).await;
        // The killed one comes back as a standby.
        let name = instances[at].name.clone();
        instances[at] = start(&env, &vars, &name);
    }
    stop.store(true, Ordering::Relaxed);
    writing.await.unwrap();
    eprintln!("takeovers after SIGKILL: {takeovers:?}; renames {}", renames.load(Ordering::Relaxed));
    for (round, took) in takeovers.iter().enumerate() {
        assert!(*took < Duration::from_secs(10), "round {round}: the takeover took {took:?}");
    }
    common::eventually(Duration::from_secs(60), "the index equals postgres after the writer stopped", || async {
        env.refresh().await;
        env.verify().await.is_consistent()
    })
    .await;
    // While an instance leads, a pass and a reset are refused (exit 3), as beside a file's `run`.
    let mut once = vars.clone();
    once.extend([("PG2ES_STATE_STORE".to_string(), "postgres".to_string()), ("PG2ES_INSTANCE".to_string(), "ha-once".to_string())]);
    for args in [&["run", "--once"][..], &["reset", "--yes"][..]] {
        let out = common::pg2es_command(&once, args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("leads") && err.contains("pg2es.leases"), "{args:?}: {err}");
    }
    stop_all(&mut instances);
    // Each takeover read on from the state in Postgres: one full load in all.
    let loads: usize = instances.iter().map(|i| log_of(i).matches("full load: every record").count()).sum();
    assert!(loads <= 1, "{loads} full loads");
    env.cleanup().await;
}

/// A leader paused (SIGSTOP) past its lease: the standby takes over once the lease has run out,
/// and the paused one, resumed, sends nothing more to Elasticsearch. Its requests go through the
/// enforcing proxy (`scripts/proxy.sh`), whose access log shows every request it sends: none
/// after it was resumed. It says it lost the lease and stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_writes_nothing_after_its_lease_is_gone() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: start the proxy with `scripts/proxy.sh up` and export what `scripts/proxy.sh env` prints (make test does both)")
        })
    };
    let env = TestEnv::new("ha_pause").await;
    let key = env.state_file().display().to_string();
    let direct = env.env_vars();
    let mut proxied: Vec<(String, String)> = direct.iter().filter(|(k, _)| k != "ES_URL").cloned().collect();
    proxied.extend([
        ("ES_URL".to_string(), var("PG2ES_TEST_PROXY_BASIC_URL")),
        ("ES_CA_FILE".to_string(), var("PG2ES_TEST_PROXY_CA")),
        ("ES_USERNAME".to_string(), var("PG2ES_TEST_PROXY_USER")),
        ("ES_PASSWORD".to_string(), var("PG2ES_TEST_PROXY_PASSWORD")),
    ]);
    let access_log = var("PG2ES_TEST_PROXY_LOG");
    let logged = || std::fs::read_to_string(&access_log).map(|l| l.lines().count()).unwrap_or(0);
    let mut leader = start(&env, &proxied, "ha-paused");
    common::eventually(Duration::from_secs(60), "the proxied instance leads and loads 999 documents", || async {
        holder(&env, &key).await.as_deref() == Some("ha-paused") && env.try_count().await == Some(999)
    })
    .await;
    let mut standby = start(&env, &direct, "ha-standby");
    common::log_shows(&standby.log, "standing by", Duration::from_secs(30)).await;

    common::signal(&leader.child, "-STOP");
    let paused = Instant::now();
    common::eventually(Duration::from_secs(30), "the standby takes over the paused leader", || async {
        holder(&env, &key).await.as_deref() == Some("ha-standby")
    })
    .await;
    let took = paused.elapsed();
    assert!(took >= Duration::from_secs(LEASE_SEC - 2), "taken over after {took:?}, before the lease could run out");
    common::log_shows(&standby.log, "took over, the previous leader's lease ran out", Duration::from_secs(5)).await;
    let film: String = env.db.query_one("SELECT id::text FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    env.sql(&format!("UPDATE content.film_work SET title = 'While the leader was paused', updated_at = now() WHERE id::text = '{film}'")).await;
    common::eventually(Duration::from_secs(30), "the new leader stores the change", || async {
        env.refresh().await;
        env.doc(&film).await["title"] == "While the leader was paused"
    })
    .await;

    let before = logged();
    common::signal(&leader.child, "-CONT");
    common::log_shows(&leader.log, "lost the lease: wrote nothing more, standing by", Duration::from_secs(30)).await;
    common::log_shows(&leader.log, "standing by: another instance leads", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = logged();
    let text = std::fs::read_to_string(&access_log).unwrap_or_default();
    let sent: Vec<&str> = text.lines().skip(before).collect();
    assert_eq!(after, before, "the resumed leader sent {} requests: {sent:?}", after - before);
    eprintln!("takeover of a paused leader after {took:?}");
    stop_all(std::slice::from_mut(&mut leader));
    stop_all(std::slice::from_mut(&mut standby));
    assert!(env.verify().await.is_consistent());
    env.cleanup().await;
}

/// Three instances, the cinema's three documents: each instance leads one. The leader of
/// persons is killed; another instance takes persons too, and a rename of a person reaches its
/// index. `verify` finds every index equal to Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_lead_one_document_each_and_take_over_a_killed_ones() {
    let mut env = TestEnv::new("ha_three").await;
    let prefix = format!("{}_", env.index);
    env.extra_env.extend([("PG2ES_DOCUMENTS".to_string(), String::new()), ("ES_INDEX_PREFIX".to_string(), prefix.clone())]);
    let mut vars = env.env_vars();
    vars.retain(|(k, _)| k != "ES_INDEX" && k != "ES_SCHEMA_FILE");
    for doc in ["movies", "genres", "persons"] {
        let _ = env.http.delete(format!("{}/{prefix}{doc}", env.es)).send().await;
    }
    let mut instances: Vec<Instance> = ["ha-1", "ha-2", "ha-3"].iter().map(|n| start(&env, &vars, n)).collect();
    common::eventually(Duration::from_secs(90), "three leases, three holders", || async {
        let l = leases(&env).await;
        let mut holders: Vec<&String> = l.iter().map(|(_, h)| h).collect();
        holders.sort();
        holders.dedup();
        l.len() == 3 && holders.len() == 3
    })
    .await;
    let persons_key = env.dir.path().join("state.persons.json").display().to_string();
    let leader = holder(&env, &persons_key).await.expect("persons is led");
    let at = instances.iter().position(|i| i.name == leader).unwrap();
    let killed = Instant::now();
    instances[at].child.kill().unwrap();
    let _ = instances[at].child.wait();
    common::eventually(Duration::from_secs(30), "another instance takes persons", || async { holder(&env, &persons_key).await.is_some_and(|h| h != leader) })
        .await;
    eprintln!("persons taken over {:?} after its leader was killed", killed.elapsed());
    let person: String = env.db.query_one("SELECT id::text FROM content.person ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    env.sql(&format!("UPDATE content.person SET full_name = 'Renamed After The Kill', updated_at = now() WHERE id::text = '{person}'")).await;
    let index = format!("{prefix}persons");
    common::eventually(Duration::from_secs(30), "the rename reaches the persons index", || async {
        let _ = env.http.post(format!("{}/{index}/_refresh", env.es)).send().await;
        let v: serde_json::Value = env.http.get(format!("{}/{index}/_doc/{person}", env.es)).send().await.unwrap().json().await.unwrap();
        v["_source"]["full_name"] == "Renamed After The Kill"
    })
    .await;
    // The films that person is in are the movies document's, led by another instance: its cycle
    // follows the persons' by a moment.
    let clean = || async { common::pg2es_command(&vars, &["verify"]).output().unwrap().status.code() == Some(0) };
    common::eventually(Duration::from_secs(30), "verify reports no difference", clean).await;
    instances.remove(at);
    stop_all(&mut instances);
    for doc in ["movies", "genres", "persons"] {
        let _ = env.http.delete(format!("{}/{prefix}{doc}", env.es)).send().await;
    }
    env.cleanup().await;
}

/// From the file to the table: `pg2es import-state` copies the state, and a run with
/// `PG2ES_STATE_STORE=postgres` reads on from it, loading only the change made meanwhile.
/// `status` then names the instance that led it last; `reset --yes` removes the row, and the
/// next run loads every record again.
#[tokio::test]
async fn a_file_state_moves_to_postgres_and_nothing_is_loaded_again() {
    let env = TestEnv::new("ha_import").await;
    assert_eq!(env.run_once().await.records, 999);
    env.sql(
        "UPDATE content.film_work SET title = 'Changed before the move', updated_at = now() WHERE id = (SELECT id FROM content.film_work ORDER BY id LIMIT 1)",
    )
    .await;
    let file_vars = env.env_vars();
    let out = common::pg2es_command(&file_vars, &["import-state"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("imported"), "{said}");
    let mut vars = file_vars.clone();
    vars.extend([
        ("PG2ES_STATE_STORE".to_string(), "postgres".to_string()),
        ("PG2ES_INSTANCE".to_string(), "ha-import".to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    let out = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(!log.contains("full load: every record"), "{log}");
    assert!(log.contains("records=1 "), "only the change is loaded: {log}");
    // A second import leaves the row alone.
    let out = common::pg2es_command(&file_vars, &["import-state"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("left as it is"));

    let out = common::pg2es_command(&vars, &["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let doc = &status["movies"];
    assert_eq!(doc["leader"]["holder"], "ha-import", "{status}");
    assert_eq!(doc["leader"]["held"], false, "{status}");
    assert_eq!(out.status.code(), Some(6), "no instance leads it now: {status}");

    let out = common::pg2es_command(&vars, &["reset", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = common::pg2es_command(&vars, &["run", "--once"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(log.contains("full load: every record"), "after the reset everything is loaded again: {log}");
    env.cleanup().await;
}

/// `PG2ES_SOURCE=replication`: the run's one slot is one lease for all of its documents. The
/// leader is killed with a writer running; the standby takes the slot over and reads on from the
/// positions in Postgres (no second full load); the index ends equal to Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_replication_mode_the_slot_moves_with_the_lease() {
    let env = TestEnv::replicated("ha_repl").await;
    let vars = env.env_vars();
    let mut instances = vec![start(&env, &vars, "ha-r1")];
    common::eventually(Duration::from_secs(60), "the first instance leads and loads 999 documents", || async { env.try_count().await == Some(999) }).await;
    instances.push(start(&env, &vars, "ha-r2"));
    common::log_shows(&instances[1].log, "standing by", Duration::from_secs(30)).await;
    let key = leases(&env).await.into_iter().map(|(k, _)| k).next().expect("a lease");
    assert!(key.starts_with("slot "), "the lease is the slot's: {key}");
    let (stop, renames) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writing = writer(&env, stop.clone(), renames.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    instances[0].child.kill().unwrap();
    let _ = instances[0].child.wait();
    common::log_shows(&instances[1].log, "took over, the previous leader's session is gone", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writing.await.unwrap();
    common::eventually(Duration::from_secs(60), "the index equals postgres after the writer stopped", || async {
        env.refresh().await;
        env.verify().await.is_consistent()
    })
    .await;
    stop_all(&mut instances[1..]);
    let loads: usize = instances.iter().map(|i| log_of(i).matches("full load: every record").count()).sum();
    assert_eq!(loads, 1, "one full load in all");
    env.cleanup().await;
}

/// `pg2es status` on another host than the leader's (here: another working directory, so the
/// relative state file and the status file beside it are not there) sees what the leader
/// publishes in `pg2es.status`: its last success and its lag, and the dead letters counted in
/// `pg2es.dead_letters`. Once the leader is killed and its lease runs out, it says failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_another_host_sees_the_leaders_health() {
    let env = TestEnv::new("ha_status_elsewhere").await;
    let (host_a, host_b) = (env.dir.path().join("a"), env.dir.path().join("b"));
    std::fs::create_dir_all(&host_a).unwrap();
    std::fs::create_dir_all(&host_b).unwrap();
    let mut vars: Vec<(String, String)> = env.env_vars().into_iter().filter(|(k, _)| k != "ETL_STATE_FILE" && k != "ETL_DEAD_LETTER_FILE").collect();
    vars.extend([
        ("ETL_STATE_FILE".to_string(), "state/movies.json".to_string()),
        ("ETL_DEAD_LETTER_FILE".to_string(), "state/dead.jsonl".to_string()),
        ("PG2ES_STATE_STORE".to_string(), "postgres".to_string()),
        ("PG2ES_LEASE_SEC".to_string(), LEASE_SEC.to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    let log = env.dir.path().join("a.log");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let mut leader_vars = vars.clone();
    leader_vars.push(("PG2ES_INSTANCE".to_string(), "ha-host-a".to_string()));
    // Killed when dropped, so that a failed assertion leaves no leader renewing its lease.
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut leader = KillOnDrop(
        common::pg2es_command(&leader_vars, &["run"])
            .current_dir(&host_a)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .unwrap(),
    );
    common::eventually(Duration::from_secs(60), "the leader loads every film", || async {
        let count = env.http.get(format!("{}/{}/_count", env.es, env.index)).send().await.ok();
        let body: Option<serde_json::Value> = match count {
            Some(r) => r.json().await.ok(),
            None => None,
        };
        body.is_some_and(|b| b["count"] == 999)
    })
    .await;
    env.sql(&format!(
        "INSERT INTO pg2es.dead_letters (key, id, index, status, reason, at) VALUES ('state/movies.json', 'f1', '{}', 400, 'refused in a test', now())",
        env.index
    ))
    .await;
    let status_b = || {
        let out = common::pg2es_command(&vars, &["status", "--json"]).current_dir(&host_b).output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), json["movies"].clone())
    };
    assert!(!host_b.join("state").exists(), "host b has no state directory of its own");
    let mut seen = None;
    for _ in 0..50 {
        let (code, doc) = status_b();
        if code == Some(0) && doc["lag_seconds"].is_number() {
            seen = Some(doc);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let doc = seen.unwrap_or_else(|| panic!("status on host b never saw the leader's lag: {:?}", status_b()));
    assert!(doc["last_progress"].is_string(), "{doc}");
    assert_eq!(doc["leader"]["holder"], "ha-host-a", "{doc}");
    assert_eq!(doc["leader"]["held"], true, "{doc}");
    assert!(doc["running"].is_null(), "no run on host b: {doc}");
    assert_eq!(doc["dead_letters"], 1, "{doc}");

    leader.0.kill().unwrap();
    leader.0.wait().unwrap();
    let killed = Instant::now();
    let mut last = status_b();
    while last.0 != Some(6) && killed.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = status_b();
    }
    assert_eq!(last.0, Some(6), "status on host b says failing once the lease ran out: {:?}", last.1);
    assert!(last.1["reasons"].to_string().contains("no instance leads it"), "{}", last.1);
    env.cleanup().await;
}
