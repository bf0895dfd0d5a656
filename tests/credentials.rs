//! Credentials against an endpoint that enforces them: nginx in front of the stack's
//! Elasticsearch (`scripts/proxy.sh`; `make test` starts it and exports `scripts/proxy.sh env`),
//! with TLS by a CA of its own, basic auth on one port and an API key on the other. With the
//! right credentials the catalog loads; with wrong ones pg2es exits at once with exit 7 and the
//! fix, after one request (no retry storm); no secret appears in its log or in `print-config`.

mod common;

use common::TestEnv;

fn proxy(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: start the proxy with `scripts/proxy.sh up` and export what `scripts/proxy.sh env` prints (make test does both)")
    })
}

/// Requests the proxy has logged so far.
fn requests_logged() -> usize {
    std::fs::read_to_string(proxy("PG2ES_TEST_PROXY_LOG")).map(|l| l.lines().count()).unwrap_or(0)
}

fn pg2es(vars: &[(String, String)], args: &[&str]) -> (Option<i32>, String) {
    let out = common::pg2es_command(vars, args).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn with(vars: &[(String, String)], set: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vars.iter().filter(|(k, _)| !set.iter().any(|(s, _)| s == k)).cloned().collect();
    v.extend(set.iter().map(|(k, val)| (k.to_string(), val.to_string())));
    v
}

#[tokio::test]
async fn right_credentials_load_and_wrong_ones_stop_at_once() {
    let env = TestEnv::new("credentials").await;
    let (ca, user, password, key) =
        (proxy("PG2ES_TEST_PROXY_CA"), proxy("PG2ES_TEST_PROXY_USER"), proxy("PG2ES_TEST_PROXY_PASSWORD"), proxy("PG2ES_TEST_PROXY_API_KEY"));
    let (basic_url, key_url) = (proxy("PG2ES_TEST_PROXY_BASIC_URL"), proxy("PG2ES_TEST_PROXY_KEY_URL"));
    let base = with(&env.env_vars(), &[("ES_CA_FILE", &ca), ("RUST_LOG", "info")]);
    let basic = with(&base, &[("ES_URL", &basic_url), ("ES_USERNAME", &user), ("ES_PASSWORD", &password)]);
    let api_key = with(&base, &[("ES_URL", &key_url), ("ES_API_KEY", &key)]);
    let wrong_password = "not-the-password-5e1d";
    let wrong_key = "bm90OnRoZS1rZXk=";
    let mut said = String::new();

    // Basic auth, right: the catalog loads through the proxy.
    let (code, out) = pg2es(&basic, &["run", "--once"]);
    assert_eq!(code, Some(0), "{out}");
    said.push_str(&out);
    env.refresh().await;
    assert_eq!(env.count().await, 999);

    // Wrong password: exit 7 at once, naming the fix, after one request.
    let before = requests_logged();
    let (code, out) = pg2es(&with(&basic, &[("ES_PASSWORD", wrong_password)]), &["run", "--once"]);
    assert_eq!(code, Some(7), "{out}");
    assert!(out.contains("401") && out.contains("ES_USERNAME / ES_PASSWORD"), "{out}");
    let sent = requests_logged() - before;
    assert!((1..=2).contains(&sent), "{sent} requests with the wrong password (one expected, no retries)");
    said.push_str(&out);
    // Continuous mode too: no waiting, no retry.
    let before = requests_logged();
    let (code, out) = pg2es(&with(&basic, &[("ES_PASSWORD", wrong_password)]), &["run"]);
    assert_eq!(code, Some(7), "{out}");
    assert!(requests_logged() - before <= 2, "continuous run retried wrong credentials");
    said.push_str(&out);

    // API key, right: a change reaches the index through the other port.
    let film: String = env.db.query_one("SELECT id::text FROM content.film_work ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);
    env.sql(&format!("UPDATE content.film_work SET title = 'Through the API key', updated_at = now() WHERE id::text = '{film}'")).await;
    let (code, out) = pg2es(&api_key, &["run", "--once"]);
    assert_eq!(code, Some(0), "{out}");
    said.push_str(&out);
    env.refresh().await;
    assert_eq!(env.doc(&film).await["title"], "Through the API key");

    // Wrong API key, and basic auth where a key is wanted: exit 7 at once.
    for wrong in [with(&api_key, &[("ES_API_KEY", wrong_key)]), with(&basic, &[("ES_URL", &key_url)])] {
        let before = requests_logged();
        let (code, out) = pg2es(&wrong, &["run", "--once"]);
        assert_eq!(code, Some(7), "{out}");
        assert!(out.contains("401") && out.contains("ES_API_KEY"), "{out}");
        assert!(requests_logged() - before <= 2, "retried wrong credentials");
        said.push_str(&out);
    }

    // No secret, right or wrong, in any log or in print-config.
    for vars in [&basic, &api_key] {
        let (code, out) = pg2es(vars, &["print-config"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("***"), "{out}");
        said.push_str(&out);
    }
    for secret in [password.as_str(), key.as_str(), wrong_password, wrong_key, "key-secret-91c2"] {
        assert!(!said.contains(secret), "{secret:?} appears in pg2es's output");
    }
    env.cleanup().await;
}
