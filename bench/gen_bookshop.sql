-- A scaled bookshop for the benchmark (bench/ab.sh): :books books, a publisher per 20 books (one
-- book in 25 without), an author per 5 books, 1-3 authors per book with positions, 0-4 reviews per
-- book. Deterministic (ids from md5 of a fixed text). Applied after catalog/bookshop/schema.sql.
SET client_min_messages = warning;
INSERT INTO bookshop.publisher (id, name, country)
SELECT md5('b/p/' || n)::uuid, 'Publisher ' || n, (ARRAY['GB', 'US', 'DE', 'FR', 'RU'])[1 + n % 5]
FROM generate_series(1, greatest(:books / 20, 1)) n;
INSERT INTO bookshop.author (id, name, born)
SELECT md5('b/a/' || n)::uuid, 'Author ' || n, 1900 + n % 100 FROM generate_series(1, greatest(:books / 5, 1)) n;
INSERT INTO bookshop.book (id, title, isbn, pages, price, published, publisher_id)
SELECT md5('b/b/' || n)::uuid, 'Book number ' || n || ' of the long shelf', '978-' || lpad(n::text, 10, '0'), 100 + n % 700,
       (5 + n % 50) + 0.99, date '1950-01-01' + n % 25000,
       CASE WHEN n % 25 = 0 THEN NULL ELSE md5('b/p/' || (1 + n % greatest(:books / 20, 1)))::uuid END
FROM generate_series(1, :books) n;
INSERT INTO bookshop.book_author (id, book_id, author_id, position)
SELECT md5('b/l/' || n || '/' || k)::uuid, md5('b/b/' || n)::uuid, md5('b/a/' || (1 + (n * 7 + k * 13) % greatest(:books / 5, 1)))::uuid, k
FROM generate_series(1, :books) n, generate_series(1, 3) k WHERE k <= 1 + n % 3
ON CONFLICT DO NOTHING;
INSERT INTO bookshop.review (id, book_id, rating, body, reviewer)
SELECT md5('b/r/' || n || '/' || k)::uuid, md5('b/b/' || n)::uuid, 1 + (n + k) % 5, 'A review of book ' || n || ', number ' || k, 'reader' || (n + k) % 97
FROM generate_series(1, :books) n, generate_series(1, 4) k WHERE k <= n % 5;
ANALYZE;
