#!/usr/bin/env bash
# An enforcing endpoint in front of the stack's Elasticsearch, for the credential tests: nginx
# from Debian's package (unpacked into .stack/proxy/nginx, not installed as a service), with TLS
# by a CA made here, on 127.0.0.1 only.
#
#   scripts/proxy.sh up     unpack nginx if missing, make the CA, the certificate and the
#                           password file if missing, start, wait until it answers
#   scripts/proxy.sh down   stop it
#   scripts/proxy.sh env    the test variables (PG2ES_TEST_PROXY_*), one per line
#
# https://127.0.0.1:PROXY_BASIC_PORT (9453): basic auth, user PROXY_USER with PROXY_PASSWORD.
# https://127.0.0.1:PROXY_KEY_PORT (9454): `Authorization: ApiKey PROXY_API_KEY` only.
# Anything else is answered 401, as Elasticsearch with security on answers it. Both pass to
# PROXY_UPSTREAM (127.0.0.1:9200). Requests are logged in .stack/proxy/access.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$ROOT/.stack/proxy
NGINX=$DIR/nginx/usr/sbin/nginx
PROXY_BASIC_PORT=${PROXY_BASIC_PORT:-9453}
PROXY_KEY_PORT=${PROXY_KEY_PORT:-9454}
PROXY_UPSTREAM=${PROXY_UPSTREAM:-127.0.0.1:9200}
PROXY_USER=${PROXY_USER:-pg2es}
PROXY_PASSWORD=${PROXY_PASSWORD:-proxy-secret-7f3a}
# base64 of id:key, as Elasticsearch's API keys are given.
PROXY_API_KEY=${PROXY_API_KEY:-$(printf 'pg2es-key:key-secret-91c2' | base64)}

say() { printf 'proxy: %s\n' "$*" >&2; }

install_nginx() {
  [ -x "$NGINX" ] && return
  say "unpacking Debian's nginx into $DIR/nginx"
  mkdir -p "$DIR/deb"
  (cd "$DIR/deb" && apt-get download -qq nginx 2>/dev/null) ||
    { apt-get update -qq && (cd "$DIR/deb" && apt-get download -qq nginx); }
  dpkg-deb -x "$DIR"/deb/nginx_*.deb "$DIR/nginx"
  "$NGINX" -v 2>/dev/null || { say "the unpacked nginx does not run: ldd $NGINX"; exit 1; }
}

make_certificates() {
  [ -f "$DIR/server.pem" ] && return
  say "making a CA and a certificate for 127.0.0.1 in $DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=pg2es test proxy CA" \
    -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$DIR/server.key" -out "$DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$DIR/server.ext"
  openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial -days 3650 \
    -extfile "$DIR/server.ext" -out "$DIR/server.pem" 2>/dev/null
}

write_config() {
  printf '%s:%s\n' "$PROXY_USER" "$(openssl passwd -apr1 "$PROXY_PASSWORD")" >"$DIR/htpasswd"
  cat >"$DIR/nginx.conf" <<EOF
pid $DIR/nginx.pid;
error_log $DIR/error.log warn;
worker_processes 1;
events { worker_connections 256; }
http {
  access_log $DIR/access.log;
  client_body_temp_path $DIR/tmp;
  proxy_temp_path $DIR/tmp;
  fastcgi_temp_path $DIR/tmp;
  uwsgi_temp_path $DIR/tmp;
  scgi_temp_path $DIR/tmp;
  client_max_body_size 1g;
  ssl_certificate $DIR/server.pem;
  ssl_certificate_key $DIR/server.key;
  map \$http_authorization \$api_key_ok { "ApiKey $PROXY_API_KEY" 1; default 0; }
  server {
    listen 127.0.0.1:$PROXY_BASIC_PORT ssl;
    auth_basic "pg2es test proxy";
    auth_basic_user_file $DIR/htpasswd;
    location / { proxy_pass http://$PROXY_UPSTREAM; proxy_set_header Authorization ""; }
  }
  server {
    listen 127.0.0.1:$PROXY_KEY_PORT ssl;
    location / {
      if (\$api_key_ok = 0) { add_header WWW-Authenticate 'ApiKey' always; return 401; }
      proxy_pass http://$PROXY_UPSTREAM;
      proxy_set_header Authorization "";
    }
  }
}
EOF
}

running() { [ -f "$DIR/nginx.pid" ] && kill -0 "$(cat "$DIR/nginx.pid")" 2>/dev/null; }

up() {
  mkdir -p "$DIR/tmp"
  install_nginx
  make_certificates
  write_config
  if running; then
    "$NGINX" -p "$DIR" -c "$DIR/nginx.conf" -s reload 2>/dev/null
  else
    "$NGINX" -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/error.log"
  fi
  for _ in $(seq 1 50); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$DIR/ca.pem" "https://127.0.0.1:$PROXY_KEY_PORT/" || true)
    if [ "$code" = 401 ]; then
      say "up: https://127.0.0.1:$PROXY_BASIC_PORT (basic auth), https://127.0.0.1:$PROXY_KEY_PORT (ApiKey), CA $DIR/ca.pem"
      return
    fi
    sleep 0.1
  done
  say "nginx did not answer on 127.0.0.1:$PROXY_KEY_PORT; see $DIR/error.log"
  tail -n 20 "$DIR/error.log" >&2 || true
  exit 1
}

down() {
  if running; then
    kill "$(cat "$DIR/nginx.pid")"
    say "stopped"
  fi
}

env_lines() {
  cat <<EOF
PG2ES_TEST_PROXY_BASIC_URL=https://127.0.0.1:$PROXY_BASIC_PORT
PG2ES_TEST_PROXY_KEY_URL=https://127.0.0.1:$PROXY_KEY_PORT
PG2ES_TEST_PROXY_CA=$DIR/ca.pem
PG2ES_TEST_PROXY_USER=$PROXY_USER
PG2ES_TEST_PROXY_PASSWORD=$PROXY_PASSWORD
PG2ES_TEST_PROXY_API_KEY=$PROXY_API_KEY
PG2ES_TEST_PROXY_LOG=$DIR/access.log
EOF
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_lines ;;
  *) echo "usage: scripts/proxy.sh up|down|env" >&2; exit 2 ;;
esac
