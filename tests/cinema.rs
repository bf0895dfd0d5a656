//! The cinema's three documents (movies, genres, persons) kept together by one run, against the
//! real stack: the full load, changes that reach several indexes (polling and replication), the
//! state file of each document, `pg2es check`, and (feature `fault-tests`) SIGKILLs while a writer
//! changes persons, genres, films and links.
//!
//! Each test writes its own copy of catalog/cinema.toml whose genres and persons indexes are
//! named after the test (the movies index is TestEnv's, through ES_INDEX).

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestEnv;
use pg2es::pipeline::CycleReport;
use pg2es::shutdown::Shutdown;
use pg2es::verify::VerifyReport;
use serde_json::{json, Value};

const DOCUMENTS: [&str; 3] = ["movies", "genres", "persons"];

/// How long a change may take to reach every index (deletes in polling wait for write
/// transactions still open anywhere on the server, such as another test cloning a database).
const PROPAGATION: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Polling,
    Replication,
}

struct Cinema {
    env: TestEnv,
    genres: String,
    persons: String,
}

impl Cinema {
    async fn new(name: &str, source: Source) -> Cinema {
        let mut env = match source {
            Source::Polling => TestEnv::new(name).await,
            Source::Replication => TestEnv::replicated(name).await,
        };
        let (genres, persons) = (format!("{}{name}_genres", common::index_prefix()), format!("{}{name}_persons", common::index_prefix()));
        let catalog = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalog");
        let text = std::fs::read_to_string(catalog.join("cinema.toml")).unwrap();
        for index in ["genres", "persons"] {
            assert_eq!(text.matches(&format!("index = \"{index}\"")).count(), 1, "catalog/cinema.toml names index {index} once");
        }
        let text = text.replace("index = \"genres\"", &format!("index = \"{genres}\"")).replace("index = \"persons\"", &format!("index = \"{persons}\""));
        let dir = env.dir.path().join("definition");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cinema.toml"), text).unwrap();
        for schema in ["movies.es.json", "genres.es.json", "persons.es.json"] {
            std::fs::copy(catalog.join(schema), dir.join(schema)).unwrap();
        }
        env.extra_env.push(("PG2ES_DEFINITION".into(), dir.join("cinema.toml").display().to_string()));
        env.extra_env.push(("PG2ES_DOCUMENTS".into(), DOCUMENTS.join(",")));
        let cinema = Cinema { env, genres, persons };
        for index in [&cinema.genres, &cinema.persons] {
            cinema.env.http.delete(format!("{}/{index}", cinema.env.es)).send().await.unwrap();
        }
        cinema
    }

