//! The generic transform on the cinema's documents: the movies document must be, byte for byte,
//! what the hand-written movies transform made (`oracle.rs`), for any film.

use super::oracle::{self, FilmWork, PersonLink};
use super::*;
use crate::catalog::testing::cinema;
use crate::catalog::{Cell, Document, Field, Record, Side, Value};
use uuid::Uuid;

fn movies() -> Document {
    cinema().remove(0)
}

fn text(v: &Option<String>) -> Value {
    v.clone().map_or(Value::Null, Value::Text)
}

/// A film as the movies document's record query would read it.
fn record(doc: &Document, f: &FilmWork) -> Record {
    let mut cells = Vec::new();
    for (name, _) in &doc.root_columns {
        cells.push(Cell::One(match name.as_str() {
            "id" => Value::Uuid(f.id),
            "title" => text(&f.title),
            "description" => text(&f.description),
            "rating" => f.rating.map_or(Value::Null, Value::Float),
            other => panic!("unexpected column {other}"),
        }));
    }
    for rel in &doc.relations {
        for c in &rel.columns {
            cells.push(Cell::Many(match (rel.table.as_str(), c.side, c.name.as_str()) {
                ("genre", Side::Related, "name") => f.genres.iter().map(|g| Value::Text(g.clone())).collect(),
                ("person", Side::Related, "id") => f.persons.iter().map(|p| Value::Uuid(p.id)).collect(),
                ("person", Side::Related, "full_name") => f.persons.iter().map(|p| text(&p.name)).collect(),
                ("person", Side::Link, "role") => f.persons.iter().map(|p| text(&p.role)).collect(),
                other => panic!("unexpected column {other:?}"),
            }));
        }
    }
    Record { key: crate::position::Key::text(f.id.to_string()), cells }
}

/// The generic document and the hand-written one, as JSON text.
fn both(f: &FilmWork) -> (String, String) {
    let doc = movies();
    let (body, _) = build(&doc, &record(&doc, f)).unwrap();
    let (old, _) = oracle::to_document(f);
    (String::from_utf8(body).unwrap(), serde_json::to_string(&old).unwrap())
}

fn link(n: u128, name: &str, role: &str) -> PersonLink {
    PersonLink { id: Uuid::from_u128(n), name: Some(name.into()), role: Some(role.into()) }
}

fn film() -> FilmWork {
    FilmWork {
        id: Uuid::from_u128(1),
        title: Some("Star Wars".into()),
        description: Some("A long time ago".into()),
        rating: Some(8.6),
        genres: vec!["Sci-Fi".into(), "Action".into(), "Action".into(), "N/A".into()],
        persons: vec![
            link(10, "Mark Hamill", "actor"),
            link(11, "Carrie Fisher", " Actor "),
            link(12, "George Lucas", "director"),
            link(12, "George Lucas", "writer"),
            link(13, "N/A", "writer"),
            link(14, "Kim", "producer"),
            PersonLink { id: Uuid::from_u128(15), name: Some("Lee".into()), role: None },
            link(16, "Sam", "actor"),
            link(17, "Sam", "actor"),
            link(10, "Mark Hamill", "actor"),
        ],
    }
}

