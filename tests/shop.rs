//! The shop catalog (`catalog/shop`) end to end: keys that are not uuid. The root is keyed by a
//! bigint identity (its `_id` is the number's text), a brand by a varchar code, a category by an
//! integer; the link table and the variants have composite primary keys and no id. In polling
//! (with the delete capture) and in replication: the full load's exact documents, then renames and
//! deletes at every level, each followed by verify; `pg2es check`, which accepts the definition and
//! refuses keys it cannot read; and (feature `fault-tests`) SIGKILLs while a writer changes every
//! table.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestEnv;
use serde_json::{json, Value};

fn shop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalog/shop")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Source {
    Polling,
    Replication,
}

/// A fresh shop database and index for `source`: the delete capture installed (by the binary, as
/// a user would) for polling. Replication runs with the default replica identities: the primary
/// keys of the link table and of the variants carry their product's id.
async fn shop(name: &str, source: Source) -> TestEnv {
    shop_document(name, source, "shop.toml", "products").await
}

/// As [`shop`], for `document` of the definition `file` in `catalog/shop`.
async fn shop_document(name: &str, source: Source, file: &str, document: &str) -> TestEnv {
    let suffix = if source == Source::Replication { "_repl" } else { "" };
    let mut env = TestEnv::catalog(&format!("shop_{name}{suffix}"), &shop_dir(), file, "shop", document).await;
    if source == Source::Replication {
        env.extra_env.push(("PG2ES_SOURCE".into(), "replication".into()));
    } else {
        let o = common::pg2es_command(&env.env_vars(), &["delete-capture", "install"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "delete-capture install: {}", String::from_utf8_lossy(&o.stderr));
    }
    env
}

/// The stored document of product `n` (its `_id` is `n` as text), or `None`.
async fn stored(env: &TestEnv, n: u32) -> Option<Value> {
    stored_id(env, &n.to_string()).await
}

/// The products that have a document: those not soft-deleted.
async fn visible_products(env: &TestEnv) -> u64 {
    env.scalar_i64("SELECT count(*) FROM shop.product WHERE NOT is_deleted").await as u64
}

async fn assert_consistent(env: &TestEnv) {
    let report = env.verify().await;
    assert!(report.is_consistent(), "the index differs from Postgres:\n{}", report.render());
    let products = visible_products(env).await;
    assert_eq!((report.checked, env.count().await), (products, products));
}

/// A variant as the document lists it.
fn v(sku: &str, price: Option<f64>) -> Value {
    json!({"sku": sku, "price": price})
}

fn product(id: u32, name: &str, tags: Value, brand: Option<&str>, categories: &[&str], variants: Vec<Value>) -> Value {
    let (country, region) = origin(brand);
    json!({"id": id, "name": name, "tags": tags, "brand": brand, "brand_country": country, "brand_region": region, "categories": categories, "variants": variants})
}

/// The country and region of a brand (by its seeded name), as seed.sql has them.
fn origin(brand: Option<&str>) -> (Option<&'static str>, Option<&'static str>) {
    match brand {
        Some("Acme") => (Some("United States"), Some("Americas")),
        Some("Luma") => (Some("Sweden"), Some("Europe")),
        Some("Nordlicht" | "Idle") => (Some("Germany"), Some("Europe")),
        _ => (None, None),
    }
}

/// Sets the brand's country and region of products `ns`.
fn from_where(want: &mut Expected, ns: &[u32], country: Option<&str>, region: Option<&str>) {
    for &n in ns {
        want.doc(n)["brand_country"] = json!(country);
        want.doc(n)["brand_region"] = json!(region);
    }
}

/// Product `n` as the definition builds it from seed.sql (see the table at its top): categories
/// sorted by name, in-stock variants by sku, prices as numbers.
fn seeded(n: u32) -> Value {
    let (acme, luma, nord, zeph) = (Some("Acme"), Some("Luma"), Some("Nordlicht"), Some("Zephyr"));
    match n {
        1 => product(1, "Chef Knife", json!(["steel", "sharp"]), acme, &["Kitchen", "Tools"], vec![v("K1-L", Some(39.9)), v("K1-S", Some(29.9))]),
        2 => product(2, "Camp Lantern", json!(["camping", "light"]), luma, &["Lighting", "Outdoor"], vec![v("L2-BLUE", Some(19.5)), v("L2-RED", Some(19.5))]),
        3 => product(3, "Garden Hose", Value::Null, nord, &["Garden"], vec![v("H3-15M", Some(24.0))]),
        4 => product(4, "Old Kettle", json!(["kitchen"]), acme, &["Kitchen"], vec![v("KT4", Some(15.0))]),
        5 => product(5, "Hammer", json!([]), None, &[], vec![v("HM5", Some(12.0))]),
        6 => product(6, "Desk Lamp", json!(["light"]), luma, &["Clearance", "Lighting"], vec![v("D6-W", Some(35.0))]),
        7 => product(7, "Tent", json!(["camping"]), zeph, &["Outdoor"], vec![v("T7-2P", Some(120.0)), v("T7-4P", Some(180.0))]),
        8 => product(8, "Secateurs", json!(["garden", "steel"]), nord, &["Garden", "Tools"], vec![]),
        9 => product(9, "Frying Pan", json!(["steel"]), acme, &["Kitchen"], vec![v("F9-24", Some(30.0)), v("F9-28", Some(34.0))]),
        10 => product(10, "Sleeping Bag", json!(["camping"]), zeph, &["Outdoor"], vec![v("B10-L", Some(70.0)), v("B10-S", Some(60.0))]),
        11 => product(11, "Headlamp", json!(["light", "camping"]), luma, &["Lighting", "Outdoor"], vec![v("HL11", Some(22.5))]),
        12 => product(12, "Rake", Value::Null, nord, &["Garden"], vec![v("R12", Some(18.0))]),
        13 => product(13, "Screwdriver Set", json!(["tools"]), acme, &["Tools"], vec![v("SD13-12", Some(26.0)), v("SD13-6", Some(16.0))]),
        14 => product(14, "String Lights", json!(["light"]), luma, &["Garden", "Lighting"], vec![v("SL14", Some(14.99))]),
        15 => product(15, "Cutting Board", json!([]), acme, &[], vec![]),
        16 => product(16, "Camp Stove", json!(["camping"]), zeph, &["Kitchen", "Outdoor"], vec![v("CS16", Some(55.0))]),
        17 => product(17, "Wheelbarrow", Value::Null, nord, &["Garden", "Tools"], vec![v("WB17", Some(89.0))]),
        18 => product(18, "Floor Lamp", json!(["light"]), luma, &["Lighting"], vec![v("FL18-B", Some(79.0))]),
        19 => product(19, "Cooler Box", json!(["camping"]), zeph, &["Outdoor"], vec![v("CB19", None)]),
        20 => product(20, "Spatula", json!(["kitchen"]), acme, &["Clearance", "Kitchen"], vec![v("SP20", Some(4.5))]),
        _ => unreachable!("the seed has products 1 to 20"),
    }
}

/// What the index should hold, by product number (index 0 unused): `None` for no document.
struct Expected(Vec<Option<Value>>);

impl Expected {
    /// The seed's: every product but 4, which is soft-deleted.
    fn seed() -> Expected {
        Expected((0..=20).map(|n| (n != 0 && n != 4).then(|| seeded(n))).collect())
    }

    fn doc(&mut self, n: u32) -> &mut Value {
        self.0[n as usize].as_mut().unwrap_or_else(|| panic!("product {n} is expected to have no document"))
    }

    fn set(&mut self, n: u32, doc: Option<Value>) {
        let n = n as usize;
        if self.0.len() <= n {
            self.0.resize(n + 1, None);
        }
        self.0[n] = doc;
    }

    fn of(&self, n: u32) -> Option<&Value> {
        self.0.get(n as usize).and_then(Option::as_ref)
    }

    /// Every product's stored document is the expected one.
    async fn assert_stored(&self, env: &TestEnv) {
        for n in 1..self.0.len() as u32 {
            assert_eq!(stored(env, n).await.as_ref(), self.of(n), "product {n}");
        }
        let with_documents = self.0.iter().filter(|d| d.is_some()).count() as u64;
        assert_eq!(env.count().await, with_documents, "documents in the index");
    }
}

/// Runs `sql`, then passes until the stored documents of `products` are the expected ones, at most
/// 30 s (a pass sees a change only once the write transactions open anywhere on the server, such
/// as another test loading its seed, have ended); then verify agrees.
async fn change(env: &TestEnv, sql: &str, expected: &Expected, products: &[u32]) {
    let ids: Vec<String> = products.iter().map(u32::to_string).collect();
    passes_until(env, sql, &ids, |i, doc| doc == expected.of(products[i])).await;
    assert_consistent(env).await;
}

/// Runs `sql`, then passes until `fits` the stored document (or `None`) of each of `ids`, by its
/// place in `ids`, at most 30 s.
async fn passes_until(env: &TestEnv, sql: &str, ids: &[String], fits: impl Fn(usize, Option<&Value>) -> bool) {
    assert!(env.sql(sql).await > 0, "{sql}: changed no row");
    let start = Instant::now();
    loop {
        env.pass().await;
        let mut differ = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let doc = stored_id(env, id).await;
            if !fits(i, doc.as_ref()) {
                differ.push((id, doc));
            }
        }
        if differ.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{sql}: after 30 s these documents are not as expected: {differ:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn keys_renames_and_deletes(source: Source) {
    let env = shop("changes", source).await;
    let mut want = Expected::seed();

    // The full load: exactly the products not soft-deleted, each as the seed says.
    env.pass().await;
    want.assert_stored(&env).await;
    assert_consistent(&env).await;

    // A brand (a varchar key) renamed: every product of it, found by product.brand_code.
    for n in [1, 9, 13, 15, 20] {
        want.doc(n)["brand"] = json!("Acme Tools");
    }
    change(&env, "UPDATE shop.brand SET name = 'Acme Tools', updated_at = now() WHERE code = 'ACME'", &want, &[1, 4, 9, 13, 15, 20]).await;
    // The lower-case code too.
    for n in [7, 10, 16, 19] {
        want.doc(n)["brand"] = json!("Zephyr Outdoor");
    }
    change(&env, "UPDATE shop.brand SET name = 'Zephyr Outdoor', updated_at = now() WHERE code = 'zeph'", &want, &[7, 10, 16, 19]).await;

    // A category (an integer key) renamed through the link table: the names sort again.
    want.doc(2)["categories"] = json!(["Camping", "Lighting"]);
    want.doc(11)["categories"] = json!(["Camping", "Lighting"]);
    want.doc(16)["categories"] = json!(["Camping", "Kitchen"]);
    for n in [7, 10, 19] {
        want.doc(n)["categories"] = json!(["Camping"]);
    }
    change(&env, "UPDATE shop.category SET name = 'Camping', updated_at = now() WHERE id = 2", &want, &[2, 7, 10, 11, 16, 19]).await;

    // A link row (keyed by its two foreign keys) added, to a product that had no category, and one
    // deleted.
    want.doc(5)["categories"] = json!(["Tools"]);
    change(&env, "INSERT INTO shop.product_category (product_id, category_id) VALUES (5, 4)", &want, &[5]).await;
    want.doc(1)["categories"] = json!(["Kitchen"]);
    change(&env, "DELETE FROM shop.product_category WHERE product_id = 1 AND category_id = 4", &want, &[1]).await;

    // Variants (keyed by product and sku): in stock and out again, a price, a new one, a deleted one.
    want.doc(8)["variants"] = json!([v("S8", Some(15.25))]);
    change(&env, "UPDATE shop.variant SET in_stock = true, updated_at = now() WHERE product_id = 8 AND sku = 'S8'", &want, &[8]).await;
    want.doc(1)["variants"] = json!([v("K1-L", Some(39.9))]);
    change(&env, "UPDATE shop.variant SET in_stock = false, updated_at = now() WHERE product_id = 1 AND sku = 'K1-S'", &want, &[1]).await;
    want.doc(2)["variants"] = json!([v("L2-BLUE", Some(19.5)), v("L2-RED", Some(17.25))]);
    change(&env, "UPDATE shop.variant SET price = 17.25, updated_at = now() WHERE product_id = 2 AND sku = 'L2-RED'", &want, &[2]).await;
    // A new one whose sku holds `|` and `%7C` (a composite key's separator in its text, and the
    // separator escaped): its key is the variants' watermark (no clock skew here) until the next
    // change of a variant, which must still be read after it.
    want.doc(15)["variants"] = json!([v("CB15|OAK%7C", Some(9.99))]);
    change(&env, "INSERT INTO shop.variant (product_id, sku, price, in_stock) VALUES (15, 'CB15|OAK%7C', 9.99, true)", &want, &[15]).await;
    want.doc(7)["variants"] = json!([v("T7-2P", Some(120.0))]);
    change(&env, "DELETE FROM shop.variant WHERE product_id = 7 AND sku = 'T7-4P'", &want, &[7]).await;
    // A variant moved to another product (a change of its key): the product it leaves is known
    // only to the delete capture and to the stream.
    want.doc(10)["variants"] = json!([v("B10-S", Some(60.0))]);
    want.doc(9)["variants"] = json!([v("B10-L", Some(70.0)), v("F9-24", Some(30.0)), v("F9-28", Some(34.0))]);
    change(&env, "UPDATE shop.variant SET product_id = 9, updated_at = now() WHERE product_id = 10 AND sku = 'B10-L'", &want, &[9, 10]).await;

    // A category deleted: ON DELETE CASCADE takes its links, and its products lose it.
    want.doc(6)["categories"] = json!(["Lighting"]);
    want.doc(20)["categories"] = json!(["Kitchen"]);
    change(&env, "DELETE FROM shop.category WHERE id = 10", &want, &[6, 20]).await;

    // Soft deletes: flagged, the document leaves; restored (with its brand's new name), it comes back.
    want.set(2, None);
    change(&env, "UPDATE shop.product SET is_deleted = true, updated_at = now() WHERE id = 2", &want, &[2]).await;
    let mut kettle = seeded(4);
    kettle["brand"] = json!("Acme Tools");
    want.set(4, Some(kettle));
    change(&env, "UPDATE shop.product SET is_deleted = false, updated_at = now() WHERE id = 4", &want, &[4]).await;

    // A hard delete: its links and variants go with it (ON DELETE CASCADE), and its document.
    want.set(3, None);
    change(&env, "DELETE FROM shop.product WHERE id = 3", &want, &[3]).await;

    // Arrays: NULL to two tags, two tags to none.
    want.doc(12)["tags"] = json!(["rake", "garden"]);
    change(&env, "UPDATE shop.product SET tags = '{rake,garden}', updated_at = now() WHERE id = 12", &want, &[12]).await;
    want.doc(1)["tags"] = json!([]);
    change(&env, "UPDATE shop.product SET tags = '{}', updated_at = now() WHERE id = 1", &want, &[1]).await;

    // A product given a brand, and a new product: its id from the identity, 21.
    want.doc(5)["brand"] = json!("Idle");
    from_where(&mut want, &[5], Some("Germany"), Some("Europe"));
    change(&env, "UPDATE shop.product SET brand_code = 'IDLE', updated_at = now() WHERE id = 5", &want, &[5]).await;
    want.set(21, Some(product(21, "Trowel", json!(["garden"]), Some("Nordlicht"), &[], vec![])));
    change(&env, "INSERT INTO shop.product (name, tags, brand_code) VALUES ('Trowel', '{garden}', 'NORD')", &want, &[21]).await;

    // Three levels down, brand -> country -> region, a change at each level re-indexes every
    // product it reaches. Level 2: a country renamed (Luma's).
    let (luma, nord) = ([6, 11, 14, 18], [8, 12, 17, 21]);
    from_where(&mut want, &luma, Some("Sverige"), Some("Europe"));
    change(&env, "UPDATE shop.country SET name = 'Sverige', updated_at = now() WHERE code = 'SE'", &want, &luma).await;
    // Level 3: a region renamed, for Luma's, Nordlicht's and Idle's products.
    from_where(&mut want, &luma, Some("Sverige"), Some("Europa"));
    from_where(&mut want, &nord, Some("Germany"), Some("Europa"));
    from_where(&mut want, &[5], Some("Germany"), Some("Europa"));
    change(&env, "UPDATE shop.region SET name = 'Europa', updated_at = now() WHERE id = 1", &want, &[5, 6, 8, 11, 12, 14, 17, 18, 21]).await;
    // Level 2's reference to level 3 moved: Germany to the Americas.
    from_where(&mut want, &nord, Some("Germany"), Some("Americas"));
    from_where(&mut want, &[5], Some("Germany"), Some("Americas"));
    change(&env, "UPDATE shop.country SET region_id = 2, updated_at = now() WHERE code = 'DE'", &want, &[5, 8, 12, 17, 21]).await;
    // Level 1's reference to level 2: Zephyr gets a country.
    let zeph = [7, 10, 16, 19];
    from_where(&mut want, &zeph, Some("France"), Some("Europa"));
    change(&env, "UPDATE shop.brand SET country_code = 'FR', updated_at = now() WHERE code = 'zeph'", &want, &zeph).await;
    // A level-2 row deleted: its brands' country_code is set NULL by the foreign key (a write
    // that leaves brand.updated_at alone), and their products lose country and region.
    let acme = [1, 4, 9, 13, 15, 20];
    from_where(&mut want, &acme, None, None);
    change(&env, "DELETE FROM shop.country WHERE code = 'US'", &want, &acme).await;

    // Nothing else moved.
    want.assert_stored(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn keys_renames_and_deletes_at_every_level_by_polling_with_the_delete_capture() {
    keys_renames_and_deletes(Source::Polling).await;
}

#[tokio::test]
async fn keys_renames_and_deletes_at_every_level_by_replication() {
    keys_renames_and_deletes(Source::Replication).await;
}

/// The variants document (`catalog/shop/variants.toml`): a root keyed by `(product_id, sku)`.
async fn variants(name: &str, source: Source) -> TestEnv {
    shop_document(&format!("variants_{name}"), source, "variants.toml", "variants").await
}

/// The stored document whose `_id` is `id`, by a realtime get (the id written into the URL's
/// path: its `%` and `|` escaped), or `None`.
async fn stored_id(env: &TestEnv, id: &str) -> Option<Value> {
    let path = id.replace('%', "%25").replace('|', "%7C");
    let v: Value = env.http.get(format!("{}/{}/_doc/{path}", env.es, env.index)).send().await.unwrap().json().await.unwrap();
    (v["found"] == Value::Bool(true)).then(|| v["_source"].clone())
}

/// Verify agrees with Postgres, and every variant has a document.
async fn variants_consistent(env: &TestEnv) {
    let report = env.verify().await;
    assert!(report.is_consistent(), "the index differs from Postgres:\n{}", report.render());
    let variants = env.scalar_i64("SELECT count(*) FROM shop.variant").await as u64;
    assert_eq!((report.checked, env.count().await), (variants, variants));
}

/// Runs `sql`, then passes until each of `want` is stored as given (`None`: no document; a JSON
/// object: the document has those fields so), at most 30 s; then verify agrees.
async fn variant_change(env: &TestEnv, sql: &str, want: &[(&str, Option<Value>)]) {
    let ids: Vec<String> = want.iter().map(|(id, _)| id.to_string()).collect();
    passes_until(env, sql, &ids, |i, doc| match (doc, &want[i].1) {
        (None, None) => true,
        (Some(d), Some(Value::Object(fields))) => fields.iter().all(|(k, v)| d.get(k) == Some(v)),
        _ => false,
    })
    .await;
    variants_consistent(env).await;
}

/// A root whose key is composite: each variant's `_id` is `<product_id>|<sku>`, read back by
/// reconciliation and verify; changes at the root and at each of three levels above it, a key
/// that moves, parts with `|` and `%`, and deletes (a cascade from the product among them).
async fn composite_root_keys(source: Source) {
    let env = variants("changes", source).await;
    env.pass().await;
    variants_consistent(&env).await;
    let lantern =
        json!({ "id": "2|L2-BLUE", "sku": "L2-BLUE", "price": 19.5, "in_stock": true, "product": "Camp Lantern", "brand": "Luma", "country": "Sweden" });
    assert_eq!(stored_id(&env, "2|L2-BLUE").await, Some(lantern));
    // A variant with no brand above it: the three levels are null.
    let hammer = json!({ "id": "5|HM5", "sku": "HM5", "price": 12.0, "in_stock": true, "product": "Hammer", "brand": null, "country": null });
    assert_eq!(stored_id(&env, "5|HM5").await, Some(hammer));

    // A part with the separator and the escape in it: written %7C and %25 in the _id.
    let odd = "1|A%7CB%25C";
    variant_change(
        &env,
        "INSERT INTO shop.variant (product_id, sku, price, in_stock) VALUES (1, 'A|B%C', 1.50, true)",
        &[(odd, Some(json!({ "id": odd, "sku": "A|B%C", "product": "Chef Knife" })))],
    )
    .await;
    // The root's own row.
    variant_change(&env, "UPDATE shop.variant SET price = 21.00, updated_at = now() WHERE sku = 'L2-BLUE'", &[("2|L2-BLUE", Some(json!({ "price": 21.0 })))])
        .await;
    // Level 1: a product renamed, found by variant.product_id.
    variant_change(
        &env,
        "UPDATE shop.product SET name = 'Storm Lantern', updated_at = now() WHERE id = 2",
        &[("2|L2-BLUE", Some(json!({ "product": "Storm Lantern" }))), ("2|L2-RED", Some(json!({ "product": "Storm Lantern" })))],
    )
    .await;
    // Level 2: a brand renamed, through its products.
    variant_change(
        &env,
        "UPDATE shop.brand SET name = 'Luma Light', updated_at = now() WHERE code = 'LUMA'",
        &[("6|D6-W", Some(json!({ "brand": "Luma Light" })))],
    )
    .await;
    // Level 3: a country renamed, through its brands and their products.
    variant_change(
        &env,
        "UPDATE shop.country SET name = 'Sverige', updated_at = now() WHERE code = 'SE'",
        &[("11|HL11", Some(json!({ "country": "Sverige" })))],
    )
    .await;
    // The key moves: the variant moved to another product is another document.
    variant_change(
        &env,
        "UPDATE shop.variant SET product_id = 6, updated_at = now() WHERE product_id = 2 AND sku = 'L2-RED'",
        &[("2|L2-RED", None), ("6|L2-RED", Some(json!({ "product": "Desk Lamp" })))],
    )
    .await;
    // Deletes: the odd one, then a product whose variants go with it (ON DELETE CASCADE).
    variant_change(&env, "DELETE FROM shop.variant WHERE sku = 'A|B%C'", &[(odd, None)]).await;
    variant_change(&env, "DELETE FROM shop.product WHERE id = 3", &[("3|H3-15M", None), ("3|H3-30M", None)]).await;
    // A level-3 row deleted: its brands' country is set NULL, a write that leaves
    // brand.updated_at alone.
    variant_change(&env, "DELETE FROM shop.country WHERE code = 'DE'", &[("8|S8", Some(json!({ "brand": "Nordlicht", "country": null })))]).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_composite_root_key_by_polling_with_the_delete_capture() {
    composite_root_keys(Source::Polling).await;
}

#[tokio::test]
async fn a_composite_root_key_by_replication() {
    composite_root_keys(Source::Replication).await;
}

/// A definition changed under a kept state file: every record is loaded again, so the index is
/// what the new definition makes, and documents it no longer makes are removed.
async fn a_changed_definition_reloads(source: Source) {
    let mut env = shop("redefined", source).await;
    env.pass().await;
    assert_consistent(&env).await;
    assert_eq!(stored(&env, 4).await, None, "product 4 is soft-deleted");
    // The same definition without the soft-delete filter, and listing the variants out of stock.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shop_dir().join("shop.toml")).unwrap();
    let edited = text.replace("where = { is_deleted = false }\n", "").replace("where = { in_stock = true }", "where = { in_stock = false }");
    assert!(edited.len() < text.len(), "the filter is in shop.toml");
    std::fs::write(dir.path().join("shop.toml"), edited).unwrap();
    std::fs::copy(shop_dir().join("products.es.json"), dir.path().join("products.es.json")).unwrap();
    let original = env.extra_env.iter().position(|(k, _)| k == "PG2ES_DEFINITION").unwrap();
    let before = std::mem::replace(&mut env.extra_env[original].1, dir.path().join("shop.toml").display().to_string());
    env.pass().await;
    let report = env.verify().await;
    assert!(report.is_consistent(), "after the definition changed:\n{}", report.render());
    assert_eq!(report.checked, env.scalar_i64("SELECT count(*) FROM shop.product").await as u64);
    assert_eq!(stored(&env, 4).await.map(|d| d["name"].clone()), Some(json!("Old Kettle")));
    assert_eq!(stored(&env, 8).await.map(|d| d["variants"].clone()), Some(json!([{ "sku": "S8", "price": 15.25 }])));
    // And back: product 4's document goes again, by the reconciliation after the reload.
    env.extra_env[original].1 = before;
    env.pass().await;
    assert_consistent(&env).await;
    assert_eq!(stored(&env, 4).await, None);
    env.cleanup().await;
}

#[tokio::test]
async fn a_changed_definition_reloads_every_record_by_polling() {
    a_changed_definition_reloads(Source::Polling).await;
}

#[tokio::test]
async fn a_changed_definition_reloads_every_record_by_replication() {
    a_changed_definition_reloads(Source::Replication).await;
}

#[tokio::test]
async fn check_accepts_the_definition_prints_the_document_and_refuses_keys_it_cannot_read() {
    let env = TestEnv::catalog("shop_check", &shop_dir(), "shop.toml", "shop", "products").await;
    let o = common::pg2es_command(&env.env_vars(), &["check"]).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one line per document: {out}");
    // ES_INDEX (the test's index) names the first document's index; the definition has 8 fields
    // and reads 7 tables.
    let line = lines[0];
    assert!(line.starts_with(&format!("products: ok: index {} (", env.index)), "{line}");
    assert!(line.ends_with("8 fields, tables brand, category, country, product, product_category, region, variant"), "{line}");

    // Keys it cannot read, each named at the line of its table: a one-to-many table keyed by more
    // than its root column and one more, and a key of a type a key cannot have.
    let text = std::fs::read_to_string(shop_dir().join("shop.toml")).unwrap();
    let line_of = |s: &str| 1 + text[..text.find(s).unwrap_or_else(|| panic!("{s} not in shop.toml"))].matches('\n').count();
    env.sql("ALTER TABLE shop.variant DROP CONSTRAINT variant_pkey, ADD COLUMN color text NOT NULL DEFAULT 'none', ADD PRIMARY KEY (product_id, sku, color)")
        .await;
    let err = refused(&env);
    assert!(
        err.contains(&format!("shop.toml:{}: relation variants: shop.variant has the composite key (product_id, sku, color)", line_of("table = \"variant\""))),
        "{err}"
    );
    assert!(err.contains("ALTER TABLE shop.variant ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY UNIQUE"), "{err}");
    env.sql("ALTER TABLE shop.variant DROP CONSTRAINT variant_pkey, ADD PRIMARY KEY (product_id, sku)").await;
    env.sql("ALTER TABLE shop.category ALTER COLUMN id TYPE numeric(6, 0)").await;
    let err = refused(&env);
    assert!(err.contains(&format!("shop.toml:{}: category.id is numeric", line_of("table = \"category\""))), "{err}");
    env.cleanup().await;
}

/// `pg2es check` exits 2, with its errors (stderr).
fn refused(env: &TestEnv) -> String {
    let o = common::pg2es_command(&env.env_vars(), &["check"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    err
}

/// Renames brands, categories, countries and regions, moves brands and countries, flips soft deletes and stock, reprices, adds and deletes links,
/// variants and products, deletes and restores categories and retags products, until told to stop
/// (at most 2,000 changes). Statements that find no row (a product deleted meanwhile) change nothing.
#[cfg(feature = "fault-tests")]
async fn write(dsn: String, seed: u64, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let db = common::connect(&dsn).await;
    let mut rng = common::Rng::new(seed);
    let mut done = 0;
    let brands = ["ACME", "LUMA", "NORD", "zeph", "IDLE"];
    let categories = [1, 2, 3, 4, 5, 10];
    while !*stop.borrow() && done < 2_000 {
        let n = rng.below(1000);
        let p = 1 + n % 24;
        let brand = brands[(n % 5) as usize];
        let category = categories[(n % 6) as usize];
        let variant = format!("(SELECT product_id, sku FROM shop.variant ORDER BY product_id, sku LIMIT 1 OFFSET {})", n % 30);
        let sql = match rng.below(15) {
            0 => format!("UPDATE shop.product SET is_deleted = NOT is_deleted, updated_at = now() WHERE id = {p}"),
            1 => format!("UPDATE shop.brand SET name = 'Brand {n}', updated_at = now() WHERE code = '{brand}'"),
            2 => format!("UPDATE shop.category SET name = 'Category {n}', updated_at = now() WHERE id = {category}"),
            3 => format!(
                "INSERT INTO shop.product_category (product_id, category_id) SELECT p.id, c.id FROM shop.product p, shop.category c \
                 WHERE p.id = {p} AND c.id = {category} ON CONFLICT DO NOTHING"
            ),
            4 => format!("DELETE FROM shop.product_category WHERE product_id = {p} AND category_id = {category}"),
            5 => format!("UPDATE shop.variant SET in_stock = NOT in_stock, updated_at = now() WHERE (product_id, sku) = {variant}"),
            6 => format!("UPDATE shop.variant SET price = {}.{:02}, updated_at = now() WHERE (product_id, sku) = {variant}", n % 200, n % 100),
            7 => format!(
                "INSERT INTO shop.variant (product_id, sku, price, in_stock) SELECT id, 'W|{n}%', {}.50, {} FROM shop.product WHERE id = {p} \
                 ON CONFLICT DO NOTHING",
                n % 90,
                n.is_multiple_of(3)
            ),
            8 => format!("DELETE FROM shop.variant WHERE (product_id, sku) = {variant}"),
            9 => format!("UPDATE shop.product SET tags = ARRAY['t{n}', 'sale'], updated_at = now() WHERE id = {p}"),
            10 => format!("INSERT INTO shop.product (name, tags, brand_code) VALUES ('New {n}', '{{new}}', '{brand}')"),
            11 => format!("DELETE FROM shop.product WHERE id = {p}"),
            12 => format!("DELETE FROM shop.category WHERE id = {category}"),
            // Two and three levels down: a country renamed or moved, a region renamed, a brand's
            // country changed.
            13 => match n % 4 {
                0 => format!(
                    "UPDATE shop.country SET name = 'Country {n}', updated_at = now() WHERE code = '{}'",
                    ["DE", "SE", "US", "FR"][(n / 4 % 4) as usize]
                ),
                1 => format!("UPDATE shop.region SET name = 'Region {n}', updated_at = now() WHERE id = {}", 1 + n / 4 % 2),
                2 => format!("UPDATE shop.country SET region_id = {}, updated_at = now() WHERE code = 'DE'", 1 + n / 4 % 2),
                _ => format!(
                    "UPDATE shop.brand SET country_code = '{}', updated_at = now() WHERE code = '{brand}'",
                    ["DE", "SE", "US", "FR"][(n / 4 % 4) as usize]
                ),
            },
            _ => format!(
                "INSERT INTO shop.category (id, name) VALUES ({category}, 'Again {n}') \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = now()"
            ),
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

/// `pg2es run` killed 3 times at random moments (within 30 s) while the writer changes every
/// table, each time started again; then one pass, and the index is what Postgres says.
#[cfg(feature = "fault-tests")]
async fn kills(source: Source) {
    let env = killed(shop("kills", source).await).await;
    assert_consistent(&env).await;
    env.cleanup().await;
}

/// As the products' kill test, for the variants (a composite root key, whose pages of two end
/// inside a product's variants): polling, where the full load and every stream page on it.
#[cfg(feature = "fault-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_root_key_survives_sigkill_under_a_writer_by_polling() {
    let env = killed(variants("kills", Source::Polling).await).await;
    variants_consistent(&env).await;
    env.cleanup().await;
}

#[cfg(feature = "fault-tests")]
async fn killed(mut env: TestEnv) -> TestEnv {
    // Pages of two: the seed's rows share one timestamp, so pages end between equal timestamps,
    // inside composite keys.
    env.extra_env.push(("ETL_BATCH_SIZE".into(), "2".into()));
    env.extra_env.push(("ETL_CLOCK_SKEW_MS".into(), "1000".into()));
    common::kills_under_a_writer(&env, "shop kill test", Duration::from_secs(30), write).await;
    env
}