    fn index(&self, document: &str) -> &str {
        match document {
            "movies" => &self.env.index,
            "genres" => &self.genres,
            "persons" => &self.persons,
            other => panic!("no document {other}"),
        }
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

    /// Stored documents by realtime get (no refresh needed), `None` where absent, in `ids` order.
    async fn docs(&self, document: &str, ids: &[String]) -> Vec<Option<Value>> {
        let url = format!("{}/{}/_mget", self.env.es, self.index(document));
        let v: Value = self.env.http.post(url).json(&json!({ "ids": ids })).send().await.unwrap().json().await.unwrap();
        let found = v["docs"].as_array().unwrap_or_else(|| panic!("no docs in {v}"));
        found.iter().map(|d| (d["found"] == Value::Bool(true)).then(|| d["_source"].clone())).collect()
    }

    async fn doc(&self, document: &str, id: &str) -> Option<Value> {
        self.docs(document, &[id.to_string()]).await.remove(0)
    }

    /// One `run --once` of every document; the three indexes are refreshed after.
    async fn pass(&self) -> Vec<CycleReport> {
        let reports = self.env.pass().await;
        self.refresh().await;
        reports
    }

    /// Passes until `done` holds, within [`PROPAGATION`]; every cycle's report.
    async fn passes_until<F, Fut>(&self, what: &str, mut done: F) -> Vec<CycleReport>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (start, mut all) = (Instant::now(), Vec::new());
        while start.elapsed() < PROPAGATION {
            all.extend(self.pass().await);
            if done().await {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{what}: not done after {PROPAGATION:?}: {all:?}");
    }

    /// `verify` of each document, by name.
    async fn verify(&self) -> Vec<(String, VerifyReport)> {
        self.refresh().await;
        let (_t, shutdown) = Shutdown::new();
        let mut reports = Vec::new();
        for (config, spec, index) in pg2es::pipeline::documents(&self.env.config()).expect("the documents") {
            let report = pg2es::verify::verify_document(&config, spec.clone(), &index, &shutdown).await.expect("verify");
            reports.push((spec.name, report));
        }
        reports
    }

    async fn assert_consistent(&self) {
        let reports = self.verify().await;
        assert_eq!(reports.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), DOCUMENTS);
        for (name, report) in &reports {
            assert!(report.is_consistent(), "{name} differs from Postgres: {report:?}");
        }
    }

    /// `pg2es delete-capture install` for the three documents.
    fn install_delete_capture(&self) {
        let out = binary(&self.env.env_vars(), &["delete-capture", "install"]);
        assert!(out.0.success(), "delete-capture install: {out:?}");
        for d in DOCUMENTS {
            assert!(out.1.contains(d), "the capture is installed for {d}: {out:?}");
        }
    }

    async fn uuid(&self, sql: &str) -> String {
        self.env.scalar_uuid(sql).await.to_string()
    }

    async fn ids(&self, sql: &str) -> Vec<String> {
        let rows = self.env.db.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter().map(|r| r.get::<_, uuid::Uuid>(0).to_string()).collect()
    }

    async fn texts(&self, sql: &str) -> Vec<String> {
        let rows = self.env.db.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter().map(|r| r.get(0)).collect()
    }

    async fn text(&self, sql: &str) -> Option<String> {
        self.env.db.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    }

    /// The run's one replication slot: named after the first document's index.
    fn run_slot(&self) -> String {
        pg2es::names::replication_name(&format!("pg2es_{}", self.env.index))
    }

    /// The replication slots of the test's database.
    async fn slots(&self) -> Vec<String> {
        let db = format!("pg2es_t_{}", self.env.name);
        self.texts(&format!("SELECT slot_name::text FROM pg_replication_slots WHERE database = '{db}' ORDER BY slot_name")).await
    }

    fn state_path(&self, document: &str) -> PathBuf {
        match document {
            "movies" => self.env.state_file(),
            d => self.env.dir.path().join(format!("state.{d}.json")),
        }
    }

    fn state(&self, document: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.state_path(document)).unwrap()).unwrap()
    }

    fn set_state(&self, document: &str, state: &Value) {
        std::fs::write(self.state_path(document), serde_json::to_vec_pretty(state).unwrap()).unwrap();
    }

    async fn cleanup(self) {
        for index in [&self.genres, &self.persons] {
            self.env.http.delete(format!("{}/{index}", self.env.es)).send().await.unwrap();
        }
        self.env.cleanup().await;
    }
}

/// The binary with exactly these variables, bounded: (status, stdout, stderr).
fn binary(vars: &[(String, String)], args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = common::pg2es_command(vars, args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn pg2es");
    // The outputs are a few lines: they fit in the pipes while the child runs.
    let status = common::wait_exit(&mut child, Duration::from_secs(60));
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status, out, err)
}

/// Text as the documents hold it: unknown (missing, blank, `N/A`) is null.
fn known(text: Option<String>) -> Value {
    match text {
        Some(t) if !t.trim().is_empty() && !t.trim().eq_ignore_ascii_case("n/a") => Value::String(t),
        _ => Value::Null,
    }
}

fn records_of(reports: &[CycleReport], document: &str) -> usize {
    reports.iter().filter(|r| r.document == document).map(|r| r.records).sum()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|s| s.as_str().unwrap_or("")).collect()
}

fn ids_in(v: &Value) -> Vec<&str> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|o| o["id"].as_str().unwrap_or("")).collect()
}

