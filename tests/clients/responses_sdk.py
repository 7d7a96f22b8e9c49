"""The official `openai` Python SDK's Responses API against spool, unchanged but for the
base URL: a streamed create; a background response whose stream is dropped mid-answer
and resumed with `retrieve(id, stream=True, starting_after=n)`, its text equal to an
unbroken read; polling a background response to its end; cancel; input items; delete;
errors as the SDK's exceptions; and, against spool in front of a controlled upstream,
function calls in a tool loop (sending the history, then with `previous_response_id`),
reasoning, and `store=False`. Exits non-zero on failure.

    python3 tests/clients/responses_sdk.py http://127.0.0.1:8080 http://127.0.0.1:8081

The first server serves the mock model; the second relays the test's upstream.
"""

import sys
import time

import openai
from openai import OpenAI

mock = OpenAI(base_url=sys.argv[1].rstrip("/") + "/v1", api_key="unused", max_retries=0)
agent = OpenAI(base_url=sys.argv[2].rstrip("/") + "/v1", api_key="unused", max_retries=0)


def mock_text(n):
    return "".join(f" tok{i}" for i in range(1, n + 1))


def wait(client, response_id, done, what):
    deadline = time.monotonic() + 20
    while True:
        response = client.responses.retrieve(response_id)
        if done(response):
            return response
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {response}"
        time.sleep(0.02)


def ended(response):
    return response.status not in ("queued", "in_progress")


# A streamed create: the events in order, the text, the end.
kinds, text, final = [], "", None
for event in mock.responses.create(model="mock", input="hi", max_output_tokens=8, stream=True):
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        text += event.delta
    if event.type == "response.incomplete":
        final = event.response
assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"], kinds
assert kinds[-1] == "response.incomplete", kinds
assert text == mock_text(8), text
assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens", final
assert final.output_text == text, final.output_text
assert final.usage.output_tokens == 8 and final.usage.total_tokens == final.usage.input_tokens + 8

# Background, streamed, dropped after a few deltas, resumed after the last event seen.
stream = mock.responses.create(model="mock", input="count", max_output_tokens=60,
                               background=True, stream=True)
seen, last, response_id = "", None, None
for event in stream:
    last = event.sequence_number
    if event.type == "response.created":
        response_id = event.response.id
        assert event.response.background is True and event.response.status == "queued", event
    if event.type == "response.output_text.delta":
        seen += event.delta
        if seen.count(" tok") == 3:
            break
stream.close()  # the connection drops mid-answer; the response goes on
assert seen == mock_text(3), seen
resumed = mock.responses.retrieve(response_id, stream=True, starting_after=last)
numbers, rest = [], ""
for event in resumed:
    numbers.append(event.sequence_number)
    if event.type == "response.output_text.delta":
        rest += event.delta
assert numbers[0] == last + 1 and numbers == list(range(last + 1, last + 1 + len(numbers))), numbers
unbroken = "".join(e.delta for e in mock.responses.retrieve(response_id, stream=True)
                   if e.type == "response.output_text.delta")
assert seen + rest == unbroken == mock_text(60), (seen, rest, unbroken)

# The stream helper, resuming an existing response by id.
with mock.responses.stream(response_id=response_id, starting_after=last) as helper:
    helped = "".join(e.delta for e in helper if e.type == "response.output_text.delta")
assert helped == rest, helped

# Background, polled to its end.
polled = mock.responses.create(model="mock", input=[{"role": "user", "content": "count"}],
                               max_output_tokens=10, background=True, metadata={"job": "42"})
assert polled.status in ("queued", "in_progress"), polled
polled = wait(mock, polled.id, ended, "the end of a background response")
assert polled.status == "incomplete" and polled.output_text == mock_text(10), polled
assert polled.metadata == {"job": "42"}, polled.metadata

# Input items, then delete: the SDK's deletion returns None and the id is gone.
items = mock.responses.input_items.list(polled.id)
assert [i.type for i in items.data] == ["message"], items
assert items.data[0].role == "user" and items.data[0].content[0].text == "count", items.data[0]
assert mock.responses.delete(polled.id) is None
try:
    mock.responses.retrieve(polled.id)
    raise AssertionError("a deleted response was found")
except openai.NotFoundError:
    pass

# Cancel a background response while it runs.
running = mock.responses.create(model="mock", input="long", max_output_tokens=3000, background=True)
wait(mock, running.id, lambda r: r.output_text != "", "the first token")
cancelled = mock.responses.cancel(running.id)
assert cancelled.status == "cancelled", cancelled
assert mock.responses.retrieve(running.id).status == "cancelled"

# Errors are the SDK's exceptions.
try:
    mock.responses.create(model="mock", input="hi",
                          tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}])
    raise AssertionError("the mock took tools")
except openai.BadRequestError as e:
    assert e.code == "unsupported_parameter", e
for call in (lambda: mock.responses.retrieve("st_0123456789abcdef01234567"),
             lambda: mock.responses.create(model="no-such-model", input="hi")):
    try:
        call()
        raise AssertionError("no error")
    except openai.NotFoundError:
        pass

# Function calls through spool from the upstream, and the tool loop.
tools = [
    {"type": "function", "name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"type": "function", "name": "get_time",
     "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
]
question = [{"role": "user", "content": "What is the weather and time in Oslo?"}]
with agent.responses.stream(model="agent", input=question, tools=tools) as helper:
    argument_deltas = sum(1 for e in helper if e.type == "response.function_call_arguments.delta")
    first = helper.get_final_response()
assert argument_deltas > 2, argument_deltas
assert first.status == "completed", first
calls = [o for o in first.output if o.type == "function_call"]
assert [c.name for c in calls] == ["get_weather", "get_time"], calls
assert calls[0].arguments == '{"city":"Oslo","unit":"celsius"}', calls[0]
reasoning = [o for o in first.output if o.type == "reasoning"]
assert reasoning and reasoning[0].content[0].text == "The user wants weather and time.", reasoning
assert first.output_text == "Let me check.", first.output_text
results = {"get_weather": '{"temp": 21}', "get_time": '{"time": "14:05"}'}
loop = question + [c.model_dump(exclude_none=True) for c in calls]
loop += [{"type": "function_call_output", "call_id": c.call_id, "output": results[c.name]} for c in calls]
answer = agent.responses.create(model="agent", input=loop, tools=tools)
assert answer.status == "completed", answer
assert answer.output_text == "It is 21°C and sunny in Oslo.", answer.output_text
# The same loop on the server: only the outputs go up, with previous_response_id.
outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": results[c.name]} for c in calls]
chained = agent.responses.create(model="agent", previous_response_id=first.id, input=outputs, tools=tools)
assert chained.previous_response_id == first.id, chained
assert chained.output_text == "It is 21°C and sunny in Oslo.", chained.output_text

# store=False: answered, then not kept to be retrieved or continued.
unstored = mock.responses.create(model="mock", input="hi", max_output_tokens=2, store=False)
assert unstored.store is False and unstored.output_text == mock_text(2), unstored
wait_gone = time.monotonic() + 20
while True:
    try:
        mock.responses.retrieve(unstored.id)
    except openai.NotFoundError:
        break
    assert time.monotonic() < wait_gone, "a store=False response was kept"
    time.sleep(0.02)
print(f"python responses ({response_id}): ok")
