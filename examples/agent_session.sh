#!/usr/bin/env bash
# An agent loop over a spool session, with curl and jq. The model asks for tools; each
# answer's tool calls come back as one turn of tool results; the loop ends when the
# model answers in text. The session holds the history (calls and results included):
# a turn sends only what is new. It needs a model that can call tools (an `openai`
# upstream, see docs/backends.md):
#   bash examples/agent_session.sh [BASE_URL] [MODEL]

set -euo pipefail
BASE=${1:-http://127.0.0.1:8080}
MODEL=${2:-gpt-4o-mini}
TOOLS='[
  {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
   "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
  {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
   "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
]'

# Our tools: a name and its JSON arguments in, the result out.
run_tool() {
  case $1 in
    get_weather) echo "21°C and sunny in $(jq -r .city <<<"$2")" ;;
    get_time) echo "12:00 in $(jq -r .tz <<<"$2")" ;;
    *) echo "no tool named $1" ;;
  esac
}

S=$(curl -sf "$BASE/v1/sessions" -d "$(jq -n --arg m "$MODEL" '{model: $m}')" | jq -r .id)
TURN='{"content": "What are the weather and the time in Oslo?"}'
while :; do
  # Start the turn (the tools go with each turn), then read its events to its end.
  ID=$(curl -sf "$BASE/v1/sessions/$S/messages" \
    -d "$(jq --argjson tools "$TOOLS" '. + {tools: $tools}' <<<"$TURN")" | jq -r .id)
  curl -sfN "$BASE/v1/streams/$ID/events" >/dev/null
  ANSWER=$(curl -sf "$BASE/v1/streams/$ID")
  [ "$(jq -r .finish_reason <<<"$ANSWER")" = tool_calls ] || break
  # One turn of tool results, answering every call of the answer.
  RESULTS='[]'
  while read -r CALL; do
    OUT=$(run_tool "$(jq -r .function.name <<<"$CALL")" "$(jq -r .function.arguments <<<"$CALL")")
    RESULTS=$(jq --arg id "$(jq -r .id <<<"$CALL")" --arg out "$OUT" \
      '. + [{role: "tool", tool_call_id: $id, content: $out}]' <<<"$RESULTS")
  done < <(jq -c '.tool_calls[]' <<<"$ANSWER")
  TURN=$(jq -n --argjson results "$RESULTS" '{messages: $results}')
done
jq -r .text <<<"$ANSWER"
curl -sf "$BASE/v1/sessions/$S" | jq -c '[.turns[].role]'
