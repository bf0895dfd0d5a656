use std::collections::BTreeMap;

use super::testing::{cinema, cinema_live};
use super::*;

fn movies() -> Document {
    cinema().into_iter().find(|d| d.name == "movies").unwrap()
}

#[test]
fn the_cinema_definition_resolves_into_three_documents() {
    let docs = cinema();
    let names: Vec<(&str, &str)> = docs.iter().map(|d| (d.name.as_str(), d.index.name.as_str())).collect();
    assert_eq!(names, [("movies", "movies"), ("genres", "genres"), ("persons", "persons")]);
    let m = &docs[0];
    let streams: Vec<(&str, &str, Vec<&str>, usize)> = m
        .streams
        .iter()
        .map(|s| (s.table.as_str(), s.timestamp.as_deref().unwrap_or(""), s.direct.iter().flatten().map(String::as_str).collect(), s.fan_out.len()))
        .collect();
    assert_eq!(
        streams,
        [
            ("film_work", "updated_at", vec!["id"], 0),
            ("genre_film_work", "created_at", vec!["film_work_id"], 0),
            ("genre", "updated_at", vec![], 1),
            ("person_film_work", "created_at", vec!["film_work_id"], 0),
            ("person", "updated_at", vec![], 1),
        ]
    );
    // persons: a renamed film re-indexes the people in it.
    let p = &docs[2];
    assert_eq!(
        p.stream("film_work").unwrap().fan_out[0].sql("content", &p.kinds),
        r#"SELECT DISTINCT "person_id"::text FROM "content"."person_film_work" WHERE "film_work_id" = ANY($1::text[]::uuid[])"#
    );
}

