-- Delete capture for pg2es (opt-in): triggers on the source tables record, for every delete that
-- changes a film's document, the id of the film to rebuild. pg2es reads the log by transaction id
-- (`pg2es delete-capture install` applies this file; `print` shows it). {schema} is the source
-- schema. Idempotent: run it again after an upgrade of pg2es. Needs PostgreSQL 13+ (xid8).
--
-- The functions are SECURITY DEFINER so that the application's role, which deletes rows, needs no
-- right on schema pg2es: they run as the role that installed them (an owner of the tables), with
-- search_path pinned and every name qualified, and nobody else may attach them to a table.

CREATE SCHEMA IF NOT EXISTS pg2es;

-- One row per (transaction, film) to rebuild; film_id NULL: the whole catalog must be reloaded
-- (a TRUNCATE). Rows below every consumer's position are trimmed by pg2es.
CREATE TABLE IF NOT EXISTS pg2es.film_changes (
    xid           xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    source_schema text        NOT NULL,
    film_id       uuid,
    at            timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX IF NOT EXISTS film_changes_source_schema_xid_idx ON pg2es.film_changes (source_schema, xid);

-- Each pg2es instance's position: log rows below the oldest one are read by everyone.
CREATE TABLE IF NOT EXISTS pg2es.consumers (
    source_schema text        NOT NULL,
    consumer      text        NOT NULL,
    done_xid      xid8        NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (source_schema, consumer)
);

-- film_work rows deleted: their documents go.
CREATE OR REPLACE FUNCTION pg2es.log_deleted_films() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO pg2es.film_changes (source_schema, film_id)
    SELECT DISTINCT TG_TABLE_SCHEMA, gone.id FROM gone;
    RETURN NULL;
END $$;

-- Link rows deleted: their films lose a genre or a person.
CREATE OR REPLACE FUNCTION pg2es.log_unlinked_films() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO pg2es.film_changes (source_schema, film_id)
    SELECT DISTINCT TG_TABLE_SCHEMA, gone.film_work_id FROM gone;
    RETURN NULL;
END $$;

-- Link rows updated away from a film: the old film loses the link. The new film is seen by the
-- polling stream (the row's timestamp changed), the old one is not.
CREATE OR REPLACE FUNCTION pg2es.log_moved_links() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO pg2es.film_changes (source_schema, film_id)
    SELECT DISTINCT TG_TABLE_SCHEMA, gone.film_work_id FROM gone
    WHERE NOT EXISTS (SELECT 1 FROM kept WHERE kept.id = gone.id AND kept.film_work_id = gone.film_work_id);
    RETURN NULL;
END $$;

-- A genre or person about to be deleted: every film linked to it (before the cascade removes the
-- links). Arguments: the link table and its column pointing at this table.
CREATE OR REPLACE FUNCTION pg2es.log_linked_films() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    EXECUTE format('INSERT INTO pg2es.film_changes (source_schema, film_id) SELECT DISTINCT $1, film_work_id FROM %I.%I WHERE %I = $2',
                   TG_TABLE_SCHEMA, TG_ARGV[0], TG_ARGV[1])
        USING TG_TABLE_SCHEMA, OLD.id;
    RETURN OLD;
END $$;

-- A table truncated: no row tells which films changed, so everything is reloaded.
CREATE OR REPLACE FUNCTION pg2es.log_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO pg2es.film_changes (source_schema, film_id) VALUES (TG_TABLE_SCHEMA, NULL);
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION pg2es.log_deleted_films(), pg2es.log_unlinked_films(), pg2es.log_moved_links(),
                       pg2es.log_linked_films(), pg2es.log_truncate() FROM PUBLIC;

-- Triggers. Statement-level with transition tables where they can be: deleting 100k link rows
-- writes one INSERT ... SELECT DISTINCT. The genre and person ones must run before the cascade.
DROP TRIGGER IF EXISTS pg2es_film_deleted ON {schema}.film_work;
CREATE TRIGGER pg2es_film_deleted AFTER DELETE ON {schema}.film_work
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_deleted_films();

DROP TRIGGER IF EXISTS pg2es_link_deleted ON {schema}.genre_film_work;
CREATE TRIGGER pg2es_link_deleted AFTER DELETE ON {schema}.genre_film_work
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_unlinked_films();
DROP TRIGGER IF EXISTS pg2es_link_moved ON {schema}.genre_film_work;
CREATE TRIGGER pg2es_link_moved AFTER UPDATE ON {schema}.genre_film_work
    REFERENCING OLD TABLE AS gone NEW TABLE AS kept FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_moved_links();

DROP TRIGGER IF EXISTS pg2es_link_deleted ON {schema}.person_film_work;
CREATE TRIGGER pg2es_link_deleted AFTER DELETE ON {schema}.person_film_work
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_unlinked_films();
DROP TRIGGER IF EXISTS pg2es_link_moved ON {schema}.person_film_work;
CREATE TRIGGER pg2es_link_moved AFTER UPDATE ON {schema}.person_film_work
    REFERENCING OLD TABLE AS gone NEW TABLE AS kept FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_moved_links();

DROP TRIGGER IF EXISTS pg2es_linked_deleted ON {schema}.genre;
CREATE TRIGGER pg2es_linked_deleted BEFORE DELETE ON {schema}.genre
    FOR EACH ROW EXECUTE FUNCTION pg2es.log_linked_films('genre_film_work', 'genre_id');

DROP TRIGGER IF EXISTS pg2es_linked_deleted ON {schema}.person;
CREATE TRIGGER pg2es_linked_deleted BEFORE DELETE ON {schema}.person
    FOR EACH ROW EXECUTE FUNCTION pg2es.log_linked_films('person_film_work', 'person_id');

DROP TRIGGER IF EXISTS pg2es_truncated ON {schema}.film_work;
CREATE TRIGGER pg2es_truncated AFTER TRUNCATE ON {schema}.film_work FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_truncate();
DROP TRIGGER IF EXISTS pg2es_truncated ON {schema}.genre;
CREATE TRIGGER pg2es_truncated AFTER TRUNCATE ON {schema}.genre FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_truncate();
DROP TRIGGER IF EXISTS pg2es_truncated ON {schema}.person;
CREATE TRIGGER pg2es_truncated AFTER TRUNCATE ON {schema}.person FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_truncate();
DROP TRIGGER IF EXISTS pg2es_truncated ON {schema}.genre_film_work;
CREATE TRIGGER pg2es_truncated AFTER TRUNCATE ON {schema}.genre_film_work FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_truncate();
DROP TRIGGER IF EXISTS pg2es_truncated ON {schema}.person_film_work;
CREATE TRIGGER pg2es_truncated AFTER TRUNCATE ON {schema}.person_film_work FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_truncate();
