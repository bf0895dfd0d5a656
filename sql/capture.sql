-- Change capture for pg2es (opt-in): the log and the trigger functions. The triggers themselves
-- are generated from the definition (`pg2es delete-capture print` shows them): for every table of
-- a document, they record the keys of the documents a delete (and, with `install --writes`, an
-- insert or update) changes, stamped with the writing transaction's id; pg2es reads the log by
-- transaction id. Idempotent: run it again after an upgrade of pg2es. Needs PostgreSQL 13+ (xid8).
--
-- The functions are SECURITY DEFINER so that the application's role, which writes rows, needs no
-- right on schema pg2es: they run as the role that installed them (an owner of the tables), with
-- search_path pinned and every name qualified, and nobody else may attach them to a table. Names
-- come as trigger arguments and are quoted with %I; values are parameters.

CREATE SCHEMA IF NOT EXISTS pg2es;

-- One row per (transaction, document, key) to rebuild; film_id (the document's key) NULL: the
-- whole document must be reloaded (a TRUNCATE). `document` NULL: written by the triggers of
-- pg2es before definitions, for the definition's first document. Rows below every consumer's
-- position are trimmed by pg2es.
CREATE TABLE IF NOT EXISTS pg2es.film_changes (
    xid           xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    source_schema text        NOT NULL,
    film_id       uuid,
    at            timestamptz NOT NULL DEFAULT pg_catalog.now()
);
ALTER TABLE pg2es.film_changes ADD COLUMN IF NOT EXISTS document text;
CREATE INDEX IF NOT EXISTS film_changes_source_schema_xid_idx ON pg2es.film_changes (source_schema, xid);

-- Each pg2es instance's position: log rows below the oldest one are read by everyone.
CREATE TABLE IF NOT EXISTS pg2es.consumers (
    source_schema text        NOT NULL,
    consumer      text        NOT NULL,
    done_xid      xid8        NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (source_schema, consumer)
);

-- Rows deleted, inserted or updated (statement level, the rows as `changed`): the keys in their
-- column TG_ARGV[1], for document TG_ARGV[0].
CREATE OR REPLACE FUNCTION pg2es.capture_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    EXECUTE format('INSERT INTO pg2es.film_changes (source_schema, document, film_id) '
                   'SELECT DISTINCT $1, $2, c.%I FROM changed c WHERE c.%I IS NOT NULL', TG_ARGV[1], TG_ARGV[1])
        USING TG_TABLE_SCHEMA, TG_ARGV[0];
    RETURN NULL;
END $$;

-- Rows updated so that column TG_ARGV[3] changed: their old TG_ARGV[1] (a link moved away from
-- its root, a root whose many-to-one reference changed). TG_ARGV[2] is the table's key.
CREATE OR REPLACE FUNCTION pg2es.capture_moved() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    EXECUTE format('INSERT INTO pg2es.film_changes (source_schema, document, film_id) '
                   'SELECT DISTINCT $1, $2, g.%I FROM gone g WHERE g.%I IS NOT NULL AND NOT EXISTS '
                   '(SELECT 1 FROM kept k WHERE k.%I = g.%I AND k.%I IS NOT DISTINCT FROM g.%I)',
                   TG_ARGV[1], TG_ARGV[1], TG_ARGV[2], TG_ARGV[2], TG_ARGV[3], TG_ARGV[3])
        USING TG_TABLE_SCHEMA, TG_ARGV[0];
    RETURN NULL;
END $$;

-- A related row about to be deleted (before the cascade removes what points at it): the roots
-- that contain it, read from table TG_ARGV[1] (column TG_ARGV[2] where TG_ARGV[3] holds this
-- row's key, column TG_ARGV[4]).
CREATE OR REPLACE FUNCTION pg2es.capture_referencing() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    EXECUTE format('INSERT INTO pg2es.film_changes (source_schema, document, film_id) '
                   'SELECT DISTINCT $1, $2, r.%I FROM %I.%I r WHERE r.%I = $3 AND r.%I IS NOT NULL',
                   TG_ARGV[2], TG_TABLE_SCHEMA, TG_ARGV[1], TG_ARGV[3], TG_ARGV[2])
        USING TG_TABLE_SCHEMA, TG_ARGV[0], (pg_catalog.to_jsonb(OLD) ->> TG_ARGV[4])::uuid;
    RETURN OLD;
END $$;

-- Related rows updated (statement level, as `changed`): the roots that contain them, as above.
CREATE OR REPLACE FUNCTION pg2es.capture_referencing_written() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    EXECUTE format('INSERT INTO pg2es.film_changes (source_schema, document, film_id) '
                   'SELECT DISTINCT $1, $2, r.%I FROM %I.%I r JOIN changed c ON r.%I = c.%I WHERE r.%I IS NOT NULL',
                   TG_ARGV[2], TG_TABLE_SCHEMA, TG_ARGV[1], TG_ARGV[3], TG_ARGV[4], TG_ARGV[2])
        USING TG_TABLE_SCHEMA, TG_ARGV[0];
    RETURN NULL;
END $$;

-- A table truncated: no row tells which documents changed, so document TG_ARGV[0] is reloaded.
CREATE OR REPLACE FUNCTION pg2es.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO pg2es.film_changes (source_schema, document, film_id) VALUES (TG_TABLE_SCHEMA, TG_ARGV[0], NULL);
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION pg2es.capture_rows(), pg2es.capture_moved(), pg2es.capture_referencing(),
                       pg2es.capture_referencing_written(), pg2es.capture_truncate() FROM PUBLIC;
