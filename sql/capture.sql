-- Change capture for pg2es (opt-in): the log. The triggers and their functions are generated
-- from the definition (`pg2es delete-capture print` shows them): for every table of
-- a document, they record the keys of the documents a delete (and, with `install --writes`, an
-- insert or update) changes, stamped with the writing transaction's id; pg2es reads the log by
-- transaction id. Idempotent: run it again after an upgrade of pg2es. Needs PostgreSQL 13+ (xid8).
--
-- The functions are SECURITY DEFINER so that the application's role, which writes rows, needs no
-- right on schema pg2es: they run as the role that installed them (an owner of the tables), with
-- search_path pinned and every name qualified and quoted, and nobody else may call them.

CREATE SCHEMA IF NOT EXISTS pg2es;

-- One row per (transaction, document, key) to rebuild: `key` is the document's key as text
-- (`film_id`, a uuid, is where the triggers of earlier releases wrote it); both NULL: the
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
ALTER TABLE pg2es.film_changes ADD COLUMN IF NOT EXISTS key text;
CREATE INDEX IF NOT EXISTS film_changes_source_schema_xid_idx ON pg2es.film_changes (source_schema, xid);

-- Each pg2es instance's position: log rows below the oldest one are read by everyone.
CREATE TABLE IF NOT EXISTS pg2es.consumers (
    source_schema text        NOT NULL,
    consumer      text        NOT NULL,
    done_xid      xid8        NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (source_schema, consumer)
);

-- The triggers and the function each one calls are generated from the definition
-- (`pg2es delete-capture print` shows them): each function writes its statement out, so that
-- PL/pgSQL keeps its plan across the application's writes.
