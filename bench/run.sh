#!/usr/bin/env bash
# The pg2es benchmark (BENCHMARKS.md): for each catalog size, on the running local stack,
#   1. a synthetic catalog in database bench_<N> (bench/gen.sh)
#   2. the ceiling: pg2es's documents replayed through _bulk into a fresh index (pg2es-bench replay):
#      plain (best of two), then gzip-compressed; and the full load's query alone (pg2es-bench scan-cost)
#   3. pg2es full load into a fresh index: docs/s, peak RSS, CPU seconds
#   4. incremental runs: 1 % of films touched, then the fan-out person renamed
#   5. continuous mode: seconds from the rename's commit until every film shows the new name, then
#      documents sent per change under a steady stream of single-film updates
#   5b. reconciliation after 1 % of films were deleted
#   6. PGSync, a peer, on the same catalog (bench/pgsync.sh; BENCH_PGSYNC=0 skips it)
# and, once, the commit-to-stored latency of a film update for both sources (bench/latency.sh) and
# what the capture triggers cost the application's writes (bench/capture_cost.sh)
# then writes BENCHMARKS.md (bench/report.py). Everything it creates is named bench_<N>*; it is
# dropped at the end, and before starting in case a previous run was interrupted.
# Usage: bench/run.sh [N ...]   (default $BENCH_FILMS, else "10000 100000"; 10k and 1M work too)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=bench/out
export ES_URL=${ES_URL:-http://127.0.0.1:9200}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-123qwe}
export ES_SCHEMA_FILE=${ES_SCHEMA_FILE:-$root/../shared/fixtures/movies/es_schema.json}
export ETL_BATCH_SIZE=${ETL_BATCH_SIZE:-500}
# The movies document of the cinema definition (the benchmark measures it; bench/ab.sh the bookshop).
export PG2ES_DOCUMENTS=${PG2ES_DOCUMENTS:-movies}
export LOG_FORMAT=json RUST_LOG=${RUST_LOG:-info}
# Bulk requests in flight, for pg2es, the replay and PGSync alike (pg2es's default unless set).
export ES_BULK_CONCURRENCY=${BENCH_CONCURRENCY:-${ES_BULK_CONCURRENCY:-2}}
seed=${BENCH_SEED:-42}
report=${BENCH_REPORT:-BENCHMARKS.md}
fanout_person=f0f0f0f0-0000-4000-8000-000000000001
steady_changes=${BENCH_STEADY_CHANGES:-600}
steady_rate=${BENCH_STEADY_RATE:-20}
read -r -a sizes <<< "${*:-${BENCH_FILMS:-10000 100000}}"

say() { echo "bench: $*" >&2; }
die() { say "$*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
films_of() { # 10k -> 10000, 1M -> 1000000
  local v=${1,,}
  case $v in
    *k) v=$(( ${v%k} * 1000 )) ;;
    *m) v=$(( ${v%m} * 1000000 )) ;;
  esac
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "catalog size '$1' is not a number of films (10000, 10k, 1M)"
  echo "$v"
}
psql_bench() { psql -X -v ON_ERROR_STOP=1 -q -At -d "bench_$n" "$@"; }

for tool in curl jq psql python3; do command -v $tool >/dev/null || die "$tool not found"; done
[ -x /usr/bin/time ] || { say "installing GNU time"; apt-get install -y -qq time >/dev/null; }
[ -r "$ES_SCHEMA_FILE" ] || die "cannot read $ES_SCHEMA_FILE (set ES_SCHEMA_FILE or SHARED)"
curl -sf "$ES_URL" >/dev/null || die "no Elasticsearch at $ES_URL (scripts/stack.sh up)"
psql -X -d postgres -Atc 'SELECT 1' >/dev/null || die "no Postgres at $PGHOST:$PGPORT (scripts/stack.sh up)"

for i in "${!sizes[@]}"; do sizes[i]=$(films_of "${sizes[i]}"); done

cleanup() { # the indices and the database of one size
  local n=$1
  curl -s -o /dev/null -XDELETE "$ES_URL/bench_${n}_*"
  # PGSync's replication slot, if its run was interrupted: it would block the drop and keep WAL.
  psql -X -q -d "bench_$n" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database()" >/dev/null 2>&1 || true
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS bench_$n WITH (FORCE)" 2>/dev/null || true
  rm -f "$out/$n/docs.ndjson"
}
cleanup_all() { for n in "${sizes[@]}"; do cleanup "$n"; done; }
trap cleanup_all EXIT

say "building (cargo build --release --locked)"
cargo build --release --locked --quiet
mkdir -p "$out"

