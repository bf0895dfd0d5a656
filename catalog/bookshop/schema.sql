-- Source schema of the bookshop catalog (catalog/bookshop/bookshop.toml), in schema `bookshop`.
-- Change tracking: every table has updated_at, indexed together with id for keyset reads.
CREATE SCHEMA IF NOT EXISTS bookshop;

CREATE TABLE IF NOT EXISTS bookshop.publisher (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    country    text,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS bookshop.author (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    born       integer,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS bookshop.book (
    id           uuid PRIMARY KEY,
    title        text NOT NULL,
    isbn         text,
    pages        integer,
    price        numeric(8, 2),
    published    date,
    publisher_id uuid NULL REFERENCES bookshop.publisher (id) ON DELETE SET NULL,
    created_at   timestamp with time zone NOT NULL DEFAULT now(),
    updated_at   timestamp with time zone NOT NULL DEFAULT now()
);

-- Many-to-many: a book's authors, in the order of the cover (position).
CREATE TABLE IF NOT EXISTS bookshop.book_author (
    id         uuid PRIMARY KEY,
    book_id    uuid NOT NULL REFERENCES bookshop.book (id) ON DELETE CASCADE,
    author_id  uuid NOT NULL REFERENCES bookshop.author (id) ON DELETE CASCADE,
    position   integer NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    CONSTRAINT book_author_book_author_key UNIQUE (book_id, author_id)
);

-- One-to-many: a book's reviews.
CREATE TABLE IF NOT EXISTS bookshop.review (
    id         uuid PRIMARY KEY,
    book_id    uuid NOT NULL REFERENCES bookshop.book (id) ON DELETE CASCADE,
    rating     integer,
    body       text,
    reviewer   text,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

-- Keyset reads of changes: WHERE (updated_at, id) > ($1, $2) ORDER BY updated_at, id.
CREATE INDEX IF NOT EXISTS publisher_updated_at_id_idx   ON bookshop.publisher (updated_at, id);
CREATE INDEX IF NOT EXISTS author_updated_at_id_idx      ON bookshop.author (updated_at, id);
CREATE INDEX IF NOT EXISTS book_updated_at_id_idx        ON bookshop.book (updated_at, id);
CREATE INDEX IF NOT EXISTS book_author_updated_at_id_idx ON bookshop.book_author (updated_at, id);
CREATE INDEX IF NOT EXISTS review_updated_at_id_idx      ON bookshop.review (updated_at, id);
-- Fan-out from a changed publisher, author, link or review to its books (book_author.book_id:
-- the index of book_author_book_author_key, which leads with it).
CREATE INDEX IF NOT EXISTS book_publisher_id_idx         ON bookshop.book (publisher_id);
CREATE INDEX IF NOT EXISTS book_author_author_id_idx     ON bookshop.book_author (author_id);
CREATE INDEX IF NOT EXISTS review_book_id_idx            ON bookshop.review (book_id);
-- Logical replication: a deleted link row or review must name its book, so these tables log
-- their whole old row (the default identity, the primary key, gives only the id).
ALTER TABLE bookshop.book_author REPLICA IDENTITY FULL;
ALTER TABLE bookshop.review REPLICA IDENTITY FULL;
