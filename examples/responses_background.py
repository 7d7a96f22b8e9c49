#!/usr/bin/env python3
"""OpenAI's Responses API background mode against spool, with the official `openai` SDK
(`pip install openai`) and nothing but the base URL changed: start a background
response, stream it, and when the connection drops resume after the last event seen
(`starting_after`). spool keeps the response resumable for as long as it keeps the
stream, across restarts.

    SPOOL_BASE=http://127.0.0.1:8080 python3 examples/responses_background.py "Tell me about rivers" 200
"""

import os
import sys
import time

import openai
from openai import OpenAI

base = os.environ.get("SPOOL_BASE", "http://127.0.0.1:8080").rstrip("/")
client = OpenAI(base_url=f"{base}/v1", api_key=os.environ.get("SPOOL_API_KEY", "unused"), max_retries=0)
prompt = sys.argv[1] if len(sys.argv) > 1 else "Tell me about rivers"
max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 200

# Background: the response runs to its end whether or not anyone reads it.
response = client.responses.create(
    model=os.environ.get("SPOOL_MODEL", "mock"),
    input=prompt,
    max_output_tokens=max_tokens,
    background=True,
)
last, final, failures = None, None, 0
while final is None:
    resume = {} if last is None else {"starting_after": last}
    try:
        for event in client.responses.retrieve(response.id, stream=True, **resume):
            last, failures = event.sequence_number, 0
            if event.type == "response.output_text.delta":
                print(event.delta, end="", flush=True)
            elif event.type in ("response.completed", "response.incomplete", "response.failed"):
                final = event.response
    except openai.APIStatusError:
        raise  # the server said no: resuming would not help
    except Exception as e:  # the connection dropped (the SDK's HTTP client has its own error types)
        failures += 1
        if failures > 5:
            raise
        print(f"\n[resuming after event {last}: {type(e).__name__}]", file=sys.stderr)
        time.sleep(0.2 * failures)
print()
print(f"[{final.status}, {final.usage.output_tokens} tokens]")
