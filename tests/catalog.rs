//! The movies document's generated SQL has the plans of the hand-written SQL it replaced (the
//! release before definitions, copied below as the reference), on the reference catalog.

mod common;

use common::TestEnv;
use pg2es::catalog::{sql, Document};
use serde_json::Value;

/// The hand-written queries of the release before definitions (src/source/queries.rs at 24bfc28).
const FILM_COLUMNS: &str = "fw.id, fw.title::text, fw.description::text, fw.rating::float8, g.names, p.ids, p.names, p.roles";

fn films_sql(filter: &str) -> String {
    format!(
        r#"SELECT {FILM_COLUMNS}
FROM "content".film_work fw
LEFT JOIN LATERAL (SELECT array_agg(g.name::text) AS names
                   FROM "content".genre_film_work gfw JOIN "content".genre g ON g.id = gfw.genre_id
                   WHERE gfw.film_work_id = fw.id) g ON true
LEFT JOIN LATERAL (SELECT array_agg(p.id) AS ids, array_agg(p.full_name::text) AS names, array_agg(pfw.role::text) AS roles
                   FROM "content".person_film_work pfw JOIN "content".person p ON p.id = pfw.person_id
                   WHERE pfw.film_work_id = fw.id) p ON true
{filter}"#
    )
}

fn films_scan_sql(after: bool) -> String {
    let (film, link) = if after { ("WHERE fw.id > $1", "WHERE l.film_work_id > $1") } else { ("", "") };
    format!(
        r#"SELECT {FILM_COLUMNS}
FROM "content".film_work fw
LEFT JOIN (SELECT l.film_work_id, array_agg(g.name::text) AS names
           FROM "content".genre_film_work l JOIN "content".genre g ON g.id = l.genre_id
           {link} GROUP BY l.film_work_id) g ON g.film_work_id = fw.id
LEFT JOIN (SELECT l.film_work_id, array_agg(p.id) AS ids, array_agg(p.full_name::text) AS names, array_agg(l.role::text) AS roles
           FROM "content".person_film_work l JOIN "content".person p ON p.id = l.person_id
           {link} GROUP BY l.film_work_id) p ON p.film_work_id = fw.id
{film}
ORDER BY fw.id"#
    )
}

/// A plan's shape: node types, relations, indexes, join types and strategies, without aliases,
/// output columns or costs.
fn shape(node: &Value) -> Value {
    let keep = ["Node Type", "Relation Name", "Index Name", "Join Type", "Strategy", "Scan Direction", "Parent Relationship"];
    let mut out = serde_json::Map::new();
    for k in keep {
        if let Some(v) = node.get(k) {
            out.insert(k.to_string(), v.clone());
        }
    }
    if let Some(children) = node.get("Plans").and_then(Value::as_array) {
        out.insert("Plans".into(), Value::Array(children.iter().map(shape).collect()));
    }
    Value::Object(out)
}

async fn plan(env: &TestEnv, query: &str, params: &str) -> Value {
    // A generic plan, as a prepared statement gets after a few executions.
    env.sql("SET plan_cache_mode = force_generic_plan").await;
    env.db.batch_execute("DEALLOCATE ALL").await.unwrap();
    env.db.batch_execute(&format!("PREPARE q{params} AS {query}")).await.unwrap();
    let args = match params {
        "" => String::new(),
        "(uuid[])" => "('{00000000-0000-0000-0000-000000000001}')".into(),
        "(uuid)" => "('00000000-0000-0000-0000-000000000001')".into(),
        "(uuid, int8)" => "('00000000-0000-0000-0000-000000000001', 500)".into(),
        other => panic!("{other}"),
    };
    let rows = env.db.simple_query(&format!("EXPLAIN (FORMAT JSON, COSTS OFF) EXECUTE q{args}")).await.unwrap();
    let text = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    shape(&v[0]["Plan"])
}

async fn movies(env: &TestEnv) -> Document {
    let (_, spec, _) = pg2es::pipeline::documents(&env.config()).unwrap().remove(0);
    spec.resolve(&env.db, "content").await.unwrap()
}

#[tokio::test]
async fn the_movies_queries_have_the_hand_written_plans() {
    let env = TestEnv::new("cat_plans").await;
    env.sql("ANALYZE").await;
    let doc = movies(&env).await;
    let pairs = [
        (films_scan_sql(false), sql::scan(&doc, false), ""),
        (films_scan_sql(true), sql::scan(&doc, true), "(uuid)"),
        (films_sql("WHERE fw.id = ANY($1::uuid[])"), sql::records(&doc), "(uuid[])"),
        (films_sql("WHERE fw.id > $1 ORDER BY fw.id LIMIT $2"), sql::records_after(&doc), "(uuid, int8)"),
    ];
    for (old, new, params) in pairs {
        let (a, b) = (plan(&env, &old, params).await, plan(&env, &new, params).await);
        assert_eq!(a, b, "the plans differ:\n{old}\n--\n{new}");
        assert!(a.to_string().contains("person_film_work"), "{a}");
    }
    // The comparison tells plans apart: the lookup form and the scan form differ.
    assert_ne!(plan(&env, &sql::scan(&doc, true), "(uuid)").await, plan(&env, &sql::records(&doc), "(uuid[])").await);
    env.cleanup().await;
}
