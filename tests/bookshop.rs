//! The bookshop catalog (`catalog/bookshop`) end to end, from its definition alone: the full
//! load's documents, renames and deletes at every level of a book in polling and in replication,
//! `pg2es check`, and (feature `fault-tests`) SIGKILLs while a writer changes the catalog.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use serde_json::{json, Value};

/// A row of the seed by its number, as SQL: the seed's ids are the md5 of a fixed text.
fn row(table: &str, n: u32) -> String {
    format!("md5('bookshop/{table}/{n}')::uuid")
}

async fn id(env: &TestEnv, table: &str, n: u32) -> String {
    env.scalar_uuid(&format!("SELECT {}", row(table, n))).await.to_string()
}

/// The ids a query returns, as text.
async fn ids(env: &TestEnv, sql: &str) -> Vec<String> {
    let rows = env.db.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|r| r.get::<_, uuid::Uuid>(0).to_string()).collect()
}

/// The stored document by a realtime get, or `None` when absent.
async fn stored(env: &TestEnv, id: &str) -> Option<Value> {
    let v: Value = env.http.get(format!("{}/{}/_doc/{id}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
    (v["found"] == Value::Bool(true)).then(|| v["_source"].clone())
}

/// The `id`s of a list of objects (`authors`, `reviews`).
fn ids_of(list: &Value) -> Vec<&str> {
    list.as_array().unwrap_or_else(|| panic!("not a list: {list}")).iter().map(|o| o["id"].as_str().unwrap()).collect()
}

/// An author of at least three books, and their books.
async fn author_of_several(env: &TestEnv) -> (String, Vec<String>) {
    let author = ids(env, "SELECT author_id FROM bookshop.book_author GROUP BY author_id HAVING count(*) >= 3 ORDER BY author_id LIMIT 1").await.remove(0);
    let books = ids(env, &format!("SELECT book_id FROM bookshop.book_author WHERE author_id = '{author}'")).await;
    (author, books)
}

/// The publisher of the most books, and its books.
async fn busiest_publisher(env: &TestEnv) -> (String, Vec<String>) {
    let publisher =
        ids(env, "SELECT publisher_id FROM bookshop.book WHERE publisher_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1").await.remove(0);
    let books = ids(env, &format!("SELECT id FROM bookshop.book WHERE publisher_id = '{publisher}'")).await;
    (publisher, books)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Source {
    Polling,
    Replication,
}

/// A fresh bookshop database and index for `source`.
async fn bookshop(name: &str, source: Source) -> TestEnv {
    let suffix = if source == Source::Replication { "_repl" } else { "" };
    let mut env = TestEnv::bookshop(&format!("books_{name}{suffix}")).await;
    if source == Source::Replication {
        env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into()));
    }
    env
}

async fn assert_consistent(env: &TestEnv) {
    let report = env.verify().await;
    assert!(report.is_consistent(), "the index differs from Postgres:\n{}", report.render());
    let books = env.scalar_i64("SELECT count(*) FROM bookshop.book").await as u64;
    assert_eq!((report.checked, env.count().await), (books, books));
}

/// The first load, with the delete capture installed first for polling (by the binary, as a
/// user would).
async fn load(env: &TestEnv, source: Source) {
    if source == Source::Polling {
        let o = common::pg2es_command(&env.env_vars(), &["delete-capture", "install"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "delete-capture install: {}", String::from_utf8_lossy(&o.stderr));
    }
    env.pass().await;
    assert_eq!(env.count().await, 300);
}

/// Runs `sql`, then passes until `done` holds of the stored document (`None`: absent) of each of
/// `books`, at most 30 s (a pass sees a change only once write transactions open anywhere on the
/// server, such as another test loading its seed, have ended); then verify agrees.
async fn change(env: &TestEnv, sql: &str, books: &[String], done: impl Fn(Option<&Value>) -> bool) {
    assert!(!books.is_empty(), "{sql}: no book to look at");
    assert!(env.sql(sql).await > 0, "{sql}: changed no row");
    let start = Instant::now();
    loop {
        env.pass().await;
        let mut docs = Vec::new();
        for id in books {
            docs.push(stored(env, id).await);
        }
        if docs.iter().all(|d| done(d.as_ref())) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{sql}: the documents are not as expected after 30 s: {docs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_consistent(env).await;
}

#[tokio::test]
async fn the_full_load_builds_every_book_as_the_definition_says() {
    let env = bookshop("load", Source::Polling).await;
    env.pass().await;
    assert_eq!(env.count().await, 300);
    let expected = [
        (
            34,
            json!({"id":"4bfa4ace-f5b7-ae96-adaa-c4ae5c42c5f5","title":"The Hidden Harbor","isbn":"978-000269246-4","pages":null,"price":23.41,"published":"1972-03-12","publisher":{"id":"0cc7cb5a-0758-d09f-4db8-ab94fca6d632","name":null,"country":"GB"},"authors":[{"id":"90fb9f8c-b1a9-809a-020b-df2c4f6bbf25","name":"Sofia Petrova"}],"author_names":["Sofia Petrova"],"reviews":[{"id":"52659f10-2619-9c75-d49c-37deb57e2c37","rating":3,"body":null,"reviewer":"Nikolai"},{"id":"52d808bc-e62d-e9ca-52b7-fd50dd4af424","rating":1,"body":"Beautifully written.","reviewer":"bookworm"},{"id":"665cfb7e-f1a8-9c0a-bffa-0dcba777d9ed","rating":4,"body":"Too long by half.","reviewer":"reader42"}]}),
        ),
        (
            50,
            json!({"id":"32cbc01e-f2d6-b8b7-23fd-84629b0ed859","title":"Distant Letters","isbn":"978-000395950-0","pages":346,"price":27.49,"published":"1977-12-07","publisher":null,"authors":[{"id":"77381a49-7e93-366e-591d-0facebe0ac29","name":"Olga Keller"},{"id":"737136aa-2df0-07c5-3334-8064bd94cd3b","name":"John Petrova"}],"author_names":["Olga Keller","John Petrova"],"reviews":[]}),
        ),
        (
            228,
            json!({"id":"0a0a8d55-944b-e6d5-a302-ba3aa6935e89","title":"Broken Road","isbn":"978-001805532-8","pages":532,"price":null,"published":"1981-07-17","publisher":{"id":"179e2976-5da4-5104-2528-e7d92266f0e9","name":"Lantern Books","country":"RU"},"authors":[{"id":"03cd1adb-12f2-6832-c78e-3e92aaf25f97","name":"Mary Walker"},{"id":"ee6e4066-33bb-8a34-5c96-9b90cac0af0f","name":"Mary Walker"},{"id":"78387076-ea93-d206-0852-16fb05096ccf","name":"Mark Petrova"}],"author_names":["Mary Walker","Mary Walker","Mark Petrova"],"reviews":[{"id":"34c095fb-85a0-9f1a-b6ad-e21e10e0b56f","rating":2,"body":"Too long by half.","reviewer":"reader42"}]}),
        ),
    ];
    for (n, doc) in expected {
        assert_eq!(id(&env, "book", n).await, doc["id"], "the id of book {n}");
        assert_eq!(env.doc(doc["id"].as_str().unwrap()).await, doc, "book {n}");
    }
    // Known text is kept as stored, spaces included.
    assert_eq!(env.doc(&id(&env, "book", 11).await).await["title"], "  The Padded Title  ");
    assert_consistent(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn renames_at_every_level_reach_their_books_by_polling() {
    renames(Source::Polling).await;
}

#[tokio::test]
async fn renames_at_every_level_reach_their_books_by_replication() {
    renames(Source::Replication).await;
}

async fn renames(source: Source) {
    let env = bookshop("renames", source).await;
    load(&env, source).await;

    // The book itself.
    let b34 = id(&env, "book", 34).await;
    let sql = format!("UPDATE bookshop.book SET title = 'Retitled', updated_at = now() WHERE id = {}", row("book", 34));
    change(&env, &sql, std::slice::from_ref(&b34), |d| d.is_some_and(|d| d["title"] == "Retitled")).await;

    // An author in several books: both of its fields, in every one of them.
    let (author, books) = author_of_several(&env).await;
    let sql = format!("UPDATE bookshop.author SET name = 'Renamed Author', updated_at = now() WHERE id = '{author}'");
    change(&env, &sql, &books, |d| {
        d.is_some_and(|d| {
            d["authors"].as_array().unwrap().contains(&json!({"id": author, "name": "Renamed Author"}))
                && d["author_names"].as_array().unwrap().contains(&json!("Renamed Author"))
        })
    })
    .await;

    // The publisher of the most books: every one of them.
    let (publisher, books) = busiest_publisher(&env).await;
    let sql = format!("UPDATE bookshop.publisher SET name = 'Renamed Press', updated_at = now() WHERE id = '{publisher}'");
    change(&env, &sql, &books, |d| d.is_some_and(|d| d["publisher"]["id"] == publisher.as_str() && d["publisher"]["name"] == "Renamed Press")).await;

    // A review: the second of book 34's three.
    let review = "52d808bc-e62d-e9ca-52b7-fd50dd4af424";
    let sql = format!("UPDATE bookshop.review SET body = 'Edited.', updated_at = now() WHERE id = '{review}'");
    change(&env, &sql, std::slice::from_ref(&b34), |d| {
        d.is_some_and(|d| {
            d["reviews"].as_array().unwrap().iter().any(|r| r["id"] == review && r["body"] == "Edited.") && d["reviews"].as_array().unwrap().len() == 3
        })
    })
    .await;

    // The order of authors: book 228's first and third swap places.
    let b228 = id(&env, "book", 228).await;
    let before = stored(&env, &b228).await.unwrap();
    let mut reversed: Vec<String> = ids_of(&before["authors"]).into_iter().map(String::from).collect();
    let mut names = before["author_names"].as_array().unwrap().clone();
    assert_eq!((reversed.len(), names.len()), (3, 3), "{before}");
    reversed.reverse();
    names.reverse();
    let sql = format!("UPDATE bookshop.book_author SET position = 4 - position, updated_at = now() WHERE book_id = '{b228}' AND position IN (1, 3)");
    change(&env, &sql, std::slice::from_ref(&b228), |d| d.is_some_and(|d| ids_of(&d["authors"]) == reversed && d["author_names"].as_array() == Some(&names)))
        .await;
    env.cleanup().await;
}

#[tokio::test]
async fn deletes_at_every_level_reach_their_books_by_polling_with_the_delete_capture() {
    deletes(Source::Polling).await;
}

#[tokio::test]
async fn deletes_at_every_level_reach_their_books_by_replication() {
    deletes(Source::Replication).await;
}

async fn deletes(source: Source) {
    let env = bookshop("deletes", source).await;
    load(&env, source).await;

    // A link row: book 228 loses its second author, the others keep their order.
    let b228 = id(&env, "book", 228).await;
    let before = stored(&env, &b228).await.unwrap();
    let (first, third) = (before["authors"][0]["id"].clone(), before["authors"][2]["id"].clone());
    let sql = format!("DELETE FROM bookshop.book_author WHERE book_id = '{b228}' AND position = 2");
    change(&env, &sql, std::slice::from_ref(&b228), |d| d.is_some_and(|d| d["authors"].as_array().unwrap().iter().map(|a| &a["id"]).eq([&first, &third])))
        .await;

    // A review: book 34 keeps the other two.
    let b34 = id(&env, "book", 34).await;
    let sql = "DELETE FROM bookshop.review WHERE id = '52d808bc-e62d-e9ca-52b7-fd50dd4af424'";
    change(&env, sql, std::slice::from_ref(&b34), |d| {
        d.is_some_and(|d| ids_of(&d["reviews"]) == ["52659f10-2619-9c75-d49c-37deb57e2c37", "665cfb7e-f1a8-9c0a-bffa-0dcba777d9ed"])
    })
    .await;

    // An author of several books (ON DELETE CASCADE of their links): every book loses them.
    let (author, books) = author_of_several(&env).await;
    let sql = format!("DELETE FROM bookshop.author WHERE id = '{author}'");
    change(&env, &sql, &books, |d| d.is_some_and(|d| !ids_of(&d["authors"]).contains(&author.as_str()))).await;

    // A publisher (ON DELETE SET NULL, which leaves updated_at alone): its books have none.
    let (publisher, books) = busiest_publisher(&env).await;
    let sql = format!("DELETE FROM bookshop.publisher WHERE id = '{publisher}'");
    change(&env, &sql, &books, |d| d.is_some_and(|d| d["publisher"].is_null())).await;

    // A book (its links and reviews go with it): its document goes.
    let sql = format!("DELETE FROM bookshop.book WHERE id = {}", row("book", 34));
    change(&env, &sql, &[b34], |d| d.is_none()).await;
    assert_eq!(env.count().await, 299);
    env.cleanup().await;
}

#[tokio::test]
async fn check_accepts_the_definition_and_names_the_line_of_a_mistake() {
    let env = TestEnv::bookshop("books_check").await;
    let o = common::pg2es_command(&env.env_vars(), &["check"]).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() == 1 && lines[0].starts_with("books: ok: index "), "one line per document: {out}");

    // Copies of the definition, with the index schema beside them, each with one mistake.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::bookshop_dir().join("books.es.json"), dir.path().join("books.es.json")).unwrap();
    let text = std::fs::read_to_string(common::bookshop_dir().join("bookshop.toml")).unwrap();
    let cases = [
        ("column.toml", "column = \"isbn\"", "column = \"isnb\"", "column \"isnb\" not found in bookshop.book"),
        ("field.toml", "name = \"isbn\"", "name = \"isbn13\"", "field \"isbn13\" is not in the index mapping"),
    ];
    for (file, right, wrong, says) in cases {
        assert_eq!(text.matches(right).count(), 1, "{right}");
        let line = 1 + text[..text.find(right).unwrap()].matches('\n').count();
        let path = dir.path().join(file);
        std::fs::write(&path, text.replace(right, wrong)).unwrap();
        let mut vars = env.env_vars();
        vars.retain(|(k, _)| k != "PG2ES_DEFINITION");
        vars.push(("PG2ES_DEFINITION".into(), path.display().to_string()));
        let o = common::pg2es_command(&vars, &["check"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(&format!("{}:{line}: {says}", path.display())), "{file}: {err}");
    }
    env.cleanup().await;
}

/// Renames authors and publishers, edits, adds and deletes reviews, and now and then deletes an
/// author, until told to stop (at most 2,000 changes).
#[cfg(feature = "fault-tests")]
async fn write(dsn: String, seed: u64, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let db = common::connect(&dsn).await;
    let mut rng = common::Rng::new(seed);
    let mut done = 0;
    let review_of = |n: u64| format!("(SELECT id FROM bookshop.review WHERE book_id = {} ORDER BY id LIMIT 1)", row("book", 1 + (n % 300) as u32));
    while !*stop.borrow() && done < 2_000 {
        let n = rng.below(1000);
        let sql = match rng.below(8) {
            0 | 1 => format!("UPDATE bookshop.author SET name = 'Author {n}', updated_at = now() WHERE id = {}", row("author", 1 + (n % 60) as u32)),
            2 => format!("UPDATE bookshop.publisher SET name = 'Publisher {n}', updated_at = now() WHERE id = {}", row("publisher", 1 + (n % 15) as u32)),
            3 | 4 => format!("UPDATE bookshop.review SET body = 'Review {n}', updated_at = now() WHERE id = {}", review_of(n)),
            5 => format!(
                "INSERT INTO bookshop.review (id, book_id, rating, body, reviewer) VALUES (gen_random_uuid(), {}, {}, 'New {n}', 'writer')",
                row("book", 1 + (n % 300) as u32),
                1 + n % 5
            ),
            6 => format!("DELETE FROM bookshop.review WHERE id = {}", review_of(n)),
            _ => format!("DELETE FROM bookshop.author WHERE id = {}", row("author", 1 + (n % 60) as u32)),
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

/// `pg2es run` killed 3 times at random moments (within a minute) while the writer runs, each
/// time started again; then one pass, and the index is what Postgres says.
#[cfg(feature = "fault-tests")]
async fn kills(source: Source) {
    let mut env = bookshop("kills", source).await;
    if source == Source::Polling {
        let o = common::pg2es_command(&env.env_vars(), &["delete-capture", "install"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "delete-capture install: {}", String::from_utf8_lossy(&o.stderr));
    }
    // Small batches, so that a kill can land inside the full load; the default clock margin, as
    // tests/faults.rs explains (a cycle under load may read the horizon before a write shows).
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "40".into()));
    env.extra_env.push(("ETL_CLOCK_SKEW_MS".into(), "1000".into()));
    common::kills_under_a_writer(&env, "bookshop kill test", Duration::from_secs(60), write).await;
    assert_consistent(&env).await;
    env.cleanup().await;
}
