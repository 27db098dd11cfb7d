"""Failures per target: backoff retries, fallback, 429 and 401/403 key handling, pass-through of
client errors, circuit breaking, and the error when everything fails."""

import time

import openai
import pytest
import requests

from conftest import free_port

MSG = [{"role": "user", "content": "hi"}]


def chat(gw, headers=None, stream=False, model="m"):
    return requests.post(
        gw.url + "/v1/chat/completions",
        json={"model": model, "messages": MSG, "stream": stream},
        headers=headers or {},
        timeout=20,
    )


def two_targets(sim, first_keys="[{key: sk-a}]", extra=""):
    return dict(
        providers=f"""\
  first:
    kind: openai
    base_url: {sim.url}/v1
    keys: {first_keys}
    timeouts: {{first_byte_ms: 600}}
  second:
    kind: openai
    base_url: {sim.url}/v1
    keys: [{{key: sk-second}}]
""",
        models="models:\n  - id: first/primary\n  - id: second/backup\n",
        rules="rules:\n  - name: m\n    match: {model: m}\n    targets: [{to: first/primary}]\n    fallback: [second/backup]\n",
        extra=extra,
    )


def models_seen(sim, n):
    return [(r["body"]["model"], r["headers"].get("authorization")) for r in sim.requests()[-n:]]


@pytest.mark.parametrize("fault", ["500", "502", "503", "html", "reset", "stall"])
def test_each_fault_retries_with_backoff_then_falls_back(make_gateway, sim, fault):
    gw = make_gateway(**two_targets(sim, first_keys="[{key: sk-fault-%s}]" % fault))
    sim.clear()
    r = chat(gw)
    assert r.status_code == 200, r.text
    assert r.headers["x-tollgate-model"] == "second/backup"
    assert r.headers["x-tollgate-attempts"] == "3"
    assert models_seen(sim, 3) == [
        ("primary", f"Bearer sk-fault-{fault}"),
        ("primary", f"Bearer sk-fault-{fault}"),
        ("backup", "Bearer sk-second"),
    ]
    assert [q["outcome"] for q in sim.requests()[-3:]][-1] == "ok", "one success upstream, billed once"


@pytest.mark.parametrize("fault", ["503", "stall", "reset"])
def test_stream_failing_before_its_first_byte_falls_back(make_gateway, sim, fault):
    gw = make_gateway(**two_targets(sim, first_keys="[{key: sk-fault-%s}]" % fault))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model="m", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "sim reply to: hi"


def test_429_moves_to_the_next_key_at_once_and_cools_the_key_down(make_gateway, sim):
    keys = "[{key: sk-fault-429, name: hot, weight: 1000}, {key: sk-cool, name: cool, weight: 0.001}]"
    gw = make_gateway(**two_targets(sim, first_keys=keys))
    sim.clear()
    started = time.monotonic()
    r = chat(gw)
    assert r.status_code == 200 and r.headers["x-tollgate-model"] == "first/primary"
    assert models_seen(sim, 2) == [("primary", "Bearer sk-fault-429"), ("primary", "Bearer sk-cool")]
    assert time.monotonic() - started < 0.5, "no backoff after a 429"
    # The hot key sits out its Retry-After (1 s), so the next request goes straight to the other.
    sim.clear()
    assert chat(gw).status_code == 200
    assert models_seen(sim, 1) == [("primary", "Bearer sk-cool")]


def test_401_and_403_mark_the_key_bad_and_use_the_next(make_gateway, sim):
    for fault in ("401", "403"):
        keys = f"[{{key: sk-fault-{fault}, weight: 1000}}, {{key: sk-good, weight: 0.001}}]"
        gw = make_gateway(**two_targets(sim, first_keys=keys))
        sim.clear()
        assert chat(gw).status_code == 200
        assert models_seen(sim, 2) == [("primary", f"Bearer sk-fault-{fault}"), ("primary", "Bearer sk-good")]
        sim.clear()
        for _ in range(5):
            assert chat(gw).status_code == 200
        assert {k for _, k in models_seen(sim, 5)} == {"Bearer sk-good"}, "the bad key stays out"


