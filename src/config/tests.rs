use super::*;

pub(super) fn config(env: &[(&str, &str)]) -> Result<Config> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_sources(&Sources::gather(None, env)?)
}

pub(super) fn err(env: &[(&str, &str)]) -> String {
    config(env).expect_err("config should be refused").to_string()
}

#[test]
fn defaults_are_valid() {
    let c = config(&[]).unwrap();
    assert_eq!((c.es_index.as_str(), c.es_index_explicit), ("", false));
    assert_eq!(c.batch_size, 500);
    assert_eq!(c.cycle, Duration::from_secs(10));
    assert_eq!(c.postgres.pg.get_dbname(), Some("movies"));
    assert_eq!(c.timestamp_column, TimestampColumn::Auto);
    assert_eq!(c.sink.urls.len(), 1);
    let cluster = config(&[("ES_URL", "http://es1:9200, https://es2:9243/prefix")]).unwrap();
    assert_eq!(cluster.sink.urls.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["http://es1:9200/", "https://es2:9243/prefix"]);
}

#[test]
fn each_bad_value_names_its_variable() {
    let cases: &[(&str, &str)] = &[
        ("ETL_BATCH_SIZE", "abc"),
        ("ETL_BATCH_SIZE", "0"),
        ("ETL_CYCLE_SEC", "-1"),
        ("ETL_CYCLE_SEC", "0"),
        ("ETL_CYCLE_SEC", "soon"),
        ("ES_URL", "localhost:9200"),
        ("ES_URL", "ftp://x"),
        ("ES_URL", "http://es1:9200,"),
        ("ES_URL", "http://es1:9200,es2:9200"),
        ("ES_INDEX", "Movies"),
        ("ES_INDEX", "_x"),
        ("ES_BULK_MAX_BYTES", "12"),
        ("ES_BULK_CONCURRENCY", "0"),
        ("PG_SCHEMA", "content; drop"),
        ("ETL_TIMESTAMP_COLUMN", "updated at"),
        ("ETL_BACKOFF_MAX_SEC", "0"),
        ("ETL_BACKOFF_INITIAL_MS", "x"),
        ("LOG_FORMAT", "xml"),
        ("DB_PORT", "99999"),
        ("PG_DSN", "postgres://user:pa ss@[bad"),
    ];
    for (var, value) in cases {
        let msg = err(&[(var, value)]);
        assert!(msg.contains(var), "{var}={value}: {msg}");
        assert!(msg.contains("expected"), "{var}={value}: {msg}");
    }
}

/// One range and one message, whatever is wrong with the value.
#[test]
fn cycle_has_one_range_with_a_floor() {
    for value in ["0", "-1", "1e-9", "0.09", "86401", "NaN", "inf", "soon"] {
        let msg = err(&[("ETL_CYCLE_SEC", value)]);
        assert_eq!(msg, format!("invalid configuration: ETL_CYCLE_SEC='{value}': expected a number of seconds from 0.1 to 86400"));
    }
    assert_eq!(config(&[("ETL_CYCLE_SEC", "0.1")]).unwrap().cycle, Duration::from_millis(100));
    assert_eq!(config(&[("ETL_CYCLE_SEC", "86400")]).unwrap().cycle, Duration::from_secs(86_400));
}

/// The built-in definition is the catalog's own: a changed fixture must be copied into
/// catalog/movies.es.json. Reads the shared fixtures, so it fails (not skips) without them.
#[test]
fn builtin_index_definition_is_the_shared_fixture() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/movies/es_schema.json");
    let shared = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}; the shared fixtures are needed"));
    let builtin = crate::catalog::definition::CINEMA_SCHEMAS.iter().find(|(file, _)| *file == "movies.es.json").map(|(_, text)| *text);
    assert!(builtin == Some(shared.as_str()), "catalog/movies.es.json differs from {path}: copy it again");
    assert_eq!(config(&[]).unwrap().es_schema_file, IndexDefinition::Builtin);
    assert_eq!(config(&[("ES_SCHEMA_FILE", "/etc/x.json")]).unwrap().es_schema_file, IndexDefinition::File("/etc/x.json".into()));
}

