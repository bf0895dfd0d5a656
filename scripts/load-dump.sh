#!/usr/bin/env bash
# Creates database DB (default movies) with the catalog schema and the reference dataset, from
# scratch. Also keeps a template copy (DB_ref) that tests clone with CREATE DATABASE ... TEMPLATE.
# Usage: scripts/load-dump.sh [DB]   (server from PGHOST/PGPORT/PGUSER/PGPASSWORD, local stack by default)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
db=${1:-movies}
dump=${DUMP_FILE:-$root/../shared/fixtures/movies/movies_db_dump.sql}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-123qwe}

[ -r "$dump" ] || { echo "load-dump: cannot read $dump (set DUMP_FILE)" >&2; exit 1; }
psql_q() { psql -v ON_ERROR_STOP=1 -q -X "$@"; }

for target in "$db" "${db}_ref"; do
  if [ -n "$(psql -X -At -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$target'")" ]; then
    # A replication slot (PG2ES_SOURCE=replication) keeps its database from being dropped.
    psql_q -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$target'" >/dev/null
    psql_q -d postgres -c "ALTER DATABASE \"$target\" WITH IS_TEMPLATE false"
    psql_q -d postgres -c "DROP DATABASE \"$target\" WITH (FORCE)"
  fi
  psql_q -d postgres -c "CREATE DATABASE \"$target\""
  psql_q -d "$target" -f "$root/sql/schema.sql"
  psql_q -d "$target" -f "$dump" >/dev/null
done
psql_q -d postgres -c "ALTER DATABASE \"${db}_ref\" WITH IS_TEMPLATE true"
counts=$(psql -X -At -d "$db" -c "SELECT (SELECT count(*) FROM content.film_work) || ' films, ' || (SELECT count(*) FROM content.genre) || ' genres, ' || (SELECT count(*) FROM content.person) || ' persons, ' || (SELECT count(*) FROM content.genre_film_work) + (SELECT count(*) FROM content.person_film_work) || ' links'")
echo "load-dump: database $db loaded: $counts (template ${db}_ref)"
