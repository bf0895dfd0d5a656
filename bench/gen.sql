-- A synthetic catalog of :n films in the shape of the reference dataset, generated server-side.
-- Run by bench/gen.sh on a fresh database that already has sql/schema.sql:
--   psql -v n=10000 -v seed=42 -f bench/gen.sql
-- Every value is a hash of (seed, tag, row number), so the same n and seed give the same rows.
--
-- Shape (reference: 999 films, 26 genres, 2231 genre links, 5783 person links, 4166 persons):
--   26 genres; 1-4 genres per film (mean 2.2); 2-10 person links per film (mean 5.8), roles
--   actor/director/writer 59/14/27 %; persons = regular links / 1.4, each in 1 or 2 films;
--   titles 2-5 words, descriptions ~200 chars (25 % NULL), 10 % of titles, descriptions and
--   names Cyrillic; ratings 0-10 (2 % NULL). One known person, the fan-out person
--   f0f0f0f0-0000-4000-8000-000000000001, is an actor in films 1..min(10000, n).
\set ON_ERROR_STOP on
SET synchronous_commit = off;
SET jit = off;
-- Foreign-key triggers off while loading: the rows are consistent by construction.
SET session_replication_role = replica;

-- Secondary indexes are built after the load (bench/gen.sh re-runs sql/schema.sql).
DO $$
DECLARE idx regclass;
BEGIN
    FOR idx IN
        SELECT i.indexrelid::regclass FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
        WHERE t.relnamespace = 'content'::regnamespace
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
    LOOP
        EXECUTE format('DROP INDEX %s', idx);
    END LOOP;
END $$;

DROP SCHEMA IF EXISTS bench_gen CASCADE;
CREATE SCHEMA bench_gen;

-- u(tag, n): uniform in [0, 1). id(tag, n): a uuid; tags 1 genre, 2 film, 3 genre link, 4 person,
-- 5 person link, 6 fan-out link. Both fixed by the seed, written into the body as a literal.
SELECT format($f$
CREATE FUNCTION bench_gen.u(tag int, n bigint) RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS 'SELECT ((hashint8extended(n, %1$s::bigint * 1000 + tag) >> 11) & 9007199254740991)::float8 / 9007199254740992.0';
$f$, :seed) \gexec
SELECT format($f$
CREATE FUNCTION bench_gen.id(tag int, n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS 'SELECT encode(int8send(hashint8extended(n, %1$s::bigint * 1000 + 500 + tag)) || int8send(hashint8extended(n, %1$s::bigint * 1000 + 900 + tag)), ''hex'')::uuid';
$f$, :seed) \gexec

CREATE FUNCTION bench_gen.pick(words text[], x float8) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS 'SELECT words[1 + floor(x * cardinality(words))::int]';

CREATE TABLE bench_gen.words (lang text PRIMARY KEY, title text[], body text[], first_name text[], last_name text[]);
INSERT INTO bench_gen.words VALUES
('en',
 '{star,night,return,last,city,dark,river,secret,war,love,lost,empire,shadow,king,ghost,road,storm,winter,blood,dream,
   silent,hidden,golden,broken,wild,final,crimson,iron,glass,paper,moon,sun,ocean,forest,house,garden,machine,signal,
   stranger,kingdom,journey,escape,legacy,promise,code,game,island,mountain,fire,heart}',
 '{the,a,of,and,to,in,young,man,woman,family,finds,must,after,before,when,world,life,new,old,friend,town,years,
   secret,past,story,war,love,team,mission,against,discovers,journey,home,city,small,dangerous,mysterious,father,
   mother,daughter,son,brother,sister,detective,agent,police,crew,ship,planet,earth,future,time,power,truth,
   murder,escape,survive,fight,save,return,begin,change,forever,between,during,where,while,his,her,their,only,
   ancient,strange,deadly,last,first,group,school,night,dark,light,music,dream,game,hunt,island,kingdom}',
 '{James,Mary,John,Patricia,Robert,Jennifer,Michael,Linda,William,Elizabeth,David,Barbara,Richard,Susan,Joseph,
   Jessica,Thomas,Sarah,Charles,Karen,Daniel,Nancy,Matthew,Lisa,Anthony,Betty,Mark,Margaret,Steven,Emily,Paul,
   Laura,Andrew,Kimberly,Joshua,Deborah,Kevin,Helen,Brian,Carol}',
 '{Smith,Johnson,Williams,Brown,Jones,Garcia,Miller,Davis,Rodriguez,Martinez,Hernandez,Lopez,Gonzalez,Wilson,
   Anderson,Thomas,Taylor,Moore,Jackson,Martin,Lee,Perez,Thompson,White,Harris,Sanchez,Clark,Ramirez,Lewis,
   Robinson,Walker,Young,Allen,King,Wright,Scott,Torres,Nguyen,Hill,Flores,Green,Adams,Nelson,Baker,Hall,Rivera,
   Campbell,Mitchell,Carter,Roberts,Fisher,Hamill,Ford,Lucas,Kershner,Cushing,Spielberg,Nolan,Kubrick,Scorsese}'),