#[test]
fn secrets_never_print() {
    let c = config(&[("PG_DSN", "postgres://app:hunter2@db:5432/movies"), ("ES_USERNAME", "elastic"), ("ES_PASSWORD", "s3cr3t-es")]).unwrap();
    let rendered = c.render();
    let debug = format!("{c:?}");
    for text in [&rendered, &debug] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("s3cr3t-es"), "{text}");
    }
    assert!(rendered.contains("postgres host          db"));
    let bad = err(&[("PG_DSN", "postgres://app:hunter2@db:5432/movies?sslmode=bogus")]);
    assert!(!bad.contains("hunter2"), "{bad}");
    // Credentials written into ES_URL are masked too.
    let rendered = config(&[("ES_URL", "http://user:s3cr3t-url@127.0.0.1:9200,http://es2:9200")]).unwrap().render();
    assert!(!rendered.contains("s3cr3t-url") && rendered.contains("http://***@127.0.0.1:9200/,http://es2:9200/"), "{rendered}");
}

/// print-config shows every setting, the CA files and LOG_FORMAT included, each with where
/// its value came from.
#[test]
fn print_config_shows_every_setting_and_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg2es.toml");
    std::fs::write(&path, "etl_batch_size = 50\n").unwrap();
    let env = [("ES_INDEX", "films"), ("PGHOST", "db.internal"), ("PG_PASSWORD", "hunter2"), ("ES_HOST", "http://es:9200"), ("LOG_FORMAT", "json")];
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let text = Config::from_sources(&Sources::gather(Some(&path), env).unwrap()).unwrap().render();
    let line = |label: &str| {
        let found = text.lines().find(|l| l.strip_prefix(label).is_some_and(|rest| rest.starts_with(' ')));
        found.unwrap_or_else(|| panic!("no {label} line in\n{text}")).to_string()
    };
    for s in SETTINGS.iter().filter(|s| !matches!(s.name, "PG_DSN" | "PG_PASSWORD" | "ES_USERNAME" | "ES_PASSWORD" | "ES_API_KEY")) {
        line(s.name);
    }
    assert!(line("ES_INDEX").ends_with("films  (environment)"), "{text}");
    assert!(line("ES_URL").ends_with("(environment, ES_HOST)"), "{text}");
    assert!(line("ETL_BATCH_SIZE").ends_with(&format!("50  (file {})", path.display())), "{text}");
    assert!(line("ETL_CYCLE_SEC").ends_with("10  (default)"), "{text}");
    assert!(line("ES_SCHEMA_FILE").ends_with("(the definition's index_schema)  (default)"), "{text}");
    assert!(line("PG2ES_DEFINITION").contains("built-in cinema definition"), "{text}");
    assert!(line("LOG_FORMAT").ends_with("json  (environment)"), "{text}");
    assert!(line("PG_CA_FILE").contains("public web roots"), "{text}");
    assert!(line("ES_CA_FILE").ends_with("(unset)"), "{text}");
    assert!(line("postgres host").ends_with("db.internal  (environment, PGHOST)"), "{text}");
    assert!(line("postgres user").ends_with("app  (PG_DSN, default)"), "{text}");
    assert!(line("postgres password").ends_with("***  (PG_PASSWORD, environment)"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let c = config(&[("PG_DSN", "postgres://db/movies?sslmode=verify-full&sslrootcert=/dsn/ca.pem"), ("ES_CA_FILE", "/es/ca.pem")]).unwrap();
    let text = c.render();
    assert!(text.contains("/dsn/ca.pem  (sslrootcert in PG_DSN, environment)"), "{text}");
    assert!(text.contains("/es/ca.pem  (environment)"), "{text}");
}

#[test]
fn file_values_sit_between_defaults_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg2es.toml");
    std::fs::write(&path, "etl_batch_size = 50\nes_index = \"films\"\n").unwrap();
    let env = vec![("ES_INDEX".to_string(), "movies_v2".to_string())];
    let c = Config::from_sources(&Sources::gather(Some(&path), env).unwrap()).unwrap();
    assert_eq!(c.batch_size, 50);
    assert_eq!(c.es_index, "movies_v2");

    std::fs::write(&path, "etl_batch_size = \"many\"\n").unwrap();
    let e = Config::from_sources(&Sources::gather(Some(&path), vec![]).unwrap()).unwrap_err().to_string();
    assert!(e.contains("ETL_BATCH_SIZE") && e.contains("pg2es.toml"), "{e}");

    std::fs::write(&path, "batch = 5\n").unwrap();
    let e = Sources::gather(Some(&path), vec![]).unwrap_err().to_string();
    assert!(e.contains("unknown key 'batch'"), "{e}");
}