/// The persons document of `person` as Postgres says it should be.
async fn expected_person(c: &Cinema, person: &str) -> Value {
    let name = c.text(&format!("SELECT full_name FROM content.person WHERE id = '{person}'")).await;
    let rows = c
        .env
        .db
        .query(
            &format!(
                "SELECT fw.id, fw.title, array_agg(DISTINCT l.role COLLATE \"C\" ORDER BY l.role COLLATE \"C\") \
                 FROM content.person_film_work l JOIN content.film_work fw ON fw.id = l.film_work_id \
                 WHERE l.person_id = '{person}' GROUP BY fw.id, fw.title ORDER BY fw.title COLLATE \"C\", fw.id::text COLLATE \"C\""
            ),
            &[],
        )
        .await
        .unwrap();
    let films: Vec<Value> =
        rows.iter().map(|r| json!({ "id": r.get::<_, uuid::Uuid>(0).to_string(), "title": known(r.get(1)), "roles": r.get::<_, Vec<String>>(2) })).collect();
    json!({ "id": person, "full_name": known(name), "films": films })
}

#[tokio::test]
async fn a_full_load_fills_the_three_indexes() {
    let c = Cinema::new("cinema_load", Source::Polling).await;
    // Every reference genre has a blank description: give one a text.
    let described = c.uuid("SELECT id FROM content.genre ORDER BY name, id LIMIT 1").await;
    c.env.sql(&format!("UPDATE content.genre SET description = 'Films with a plot', updated_at = now() WHERE id = '{described}'")).await;
    let blank = c.uuid("SELECT id FROM content.genre WHERE description IS NULL OR btrim(description) = '' ORDER BY name, id LIMIT 1").await;
    let reports = c.pass().await;
    assert_eq!((c.count("movies").await, c.count("genres").await, c.count("persons").await), (999, 26, 4166), "{reports:?}");
    assert_eq!((records_of(&reports, "movies"), records_of(&reports, "genres"), records_of(&reports, "persons")), (999, 26, 4166));

    for genre in [&described, &blank] {
        let row = c.env.db.query_one(&format!("SELECT name, description FROM content.genre WHERE id = '{genre}'"), &[]).await.unwrap();
        let expected = json!({ "id": genre, "name": known(row.get(0)), "description": known(row.get(1)) });
        assert_eq!(c.doc("genres", genre).await, Some(expected));
    }
    assert_eq!(c.doc("genres", &described).await.unwrap()["description"], "Films with a plot");
    assert_eq!(c.doc("genres", &blank).await.unwrap()["description"], Value::Null);

    // A person who directed and wrote one film: one entry for it, with both roles.
    let (person, film) = {
        let row = c
            .env
            .db
            .query_one(
                "SELECT person_id, film_work_id FROM content.person_film_work GROUP BY person_id, film_work_id \
                 HAVING array_agg(DISTINCT role ORDER BY role) = ARRAY['director', 'writer'] ORDER BY person_id, film_work_id LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, uuid::Uuid>(0).to_string(), row.get::<_, uuid::Uuid>(1).to_string())
    };
    let doc = c.doc("persons", &person).await.expect("the person's document");
    assert_eq!(doc, expected_person(&c, &person).await);
    let entries: Vec<&Value> = doc["films"].as_array().unwrap().iter().filter(|f| f["id"] == film.as_str()).collect();
    assert_eq!(entries.len(), 1, "{doc}");
    assert_eq!(entries[0]["roles"], json!(["director", "writer"]), "{doc}");
    c.assert_consistent().await;
    c.cleanup().await;
}

async fn a_renamed_genre_reaches_its_document_and_its_films(name: &str, source: Source) {
    let c = Cinema::new(name, source).await;
    c.pass().await;
    let genre = c.uuid("SELECT genre_id FROM content.genre_film_work GROUP BY genre_id HAVING count(*) >= 2 ORDER BY count(*), genre_id LIMIT 1").await;
    let old = c.text(&format!("SELECT name FROM content.genre WHERE id = '{genre}'")).await.unwrap();
    let films = c.ids(&format!("SELECT DISTINCT film_work_id FROM content.genre_film_work WHERE genre_id = '{genre}'")).await;
    assert!(films.len() >= 2);
    c.env.sql(&format!("UPDATE content.genre SET name = 'Renamed Genre', updated_at = now() WHERE id = '{genre}'")).await;
    let reports = c
        .passes_until("the genre renamed in its document and every film", || async {
            let renamed = c.doc("genres", &genre).await.is_some_and(|d| d["name"] == "Renamed Genre");
            renamed && c.docs("movies", &films).await.iter().all(|d| d.as_ref().is_some_and(|d| strings(&d["genre"]).contains(&"Renamed Genre")))
        })
        .await;
    for d in c.docs("movies", &films).await {
        assert!(!strings(&d.unwrap()["genre"]).contains(&old.as_str()), "the old name {old} is gone");
    }
    assert!(records_of(&reports, "movies") >= films.len(), "{reports:?}");
    c.assert_consistent().await;
    c.cleanup().await;
}

#[tokio::test]
async fn a_renamed_genre_reaches_its_document_and_its_films_polling() {
    a_renamed_genre_reaches_its_document_and_its_films("cinema_genre_poll", Source::Polling).await;
}

#[tokio::test]
async fn a_renamed_genre_reaches_its_document_and_its_films_replication() {
    a_renamed_genre_reaches_its_document_and_its_films("cinema_genre_repl", Source::Replication).await;
}

async fn a_deleted_person_leaves_the_persons_index_and_their_films(name: &str, source: Source) {
    let c = Cinema::new(name, source).await;
    if source == Source::Polling {
        c.install_delete_capture();
    }
    c.pass().await;
    // In several films, with several roles, and a name no one else has (films list names only).
    let person = c
        .uuid(
            "SELECT l.person_id FROM content.person_film_work l JOIN content.person p ON p.id = l.person_id \
             WHERE NOT EXISTS (SELECT 1 FROM content.person o WHERE o.full_name = p.full_name AND o.id <> p.id) \
             GROUP BY l.person_id HAVING count(DISTINCT l.film_work_id) >= 2 \
             ORDER BY count(DISTINCT l.role) DESC, count(DISTINCT l.film_work_id) DESC, l.person_id LIMIT 1",
        )
        .await;
    let full_name = c.text(&format!("SELECT full_name FROM content.person WHERE id = '{person}'")).await.unwrap();
    let films = c.ids(&format!("SELECT DISTINCT film_work_id FROM content.person_film_work WHERE person_id = '{person}'")).await;
    assert!(c.doc("persons", &person).await.is_some());
    c.env.sql(&format!("DELETE FROM content.person WHERE id = '{person}'")).await;
    let gone = |d: &Value| {
        !ids_in(&d["actors"]).contains(&person.as_str())
            && !ids_in(&d["writers"]).contains(&person.as_str())
            && ["director", "actors_names", "writers_names"].iter().all(|f| !strings(&d[*f]).contains(&full_name.as_str()))
    };
    c.passes_until("the person gone from the persons index and every film", || async {
        c.doc("persons", &person).await.is_none() && c.docs("movies", &films).await.iter().all(|d| d.as_ref().is_some_and(gone))
    })
    .await;
    c.refresh().await;
    assert_eq!(c.count("persons").await, 4165);
    c.assert_consistent().await;
    c.cleanup().await;
}

#[tokio::test]
async fn a_deleted_person_leaves_the_persons_index_and_their_films_polling() {
    a_deleted_person_leaves_the_persons_index_and_their_films("cinema_person_poll", Source::Polling).await;
}

#[tokio::test]
async fn a_deleted_person_leaves_the_persons_index_and_their_films_replication() {
    a_deleted_person_leaves_the_persons_index_and_their_films("cinema_person_repl", Source::Replication).await;
}

async fn a_renamed_film_reaches_the_documents_of_its_people(name: &str, source: Source) {
    let c = Cinema::new(name, source).await;
    c.pass().await;
    let film = c
        .uuid("SELECT film_work_id FROM content.person_film_work GROUP BY film_work_id HAVING count(DISTINCT person_id) >= 3 ORDER BY film_work_id LIMIT 1")
        .await;
    let people = c.ids(&format!("SELECT DISTINCT person_id FROM content.person_film_work WHERE film_work_id = '{film}'")).await;
    c.env.sql(&format!("UPDATE content.film_work SET title = 'Renamed Film', updated_at = now() WHERE id = '{film}'")).await;
    let renamed = |d: &Value| d["films"].as_array().unwrap().iter().any(|f| f["id"] == film.as_str() && f["title"] == "Renamed Film");
    let reports = c
        .passes_until("the film renamed in the film and every person's document", || async {
            c.doc("movies", &film).await.is_some_and(|d| d["title"] == "Renamed Film")
                && c.docs("persons", &people).await.iter().all(|d| d.as_ref().is_some_and(renamed))
        })
        .await;
    assert!(records_of(&reports, "persons") >= people.len(), "{reports:?}");
    for person in &people[..2] {
        assert_eq!(c.doc("persons", person).await, Some(expected_person(&c, person).await));
    }
    c.assert_consistent().await;
    c.cleanup().await;
}

#[tokio::test]
async fn a_renamed_film_reaches_the_documents_of_its_people_polling() {
    a_renamed_film_reaches_the_documents_of_its_people("cinema_film_poll", Source::Polling).await;
}

#[tokio::test]
async fn a_renamed_film_reaches_the_documents_of_its_people_replication() {
    a_renamed_film_reaches_the_documents_of_its_people("cinema_film_repl", Source::Replication).await;
}

async fn each_document_keeps_its_own_state_and_a_second_pass_loads_nothing(name: &str, source: Source) {
    let c = Cinema::new(name, source).await;
    c.pass().await;
    if source == Source::Replication {
        let db = format!("pg2es_t_{}", c.env.name);
        let slots = c.texts(&format!("SELECT slot_name::text FROM pg_replication_slots WHERE database = '{db}' ORDER BY slot_name")).await;
        assert_eq!(slots, [c.run_slot()], "one slot for the run");
    }
    let dir = c.env.dir.path();
    let files = [("movies", c.env.state_file()), ("genres", dir.join("state.genres.json")), ("persons", dir.join("state.persons.json"))];
    for (document, path) in &files {
        let state: Value = serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{document}'s state {}: {e}", path.display()))).unwrap();
        assert_eq!(state["index"], c.index(document), "{document}'s state {}: {state}", path.display());
        // Bound to its index: opening it for another index is refused.
        let other = if *document == "movies" { c.index("genres") } else { c.index("movies") };
        assert!(pg2es::checkpoint::Checkpoint::open(path, other).is_err(), "{document}'s state opened for {other}");
    }
    let reports = c.pass().await;
    for d in DOCUMENTS {
        assert!(reports.iter().any(|r| r.document == d), "a report for {d}: {reports:?}");
    }
    assert!(reports.iter().all(|r| r.records == 0), "the second pass loads nothing: {reports:?}");
    c.cleanup().await;
}

#[tokio::test]
async fn each_document_keeps_its_own_state_and_a_second_pass_loads_nothing_polling() {
    each_document_keeps_its_own_state_and_a_second_pass_loads_nothing("cinema_state_poll", Source::Polling).await;
}

#[tokio::test]
async fn each_document_keeps_its_own_state_and_a_second_pass_loads_nothing_replication() {
    each_document_keeps_its_own_state_and_a_second_pass_loads_nothing("cinema_state_repl", Source::Replication).await;
}

#[tokio::test]
async fn check_says_ok_for_each_document() {
    let c = Cinema::new("cinema_check", Source::Polling).await;
    let (status, out, err) = binary(&c.env.env_vars(), &["check"]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (line, d) in lines.iter().zip(DOCUMENTS) {
        assert!(line.starts_with(&format!("{d}: ok: index {} ", c.index(d))), "{line}");
    }
    c.cleanup().await;
}

/// A continuous run of the three documents stops on SIGTERM as one document does: every
/// document stops, the exit is 0, and nothing panics (the stop reaches each of them).
#[tokio::test]
async fn sigterm_stops_every_document_of_a_continuous_run() {
    let c = Cinema::new("cinema_sigterm", Source::Polling).await;
    let log = c.env.dir.path().join("run.log");
    let mut child = common::spawn_run(&c.env, &log);
    for d in DOCUMENTS {
        common::log_shows(&log, &format!("cycle done document={d}"), Duration::from_secs(60)).await;
    }
    common::signal(&child, "-TERM");
    let status = common::wait_exit(&mut child, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(text.matches("pg2es stopped document=").count(), 3, "every document stopped: {text}");
    c.cleanup().await;
}

/// The three documents of one run share the schema's publication (PG_PUBLICATION, default
/// pg2es_<PG_SCHEMA>) and set it up at once, each for its own tables: the first start must not
/// fail when one of them creates it, or adds a table to it, while another does the same. The
/// race is in timing, so the first start is made several times (the publication dropped before
/// each, the slots and states with it), each followed by a start that must find the setup it
/// recorded.
#[tokio::test]
async fn three_documents_set_up_one_publication_at_once() {
    let c = Cinema::new("cinema_publication", Source::Replication).await;
    let dir = c.env.dir.path().to_path_buf();
    for attempt in 0..6 {
        c.env.sql("DROP PUBLICATION IF EXISTS pg2es_content").await;
        let admin = common::connect(&common::pg_admin_dsn()).await;
        common::drop_slots(&admin, &format!("pg2es_t_{}", c.env.name)).await;
        for state in ["state.json", "state.genres.json", "state.persons.json"] {
            let _ = std::fs::remove_file(dir.join(state));
        }
        let (_t, shutdown) = Shutdown::new();
        let run = pg2es::pipeline::run(&c.env.config(), pg2es::pipeline::Mode::Once, &shutdown).await;
        assert!(run.is_ok(), "first start {attempt}: {run:?}");
        // Each recorded the publication as it is: the next start finds the same, so it takes no
        // fresh position (a full load) for any document. A table another document added while
        // one read the publication was once recorded as published "by schema".
        let again = c.pass().await;
        assert!(again.iter().all(|r| r.records == 0), "start {attempt} again loads nothing: {again:?}");
    }
    let tables = c.env.scalar_i64("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pg2es_content'").await;
    assert_eq!(tables, 5, "the publication has the five tables of the three documents");
    c.cleanup().await;
}

/// A change to each of the five tables (a film, a genre and a person renamed, a genre link
/// added, a person link deleted), then passes until the three documents have them, then verify.
async fn change_every_table_and_converge(c: &Cinema, tag: &str) -> Vec<CycleReport> {
    // A person's only link to a film that has other people: deleted below.
    let link = c
        .uuid(
            "SELECT l.id FROM content.person_film_work l \
             WHERE (SELECT count(*) FROM content.person_film_work o WHERE o.person_id = l.person_id AND o.film_work_id = l.film_work_id) = 1 \
             AND EXISTS (SELECT 1 FROM content.person_film_work o WHERE o.film_work_id = l.film_work_id AND o.person_id <> l.person_id) ORDER BY l.id LIMIT 1",
        )
        .await;
    let film = c.uuid(&format!("SELECT film_work_id FROM content.person_film_work WHERE id = '{link}'")).await;
    let unlinked = c.uuid(&format!("SELECT person_id FROM content.person_film_work WHERE id = '{link}'")).await;
    let person = c
        .uuid(&format!("SELECT person_id FROM content.person_film_work WHERE film_work_id = '{film}' AND person_id <> '{unlinked}' ORDER BY person_id LIMIT 1"))
        .await;
    let genre = c
        .uuid(&format!(
            "SELECT id FROM content.genre WHERE id NOT IN (SELECT genre_id FROM content.genre_film_work WHERE film_work_id = '{film}') ORDER BY id LIMIT 1"
        ))
        .await;
    let (title, name, full_name) = (format!("Film {tag}"), format!("Genre {tag}"), format!("Person {tag}"));
    c.env.sql(&format!("UPDATE content.film_work SET title = '{title}', updated_at = now() WHERE id = '{film}'")).await;
    c.env.sql(&format!("UPDATE content.genre SET name = '{name}', updated_at = now() WHERE id = '{genre}'")).await;
    c.env.sql(&format!("UPDATE content.person SET full_name = '{full_name}', updated_at = now() WHERE id = '{person}'")).await;
    c.env.sql(&format!("INSERT INTO content.genre_film_work (id, genre_id, film_work_id) VALUES (gen_random_uuid(), '{genre}', '{film}')")).await;
    c.env.sql(&format!("DELETE FROM content.person_film_work WHERE id = '{link}'")).await;
    let reports = c
        .passes_until("every document has the change of each table", || async {
            let movie = c.doc("movies", &film).await.unwrap_or_default();
            let in_film = |d: &Value| d["films"].as_array().is_some_and(|f| f.iter().any(|f| f["id"] == film.as_str()));
            movie["title"] == title.as_str()
                && strings(&movie["genre"]).contains(&name.as_str())
                && c.doc("genres", &genre).await.is_some_and(|d| d["name"] == name.as_str())
                && c.doc("persons", &person).await.is_some_and(|d| d["full_name"] == full_name.as_str() && in_film(&d))
                && c.doc("persons", &unlinked).await.is_some_and(|d| !in_film(&d))
        })
        .await;
    c.assert_consistent().await;
    reports
}

/// One run of the three documents reads one replication slot and one publication, and each
/// table's changes reach every document that uses the table.
#[tokio::test]
async fn three_documents_read_one_slot_and_one_publication() {
    let c = Cinema::new("cinema_one_slot", Source::Replication).await;
    c.pass().await;
    assert_eq!(c.slots().await, [c.run_slot()]);
    let db = format!("pg2es_t_{}", c.env.name);
    let before = c.text(&format!("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = '{db}'")).await.unwrap();
    let reports = change_every_table_and_converge(&c, "one slot").await;
    for d in DOCUMENTS {
        assert!(records_of(&reports, d) > 0, "{d} loaded the changes: {reports:?}");
    }
    assert_eq!(c.slots().await, [c.run_slot()], "still one slot");
    assert_eq!(c.texts("SELECT pubname::text FROM pg_publication").await, ["pg2es_content"], "one publication");
    assert_eq!(c.env.scalar_i64("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pg2es_content'").await, 5);
    // Every document saved its position: the slot moved past the changes.
    c.pass().await;
    let moved = c.env.scalar_i64(&format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{db}' AND confirmed_flush_lsn > '{before}'")).await;
    assert_eq!(moved, 1, "the slot was advanced from {before}");
    for d in DOCUMENTS {
        assert_eq!(c.state(d)["stream_setup"]["slot"], c.run_slot().as_str(), "{d}");
    }
    c.cleanup().await;
}

/// From the previous release's slot per document: genres and persons saved positions against
/// slots of their own (`pg2es_<index>`), with changes pending in them that the run's slot (the
/// first document's of old) has passed already. The new run reads each from its own slot until
/// it reaches the run's slot, then only the run's slot, and drops the old ones: no full load, no
/// change lost.
#[tokio::test]
async fn an_upgrade_from_a_slot_per_document_keeps_every_position() {
    let c = Cinema::new("cinema_slot_upgrade", Source::Replication).await;
    c.pass().await;
    // The previous release's layout: a slot for genres and one for persons, each state's
    // position and recorded setup on its own slot (nothing was written since the load, so the
    // positions are honest).
    let lsn = |text: &str| -> u64 {
        let (hi, lo) = text.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    let mut old_slots = Vec::new();
    for d in ["genres", "persons"] {
        let slot = format!("pg2es_{}", c.index(d));
        let at = c.text(&format!("SELECT lsn::text FROM pg_create_logical_replication_slot('{slot}', 'pgoutput')")).await.unwrap();
        let mut state = c.state(d);
        state["replication"] = json!(lsn(&at));
        state["stream_setup"]["slot"] = json!(slot);
        c.set_state(d, &state);
        old_slots.push(slot);
    }
    // Changes only genres and persons have (a genre and a person in no film), then the run's
    // slot moved past them, as the movies document of old moved its own.
    let (genre, person) = (c.uuid("SELECT gen_random_uuid()").await, c.uuid("SELECT gen_random_uuid()").await);
    c.env.sql(&format!("INSERT INTO content.genre (id, name) VALUES ('{genre}', 'Pending genre')")).await;
    c.env.sql(&format!("INSERT INTO content.person (id, full_name) VALUES ('{person}', 'Pending person')")).await;
    let run_slot = c.run_slot();
    let moved = c.text(&format!("SELECT end_lsn::text FROM pg_replication_slot_advance('{run_slot}', pg_current_wal_lsn())")).await.unwrap();
    let mut movies = c.state("movies");
    movies["replication"] = json!(lsn(&moved));
    c.set_state("movies", &movies);
    let mut slots = [vec![run_slot.clone()], old_slots.clone()].concat();
    slots.sort();
    assert_eq!(c.slots().await, slots);

    // The new release: the pending changes come from the old slots, nothing is loaded again.
    let reports = c
        .passes_until("the changes pending in the old slots", || async { c.doc("genres", &genre).await.is_some() && c.doc("persons", &person).await.is_some() })
        .await;
    let reports = [reports, c.pass().await, change_every_table_and_converge(&c, "upgraded").await].concat();
    for r in &reports {
        assert!(r.records < 50, "no full load: {r:?}");
    }
    assert_eq!(c.slots().await, std::slice::from_ref(&run_slot), "the old slots are dropped");
    for d in DOCUMENTS {
        let state = c.state(d);
        assert_eq!(state["stream_setup"]["slot"], run_slot.as_str(), "{d}: {state}");
        assert!(state.get("resyncs").is_none(), "{d} took no fresh position: {state}");
    }
    c.cleanup().await;
}

/// Renames persons, genres and films, deletes persons and links, adds persons with a role in a
/// film, until told to stop (at most 2,000 changes): every change reaches the genres or persons
/// index, and most of them the movies index too.
#[cfg(feature = "fault-tests")]
async fn write(dsn: String, seed: u64, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let db = common::connect(&dsn).await;
    let mut rng = common::Rng::new(seed);
    let mut done = 0;
    let nth = |table: &str, n: u64| format!("(SELECT id FROM content.{table} ORDER BY id OFFSET {n} LIMIT 1)");
    while !*stop.borrow() && done < 2_000 {
        let n = rng.below(1000);
        let sql = match rng.below(8) {
            0 | 1 => format!("UPDATE content.person SET full_name = 'Person {n}', updated_at = now() WHERE id = {}", nth("person", n)),
            2 => format!("UPDATE content.genre SET name = 'Genre {n}', updated_at = now() WHERE id = {}", nth("genre", n % 20)),
            3 => format!("UPDATE content.genre SET description = 'About {n}', updated_at = now() WHERE id = {}", nth("genre", n % 20)),
            4 => format!("UPDATE content.film_work SET title = 'Film {n}', updated_at = now() WHERE id = {}", nth("film_work", n)),
            5 => format!("DELETE FROM content.person WHERE id = {}", nth("person", n)),
            6 => format!("DELETE FROM content.person_film_work WHERE id = {}", nth("person_film_work", n)),
            _ => format!(
                "WITH p AS (INSERT INTO content.person (id, full_name) VALUES (gen_random_uuid(), 'New {n}') RETURNING id) \
                 INSERT INTO content.person_film_work (id, film_work_id, person_id, role) SELECT gen_random_uuid(), {}, p.id, 'actor' FROM p",
                nth("film_work", n)
            ),
        };
        db.execute(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        done += 1;
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80))).await;
    }
    done
}

/// `pg2es run` of the three documents killed 3 times at random moments (within a minute, the
/// first ones inside the full loads) while the writer runs, each time started again; then one
/// pass, and each of the three indexes is what Postgres says.
#[cfg(feature = "fault-tests")]
async fn kills(source: Source) {
    let name = if source == Source::Polling { "cinema_kills" } else { "cinema_kills_repl" };
    let mut c = Cinema::new(name, source).await;
    if source == Source::Polling {
        c.install_delete_capture();
    }
    // Small batches, so that a kill can land inside a full load; the default clock margin, as
    // tests/faults.rs explains (a cycle under load may read the horizon before a write shows).
    c.env.extra_env.push(("ETL_BATCH_SIZE".into(), "40".into()));
    c.env.extra_env.push(("ETL_CLOCK_SKEW_MS".into(), "1000".into()));
    let mut rng = common::Rng::from_clock("cinema kill test");
    let log = c.env.dir.path().join("pg2es.log");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(write(c.env.dsn.clone(), rng.next(), stop_rx));
    let kills = common::kill_repeatedly(&c.env, &log, &mut rng, 3, Duration::from_secs(60)).await;
    stop_tx.send(true).unwrap();
    let changes = writer.await.unwrap();
    println!("kills survived: {kills}, changes made meanwhile: {changes}");
    assert_eq!(kills, 3);
    let (status, _, err) = binary(&c.env.env_vars(), &["run", "--once"]);
    assert!(status.success(), "{err}");
    c.assert_consistent().await;
    // Each index got its own settings back after the kills during its full load.
    for d in DOCUMENTS {
        let settings = c.env.settings_of(c.index(d)).await;
        assert_ne!(settings["index.refresh_interval"], json!("-1"), "{d}'s index is left tuned for a full load: {settings}");
    }
    c.cleanup().await;
}

#[cfg(feature = "fault-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_under_a_writer_by_polling() {
    kills(Source::Polling).await;
}

#[cfg(feature = "fault-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_under_a_writer_by_replication() {
    kills(Source::Replication).await;
}
