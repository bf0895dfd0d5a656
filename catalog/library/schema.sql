-- Source schema of the library catalog (catalog/library/library.toml), in schema `library`: the
-- shapes real schemas have that the cinema and the bookshop do not. Soft deletes two ways (a flag
-- and a timestamp), an enum, booleans and small integers to filter on, an array column and a
-- padded character(n) column; loans link books and members and are read both as a one-to-many of
-- the book and as the link table of a many-to-many.
CREATE SCHEMA IF NOT EXISTS library;

DO $$ BEGIN
    CREATE TYPE library.loan_state AS ENUM ('open', 'late', 'lost');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS library.book (
    id         uuid PRIMARY KEY,
    title      text NOT NULL,
    subtitle   text,
    shelf      character(6),
    tags       text[],
    is_deleted boolean NOT NULL DEFAULT false,
    deleted_at timestamp with time zone,
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS library.member (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS library.loan (
    id         uuid PRIMARY KEY,
    book_id    uuid NOT NULL REFERENCES library.book (id) ON DELETE CASCADE,
    member_id  uuid NOT NULL REFERENCES library.member (id) ON DELETE CASCADE,
    returned   boolean NOT NULL DEFAULT false,
    state      library.loan_state NOT NULL DEFAULT 'open',
    weeks      smallint NOT NULL DEFAULT 2,
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

-- Keyset reads of changes, and the lookups of a book's loans and of a member's books.
CREATE INDEX IF NOT EXISTS book_updated_at_id_idx   ON library.book (updated_at, id);
CREATE INDEX IF NOT EXISTS member_updated_at_id_idx ON library.member (updated_at, id);
CREATE INDEX IF NOT EXISTS loan_updated_at_id_idx   ON library.loan (updated_at, id);
CREATE INDEX IF NOT EXISTS loan_book_id_idx         ON library.loan (book_id);
CREATE INDEX IF NOT EXISTS loan_member_id_idx       ON library.loan (member_id);
