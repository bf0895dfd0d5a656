#!/usr/bin/env bash
# `pg2es verify --repair` at scale: a full load of N films (bench/gen.sh), then drift made by hand
# (1 % of the documents deleted from the index, 1 % of the films changed in Postgres while pg2es
# is not running, 1,000 documents added to the index that Postgres does not have), then
# `verify --repair` under /usr/bin/time, then `verify`, which must find no difference.
# Prints one JSON line: the repair's wall time and peak RSS, what it did, and the verify after.
# Usage: bench/repair.sh [N films]   (local stack; release build of this tree)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${1:-100000}
export ES_URL=${ES_URL:-http://127.0.0.1:9200}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-123qwe}
export ES_SCHEMA_FILE=${ES_SCHEMA_FILE:-$root/../shared/fixtures/movies/es_schema.json}
export LOG_FORMAT=json RUST_LOG=info ETL_BATCH_SIZE=${ETL_BATCH_SIZE:-500}
say() { echo "repair: $*" >&2; }
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
cargo build --release --locked --quiet
dir=bench/out/repair
mkdir -p "$dir"
rm -f "$dir"/state*.json "$dir"/dead*.jsonl
index=bench_repair
export PG_DSN="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_$n" ES_INDEX=$index PG2ES_DOCUMENTS=movies
export ETL_STATE_FILE=$dir/state.json ETL_DEAD_LETTER_FILE=$dir/dead.jsonl
bin=target/release/pg2es

say "catalog of $n films (bench/gen.sh, database bench_$n)"
bench/gen.sh "$n" 42 >&2
curl -s -o /dev/null -XDELETE "$ES_URL/$index?ignore_unavailable=true"
say "full load"
$bin run --once 2>"$dir/load.log" || { say "load failed: $(tail -3 "$dir/load.log")"; exit 1; }
curl -s -o /dev/null -XPOST "$ES_URL/$index/_refresh"

drift=$(( n / 100 ))
say "drift: $drift documents deleted from the index, $drift films changed in postgres, 1000 extra documents"
curl -sf -o /dev/null -XPOST "$ES_URL/$index/_delete_by_query?max_docs=$drift&refresh=true" -H 'Content-Type: application/json' \
  -d '{"query": {"match_all": {}}}'
psql -X -q -v ON_ERROR_STOP=1 -d "bench_$n" -c \
  "UPDATE content.film_work SET title = title || ' (changed)' WHERE id IN (SELECT id FROM content.film_work ORDER BY id DESC LIMIT $drift)"
python3 - "$ES_URL" "$index" <<'PY'
import json, sys, urllib.request, uuid
url, index = sys.argv[1], sys.argv[2]
lines = []
for i in range(1000):
    lines.append(json.dumps({"index": {"_index": index, "_id": str(uuid.UUID(int=(7 << 124) + i))}}))
    lines.append(json.dumps({"id": "x", "title": "not in postgres"}))
req = urllib.request.Request(f"{url}/_bulk?refresh=true", data=("\n".join(lines) + "\n").encode(), headers={"Content-Type": "application/x-ndjson"})
answer = json.load(urllib.request.urlopen(req))
assert not answer["errors"], answer
PY

say "verify --repair"
t0=$(date +%s.%N)
status=0
/usr/bin/time -v -o "$dir/repair.time" $bin verify --repair >"$dir/repair.out" 2>"$dir/repair.log" || status=$?
t1=$(date +%s.%N)
rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/repair.time")
curl -s -o /dev/null -XPOST "$ES_URL/$index/_refresh"
after=0
$bin verify >"$dir/verify.out" 2>"$dir/verify.log" || after=$?
docs=$(curl -s "$ES_URL/$index/_count" | jq .count)
jq -n --argjson films "$n" --argjson drift "$drift" --argjson status "$status" --argjson after "$after" --argjson docs "$docs" \
  --argjson wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" --argjson rss "$rss" --arg said "$(tail -2 "$dir/repair.out" "$dir/repair.log" | tr '\n' ' ' | cut -c1-400)" \
  '{films: $films, drift_each: $drift, repair_exit: $status, repair_wall_sec: $wall, repair_peak_rss_kb: $rss, verify_after_exit: $after, docs_after: $docs, said: $said}'
curl -s -o /dev/null -XDELETE "$ES_URL/$index?ignore_unavailable=true"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS bench_$n WITH (FORCE)"
