"""An agent loop over a spool session with the official OpenAI Python SDK: the chat
facade takes `session_id` (in `extra_body`), and `messages` is then the new turn alone:
the question, or the results of the last answer's tool calls. The SDK's streaming
helper assembles each answer's tool calls as it does OpenAI's. It needs a model that
can call tools (an `openai` upstream, see docs/backends.md):
    python3 examples/agent_session.py [BASE_URL] [MODEL]
"""

import json
import os
import sys

from openai import OpenAI

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
model = sys.argv[2] if len(sys.argv) > 2 else "gpt-4o-mini"
client = OpenAI(base_url=f"{base}/v1", api_key=os.environ.get("SPOOL_API_KEY", "none"))

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
]


def run_tool(name, arguments):
    args = json.loads(arguments)
    if name == "get_weather":
        return f"21°C and sunny in {args['city']}"
    if name == "get_time":
        return f"12:00 in {args['tz']}"
    return f"no tool named {name}"


# A session (not an OpenAI endpoint: the SDK's plain `post`, answering parsed JSON).
session = client.post("/sessions", body={"model": model}, cast_to=object)
turn = [{"role": "user", "content": "What are the weather and the time in Oslo?"}]
while True:
    with client.chat.completions.stream(
        model=model, messages=turn, tools=TOOLS, extra_body={"session_id": session["id"]}
    ) as stream:
        for event in stream:
            if event.type == "content.delta":
                print(event.delta, end="", flush=True)
        message = stream.get_final_completion().choices[0].message
    print()
    if not message.tool_calls:
        break
    turn = []
    for call in message.tool_calls:
        print(f"{call.function.name}({call.function.arguments})")
        result = run_tool(call.function.name, call.function.arguments)
        turn.append({"role": "tool", "tool_call_id": call.id, "content": result})
