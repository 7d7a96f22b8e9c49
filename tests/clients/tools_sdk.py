"""The official `openai` Python SDK's streaming helpers against spool and against the
upstream spool relays (both URLs given): the tool calls, reasoning and text it
assembles through spool are what it assembles from the upstream directly, and a whole
tool loop (call -> tool result -> answer) runs through spool. Exits non-zero on failure.

    python3 tests/clients/tools_sdk.py http://127.0.0.1:8080 http://127.0.0.1:9000/v1
"""

import json
import sys

from openai import OpenAI

spool = OpenAI(base_url=sys.argv[1].rstrip("/") + "/v1", api_key="unused", max_retries=0)
upstream = OpenAI(base_url=sys.argv[2].rstrip("/"), api_key="unused", max_retries=0)

tools = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string"}},
                    "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
     "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
]
messages = [{"role": "user", "content": "What is the weather and time in Oslo?"}]


def streamed(client, messages):
    """The SDK's stream helper: its events, and the completion it assembles."""
    kinds = []
    with client.chat.completions.stream(model="agent", messages=messages, tools=tools) as stream:
        for event in stream:
            kinds.append(event.type)
        return kinds, stream.get_final_completion()


direct_kinds, direct = streamed(upstream, messages)
via_kinds, via = streamed(spool, messages)

d, v = direct.choices[0], via.choices[0]
assert v.finish_reason == "tool_calls" == d.finish_reason, (v.finish_reason, d.finish_reason)
assert v.message.content == d.message.content == "Let me check.", v.message
calls = [c.model_dump() for c in v.message.tool_calls]
assert calls == [c.model_dump() for c in d.message.tool_calls], (calls, d.message.tool_calls)
assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"], calls
assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo", "unit": "celsius"}, calls
assert "tool_calls.function.arguments.delta" in via_kinds, via_kinds
assert via_kinds.count("tool_calls.function.arguments.done") == 2, via_kinds
assert via_kinds == direct_kinds, (via_kinds, direct_kinds)

# The tool loop: run the calls, send their results, get the answer.
results = {"get_weather": '{"temp": 21, "sky": "sunny"}', "get_time": '{"time": "14:05"}'}
loop = messages + [v.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})]
for call in v.message.tool_calls:
    loop.append({"role": "tool", "tool_call_id": call.id, "content": results[call.function.name]})
_, answer = streamed(spool, loop)
assert answer.choices[0].finish_reason == "stop", answer
assert answer.choices[0].message.content == "It is 21°C and sunny in Oslo.", answer
assert not answer.choices[0].message.tool_calls, answer

# The same answer read back by its id, after the fact, in the OpenAI format.
raw = spool.chat.completions.with_raw_response.create(
    model="agent", messages=messages, tools=tools, stream=True
)
stream_id = raw.headers["x-stream-id"]
pieces, reasoning = {}, ""
for chunk in raw.parse():
    for choice in chunk.choices:
        # Reasoning is not in the SDK's types: it keeps it as an extra member.
        reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
        for tc in choice.delta.tool_calls or []:
            pieces[tc.index] = pieces.get(tc.index, "") + (tc.function.arguments or "")
assert reasoning == "The user wants weather and time.", reasoning
assert pieces == {0: calls[0]["function"]["arguments"], 1: calls[1]["function"]["arguments"]}, pieces
print(f"python tools ({stream_id}): ok")
