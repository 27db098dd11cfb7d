"""The official openai SDK against the gateway, served by the simulator."""

import json

import openai
import pytest


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client-key", max_retries=0)


def test_chat_non_stream(client, gateway, sim):
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    assert r.choices[0].message.content == "sim reply to: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 5
    # The upstream got the provider's key and the catalog model name, not the client's key.
    seen = sim.requests()[-1]
    assert seen["headers"]["authorization"] == "Bearer sk-sim-provider"
    assert seen["body"]["model"] == "gpt-4o-mini"
    line = gateway.log()[-1]
    assert line["status"] == 200 and line["provider"] == "sim" and line["model"] == "gpt-4o-mini"
    assert line["prompt_tokens"] == r.usage.prompt_tokens
    assert line["completion_tokens"] == r.usage.completion_tokens


def test_answers_differ_by_request(client):
    a = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one"}])
    b = client.chat.completions.create(model="sim/gpt-4o-mini", messages=[{"role": "user", "content": "two"}])
    assert a.choices[0].message.content != b.choices[0].message.content


def test_chat_stream_collects_all_chunks_and_usage(client, gateway):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream me a reply please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "sim reply to: stream me a reply please"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    line = gateway.log()[-1]
    assert line["stream"] is True and line["completion_tokens"] == 8 and line["usage_seen"] is True


def test_stream_without_usage_hides_the_usage_chunk_but_records_it(client, gateway, sim):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "the usage-only chunk must not reach the client"
    # The gateway asked upstream for usage, and recorded it.
    assert sim.requests()[-1]["body"]["stream_options"] == {"include_usage": True}
    line = gateway.log()[-1]
    assert line["usage_seen"] is True and line["completion_tokens"] == 5


def test_tool_calls_round_trip(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages = [{"role": "user", "content": "weather in Paris?"}]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sim"}
    messages += [
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    r2 = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    assert r2.choices[0].message.content == "sim saw tool result: sunny, 21C"


def test_tool_calls_stream(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "find"}], tools=tools, stream=True
        )
    )
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices
        for tc in (c.choices[0].delta.tool_calls or [])
    )
    assert json.loads(args) == {"q": "sim"}


def test_embeddings(client, gateway):
    r = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 64
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens > 0
    assert gateway.log()[-1]["prompt_tokens"] == r.usage.prompt_tokens


def test_completions(client):
    r = client.completions.create(model="gpt-4o-mini", prompt="say hi")
    assert r.choices[0].text == "sim completion: say hi"


def test_model_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["sim/gpt-4o-mini", "gpt-4o-mini", "sim/text-embedding-3-small", "text-embedding-3-small"]


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
