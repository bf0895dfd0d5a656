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
    let streams: Vec<(&str, &str, Vec<&str>, usize)> =
        m.streams.iter().map(|s| (s.table.as_str(), s.timestamp.as_str(), s.direct.iter().map(String::as_str).collect(), s.fan_out.len())).collect();
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
        p.stream("film_work").unwrap().fan_out[0].sql("content"),
        r#"SELECT DISTINCT "person_id" FROM "content"."person_film_work" WHERE "film_work_id" = ANY($1::uuid[])"#
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
    assert!(sql::scan(&m, true).contains(r#"WHERE l."film_work_id" > $1 GROUP BY"#));
    assert!(sql::records(&m).ends_with(r#"WHERE t."id" = ANY($1::uuid[])"#));
    assert_eq!(
        sql::page(&m, "person_film_work", true),
        r#"SELECT "created_at"::timestamptz, "id", "film_work_id", xmin::text::bigint FROM "content"."person_film_work" WHERE ("created_at", "id") > ($1::timestamptz, $2::uuid) ORDER BY "created_at", "id" LIMIT $3"#
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
        Join::Through { link: "person_film_work".into(), link_key: "id".into(), root: "film_work_id".into(), related: "person_id".into() }
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