('ru',
 '{звезда,ночь,возвращение,последний,город,тёмный,река,тайна,война,любовь,империя,тень,король,призрак,дорога,
   буря,зима,мечта,тихий,золотой,дикий,луна,солнце,океан,лес,дом,сад,машина,странник,царство,путешествие,побег}',
 '{и,в,не,на,он,она,они,молодой,человек,женщина,семья,находит,должен,после,перед,когда,мир,жизнь,новый,старый,
   друг,город,годы,тайна,прошлое,история,война,любовь,команда,миссия,против,открывает,путь,дом,опасный,отец,мать,
   дочь,сын,брат,сестра,сыщик,корабль,планета,земля,будущее,время,сила,правда,спасти,вернуться,навсегда,ночь}',
 '{Александр,Мария,Дмитрий,Анна,Сергей,Елена,Андрей,Ольга,Михаил,Наталья,Иван,Татьяна,Алексей,Ирина,Никита}',
 '{Иванов,Смирнова,Кузнецов,Попова,Васильев,Петрова,Соколов,Михайлова,Новиков,Фёдорова,Морозов,Волкова,Алексеев,
   Лебедева,Семёнов,Егорова,Павлов,Козлова,Степанов,Николаева}');

-- Description text: two phrases of 10-22 words out of 4096 per language (~200 chars together).
-- A join is cheap; slicing or assembling long strings row by row in SQL is not.
CREATE TABLE bench_gen.phrase (lang text, i int, body text, PRIMARY KEY (lang, i));
INSERT INTO bench_gen.phrase
SELECT w.lang, i, array_to_string(ARRAY(SELECT bench_gen.pick(w.body, bench_gen.u(2, i * 32 + k))
                                        FROM generate_series(1, 10 + floor(bench_gen.u(1, i) * 13)::int) k), ' ')
FROM bench_gen.words w, generate_series(0, 4095) i;
ANALYZE bench_gen.phrase;

SELECT least(10000, :n) AS fanout \gset

INSERT INTO content.genre (id, name, description, created_at, updated_at)
SELECT bench_gen.id(1, i), name, CASE WHEN i % 3 = 0 THEN NULL ELSE name || ' films' END,
       '2019-12-01 00:00:00+00'::timestamptz + i * interval '1 minute', '2019-12-01 00:00:00+00'::timestamptz + i * interval '1 minute'
FROM unnest('{Action,Adventure,Fantasy,Sci-Fi,Drama,Music,Romance,Thriller,Mystery,Comedy,Animation,Family,Biography,
              Musical,Crime,Short,Western,Documentary,History,War,Game-Show,Reality-TV,Horror,Sport,Talk-Show,News}'::text[])
     WITH ORDINALITY AS g(name, i);

INSERT INTO content.film_work (id, title, description, creation_date, rating, type, created_at, updated_at)
SELECT bench_gen.id(2, n),
       initcap(array_to_string(ARRAY(SELECT bench_gen.pick(w.title, bench_gen.u(10 + k, n))
                                     FROM generate_series(1, 2 + floor(bench_gen.u(11, n) * 4)::int) k), ' ')),
       CASE WHEN bench_gen.u(12, n) < 0.25 THEN NULL ELSE initcap(left(a.body, 1)) || substr(a.body, 2) || ' ' || b.body END,
       CASE WHEN bench_gen.u(15, n) < 0.05 THEN NULL ELSE '1950-01-01 00:00:00+00'::timestamptz + bench_gen.u(16, n) * interval '27000 days' END,
       CASE WHEN bench_gen.u(17, n) < 0.02 THEN NULL ELSE round(((bench_gen.u(18, n) + bench_gen.u(19, n)) * 5)::numeric, 1)::float8 END,
       'movie',
       '2020-01-01 00:00:00+00'::timestamptz + n * interval '1 second',
       '2020-01-01 00:00:00+00'::timestamptz + n * interval '1 second'
