#!/usr/bin/env bash
# Creates database bench_<N> (dropped first if present) with sql/schema.sql and a synthetic
# catalog of N films (bench/gen.sql), the same rows for the same N and SEED, then prints counts.
# Usage: bench/gen.sh N [SEED]   (server from PGHOST/PGPORT/PGUSER/PGPASSWORD, local stack by default)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:?usage: bench/gen.sh N [SEED]}
seed=${2:-42}
[[ $n =~ ^[1-9][0-9]*$ && $seed =~ ^[0-9]+$ ]] || { echo "gen: N and SEED must be whole numbers (N > 0)" >&2; exit 2; }
db=bench_$n
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-123qwe}
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
psql_q() { psql -v ON_ERROR_STOP=1 -q -X "$@"; }

started=$(date +%s)
psql_q -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
psql_q -d "$db" -f "$root/sql/schema.sql"
psql_q -d "$db" -v n="$n" -v seed="$seed" -f "$root/bench/gen.sql"
# The indexes gen.sql dropped before loading are built once, on the full tables.
psql_q -d "$db" -f "$root/sql/schema.sql"
psql_q -d "$db" -c "VACUUM ANALYZE"
psql -X -At -d "$db" -F ' ' <<'SQL' | while read -r films genres persons gfw pfw a d w fan; do
SELECT (SELECT count(*) FROM content.film_work), (SELECT count(*) FROM content.genre), (SELECT count(*) FROM content.person),
       (SELECT count(*) FROM content.genre_film_work), (SELECT count(*) FROM content.person_film_work),
       count(*) FILTER (WHERE role = 'actor'), count(*) FILTER (WHERE role = 'director'), count(*) FILTER (WHERE role = 'writer'),
       count(*) FILTER (WHERE person_id = 'f0f0f0f0-0000-4000-8000-000000000001')
FROM content.person_film_work
SQL
  echo "gen: $db (seed $seed) in $(( $(date +%s) - started )) s: $films films, $genres genres, $persons persons," \
       "$gfw genre links, $pfw person links (actor $a, director $d, writer $w); fan-out person in $fan films"
done