#[test]
fn the_movies_document_is_the_hand_written_one() {
    let (new, old) = both(&film());
    assert_eq!(new, old);
    let empty = FilmWork { title: None, description: Some(" n/a ".into()), rating: Some(f64::NAN), genres: vec![], persons: vec![], ..film() };
    let (new, old) = both(&empty);
    assert_eq!(new, old);
    assert!(new.contains(r#""genre":[]"#) && new.contains(r#""title":null"#) && new.contains(r#""imdb_rating":null"#), "{new}");
}

#[test]
fn unmatched_rows_and_bad_numbers_are_reported() {
    let doc = movies();
    let f = FilmWork { rating: Some(1e300), ..film() };
    let (_, notes) = build(&doc, &record(&doc, &f)).unwrap();
    let (_, old) = oracle::to_document(&f);
    assert_eq!((notes.unmatched, notes.unmatched_values.clone()), (old.unknown_roles, vec![NO_VALUE.to_string(), "producer".to_string()]));
    assert_eq!(notes.bad_numbers, 1);
    // Columns of one relation that differ in length are an error, not a silent truncation.
    let mut r = record(&doc, &film());
    let last = r.cells.len() - 1;
    r.cells[last] = Cell::Many(vec![Value::Null]);
    assert!(build(&doc, &r).unwrap_err().0.contains("differ in number"));
}

/// The persons document: one object per film, the roles of every link row in it collected.
#[test]
fn objects_collect_a_link_column_per_related_row() {
    let doc = cinema().remove(2);
    assert_eq!(doc.name, "persons");
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut cells = Vec::new();
    for (name, _) in &doc.root_columns {
        cells.push(Cell::One(match name.as_str() {
            "id" => Value::Uuid(Uuid::from_u128(9)),
            "full_name" => Value::Text("Ann".into()),
            other => panic!("{other}"),
        }));
    }
    let rel = &doc.relations[0];
    for c in &rel.columns {
        cells.push(Cell::Many(match (c.side, c.name.as_str()) {
            (Side::Related, "id") => vec![Value::Uuid(b), Value::Uuid(a), Value::Uuid(a), Value::Uuid(b)],
            (Side::Related, "title") => vec![Value::Text("Beta".into()), Value::Text("Alpha".into()), Value::Text("Alpha".into()), Value::Text("Beta".into())],
            (Side::Link, "role") => {
                vec![Value::Text("writer".into()), Value::Text("director".into()), Value::Text("actor".into()), Value::Text("writer".into())]
            }
            other => panic!("{other:?}"),
        }));
    }
    let (body, _) = build(&doc, &Record { key: crate::position::Key::text(Uuid::from_u128(9).to_string()), cells }).unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!(
            r#"{{"id":"{}","full_name":"Ann","films":[{{"id":"{a}","title":"Alpha","roles":["actor","director"]}},{{"id":"{b}","title":"Beta","roles":["writer"]}}]}}"#,
            Uuid::from_u128(9)
        )
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("N/A".to_string())),
            Just(Some(String::new())),
            any::<String>().prop_map(Some),
            "[a-zA-Zа-яА-ЯёЁ ]{0,12}".prop_map(Some),
        ]
    }

    fn person() -> impl Strategy<Value = PersonLink> {
        (0u128..8, Just(None), prop_oneof![Just(Some("actor".to_string())), Just(Some(" Writer".to_string())), Just(Some("director".to_string())), text()])
            .prop_map(|(id, name, role)| PersonLink { id: Uuid::from_u128(id), name, role })
    }

    /// A person has one name (the link rows join `person` by its key), so the people of a film
    /// take their names from one list by id: the hand-written transform's adjacent-only
    /// de-duplication would otherwise keep a person twice under two names, which no join makes.
    fn film() -> impl Strategy<Value = FilmWork> {
        (
            text(),
            text(),
            any::<Option<f64>>(),
            proptest::collection::vec(any::<String>(), 0..6),
            proptest::collection::vec(person(), 0..12),
            proptest::collection::vec(text(), 8),
        )
            .prop_map(|(title, description, rating, genres, mut persons, names)| {
                for p in &mut persons {
                    p.name = names[p.id.as_u128() as usize].clone();
                }
                FilmWork { id: Uuid::from_u128(1), title, description, rating, genres, persons }
            })
    }

    proptest! {
        /// Whatever the rows hold, the movies definition makes the hand-written document.
        #[test]
        fn any_film_makes_the_hand_written_document(f in film()) {
            let (new, old) = both(&f);
            prop_assert_eq!(new, old);
        }
    }
}

#[test]
fn concat_joins_the_known_values_of_a_rows_columns() {
    let mut doc = movies();
    let col = |name: &str| doc.root_columns.iter().position(|(c, _)| c == name).unwrap();
    let (title, description) = (col("title"), col("description"));
    let people = doc.relations.iter().position(|r| r.table == "person").unwrap();
    let rel = &doc.relations[people];
    let at = |side: Side, name: &str| rel.columns.iter().position(|c| c.side == side && c.name == name).unwrap();
    let (key, name, role) = (at(Side::Related, "id"), at(Side::Related, "full_name"), at(Side::Link, "role"));
    doc.fields = vec![
        Field { name: "headline".into(), kind: FieldKind::Concat { columns: vec![title, description], separator: " - ".into() } },
        Field {
            name: "credits".into(),
            kind: FieldKind::Objects {
                relation: people,
                filter: vec![],
                order: vec![key],
                fields: vec![SubField {
                    name: "who".into(),
                    column: name,
                    concat: vec![name, role],
                    separator: ", ".into(),
                    required: true,
                    list: false,
                    f32: false,
                }],
            },
        },
    ];
    let mut f = film();
    f.title = Some("Dune".into());
    f.description = Some("  ".into());
    f.persons = vec![link(1, "Ann", "director"), link(2, "N/A", "writer"), link(3, "", "")];
    let (body, _) = build(&doc, &record(&doc, &f)).unwrap();
    // An unknown part is left out with its separator; nothing known is null (and a required
    // sub-field then drops its object).
    assert_eq!(String::from_utf8(body).unwrap(), r#"{"headline":"Dune","credits":[{"who":"Ann, director"},{"who":"writer"}]}"#);
    f.title = None;
    f.description = None;
    let (body, _) = build(&doc, &record(&doc, &f)).unwrap();
    assert!(String::from_utf8(body).unwrap().starts_with(r#"{"headline":null,"#));
}

/// The `id` field is the key as it is: a blank or `N/A` key is a key, not unknown text (`verify`
/// and `--repair` match documents to records by it).
#[test]
fn the_id_field_is_the_key_even_when_it_reads_as_unknown_text() {
    let doc = movies();
    for key in [" ", "N/A", "n/a "] {
        let mut rec = record(&doc, &film());
        // The movies document's id is its key column: the key as the record query read it.
        let at = doc.root_columns.iter().position(|(name, _)| name == "id").unwrap();
        rec.cells[at] = Cell::One(Value::Text(key.to_string()));
        let (body, _) = build(&doc, &rec).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["id"], key, "{json}");
    }
}
