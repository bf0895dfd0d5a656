//! The pipeline against the real stack: full load, incremental changes, restart, both layouts.

mod common;

use common::TestEnv;
use serde_json::json;

const FILM_ONE_WRITER: &str = "24eafcd7-1018-4951-9e17-583e2554ef0a";
const FILM_NO_DIRECTOR: &str = "479f20b0-58d1-4f16-8944-9b82f5b1f22a";

#[tokio::test]
async fn full_load_gives_one_document_per_film() {
    let env = TestEnv::new("full_load").await;
    let report = env.run_once().await;
    assert_eq!(report.rows["film_work"], 999);
    assert_eq!(report.stored, 999);
    assert_eq!(report.dead_lettered, 0);
    assert_eq!(env.count().await, 999);

    let doc = env.doc(FILM_ONE_WRITER).await;
    assert_eq!(doc["writers_names"], json!(["Craig Hutchinson"]));
    assert_eq!(doc["id"], json!(FILM_ONE_WRITER));
    let doc = env.doc(FILM_NO_DIRECTOR).await;
    assert_eq!(doc["director"], json!([]));
    for field in ["genre", "actors_names", "writers_names", "actors", "writers"] {
        assert!(doc[field].is_array(), "{field} must be a list: {doc}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_restart_resumes_without_reloading() {
    let env = TestEnv::new("restart").await;
    assert_eq!(env.run_once().await.stored, 999);
    let again = env.run_once().await;
    assert_eq!(again.stored, 0, "{again:?}");
    assert_eq!(again.rows.values().sum::<usize>(), 0, "{again:?}");
    env.cleanup().await;
}

/// Each kind of change re-indexes exactly the films it affects on the next cycle.
#[tokio::test]
async fn changes_reindex_exactly_the_affected_films() {
    let env = TestEnv::new("incremental").await;
    env.run_once().await;

    // A film's own row.
    env.sql(&format!("UPDATE content.film_work SET title = 'Renamed film', updated_at = now() WHERE id = '{FILM_ONE_WRITER}'")).await;
    let r = env.run_once().await;
    assert_eq!((r.rows.get("film_work").copied(), r.records), (Some(1), 1), "{r:?}");
    assert_eq!(env.doc(FILM_ONE_WRITER).await["title"], json!("Renamed film"));

    // A person's name: every film of that person.
    let person = "Craig Hutchinson";
    let films = env
        .scalar_i64(&format!(
            "SELECT count(DISTINCT pfw.film_work_id) FROM content.person_film_work pfw JOIN content.person p ON p.id = pfw.person_id WHERE p.full_name = '{person}'"
        ))
        .await as usize;
    assert!(films >= 1);
    env.sql(&format!("UPDATE content.person SET full_name = 'Craig Renamed', updated_at = now() WHERE full_name = '{person}'")).await;
    let r = env.run_once().await;
    assert_eq!((r.rows.get("person").copied(), r.records), (Some(1), films), "{r:?}");
    assert_eq!(env.doc(FILM_ONE_WRITER).await["writers_names"], json!(["Craig Renamed"]));

    // A genre's name: every film of that genre.
    let films = env
        .scalar_i64("SELECT count(*) FROM content.genre_film_work gfw JOIN content.genre g ON g.id = gfw.genre_id WHERE g.name = 'Documentary'")
        .await as usize;
    assert!(films >= 1);
    env.sql("UPDATE content.genre SET name = 'Docs', updated_at = now() WHERE name = 'Documentary'").await;
    let r = env.run_once().await;
    assert_eq!((r.rows.get("genre").copied(), r.records), (Some(1), films), "{r:?}");
    let hits: serde_json::Value = env
        .http
        .post(format!("{}/{}/_count", env.es, env.index))
        .json(&json!({"query": {"term": {"genre": "Docs"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hits["count"], json!(films));

    // A new link row: the one film it links.
    env.sql(&format!(
        "INSERT INTO content.person_film_work (id, film_work_id, person_id, role, created_at, updated_at)
         SELECT gen_random_uuid(), '{FILM_NO_DIRECTOR}', id, 'director', now(), now() FROM content.person WHERE full_name = 'Mark Hamill'"
    ))
    .await;
    let r = env.run_once().await;
    assert_eq!((r.rows.get("person_film_work").copied(), r.records), (Some(1), 1), "{r:?}");
    assert_eq!(env.doc(FILM_NO_DIRECTOR).await["director"], json!(["Mark Hamill"]));

    // Nothing changed: nothing read.
    let r = env.run_once().await;
    assert_eq!(r.records, 0, "{r:?}");
    env.cleanup().await;
}

/// Every film shares one timestamp, and pages are smaller than the table: keyset pagination on
/// (timestamp, id) must read each film exactly once.
#[tokio::test]
async fn equal_timestamps_across_pages_are_read_once() {
    let mut env = TestEnv::new("equal_ts").await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "7".into()));
    assert_eq!(env.run_once().await.records, 999);
    // Every film changed in one transaction: one timestamp for all, read in pages of 7.
    env.sql("UPDATE content.film_work SET updated_at = now()").await;
    let r = env.run_once().await;
    assert_eq!(r.rows["film_work"], 999, "{r:?}");
    assert_eq!(r.records, 999);
    assert_eq!(env.count().await, 999);

    // Later rows with the very same timestamp, but larger ids than the watermark, are still seen.
    let last = env.checkpoint().state().watermark("film_work").unwrap();
    env.sql(&format!(
        "INSERT INTO content.film_work (id, title, rating, type, created_at, updated_at) VALUES ('ffffffff-ffff-4fff-8fff-ffffffffffff', 'Late', 5.0, 'movie', now(), '{}')",
        last.ts.to_rfc3339()
    ))
    .await;
    let r = env.run_once().await;
    assert_eq!(r.rows.get("film_work").copied(), Some(1), "{r:?}");
    assert_eq!(env.count().await, 1000);
    env.cleanup().await;
}

/// The full load runs with refresh and replicas off, and the index has the settings of its
/// schema again when it is done.
#[tokio::test]
async fn the_full_load_tunes_the_index_and_puts_its_settings_back() {
    let mut env = TestEnv::new("tuned_load").await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "10".into()));
    env.extra_env.push(("ES_BULK_CONCURRENCY".into(), "1".into()));
    // The index as the schema makes it, before pg2es starts.
    let schema = std::fs::read(common::schema_file()).unwrap();
    let created = env.http.put(format!("{}/{}", env.es, env.index)).header("content-type", "application/json").body(schema).send().await.unwrap();
    assert!(created.status().is_success(), "{}", created.text().await.unwrap());
    let before = env.settings().await;
    assert_eq!(before["index.refresh_interval"], json!("1s"));

    // Watch the settings while the load runs (bounded: it ends with the load, or after 60 s).
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let (http, url) = (env.http.clone(), format!("{}/{}/_settings?flat_settings=true", env.es, env.index));
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            while done_rx.try_recv().is_err() && tokio::time::Instant::now() < deadline {
                if let Ok(r) = http.get(&url).send().await {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    let s = v.as_object().and_then(|o| o.values().next()).map(|i| i["settings"].clone()).unwrap_or_default();
                    seen.insert((s["index.refresh_interval"].to_string(), s["index.number_of_replicas"].to_string()));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            seen
        })
    };
    let r = env.run_once().await;
    let _ = done_tx.send(());
    let seen = watcher.await.unwrap();
    assert_eq!((r.records, r.stored), (999, 999), "{r:?}");
    assert!(seen.contains(&("\"-1\"".to_string(), "\"0\"".to_string())), "never saw the load settings: {seen:?}");

    let after = env.settings().await;
    assert_eq!(after["index.refresh_interval"], before["index.refresh_interval"]);
    assert_eq!(after["index.number_of_replicas"], before["index.number_of_replicas"]);
    let state = env.checkpoint().state().clone();
    assert_eq!(state.tuned, None);
    assert!(state.snapshot.as_ref().is_some_and(|s| s.done), "{state:?}");
    // Visible at once: the restore refreshes.
    assert_eq!(env.count().await, 999);
    env.cleanup().await;
}

/// A crash in the middle of the full load: the next run loads only the films after the saved
/// position, and puts back the settings the crashed run had changed.
#[tokio::test]
async fn a_full_load_cut_short_resumes_after_its_last_film_and_restores_the_index() {
    let env = TestEnv::new("resume_load").await;
    assert_eq!(env.run_once().await.stored, 999);
    // Make the state what a crash after 400 films leaves: the position, the saved settings, and
    // the index still tuned.
    let ids: Vec<uuid::Uuid> = env.db.query("SELECT id FROM content.film_work ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(env.state_file()).unwrap()).unwrap();
    state["snapshot"] = json!({ "after": ids[399], "done": false });
    state["tuned"] = json!({ "index.refresh_interval": "1s", "index.number_of_replicas": null });
    std::fs::write(env.state_file(), serde_json::to_vec(&state).unwrap()).unwrap();
    let tuned = env.http.put(format!("{}/{}/_settings", env.es, env.index)).json(&json!({"index.refresh_interval": "-1"})).send().await.unwrap();
    assert!(tuned.status().is_success());
    // The films after the position were lost with the crash.
    for id in &ids[400..] {
        let _ = env.http.delete(format!("{}/{}/_doc/{id}", env.es, env.index)).send().await.unwrap();
    }
    env.refresh().await;
    assert_eq!(env.count().await, 400);

    let r = env.run_once().await;
    assert_eq!((r.rows["film_work"], r.stored), (599, 599), "only the films after the position: {r:?}");
    assert_eq!(env.count().await, 999);
    assert_eq!(env.settings().await["index.refresh_interval"], json!("1s"));
    let state = env.checkpoint().state().clone();
    assert_eq!((state.tuned, state.snapshot.map(|s| (s.after, s.done))), (None, Some((Some(pg2es::position::Key::text(ids[998].to_string())), true))));
    env.cleanup().await;
}

/// Several bulk requests in flight: every film loaded, the load's position saved in order.
#[tokio::test]
async fn concurrent_bulk_requests_load_every_film() {
    let mut env = TestEnv::new("concurrent").await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "7".into()));
    env.extra_env.push(("ES_BULK_CONCURRENCY".into(), "8".into()));
    let r = env.run_once().await;
    assert_eq!((r.records, r.stored), (999, 999), "{r:?}");
    assert_eq!(env.count().await, 999);
    // A fan-out through the change streams, also loaded with 8 requests in flight.
    env.sql("UPDATE content.genre SET name = name || ' x', updated_at = now()").await;
    let r = env.run_once().await;
    assert_eq!(r.rows["genre"], 26, "{r:?}");
    let (_trigger, shutdown) = pg2es::shutdown::Shutdown::new();
    let report = pg2es::verify::verify(&env.config(), &shutdown).await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    env.cleanup().await;
}