@pytest.mark.parametrize("fault", ["400", "404", "422"])
def test_client_errors_pass_through_untouched(make_gateway, sim, fault):
    gw = make_gateway(**two_targets(sim, first_keys="[{key: sk-fault-%s}]" % fault))
    sim.clear()
    r = chat(gw)
    assert r.status_code == int(fault)
    assert r.json()["error"]["message"].endswith("(simulated).")
    assert len(sim.requests()) == 1, "not retried, no fallback"


def test_all_failing_gives_the_primary_status_and_lists_attempts(make_gateway, sim):
    dead = free_port()
    gw = make_gateway(
        providers=f"""\
  first:
    kind: openai
    base_url: {sim.url}/v1
    keys: [{{key: sk-fault-503}}]
  dead:
    kind: openai
    base_url: http://127.0.0.1:{dead}/v1
""",
        models="models:\n  - id: first/primary\n  - id: dead/backup\n",
        rules="rules:\n  - name: m\n    match: {model: m}\n    targets: [{to: first/primary}]\n    fallback: [dead/backup]\n",
    )
    r = chat(gw)
    assert r.status_code == 503
    msg = r.json()["error"]["message"]
    assert msg.startswith("4 attempts failed:"), msg
    assert msg.count("first/primary (key 0): answered 503") == 2 and msg.count("dead/backup: cannot connect") == 2, msg


def test_all_keys_rate_limited_is_429_with_retry_after(make_gateway, sim):
    gw = make_gateway(
        providers=f"  first:\n    kind: openai\n    base_url: {sim.url}/v1\n    keys: [{{key: sk-fault-429}}]\n",
        models="models:\n  - id: first/primary\n    aliases: [m]\n",
    )
    r = chat(gw)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "answered 429" in r.json()["error"]["message"]


def test_circuit_opens_then_probes_back(make_gateway, sim):
    extra = "retry:\n  attempts_per_target: 1\n  breaker_failures: 2\n  breaker_cooldown_ms: 700\n"
    gw = make_gateway(**two_targets(sim, extra=extra))
    bad = {"x-sim-fault": "500"}
    # Two failures open the first target's circuit (the fallback then answers, with the fault
    # header too, so those requests fail as a whole).
    for _ in range(2):
        chat(gw, headers=bad)
    sim.clear()
    r = chat(gw)
    assert r.status_code == 200 and r.headers["x-tollgate-model"] == "second/backup", "skipped while open"
    assert r.headers["x-tollgate-attempts"] == "1"
    assert models_seen(sim, 1) == [("backup", "Bearer sk-second")]
    time.sleep(0.8)
    r = chat(gw)
    assert r.headers["x-tollgate-model"] == "first/primary", "probed after the cooldown, and closed"
    assert chat(gw).headers["x-tollgate-model"] == "first/primary"


def test_session_header_keeps_a_conversation_on_one_target(make_gateway, sim):
    gw = make_gateway(
        providers=f"  sim:\n    kind: openai\n    base_url: {sim.url}/v1\n",
        models="models:\n  - id: sim/a\n  - id: sim/b\n",
        rules="rules:\n  - name: m\n    match: {model: m}\n    targets: [{to: sim/a}, {to: sim/b}]\n",
    )
    for session in ("conv-1", "conv-2", "conv-3", "conv-4"):
        seen = {chat(gw, headers={"x-tollgate-session": session}).headers["x-tollgate-model"] for _ in range(8)}
        assert len(seen) == 1, (session, seen)
    spread = {chat(gw).headers["x-tollgate-model"] for _ in range(40)}
    assert spread == {"sim/a", "sim/b"}


def test_gateway_errors_close_the_connection_they_cannot_reuse(make_gateway, sim):
    gw = make_gateway(**two_targets(sim))
    s = requests.Session()
    for i in range(4):
        headers = {"x-sim-fault": "500"} if i % 2 == 0 else {}
        r = s.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, headers=headers, timeout=20)
        assert r.status_code == (500 if i % 2 == 0 else 200)
        if r.status_code == 500:
            assert r.headers["connection"] == "close"


def test_keys_cooling_down_give_503_with_the_reason(make_gateway, sim):
    gw = make_gateway(
        providers=f"  first:\n    kind: openai\n    base_url: {sim.url}/v1\n    keys: [{{key: sk-fault-401}}]\n",
        models="models:\n  - id: first/primary\n    aliases: [m]\n",
    )
    assert chat(gw).status_code == 401
    r = chat(gw)
    assert r.status_code == 503
    assert "every key is cooling down" in r.json()["error"]["message"]


