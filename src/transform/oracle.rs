//! The movies transform as it was before definitions (hand-written for the cinema), kept only
//! as a test oracle: the movies definition must make the same documents, byte for byte.
//!
//! Rows -> documents. Pure functions, no I/O.
//!
//! One [`FilmWork`] (a film with its genres and people, as the source reads it) becomes one
//! [`MovieDocument`] (the shape of the `movies` index). The rules (also in the README, "The
//! document"):
//!
//! - **Unknown text.** A title, description, genre name or person name that is missing, empty,
//!   whitespace only or `N/A` (any case, any padding) is unknown: `title` and `description` are
//!   `null`, and the genre or person is left out of its list. Unknown never reaches the index as
//!   text.
//! - **Known text is kept exactly as stored**, padding included: the transform never trims or
//!   rewrites what it keeps.
//! - **Roles** are matched after trimming and ignoring ASCII case: `Director`, ` director ` and
//!   `DIRECTOR` all count as director. A person with any other role (`producer`), or none, is left
//!   out of the document and reported in [`TransformNotes`] (counted, and the distinct roles
//!   named, so the caller logs one line per film).
//! - **Lists** are never null, duplicates from joins collapse (by id), and people are ordered by
//!   name then id, genres by name, so a document does not depend on row order.
//! - **Ratings** the index's `float` field cannot hold (NaN, infinite, beyond `f32`) are unknown.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A film as read from Postgres, with its links already joined.
#[derive(Debug, Clone, PartialEq)]
pub struct FilmWork {
    pub id: Uuid,
    pub title: Option<String>,
    pub description: Option<String>,
    pub rating: Option<f64>,
    pub genres: Vec<String>,
    pub persons: Vec<PersonLink>,
}

/// One row of `person_film_work` joined with `person`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PersonLink {
    pub id: Uuid,
    pub name: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: Uuid,
    pub name: String,
}

/// The document stored in the index, `_id` = `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovieDocument {
    pub id: Uuid,
    pub imdb_rating: Option<f64>,
    pub genre: Vec<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub director: Vec<String>,
    pub actors_names: Vec<String>,
    pub writers_names: Vec<String>,
    pub actors: Vec<Person>,
    pub writers: Vec<Person>,
}

/// Roles the document knows. Anything else is left out of the document and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Actor,
    Director,
    Writer,
}

fn role(raw: Option<&str>) -> Option<Role> {
    match raw.map(str::trim) {
        Some(r) if r.eq_ignore_ascii_case("actor") => Some(Role::Actor),
        Some(r) if r.eq_ignore_ascii_case("director") => Some(Role::Director),
        Some(r) if r.eq_ignore_ascii_case("writer") => Some(Role::Writer),
        _ => None,
    }
}

/// What the transform left out of a document, for the cycle's counters and a log line per film.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransformNotes {
    /// People left out because their role is not actor, director or writer (or is missing).
    pub unknown_roles: usize,
    /// The distinct roles behind `unknown_roles`, trimmed and lowercased, sorted; a missing or
    /// blank role is [`NO_ROLE`]. Empty when every role was known.
    pub unknown_role_names: Vec<String>,
    /// People with a known role left out because their name is unknown (blank, `N/A`).
    pub nameless_people: usize,
    /// Ratings the index cannot store (NaN, infinite, beyond the `float` range): left unknown.
    pub bad_ratings: usize,
}

/// How [`TransformNotes::unknown_role_names`] shows a missing or blank role.
pub const NO_ROLE: &str = "(none)";

impl TransformNotes {
    fn unknown_role(&mut self, raw: Option<&str>) {
        self.unknown_roles += 1;
        let name = raw.map(str::trim).filter(|r| !r.is_empty()).map_or_else(|| NO_ROLE.to_string(), str::to_lowercase);
        if let Err(at) = self.unknown_role_names.binary_search(&name) {
            self.unknown_role_names.insert(at, name);
        }
    }
}

/// `imdb_rating` is a `float` field: NaN, infinities and values beyond f32 are refused by
/// Elasticsearch (and NaN cannot be JSON). Such a rating is unknown; the film still loads.
fn known_rating(r: Option<f64>, notes: &mut TransformNotes) -> Option<f64> {
    let r = r?;
    if r.is_finite() && r.abs() <= f64::from(f32::MAX) {
        Some(r)
    } else {
        notes.bad_ratings += 1;
        None
    }
}

