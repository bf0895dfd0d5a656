-- Reference data of the bookshop catalog: 15 publishers, 60 authors, 300 books, their authors
-- and reviews. Deterministic (generate_series, ids from md5 of a fixed text, no random()), so
-- every load gives the same rows and tests can expect exact documents. Assumes empty tables.
--
-- Edge cases on purpose (each one named below where it is made):
--   publishers: a name 'N/A', countries blank, ' n/a ' and null
--   authors:    author 60 has the same name as author 37 (two people, one name); author 59 is
--               'N/A', author 58 blank; some born null
--   books:      a Russian title, a padded title (kept as stored), titles 'N/A', '' and '   ';
--               isbn 'N/A', '' or null; pages, price, published null; 12 books without a
--               publisher; 8 books without authors; book 228 has both authors named alike
--   reviews:    0-4 per book; rating null, body 'N/A' or blank, reviewer ' n/a ' or blank
BEGIN;

INSERT INTO bookshop.publisher (id, name, country)
SELECT md5('bookshop/publisher/' || n)::uuid,
       CASE WHEN n = 15 THEN 'N/A'
            ELSE (ARRAY['Northwind Press', 'Blue Harbor', 'Granite House', 'Lantern Books',
                        'Quill & Ink', 'Seven Hills', 'Old Mill', 'Paper Crane', 'Red Fern',
                        'Silver Birch', 'Tidewater', 'Juniper', 'Ostrov', 'Meridian'])[n]
       END,
       CASE n WHEN 12 THEN ' n/a ' WHEN 13 THEN '' WHEN 14 THEN NULL
              ELSE (ARRAY['GB', 'US', 'DE', 'FR', 'RU'])[1 + n % 5]
       END
FROM generate_series(1, 15) AS n;

INSERT INTO bookshop.author (id, name, born)
SELECT md5('bookshop/author/' || n)::uuid,
       CASE n WHEN 58 THEN '   ' WHEN 59 THEN 'N/A'
              WHEN 60 THEN 'Mary Walker'  -- the name of author 37 ((37 - 1) % 12 = 0, (37 - 1) / 12 = 3)
              ELSE (ARRAY['Mary', 'John', 'Olga', 'Pierre', 'Anna', 'Tom', 'Ivan', 'Lucy',
                          'Hans', 'Sofia', 'Mark', 'Elena'])[1 + (n - 1) % 12]
                   || ' ' ||
                   (ARRAY['Smith', 'Petrova', 'Dubois', 'Walker', 'Keller'])[1 + (n - 1) / 12]
       END,
       CASE WHEN n % 10 = 0 THEN NULL ELSE 1900 + (n * 7) % 100 END
FROM generate_series(1, 60) AS n;

INSERT INTO bookshop.book (id, title, isbn, pages, price, published, publisher_id)
SELECT md5('bookshop/book/' || n)::uuid,
       CASE n WHEN 5 THEN 'Мастер и Маргарита'
              WHEN 11 THEN '  The Padded Title  '
              WHEN 13 THEN 'N/A'
              WHEN 17 THEN ''
              WHEN 19 THEN '   '
              ELSE (ARRAY['The Silent', 'A Winter', 'The Last', 'Broken', 'The Hidden',
                          'Distant', 'The Red', 'Forgotten', 'The Long', 'Northern',
                          'The Glass', 'Burning', 'The Quiet', 'Wild', 'The Paper'])[1 + n % 15]
                   || ' ' ||
                   (ARRAY['River', 'Garden', 'Harbor', 'Letters', 'Mountain', 'City', 'Orchard',
                          'Voyage', 'Kingdom', 'Lighthouse', 'Forest', 'Summer', 'Bridge',
                          'Island', 'Mirror', 'Road', 'House', 'Sea', 'Winter', 'Song'])[1 + (n / 15) % 20]
       END,
       CASE WHEN n % 23 = 0 THEN 'N/A'
            WHEN n % 29 = 0 THEN ''
            WHEN n % 31 = 0 THEN NULL
            ELSE '978-' || lpad(((n * 7919) % 1000000000)::text, 9, '0') || '-' || (n % 10)
       END,
       CASE WHEN n % 17 = 0 THEN NULL ELSE 96 + (n * 37) % 800 END,
       CASE WHEN n % 19 = 0 THEN NULL ELSE (299 + (n * 613) % 4700) / 100.0 END,
       CASE WHEN n % 37 = 0 THEN NULL ELSE date '1960-01-01' + (n * 131) % 22000 END,
       CASE WHEN n % 25 = 0 THEN NULL ELSE md5('bookshop/publisher/' || (1 + (n * 11) % 15))::uuid END
FROM generate_series(1, 300) AS n;

-- 1-3 authors per book (none when n % 40 = 3), at positions 1.., authors 23 apart.
INSERT INTO bookshop.book_author (id, book_id, author_id, position)
SELECT md5('bookshop/book_author/' || n || '/' || k)::uuid,
       md5('bookshop/book/' || n)::uuid,
       md5('bookshop/author/' || (1 + (n * 7 + (k - 1) * 23) % 60))::uuid,
       k
FROM generate_series(1, 300) AS n,
     generate_series(1, 1 + (n / 7) % 3) AS k
WHERE n % 40 <> 3;

-- 0-4 reviews per book.
INSERT INTO bookshop.review (id, book_id, rating, body, reviewer)
SELECT md5('bookshop/review/' || n || '/' || j)::uuid,
       md5('bookshop/book/' || n)::uuid,
       CASE WHEN (n + j) % 13 = 0 THEN NULL ELSE 1 + (n + j * 3) % 5 END,
       CASE WHEN (n * j) % 11 = 0 THEN 'N/A'
            WHEN (n * j) % 11 = 1 THEN ''
            ELSE (ARRAY['Could not put it down.', 'Slow start, strong ending.', 'Not for me.',
                        'A classic in the making.', 'Beautifully written.', 'Too long by half.',
                        'Read it twice.', 'Прекрасная книга.'])[1 + (n + j) % 8]
       END,
       CASE WHEN (n + j) % 17 = 0 THEN ' n/a '
            WHEN (n + j) % 19 = 0 THEN '   '
            ELSE (ARRAY['reader42', 'Kate B.', 'bookworm', 'J. Doe', 'Nikolai', 'anon'])[1 + (n * j) % 6]
       END
FROM generate_series(1, 300) AS n,
     generate_series(1, (n * 7) % 5) AS j;

COMMIT;
