#!/usr/bin/env bash
# An app's own producer into spool's readers, through Durable Streams: a stream created
# with `Spool-Events: true` takes {"event","data"} messages and stores them as spool
# events, so the native SSE (with Last-Event-ID), the WebSocket and the chat page read
# it like any answer. Start a server first (cargo run --release), then:
#   bash examples/ds_producer.sh [BASE_URL]

set -euo pipefail
BASE=${1:-http://127.0.0.1:8080}
DS="$BASE/ds/v1/stream/agents/run-$(date +%s%N)"

# The stream; its spool stream id comes back in Spool-Stream-Id.
ID=$(curl -sf -X PUT "$DS" -H 'Content-Type: application/json' -H 'Spool-Events: true' \
  -D - -o /dev/null | tr -d '\r' | awk -F': ' 'tolower($1) == "spool-stream-id" { print $2 }')
echo "spool stream $ID (the chat page shows it at $BASE/?stream=$ID)"

# A spool reader follows it live while the producer writes.
OUT=$(mktemp)
curl -sN "$BASE/v1/streams/$ID/events" > "$OUT" &
READER=$!
curl -sf -X POST "$DS" -H 'Content-Type: application/json' \
  -d '[{"event": "reasoning", "data": {"text": "Plan the steps.", "field": "reasoning"}},
       {"event": "token", "data": {"text": "Step one done."}}]'
curl -sf -X POST "$DS" -H 'Content-Type: application/json' \
  -d '{"event": "token", "data": {"text": " Step two done."}}'
# Closing it without a terminal event appends `done`; the reader's response ends.
curl -sf -X POST "$DS" -H 'Stream-Closed: true'
wait "$READER"
grep '^event: ' "$OUT" | tr '\n' ' '; echo
curl -sf "$BASE/v1/streams/$ID" | jq -r .text
rm -f "$OUT"