/// `None` for missing, empty, whitespace-only and `N/A` values; the text otherwise, exactly as
/// stored (moved, not copied).
fn known(value: Option<String>) -> Option<String> {
    let v = value?;
    let t = v.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("n/a") {
        None
    } else {
        Some(v)
    }
}

pub fn to_document(film: &FilmWork) -> (MovieDocument, TransformNotes) {
    into_document(film.clone())
}

/// Like [`to_document`], moving the film's text into the document instead of copying it.
pub fn into_document(film: FilmWork) -> (MovieDocument, TransformNotes) {
    let mut notes = TransformNotes::default();
    let mut genre: Vec<String> = film.genres.into_iter().filter_map(|g| known(Some(g))).collect();
    genre.sort();
    genre.dedup();

    let mut actors = Vec::new();
    let mut writers = Vec::new();
    let mut directors = Vec::new();
    for link in film.persons {
        // The role first: a link with an unknown role is reported as such whatever its name.
        let Some(role) = role(link.role.as_deref()) else {
            notes.unknown_role(link.role.as_deref());
            continue;
        };
        let Some(name) = known(link.name) else {
            notes.nameless_people += 1;
            continue;
        };
        let person = Person { id: link.id, name };
        match role {
            Role::Actor => actors.push(person),
            Role::Writer => writers.push(person),
            Role::Director => directors.push(person),
        }
    }
    for people in [&mut actors, &mut writers, &mut directors] {
        // Joins can repeat a person; order by name so a document is the same however rows came.
        people.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        people.dedup_by(|a, b| a.id == b.id);
    }
    let names = |people: &[Person]| -> Vec<String> { people.iter().map(|p| p.name.clone()).collect() };

    let doc = MovieDocument {
        id: film.id,
        imdb_rating: known_rating(film.rating, &mut notes),
        genre,
        title: known(film.title),
        description: known(film.description),
        director: names(&directors),
        actors_names: names(&actors),
        writers_names: names(&writers),
        actors,
        writers,
    };
    (doc, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn link(n: u128, name: &str, role: &str) -> PersonLink {
        PersonLink { id: uuid(n), name: Some(name.into()), role: Some(role.into()) }
    }

    fn film() -> FilmWork {
        FilmWork {
            id: uuid(1),
            title: Some("Star Wars".into()),
            description: Some("A long time ago".into()),
            rating: Some(8.6),
            genres: vec!["Sci-Fi".into(), "Action".into()],
            persons: vec![
                link(10, "Mark Hamill", "actor"),
                link(11, "Carrie Fisher", "actor"),
                link(12, "George Lucas", "director"),
                link(12, "George Lucas", "writer"),
            ],
        }
    }

    #[test]
    fn a_full_film_becomes_a_document() {
        let (doc, notes) = to_document(&film());
        assert_eq!(notes, TransformNotes::default());
        assert_eq!(doc.id, uuid(1));
        assert_eq!(doc.imdb_rating, Some(8.6));
        assert_eq!(doc.genre, vec!["Action", "Sci-Fi"]);
        assert_eq!(doc.director, vec!["George Lucas"]);
        assert_eq!(doc.actors_names, vec!["Carrie Fisher", "Mark Hamill"]);
        assert_eq!(doc.writers_names, vec!["George Lucas"]);
        assert_eq!(doc.actors[0], Person { id: uuid(11), name: "Carrie Fisher".into() });
        assert_eq!(doc.writers, vec![Person { id: uuid(12), name: "George Lucas".into() }]);
    }

    #[test]
    fn empty_roles_are_empty_lists_not_null() {
        let f = FilmWork { persons: vec![], genres: vec![], ..film() };
        let (doc, _) = to_document(&f);
        let json = serde_json::to_value(&doc).unwrap();
        for field in ["director", "actors_names", "writers_names", "actors", "writers", "genre"] {
            assert_eq!(json[field], serde_json::json!([]), "{field}");
        }
    }

    #[test]
    fn not_available_never_reaches_the_document() {
        let f = FilmWork {
            title: Some("N/A".into()),
            description: Some(" n/a ".into()),
            rating: None,
            genres: vec!["N/A".into(), "Drama".into()],
            persons: vec![link(10, "N/A", "actor"), link(11, "Ann", "director"), link(12, "N/A", "writer")],
            ..film()
        };
        let (doc, _) = to_document(&f);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.to_lowercase().contains("n/a"), "{text}");
        assert_eq!(doc.title, None);
        assert_eq!(doc.description, None);
        assert_eq!(doc.genre, vec!["Drama"]);
        assert_eq!(doc.director, vec!["Ann"]);
        assert!(doc.actors.is_empty() && doc.writers.is_empty());
        assert_eq!(serde_json::to_value(&doc).unwrap()["imdb_rating"], serde_json::Value::Null);
    }

    #[test]
    fn duplicates_from_joins_collapse() {
        let mut f = film();
        f.persons.extend(f.persons.clone());
        f.genres.extend(f.genres.clone());
        let (doc, _) = to_document(&f);
        assert_eq!(doc, to_document(&film()).0);
    }

    #[test]
    fn row_order_does_not_change_the_document() {
        let mut f = film();
        f.persons.reverse();
        f.genres.reverse();
        assert_eq!(to_document(&f).0, to_document(&film()).0);
    }

    #[test]
    fn unknown_roles_and_missing_names_are_left_out_and_counted() {
        let f = FilmWork {
            persons: vec![
                link(10, "Kim", "producer"),
                PersonLink { id: uuid(11), name: Some("Lee".into()), role: None },
                PersonLink { id: uuid(12), name: None, role: Some("actor".into()) },
                link(13, "Pat", " Actor "),
            ],
            ..film()
        };
        let (doc, notes) = to_document(&f);
        assert_eq!(notes.unknown_roles, 2);
        assert_eq!(notes.unknown_role_names, [NO_ROLE, "producer"]);
        assert_eq!(notes.nameless_people, 1);
        assert_eq!(doc.actors_names, vec!["Pat"]);
        assert!(doc.director.is_empty() && doc.writers.is_empty());
    }

    #[test]
    fn blank_text_is_unknown_in_every_field() {
        let f = FilmWork {
            title: Some("   ".into()),
            description: Some("\t\n ".into()),
            genres: vec![String::new(), "  ".into(), "Drama".into()],
            persons: vec![link(10, "   ", "writer"), link(11, "", "actor"), link(12, " \u{a0}", "director"), link(13, "Ann", "writer")],
            ..film()
        };
        let (doc, notes) = to_document(&f);
        assert_eq!((doc.title, doc.description), (None, None));
        assert_eq!(doc.genre, vec!["Drama"]);
        assert_eq!(doc.writers, vec![Person { id: uuid(13), name: "Ann".into() }]);
        assert!(doc.actors.is_empty() && doc.director.is_empty());
        assert_eq!(notes, TransformNotes { nameless_people: 3, ..TransformNotes::default() });
    }

    #[test]
    fn roles_match_ignoring_case_and_padding() {
        let f = FilmWork {
            persons: vec![
                link(10, "Ann", "Director"),
                link(11, "Bob", " director "),
                link(12, "Cid", "DIRECTOR"),
                link(13, "Dee", "\twriter\n"),
                link(14, "Eve", "Actor"),
            ],
            ..film()
        };
        let (doc, notes) = to_document(&f);
        assert_eq!(notes, TransformNotes::default());
        assert_eq!(doc.director, vec!["Ann", "Bob", "Cid"]);
        assert_eq!((doc.writers_names, doc.actors_names), (vec!["Dee".to_string()], vec!["Eve".to_string()]));
    }

    #[test]
    fn unknown_roles_are_named_once_per_film() {
        let f = FilmWork {
            persons: vec![
                link(10, "Kim", "producer"),
                link(11, "Kim", " Producer "),
                link(12, "Lou", "PRODUCER"),
                link(13, "Max", "composer"),
                link(14, "Ned", "  "),
                PersonLink { id: uuid(15), name: Some("Oli".into()), role: None },
                link(16, "N/A", "producer"),
                link(17, "Ann", "director"),
            ],
            ..film()
        };
        let (doc, notes) = to_document(&f);
        assert_eq!(notes.unknown_roles, 7);
        assert_eq!(notes.unknown_role_names, [NO_ROLE, "composer", "producer"]);
        assert_eq!(notes.nameless_people, 0);
        assert_eq!(doc.director, vec!["Ann"]);
        assert!(doc.actors.is_empty() && doc.writers.is_empty());
        let text = serde_json::to_string(&doc).unwrap();
        for name in ["Kim", "Lou", "Max", "Ned", "Oli"] {
            assert!(!text.contains(name), "{name} in {text}");
        }
    }

    #[test]
    fn odd_ratings_and_text_survive_encoding() {
        for rating in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e39] {
            let (doc, notes) = to_document(&FilmWork { rating: Some(rating), ..film() });
            assert_eq!((doc.imdb_rating, notes.bad_ratings), (None, 1), "{rating}");
        }
        for rating in [-3.0, 0.0, 15.5, 3.0e38] {
            let (doc, notes) = to_document(&FilmWork { rating: Some(rating), ..film() });
            assert_eq!((doc.imdb_rating, notes.bad_ratings), (Some(rating), 0), "{rating}");
        }
        let odd = "Ёжик в тумане \u{0000} \u{202e} 🎬 \"quoted\" \\ back";
        let (doc, _) = to_document(&FilmWork { title: Some(odd.into()), ..film() });
        let back: MovieDocument = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(back.title.as_deref(), Some(odd));
    }

    #[test]
    fn text_is_kept_exactly_as_stored() {
        let f = FilmWork {
            title: Some(" Padded title ".into()),
            description: Some("ends with a space ".into()),
            persons: vec![link(10, " Mark Hamill", "actor")],
            ..film()
        };
        let (doc, _) = to_document(&f);
        assert_eq!(doc.title.as_deref(), Some(" Padded title "));
        assert_eq!(doc.description.as_deref(), Some("ends with a space "));
        assert_eq!(doc.actors_names, vec![" Mark Hamill".to_string()]);
    }

    #[test]
    fn same_name_different_people_are_both_kept() {
        let f = FilmWork { persons: vec![link(10, "Sam", "actor"), link(11, "Sam", "actor")], ..film() };
        let (doc, _) = to_document(&f);
        assert_eq!(doc.actors.len(), 2);
        assert_eq!(doc.actors_names, vec!["Sam", "Sam"]);
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
            (0u128..8, text(), prop_oneof![Just(Some("actor".to_string())), Just(Some("writer".to_string())), Just(Some("director".to_string())), text()])
                .prop_map(|(id, name, role)| PersonLink { id: Uuid::from_u128(id), name, role })
        }

        fn film() -> impl Strategy<Value = FilmWork> {
            (text(), text(), any::<Option<f64>>(), proptest::collection::vec(any::<String>(), 0..6), proptest::collection::vec(person(), 0..12))
                .prop_map(|(title, description, rating, genres, persons)| FilmWork { id: Uuid::from_u128(1), title, description, rating, genres, persons })
        }

        proptest! {
            /// Whatever the rows hold: the document encodes, lists are lists, N/A never appears
            /// as a value, names match people, and row order or repetition does not matter.
            #[test]
            fn any_film_becomes_a_valid_document(f in film()) {
                let (doc, notes) = to_document(&f);
                let json = serde_json::to_value(&doc).expect("document encodes");
                for field in ["genre", "director", "actors_names", "writers_names", "actors", "writers"] {
                    prop_assert!(json[field].is_array(), "{} is not a list", field);
                }
                let is_na = |s: &str| s.trim().eq_ignore_ascii_case("n/a");
                prop_assert!(doc.title.as_deref().is_none_or(|t| !is_na(t)));
                prop_assert!(doc.description.as_deref().is_none_or(|t| !is_na(t)));
                prop_assert!(doc.genre.iter().chain(&doc.director).chain(&doc.actors_names).chain(&doc.writers_names).all(|s| !is_na(s) && !s.trim().is_empty()));
                prop_assert_eq!(doc.actors_names.clone(), doc.actors.iter().map(|p| p.name.clone()).collect::<Vec<_>>());
                prop_assert_eq!(doc.writers_names.clone(), doc.writers.iter().map(|p| p.name.clone()).collect::<Vec<_>>());
                prop_assert!(doc.imdb_rating.is_none_or(|r| r.is_finite() && r.abs() <= f64::from(f32::MAX)));
                let placed = doc.actors.len() + doc.writers.len() + doc.director.len();
                prop_assert!(placed + notes.unknown_roles + notes.nameless_people <= f.persons.len());
                prop_assert_eq!(notes.unknown_roles == 0, notes.unknown_role_names.is_empty());
                prop_assert!(notes.unknown_role_names.windows(2).all(|w| w[0] < w[1]), "not sorted and distinct");

                let mut shuffled = f.clone();
                shuffled.persons.reverse();
                shuffled.genres.reverse();
                shuffled.persons.extend(f.persons.iter().cloned());
                shuffled.genres.extend(f.genres.iter().cloned());
                prop_assert_eq!(to_document(&shuffled).0, doc);
            }
        }
    }
}
