//! Two deployments of the cinema on one Elasticsearch, from two databases: each keeps its own
//! three indexes (ES_INDEX_PREFIX) and ends equal to its own database; one pointed at the other's
//! indexes is refused by the record in their mapping's `_meta`, and writes nothing.

mod common;

use std::process::Output;

use common::TestEnv;
use serde_json::{json, Value};

const DOCUMENTS: [&str; 3] = ["movies", "genres", "persons"];

/// A deployment: a database of its own (from `movies_ref`), the built-in cinema definition, its
/// three documents under `prefix`, and its own state files.
struct Deployment {
    env: TestEnv,
    prefix: String,
}

impl Deployment {
    async fn on(name: &str, es: &str) -> Deployment {
        let env = TestEnv::on(name, es).await;
        let prefix = format!("{}{name}_", common::index_prefix());
        let d = Deployment { env, prefix };
        for document in DOCUMENTS {
            d.env.http.delete(format!("{}/{}", d.env.es, d.index(document))).send().await.unwrap();
        }
        d
    }

    fn index(&self, document: &str) -> String {
        format!("{}{document}", self.prefix)
    }

    /// Its settings, with the indexes of `prefix` and the state files in `state_dir`.
    fn vars(&self, prefix: &str, state_dir: &std::path::Path) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self.env.env_vars().into_iter().filter(|(k, _)| !matches!(k.as_str(), "ES_INDEX" | "PG2ES_DOCUMENTS")).collect();
        v.retain(|(k, _)| !matches!(k.as_str(), "ETL_STATE_FILE" | "ETL_DEAD_LETTER_FILE"));
        v.extend(
            [
                ("ES_INDEX_PREFIX", prefix.to_string()),
                ("PG2ES_DOCUMENTS", DOCUMENTS.join(",")),
                ("ETL_STATE_FILE", state_dir.join("state.json").display().to_string()),
                ("ETL_DEAD_LETTER_FILE", state_dir.join("dead.jsonl").display().to_string()),
                ("RUST_LOG", "info".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        v
    }

    fn own_vars(&self) -> Vec<(String, String)> {
        self.vars(&self.prefix, self.env.dir.path())
    }

    async fn refresh(&self) {
        for d in DOCUMENTS {
            self.env.http.post(format!("{}/{}/_refresh", self.env.es, self.index(d))).send().await.unwrap();
        }
    }

    async fn count(&self, document: &str) -> u64 {
        let v: Value = self.env.http.get(format!("{}/{}/_count", self.env.es, self.index(document))).send().await.unwrap().json().await.unwrap();
        v["count"].as_u64().unwrap_or_else(|| panic!("no count for {document} in {v}"))
    }

    async fn counts(&self) -> Vec<u64> {
        self.refresh().await;
        let mut counts = Vec::new();
        for d in DOCUMENTS {
            counts.push(self.count(d).await);
        }
        counts
    }

    async fn doc(&self, document: &str, id: &str) -> Value {
        let v: Value = self.env.http.get(format!("{}/{}/_doc/{id}", self.env.es, self.index(document))).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["found"], Value::Bool(true), "{document} {id} not found: {v}");
        v["_source"].clone()
    }

    async fn meta(&self, document: &str) -> Value {
        let v: Value = self.env.http.get(format!("{}/{}/_mapping", self.env.es, self.index(document))).send().await.unwrap().json().await.unwrap();
        v[self.index(document)]["mappings"]["_meta"].clone()
    }

    async fn cleanup(self) {
        for d in DOCUMENTS {
            self.env.http.delete(format!("{}/{}", self.env.es, self.index(d))).send().await.unwrap();
        }
        self.env.cleanup().await;
    }
}

fn run(vars: &[(String, String)], args: &[&str]) -> Output {
    common::pg2es_command(vars, args).output().expect("run pg2es")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `run --once`, which must succeed; its output.
fn pass(vars: &[(String, String)]) -> String {
    let o = run(vars, &["run", "--once"]);
    assert!(o.status.success(), "run --once: {:?}\n{}", o.status, text(&o));
    text(&o)
}

/// `verify` of the three documents, which must find no difference.
fn assert_consistent(vars: &[(String, String)], what: &str) {
    let o = run(vars, &["verify"]);
    assert!(o.status.success(), "{what}: verify found differences ({:?}):\n{}", o.status, text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_keep_their_own_indexes_and_a_third_on_anothers_is_refused() {
    two_deployments_on(&common::es_url(), "dep").await;
}

/// The same on OpenSearch, whose `_meta` and mapping answers are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_on_opensearch() {
    two_deployments_on(&common::os_url(), "depos").await;
}

async fn two_deployments_on(es: &str, name: &str) {
    let (a, b) = (Deployment::on(&format!("{name}_a"), es).await, Deployment::on(&format!("{name}_b"), es).await);
    pass(&a.own_vars());
    pass(&b.own_vars());
    let (counts_a, counts_b) = (a.counts().await, b.counts().await);
    assert!(counts_a.iter().all(|c| *c > 0), "{counts_a:?}");
    assert_eq!(counts_a, counts_b, "two copies of one template");

    // Each index records which database, schema and document it is kept from.
    for d in DOCUMENTS {
        for dep in [&a, &b] {
            let meta = dep.meta(d).await;
            assert_eq!(meta["pg2es"]["database"], json!(format!("pg2es_t_{}", dep.env.name)), "{d}: {meta}");
            assert_eq!((&meta["pg2es"]["schema"], &meta["pg2es"]["document"]), (&json!("content"), &json!(d)), "{meta}");
            assert!(meta["pg2es"]["system_identifier"].as_str().is_some_and(|s| !s.is_empty()), "{meta}");
        }
    }

    // A change in database b only: a genre renamed (its genres document and its films' movies
    // documents), a person renamed, a genre added.
    let genre =
        b.env.scalar_uuid("SELECT g.id FROM content.genre g JOIN content.genre_film_work l ON l.genre_id = g.id ORDER BY g.id LIMIT 1").await.to_string();
    let person = b.env.scalar_uuid("SELECT id FROM content.person ORDER BY id LIMIT 1").await.to_string();
    let film = b.env.scalar_uuid(&format!("SELECT film_work_id FROM content.genre_film_work WHERE genre_id = '{genre}' LIMIT 1")).await.to_string();
    let (genre_name, person_name) = (a.doc("genres", &genre).await["name"].clone(), a.doc("persons", &person).await["full_name"].clone());
    b.env.sql(&format!("UPDATE content.genre SET name = 'Staging only', updated_at = now() WHERE id = '{genre}'")).await;
    b.env.sql(&format!("UPDATE content.person SET full_name = 'Staging Person', updated_at = now() WHERE id = '{person}'")).await;
    b.env.sql("INSERT INTO content.genre (id, name, created_at, updated_at) VALUES ('00000000-0000-4000-8000-00000000d0b0', 'Only in b', now(), now())").await;
    pass(&b.own_vars());
    pass(&a.own_vars());
    b.refresh().await;
    assert_eq!(b.doc("genres", &genre).await["name"], "Staging only");
    assert_eq!(b.doc("persons", &person).await["full_name"], "Staging Person");
    assert!(b.doc("movies", &film).await["genre"].as_array().unwrap().iter().any(|g| g == "Staging only"));
    a.refresh().await;
    assert_eq!(a.doc("genres", &genre).await["name"], genre_name, "b's rename reached a");
    assert_eq!(a.doc("persons", &person).await["full_name"], person_name, "b's rename reached a");
    assert_eq!(a.counts().await, counts_a);
    assert_eq!(b.counts().await[1], counts_a[1] + 1);
    assert_consistent(&a.own_vars(), "a");
    assert_consistent(&b.own_vars(), "b");

    // Database b's deployment pointed at a's indexes (a's prefix: as if it had none of its
    // own), with a state of its own: refused before anything is written.
    let c_state = tempfile::tempdir().unwrap();
    let c = b.vars(&a.prefix, c_state.path());
    let o = run(&c, &["run", "--once"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let error = out.lines().find(|l| l.starts_with("pg2es: error:")).unwrap_or_else(|| panic!("no error line: {out}"));
    for part in [
        format!("index '{}'", a.index("movies")),
        format!("database 'pg2es_t_{}'", a.env.name),
        format!("database 'pg2es_t_{}'", b.env.name),
        "ES_INDEX_PREFIX".into(),
        "delete the index".into(),
    ] {
        assert!(error.contains(&part), "{part:?} not in {error}");
    }
    assert!(!out.contains("postgres unavailable") && !out.contains("elasticsearch unavailable"), "{out}");
    a.refresh().await;
    assert_eq!(a.counts().await, counts_a, "the refused run wrote to a's indexes");
    assert_eq!(a.doc("genres", &genre).await["name"], genre_name, "the refused run wrote b's rename");
    assert_consistent(&a.own_vars(), "a after the refused run");

    // An index without the record (an earlier release's) is adopted: recorded, nothing reloaded.
    for d in DOCUMENTS {
        let r = a.env.http.put(format!("{}/{}/_mapping", a.env.es, a.index(d))).json(&json!({ "_meta": {} })).send().await.unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
        assert_eq!(a.meta(d).await, json!({}));
    }
    let out = pass(&a.own_vars());
    assert!(out.contains("recorded in the index's _meta which source it is kept from"), "{out}");
    assert!(!out.contains("full load:"), "an adopted index was loaded again:\n{out}");
    for d in DOCUMENTS {
        assert_eq!(a.meta(d).await["pg2es"]["database"], json!(format!("pg2es_t_{}", a.env.name)));
    }
    assert_consistent(&a.own_vars(), "a after adoption");

    a.cleanup().await;
    b.cleanup().await;
}
