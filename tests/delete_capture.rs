//! Delete capture against the real Postgres: each kind of delete logs the films whose documents
//! it changes, in the transaction-id window that follows it.

mod common;

use std::time::Duration;

use common::{connect, pg2es_command, TestEnv};
use pg2es::source::delete_log::{self, LogPage};
use pg2es::Error;
use tokio_postgres::{Client, SimpleQueryMessage};
use uuid::Uuid;

const SCHEMA: &str = "content";

async fn installed_env(name: &str) -> TestEnv {
    let env = TestEnv::new(name).await;
    delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.expect("install delete capture");
    env
}

/// Runs `script` and returns the id of the transaction it leaves (open or just used).
async fn run_in_transaction(client: &Client, script: &str) -> u64 {
    let messages = client.simple_query(&format!("{script}; SELECT pg_current_xact_id()::text")).await.unwrap_or_else(|e| panic!("{script}: {e}"));
    let xid = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    });
    xid.expect("transaction id").parse().unwrap()
}

/// Runs `sql` in one transaction on `client` and returns its transaction id.
async fn commit(client: &Client, sql: &str) -> u64 {
    let xid = run_in_transaction(client, &format!("BEGIN; {sql}")).await;
    client.batch_execute("COMMIT").await.unwrap();
    xid
}

