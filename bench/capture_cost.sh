#!/usr/bin/env bash
# What the capture triggers cost the application's writes, measured inside Postgres (no client
# round trip): on copies of the reference catalog with nothing installed, with the delete capture
# (`pg2es delete-capture install`) and with the write capture too (`install --writes`), each of
#   - N single-row statements: film title updates, link inserts, person renames (one statement
#     each, so statement-level triggers fire once per row), in microseconds per statement;
#   - one statement over many rows: an update of every film, in milliseconds.
# Rounds alternate the three setups; the medians are printed as one JSON line.
# Usage: bench/capture_cost.sh [N] [ROUNDS]   (local stack, release build of pg2es)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${1:-2000}
rounds=${2:-3}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-123qwe}
setups=(none deletes writes)
cleanup() {
  for s in "${setups[@]}"; do psql -X -q -d postgres -c "DROP DATABASE IF EXISTS bench_capture_$s WITH (FORCE)" 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup
for s in "${setups[@]}"; do
  db=bench_capture_$s
  psql -X -q -d postgres -c "CREATE DATABASE $db TEMPLATE movies_ref"
  dsn="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$db"
  case $s in
    deletes) PG_DSN=$dsn target/release/pg2es delete-capture install >/dev/null ;;
    writes) PG_DSN=$dsn target/release/pg2es delete-capture install --writes >/dev/null ;;
  esac
done

# One round on one setup: the four figures as a JSON object. Each loop runs its statements through
# EXECUTE, each its own statement; the log is emptied before each round so it does not grow.
measure() {
  psql -X -At -d "bench_capture_$1" -v n="$n" <<'SQL'
DO $$ BEGIN IF to_regclass('pg2es.changes') IS NOT NULL THEN TRUNCATE pg2es.changes; END IF; END $$;
CREATE TEMP TABLE ids AS SELECT row_number() OVER (ORDER BY id) - 1 AS n, id FROM content.film_work;
CREATE TEMP TABLE people AS SELECT row_number() OVER (ORDER BY p.id) - 1 AS n, p.id FROM content.person p
  WHERE EXISTS (SELECT 1 FROM content.person_film_work l WHERE l.person_id = p.id);
CREATE TEMP TABLE out (k text, v double precision);
DO $$
DECLARE
  n int := current_setting('bench.n')::int; films int; persons int; t timestamptz; f uuid; p uuid;
BEGIN
  SELECT count(*) INTO films FROM ids; SELECT count(*) INTO persons FROM people;
  t := clock_timestamp();
  FOR i IN 0 .. n - 1 LOOP
    SELECT id INTO f FROM ids WHERE ids.n = i % films;
    EXECUTE 'UPDATE content.film_work SET title = title || $2 WHERE id = $1' USING f, '';
  END LOOP;
  INSERT INTO out VALUES ('film_update_us', extract(epoch FROM clock_timestamp() - t) * 1e6 / n);
  t := clock_timestamp();
  FOR i IN 0 .. n - 1 LOOP
    SELECT id INTO f FROM ids WHERE ids.n = i % films;
    SELECT id INTO p FROM people WHERE people.n = i % persons;
    EXECUTE 'INSERT INTO content.person_film_work (id, film_work_id, person_id, role, created_at, updated_at) VALUES (gen_random_uuid(), $1, $2, ''bench'', now(), now())' USING f, p;
  END LOOP;
  INSERT INTO out VALUES ('link_insert_us', extract(epoch FROM clock_timestamp() - t) * 1e6 / n);
  t := clock_timestamp();
  FOR i IN 0 .. n / 10 - 1 LOOP
    SELECT id INTO p FROM people WHERE people.n = i % persons;
    EXECUTE 'UPDATE content.person SET full_name = full_name || $2 WHERE id = $1' USING p, '';
  END LOOP;
  INSERT INTO out VALUES ('person_rename_us', extract(epoch FROM clock_timestamp() - t) * 1e6 / (n / 10));
  t := clock_timestamp();
  UPDATE content.film_work SET title = title || '';
  INSERT INTO out VALUES ('all_films_update_ms', extract(epoch FROM clock_timestamp() - t) * 1e3);
  DELETE FROM content.person_film_work WHERE role = 'bench';
END $$;
SELECT json_object_agg(k, round(v::numeric, 1)) FROM out;
SQL
}

results=()
for r in $(seq "$rounds"); do
  for s in "${setups[@]}"; do
    line=$(PGOPTIONS="-c bench.n=$n" measure "$s" | tail -n 1)
    results+=("{\"setup\":\"$s\",\"round\":$r,\"figures\":$line}")
    echo "capture cost: round $r $s $line" >&2
  done
done
version=$(psql -X -At -d postgres -c "SHOW server_version" | cut -d' ' -f1)
printf '%s\n' "${results[@]}" | jq -s --argjson n "$n" --argjson rounds "$rounds" --arg version "$version" '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  { statements: $n, rounds: $rounds, postgres: $version,
    setups: (group_by(.setup) | map({ key: .[0].setup, value: (map(.figures) as $f | ($f[0] | keys) | map({ key: ., value: ([$f[][.]] | median) }) | from_entries) }) | from_entries) }'