/// The layout of many installations: `modified` on the main tables, only `created` on links.
#[tokio::test]
async fn modified_and_created_layout_is_detected() {
    let env = TestEnv::new("modified_layout").await;
    env.db
        .batch_execute(
            "ALTER TABLE content.film_work RENAME COLUMN updated_at TO modified;
             ALTER TABLE content.film_work RENAME COLUMN created_at TO created;
             ALTER TABLE content.genre RENAME COLUMN updated_at TO modified;
             ALTER TABLE content.person RENAME COLUMN updated_at TO modified;
             ALTER TABLE content.genre_film_work DROP COLUMN updated_at;
             ALTER TABLE content.genre_film_work RENAME COLUMN created_at TO created;
             ALTER TABLE content.person_film_work DROP COLUMN updated_at;
             ALTER TABLE content.person_film_work RENAME COLUMN created_at TO created;",
        )
        .await
        .unwrap();
    assert_eq!(env.run_once().await.stored, 999);

    env.sql(&format!(
        "INSERT INTO content.genre_film_work (id, genre_id, film_work_id, created)
         SELECT gen_random_uuid(), g.id, '{FILM_NO_DIRECTOR}', now() FROM content.genre g
         WHERE g.id NOT IN (SELECT genre_id FROM content.genre_film_work WHERE film_work_id = '{FILM_NO_DIRECTOR}') LIMIT 1"
    ))
    .await;
    let r = env.run_once().await;
    assert_eq!((r.rows.get("genre_film_work").copied(), r.records), (Some(1), 1), "{r:?}");

    env.sql("UPDATE content.person SET full_name = 'Someone Else', modified = now() WHERE full_name = 'Mark Hamill'").await;
    let r = env.run_once().await;
    assert_eq!(r.rows.get("person").copied(), Some(1), "{r:?}");
    assert!(r.records >= 1);
    env.cleanup().await;
}