/// The boundary once every transaction up to `xid` has ended (other tests' transactions on the
/// same server hold it back for a moment).
async fn boundary_past(client: &Client, xid: u64) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let b = delete_log::boundary(client).await.unwrap();
        if b > xid {
            return b;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "boundary {b} stays at or below {xid}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every film of the window, read in pages of 2 to go through the keyset.
async fn window(client: &Client, from: u64, to: u64) -> LogPage {
    let mut all = LogPage::default();
    let mut after: Option<String> = None;
    loop {
        let movies = delete_log::LogDocument { name: "movies".into(), first: true, shape: delete_log::LogShape::Keyed };
        let page = delete_log::keys_between(client, SCHEMA, &movies, from, to, after.as_deref(), 2).await.unwrap();
        all.reload |= page.reload;
        let Some(last) = page.keys.last().cloned() else { return all };
        assert!(page.keys.len() <= 2 && page.keys.windows(2).all(|w| w[0] < w[1]), "{page:?}");
        assert!(after.as_ref().is_none_or(|a| page.keys[0] > *a), "{page:?} after {after:?}");
        all.keys.extend(page.keys);
        after = Some(last);
    }
}

/// What `sql`, committed in one transaction, logs.
async fn logged(env: &TestEnv, sql: &str) -> LogPage {
    let from = delete_log::boundary(&env.db).await.unwrap();
    let xid = commit(&env.db, sql).await;
    let to = boundary_past(&env.db, xid).await;
    window(&env.db, from, to).await
}

async fn uuid(env: &TestEnv, sql: &str) -> Uuid {
    env.scalar_uuid(sql).await
}

async fn uuids(env: &TestEnv, sql: &str) -> Vec<Uuid> {
    let rows = env.db.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn films(ids: Vec<Uuid>) -> LogPage {
    LogPage { keys: ids.iter().map(Uuid::to_string).collect(), reload: false }
}

#[tokio::test]
async fn a_deleted_film_is_logged_once() {
    let env = installed_env("dc_film").await;
    // A film with people and genres: the cascade to its links logs the same id again.
    let film = uuid(&env, "SELECT film_work_id FROM content.person_film_work JOIN content.genre_film_work USING (film_work_id) LIMIT 1").await;
    let page = logged(&env, &format!("DELETE FROM content.film_work WHERE id = '{film}'")).await;
    assert_eq!(page, films(vec![film]));
    env.cleanup().await;
}

#[tokio::test]
async fn deleted_links_log_their_films() {
    let env = installed_env("dc_links").await;
    let (genre_link, genre_film) = {
        let r = env.db.query_one("SELECT id, film_work_id FROM content.genre_film_work ORDER BY id LIMIT 1", &[]).await.unwrap();
        (r.get::<_, Uuid>(0), r.get::<_, Uuid>(1))
    };
    let page = logged(&env, &format!("DELETE FROM content.genre_film_work WHERE id = '{genre_link}'")).await;
    assert_eq!(page, films(vec![genre_film]));

    let person_film = uuid(&env, "SELECT film_work_id FROM content.person_film_work ORDER BY id LIMIT 1").await;
    let page = logged(&env, "DELETE FROM content.person_film_work WHERE id = (SELECT id FROM content.person_film_work ORDER BY id LIMIT 1)").await;
    assert_eq!(page, films(vec![person_film]));

    // Many links in one statement: every film once.
    let expected = uuids(&env, "SELECT film_work_id FROM content.person_film_work WHERE role = 'writer'").await;
    assert!(expected.len() > 10, "{}", expected.len());
    let page = logged(&env, "DELETE FROM content.person_film_work WHERE role = 'writer'").await;
    assert_eq!(page, films(expected));
    env.cleanup().await;
}

#[tokio::test]
async fn a_link_moved_to_another_film_logs_the_old_film_only() {
    let env = installed_env("dc_moved").await;
    let r = env.db.query_one("SELECT id, film_work_id FROM content.genre_film_work ORDER BY id LIMIT 1", &[]).await.unwrap();
    let (link, old): (Uuid, Uuid) = (r.get(0), r.get(1));
    let new = uuid(&env, &format!("SELECT id FROM content.film_work f WHERE NOT EXISTS (SELECT 1 FROM content.genre_film_work g WHERE g.film_work_id = f.id AND g.genre_id = (SELECT genre_id FROM content.genre_film_work WHERE id = '{link}')) LIMIT 1")).await;
    let page = logged(&env, &format!("UPDATE content.genre_film_work SET film_work_id = '{new}', updated_at = now() WHERE id = '{link}'")).await;
    assert_eq!(page, films(vec![old]));

    let r = env.db.query_one("SELECT id, film_work_id FROM content.person_film_work ORDER BY id LIMIT 1", &[]).await.unwrap();
    let (link, old): (Uuid, Uuid) = (r.get(0), r.get(1));
    let page = logged(&env, &format!("UPDATE content.person_film_work SET film_work_id = '{new}' WHERE id = '{link}'")).await;
    assert_eq!(page, films(vec![old]));

    // An update that keeps the film (the polling stream sees it) logs nothing.
    let page = logged(&env, "UPDATE content.person_film_work SET role = upper(role), updated_at = now()").await;
    assert_eq!(page, films(vec![]));
    env.cleanup().await;
}

#[tokio::test]
async fn a_deleted_person_or_genre_logs_every_film_it_was_in() {
    let env = installed_env("dc_person_genre").await;
    let person = uuid(&env, "SELECT person_id FROM content.person_film_work GROUP BY person_id ORDER BY count(DISTINCT film_work_id) DESC LIMIT 1").await;
    let expected = uuids(&env, &format!("SELECT film_work_id FROM content.person_film_work WHERE person_id = '{person}'")).await;
    assert!(expected.len() > 3, "{}", expected.len());
    let page = logged(&env, &format!("DELETE FROM content.person WHERE id = '{person}'")).await;
    assert_eq!(page, films(expected));

    let genre = uuid(&env, "SELECT genre_id FROM content.genre_film_work GROUP BY genre_id ORDER BY count(*) DESC LIMIT 1").await;
    let expected = uuids(&env, &format!("SELECT film_work_id FROM content.genre_film_work WHERE genre_id = '{genre}'")).await;
    let page = logged(&env, &format!("DELETE FROM content.genre WHERE id = '{genre}'")).await;
    assert_eq!(page, films(expected));

    // A person with no film logs nothing.
    env.sql("INSERT INTO content.person (id, full_name) VALUES ('00000000-0000-0000-0000-00000000d0ce', 'Nobody')").await;
    let page = logged(&env, "DELETE FROM content.person WHERE id = '00000000-0000-0000-0000-00000000d0ce'").await;
    assert_eq!(page, films(vec![]));
    env.cleanup().await;
}

#[tokio::test]
async fn truncate_asks_for_a_reload() {
    let env = installed_env("dc_truncate").await;
    let page = logged(&env, "TRUNCATE content.person_film_work").await;
    assert_eq!(page, LogPage { keys: vec![], reload: true });
    let page = logged(&env, "TRUNCATE content.film_work CASCADE").await;
    assert!(page.reload, "{page:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn an_open_transaction_is_in_the_next_window() {
    let env = installed_env("dc_open_tx").await;
    let writer = connect(&env.dsn).await;
    let film = uuid(&env, "SELECT film_work_id FROM content.genre_film_work ORDER BY id LIMIT 1").await;
    let from = delete_log::boundary(&env.db).await.unwrap();
    let xid =
        run_in_transaction(&writer, "BEGIN; DELETE FROM content.genre_film_work WHERE id = (SELECT id FROM content.genre_film_work ORDER BY id LIMIT 1)").await;
    let open = delete_log::boundary(&env.db).await.unwrap();
    assert!(open <= xid, "boundary {open} passed the open transaction {xid}");
    assert_eq!(window(&env.db, from, open).await, films(vec![]));

    writer.batch_execute("COMMIT").await.unwrap();
    let to = boundary_past(&env.db, xid).await;
    assert_eq!(window(&env.db, open, to).await, films(vec![film]));
    env.cleanup().await;
}

#[tokio::test]
async fn acknowledge_trims_below_the_oldest_position() {
    let env = installed_env("dc_trim").await;
    let first = commit(&env.db, "DELETE FROM content.genre_film_work WHERE id = (SELECT id FROM content.genre_film_work ORDER BY id LIMIT 1)").await;
    let second = commit(&env.db, "DELETE FROM content.genre_film_work WHERE id = (SELECT id FROM content.genre_film_work ORDER BY id LIMIT 1)").await;
    assert!(first < second);
    let rows = |xid: u64| format!("SELECT count(*) FROM pg2es.film_changes WHERE xid = '{xid}'::xid8");

    // One instance is past both, the other only past the first: the first is trimmed.
    delete_log::acknowledge(&env.db, SCHEMA, "b", first + 1).await.unwrap();
    delete_log::acknowledge(&env.db, SCHEMA, "a", second + 1).await.unwrap();
    assert_eq!((env.scalar_i64(&rows(first)).await, env.scalar_i64(&rows(second)).await), (0, 1));

    // An instance unseen for over 7 days holds nothing back; another schema's rows are not touched.
    env.sql("INSERT INTO pg2es.consumers (source_schema, consumer, done_xid, seen_at) VALUES ('content', 'gone', '1', now() - interval '8 days')").await;
    env.sql("INSERT INTO pg2es.film_changes (source_schema, film_id) VALUES ('other', NULL)").await;
    delete_log::acknowledge(&env.db, SCHEMA, "b", second + 1).await.unwrap();
    assert_eq!(env.scalar_i64(&rows(second)).await, 0);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM pg2es.film_changes WHERE source_schema = 'other'").await, 1);
    let b: String = env.db.query_one("SELECT done_xid::text FROM pg2es.consumers WHERE consumer = 'b'", &[]).await.unwrap().get(0);
    assert_eq!(b, (second + 1).to_string());
    env.cleanup().await;
}

#[tokio::test]
async fn install_is_idempotent_and_remove_drops_the_triggers() {
    let env = TestEnv::new("dc_install").await;
    assert!(!delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());
    delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap();
    delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap();
    assert!(delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());
    let triggers = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pg2es%'";
    let wanted = common::capture(&env.db, SCHEMA).await.deletes().count();
    assert_eq!(wanted, 12, "the movies document's delete capture: 12 triggers on its 5 tables, as before definitions");
    assert_eq!(env.scalar_i64(triggers).await, wanted as i64);

    // A disabled trigger does not count as installed.
    env.sql("ALTER TABLE content.person DISABLE TRIGGER pg2es_movies_linked").await;
    assert!(!delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());
    env.sql("ALTER TABLE content.person ENABLE TRIGGER pg2es_movies_linked").await;

    delete_log::remove(&env.db, SCHEMA).await.unwrap();
    assert!(!delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());
    assert_eq!(env.scalar_i64(triggers).await, 0);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM pg_proc WHERE pronamespace = 'pg2es'::regnamespace").await, 0);
    let page = logged(&env, "DELETE FROM content.film_work WHERE id = (SELECT id FROM content.film_work LIMIT 1)").await;
    assert_eq!(page, films(vec![]), "nothing is logged once removed; the table is kept");
    assert_eq!(delete_log::remove(&env.db, SCHEMA).await.unwrap().triggers, 0, "nothing left to remove");
    env.cleanup().await;
}

/// The application's role deletes rows without any right on schema pg2es; a role that does not
/// own the tables cannot install, and is told what to do.
#[tokio::test]
async fn writers_need_no_rights_on_the_log_and_installers_are_told_what_to_do() {
    let env = installed_env("dc_roles").await;
    env.db
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE pg2es_t_writer NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
             GRANT USAGE ON SCHEMA content TO pg2es_t_writer; \
             GRANT SELECT, DELETE, UPDATE ON ALL TABLES IN SCHEMA content TO pg2es_t_writer",
        )
        .await
        .unwrap();
    let person = uuid(&env, "SELECT person_id FROM content.person_film_work LIMIT 1").await;
    let expected = uuids(&env, &format!("SELECT film_work_id FROM content.person_film_work WHERE person_id = '{person}'")).await;
    let page = logged(&env, &format!("SET LOCAL ROLE pg2es_t_writer; DELETE FROM content.person WHERE id = '{person}'")).await;
    assert_eq!(page, films(expected));

    let other = connect(&env.dsn).await;
    other.batch_execute("SET ROLE pg2es_t_writer").await.unwrap();
    match delete_log::install(&other, &common::capture(&other, SCHEMA).await).await {
        Err(Error::SourceSchema(message)) => {
            assert!(message.contains("run `pg2es delete-capture print` and have an owner of the tables apply it"), "{message}")
        }
        other => panic!("install by a role that owns nothing: {other:?}"),
    }
    // The failed install left no transaction open.
    other.batch_execute("SELECT 1").await.unwrap();
    // Removing as a non-owner points at the removal DDL, which is printed on its own.
    match delete_log::remove(&other, SCHEMA).await {
        Err(Error::SourceSchema(message)) => assert!(message.contains("`pg2es delete-capture print --remove`"), "{message}"),
        other => panic!("remove by a role that owns nothing: {other:?}"),
    }
    other.batch_execute("SELECT 1").await.unwrap();
    assert!(delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap(), "the failed remove changed nothing");
    let print = pg2es_command(&[("PG_SCHEMA".into(), SCHEMA.into())], &["delete-capture", "print", "--remove"]).output().unwrap();
    assert!(print.status.success(), "{}", String::from_utf8_lossy(&print.stderr));
    let ddl = String::from_utf8(print.stdout).unwrap();
    assert!(ddl.contains("DROP TRIGGER %I ON %I.%I") && !ddl.contains("CREATE TRIGGER"), "{ddl}");
    env.db.batch_execute(&ddl).await.expect("the printed removal applies as is");
    assert!(delete_log::status(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap().nothing_installed());
    env.cleanup().await;
}

#[tokio::test]
async fn the_binary_prints_installs_and_removes() {
    let env = TestEnv::new("dc_binary").await;
    let print = pg2es_command(&env.env_vars(), &["delete-capture", "print"]).output().unwrap();
    assert!(print.status.success(), "{}", String::from_utf8_lossy(&print.stderr));
    let ddl = String::from_utf8(print.stdout).unwrap();
    assert!(ddl.contains("CREATE TRIGGER") && ddl.contains(r#""content"."film_work""#), "{ddl}");
    // Applied by hand it installs, and drops the positions when a trigger was missing, as install does.
    env.db.batch_execute(&ddl).await.expect("the printed DDL applies as is");
    assert!(delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());
    delete_log::acknowledge(&env.db, SCHEMA, "a", 1).await.unwrap();
    env.db.batch_execute(&ddl).await.unwrap();
    assert!(delete_log::is_consumer(&env.db, SCHEMA, "a").await.unwrap(), "nothing was missing: the position stays");
    env.sql("ALTER TABLE content.genre DISABLE TRIGGER pg2es_movies_linked").await;
    env.db.batch_execute(&ddl).await.unwrap();
    assert!(!delete_log::is_consumer(&env.db, SCHEMA, "a").await.unwrap(), "a trigger was disabled: the position goes");
    assert!(delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());

    let install = pg2es_command(&env.env_vars(), &["delete-capture", "install"]).output().unwrap();
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));
    assert!(String::from_utf8_lossy(&install.stdout).contains("installed on schema content"));
    assert!(delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());

    let remove = pg2es_command(&env.env_vars(), &["delete-capture", "remove"]).output().unwrap();
    assert!(remove.status.success(), "{}", String::from_utf8_lossy(&remove.stderr));
    assert!(String::from_utf8_lossy(&remove.stdout).contains("12 triggers dropped"), "{}", String::from_utf8_lossy(&remove.stdout));
    assert!(!delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());

    // Nothing installed: exit 0, saying so with the schema and the database.
    let again = pg2es_command(&env.env_vars(), &["delete-capture", "remove"]).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(out.contains("nothing to remove") && out.contains("schema content of database pg2es_t_dc_binary"), "{out}");

    // A schema that does not exist: a setting is wrong (exit 2), named with the database.
    let mut vars = env.env_vars();
    vars.push(("PG_SCHEMA".into(), "dc_no_such_schema".into()));
    for action in ["remove", "install"] {
        let out = pg2es_command(&vars, &["delete-capture", action]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{action}: {err}");
        assert!(err.contains("schema dc_no_such_schema does not exist in database pg2es_t_dc_binary"), "{action}: {err}");
    }
    env.cleanup().await;
}

/// A lock that install waits for in vain is named: the table, who holds it, and what to do.
#[tokio::test]
async fn a_lock_timeout_names_the_table_and_its_holder() {
    let env = TestEnv::new("dc_lock").await;
    let holder = connect(&format!("{}?application_name=dc_lock_holder", env.dsn)).await;
    holder.batch_execute("BEGIN; SELECT count(*) FROM content.genre").await.unwrap();
    let pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let started = std::time::Instant::now();
    let err = delete_log::install_with(&env.db, &common::capture(&env.db, SCHEMA).await, Duration::from_millis(500))
        .await
        .expect_err("install while a transaction reads content.genre");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let message = err.to_string();
    for part in [
        "table content.genre",
        &format!("pid {pid}"),
        "application_name dc_lock_holder",
        "state idle in transaction",
        "transaction started 20",
        "once that transaction ends",
        "pg_terminate_backend",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert!(matches!(err, Error::SourceSetup(_)), "{err:?}");
    assert!(delete_log::status(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap().nothing_installed(), "nothing was changed");
    env.db.batch_execute("SELECT 1").await.expect("no transaction left open");

    holder.batch_execute("COMMIT").await.unwrap();
    delete_log::install_with(&env.db, &common::capture(&env.db, SCHEMA).await, Duration::from_millis(500)).await.expect("install once the transaction ended");
    assert!(delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());
    // The documented step done, pg2es runs on it and the index matches.
    env.run_once().await;
    let (_t, shutdown) = pg2es::shutdown::Shutdown::new();
    let report = pg2es::verify::verify(&env.config(), &shutdown).await.expect("verify");
    assert!(report.is_consistent(), "{report:?}");
    env.cleanup().await;
}

/// A position stands for "every delete since is in the log": installing again after the log or a
/// trigger was missing drops the positions (their instances reload), a plain re-install keeps them.
#[tokio::test]
async fn install_drops_positions_the_log_can_no_longer_vouch_for() {
    let env = installed_env("dc_positions").await;
    let consumers = "SELECT count(*) FROM pg2es.consumers";
    delete_log::acknowledge(&env.db, SCHEMA, "a", 1).await.unwrap();
    delete_log::acknowledge(&env.db, "other", "a", 1).await.unwrap();
    assert_eq!(delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap().positions_dropped, 0);
    assert_eq!(env.scalar_i64(consumers).await, 2);
    assert_eq!(delete_log::advance(&env.db, SCHEMA, "a", 2).await.unwrap(), delete_log::Continuity::Kept);

    env.sql("DROP TRIGGER pg2es_movies_deleted ON content.genre_film_work").await;
    let capture = delete_log::status(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap();
    assert_eq!(capture.describe_missing(), "genre_film_work: pg2es_movies_deleted");
    assert_eq!(delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap().positions_dropped, 1, "this schema's only");
    assert_eq!(env.scalar_i64(consumers).await, 1);
    assert_eq!(delete_log::advance(&env.db, SCHEMA, "a", 3).await.unwrap(), delete_log::Continuity::Dropped);
    assert!(!delete_log::is_consumer(&env.db, SCHEMA, "a").await.unwrap());

    // A consumer not seen for over 7 days may have lost rows to others' trimming.
    env.sql("INSERT INTO pg2es.consumers (source_schema, consumer, done_xid, seen_at) VALUES ('content', 'old', '1', now() - interval '8 days')").await;
    assert_eq!(delete_log::advance(&env.db, SCHEMA, "old", 2).await.unwrap(), delete_log::Continuity::Expired);

    // A new log: every position in the old one goes.
    env.sql("DROP TABLE pg2es.film_changes").await;
    assert!(!delete_log::installed(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap());
    assert_eq!(delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.unwrap().positions_dropped, 2);
    assert_eq!(env.scalar_i64(consumers).await, 0);

    // `remove` drops the schema's positions too: its readers learn that the log stopped.
    delete_log::acknowledge(&env.db, SCHEMA, "a", 1).await.unwrap();
    assert_eq!(delete_log::remove(&env.db, SCHEMA).await.unwrap().triggers, 12);
    assert_eq!(env.scalar_i64(consumers).await, 0);
    env.cleanup().await;
}

/// Log tables altered by someone are refused by install with what differs and the fix; nothing
/// is changed.
#[tokio::test]
async fn install_refuses_altered_log_tables() {
    let env = installed_env("dc_shape").await;
    env.sql("ALTER TABLE pg2es.film_changes ALTER COLUMN film_id TYPE text").await;
    let err = delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.expect_err("film_id is text").to_string();
    assert!(err.contains("column pg2es.film_changes.film_id is text, pg2es needs uuid") && err.contains("DROP TABLE pg2es.film_changes;"), "{err}");
    env.sql("ALTER TABLE pg2es.film_changes ALTER COLUMN film_id TYPE uuid USING film_id::uuid").await;
    delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.expect("as created again");

    env.sql("ALTER TABLE pg2es.consumers DROP CONSTRAINT consumers_pkey").await;
    env.sql("ALTER TABLE pg2es.consumers ALTER COLUMN seen_at DROP DEFAULT").await;
    let err = delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.expect_err("consumers altered").to_string();
    assert!(err.contains("pg2es.consumers.seen_at has no default") && err.contains("no unique key on (source_schema, consumer)"), "{err}");
    assert!(err.contains("DROP TABLE pg2es.consumers;"), "{err}");
    env.sql("DROP TABLE pg2es.consumers").await;
    delete_log::install(&env.db, &common::capture(&env.db, SCHEMA).await).await.expect("consumers created again");
    env.cleanup().await;
}

/// Replication mode does not read the log: its position goes, and rows no polling consumer still
/// needs are trimmed (all of them below the boundary when no polling consumer is active).
#[tokio::test]
async fn trim_for_replication_keeps_only_what_active_polling_consumers_need() {
    let env = installed_env("dc_trim_repl").await;
    let delete_one = "DELETE FROM content.genre_film_work WHERE id = (SELECT id FROM content.genre_film_work ORDER BY id LIMIT 1)";
    let first = commit(&env.db, delete_one).await;
    let second = commit(&env.db, delete_one).await;
    boundary_past(&env.db, second).await;
    let rows = "SELECT count(*) FROM pg2es.film_changes WHERE source_schema = 'content'";
    assert_eq!(env.scalar_i64(rows).await, 2);
    delete_log::acknowledge(&env.db, SCHEMA, "repl", 1).await.unwrap();
    delete_log::acknowledge(&env.db, SCHEMA, "poll", first + 1).await.unwrap();
    env.sql("INSERT INTO pg2es.consumers (source_schema, consumer, done_xid, seen_at) VALUES ('content', 'gone', '1', now() - interval '8 days')").await;
    env.sql("INSERT INTO pg2es.film_changes (source_schema, film_id) VALUES ('other', NULL)").await;

    // An active polling consumer still needs the second delete.
    assert_eq!(delete_log::trim_for_replication(&env.db, SCHEMA, "repl").await.unwrap(), 1);
    assert!(!delete_log::is_consumer(&env.db, SCHEMA, "repl").await.unwrap());
    assert_eq!(env.scalar_i64(&format!("SELECT count(*) FROM pg2es.film_changes WHERE xid = '{second}'::xid8")).await, 1);

    // No active polling consumer: everything below the boundary goes; another schema's rows stay.
    env.sql("DELETE FROM pg2es.consumers WHERE consumer = 'poll'").await;
    assert_eq!(delete_log::trim_for_replication(&env.db, SCHEMA, "repl").await.unwrap(), 1);
    assert_eq!(env.scalar_i64(rows).await, 0);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM pg2es.film_changes WHERE source_schema = 'other'").await, 1);

    // Without the log tables there is nothing to trim.
    env.sql("DROP TABLE pg2es.film_changes").await;
    assert_eq!(delete_log::trim_for_replication(&env.db, SCHEMA, "repl").await.unwrap(), 0);
    env.cleanup().await;
}