/// `print-config` with another definition shows each document's own names, as `run` uses
/// them, from the file alone; no secret.
#[test]
fn print_config_shows_each_documents_index_state_and_slot() {
    let bookshop = concat!(env!("CARGO_MANIFEST_DIR"), "/catalog/bookshop/bookshop.toml");
    let env = [
        ("PG2ES_DEFINITION", bookshop),
        ("PG2ES_SOURCE", "replication"),
        ("ES_INDEX_PREFIX", "staging_"),
        ("ETL_STATE_FILE", "/var/lib/pg2es/state.json"),
        ("PG_PASSWORD", "hunter2"),
        ("ES_USERNAME", "elastic"),
        ("ES_PASSWORD", "s3cret"),
    ];
    let c = config(&env).unwrap();
    let text = c.render();
    let docs = c.documents(&c.selection().unwrap(), &c.selection().unwrap().source().unwrap()).unwrap();
    assert!(!docs.is_empty());
    for d in &docs {
        let section = text.split(&format!("\ndocument {}\n", d.name)).nth(1).unwrap_or_else(|| panic!("no section for {} in\n{text}", d.name));
        let section = section.split("\n\n").next().unwrap();
        let SourceKind::Replication(r) = &d.config.source else { panic!("replication") };
        for (label, value) in [
            ("index", d.config.es_index.clone()),
            ("state file", d.config.state_file.display().to_string()),
            ("dead-letter file", d.config.dead_letter_file.display().to_string()),
            ("replication slot", r.slot.clone()),
            ("publication", r.publication.clone()),
        ] {
            assert!(section.lines().any(|l| l.trim_start().starts_with(label) && l.contains(&value)), "{label} {value} not in\n{section}");
        }
        assert!(d.config.es_index.starts_with("staging_") && d.config.es_index != "movies", "{}", d.config.es_index);
        // One slot for the run, named after its first document's index; each document's
        // own slot of earlier releases is the one it reads until it reaches it.
        assert_eq!(r.slot, replication_name(&format!("pg2es_{}", docs[0].config.es_index)));
        assert_eq!(r.previous_slot, replication_name(&format!("pg2es_{}", d.config.es_index)));
        assert_eq!(d.position == 0, !section.contains("previous slot"), "{section}");
    }
    assert!(!text.contains("pg2es_movies") && !text.contains("ES_INDEX               movies"), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");

    // A definition that cannot be read is said where the documents would be.
    let c = config(&[("PG2ES_DEFINITION", "/nonexistent/def.toml")]).unwrap();
    assert!(c.render().contains("documents: cannot read them:"), "{}", c.render());
}

fn index_names(env: &[(&str, &str)]) -> Vec<String> {
    let c = config(env).unwrap();
    let selection = c.selection().unwrap();
    c.documents(&selection, &selection.source().unwrap()).unwrap().into_iter().map(|d| d.config.es_index).collect()
}

/// ES_INDEX_PREFIX before every index but an ES_INDEX that is set; none, the names of old.
#[test]
fn index_prefix_names_every_index_but_an_explicit_es_index() {
    assert_eq!(index_names(&[]), ["movies", "genres", "persons"]);
    assert_eq!(index_names(&[("ES_INDEX", "films")]), ["films", "genres", "persons"]);
    assert_eq!(index_names(&[("ES_INDEX_PREFIX", "staging_")]), ["staging_movies", "staging_genres", "staging_persons"]);
    assert_eq!(index_names(&[("ES_INDEX_PREFIX", "staging_"), ("ES_INDEX", "films_v2")]), ["films_v2", "staging_genres", "staging_persons"]);
    // Replication's one slot follows the first index; with no prefix it is the first of old.
    let slots = |env: &[(&str, &str)]| -> Vec<(String, String)> {
        let c = config(env).unwrap();
        let selection = c.selection().unwrap();
        let docs = c.documents(&selection, &selection.source().unwrap()).unwrap();
        docs.into_iter()
            .map(|d| match d.config.source {
                SourceKind::Replication(r) => (r.slot, r.previous_slot),
                SourceKind::Polling => panic!("replication"),
            })
            .collect()
    };
    let pairs = |run: &str, previous: [&str; 3]| -> Vec<(String, String)> { previous.iter().map(|p| (run.to_string(), p.to_string())).collect() };
    assert_eq!(slots(&[("PG2ES_SOURCE", "replication")]), pairs("pg2es_movies", ["pg2es_movies", "pg2es_genres", "pg2es_persons"]));
    assert_eq!(
        slots(&[("PG2ES_SOURCE", "replication"), ("ES_INDEX_PREFIX", "b_")]),
        pairs("pg2es_b_movies", ["pg2es_b_movies", "pg2es_b_genres", "pg2es_b_persons"])
    );
    // PG_REPLICATION_SLOT names the run's slot; the documents after the first had their own.
    assert_eq!(slots(&[("PG2ES_SOURCE", "replication"), ("PG_REPLICATION_SLOT", "mine")]), pairs("mine", ["mine", "mine_genres", "mine_persons"]));
    // A run of some documents has its own slot, after its first.
    assert_eq!(
        slots(&[("PG2ES_SOURCE", "replication"), ("PG2ES_DOCUMENTS", "genres,persons")]),
        pairs("pg2es_genres", ["x", "pg2es_genres", "pg2es_persons"])[1..]
    );

    // An ES_INDEX that is another document's index with the prefix is refused.
    let c = config(&[("ES_INDEX_PREFIX", "s_"), ("ES_INDEX", "s_genres")]).unwrap();
    let selection = c.selection().unwrap();
    let e = c.documents(&selection, &selection.source().unwrap()).unwrap_err().to_string();
    assert!(e.contains("ES_INDEX=s_genres") && e.contains("genres"), "{e}");
    // Too long once the definition's name is added: a copy of the cinema with a long one.
    let dir = tempfile::tempdir().unwrap();
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
    for file in ["movies.es.json", "genres.es.json", "persons.es.json"] {
        std::fs::copy(catalog.join(file), dir.path().join(file)).unwrap();
    }
    let text = std::fs::read_to_string(catalog.join("cinema.toml")).unwrap().replace("index = \"genres\"", &format!("index = \"{}\"", "g".repeat(100)));
    std::fs::write(dir.path().join("cinema.toml"), text).unwrap();
    let definition = dir.path().join("cinema.toml").display().to_string();
    let long = "a".repeat(200);
    let c = config(&[("ES_INDEX_PREFIX", &long), ("PG2ES_DEFINITION", &definition)]).unwrap();
    let selection = c.selection().unwrap();
    let e = c.documents(&selection, &selection.source().unwrap()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("ES_INDEX_PREFIX"), "{e}");
}

#[test]
fn index_prefix_is_the_start_of_an_index_name() {
    for bad in ["Staging_", "_x", "-x", "+x", "a b", "a/", "a*", "a?", "a\"", "a<", "a>", "a|", "a,", "a#", "a:", "a\\"] {
        let e = err(&[("ES_INDEX_PREFIX", bad)]);
        assert!(e.contains("ES_INDEX_PREFIX") && e.contains("expected"), "{bad:?}: {e}");
    }
    assert!(err(&[("ES_INDEX_PREFIX", &"a".repeat(201))]).contains("ES_INDEX_PREFIX"));
    assert_eq!(config(&[("ES_INDEX_PREFIX", "staging-2.")]).unwrap().es_index_prefix, "staging-2.");
    assert_eq!(config(&[]).unwrap().es_index_prefix, "");
    // ES_INDEX and the definition's names are checked by the one rule (the catalog's).
    for bad in [".", "..", "a:b"] {
        assert!(err(&[("ES_INDEX", bad)]).contains("ES_INDEX"), "{bad:?}");
    }
}

#[test]
fn secrets_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, es) = (dir.path().join("pg"), dir.path().join("es"));
    std::fs::write(&pg, "pg-from-file\n").unwrap();
    std::fs::write(&es, "es-from-file").unwrap();
    let c = config(&[("PG_PASSWORD_FILE", pg.to_str().unwrap()), ("ES_USERNAME", "elastic"), ("ES_PASSWORD_FILE", es.to_str().unwrap())]).unwrap();
    assert_eq!(c.postgres.pg.get_password(), Some(&b"pg-from-file"[..]));
    assert!(matches!(&c.sink.auth, EsAuth::Basic { password, .. } if password.expose() == "es-from-file"));
    let e = err(&[("ES_API_KEY_FILE", "/nonexistent/key")]);
    assert!(e.contains("ES_API_KEY_FILE"), "{e}");
}

#[test]
fn auth_combinations() {
    assert!(err(&[("ES_PASSWORD", "x")]).contains("ES_USERNAME"));
    assert!(err(&[("ES_USERNAME", "elastic")]).contains("ES_PASSWORD is not"));
    assert!(err(&[("ES_API_KEY", "k"), ("ES_USERNAME", "u")]).contains("choose one"));
    assert!(matches!(config(&[("ES_API_KEY", "k")]).unwrap().sink.auth, EsAuth::ApiKey(_)));
}
