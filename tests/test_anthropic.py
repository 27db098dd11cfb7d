"""Anthropic both ways: OpenAI clients on Claude models (translated), and the anthropic SDK on
/v1/messages, served natively by an Anthropic provider or translated to an OpenAI-compatible one.
The simulator plays both providers."""

import json

import anthropic
import openai
import pytest
import requests


@pytest.fixture
def gw(make_gateway, sim):
    return make_gateway(
        providers=f"""\
  claude:
    kind: anthropic
    base_url: {sim.url}/v1
    keys: [{{key: sk-ant-provider}}]
  sim:
    kind: openai
    base_url: {sim.url}/v1
    keys: [{{key: sk-sim-provider}}]
""",
        models="models:\n  - id: claude/claude-sonnet-4-5\n    aliases: [sonnet]\n  - id: sim/gpt-4o-mini\n    aliases: [gpt-4o-mini]\n",
    )


TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def oa(gw, **headers):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="client", max_retries=0, default_headers=headers)


def ant(gw):
    return anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)


def test_openai_client_on_claude_non_stream(gw, sim):
    r = oa(gw).chat.completions.create(
        model="sonnet",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": [{"type": "text", "text": "hello claude"},
                                         {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
        ],
    )
    assert r.choices[0].message.content == "sim reply to: hello claude"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    sent = sim.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == "sk-ant-provider" and "authorization" not in sent["headers"]
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    body = sent["body"]
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 4096
    assert [b["text"] for b in body["system"]] == ["Be brief.", "Be kind."]
    assert body["messages"][0]["content"][1]["source"] == {"type": "url", "url": "https://example.com/cat.png"}
    line = gw.log()[-1]
    assert line["provider"] == "claude" and line["prompt_tokens"] == r.usage.prompt_tokens


def test_openai_client_on_claude_stream_with_usage(gw):
    chunks = list(oa(gw, **{"x-sim-cached-tokens": "5"}).chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "stream it please"}],
        stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "sim reply to: stream it please"
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 5
    line = gw.log()[-1]
    assert line["cached_tokens"] == 5 and line["completion_tokens"] == chunks[-1].usage.completion_tokens


def test_openai_client_tool_round_trip_on_claude(gw, sim):
    client = oa(gw)
    messages = [{"role": "user", "content": "weather in Paris?"}]
    r = client.chat.completions.create(model="sonnet", messages=messages, tools=TOOLS, tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.id.startswith("toolu_") and json.loads(call.function.arguments) == {"city": "sim"}
    assert sim.requests()[-1]["body"]["tool_choice"] == {"type": "any"}
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    r2 = client.chat.completions.create(model="sonnet", messages=messages, tools=TOOLS)
    assert r2.choices[0].message.content == "sim saw tool result: sunny"
    sent = sim.requests()[-1]["body"]["messages"]
    assert sent[1]["content"][0] == {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "sim"}}
    assert sent[2]["content"][0]["type"] == "tool_result" and sent[2]["content"][0]["tool_use_id"] == call.id


def test_parallel_tool_calls_stream_keep_their_index(gw):
    chunks = list(oa(gw, **{"x-sim-parallel-tools": "2"}).chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "two tools"}], tools=TOOLS, stream=True,
    ))
    args = {}
    ids = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
            if tc.id:
                ids[tc.index] = tc.id
    assert sorted(args) == [0, 1] and len(set(ids.values())) == 2
    assert all(json.loads(a) == {"city": "sim"} for a in args.values())


def test_claude_errors_reach_openai_clients_in_openai_shape(gw):
    with pytest.raises(openai.BadRequestError) as e:
        oa(gw, **{"x-sim-fault": "400"}).chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 400
    assert e.value.body["message"].endswith("(simulated).")


def test_anthropic_sdk_native_to_claude(gw, sim):
    client = ant(gw)
    m = client.messages.create(model="sonnet", max_tokens=100, system="Be brief.",
                               messages=[{"role": "user", "content": "hi there"}])
    assert m.content[0].text == "sim reply to: hi there" and m.stop_reason == "end_turn"
    sent = sim.requests()[-1]
    assert sent["path"] == "/v1/messages" and sent["headers"]["x-api-key"] == "sk-ant-provider"
    assert sent["body"]["model"] == "claude-sonnet-4-5" and sent["body"]["system"] == "Be brief."
    with client.messages.stream(model="sonnet", max_tokens=100, messages=[{"role": "user", "content": "a b"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "sim reply to: a b" and final.usage.output_tokens > 0
    line = gw.log()[-1]
    assert line["completion_tokens"] == final.usage.output_tokens and line["prompt_tokens"] > 0


def test_anthropic_sdk_on_an_openai_model(gw, sim):
    client = ant(gw)
    m = client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hello gpt"}])
    assert m.content[0].text == "sim reply to: hello gpt"
    assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0
    sent = sim.requests()[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "gpt-4o-mini"
    with client.messages.stream(model="gpt-4o-mini", max_tokens=50,
                                messages=[{"role": "user", "content": "stream from gpt"}]) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events and "message_delta" in events
    assert final.content[0].text == "sim reply to: stream from gpt"
    assert final.usage.output_tokens > 0


def test_anthropic_sdk_tools_through_an_openai_model(gw):
    tools = [{"name": "get_weather", "description": "w", "input_schema": TOOLS[0]["function"]["parameters"]}]
    m = ant(gw).messages.create(model="gpt-4o-mini", max_tokens=50, tools=tools,
                                messages=[{"role": "user", "content": "weather?"}])
    assert m.stop_reason == "tool_use"
    block = next(b for b in m.content if b.type == "tool_use")
    assert block.name == "get_weather" and block.input == {"city": "sim"}


def test_count_tokens_and_anthropic_shaped_errors(gw):
    client = ant(gw)
    n = client.messages.count_tokens(model="sonnet", messages=[{"role": "user", "content": "x" * 400}])
    assert 90 <= n.input_tokens <= 130
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    r = requests.post(gw.url + "/v1/messages", json={"model": "sonnet", "max_tokens": "many", "messages": [
        {"role": "user", "content": "x"}]}, headers={"anthropic-version": "2023-06-01"}, timeout=10)
    assert r.status_code == 400
    assert r.json()["type"] == "error" and "`max_tokens` must be an integer" in r.json()["error"]["message"]
    r = requests.post(gw.url + "/v1/messages", json={"model": "sonnet", "messages": [{"role": "user", "content": "x"}]},
                      timeout=10)
    assert r.status_code == 400 and "`max_tokens` is required" in r.json()["error"]["message"]
    for bad in ([1], None, "text", {"model": "sonnet"}, {"model": "sonnet", "messages": {"role": "user"}}):
        r = requests.post(gw.url + "/v1/messages/count_tokens", json=bad, timeout=10)
        assert r.status_code == 400 and r.json()["type"] == "error", (bad, r.text)
    r = requests.post(gw.url + "/v1/messages/count_tokens", json={"model": "nope", "messages": [
        {"role": "user", "content": "x"}]}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_embeddings_cannot_go_to_claude(gw):
    with pytest.raises(openai.BadRequestError) as e:
        oa(gw).embeddings.create(model="sonnet", input="x")
    assert "no embeddings API" in e.value.body["message"]
