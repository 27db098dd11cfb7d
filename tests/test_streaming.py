"""Streams stream; a client that leaves cancels the upstream; large bodies arrive whole."""

import json
import socket
import time

import openai
import pytest
import requests

from conftest import free_port


def test_chunks_arrive_as_they_are_made(gateway):
    """10 chunks paced 50 ms apart reach the client spread over ~450 ms, not in one burst."""
    client = openai.OpenAI(
        base_url=gateway.url + "/v1", api_key="x", max_retries=0,
        default_headers={"x-sim-chunks": "10", "x-sim-chunk-gap-ms": "50"},
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three four five six seven eight nine ten"}],
        stream=True,
    )
    arrivals = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 10
    spread = arrivals[-1] - arrivals[0]
    assert 0.35 < spread < 2.0, spread
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert sum(g > 0.02 for g in gaps) >= 8, gaps


def test_client_disconnect_cancels_upstream(gateway, sim):
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g h"}]})
    raw = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        f"x-sim-chunks: 20\r\nx-sim-chunk-gap-ms: 100\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(raw)
    got = b""
    while b"data:" not in got:
        got += sock.recv(4096)
    assert got.startswith(b"HTTP/1.1 200")
    assert sim.requests()[-1]["outcome"] == "streaming"
    # Leave mid-stream.
    sock.close()
    deadline = time.time() + 5
    outcome = None
    while time.time() < deadline:
        outcome = sim.requests()[-1]["outcome"]
        if outcome != "streaming":
            break
        time.sleep(0.05)
    assert outcome == "cancelled", "the simulator must see its connection closed"
    line = gateway.log()[-1]
    assert line["error"] == "client_closed"


def big_prompt() -> str:
    return "word " * (1024 * 1024 // 5)


def test_one_mib_prompt_non_stream_and_stream(gateway, sim):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    prompt = big_prompt()
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    assert r.choices[0].message.content.startswith("sim reply to: word word")
    got = sim.requests()[-1]
    assert got["body"]["messages"][0]["content"] == prompt
    assert got["body_len"] > 1024 * 1024

    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True
    ))
    assert chunks
    assert sim.requests()[-1]["body"]["messages"][0]["content"] == prompt


@pytest.mark.parametrize("size", [1000, 60_000, 70_000, 1024 * 1024])
def test_prompt_through_a_retry(make_gateway, sim, size):
    """The first target refuses connections; the whole body reaches the fallback, whether it
    fits Pingora's 64 KiB replay buffer or not."""
    dead = free_port()
    gw = make_gateway(
        providers=f"""\
  dead:
    kind: openai
    base_url: http://127.0.0.1:{dead}/v1
    keys: [{{key: sk-dead}}]
  sim:
    kind: openai
    base_url: {sim.url}/v1
""",
        models="models:\n  - id: dead/gpt-4o-mini\n  - id: sim/gpt-4o-mini\n",
        rules="rules:\n  - name: r1\n    match: {model: gpt-4o-mini}\n    targets: [{to: dead/gpt-4o-mini}]\n    fallback: [sim/gpt-4o-mini]\n",
    )
    prompt = "word " * (size // 5)
    for stream in (False, True):
        r = requests.post(
            gw.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": prompt}]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-attempts"] == "3", "the dead target twice (with backoff), then the fallback"
        assert r.headers["x-tollgate-provider"] == "sim"
        got = sim.requests()[-1]
        assert got["body"]["messages"][0]["content"] == prompt
        assert "authorization" not in got["headers"], "the sim provider has no key; the client's must not leak"
    assert gw.log()[-1]["attempts"] == 3