#[tokio::test]
async fn full_load_into_opensearch() {
    let env = TestEnv::on("opensearch", &common::os_url()).await;
    assert_eq!(env.run_once().await.stored, 999);
    assert_eq!(env.count().await, 999);
    env.cleanup().await;
}

/// A transaction that stamps its rows before a cycle and commits after it: polling on
/// `ts > last_seen` would skip its rows for good. Two real sessions.
#[tokio::test]
async fn a_transaction_committing_after_a_cycle_is_not_missed() {
    let env = TestEnv::new("late_commit").await;
    env.run_once().await;

    let slow = common::connect(&env.dsn).await;
    slow.batch_execute(&format!("BEGIN; UPDATE content.film_work SET title = 'Committed late', updated_at = now() WHERE id = '{FILM_NO_DIRECTOR}'"))
        .await
        .unwrap();
    // Meanwhile another session commits a later change, and a cycle loads it.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    env.sql(&format!("UPDATE content.film_work SET title = 'Committed early', updated_at = now() WHERE id = '{FILM_ONE_WRITER}'")).await;
    let r = env.run_once().await;
    assert_eq!(r.records, 1, "{r:?}");
    assert_eq!(env.doc(FILM_ONE_WRITER).await["title"], json!("Committed early"));

    // The slow transaction commits with a timestamp older than what the cycle read.
    slow.batch_execute("COMMIT").await.unwrap();
    let r = env.run_once().await;
    assert!(r.records >= 1, "{r:?}");
    assert_eq!(env.doc(FILM_NO_DIRECTOR).await["title"], json!("Committed late"));
    env.cleanup().await;
}

