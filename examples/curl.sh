#!/usr/bin/env bash
# A tour of the API with curl. Start a server first (cargo run --release), then:
#   bash examples/curl.sh [BASE_URL]
set -euo pipefail
BASE=${1:-http://127.0.0.1:8080}

echo "== stream a generation"
curl -sN "$BASE/v1/streams" -H 'Accept: text/event-stream' -d '{"prompt":"Tell me about rivers","max_tokens":8}'

echo "== start one in the background"
ID=$(curl -sf "$BASE/v1/streams" -d '{"prompt":"hi","max_tokens":8}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "id: $ID"

echo "== resume after event 3 (Last-Event-ID)"
curl -sN "$BASE/v1/streams/$ID/events" -H 'Last-Event-ID: 3'

echo "== status"
curl -sf "$BASE/v1/streams/$ID"; echo

echo "== at the terminal event: 204"
LAST=$(curl -sf "$BASE/v1/streams/$ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_seq"])')
curl -s -o /dev/null -w '%{http_code}\n' "$BASE/v1/streams/$ID/events?after=$LAST"

echo "== cancel (200: already ended) and delete (204)"
curl -s -o /dev/null -w '%{http_code}\n' -X POST "$BASE/v1/streams/$ID/cancel"
curl -s -o /dev/null -w '%{http_code}\n' -X DELETE "$BASE/v1/streams/$ID"

echo "== list"
curl -sf "$BASE/v1/streams?limit=3"; echo
