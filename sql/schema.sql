-- Source schema of the online-cinema catalog, as ../shared/fixtures/movies/movies_db_dump.sql expects it.
-- Change tracking: every table has updated_at, indexed together with id for keyset reads.
CREATE SCHEMA IF NOT EXISTS content;

CREATE TABLE IF NOT EXISTS content.film_work (
    id            uuid PRIMARY KEY,
    title         text NOT NULL,
    description   text,
    creation_date timestamp with time zone,
    rating        double precision,
    type          text,
    created_at    timestamp with time zone NOT NULL DEFAULT now(),
    updated_at    timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content.genre (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    description text,
    created_at  timestamp with time zone NOT NULL DEFAULT now(),
    updated_at  timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content.person (
    id         uuid PRIMARY KEY,
    full_name  text NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content.genre_film_work (
    id           uuid PRIMARY KEY,
    genre_id     uuid NOT NULL REFERENCES content.genre (id) ON DELETE CASCADE,
    film_work_id uuid NOT NULL REFERENCES content.film_work (id) ON DELETE CASCADE,
    created_at   timestamp with time zone NOT NULL DEFAULT now(),
    updated_at   timestamp with time zone NOT NULL DEFAULT now(),
    CONSTRAINT genre_film_work_film_genre_key UNIQUE (film_work_id, genre_id)
);

CREATE TABLE IF NOT EXISTS content.person_film_work (
    id           uuid PRIMARY KEY,
    film_work_id uuid NOT NULL REFERENCES content.film_work (id) ON DELETE CASCADE,
    person_id    uuid NOT NULL REFERENCES content.person (id) ON DELETE CASCADE,
    role         text NOT NULL,
    created_at   timestamp with time zone NOT NULL DEFAULT now(),
    updated_at   timestamp with time zone NOT NULL DEFAULT now()
);

-- Keyset reads of changes: WHERE (updated_at, id) > ($1, $2) ORDER BY updated_at, id.
CREATE INDEX IF NOT EXISTS film_work_updated_at_id_idx        ON content.film_work (updated_at, id);
CREATE INDEX IF NOT EXISTS genre_updated_at_id_idx            ON content.genre (updated_at, id);
CREATE INDEX IF NOT EXISTS person_updated_at_id_idx           ON content.person (updated_at, id);
CREATE INDEX IF NOT EXISTS genre_film_work_updated_at_id_idx  ON content.genre_film_work (updated_at, id);
CREATE INDEX IF NOT EXISTS person_film_work_updated_at_id_idx ON content.person_film_work (updated_at, id);
-- Fan-out from a changed genre or person to its films, and from a film to its people.
CREATE INDEX IF NOT EXISTS genre_film_work_genre_id_idx       ON content.genre_film_work (genre_id);
CREATE INDEX IF NOT EXISTS person_film_work_person_id_idx     ON content.person_film_work (person_id);
CREATE INDEX IF NOT EXISTS person_film_work_film_work_id_idx  ON content.person_film_work (film_work_id);
-- Logical replication (PG2ES_SOURCE=replication): a deleted link row must name its film, so the
-- link tables log their whole old row (the default identity, the primary key, gives only the id).
ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL;
ALTER TABLE content.person_film_work REPLICA IDENTITY FULL;