FROM (SELECT n, CASE WHEN bench_gen.u(9, n) < 0.1 THEN 'ru' ELSE 'en' END AS lang FROM generate_series(1, :n) n) f
JOIN bench_gen.words w ON w.lang = f.lang
JOIN bench_gen.phrase a ON a.lang = f.lang AND a.i = floor(bench_gen.u(13, n) * 4096)::int
JOIN bench_gen.phrase b ON b.lang = f.lang AND b.i = floor(bench_gen.u(14, n) * 4096)::int;

-- Genres: 1-4 distinct ones per film (odd stride other than 13 never repeats within 4 steps of 26).
INSERT INTO content.genre_film_work (id, genre_id, film_work_id, created_at, updated_at)
SELECT bench_gen.id(3, n * 4 + j), bench_gen.id(1, 1 + (g0 + j * stride) % 26), bench_gen.id(2, n), ts, ts
FROM (SELECT n, floor(bench_gen.u(20, n) * 26)::int AS g0,
             ('{1,3,5,7,9,11,15,17,19,21,23,25}'::int[])[1 + floor(bench_gen.u(21, n) * 12)::int] AS stride,
             CASE WHEN bench_gen.u(22, n) < 0.25 THEN 1 WHEN bench_gen.u(22, n) < 0.65 THEN 2 WHEN bench_gen.u(22, n) < 0.9 THEN 3 ELSE 4 END AS genres,
             '2020-06-01 00:00:00+00'::timestamptz + n * interval '1 second' AS ts
      FROM generate_series(1, :n) n) f,
     generate_series(0, genres - 1) j;

-- Person links: each film has 2-10 (mean 5.8); in films 1..fanout one of them is the fan-out
-- person, the rest are regular links, numbered globally so persons can be dealt out evenly.
CREATE TEMP TABLE plan AS
SELECT n, regular, sum(regular) OVER (ORDER BY n) - regular AS first_link
FROM (SELECT n, 2 + floor(bench_gen.u(30, n) * 8.6)::int - (n <= :fanout)::int AS regular FROM generate_series(1, :n) n) s;
SELECT sum(regular) AS regular_links FROM plan \gset
-- Persons = links / 1.4; link m goes to person (m * 1000003) mod persons, a bijection on every
-- run of `persons` consecutive links, so each person is in 1 or 2 films.
SELECT p + (p % 1000003 = 0)::int AS persons FROM (SELECT greatest(1, round(:regular_links / 1.4))::bigint AS p) s \gset

INSERT INTO content.person (id, full_name, created_at, updated_at)
SELECT bench_gen.id(4, i),
       bench_gen.pick(w.first_name, bench_gen.u(32, i)) || ' ' || bench_gen.pick(w.last_name, bench_gen.u(33, i)),
       '2020-03-01 00:00:00+00'::timestamptz + i * interval '100 milliseconds',
       '2020-03-01 00:00:00+00'::timestamptz + i * interval '100 milliseconds'
FROM generate_series(0, :persons - 1) i
JOIN bench_gen.words w ON w.lang = CASE WHEN bench_gen.u(31, i) < 0.1 THEN 'ru' ELSE 'en' END;
INSERT INTO content.person (id, full_name, created_at, updated_at)
VALUES ('f0f0f0f0-0000-4000-8000-000000000001', 'Fanout Person', '2020-03-01 00:00:00+00', '2020-03-01 00:00:00+00');

INSERT INTO content.person_film_work (id, film_work_id, person_id, role, created_at, updated_at)
SELECT bench_gen.id(5, m), bench_gen.id(2, n), bench_gen.id(4, (m * 1000003) % :persons),
       CASE WHEN r < 0.588 THEN 'actor' WHEN r < 0.730 THEN 'director' ELSE 'writer' END,
       '2020-09-01 00:00:00+00'::timestamptz + m * interval '100 milliseconds',
       '2020-09-01 00:00:00+00'::timestamptz + m * interval '100 milliseconds'
FROM plan, generate_series(first_link, first_link + regular - 1) m, bench_gen.u(34, m) r;
INSERT INTO content.person_film_work (id, film_work_id, person_id, role, created_at, updated_at)
SELECT bench_gen.id(6, n), bench_gen.id(2, n), 'f0f0f0f0-0000-4000-8000-000000000001', 'actor',
       '2020-12-01 00:00:00+00'::timestamptz + n * interval '1 second', '2020-12-01 00:00:00+00'::timestamptz + n * interval '1 second'
FROM generate_series(1, :fanout) n;

DROP SCHEMA bench_gen CASCADE;
