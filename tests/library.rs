//! The library catalog (`catalog/library`) end to end: a document's own `where` (soft deletes by
//! a flag and by a timestamp), filters by type (a boolean of the link row, an enum label, small
//! integers), an array column and a padded `character(n)`, in polling (with the delete capture)
//! and in replication; and `pg2es check`, which refuses a value a column cannot hold and a key
//! that is not unique, naming every error at once.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestEnv;
use serde_json::{json, Value};

fn library_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalog/library")
}

/// A row of the seed by its number, as SQL.
fn row(table: &str, n: u32) -> String {
    format!("md5('library/{table}/{n}')::uuid")
}

async fn id(env: &TestEnv, table: &str, n: u32) -> String {
    env.scalar_uuid(&format!("SELECT {}", row(table, n))).await.to_string()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Source {
    Polling,
    Replication,
}

async fn library(name: &str, source: Source) -> TestEnv {
    let suffix = if source == Source::Replication { "_repl" } else { "" };
    let mut env = TestEnv::catalog(&format!("library_{name}{suffix}"), &library_dir(), "library.toml", "library", "books").await;
    if source == Source::Replication {
        // loan is a link table and a one-to-many table: its deleted rows must name their book.
        env.sql("ALTER TABLE library.loan REPLICA IDENTITY FULL").await;
        env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into()));
    } else {
        let o = common::pg2es_command(&env.env_vars(), &["delete-capture", "install"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "delete-capture install: {}", String::from_utf8_lossy(&o.stderr));
    }
    env
}