# run_pg2es LABEL INDEX [ENV=VALUE ...]: `pg2es run --once` under /usr/bin/time; writes $dir/LABEL.json
# (wall seconds, docs re-indexed, cycle time, peak RSS, CPU seconds).
run_pg2es() {
  local label=$1 index=$2; shift 2
  local started wall
  started=$(now)
  env PG_DSN="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_$n" ES_INDEX="$index" \
      ETL_STATE_FILE="$dir/$index-state.json" ETL_DEAD_LETTER_FILE="$dir/$index-dead-letter.jsonl" "$@" \
      /usr/bin/time -v -o "$dir/$label.time" target/release/pg2es run --once 2>"$dir/$label.log" \
    || die "pg2es failed ($label), see $dir/$label.log"
  wall=$(since "$started")
  # Docs re-indexed and the cycle's own time, from the per-cycle log lines.
  jq -s --argjson wall "$wall" --arg name "$label" '
      map(select(.fields.message == "cycle done").fields)
      | { run: $name, wall_sec: $wall, films: (map(.records) | add), stored: (map(.stored) | add),
          dead_lettered: (map(.dead_lettered) | add), cycle_ms: (map(.elapsed_ms) | add) }' "$dir/$label.log" \
    | jq --arg rss "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/$label.time")" \
         --arg user "$(awk -F': ' '/User time/ {print $2}' "$dir/$label.time")" \
         --arg sys "$(awk -F': ' '/System time/ {print $2}' "$dir/$label.time")" \
         '. + { peak_rss_kb: ($rss | tonumber), cpu_sec: (($user | tonumber) + ($sys | tonumber)) }' > "$dir/$label.json"
  say "$label: $(jq -c . "$dir/$label.json")"
}

# CPU accounting, to see what shares the cores during a load. cpu_snapshot prints clock ticks used
# so far by Elasticsearch (the JVM of scripts/stack.sh, from its pid file), by Postgres (every
# `postgres` process, plus the postmaster's reaped children: backends that have exited), and the
# machine's busy and idle ticks (/proc/stat). cpu_delta BEFORE AFTER turns two into JSON seconds.
es_pid_file=${ES_PID_FILE:-.stack/es.pid}
proc_ticks() { # PID FIELDS: sum of /proc/PID/stat fields, counted after "(comm) "
  sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk -v f="$2" '{ n = split(f, i, ","); t = 0; for (k = 1; k <= n; k++) t += $i[k]; print t }'
}
cpu_snapshot() {
  local es=0 pg=0 pid postmaster
  if [ -f "$es_pid_file" ]; then es=$(proc_ticks "$(cat "$es_pid_file")" 12,13); fi
  for pid in $(pgrep -x postgres); do pg=$(( pg + $(proc_ticks "$pid" 12,13 || echo 0) )); done
  postmaster=$(pgrep -o -x postgres) && pg=$(( pg + $(proc_ticks "$postmaster" 14,15) ))
  echo "${es:-0} $pg $(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)"
}
cpu_delta() {
  jq -n --argjson hz "$(getconf CLK_TCK)" --arg a "$1" --arg b "$2" '
    [$a, $b] | map(split(" ") | map(tonumber)) as [$x, $y]
    | [range(4)] | map(($y[.] - $x[.]) / $hz) as [$es, $pg, $busy, $idle]
    | { es_cpu_sec: $es, pg_cpu_sec: $pg, machine_busy_sec: $busy, machine_idle_sec: $idle }'
}

fresh_index() { # create INDEX from ES_SCHEMA_FILE, dropping a previous one
  curl -s -o /dev/null -XDELETE "$ES_URL/$1"
  curl -sf -o /dev/null -XPUT "$ES_URL/$1" -H 'content-type: application/json' --data-binary @"$ES_SCHEMA_FILE" || die "cannot create index $1"
}

