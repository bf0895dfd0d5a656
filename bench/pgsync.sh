#!/usr/bin/env bash
# PGSync, a peer, on the same catalog: one full sync of database bench_<N> into a fresh index
# bench_<N>_pgsync made from es_schema.json, its documents shaped like pg2es's by
# bench/pgsync/plugins (same batch size as pg2es, 1 bulk request in flight). Prints one JSON line
# (docs/s, peak RSS, CPU, how many sampled documents equal pg2es's in bench_<N>_pg2es).
# Installs PGSync into bench/.venv and Redis from Debian (run on 127.0.0.1:$BENCH_REDIS_PORT for
# this script only) when they are missing.
# Usage: bench/pgsync.sh N DIR   (after bench/run.sh's full load of N: bench_<N> and bench_<N>_pg2es exist)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-123qwe}
ES_URL=${ES_URL:-http://127.0.0.1:9200}
ES_SCHEMA_FILE=${ES_SCHEMA_FILE:-$root/../shared/fixtures/movies/es_schema.json}
ETL_BATCH_SIZE=${ETL_BATCH_SIZE:-500}
n=${1:?usage: bench/pgsync.sh N DIR}
dir=$(cd "${2:?usage: bench/pgsync.sh N DIR}" && pwd)
db=bench_$n index=bench_${n}_pgsync
redis_port=${BENCH_REDIS_PORT:-6391}
venv=$root/bench/.venv
fail() { jq -nc --arg e "$*" '{error: $e}'; exit 1; }

if [ ! -x "$venv/bin/pgsync" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q pgsync >&2 || fail "pip install pgsync failed"
fi
command -v redis-server >/dev/null || apt-get install -y -qq redis-server >&2 || fail "apt-get install redis-server failed"

redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2 || fail "redis-server did not start"
stop() {
  [ -s "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  # A logical replication slot left behind would keep WAL on the shared server for ever.
  psql -X -q -At -d "$db" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database()" >/dev/null 2>&1 || true
}
trap stop EXIT

sed -e "s/@DATABASE@/$db/" -e "s/@INDEX@/$index/" "$root/bench/pgsync/schema.json.in" >"$dir/pgsync-schema.json"
curl -s -o /dev/null -XDELETE "$ES_URL/$index"
curl -sf -o /dev/null -XPUT "$ES_URL/$index" -H 'content-type: application/json' --data-binary @"$ES_SCHEMA_FILE" \
  || fail "cannot create index $index"

export PYTHONPATH=$root/bench/pgsync PG_HOST=$PGHOST PG_PORT=$PGPORT PG_USER=$PGUSER PG_PASSWORD=$PGPASSWORD
export ELASTICSEARCH_URL=$ES_URL REDIS_HOST=127.0.0.1 REDIS_PORT=$redis_port CHECKPOINT_PATH=$dir
export ELASTICSEARCH_CHUNK_SIZE=$ETL_BATCH_SIZE ELASTICSEARCH_THREAD_COUNT=${ES_BULK_CONCURRENCY:-2} ELASTICSEARCH_QUEUE_SIZE=${ES_BULK_CONCURRENCY:-2}
cd "$dir"
"$venv/bin/bootstrap" --config "$dir/pgsync-schema.json" >"$dir/pgsync-bootstrap.log" 2>&1 \
  || fail "pgsync bootstrap failed: $(tail -c 300 "$dir/pgsync-bootstrap.log" | tr '\n' ' ')"
started=$(date +%s.%N)
/usr/bin/time -v -o "$dir/pgsync.time" "$venv/bin/pgsync" --config "$dir/pgsync-schema.json" >"$dir/pgsync-run.log" 2>&1 \
  || fail "pgsync failed: $(tail -c 300 "$dir/pgsync-run.log" | tr '\n' ' ')"
wall=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')

curl -sf -o /dev/null -XPOST "$ES_URL/$index/_refresh"
docs=$(curl -sf "$ES_URL/$index/_count" | jq .count)
[ "$docs" = "$n" ] || fail "pgsync indexed $docs documents for $n films (see $dir/pgsync-run.log)"
# The same 500 films from both indices, compared field by field.
same=$(python3 - "$ES_URL" "$index" "bench_${n}_pg2es" <<'PY'
import json, sys, urllib.request
url, mine, theirs = sys.argv[1:]
def docs(index):
    body = json.dumps({"size": 500, "sort": [{"id": "asc"}], "query": {"match_all": {}}}).encode()
    req = urllib.request.Request(f"{url}/{index}/_search", body, {"content-type": "application/json"})
    return {h["_id"]: h["_source"] for h in json.load(urllib.request.urlopen(req))["hits"]["hits"]}
a, b = docs(mine), docs(theirs)
print(sum(1 for k, v in a.items() if b.get(k) == v))
PY
)
rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/pgsync.time")
cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$dir/pgsync.time")
jq -nc --argjson docs "$docs" --argjson wall "$wall" --argjson rss "$rss" --argjson cpu "$cpu" --argjson same "$same" \
  --arg version "$("$venv/bin/pip" show pgsync | awk '/^Version/ {print $2}')" \
  '{version: $version, docs: $docs, wall_sec: $wall, docs_per_sec: ($docs / $wall), peak_rss_kb: $rss, cpu_sec: $cpu,
    sample: 500, sample_equal_to_pg2es: $same}'
