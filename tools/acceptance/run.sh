#!/usr/bin/env bash
# Run the shared acceptance suite against a loaded movies index.
#   tools/acceptance/run.sh [base_url]     (default http://127.0.0.1:9200)
# Installs newman (pinned in package.json / package-lock.json) on first use.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
collection=$(cd "$here/../.." && pwd)/../shared/acceptance/ETLTests-2.json
base_url=${1:-http://127.0.0.1:9200}

[ -f "$collection" ] || { echo "acceptance: collection not found: $collection" >&2; exit 1; }

if [ ! -x "$here/node_modules/.bin/newman" ]; then
  echo "acceptance: installing newman into $here/node_modules"
  if [ -f "$here/package-lock.json" ]; then
    npm ci --prefix "$here" --no-audit --no-fund --loglevel=error
  else
    npm install --prefix "$here" --no-audit --no-fund --loglevel=error
  fi
fi

exec "$here/node_modules/.bin/newman" run "$collection" --env-var "base_url=$base_url" --color off
