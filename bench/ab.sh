#!/usr/bin/env bash
# A/B of the full load: this tree's pg2es against another build (BENCH_BASE_BIN, for example the
# release before definitions built in a worktree), on the same synthetic catalog, alternating
# A and B for BENCH_AB_ROUNDS rounds (default 3) so that both see the same machine. Then the
# bookshop's full load rate on a scaled copy of its catalog (bench/gen_bookshop.sql).
# Writes bench/out/ab.json; prints a summary. Usage: BENCH_BASE_BIN=... bench/ab.sh [N films]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=bench/out
export ES_URL=${ES_URL:-http://127.0.0.1:9200}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-123qwe}
export ES_SCHEMA_FILE=${ES_SCHEMA_FILE:-$root/../shared/fixtures/movies/es_schema.json}
export LOG_FORMAT=json RUST_LOG=info ETL_BATCH_SIZE=${ETL_BATCH_SIZE:-500}
n=${1:-100000}
rounds=${BENCH_AB_ROUNDS:-3}
books=${BENCH_BOOKS:-$n}
base=${BENCH_BASE_BIN:?set BENCH_BASE_BIN to the pg2es binary to compare with}
say() { echo "ab: $*" >&2; }
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
cargo build --release --locked --quiet
mkdir -p "$out/ab"
dir=$out/ab

say "catalog of $n films (bench/gen.sh, database bench_$n)"
bench/gen.sh "$n" 42 >&2

# load LABEL BINARY NAME INDEXES [ENV...]: a full load by one run into fresh INDEXES (comma-separated;
# ENV says which: ES_INDEX, or ES_INDEX_PREFIX for several documents), state files named NAME; prints one
# JSON line (documents of all INDEXES).
load() {
  local label=$1 bin=$2 name=$3 indexes=$4; shift 4
  curl -s -o /dev/null -XDELETE "$ES_URL/$indexes?ignore_unavailable=true"
  rm -f "$dir/$name-state"*.json
  local t0 t1
  t0=$(date +%s.%N)
  env "$@" ETL_STATE_FILE="$dir/$name-state.json" ETL_DEAD_LETTER_FILE="$dir/$name-dead.jsonl" \
      /usr/bin/time -v -o "$dir/$label.time" "$bin" run --once 2>"$dir/$label.log" || { say "$label failed: $(tail -3 "$dir/$label.log")"; exit 1; }
  t1=$(date +%s.%N)
  local rss docs
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/$label.time")
  curl -s -o /dev/null -XPOST "$ES_URL/$indexes/_refresh"
  docs=$(curl -s "$ES_URL/$indexes/_count" | jq .count)
  jq -n --arg name "$label" --argjson wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" --argjson rss "$rss" --argjson docs "$docs" \
    '{"label": $name, wall_sec: $wall, docs: $docs, docs_per_sec: ($docs / $wall), peak_rss_kb: $rss}'
  curl -s -o /dev/null -XDELETE "$ES_URL/$indexes?ignore_unavailable=true"
}

: > "$dir/runs.jsonl"
dsn="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_$n"
for r in $(seq "$rounds"); do
  for who in base new; do
    bin=$base; [ $who = new ] && bin=target/release/pg2es
    load "$who-$r" "$bin" "bench_ab_$who" "bench_ab_$who" PG_DSN="$dsn" ES_INDEX="bench_ab_$who" PG2ES_DOCUMENTS=movies | tee -a "$dir/runs.jsonl" >&2
  done
  for who in base new; do
    bin=$base; [ $who = new ] && bin=target/release/pg2es
    p="bench_ab3_${who}_"
    load "all3-$who-$r" "$bin" "$p" "${p}movies,${p}genres,${p}persons" PG_DSN="$dsn" ES_INDEX_PREFIX="$p" | tee -a "$dir/runs.jsonl" >&2
  done
done

say "bookshop: $books books (bench/gen_bookshop.sql)"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS bench_ab_books WITH (FORCE)" -c "CREATE DATABASE bench_ab_books"
psql -X -q -v ON_ERROR_STOP=1 -d bench_ab_books -f catalog/bookshop/schema.sql -v books="$books" -f bench/gen_bookshop.sql
for r in $(seq "$rounds"); do
  load "books-$r" target/release/pg2es bench_ab_books bench_ab_books ES_INDEX=bench_ab_books PG_DSN="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_ab_books" PG_SCHEMA=bookshop PG2ES_DEFINITION="$root/catalog/bookshop/bookshop.toml" ES_SCHEMA_FILE= \
    | tee -a "$dir/runs.jsonl" >&2
done
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS bench_$n WITH (FORCE)" -c "DROP DATABASE IF EXISTS bench_ab_books WITH (FORCE)"

jq -s --arg films "$n" --arg books "$books" --arg rounds "$rounds" '
  def med: sort | .[length / 2 | floor];
  def of(p): map(select(.label | startswith(p)));
  { films: ($films | tonumber), book_count: ($books | tonumber), rounds: ($rounds | tonumber),
    base: (of("base-") | { docs_per_sec: (map(.docs_per_sec) | med), all: map(.docs_per_sec), peak_rss_kb: (map(.peak_rss_kb) | max) }),
    new: (of("new-") | { docs_per_sec: (map(.docs_per_sec) | med), all: map(.docs_per_sec), peak_rss_kb: (map(.peak_rss_kb) | max) }),
    all3_base: (of("all3-base-") | { docs_per_sec: (map(.docs_per_sec) | med), all: map(.docs_per_sec), peak_rss_kb: (map(.peak_rss_kb) | max) }),
    all3_new: (of("all3-new-") | { docs_per_sec: (map(.docs_per_sec) | med), all: map(.docs_per_sec), peak_rss_kb: (map(.peak_rss_kb) | max) }),
    books: (of("books-") | { docs_per_sec: (map(.docs_per_sec) | med), all: map(.docs_per_sec), peak_rss_kb: (map(.peak_rss_kb) | max) }) }
  | . + { ratio_new_to_base: (.new.docs_per_sec / .base.docs_per_sec), ratio_all3_new_to_base: (.all3_new.docs_per_sec / .all3_base.docs_per_sec) }' "$dir/runs.jsonl" > "$out/ab.json"
cat "$out/ab.json"