/// The generated SQL of the movies document is today's hand-written SQL with other aliases: the
/// same tables, joins, aggregates and filters (the plans are compared on a live server in
/// tests/catalog.rs).
#[test]
fn the_movies_sql_has_the_shape_of_the_hand_written_one() {
    let m = movies();
    let scan = sql::scan(&m, false);
    assert_eq!(
        scan,
        r#"SELECT t."id", t."rating"::float8, t."title"::text, t."description"::text, r0.c0, r1.c0, r1.c1, r1.c2
FROM "content"."film_work" t
LEFT JOIN (SELECT l."film_work_id" AS k, array_agg(r."name"::text) AS c0 FROM "content"."genre_film_work" l JOIN "content"."genre" r ON r."id" = l."genre_id" GROUP BY l."film_work_id") r0 ON r0.k = t."id"
LEFT JOIN (SELECT l."film_work_id" AS k, array_agg(r."id") AS c0, array_agg(r."full_name"::text) AS c1, array_agg(l."role"::text) AS c2 FROM "content"."person_film_work" l JOIN "content"."person" r ON r."id" = l."person_id" GROUP BY l."film_work_id") r1 ON r1.k = t."id"
ORDER BY t."id""#
    );
    assert!(sql::scan(&m, true).contains(r#"WHERE l."film_work_id" > $1::text::uuid GROUP BY"#));
    assert!(sql::records(&m).ends_with(r#"WHERE t."id" = ANY($1::text[]::uuid[])"#));
    assert_eq!(
        sql::page(&m, "person_film_work", true).unwrap(),
        r#"SELECT "created_at"::timestamptz, "id"::text, "film_work_id"::text, xmin::text::bigint FROM "content"."person_film_work" WHERE ("created_at", "id") > ($1::timestamptz, $2::text::uuid) ORDER BY "created_at", "id" LIMIT $3"#
    );
}

fn error(text: &str, live: &LiveSchema) -> String {
    let src = Source { origin: Origin::File("shop.toml".into()), text: text.into() };
    let dir = std::env::temp_dir().join(format!("pg2es-def-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.json"),
        r#"{"mappings":{"properties":{"id":{"type":"keyword"},"title":{"type":"text"},"people":{"properties":{"id":{"type":"keyword"}}}}}}"#,
    )
    .unwrap();
    let path = dir.join("shop.toml");
    std::fs::write(&path, text).unwrap();
    let src = Source { origin: Origin::File(path), ..src };
    let sel = Selection::default();
    sel.resolve(&src, live).map(|_| ()).unwrap_err().to_string().replace(&dir.display().to_string(), "DIR")
}

const HEAD: &str = "[[documents]]\nname = \"films\"\nindex_schema = \"m.json\"\ntable = \"film_work\"\n";

#[test]
fn errors_name_the_file_the_line_and_the_fix() {
    let live = cinema_live();
    let e = error(&format!("{HEAD}fields = [{{ name = \"id\", column = \"id\" }}, {{ name = \"title\", column = \"titel\" }}]\n"), &live);
    assert!(e.contains("DIR/shop.toml:5") && e.contains("\"titel\" not found") && e.contains("it has:"), "{e}");
    let e = error(&format!("{HEAD}fields = [{{ name = \"rating\", column = \"rating\" }}]\n"), &live);
    assert!(e.contains("shop.toml:5") && e.contains("not in the index mapping"), "{e}");
    let e = error("[[documents]]\nname = \"films\"\nindex_schema = \"m.json\"\ntable = \"films\"\nfields = []\n", &live);
    assert!(e.contains("shop.toml:4") && e.contains("content.films not found") && e.contains("PG_SCHEMA"), "{e}");
    // A relation with neither a foreign key nor a join.
    let e = error(&format!("{HEAD}fields = [{{ name = \"people\", from = \"people\", fields = [{{ name = \"id\", column = \"id\" }}] }}]\n[documents.relations.people]\ntable = \"person\"\n"), &live);
    assert!(e.contains("shop.toml:6") && e.contains("no foreign key between film_work and person") && e.contains("through"), "{e}");
    // With the foreign keys the link table has, `through` needs no columns.
    let mut fk = live.clone();
    for (c, t) in [("film_work_id", "film_work"), ("person_id", "person")] {
        fk.foreign_keys.push(ForeignKey { table: "person_film_work".into(), column: c.into(), references: t.into(), referenced_column: "id".into() });
    }
    let ok = format!("{HEAD}fields = [{{ name = \"id\", column = \"id\" }}, {{ name = \"people\", from = \"people\", fields = [{{ name = \"id\", column = \"id\" }}] }}]\n[documents.relations.people]\ntable = \"person\"\nthrough = {{ table = \"person_film_work\" }}\n");
    let src_path = std::env::temp_dir().join(format!("pg2es-def-{}", std::process::id())).join("ok.toml");
    std::fs::write(&src_path, &ok).unwrap();
    let docs = Selection::default().resolve(&Source::read(&src_path).unwrap(), &fk).unwrap();
    assert_eq!(
        docs[0].relations[0].join,
        Join::Through {
            link: "person_film_work".into(),
            link_key: vec!["id".into()],
            link_kinds: vec![crate::position::KeyKind::Uuid],
            root: "film_work_id".into(),
            related: "person_id".into()
        }
    );
    let e = error(&format!("{HEAD}fields = [{{ name = \"people\", from = \"cast\", column = \"id\" }}]\n"), &live);
    assert!(e.contains("shop.toml:5") && e.contains("no relation named \"cast\""), "{e}");
}

#[test]
fn documents_are_picked_by_name() {
    let sel = Selection { documents: vec!["persons".into()], ..Selection::default() };
    let docs = sel.resolve(&Source::builtin(), &cinema_live()).unwrap();
    assert_eq!(docs.len(), 1);
    let sel = Selection { documents: vec!["books".into()], ..Selection::default() };
    let e = sel.resolve(&Source::builtin(), &cinema_live()).unwrap_err().to_string();
    assert!(e.contains("PG2ES_DOCUMENTS") && e.contains("movies, genres, persons"), "{e}");
}

#[test]
fn settings_rename_the_first_index_only() {
    let sel = Selection { first: FirstIndex { name: Some("films_v2".into()), schema: None }, ..Selection::default() };
    let docs = sel.resolve(&Source::builtin(), &cinema_live()).unwrap();
    assert_eq!((docs[0].index.name.as_str(), docs[1].index.name.as_str()), ("films_v2", "genres"));
}

/// A schema `lib`: `loan` (root) with a boolean, an integer, an enum, a text, a float and a
/// timestamp column, and `member`, a many-to-one of it; every table keyed by `id`.
fn library_live() -> LiveSchema {
    let tz = "timestamp with time zone";
    let table = |cols: &[(&str, &str)]| -> BTreeMap<String, String> { cols.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect() };
    let mut live = LiveSchema { schema: "lib".into(), ..LiveSchema::default() };
    live.columns.insert(
        "book".into(),
        table(&[
            ("id", "uuid"),
            ("title", "character"),
            ("is_deleted", "boolean"),
            ("deleted_at", tz),
            ("tags", "ARRAY"),
            ("weight", "double precision"),
            ("updated_at", tz),
        ]),
    );
    live.columns.insert(
        "loan".into(),
        table(&[
            ("id", "uuid"),
            ("book_id", "uuid"),
            ("returned", "boolean"),
            ("days", "smallint"),
            ("state", "USER-DEFINED"),
            ("note", "text"),
            ("updated_at", tz),
        ]),
    );
    live.foreign_keys.push(ForeignKey { table: "loan".into(), column: "book_id".into(), references: "book".into(), referenced_column: "id".into() });
    for t in ["book", "loan"] {
        live.keys.insert(t.into(), TableKeys { primary: Some(vec!["id".into()]), unique: vec![] });
    }
    live.enum_labels.entry("loan".into()).or_default().insert("state".into(), vec!["open".into(), "late".into(), "Closed".into()]);
    live
}

const LIBRARY_MAPPING: &str = r#"{"mappings":{"properties":{"id":{"type":"keyword"},"title":{"type":"text"},"tags":{"type":"keyword"},"loans":{"properties":{"id":{"type":"keyword"}}}}}}"#;

/// The library definition with `root_where` on the book and `loan_where` on the loans field.
fn library(root_where: &str, loan_where: &str, live: &LiveSchema) -> std::result::Result<Document, String> {
    let dir = std::env::temp_dir().join(format!("pg2es-lib-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.json"), LIBRARY_MAPPING).unwrap();
    let text = format!(
        "[[documents]]\nname = \"books\"\nindex_schema = \"m.json\"\ntable = \"book\"\n{root_where}\n\
         fields = [{{ name = \"id\", column = \"id\" }}, {{ name = \"title\", column = \"title\" }}, {{ name = \"tags\", column = \"tags\" }}, \
         {{ name = \"loans\", from = \"loans\", {loan_where} fields = [{{ name = \"id\", column = \"id\" }}] }}]\n\
         [documents.relations.loans]\ntable = \"loan\"\n"
    );
    let path = dir.join("lib.toml");
    std::fs::write(&path, text).unwrap();
    let r = Selection::default().resolve(&Source::read(&path).unwrap(), live);
    let _ = std::fs::remove_dir_all(&dir);
    r.map(|mut d| d.remove(0)).map_err(|e| e.to_string())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn loan_test(loan_where: &str) -> std::result::Result<Test, String> {
    let d = library("", &format!("where = {{ {loan_where} }},"), &library_live())?;
    match &d.fields[3].kind {
        FieldKind::Objects { filter, .. } => Ok(filter[0].test.clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn where_compares_by_the_columns_type() {
    use Expected::*;
    assert_eq!(loan_test("returned = false"), Ok(Test::AnyOf(vec![Bool(false)])));
    assert_eq!(loan_test("returned = \"false\""), Ok(Test::AnyOf(vec![Bool(false)])));
    assert_eq!(loan_test("returned = [\"t\", \"no\"]"), Ok(Test::AnyOf(vec![Bool(true), Bool(false)])));
    assert_eq!(loan_test("days = [7, \"14\"]"), Ok(Test::AnyOf(vec![Int(7), Int(14)])));
    assert_eq!(loan_test("state = \"Closed\""), Ok(Test::AnyOf(vec![Exact("Closed".into())])));
    assert_eq!(loan_test("note = \" Overdue \""), Ok(Test::AnyOf(vec![Text("overdue".into())])));
    assert_eq!(loan_test("updated_at = { null = false }"), Ok(Test::Null(false)));

    // Values the column cannot hold are refused, naming the column, the value and the fix.
    let e = loan_test("returned = \"maybe\"").unwrap_err();
    assert!(e.contains("lib.toml:6") && e.contains("where returned") && e.contains("write true or false"), "{e}");
    let e = loan_test("days = 40000").unwrap_err();
    assert!(e.contains("out of range for smallint"), "{e}");
    let e = loan_test("days = \"a week\"").unwrap_err();
    assert!(e.contains("not a smallint"), "{e}");
    let e = loan_test("state = \"closed\"").unwrap_err();
    assert!(e.contains("not a label") && e.contains("open, late, Closed"), "{e}");
    let e = loan_test("note = 3").unwrap_err();
    assert!(e.contains("write 3 as a string"), "{e}");
    let e = loan_test("updated_at = \"2024-01-01\"").unwrap_err();
    assert!(e.contains("null = true"), "{e}");
    let e = loan_test("returned = []").unwrap_err();
    assert!(e.contains("at least one value"), "{e}");
}

#[test]
fn typed_filters_keep_the_rows_that_match() {
    let f = |test: Test| Filter { column: 0, test };
    let not_returned = f(Test::AnyOf(vec![Expected::Bool(false)]));
    assert!(not_returned.keeps(&Value::Bool(false)));
    assert!(!not_returned.keeps(&Value::Bool(true)) && !not_returned.keeps(&Value::Null));
    // Booleans read as booleans are never compared as text (the bug: no row was kept).
    assert!(!not_returned.keeps(&Value::Text("false".into())));
    let days = f(Test::AnyOf(vec![Expected::Int(7)]));
    assert!(days.keeps(&Value::Int(7)) && !days.keeps(&Value::Int(8)));
    let role = f(Test::AnyOf(vec![Expected::Text("director".into())]));
    assert!(role.keeps(&Value::Text(" Director ".into())) && !role.keeps(&Value::Text("writer".into())));
    let label = f(Test::AnyOf(vec![Expected::Exact("Closed".into())]));
    assert!(label.keeps(&Value::Text("Closed".into())) && !label.keeps(&Value::Text("closed".into())));
    assert!(f(Test::Null(true)).keeps(&Value::Null) && !f(Test::Null(true)).keeps(&Value::Int(0)));
    assert!(f(Test::Null(false)).keeps(&Value::Int(0)) && !f(Test::Null(false)).keeps(&Value::Null));
}

#[test]
fn a_documents_own_where_reads_its_columns_and_decides_which_rows_have_a_document() {
    let d = library("where = { is_deleted = false, deleted_at = { null = true } }", "", &library_live()).unwrap();
    let names: Vec<&str> = d.root_columns.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["id", "title", "tags", "deleted_at", "is_deleted"]);
    assert_eq!(d.filter.len(), 2);
    let record = |deleted_at: Value, is_deleted: bool| Record {
        key: crate::position::Key::int(1),
        cells: vec![
            Cell::One(Value::Null),
            Cell::One(Value::Null),
            Cell::One(Value::Null),
            Cell::One(deleted_at),
            Cell::One(Value::Bool(is_deleted)),
            Cell::Many(vec![]),
        ],
    };
    assert!(d.keeps(&record(Value::Null, false)));
    assert!(!d.keeps(&record(Value::Null, true)));
    assert!(!d.keeps(&record(Value::Text("2024-01-01T00:00:00".into()), false)));
    // Reconciliation reads the root's columns to apply it.
    assert_eq!(
        sql::existing(&d),
        r#"SELECT t."id", t."title", to_json(t."tags")::text, to_json(t."deleted_at")#>>'{}', t."is_deleted" FROM "lib"."book" t WHERE t."id" = ANY($1::text[]::uuid[])"#
    );
    let e = library("where = { weight = 1 }", "", &library_live()).unwrap_err();
    assert!(e.contains("lib.toml:5") && e.contains("book.weight is double precision"), "{e}");
}

#[test]
fn arrays_are_read_as_json_and_padded_text_as_stored() {
    assert_eq!(ColumnType::of("ARRAY").select("t.\"tags\""), "to_json(t.\"tags\")::text");
    // A cast of character(n) to text trims its padding.
    assert_eq!(ColumnType::of("character").select("t.\"code\""), "t.\"code\"");
    assert_eq!(ColumnType::of("character varying").select("t.\"c\""), "t.\"c\"::text");
}

#[test]
fn a_key_must_be_unique_and_is_the_primary_key_by_default() {
    // Without the loan's primary key, its key `id` is not unique.
    let mut live = library_live();
    live.keys.remove("loan");
    let e = library("", "", &live).unwrap_err();
    assert!(e.contains("lib.loan.id is not unique") && e.contains("ADD PRIMARY KEY (id)"), "{e}");
    // A unique constraint will do.
    live.keys.insert("loan".into(), TableKeys { primary: None, unique: vec![vec!["book_id".into(), "id".into()], vec!["id".into()]] });
    assert!(library("", "", &live).is_ok());
    // The primary key is the key when `key` is not given.
    let mut live = library_live();
    live.columns.get_mut("book").unwrap().insert("uid".into(), "uuid".into());
    live.keys.insert("book".into(), TableKeys { primary: Some(vec!["uid".into()]), unique: vec![] });
    let e = library("", "", &live).unwrap_err();
    assert!(e.contains("the foreign key loan.book_id references book.id, not the key book.uid"), "{e}");
    live.foreign_keys[0].referenced_column = "uid".into();
    // The key is uid, so the field id (column id) is not the key: verify would join by the wrong one.
    let e = library("", "", &live).unwrap_err();
    assert!(e.contains("field id is the document's key: give it `column = \"uid\"`"), "{e}");
    // A composite primary key on a root with a one-to-many relation: said plainly, with the fix;
    // and the field id of such a root is the _id's text, with no column.
    live.keys.insert("book".into(), TableKeys { primary: Some(vec!["uid".into(), "id".into()]), unique: vec![] });
    let e = library("", "", &live).unwrap_err();
    assert!(e.contains("relation loans: the root lib.book has the composite key (uid, id)") && e.contains("ADD COLUMN id bigint"), "{e}");
    assert!(e.contains("write it `{ name = \"id\" }`, with no column"), "{e}");
    // A view cannot be read for changes: refused, with what to do instead.
    let mut live = library_live();
    live.keys.remove("book");
    live.views.insert("book".into());
    let e = library("key = \"id\"", "", &live).unwrap_err();
    assert!(e.contains("lib.book is a view") && e.contains("give the document a `where`"), "{e}");
}

#[test]
fn a_foreign_key_to_a_column_that_is_not_the_key_is_no_join() {
    // A loan's member, many-to-one by a foreign key to member.code (unique), while member's key
    // is its primary key id: joining on id would be silently wrong.
    let mut live = library_live();
    live.columns.insert(
        "member".into(),
        [("id", "uuid"), ("code", "uuid"), ("updated_at", "timestamp with time zone")].iter().map(|(c, t)| (c.to_string(), t.to_string())).collect(),
    );
    live.columns.get_mut("loan").unwrap().insert("member_code".into(), "uuid".into());
    live.keys.insert("member".into(), TableKeys { primary: Some(vec!["id".into()]), unique: vec![vec!["code".into()]] });
    live.foreign_keys.push(ForeignKey { table: "loan".into(), column: "member_code".into(), references: "member".into(), referenced_column: "code".into() });
    let dir = std::env::temp_dir().join(format!("pg2es-fk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.json"), r#"{"mappings":{"properties":{"id":{"type":"keyword"},"member":{"type":"keyword"}}}}"#).unwrap();
    let def = |key: &str| {
        let path = dir.join("loans.toml");
        std::fs::write(
            &path,
            format!("[[documents]]\nname = \"loans\"\nindex_schema = \"m.json\"\ntable = \"loan\"\nfields = [{{ name = \"id\", column = \"id\" }}, {{ name = \"member\", from = \"member\", column = \"id\" }}]\n[documents.relations.member]\ntable = \"member\"\n{key}\n"),
        )
        .unwrap();
        Selection::default().resolve(&Source::read(&path).unwrap(), &live).map(|mut d| d.remove(0)).map_err(|e| e.to_string())
    };
    let e = def("").unwrap_err();
    assert!(e.contains("the foreign key loan.member_code references member.code, not its key member.id"), "{e}");
    // With the unique column as the relation's key, the foreign key is the join.
    let d = def("key = \"code\"").unwrap();
    assert_eq!(d.relations[0].join, Join::RootColumn("member_code".into()));
}

#[test]
fn check_names_every_error_at_once() {
    let mut live = library_live();
    live.keys.remove("loan");
    let e = library("where = { is_deleted = \"perhaps\" }", "where = { days = \"x\" },", &live).unwrap_err();
    assert!(e.contains("2 errors:"), "{e}");
    assert!(e.contains("lib.loan.id is not unique") && e.contains("where is_deleted"), "{e}");
    // The field of the relation that failed is not reported again.
    assert!(!e.contains("where days"), "{e}");
}

#[test]
fn check_names_every_documents_name_and_index_error_at_once() {
    let dir = std::env::temp_dir().join(format!("pg2es-heads-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.json"), LIBRARY_MAPPING).unwrap();
    let doc =
        |name: &str, index: &str| format!("[[documents]]\nname = \"{name}\"\nindex = \"{index}\"\nindex_schema = \"m.json\"\ntable = \"book\"\nfields = []\n");
    let path = dir.join("two.toml");
    std::fs::write(&path, format!("{}{}{}", doc("Books", "b"), doc("loans", "Bad Index"), doc("ok", "b2"))).unwrap();
    let e = Selection::default().heads(&Source::read(&path).unwrap()).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.contains("2 errors:") && e.contains("document name \"Books\"") && e.contains("index \"Bad Index\""), "{e}");
}

/// A shop: products keyed by a bigint, brands by a varchar code, categories by an integer through
/// a link keyed by its two foreign keys, and variants keyed by (product_id, sku).
fn shop_live() -> LiveSchema {
    let tz = "timestamp with time zone";
    let table = |cols: &[(&str, &str)]| -> BTreeMap<String, String> { cols.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect() };
    let mut live = LiveSchema { schema: "shop".into(), ..LiveSchema::default() };
    live.columns.insert("product".into(), table(&[("id", "bigint"), ("name", "text"), ("brand_code", "character varying"), ("updated_at", tz)]));
    live.columns.insert("brand".into(), table(&[("code", "character varying"), ("name", "text"), ("updated_at", tz)]));
    live.columns.insert("category".into(), table(&[("id", "integer"), ("name", "text"), ("updated_at", tz)]));
    live.columns.insert("product_category".into(), table(&[("product_id", "bigint"), ("category_id", "integer"), ("created_at", tz)]));
    live.columns.insert("variant".into(), table(&[("product_id", "bigint"), ("sku", "text"), ("price", "numeric"), ("updated_at", tz)]));
    let fk = |t: &str, c: &str, r: &str, rc: &str| ForeignKey { table: t.into(), column: c.into(), references: r.into(), referenced_column: rc.into() };
    live.foreign_keys.extend([
        fk("product", "brand_code", "brand", "code"),
        fk("product_category", "product_id", "product", "id"),
        fk("product_category", "category_id", "category", "id"),
        fk("variant", "product_id", "product", "id"),
    ]);
    let pk = |cols: &[&str]| TableKeys { primary: Some(cols.iter().map(|c| c.to_string()).collect()), unique: vec![] };
    live.keys.insert("product".into(), pk(&["id"]));
    live.keys.insert("brand".into(), pk(&["code"]));
    live.keys.insert("category".into(), pk(&["id"]));
    live.keys.insert("product_category".into(), pk(&["product_id", "category_id"]));
    live.keys.insert("variant".into(), pk(&["product_id", "sku"]));
    live
}

const SHOP_MAPPING: &str =
    r#"{"id":{"type":"keyword"},"brand":{"type":"keyword"},"categories":{"type":"keyword"},"variants":{"properties":{"sku":{"type":"keyword"}}}}"#;

fn shop(live: &LiveSchema) -> std::result::Result<Document, String> {
    shop_with(live, SHOP_MAPPING, "id")
}

/// The shop with these mapping properties, and its field `id` of column `id_column`.
fn shop_with(live: &LiveSchema, properties: &str, id_column: &str) -> std::result::Result<Document, String> {
    let dir = std::env::temp_dir().join(format!("pg2es-shop-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.json"), format!(r#"{{"mappings":{{"properties":{properties}}}}}"#)).unwrap();
    let text = "[[documents]]\nname = \"products\"\nindex_schema = \"m.json\"\ntable = \"product\"\n\
         fields = [{ name = \"id\", column = \"ID_COLUMN\" }, { name = \"brand\", from = \"brand\", column = \"name\" }, \
         { name = \"categories\", from = \"categories\", column = \"name\" }, \
         { name = \"variants\", from = \"variants\", fields = [{ name = \"sku\", column = \"sku\" }] }]\n\
         [documents.relations.brand]\ntable = \"brand\"\n\
         [documents.relations.categories]\ntable = \"category\"\nthrough = { table = \"product_category\" }\n\
         [documents.relations.variants]\ntable = \"variant\"\n"
        .replace("ID_COLUMN", id_column);
    let path = dir.join("shop.toml");
    std::fs::write(&path, text).unwrap();
    let r = Selection::default().resolve(&Source::read(&path).unwrap(), live);
    let _ = std::fs::remove_dir_all(&dir);
    r.map(|mut d| d.remove(0)).map_err(|e| e.to_string())
}

#[test]
fn keys_are_read_as_the_schema_has_them() {
    use crate::position::KeyKind;
    let d = shop(&shop_live()).unwrap();
    assert_eq!((d.key.as_slice(), d.kinds.as_slice()), (&["id".to_string()][..], &[KeyKind::Int][..]));
    assert_eq!(d.key_of("42"), Some(crate::position::Key::int(42)));
    assert_eq!(d.key_of("042"), None);
    let link = d.stream("product_category").unwrap();
    assert_eq!((link.key.clone(), link.kinds.clone()), (vec!["product_id".to_string(), "category_id".into()], vec![KeyKind::Int, KeyKind::Int]));
    assert_eq!(link.direct, [["product_id"]]);
    let variant = d.stream("variant").unwrap();
    assert_eq!(variant.kinds, [KeyKind::Int, KeyKind::Text]);
    // The variants of one product are told apart by the key's other column.
    assert_eq!(d.relations.iter().find(|r| r.name == "variants").unwrap().key, "sku");
    let brand = d.stream("brand").unwrap();
    assert_eq!((brand.kinds.clone(), brand.fan_out[0].kind), (vec![KeyKind::Text], KeyKind::Text));
    assert_eq!(brand.fan_out[0].sql("shop", &d.kinds), r#"SELECT DISTINCT "id"::int8 FROM "shop"."product" WHERE "brand_code" = ANY($1::text[])"#);
    assert_eq!(
        sql::page(&d, "product_category", true).unwrap(),
        r#"SELECT "created_at"::timestamptz, "product_id"::int8, "category_id"::int8, "product_id"::int8, xmin::text::bigint FROM "shop"."product_category" WHERE ("created_at", "product_id", "category_id") > ($1::timestamptz, $2::int8, $3::int8) ORDER BY "created_at", "product_id", "category_id" LIMIT $4"#
    );
    assert_eq!(
        sql::page(&d, "variant", true).unwrap(),
        r#"SELECT "updated_at"::timestamptz, "product_id"::int8, "sku"::text, "product_id"::int8, xmin::text::bigint FROM "shop"."variant" WHERE ("updated_at", "product_id", "sku" COLLATE "C") > ($1::timestamptz, $2::int8, $3::text COLLATE "C") ORDER BY "updated_at", "product_id", "sku" COLLATE "C" LIMIT $4"#
    );
    assert!(sql::records(&d).ends_with(r#"WHERE t."id" = ANY($1::int8[])"#));
    assert!(sql::scan(&d, true).ends_with("WHERE t.\"id\" > $1::int8\nORDER BY t.\"id\""), "{}", sql::scan(&d, true));
    // Verify reads in the order of the keys' text, the index's order of `_id`s.
    assert!(sql::records_after(&d).contains(r#"ORDER BY t."id"::text COLLATE "C" LIMIT $2"#));
}

#[test]
fn an_id_field_is_the_key_as_a_keyword() {
    let mut live = shop_live();
    live.columns.get_mut("product").unwrap().insert("sku".into(), "text".into());
    let ok = shop(&live).unwrap();
    assert_eq!(ok.fields[0].name, "id");
    let e = shop_with(
        &live,
        r#"{"id":{"type":"long"},"brand":{"type":"keyword"},"categories":{"type":"keyword"},"variants":{"properties":{"sku":{"type":"keyword"}}}}"#,
        "id",
    )
    .unwrap_err();
    assert!(e.contains(r#"field id is mapped as long: map it as { "type": "keyword" }"#), "{e}");
    let e = shop_with(&live, SHOP_MAPPING, "sku").unwrap_err();
    assert!(e.contains("field id is the document's key: give it `column = \"id\"`"), "{e}");
}

#[test]
fn keys_that_cannot_be_read_are_refused_with_the_fix() {
    let mut live = shop_live();
    live.keys.insert("category".into(), TableKeys { primary: Some(vec!["id".into(), "name".into()]), unique: vec![] });
    let e = shop(&live).unwrap_err();
    assert!(e.contains("shop.category has the composite primary key (id, name)") && e.contains("found by a key of one column"), "{e}");
    let mut live = shop_live();
    live.columns.get_mut("product").unwrap().insert("id".into(), "numeric".into());
    let e = shop(&live).unwrap_err();
    assert!(e.contains("product.id is numeric: a key column is a smallint, integer, bigint, text, varchar or uuid"), "{e}");
    let mut live = shop_live();
    live.keys.insert("product".into(), TableKeys { primary: Some(vec!["id".into(), "name".into()]), unique: vec![] });
    let e = shop(&live).unwrap_err();
    assert!(e.contains("relation categories: the root shop.product has the composite key (id, name)"), "{e}");
    assert!(e.contains("relation variants: the root shop.product has the composite key (id, name)"), "{e}");
    // A link table without any key: its two columns are not known to be unique.
    let mut live = shop_live();
    live.keys.remove("product_category");
    live.columns.get_mut("product_category").unwrap().insert("id".into(), "bigint".into());
    let e = shop(&live).unwrap_err();
    assert!(e.contains("shop.product_category.id is not unique"), "{e}");
}

/// Films with their people (through a link), each person's country and its continent: three
/// levels from the root.
fn deep_live() -> LiveSchema {
    let tz = "timestamp with time zone";
    let table = |cols: &[(&str, &str)]| -> BTreeMap<String, String> { cols.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect() };
    let mut live = LiveSchema { schema: "deep".into(), ..LiveSchema::default() };
    live.columns.insert("film".into(), table(&[("id", "bigint"), ("title", "text"), ("updated_at", tz)]));
    live.columns.insert("person".into(), table(&[("id", "bigint"), ("name", "text"), ("country_id", "integer"), ("updated_at", tz)]));
    live.columns.insert("film_person".into(), table(&[("film_id", "bigint"), ("person_id", "bigint"), ("created_at", tz)]));
    live.columns.insert("country".into(), table(&[("id", "integer"), ("name", "text"), ("continent_code", "text"), ("updated_at", tz)]));
    live.columns.insert("continent".into(), table(&[("code", "text"), ("name", "text"), ("updated_at", tz)]));
    let fk = |t: &str, c: &str, r: &str, rc: &str| ForeignKey { table: t.into(), column: c.into(), references: r.into(), referenced_column: rc.into() };
    live.foreign_keys.extend([
        fk("film_person", "film_id", "film", "id"),
        fk("film_person", "person_id", "person", "id"),
        fk("person", "country_id", "country", "id"),
        fk("country", "continent_code", "continent", "code"),
    ]);
    let pk = |cols: &[&str]| TableKeys { primary: Some(cols.iter().map(|c| c.to_string()).collect()), unique: vec![] };
    for t in ["film", "person", "country"] {
        live.keys.insert(t.into(), pk(&["id"]));
    }
    live.keys.insert("continent".into(), pk(&["code"]));
    live.keys.insert("film_person".into(), pk(&["film_id", "person_id"]));
    live
}

fn deep(relations: &str, fields: &str) -> std::result::Result<Document, String> {
    let dir = std::env::temp_dir().join(format!("pg2es-deep-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.json"),
        r#"{"mappings":{"properties":{"id":{"type":"keyword"},"countries":{"type":"keyword"},"people":{"properties":{"name":{"type":"keyword"},"country":{"type":"keyword"},"continent":{"type":"keyword"}}}}}}"#,
    )
    .unwrap();
    let text = format!(
        "[[documents]]\nname = \"films\"\nindex_schema = \"m.json\"\ntable = \"film\"\n\
         fields = [{{ name = \"id\", column = \"id\" }}, {fields}]\n\
         [documents.relations.people]\ntable = \"person\"\nthrough = {{ table = \"film_person\" }}\n{relations}"
    );
    let path = dir.join("deep.toml");
    std::fs::write(&path, text).unwrap();
    let r = Selection::default().resolve(&Source::read(&path).unwrap(), &deep_live());
    let _ = std::fs::remove_dir_all(&dir);
    r.map(|mut d| d.remove(0)).map_err(|e| e.to_string())
}

const DEEP_RELATIONS: &str = "[documents.relations.people.relations.country]\ntable = \"country\"\n\
     [documents.relations.people.relations.country.relations.continent]\ntable = \"continent\"\n";

#[test]
fn relations_of_relations_are_read_with_their_rows_and_lead_back_to_the_roots() {
    let d = deep(
        DEEP_RELATIONS,
        "{ name = \"countries\", from = \"people\", column = \"country.name\", distinct = \"value\" }, \
         { name = \"people\", from = \"people\", fields = [{ name = \"name\", column = \"name\" }, { name = \"country\", column = \"country.name\" }, \
           { name = \"continent\", column = \"country.continent.name\" }] }",
    )
    .unwrap();
    let people = &d.relations[0];
    assert_eq!(people.nested.iter().map(|n| n.path.as_str()).collect::<Vec<_>>(), ["country", "country.continent"]);
    assert_eq!((people.nested[1].parent, people.nested[1].column.as_str()), (Some(0), "continent_code"));
    let lookup = sql::records(&d);
    assert!(
        lookup.contains(r#"FROM "deep"."film_person" l JOIN "deep"."person" r ON r."id" = l."person_id" LEFT JOIN "deep"."country" n0 ON n0."id" = r."country_id" LEFT JOIN "deep"."continent" n1 ON n1."code" = n0."continent_code" WHERE l."film_id" = t."id""#),
        "{lookup}"
    );
    assert!(lookup.contains(r#"array_agg(n0."name"::text)"#) && lookup.contains(r#"array_agg(n1."name"::text)"#), "{lookup}");
    assert!(sql::scan(&d, false).contains(r#"LEFT JOIN "deep"."continent" n1 ON n1."code" = n0."continent_code" GROUP BY l."film_id""#));
    // A renamed continent re-indexes the films of the people of its countries.
    let continent = d.stream("continent").unwrap();
    assert_eq!(
        continent.fan_out[0].sql("deep", &d.kinds),
        r#"SELECT DISTINCT "film_id"::int8 FROM "deep"."film_person" WHERE "person_id" IN (SELECT "id" FROM "deep"."person" WHERE "country_id" IN (SELECT "id" FROM "deep"."country" WHERE "continent_code" = ANY($1::text[])))"#
    );
    assert_eq!(
        d.stream("country").unwrap().fan_out[0].sql("deep", &d.kinds),
        r#"SELECT DISTINCT "film_id"::int8 FROM "deep"."film_person" WHERE "person_id" IN (SELECT "id" FROM "deep"."person" WHERE "country_id" = ANY($1::int8[]))"#
    );
    // The delete capture: a deleted continent logs those films before the cascade.
    let set = super::triggers::capture("deep", std::slice::from_ref(&d));
    let linked = set.triggers.iter().find(|t| t.table == "continent" && t.name == "pg2es_films_linked").unwrap();
    assert!(linked.create.contains(r#"WHERE "continent_code" = OLD."code")) AND"#), "{}", linked.create);
}

#[test]
fn relations_of_relations_that_cannot_be_read_are_refused() {
    let people = |column: &str| format!("{{ name = \"people\", from = \"people\", fields = [{{ name = \"country\", column = \"{column}\" }}] }}");
    let e = deep("", &people("country.name")).unwrap_err();
    assert!(e.contains(r#""country.name": relation people has no relation "country" (it has: none)"#), "{e}");
    let e = deep(DEEP_RELATIONS, &people("country.name")).unwrap_err();
    assert!(e.contains("relation people.country.continent is not used by any field"), "{e}");
    let e =
        deep("[documents.relations.people.relations.films]\ntable = \"film\"\nthrough = { table = \"film_person\" }\n", &people("films.title")).unwrap_err();
    assert!(e.contains("a relation of a relation is many-to-one for now"), "{e}");
    let e = deep("[documents.relations.people.relations.country]\ntable = \"continent\"\n", &people("country.name")).unwrap_err();
    assert!(e.contains("person has no foreign key to continent"), "{e}");
}

#[test]
fn a_table_without_a_timestamp_is_read_only_from_the_log_or_the_stream() {
    // Django's auto-created many-to-many table: an id, the two foreign keys, no timestamp.
    let mut live = shop_live();
    live.columns.get_mut("product_category").unwrap().remove("created_at");
    let d = shop(&live).unwrap();
    assert_eq!(d.untimed(), ["product_category"]);
    assert_eq!(sql::page(&d, "product_category", true), None);
    assert_eq!(sql::head(&d, "product_category"), None);
    // Its rows still lead to their products (the write capture's triggers and replication).
    let set = super::triggers::capture("shop", std::slice::from_ref(&d));
    assert!(set.triggers.iter().any(|t| t.table == "product_category" && t.name == "pg2es_products_inserted"));
}

/// A root keyed by two columns, `(product_id, sku)`: its SQL reads and compares both, in key
/// order; the triggers log the key's text as `Key` writes it; the field `id` is the `_id`.
#[test]
fn a_composite_root_key_is_read_compared_and_logged_by_all_its_columns() {
    use crate::position::{Key, KeyKind, KeyPart};
    let dir = std::env::temp_dir().join(format!("pg2es-variants-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.json"), r#"{"mappings":{"properties":{"id":{"type":"keyword"},"product":{"type":"keyword"},"brand":{"type":"keyword"}}}}"#)
        .unwrap();
    let definition = |id: &str| {
        format!(
            "[[documents]]\nname = \"variants\"\nindex_schema = \"m.json\"\ntable = \"variant\"\n\
             fields = [{id}, {{ name = \"product\", from = \"product\", column = \"name\" }}, {{ name = \"brand\", from = \"product\", column = \"brand.name\" }}]\n\
             [documents.relations.product]\ntable = \"product\"\n[documents.relations.product.relations.brand]\ntable = \"brand\"\n"
        )
    };
    let resolve = |id: &str| {
        let path = dir.join("variants.toml");
        std::fs::write(&path, definition(id)).unwrap();
        Selection::default().resolve(&Source::read(&path).unwrap(), &shop_live()).map(|mut d| d.remove(0)).map_err(|e| e.to_string())
    };
    let e = resolve("{ name = \"id\", column = \"sku\" }").unwrap_err();
    assert!(e.contains("field id is the document's key, which is composite (product_id, sku): write it `{ name = \"id\" }`"), "{e}");
    let d = resolve("{ name = \"id\" }").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((d.key.as_slice(), d.kinds.as_slice()), (&["product_id".to_string(), "sku".to_string()][..], &[KeyKind::Int, KeyKind::Text][..]));
    assert_eq!(d.fields[0].kind, FieldKind::Id);
    assert_eq!(d.key_of("2|L2%7CB"), Some(Key::new(vec![KeyPart::Int(2), KeyPart::Text("L2|B".into())])));

    assert!(sql::records(&d).ends_with(r#"WHERE (t."product_id", t."sku") IN (SELECT * FROM unnest($1::int8[], $2::text[]))"#), "{}", sql::records(&d));
    let scan = sql::scan(&d, true);
    assert!(
        scan.ends_with(
            "WHERE (t.\"product_id\", t.\"sku\" COLLATE \"C\") > ($1::int8, $2::text COLLATE \"C\")\nORDER BY t.\"product_id\", t.\"sku\" COLLATE \"C\""
        ),
        "{scan}"
    );
    assert_eq!(
        sql::count_after(&d),
        r#"SELECT count(*) FROM "shop"."variant" t WHERE (t."product_id", t."sku" COLLATE "C") > ($1::int8, $2::text COLLATE "C")"#
    );
    let text = r#"replace(replace(t."product_id"::text, '%', '%25'), '|', '%7C') || '|' || replace(replace(t."sku"::text, '%', '%25'), '|', '%7C')"#;
    assert!(sql::records_after(&d).contains(&format!("ORDER BY ({text}) COLLATE \"C\" LIMIT $2")), "{}", sql::records_after(&d));
    // The root stream names its records by both columns; a product's and a brand's rows lead to
    // them by fan-out, which reads both.
    let root = d.stream("variant").unwrap();
    assert_eq!(root.direct, [["product_id", "sku"]]);
    let page = sql::page(&d, "variant", false).unwrap();
    assert!(page.starts_with(r#"SELECT "updated_at"::timestamptz, "product_id"::int8, "sku"::text, "product_id"::int8, "sku"::text, xmin"#), "{page}");
    assert_eq!(
        d.stream("brand").unwrap().fan_out[0].sql("shop", &d.kinds),
        r#"SELECT DISTINCT "product_id"::int8, "sku"::text FROM "shop"."variant" WHERE "product_id" IN (SELECT "id" FROM "shop"."product" WHERE "code" = ANY($1::text[]))"#
            .replace(r#""code" = ANY"#, r#""brand_code" = ANY"#)
    );
    let set = triggers::capture("shop", std::slice::from_ref(&d));
    let deleted = set.triggers.iter().find(|t| t.table == "variant" && t.name == "pg2es_variants_deleted").unwrap();
    assert!(
        deleted.create.contains(r#"SELECT DISTINCT TG_TABLE_SCHEMA, 'variants', replace(replace(c."product_id"::text, '%', '%25'), '|', '%7C') || '|' || replace(replace(c."sku"::text, '%', '%25'), '|', '%7C') FROM changed c WHERE c."product_id" IS NOT NULL AND c."sku" IS NOT NULL"#),
        "{}",
        deleted.create
    );
    // The variant's own key is its root's: no trigger for a row moving to another root.
    let names: Vec<&str> = set.triggers.iter().filter(|t| t.table == "variant").map(|t| t.name.as_str()).collect();
    assert!(!names.contains(&"pg2es_variants_moved"), "{names:?}");
    // One moved to another product logs its old key, both columns.
    let moved = set.triggers.iter().find(|t| t.table == "variant" && t.name == "pg2es_variants_reference_moved").unwrap();
    assert!(moved.create.contains(r#"FROM gone g WHERE g."product_id" IS NOT NULL AND g."sku" IS NOT NULL"#), "{}", moved.create);
}

/// The SQL a message suggests is what psql takes: a mixed-case name quoted, a plain one not.
#[test]
fn suggested_sql_quotes_the_names_postgres_would_fold() {
    assert_eq!(sql_table("public", "orders"), "public.orders");
    assert_eq!(sql_table("public", "Node"), "public.\"Node\"");
    assert_eq!(sql_ident("NodeId"), "\"NodeId\"");
    assert_eq!(sql_ident("my table"), "\"my table\"");
    assert_eq!(sql_ident("a\"b"), "\"a\"\"b\"");
}

/// A root without a primary key and without a column id is told so, with the fix; and a key that
/// does not resolve is not followed by a second error about the field id naming a made-up key.
#[test]
fn a_table_without_a_primary_key_or_id_says_how_to_name_its_key() {
    let mut live = library_live();
    live.keys.remove("book");
    let book = live.columns.get_mut("book").unwrap();
    let id_type = book.remove("id").unwrap();
    book.insert("code".into(), id_type);
    let e = library("", "", &live).unwrap_err();
    assert!(e.contains("lib.book has no primary key and no column id") && e.contains("`key = \"...\"`"), "{e}");
    assert!(!e.contains("give it `column = \"id\"`"), "no knock-on error about the field id: {e}");
}