/// The stored document by a realtime get, or `None` when absent.
async fn stored(env: &TestEnv, id: &str) -> Option<Value> {
    let v: Value = env.http.get(format!("{}/{}/_doc/{id}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
    (v["found"] == Value::Bool(true)).then(|| v["_source"].clone())
}

/// The books that have a document: neither flagged nor with a deletion time.
async fn visible_books(env: &TestEnv) -> u64 {
    env.scalar_i64("SELECT count(*) FROM library.book WHERE NOT is_deleted AND deleted_at IS NULL").await as u64
}

async fn assert_consistent(env: &TestEnv) {
    let report = env.verify().await;
    assert!(report.is_consistent(), "the index differs from Postgres:\n{}", report.render());
    let books = visible_books(env).await;
    assert_eq!((report.checked, env.count().await), (books, books));
}

/// Runs `sql`, then passes until the stored document of `book` is `expected` (`None`: absent), at
/// most 30 s; then verify agrees.
async fn change(env: &TestEnv, sql: &str, book: u32, expected: Option<Value>) {
    assert!(env.sql(sql).await > 0, "{sql}: changed no row");
    let id = id(env, "book", book).await;
    let start = Instant::now();
    loop {
        env.pass().await;
        let doc = stored(env, &id).await;
        if doc == expected {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{sql}: book {book} is {doc:?} after 30 s, not {expected:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_consistent(env).await;
}

/// Book `n` as the definition builds it from the seed.
async fn book(env: &TestEnv, n: u32) -> Value {
    let b = id(env, "book", n).await;
    match n {
        1 => json!({"id": b, "title": "Dune", "heading": "Dune: Deluxe Edition", "shelf": "A1    ", "tags": ["sf", "classic"], "borrowers": ["Ada", "Cyril"],
                    "late_loans": [{"id": id(env, "loan", 3).await, "weeks": 4}]}),
        2 => json!({"id": b, "title": "Emma", "heading": "Emma", "shelf": "B2    ", "tags": ["classic"], "borrowers": [], "late_loans": []}),
        3 => json!({"id": b, "title": "Ulysses", "heading": "Ulysses", "shelf": "C3    ", "tags": [], "borrowers": [], "late_loans": []}),
        4 => json!({"id": b, "title": "Beloved", "heading": "Beloved", "shelf": null, "tags": [], "borrowers": ["Ada", "Dora"], "late_loans": []}),
        5 => json!({"id": b, "title": "Middlemarch", "heading": "Middlemarch", "shelf": "E5    ", "tags": null, "borrowers": [], "late_loans": []}),
        _ => unreachable!(),
    }
}

async fn filters_soft_deletes_and_values(source: Source) {
    let env = library("filters", source).await;
    env.pass().await;
    // Books 2 (flagged) and 3 (a deletion time) have no document.
    assert_eq!(env.count().await, 3);
    for n in [1, 4, 5] {
        assert_eq!(stored(&env, &id(&env, "book", n).await).await, Some(book(&env, n).await), "book {n}");
    }
    for n in [2, 3] {
        assert_eq!(stored(&env, &id(&env, "book", n).await).await, None, "book {n}");
    }
    assert_consistent(&env).await;

    // Soft-deleted: the document leaves the index. Restored: it comes back.
    change(&env, &format!("UPDATE library.book SET is_deleted = true, updated_at = now() WHERE id = {}", row("book", 1)), 1, None).await;
    let emma = book(&env, 2).await;
    change(&env, &format!("UPDATE library.book SET is_deleted = false, updated_at = now() WHERE id = {}", row("book", 2)), 2, Some(emma)).await;
    let ulysses = book(&env, 3).await;
    change(&env, &format!("UPDATE library.book SET deleted_at = NULL, updated_at = now() WHERE id = {}", row("book", 3)), 3, Some(ulysses)).await;
    change(&env, &format!("UPDATE library.book SET deleted_at = now(), updated_at = now() WHERE id = {}", row("book", 3)), 3, None).await;

    // A boolean of the link row: a returned loan's member is no longer a borrower.
    let mut beloved = book(&env, 4).await;
    beloved["borrowers"] = json!(["Dora"]);
    change(&env, &format!("UPDATE library.loan SET returned = true, updated_at = now() WHERE id = {}", row("loan", 4)), 4, Some(beloved.clone())).await;
    // An integer in the list: a late loan of 4 weeks is listed.
    beloved["late_loans"] = json!([{"id": id(&env, "loan", 5).await, "weeks": 4}]);
    change(&env, &format!("UPDATE library.loan SET weeks = 4, updated_at = now() WHERE id = {}", row("loan", 5)), 4, Some(beloved.clone())).await;
    // An enum label: no longer late.
    beloved["late_loans"] = json!([]);
    change(&env, &format!("UPDATE library.loan SET state = 'open', updated_at = now() WHERE id = {}", row("loan", 5)), 4, Some(beloved.clone())).await;
    // A renamed member, through the link table.
    beloved["borrowers"] = json!(["Dorothy"]);
    change(&env, &format!("UPDATE library.member SET name = 'Dorothy', updated_at = now() WHERE id = {}", row("member", 4)), 4, Some(beloved.clone())).await;
    // A deleted loan (the delete capture, or the stream).
    beloved["borrowers"] = json!([]);
    change(&env, &format!("DELETE FROM library.loan WHERE id = {}", row("loan", 5)), 4, Some(beloved)).await;
    // An array changed, and a hard delete.
    let mut middlemarch = book(&env, 5).await;
    middlemarch["tags"] = json!(["victorian", "classic"]);
    change(&env, &format!("UPDATE library.book SET tags = '{{victorian,classic}}', updated_at = now() WHERE id = {}", row("book", 5)), 5, Some(middlemarch))
        .await;
    change(&env, &format!("DELETE FROM library.book WHERE id = {}", row("book", 5)), 5, None).await;
    env.cleanup().await;
}

#[tokio::test]
async fn filters_soft_deletes_and_values_polling() {
    filters_soft_deletes_and_values(Source::Polling).await;
}

#[tokio::test]
async fn filters_soft_deletes_and_values_replication() {
    filters_soft_deletes_and_values(Source::Replication).await;
}

/// A soft delete while pg2es was not watching (no capture, no stream) is found by reconciliation.
#[tokio::test]
async fn reconciliation_removes_a_document_whose_row_stopped_passing_the_where() {
    let env = TestEnv::catalog("library_reconcile", &library_dir(), "library.toml", "library", "books").await;
    env.pass().await;
    assert_eq!(env.count().await, 3);
    // The flag set without touching updated_at: polling cannot see it; reconciliation must.
    env.sql(&format!("UPDATE library.book SET is_deleted = true WHERE id = {}", row("book", 4))).await;
    let mut env = env;
    env.extra_env.push(("ETL_RECONCILE_SEC".into(), "1".into()));
    let start = Instant::now();
    while stored(&env, &id(&env, "book", 4).await).await.is_some() {
        assert!(start.elapsed() < Duration::from_secs(30), "reconciliation did not remove book 4 within 30 s");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        env.pass().await;
    }
    assert_consistent(&env).await;
    env.cleanup().await;
}

/// `pg2es check` on a copy of the definition with `edit` applied: its exit code and stderr.
fn check(env: &TestEnv, edit: impl Fn(String) -> String) -> (Option<i32>, String) {
    let text = edit(std::fs::read_to_string(library_dir().join("library.toml")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(library_dir().join("books.es.json"), dir.path().join("books.es.json")).unwrap();
    let path = dir.path().join("library.toml");
    std::fs::write(&path, text).unwrap();
    let mut vars = env.env_vars();
    vars.retain(|(k, _)| k != "PG2ES_DEFINITION");
    vars.push(("PG2ES_DEFINITION".into(), path.display().to_string()));
    let o = common::pg2es_command(&vars, &["check"]).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[tokio::test]
async fn check_refuses_values_the_column_cannot_hold_and_keys_that_are_not_unique() {
    let env = TestEnv::catalog("library_check", &library_dir(), "library.toml", "library", "books").await;
    let (code, err) = check(&env, |t| t);
    assert_eq!(code, Some(0), "{err}");

    // A boolean compared with a word, an enum compared with a label it does not have: both named.
    let (code, err) =
        check(&env, |t| t.replace(r#""link.returned" = false"#, r#""link.returned" = "maybe""#).replace(r#"state = "late""#, r#"state = "Late""#));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("2 errors"), "{err}");
    assert!(err.contains("library.toml:51") && err.contains("\"maybe\" is not a boolean"), "{err}");
    assert!(err.contains("library.toml:57") && err.contains("\"Late\" is not a label") && err.contains("open, late, lost"), "{err}");
    // A number too big for a smallint.
    let (code, err) = check(&env, |t| t.replace("weeks = [2, 4]", "weeks = [2, 40000]"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("40000 is out of range for smallint"), "{err}");

    // A key that no primary key or unique constraint covers.
    env.sql("ALTER TABLE library.member DROP CONSTRAINT member_pkey CASCADE").await;
    let (code, err) = check(&env, |t| t);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("library.member.id is not unique") && err.contains("ADD PRIMARY KEY (id)"), "{err}");
    env.sql("ALTER TABLE library.member ADD CONSTRAINT member_id_key UNIQUE (id)").await;
    let (code, err) = check(&env, |t| t);
    assert_eq!(code, Some(0), "a unique constraint is a key: {err}");
    env.cleanup().await;
}

/// Flips soft deletes, returns and lends books, changes loans' state and weeks, renames members,
/// adds and deletes loans and retags books, until told to stop (at most 2,000 changes).
#[cfg(feature = "fault-tests")]
async fn write(dsn: String, seed: u64, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let db = common::connect(&dsn).await;
    let mut rng = common::Rng::new(seed);
    let mut done = 0;
    let loan = |n: u64| format!("(SELECT id FROM library.loan ORDER BY id LIMIT 1 OFFSET {})", n % 6);
    while !*stop.borrow() && done < 2_000 {
        let n = rng.below(1000);
        let book = row("book", 1 + (n % 5) as u32);
        let sql = match rng.below(8) {
            0 => format!("UPDATE library.book SET is_deleted = NOT is_deleted, updated_at = now() WHERE id = {book}"),
            1 => format!("UPDATE library.book SET deleted_at = CASE WHEN deleted_at IS NULL THEN now() END, updated_at = now() WHERE id = {book}"),
            2 => format!("UPDATE library.loan SET returned = NOT returned, updated_at = now() WHERE id = {}", loan(n)),
            3 => format!(
                "UPDATE library.loan SET state = (ARRAY['open', 'late', 'lost'])[{}]::library.loan_state, weeks = {}, updated_at = now() WHERE id = {}",
                1 + n % 3,
                1 + n % 4,
                loan(n)
            ),
            4 => format!("UPDATE library.member SET name = 'Member {n}', updated_at = now() WHERE id = {}", row("member", 1 + (n % 4) as u32)),
            5 => format!(
                "INSERT INTO library.loan (id, book_id, member_id, returned, state, weeks) VALUES (gen_random_uuid(), {book}, {}, {}, 'late', {})",
                row("member", 1 + (n % 4) as u32),
                n.is_multiple_of(2),
                2 + 2 * (n % 2)
            ),
            6 => format!("DELETE FROM library.loan WHERE id = {}", loan(n)),
            _ => format!("UPDATE library.book SET tags = ARRAY['t{n}', 'classic'], updated_at = now() WHERE id = {book}"),
        };
        db.execute(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        done += 1;
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80))).await;
    }
    done
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

/// `pg2es run` killed 3 times at random moments (within 30 s) while the writer flips soft
/// deletes and filtered columns, each time started again; then one pass, and the index is what
/// Postgres says.
#[cfg(feature = "fault-tests")]
async fn kills(source: Source) {
    let mut env = library("kills", source).await;
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "2".into()));
    env.extra_env.push(("ETL_CLOCK_SKEW_MS".into(), "1000".into()));
    common::kills_under_a_writer(&env, "library kill test", Duration::from_secs(30), write).await;
    assert_consistent(&env).await;
    env.cleanup().await;
}