@pytest.fixture
def scripted():
    """An upstream whose answer is chosen by the key: `retry-after-120` answers 429 with
    Retry-After: 120; `nonsense` answers 200 with JSON that is no answer; `cut` streams two
    chunks and ends without [DONE]."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            key = self.headers.get("authorization", "")
            if "nonsense" in key or "nonsense" in self.headers.get("x-api-key", ""):
                body = b'{"this is": "not an answer"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
            elif "retry-after-120" in key:
                body = b'{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}'
                self.send_response(429)
                self.send_header("retry-after", "120")
            else:
                chunk = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"part"}}]}\n\n'
                body = chunk * 2
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("kind,path", [("anthropic", "/v1/chat/completions"), ("openai", "/v1/messages")])
def test_an_answer_that_cannot_be_translated_is_a_502_not_a_200(make_gateway, scripted, kind, path):
    base = scripted if kind == "anthropic" else scripted + "/v1"
    gw = make_gateway(
        providers=f"  up:\n    kind: {kind}\n    base_url: {base}\n    keys: [{{key: nonsense}}]\n",
        models="models:\n  - id: up/primary\n    aliases: [m]\n",
    )
    body = {"model": "m", "max_tokens": 10, "messages": MSG}
    r = requests.post(gw.url + path, json=body, timeout=10)
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert (err["type"] if kind == "openai" else err["code"]) in ("untranslatable_response", "api_error"), err
    assert "could not be translated" in err["message"]
    assert gw.log()[-1]["status"] == 502


def test_retry_after_reaches_the_client(make_gateway, scripted):
    gw = make_gateway(
        providers=f"  up:\n    kind: openai\n    base_url: {scripted}/v1\n    keys: [{{key: retry-after-120}}]\n",
        models="models:\n  - id: up/primary\n    aliases: [m]\n",
    )
    r = chat(gw)
    assert r.status_code == 429 and r.headers["retry-after"] == "120"


def test_a_stream_cut_without_its_end_ends_with_an_error_event(make_gateway, scripted):
    gw = make_gateway(
        providers=f"  up:\n    kind: openai\n    base_url: {scripted}/v1\n    keys: [{{key: cut}}]\n",
        models="models:\n  - id: up/primary\n    aliases: [m]\n",
    )
    r = chat(gw, stream=True)
    events = [e for e in r.text.split("\n\n") if e.strip()]
    assert len(events) == 3 and "upstream_stream_error" in events[-1]
    assert gw.log()[-1]["error"] == "upstream_stream_incomplete"


def test_a_target_that_cannot_serve_the_request_is_skipped_not_blamed(make_gateway, sim):
    gw = make_gateway(
        providers=f"""\
  claude:
    kind: anthropic
    base_url: {sim.url}/v1
  down:
    kind: openai
    base_url: {sim.url}/v1
    keys: [{{key: sk-fault-503}}]
""",
        models="models:\n  - id: claude/c\n  - id: down/emb\n",
        rules="rules:\n  - name: e\n    match: {model: e}\n    targets: [{to: claude/c}]\n    fallback: [down/emb]\n",
    )
    r = requests.post(gw.url + "/v1/embeddings", json={"model": "e", "input": "x"}, timeout=20)
    assert r.status_code == 503, r.text
    msg = r.json()["error"]["message"]
    assert msg.startswith("2 attempts failed:") and "claude/c: skipped, provider `claude` has no embeddings API" in msg


def test_translated_answers_keep_the_connection_alive(make_gateway, sim):
    gw = make_gateway(
        providers=f"  claude:\n    kind: anthropic\n    base_url: {sim.url}/v1\n",
        models="models:\n  - id: claude/c\n    aliases: [m]\n",
    )
    s = requests.Session()
    for _ in range(3):
        r = s.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, timeout=10)
        # Held whole, then framed by its real length; the connection stays open for the next.
        assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
        assert r.headers.get("connection", "").lower() != "close"
    assert r.json()["choices"][0]["message"]["content"] == "sim reply to: hi"
