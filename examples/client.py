#!/usr/bin/env python3
"""A spool client in plain Python (standard library only): start a stream, print its
tokens as they come, and resume with Last-Event-ID if the connection drops.

    python3 examples/client.py "Tell me about rivers"            # http://127.0.0.1:8080
    SPOOL_BASE=http://host:8080 python3 examples/client.py "hi"
"""

import http.client
import json
import os
import sys
import time
import urllib.request

BASE = os.environ.get("SPOOL_BASE", "http://127.0.0.1:8080").rstrip("/")


def start(prompt, max_tokens=None):
    body = {"prompt": prompt}
    if max_tokens:
        body["max_tokens"] = max_tokens
    req = urllib.request.Request(
        f"{BASE}/v1/streams", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["id"]


def follow(stream_id):
    """Yields (event, data) to the end, resuming after any dropped connection."""
    last = 0
    while True:
        headers = {"Last-Event-ID": str(last)} if last else {}
        req = urllib.request.Request(f"{BASE}/v1/streams/{stream_id}/events", headers=headers)
        try:
            with urllib.request.urlopen(req) as r:
                if r.status == 204:  # we already had the last event
                    return
                event, data, seq = "message", None, None
                for raw in r:
                    line = raw.decode().rstrip("\n")
                    if line == "":
                        if data is not None:
                            if seq is not None:
                                last = seq
                            yield event, json.loads(data)
                            if event in ("done", "error"):
                                return
                        event, data, seq = "message", None, None
                    elif line.startswith("id: "):
                        seq = int(line[4:])
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
            print(f"\n[connection lost after event {last}; resuming]", file=sys.stderr)
        except (OSError, http.client.HTTPException) as e:
            print(f"\n[connection lost after event {last} ({e!r}); resuming]", file=sys.stderr)
        time.sleep(0.2)


if __name__ == "__main__":
    prompt = sys.argv[1] if len(sys.argv) > 1 else "Tell me about rivers"
    max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else None
    stream_id = start(prompt, max_tokens)
    for event, data in follow(stream_id):
        if event == "token":
            print(data["text"], end="", flush=True)
        elif event == "done":
            print(f"\n[{data['finish_reason']}, {data['usage']['completion_tokens']} tokens]")
        elif event == "error":
            print(f"\n[error {data['code']}: {data['message']}]", file=sys.stderr)
            sys.exit(1)
