-- Write capture for pg2es (opt-in, with the delete capture: `pg2es delete-capture install
-- --writes`): triggers record, for every insert and update that changes a film's document, the id
-- of the film to rebuild, in the same log as deletes. Polling then reads every change from the log
-- and no longer depends on `updated_at`: Django's QuerySet.update(), bulk_update(),
-- save(update_fields=...) and loaddata leave it alone. {schema} is the source schema. Applied
-- after sql/delete_capture.sql, which makes the log; idempotent. Same rules for the functions:
-- SECURITY DEFINER, search_path pinned, every name qualified, EXECUTE revoked from PUBLIC.

-- film_work rows inserted or updated: those films.
CREATE OR REPLACE FUNCTION pg2es.log_written_films() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO pg2es.film_changes (source_schema, film_id)
    SELECT DISTINCT TG_TABLE_SCHEMA, written.id FROM written;
    RETURN NULL;
END $$;

-- Link rows inserted or updated: the films they point at now (an update's old film is logged by
-- pg2es.log_moved_links of the delete capture).
CREATE OR REPLACE FUNCTION pg2es.log_written_links() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO pg2es.film_changes (source_schema, film_id)
    SELECT DISTINCT TG_TABLE_SCHEMA, written.film_work_id FROM written;
    RETURN NULL;
END $$;

-- Genres or persons updated (a rename): every film linked to them. Arguments: the link table and
-- its column pointing at this table.
CREATE OR REPLACE FUNCTION pg2es.log_renamed_linked() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    EXECUTE format('INSERT INTO pg2es.film_changes (source_schema, film_id) '
                   'SELECT DISTINCT $1, l.film_work_id FROM %I.%I l WHERE l.%I IN (SELECT written.id FROM written)',
                   TG_TABLE_SCHEMA, TG_ARGV[0], TG_ARGV[1])
        USING TG_TABLE_SCHEMA;
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION pg2es.log_written_films(), pg2es.log_written_links(), pg2es.log_renamed_linked() FROM PUBLIC;

-- Statement-level with transition tables: one INSERT ... SELECT DISTINCT per statement, however
-- many rows it writes. A trigger with a transition table takes one event, so inserts and updates
-- each have their own.
DROP TRIGGER IF EXISTS pg2es_film_inserted ON {schema}.film_work;
CREATE TRIGGER pg2es_film_inserted AFTER INSERT ON {schema}.film_work
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_written_films();
DROP TRIGGER IF EXISTS pg2es_film_updated ON {schema}.film_work;
CREATE TRIGGER pg2es_film_updated AFTER UPDATE ON {schema}.film_work
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_written_films();

DROP TRIGGER IF EXISTS pg2es_link_inserted ON {schema}.genre_film_work;
CREATE TRIGGER pg2es_link_inserted AFTER INSERT ON {schema}.genre_film_work
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_written_links();
DROP TRIGGER IF EXISTS pg2es_link_updated ON {schema}.genre_film_work;
CREATE TRIGGER pg2es_link_updated AFTER UPDATE ON {schema}.genre_film_work
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_written_links();

DROP TRIGGER IF EXISTS pg2es_link_inserted ON {schema}.person_film_work;
CREATE TRIGGER pg2es_link_inserted AFTER INSERT ON {schema}.person_film_work
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_written_links();
DROP TRIGGER IF EXISTS pg2es_link_updated ON {schema}.person_film_work;
CREATE TRIGGER pg2es_link_updated AFTER UPDATE ON {schema}.person_film_work
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_written_links();

DROP TRIGGER IF EXISTS pg2es_linked_updated ON {schema}.genre;
CREATE TRIGGER pg2es_linked_updated AFTER UPDATE ON {schema}.genre
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_renamed_linked('genre_film_work', 'genre_id');

DROP TRIGGER IF EXISTS pg2es_linked_updated ON {schema}.person;
CREATE TRIGGER pg2es_linked_updated AFTER UPDATE ON {schema}.person
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION pg2es.log_renamed_linked('person_film_work', 'person_id');
