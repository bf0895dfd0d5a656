//! The `pg2es` binary as an operator meets it: exit codes, messages, one instance, signals.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{signal, wait_exit, TestEnv};

fn pg2es(env: &[(String, String)], args: &[&str]) -> Command {
    common::pg2es_command(env, args)
}

fn output(env: &[(String, String)], args: &[&str]) -> Output {
    pg2es(env, args).output().expect("run pg2es")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    for (var, value) in [("ETL_BATCH_SIZE", "lots"), ("ES_URL", "localhost"), ("ETL_CYCLE_SEC", "-3"), ("PG_SCHEMA", "a b")] {
        let o = output(&[(var.to_string(), value.to_string())], &["run", "--once"]);
        assert_eq!(o.status.code(), Some(2), "{var}={value}: {}", stderr(&o));
        assert!(stderr(&o).contains(var), "{var}: {}", stderr(&o));
    }
}

#[test]
fn print_config_masks_secrets() {
    let env = vec![
        ("PG_DSN".to_string(), "postgres://app:pg-secret-1@db:5432/movies".to_string()),
        ("ES_USERNAME".to_string(), "elastic".to_string()),
        ("ES_PASSWORD".to_string(), "es-secret-2".to_string()),
    ];
    let o = output(&env, &["print-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(all.contains("postgres host          db"), "{all}");
    assert!(!all.contains("pg-secret-1") && !all.contains("es-secret-2"), "{all}");
}

/// Each document's own names, as `run` uses them, from the definition file alone: nothing
/// answers on the addresses given, and it does not wait for them.
#[test]
fn print_config_shows_each_documents_index_and_slot_without_connecting() {
    let definition = common::bookshop_dir().join("bookshop.toml").display().to_string();
    let vars = |more: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v = vec![
            ("PG_DSN".to_string(), "postgres://app:pg-secret-1@127.0.0.1:1/shop".to_string()),
            ("ES_URL".to_string(), "http://127.0.0.1:1".to_string()),
            ("PG2ES_SOURCE".to_string(), "replication".to_string()),
        ];
        v.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        v
    };
    let started = std::time::Instant::now();
    let o = output(&vars(&[("PG2ES_DEFINITION", &definition), ("ES_INDEX_PREFIX", "shop_")]), &["print-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let section = out.split("\ndocument books\n").nth(1).unwrap_or_else(|| panic!("no books section in\n{out}"));
    assert!(section.contains("index                shop_books  (ES_INDEX_PREFIX and the definition)"), "{out}");
    assert!(section.contains("replication slot     pg2es_shop_books"), "{out}");
    assert!(section.contains("state file           state/pg2es-state.json"), "{out}");
    assert!(!out.contains("pg2es_movies") && !out.contains("pg-secret-1"), "{out}");

    // A definition that cannot be read: the settings are shown, then it fails as run would.
    let o = output(&vars(&[("PG2ES_DEFINITION", "/nonexistent/shop.toml")]), &["print-config"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("PG2ES_DEFINITION"), "{}", String::from_utf8_lossy(&o.stdout));
}

#[tokio::test]
async fn a_missing_schema_file_is_a_clear_config_error() {
    let env = TestEnv::new("bin_schema_file").await;
    let mut vars = env.env_vars();
    vars.push(("ES_SCHEMA_FILE".into(), "/nonexistent/es_schema.json".into()));
    let o = output(&vars, &["run", "--once"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("ES_SCHEMA_FILE"), "{}", stderr(&o));
    env.cleanup().await;
}

#[tokio::test]
async fn one_instance_per_state_file_and_sigterm_exits_cleanly() {
    let env = TestEnv::new("bin_lock").await;
    let vars = env.env_vars();
    let mut first = pg2es(&vars, &["run"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // The first instance is up once it has loaded the catalog.
    common::eventually(Duration::from_secs(60), "first instance loads 999 documents", || async { env.try_count().await == Some(999) }).await;

    let second = output(&vars, &["run", "--once"]);
    assert_eq!(second.status.code(), Some(3), "{}", stderr(&second));
    assert!(stderr(&second).contains("another pg2es instance"), "{}", stderr(&second));

    signal(&first, "-TERM");
    let status = wait_exit(&mut first, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("pg2es stopped"), "{log}");

    // The lock went with the process: a new run starts and finds nothing left to do.
    let again = output(&vars, &["run", "--once"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("stored=0"), "{}", stderr(&again));
    env.cleanup().await;
}

#[tokio::test]
async fn a_lock_left_by_a_killed_process_does_not_block() {
    let env = TestEnv::new("bin_kill_lock").await;
    let vars = env.env_vars();
    let mut first = pg2es(&vars, &["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    common::eventually(Duration::from_secs(30), "state file written", || async { env.state_file().exists() }).await;
    signal(&first, "-KILL");
    wait_exit(&mut first, Duration::from_secs(10));
    let o = output(&vars, &["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    env.refresh().await;
    assert_eq!(env.count().await, 999);
    env.cleanup().await;
}

#[tokio::test]
async fn an_index_with_another_mapping_is_refused() {
    let env = TestEnv::new("bin_mapping").await;
    let r = env
        .http
        .put(format!("{}/{}", env.es, env.index))
        .json(&serde_json::json!({"mappings": {"properties": {"title": {"type": "keyword"}}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let o = output(&env.env_vars(), &["run", "--once"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("different mapping") && err.contains("mappings."), "{err}");
    // Nothing was written into the foreign index.
    env.refresh().await;
    assert_eq!(env.count().await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn wrong_postgres_password_is_fatal_with_a_hint() {
    let env = TestEnv::new("bin_pg_auth").await;
    let mut vars = env.env_vars();
    vars.push(("PG_PASSWORD".into(), "definitely-wrong".into()));
    let o = output(&vars, &["run", "--once"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("password"), "{err}");
    assert!(!err.contains("definitely-wrong"), "{err}");
    env.cleanup().await;
}

fn pg_ca_file() -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh")).arg("pg-ca-file").output().unwrap();
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!path.is_empty(), "no Postgres CA: run scripts/stack.sh up pg");
    path
}

/// TLS to Postgres: with the CA that signed the server's certificate the load runs over TLS;
/// without it (public roots only) the server is refused, so the certificate really is checked.
#[tokio::test]
async fn postgres_over_tls_verifies_the_server() {
    let env = TestEnv::new("bin_pg_tls").await;
    let mut vars = env.env_vars();
    let dsn = format!("{}?sslmode=require&application_name=pg2es_tls_test", env.dsn);
    vars.push(("PG_DSN".into(), dsn.clone()));

    let refused = output(&vars, &["run", "--once"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).to_lowercase().contains("certificate"), "{}", stderr(&refused));

    vars.push(("PG_CA_FILE".into(), pg_ca_file()));
    let mut child = pg2es(&vars, &["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    common::eventually(Duration::from_secs(60), "load over tls", || async { env.try_count().await == Some(999) }).await;
    let row = env
        .db
        .query_one("SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'pg2es_tls_test'", &[])
        .await
        .unwrap();
    let all_tls: Option<bool> = row.get(0);
    assert_eq!(all_tls, Some(true), "pg2es's sessions must be encrypted");
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    env.cleanup().await;
}

/// Debug logs of a whole run, and its errors, never carry a password.
#[tokio::test]
async fn passwords_never_reach_the_logs() {
    let env = TestEnv::new("bin_secret_logs").await;
    let mut vars = env.env_vars();
    // The test cluster has no auth: the header is sent and ignored, which is what we need to see it is not logged.
    vars.push(("ES_USERNAME".into(), "elastic".into()));
    vars.push(("ES_PASSWORD".into(), "es-pass-7c1e".into()));
    vars.push(("RUST_LOG".into(), "debug".into()));
    let o = output(&vars, &["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pg_password = "123qwe";
    assert!(env.dsn.contains(pg_password), "the harness DSN carries the password");
    let log = stderr(&o);
    assert!(log.len() > 1000, "expected a debug log");
    assert!(!log.contains("es-pass-7c1e") && !log.contains(pg_password), "{log}");

    let mut wrong = env.env_vars();
    wrong.push(("PG_PASSWORD".into(), "wrong-pass-9f2a".into()));
    wrong.push(("RUST_LOG".into(), "debug".into()));
    let o = output(&wrong, &["run", "--once"]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("wrong-pass-9f2a"), "{}", stderr(&o));
    env.cleanup().await;
}

/// A TLS endpoint in front of the real Elasticsearch (socat, with the project CA's certificate for
/// 127.0.0.1): with ES_CA_FILE the load goes through and is checked; without it the certificate is
/// refused at once with a hint, not retried forever.
#[tokio::test]
async fn elasticsearch_over_tls_verifies_the_server() {
    let env = TestEnv::new("bin_es_tls").await;
    let ca = pg_ca_file();
    let dir = std::path::Path::new(&ca).parent().unwrap();
    let port = 9443;
    let es_port = env.es.rsplit(':').next().unwrap().to_string();
    let mut proxy = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ))
        .arg(format!("TCP:127.0.0.1:{es_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (installed by make check-tools)");
    common::eventually(Duration::from_secs(10), "tls proxy listening", || async { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() }).await;

    let mut vars = env.env_vars();
    vars.push(("ES_URL".into(), format!("https://127.0.0.1:{port}")));
    let refused = output(&vars, &["run", "--once"]);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("ES_CA_FILE") && err.to_lowercase().contains("certificate"), "{err}");

    vars.push(("ES_CA_FILE".into(), ca.clone()));
    let o = output(&vars, &["run", "--once"]);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(o.status.success(), "{}", stderr(&o));
    env.refresh().await;
    assert_eq!(env.count().await, 999);
    env.cleanup().await;
}

/// Without ES_SCHEMA_FILE the index is created from the definition built into the binary, so
/// pg2es runs from any working directory.
#[tokio::test]
async fn the_builtin_index_definition_works_from_any_directory() {
    let env = TestEnv::new("bin_builtin_schema").await;
    let vars: Vec<(String, String)> = env.env_vars().into_iter().filter(|(k, _)| k != "ES_SCHEMA_FILE").collect();
    let elsewhere = tempfile::tempdir().unwrap();
    let o = pg2es(&vars, &["run", "--once"]).current_dir(elsewhere.path()).output().expect("run pg2es");
    assert!(o.status.success(), "{}", stderr(&o));
    env.refresh().await;
    assert_eq!(env.count().await, 999);
    let mapping: serde_json::Value = env.http.get(format!("{}/{}/_mapping", env.es, env.index)).send().await.unwrap().json().await.unwrap();
    let builtin = pg2es::catalog::definition::CINEMA_SCHEMAS.iter().find(|(file, _)| *file == "movies.es.json").expect("the movies schema is built in").1;
    let expected: serde_json::Value = serde_json::from_str(builtin).unwrap();
    let mut mappings = mapping[&env.index]["mappings"].clone();
    // Beside the mapping, the record of the source it is kept from (not part of the schema).
    let meta = mappings.as_object_mut().unwrap().remove("_meta").unwrap_or_default();
    assert_eq!(meta["pg2es"]["document"], "movies", "{meta}");
    assert_eq!(mappings, expected["mappings"], "the index has the movies mapping");
    env.cleanup().await;
}

/// The server asks for a password and none is set: a configuration error (exit 2, at once, naming
/// the settings), not an outage to wait out. PGPASSWORD supplies it as for libpq-based tools.
#[tokio::test]
async fn a_missing_postgres_password_exits_2_at_once() {
    let env = TestEnv::new("bin_pg_no_password").await;
    let without_password = env.dsn.replacen(":123qwe@", "@", 1);
    assert_ne!(without_password, env.dsn, "the harness DSN carries the password");
    let mut vars: Vec<(String, String)> = env.env_vars().into_iter().filter(|(k, _)| k != "PG_DSN").collect();
    vars.push(("PG_DSN".into(), without_password));
    for args in [&["run", "--once"][..], &["run"][..]] {
        let started = std::time::Instant::now();
        let mut child = pg2es(&vars, args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(15));
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("PG_PASSWORD") && err.contains("PG_DSN"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", started.elapsed());
    }

    vars.push(("PGPASSWORD".into(), "123qwe".into()));
    let o = output(&vars, &["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    env.refresh().await;
    assert_eq!(env.count().await, 999);
    env.cleanup().await;
}

/// libpq's sslmodes against the local Postgres, whose certificate (signed by the project CA)
/// names 127.0.0.1 and localhost: verify-full with sslrootcert in the DSN loads over TLS; a
/// host name the certificate does not carry (hostaddr still 127.0.0.1) is refused by
/// verify-full and accepted by verify-ca; prefer encrypts without a CA.
#[tokio::test]
async fn postgres_sslmodes_verify_full_verify_ca_and_prefer() {
    let env = TestEnv::new("bin_pg_sslmode").await;
    let ca = pg_ca_file();
    let db = env.dsn.rsplit('/').next().unwrap().to_string();
    let base: Vec<(String, String)> = env.env_vars().into_iter().filter(|(k, _)| k != "PG_DSN").collect();
    let with_dsn = |dsn: String| {
        let mut vars = base.clone();
        vars.push(("PG_DSN".into(), dsn));
        vars
    };

    let full = with_dsn(format!("postgres://app:123qwe@127.0.0.1:5432/{db}?sslmode=verify-full&sslrootcert={ca}&application_name=pg2es_verify_full"));
    let mut child = pg2es(&full, &["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    common::eventually(Duration::from_secs(60), "load over verify-full", || async { env.try_count().await == Some(999) }).await;
    let row = env
        .db
        .query_one("SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'pg2es_verify_full'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<bool>>(0), Some(true), "pg2es's sessions must be encrypted");
    signal(&child, "-TERM");
    wait_exit(&mut child, Duration::from_secs(20));

    let wrong_name = |mode: &str| {
        with_dsn(format!("host=wrong-name.example hostaddr=127.0.0.1 port=5432 user=app password=123qwe dbname={db} sslmode={mode} sslrootcert='{ca}'"))
    };
    let refused = output(&wrong_name("verify-full"), &["run", "--once"]);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("wrong-name.example") || err.to_lowercase().contains("name"), "{err}");
    assert!(err.contains("hint:") && err.contains("sslmode=verify-ca"), "the hint says what to do: {err}");

    let o = output(&wrong_name("verify-ca"), &["run", "--once"]);
    assert!(o.status.success(), "verify-ca checks the chain only: {}", stderr(&o));

    let o = output(&with_dsn(format!("postgres://app:123qwe@127.0.0.1:5432/{db}?sslmode=prefer")), &["run", "--once"]);
    assert!(o.status.success(), "prefer: {}", stderr(&o));
    env.cleanup().await;
}

/// A self-signed certificate that is its own CA, served by a TLS endpoint in front of the real
/// Elasticsearch and given as ES_CA_FILE: TLS refuses a CA as a server certificate, and the
/// message says so and how to fix it, instead of rustls's `CaUsedAsEndEntity`.
#[tokio::test]
async fn a_ca_certificate_used_as_the_server_certificate_gets_a_hint() {
    let env = TestEnv::new("bin_es_ca_as_server").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("self.pem"), dir.path().join("self.key"));
    // `req -x509` marks the certificate CA:TRUE, as most self-signing recipes do.
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (installed by scripts/stack.sh)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let port = 9444;
    let es_port = env.es.rsplit(':').next().unwrap().to_string();
    let mut proxy = Command::new("socat")
        .arg(format!("OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}", cert.display(), key.display()))
        .arg(format!("TCP:127.0.0.1:{es_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (installed by make check-tools)");
    common::eventually(Duration::from_secs(10), "tls proxy listening", || async { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() }).await;
    let mut vars = env.env_vars();
    vars.push(("ES_URL".into(), format!("https://127.0.0.1:{port}")));
    vars.push(("ES_CA_FILE".into(), cert.display().to_string()));
    let o = output(&vars, &["run", "--once"]);
    let _ = proxy.kill();
    let _ = proxy.wait();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("hint:") && err.contains("CA certificate") && err.contains("ES_CA_FILE"), "{err}");
    env.cleanup().await;
}