for n in "${sizes[@]}"; do
  dir=$out/$n
  cleanup "$n"
  rm -rf "$dir" && mkdir -p "$dir"
  say "== $n films =="

  started=$(now)
  bench/gen.sh "$n" "$seed" | tee "$dir/gen.txt" >&2
  gen_sec=$(since "$started")

  # The documents pg2es produces, dumped from a scratch load, then replayed as the ceiling.
  run_pg2es scratch "bench_${n}_docs"
  target/release/pg2es-bench dump --index "bench_${n}_docs" --out "$dir/docs.ndjson" >"$dir/dump.json"
  curl -s -o /dev/null -XDELETE "$ES_URL/bench_${n}_docs"
  # Best of two replays: the first may run in a JVM still warming up (the first size after
  # Elasticsearch starts), which would make the ceiling look lower than it is.
  for try in 1 2; do
    before=$(cpu_snapshot)
    target/release/pg2es-bench replay --index "bench_${n}_ceiling" --file "$dir/docs.ndjson" >"$dir/ceiling-$try.json"
    cpu_delta "$before" "$(cpu_snapshot)" >"$dir/ceiling-cpu-$try.json"
  done
  best=$(jq -s 'if .[0].docs_per_sec >= .[1].docs_per_sec then 1 else 2 end' "$dir/ceiling-1.json" "$dir/ceiling-2.json")
  jq -s '.[0] + { tries: map(.docs_per_sec) }' "$dir/ceiling-$best.json" "$dir/ceiling-$(( 3 - best )).json" >"$dir/ceiling.json"
  cp "$dir/ceiling-cpu-$best.json" "$dir/ceiling-cpu.json"
  say "ceiling: $(cat "$dir/ceiling.json")"
  target/release/pg2es-bench replay --index "bench_${n}_ceiling" --file "$dir/docs.ndjson" --gzip >"$dir/ceiling-gzip.json"
  say "ceiling, gzip bodies: $(cat "$dir/ceiling-gzip.json")"
  curl -s -o /dev/null -XDELETE "$ES_URL/bench_${n}_ceiling"
  rm -f "$dir/docs.ndjson"
  PG_DSN="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_$n" target/release/pg2es-bench scan-cost >"$dir/scan-cost.json"
  say "full load query alone: $(cat "$dir/scan-cost.json")"

  # Full load into a fresh index (created beforehand, as the replay's is).
  fresh_index "bench_${n}_pg2es"
  before=$(cpu_snapshot)
  run_pg2es full "bench_${n}_pg2es"
  cpu_delta "$before" "$(cpu_snapshot)" >"$dir/full-cpu.json"
  say "cpu during the ceiling: $(jq -c . "$dir/ceiling-cpu.json"); during pg2es's load: $(jq -c . "$dir/full-cpu.json")"
  indexed=$(curl -sf -XPOST "$ES_URL/bench_${n}_pg2es/_refresh" >/dev/null && curl -sf "$ES_URL/bench_${n}_pg2es/_count" | jq .count)
  [ "$indexed" = "$n" ] || die "the full load left $indexed documents for $n films"

  # Each change is committed 2 s before the run, past pg2es's commit horizon (ETL_CLOCK_SKEW_MS,
  # 1 s): otherwise the next run would read it again.
  touched=$(( (n + 99) / 100 ))
  psql_bench -c "UPDATE content.film_work SET updated_at = now() WHERE id IN (SELECT id FROM content.film_work ORDER BY id LIMIT $touched)"
  sleep 2
  run_pg2es incremental "bench_${n}_pg2es"

  fanout_films=$(psql_bench -c "SELECT count(DISTINCT film_work_id) FROM content.person_film_work WHERE person_id = '$fanout_person'")
  psql_bench -c "UPDATE content.person SET full_name = 'Fanout Renamed', updated_at = now() WHERE id = '$fanout_person'"
  sleep 2
  run_pg2es fanout "bench_${n}_pg2es"

  # Continuous mode: pg2es polls every second; rename once its first cycle is done.
  env PG_DSN="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_$n" ES_INDEX="bench_${n}_pg2es" ETL_CYCLE_SEC=1 \
      ETL_STATE_FILE="$dir/bench_${n}_pg2es-state.json" ETL_DEAD_LETTER_FILE="$dir/continuous-dead-letter.jsonl" \
      RUST_LOG=info,pg2es::pipeline=debug target/release/pg2es run 2>"$dir/continuous.log" &
  pg2es_pid=$!
  for _ in $(seq 600); do grep -q '"cycle done"' "$dir/continuous.log" && break; sleep 0.1; done
  grep -q '"cycle done"' "$dir/continuous.log" || { kill -TERM "$pg2es_pid"; die "continuous pg2es did no cycle in 60 s"; }
  PG_DSN="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/bench_$n" target/release/pg2es-bench visibility \
      --index "bench_${n}_pg2es" --person-id "$fanout_person" --expect "$fanout_films" >"$dir/visibility.json" \
    || { kill -TERM "$pg2es_pid"; die "the rename did not become visible, see $dir/continuous.log"; }
  say "visibility: $(cat "$dir/visibility.json")"

  # Steady load on the same running pg2es: one film updated per transaction, $steady_changes of
  # them $steady_rate per second, then documents sent per change (the commit horizon makes each
  # cycle read the last second's rows again; only changed rows may be sent again).
  sleep 3
  cycles_before=$(grep -c '"cycle done"' "$dir/continuous.log")
  psql_bench -c "SELECT id FROM content.film_work ORDER BY id OFFSET 100 LIMIT $steady_changes" \
    | awk -v pause="$(awk -v r="$steady_rate" 'BEGIN { printf "%.4f", 1 / r }')" \
        '{ printf "UPDATE content.film_work SET updated_at = now() WHERE id = '\''%s'\'';\nSELECT pg_sleep(%s);\n", $1, pause }' \
    | psql_bench >/dev/null
  sleep 4
  tail -n +"$(( cycles_before + 1 ))" <(grep '"cycle done"' "$dir/continuous.log") \
    | jq -s --argjson changes "$steady_changes" --argjson rate "$steady_rate" '
        map(.fields) | { changes: $changes, rate_per_sec: $rate, cycles: length, rows_read: (map(.root_rows) | add),
          rows_already_loaded: (map(.rows_already_loaded // 0) | add), stored: (map(.stored) | add),
          docs_per_change: ((map(.stored) | add) / $changes) }' >"$dir/steady.json"
  kill -TERM "$pg2es_pid"
  wait "$pg2es_pid" || die "continuous pg2es did not stop cleanly, see $dir/continuous.log"
  say "steady load: $(jq -c . "$dir/steady.json")"

  pgsync='null'
  if [ "${BENCH_PGSYNC:-1}" = 1 ]; then
    bench/pgsync.sh "$n" "$dir" >"$dir/pgsync.json" 2>"$dir/pgsync.log" || true
    pgsync=$(jq -c . "$dir/pgsync.json" 2>/dev/null || echo null)
    say "pgsync: $pgsync"
  fi

  # Reconciliation (after PGSync, which needs the whole catalog): 1 % of films deleted (no delete
  # capture installed), then a pass that finds and deletes their documents by comparing every
  # document id with Postgres.
  gone=$(( (n + 99) / 100 ))
  psql_bench -c "DELETE FROM content.film_work WHERE id IN (SELECT id FROM content.film_work ORDER BY md5(id::text) LIMIT $gone)"
  sleep 1.1
  run_pg2es reconcile "bench_${n}_pg2es" ETL_RECONCILE_SEC=1
  jq -s --argjson gone "$gone" 'map(select(.fields.message == "reconciled the index with postgres").fields) | .[0] + { films_deleted: $gone }' \
    "$dir/reconcile.log" >"$dir/reconcile-detail.json"
  say "reconciliation: $(jq -c . "$dir/reconcile-detail.json")"

  jq -n --argjson films "$n" --argjson seed "$seed" --argjson gen_sec "$gen_sec" --arg gen "$(cat "$dir/gen.txt")" \
        --argjson touched "$touched" --argjson fanout_films "$fanout_films" \
        --slurpfile ceiling "$dir/ceiling.json" --slurpfile ceiling_gzip "$dir/ceiling-gzip.json" \
        --slurpfile scan "$dir/scan-cost.json" --slurpfile full "$dir/full.json" \
        --slurpfile incremental "$dir/incremental.json" --slurpfile fanout "$dir/fanout.json" \
        --slurpfile visibility "$dir/visibility.json" --slurpfile steady "$dir/steady.json" --argjson pgsync "$pgsync" \
        --slurpfile reconcile "$dir/reconcile-detail.json" --slurpfile reconcile_run "$dir/reconcile.json" \
        --slurpfile ceiling_cpu "$dir/ceiling-cpu.json" --slurpfile full_cpu "$dir/full-cpu.json" \
        '{ films: $films, seed: $seed, gen_sec: $gen_sec, gen: $gen, touched: $touched, fanout_films: $fanout_films,
           ceiling: $ceiling[0], ceiling_gzip: $ceiling_gzip[0], scan: $scan[0], full: $full[0], incremental: $incremental[0], fanout: $fanout[0],
           ceiling_cpu: $ceiling_cpu[0], full_cpu: $full_cpu[0],
           visibility: $visibility[0], steady: $steady[0], reconcile: ($reconcile[0] + { cpu_sec: $reconcile_run[0].cpu_sec, peak_rss_kb: $reconcile_run[0].peak_rss_kb }), pgsync: $pgsync }' > "$out/results-$n.json"
  cleanup "$n"
done

# Commit-to-stored latency of one film update, on the reference catalog, for both sources.
for kind in replication polling; do
  bench/latency.sh "$kind" "${BENCH_LATENCY_SAMPLES:-20}" >"$out/latency-$kind.json"
  say "latency ($kind): $(cat "$out/latency-$kind.json")"
done
jq -s . "$out/latency-replication.json" "$out/latency-polling.json" >"$out/latency.json"
# What the capture triggers cost the application's writes, on the reference catalog.
bench/capture_cost.sh "${BENCH_CAPTURE_STATEMENTS:-2000}" "${BENCH_CAPTURE_ROUNDS:-3}" >"$out/capture_cost.json"
say "capture cost: $(jq -c .setups "$out/capture_cost.json")"

results=()
for n in "${sizes[@]}"; do results+=("$out/results-$n.json"); done
python3 bench/report.py --command "${BENCH_COMMAND:-bench/run.sh ${sizes[*]}}" --out "$report" --latency "$out/latency.json" --capture-cost "$out/capture_cost.json" "${results[@]}"
say "wrote $report"
