#!/usr/bin/env bash
# Prints what an index holds: document count, genres, and a sample search.
# Usage: scripts/summary.sh [ES_URL] [INDEX]
set -euo pipefail
url=${1:-http://127.0.0.1:9200}
index=${2:-movies}
curl -sf -XPOST "$url/$index/_refresh" >/dev/null
post() { curl -sf -H 'content-type: application/json' "$url/$index/$1" -d "$2"; }
count=$(curl -sf "$url/$index/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
echo "index $index at $url: $count documents"
post _search '{"size":0,"aggs":{"g":{"terms":{"field":"genre","size":100}}}}' | python3 -c '
import json, sys
b = json.load(sys.stdin)["aggregations"]["g"]["buckets"]
print("%d genres: %s, ..." % (len(b), ", ".join("%s (%d)" % (x["key"], x["doc_count"]) for x in b[:8])))'
echo "search 'star wars', top 3 by score:"
post _search '{"size":3,"query":{"multi_match":{"query":"star wars","operator":"and","fields":["title^3","description","actors_names"]}}}' | python3 -c '
import json, sys
for h in json.load(sys.stdin)["hits"]["hits"]:
    s = h["_source"]
    print("  %s  rating=%s  directors=%s  actors=%d" % (s["title"], s["imdb_rating"], s["director"], len(s["actors"])))'
