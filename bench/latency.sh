#!/usr/bin/env bash
# Commit-to-stored latency of pg2es in continuous mode: N single-film updates, one at a time,
# each timed from its commit until a realtime GET of the document shows it (no refresh needed).
# The three documents of the cinema run (movies, genres, persons; ES_INDEX_PREFIX keeps their
# indexes apart); the film's movies document is timed. PG2ES_BIN: the build to time (another
# release, for an A/B), default target/release/pg2es.
# Usage: bench/latency.sh [polling|replication] [N]   (local stack; prints one JSON line)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source_kind=${1:-replication}
n=${2:-20}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-123qwe}
es=${ES_URL:-http://127.0.0.1:9200}
db=bench_latency_$source_kind
index=$db
bin=${PG2ES_BIN:-target/release/pg2es}
cleanup() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  psql -X -q -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$db'" >/dev/null 2>&1 || true
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true
  for i in "$index" "${db}_genres" "${db}_persons"; do curl -s -o /dev/null -XDELETE "$es/$i"; done
  rm -rf "${dir:-}"
}
trap cleanup EXIT
cleanup
dir=$(mktemp -d)
psql -X -q -d postgres -c "CREATE DATABASE $db TEMPLATE movies_ref"
curl -s -o /dev/null -XDELETE "$es/$index"
PG_DSN="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$db" ES_URL=$es ES_INDEX=$index ES_INDEX_PREFIX="${db}_" PG2ES_SOURCE=$source_kind \
  ETL_CYCLE_SEC=0.2 ETL_STATE_FILE=$dir/state.json ETL_DEAD_LETTER_FILE=$dir/dead.jsonl LOG_FORMAT=json \
  "$bin" run 2>"$dir/pg2es.log" &
pid=$!
cycles() { grep '"cycle done"' "$dir/pg2es.log" | grep -o '"document":"[a-z]*"' | sort -u | wc -l; }
for _ in $(seq 600); do [ "$(cycles)" -ge 3 ] && break; sleep 0.1; done
[ "$(cycles)" -ge 3 ] || { echo "latency: the three documents did not each finish a cycle in 60 s:" >&2; tail -n 5 "$dir/pg2es.log" >&2; exit 1; }
sleep 1
ids=$(psql -X -At -d "$db" -c "SELECT id FROM content.film_work ORDER BY id LIMIT $n")
times=()
i=0
for id in $ids; do
  i=$((i + 1))
  title="latency $i $RANDOM"
  psql -X -q -d "$db" -c "UPDATE content.film_work SET title = '$title', updated_at = now() WHERE id = '$id'"
  start=$(date +%s%N)
  for _ in $(seq 1000); do
    doc=$(curl -s "$es/$index/_doc/$id") || true
    [[ $doc == *"\"$title\""* ]] && break
    sleep 0.01
  done
  times+=($(( ($(date +%s%N) - start) / 1000000 )))
  sleep 0.3
done
printf '%s\n' "${times[@]}" | sort -n | awk -v kind="$source_kind" '{ a[NR] = $1 } END {
  printf "{\"source\":\"%s\",\"samples\":%d,\"p50_ms\":%d,\"p90_ms\":%d,\"max_ms\":%d}\n", kind, NR, a[int((NR + 1) / 2)], a[int(NR * 0.9 + 0.5)], a[NR] }'
