-- The library's reference data (assumes empty tables). Ids are md5('library/<table>/<n>')::uuid,
-- so tests name rows by number.
--   book 1  Dune, subtitle 'Deluxe Edition': shelf 'A1' (padded to 6), tags {sf,classic}; loans 1 (Ada, open), 2 (Bea,
--           returned), 3 (Cyril, late, 4 weeks)
--   book 2  Emma: is_deleted (no document)
--   book 3  Ulysses: deleted_at set (no document)
--   book 4  Beloved: no shelf, tags {}; loans 4 (Ada, lost), 5 (Dora, late, 3 weeks)
--   book 5  Middlemarch: tags NULL; loan 6 (Bea, returned)
INSERT INTO library.member (id, name) VALUES
    (md5('library/member/1')::uuid, 'Ada'),
    (md5('library/member/2')::uuid, 'Bea'),
    (md5('library/member/3')::uuid, 'Cyril'),
    (md5('library/member/4')::uuid, 'Dora');

INSERT INTO library.book (id, title, shelf, tags, is_deleted, deleted_at) VALUES
    (md5('library/book/1')::uuid, 'Dune', 'A1', '{sf,classic}', false, NULL),
    (md5('library/book/2')::uuid, 'Emma', 'B2', '{classic}', true, NULL),
    (md5('library/book/3')::uuid, 'Ulysses', 'C3', '{}', false, '2024-05-01 12:00:00+00'),
    (md5('library/book/4')::uuid, 'Beloved', NULL, '{}', false, NULL),
    (md5('library/book/5')::uuid, 'Middlemarch', 'E5', NULL, false, NULL);

INSERT INTO library.loan (id, book_id, member_id, returned, state, weeks) VALUES
    (md5('library/loan/1')::uuid, md5('library/book/1')::uuid, md5('library/member/1')::uuid, false, 'open', 2),
    (md5('library/loan/2')::uuid, md5('library/book/1')::uuid, md5('library/member/2')::uuid, true, 'open', 2),
    (md5('library/loan/3')::uuid, md5('library/book/1')::uuid, md5('library/member/3')::uuid, false, 'late', 4),
    (md5('library/loan/4')::uuid, md5('library/book/4')::uuid, md5('library/member/1')::uuid, false, 'lost', 2),
    (md5('library/loan/5')::uuid, md5('library/book/4')::uuid, md5('library/member/4')::uuid, false, 'late', 3),
    (md5('library/loan/6')::uuid, md5('library/book/5')::uuid, md5('library/member/2')::uuid, true, 'open', 2);

UPDATE library.book SET subtitle = 'Deluxe Edition' WHERE id = md5('library/book/1')::uuid;
