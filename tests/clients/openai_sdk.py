"""The official `openai` Python SDK against spool, unchanged: a completion, a stream
with usage, and resuming an SDK-started stream by its id. Exits non-zero on failure.

    python3 tests/clients/openai_sdk.py http://127.0.0.1:8080
"""

import json
import sys
import urllib.request

from openai import OpenAI

base = sys.argv[1].rstrip("/")
client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
expected = "".join(f" tok{i}" for i in range(1, 9))

# stream: false
completion = client.chat.completions.create(
    model="mock", messages=[{"role": "user", "content": "hi"}], max_tokens=8
)
assert completion.object == "chat.completion", completion
assert completion.choices[0].message.content == expected, completion
assert completion.choices[0].finish_reason == "length", completion
assert completion.usage.completion_tokens == 8, completion.usage

# stream: true, with usage
text, usage, finish = "", None, None
raw = client.chat.completions.with_raw_response.create(
    model="mock",
    messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    max_completion_tokens=8,
    stream=True,
    stream_options={"include_usage": True},
)
stream_id = raw.headers["x-stream-id"]
for chunk in raw.parse():
    assert chunk.id == stream_id, chunk
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
assert text == expected, text
assert finish == "length", finish
assert usage is not None and usage.total_tokens == usage.prompt_tokens + 8, usage

# Resume the SDK's stream by id, in the same format, after event 4 (tokens 1-3 seen).
request = urllib.request.Request(
    f"{base}/v1/streams/{stream_id}/events?format=openai",
    headers={"Last-Event-ID": "4"},
)
with urllib.request.urlopen(request) as r:
    body = r.read().decode()
rest = ""
for line in body.splitlines():
    if line.startswith("data: ") and line != "data: [DONE]":
        chunk = json.loads(line[len("data: "):])
        for choice in chunk["choices"]:
            rest += choice["delta"].get("content") or ""
assert body.rstrip().endswith("data: [DONE]"), body
assert expected.startswith(" tok1 tok2 tok3") and rest == expected[len(" tok1 tok2 tok3"):], rest

# An OpenAI-shaped error the SDK raises as such.
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except Exception as e:  # openai.NotFoundError
    assert type(e).__name__ == "NotFoundError", repr(e)
    assert getattr(e, "code", None) == "model_not_found", repr(e)

print("python openai SDK: ok")