/// A document Elasticsearch refuses for good (a 40 kB title is an immense term for the keyword
/// sub-field `title.raw`) goes to the dead-letter file; the rest loads and the watermark moves on.
#[tokio::test]
async fn a_document_refused_for_good_is_dead_lettered_and_the_load_goes_on() {
    let env = TestEnv::new("dead_letter").await;
    let long_title = "Ж".repeat(20_000);
    env.sql(&format!("UPDATE content.film_work SET title = '{long_title}' WHERE id = '{FILM_NO_DIRECTOR}'")).await;
    let r = env.run_once().await;
    assert_eq!((r.stored, r.dead_lettered), (998, 1), "{r:?}");
    assert_eq!(env.count().await, 998);

    let dead = std::fs::read_to_string(env.dir.path().join("dead.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["id"], json!(FILM_NO_DIRECTOR));
    assert_eq!(lines[0]["index"], json!(env.index));
    assert_eq!(lines[0]["status"], json!(400));
    assert!(lines[0]["reason"].as_str().unwrap().contains("immense term"), "{dead}");
    assert!(lines[0]["time"].is_string());

    // The watermark moved past it: the next cycle does not retry it forever.
    assert_eq!(env.run_once().await.records, 0);
    // Fixing the row brings the film in.
    env.sql(&format!("UPDATE content.film_work SET title = 'Fixed', updated_at = now() WHERE id = '{FILM_NO_DIRECTOR}'")).await;
    assert_eq!(env.run_once().await.stored, 1);
    assert_eq!(env.count().await, 999);
    env.cleanup().await;
}

/// Rows a careless admin or another installation can produce: NULL title (where the column allows
/// it), a 1 MB description, odd Unicode, ratings out of range or NaN, unknown roles, N/A values.
/// Each gets a document; nothing stops the load.
#[tokio::test]
async fn odd_rows_are_loaded_without_stopping() {
    let env = TestEnv::new("odd_rows").await;
    let ids: Vec<String> = (1..=6).map(|i| format!("00000000-0000-4000-8000-00000000000{i}")).collect();
    env.db
        .batch_execute(&format!(
            "ALTER TABLE content.film_work ALTER COLUMN title DROP NOT NULL;
             INSERT INTO content.film_work (id, title, description, rating, type) VALUES
               ('{}', NULL, 'no title', 5, 'movie'),
               ('{}', 'Long', repeat('long text ', 100000), 7, 'movie'),
               ('{}', E'Ёжик \\u202e 🎬 \"q\" \\\\ tab\\tend', 'unicode', 'NaN', 'movie'),
               ('{}', 'Out of range', 'N/A', 1e300, 'movie'),
               ('{}', 'N/A', 'negative', -3, 'movie'),
               ('{}', 'Roles', NULL, NULL, 'movie');
             INSERT INTO content.person (id, full_name) VALUES
               ('00000000-0000-4000-8000-0000000000a1', 'Pat Producer'),
               ('00000000-0000-4000-8000-0000000000a2', 'N/A');
             INSERT INTO content.person_film_work (id, film_work_id, person_id, role) VALUES
               (gen_random_uuid(), '{}', '00000000-0000-4000-8000-0000000000a1', 'producer'),
               (gen_random_uuid(), '{}', '00000000-0000-4000-8000-0000000000a2', 'actor');",
            ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[5], ids[5]
        ))
        .await
        .unwrap();
    let r = env.run_once().await;
    assert_eq!((r.stored, r.dead_lettered), (1005, 0), "{r:?}");
    assert_eq!((r.unmatched, r.bad_numbers), (1, 2), "{r:?}");
    assert_eq!(env.doc(&ids[0]).await["title"], json!(null));
    assert_eq!(env.doc(&ids[1]).await["description"].as_str().unwrap().len(), 1_000_000);
    let odd = env.doc(&ids[2]).await;
    assert_eq!(odd["title"], json!("Ёжик \u{202e} 🎬 \"q\" \\ tab\tend"));
    assert_eq!(odd["imdb_rating"], json!(null));
    let far = env.doc(&ids[3]).await;
    assert_eq!((&far["imdb_rating"], &far["description"]), (&json!(null), &json!(null)));
    assert_eq!(env.doc(&ids[4]).await["imdb_rating"], json!(-3.0));
    assert_eq!(env.doc(&ids[4]).await["title"], json!(null));
    let roles = env.doc(&ids[5]).await;
    assert_eq!((&roles["actors"], &roles["director"]), (&json!([]), &json!([])));
    env.cleanup().await;
}

/// Rows read again only because of the commit horizon are not sent again while unchanged; a
/// change of the same row, even one that keeps its timestamp (a coarse application clock), is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_again_within_the_horizon_are_not_sent_again_unless_changed() {
    let mut env = TestEnv::new("resend_overlap").await;
    env.run_once().await;
    // Every change of the last 3 s is read again by each cycle.
    env.extra_env.push(("ETL_CLOCK_SKEW_MS".into(), "3000".into()));
    env.extra_env.push(("ETL_CYCLE_SEC".into(), "0.2".into()));
    let film = env.scalar_uuid("SELECT id FROM content.film_work ORDER BY id LIMIT 1").await;
    env.sql(&format!("UPDATE content.film_work SET title = 'First', updated_at = now() WHERE id = '{film}'")).await;

    let config = env.config();
    let (trigger, shutdown) = pg2es::shutdown::Shutdown::new();
    let run = tokio::spawn(async move { pg2es::pipeline::run(&config, pg2es::pipeline::Mode::Continuous, &shutdown).await });
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    // Same timestamp, new content: a new row version.
    env.sql(&format!("UPDATE content.film_work SET title = 'Second' WHERE id = '{film}'")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    trigger.trigger();
    let reports = run.await.unwrap().expect("pipeline run");

    let cycles = reports.len();
    let sent: usize = reports.iter().map(|r| r.records).sum();
    let skipped: usize = reports.iter().map(|r| r.already_loaded).sum();
    println!("{cycles} cycles, {sent} films sent, {skipped} rows read again and skipped");
    assert!(cycles >= 4, "expected several cycles within the horizon window, got {cycles}");
    assert_eq!(sent, 2, "each version of the row is sent once: {reports:?}");
    assert!(skipped >= 2, "{reports:?}");
    env.refresh().await;
    assert_eq!(env.doc(&film.to_string()).await["title"], serde_json::json!("Second"));
    env.cleanup().await;
}
