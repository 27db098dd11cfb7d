"""The response cache end to end: exact and semantic layers, per-request headers, streams cached
and replayed in either form, tenant isolation, accounting, the admin API, Redis shared by two
gateways, and the three embedders (static, MiniLM, remote through a provider)."""

import os
import subprocess
import time

import anthropic
import openai
import pytest
import requests

from conftest import BIN, ROOT, free_port
from test_governance import redis_url  # noqa: F401  (fixture)

MODELS_DIR = os.environ.get("TOLLGATE_MODELS", str(ROOT / "models"))
MSG = [{"role": "user", "content": "How do I reset my password?"}]
ADMIN_KEY = "admin-secret-1"
MODELS = """\
models:
  - id: sim/gpt-4o-mini
    aliases: [gpt-4o-mini]
  - id: sim/gpt-4o
    aliases: [gpt-4o]
  - id: sim/text-embedding-3-small
    aliases: [text-embedding-3-small]
  - id: sim/claude-3-5-haiku
    aliases: [claude-3-5-haiku]
"""


def cache_section(embedder: str | None = "static", threshold: float = 0.9, extra: str = "") -> str:
    s = "cache:\n  mode: exact\n" + extra
    if embedder == "static":
        s += f"  semantic:\n    embedder: {{kind: static, path: {MODELS_DIR}/static}}\n"
    elif embedder == "minilm":
        s += f"  semantic:\n    embedder: {{kind: minilm, path: {MODELS_DIR}/minilm}}\n"
    elif embedder == "remote":
        s += ("  semantic:\n    embedder: {kind: remote, provider: sim, "
              "model: text-embedding-3-small, dims: 64}\n")
    if embedder:
        s += f"    threshold: {threshold}\n"
    return s


def upstream_calls(sim, path="/v1/chat/completions") -> int:
    return sum(1 for r in sim.requests() if r.get("path") == path)


def chat(gw, headers=None, **body):
    body = {"model": "gpt-4o-mini", "messages": MSG, **body}
    return requests.post(gw.url + "/v1/chat/completions", headers=headers or {}, json=body,
                         timeout=20)


@pytest.fixture
def cgw(make_gateway):
    return make_gateway(extra=cache_section(), models=MODELS)


def settle():
    """Cache writes happen off the request path, just after the answer."""
    time.sleep(0.15)


def test_exact_hit_with_the_openai_sdk_serves_the_same_answer_without_an_upstream_call(cgw, sim):
    client = openai.OpenAI(base_url=cgw.url + "/v1", api_key="unused")
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert first.headers["x-tollgate-cache"] == "miss"
    settle()
    second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert second.headers["x-tollgate-cache"] == "hit-exact"
    assert len(second.headers["x-tollgate-cache-key"]) == 32
    a, b = first.parse(), second.parse()
    assert a.choices[0].message.content == b.choices[0].message.content
    assert b.usage.prompt_tokens == a.usage.prompt_tokens
    assert b.usage.prompt_tokens_details.cached_tokens == b.usage.prompt_tokens, "served from cache"
    assert upstream_calls(sim) == 1


def test_key_order_whitespace_numbers_and_user_do_not_split_the_key(cgw, sim):
    base = '{"model":"gpt-4o-mini","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}'
    same = [
        '{ "messages" : [ {"content":"hi", "role":"user"} ],\n "temperature": 0.50, "model":"gpt-4o-mini" }',
        '{"model":"gpt-4o-mini","temperature":5e-1,"user":"alice","messages":[{"role":"user","content":"hi"}]}',
        '{"model":"sim/gpt-4o-mini","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}',
    ]
    h = {"content-type": "application/json"}
    r = requests.post(cgw.url + "/v1/chat/completions", data=base, headers=h, timeout=10)
    assert r.headers["x-tollgate-cache"] == "miss"
    settle()
    for body in same:
        r = requests.post(cgw.url + "/v1/chat/completions", data=body, headers=h, timeout=10)
        assert r.status_code == 200
        assert r.headers["x-tollgate-cache"] == "hit-exact", body
    assert upstream_calls(sim) == 1


def test_max_tokens_temperature_tools_and_model_never_share_an_entry(cgw, sim):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    variants = [
        {},
        {"max_tokens": 50},
        {"max_tokens": 51},
        {"temperature": 0.2},
        {"temperature": 0.3},
        {"tools": tools},
        {"tools": tools, "tool_choice": "none"},
        {"model": "gpt-4o"},
        {"seed": 7},
        {"response_format": {"type": "json_object"}},
    ]
    for v in variants:
        r = chat(cgw, **v)
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-cache"] == "miss", v
        settle()
    assert upstream_calls(sim) == len(variants)
    for v in variants:
        assert chat(cgw, **v).headers["x-tollgate-cache"] == "hit-exact", v
    assert upstream_calls(sim) == len(variants)


def test_tenants_do_not_share_entries_but_a_team_does(make_gateway, sim):
    gov = (
        "governance:\n  auth: required\n  store: gov.db\n"
        "  teams:\n    - {id: red}\n    - {id: blue}\n"
        "  keys:\n"
        "    - {id: r1, key: sk-red-1, team: red}\n"
        "    - {id: r2, key: sk-red-2, team: red}\n"
        "    - {id: b1, key: sk-blue-1, team: blue}\n"
        "    - {id: solo, key: sk-solo}\n"
    )
    gw = make_gateway(extra=cache_section() + gov, models=MODELS)
    auth = lambda k: {"authorization": f"Bearer {k}"}  # noqa: E731
    assert chat(gw, auth("sk-red-1")).headers["x-tollgate-cache"] == "miss"
    settle()
    assert chat(gw, auth("sk-red-2")).headers["x-tollgate-cache"] == "hit-exact", "same team"
    assert chat(gw, auth("sk-blue-1")).headers["x-tollgate-cache"] == "miss", "other team"
    assert chat(gw, auth("sk-solo")).headers["x-tollgate-cache"] == "miss", "no team: own key"
    settle()
    # Semantic lookups stay inside the partition too.
    para = [{"role": "user", "content": "how do i reset my password"}]
    h = {**auth("sk-blue-1"), "x-tollgate-cache": "semantic"}
    assert chat(gw, h, messages=para).headers["x-tollgate-cache"] == "hit-semantic"
    h = {**auth("sk-red-1"), "x-tollgate-cache": "semantic", "x-tollgate-cache-namespace": "other"}
    assert chat(gw, h).headers["x-tollgate-cache"] == "miss", "namespaces are apart"
    assert upstream_calls(sim) == 4


def test_a_stream_is_cached_and_replayed_as_a_stream_and_as_a_whole_answer(cgw, sim):
    client = openai.OpenAI(base_url=cgw.url + "/v1", api_key="unused")
    msgs = [{"role": "user", "content": "Tell me a story"}]

    def stream_text(opts=None):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=msgs, stream=True, stream_options=opts)
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw.headers["x-tollgate-cache"], text, chunks

    status, text, _ = stream_text()
    assert status == "miss" and text
    settle()
    status2, text2, chunks = stream_text({"include_usage": True})
    assert (status2, text2) == ("hit-exact", text)
    usage = chunks[-1].usage
    assert usage.prompt_tokens > 0 and usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens
    whole = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs)
    assert whole.headers["x-tollgate-cache"] == "hit-exact"
    assert whole.parse().choices[0].message.content == text
    assert upstream_calls(sim) == 1
    # And the reverse: a whole answer serves a stream.
    other = [{"role": "user", "content": "Name a colour"}]
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=other)
    settle()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=other,
                                                           stream=True)
    assert raw.headers["x-tollgate-cache"] == "hit-exact"
    assert raw.headers["content-type"].startswith("text/event-stream")
    streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert streamed == answer.choices[0].message.content
    assert upstream_calls(sim) == 2


def test_a_cut_stream_and_an_error_are_never_cached(cgw, sim):
    r = chat(cgw, {"x-sim-fault": "midstream"}, stream=True)
    assert "error" in r.text
    settle()
    r = chat(cgw, stream=True)
    assert r.headers["x-tollgate-cache"] == "miss", "the cut stream was not stored"
    assert r.text.rstrip().endswith("[DONE]")
    other = [{"role": "user", "content": "something else"}]
    assert chat(cgw, {"x-sim-fault": "bad_request"}, messages=other).status_code == 400
    settle()
    assert chat(cgw, messages=other).headers["x-tollgate-cache"] == "miss"
    assert upstream_calls(sim) == 4
    # The gateway's own error, after every attempt failed, still says it was a miss.
    third = [{"role": "user", "content": "a third question"}]
    r = chat(cgw, {"x-sim-fault": "500"}, messages=third)
    assert r.status_code == 500 and r.json()["error"]["code"]
    assert r.headers["x-tollgate-cache"] == "miss"
    settle()
    assert chat(cgw, messages=third).headers["x-tollgate-cache"] == "miss"


def test_semantic_layer_with_the_static_embedder(cgw, sim):
    h = {"x-tollgate-cache": "semantic"}
    assert chat(cgw, h).headers["x-tollgate-cache"] == "miss"
    settle()
    r = chat(cgw, h, messages=[{"role": "user", "content": "how do I reset my password"}])
    assert r.headers["x-tollgate-cache"] == "hit-semantic"
    assert 0.9 <= float(r.headers["x-tollgate-cache-similarity"]) <= 1.0
    # Unrelated, or the same words under another system prompt: no hit.
    assert chat(cgw, h, messages=[{"role": "user", "content": "What's the weather in Paris?"}]) \
        .headers["x-tollgate-cache"] == "miss"
    sys_msgs = [{"role": "system", "content": "Answer in French."}, *MSG]
    assert chat(cgw, h, messages=sys_msgs).headers["x-tollgate-cache"] == "miss"
    # The exact layer alone does not match paraphrases (a semantic hit stores nothing new).
    r = chat(cgw, {"x-tollgate-cache": "exact"},
             messages=[{"role": "user", "content": "how do I reset my password"}])
    assert r.headers["x-tollgate-cache"] == "miss"
    assert upstream_calls(sim) == 4


def test_request_headers_control_mode_ttl_threshold_no_store_and_namespace(cgw, sim):
    off = {"x-tollgate-cache": "off"}
    r = chat(cgw, off)
    assert "x-tollgate-cache" not in r.headers
    settle()
    assert chat(cgw, off).status_code == 200
    assert upstream_calls(sim) == 2, "off neither reads nor writes"
    assert chat(cgw, {"x-tollgate-cache-no-store": "true"}).headers["x-tollgate-cache"] == "miss"
    settle()
    assert chat(cgw, {"cache-control": "no-store"}).headers["x-tollgate-cache"] == "miss"
    settle()
    assert chat(cgw).headers["x-tollgate-cache"] == "miss", "no-store wrote nothing"
    settle()
    assert chat(cgw).headers["x-tollgate-cache"] == "hit-exact"
    # TTL: a 1 s entry is gone after 1 s.
    m = [{"role": "user", "content": "short lived"}]
    assert chat(cgw, {"x-tollgate-cache-ttl": "1"}, messages=m).headers["x-tollgate-cache"] == "miss"
    settle()
    assert chat(cgw, messages=m).headers["x-tollgate-cache"] == "hit-exact"
    time.sleep(1.1)
    assert chat(cgw, messages=m).headers["x-tollgate-cache"] == "miss"
    # Threshold: a stricter one turns a paraphrase hit into a miss.
    sem = {"x-tollgate-cache": "semantic"}
    para = [{"role": "user", "content": "how do I reset my password"}]
    strict = {**sem, "x-tollgate-cache-threshold": "0.99999"}
    assert chat(cgw, strict, messages=para, max_tokens=9).headers["x-tollgate-cache"] == "miss"
    settle()
    q = [{"role": "user", "content": "How do I reset my password?"}]
    r = chat(cgw, {**sem, "x-tollgate-cache-threshold": "0.99999"}, messages=q, max_tokens=9)
    assert r.headers["x-tollgate-cache"] == "miss"
    r = chat(cgw, {**sem, "x-tollgate-cache-threshold": "0.5"}, messages=[
        {"role": "user", "content": "I need to reset my password"}], max_tokens=9)
    assert r.headers["x-tollgate-cache"] == "hit-semantic"
    # Namespace: apart.
    ns = {"x-tollgate-cache-namespace": "tenant-7"}
    assert chat(cgw, ns).headers["x-tollgate-cache"] == "miss"
    for name, bad in [("x-tollgate-cache", "maybe"), ("x-tollgate-cache-ttl", "soon"),
                      ("x-tollgate-cache-threshold", "2"), ("x-tollgate-cache-namespace", "a/b")]:
        r = chat(cgw, {name: bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cache_header", name


def test_a_hit_costs_nothing_and_records_what_it_saved(make_gateway, sim):
    gov = (
        "governance:\n  auth: required\n  store: gov.db\n  flush_ms: 100\n"
        f"  admin: {{listen: 127.0.0.1:{free_port()}, key: env:TG_ADMIN}}\n"
        "  prices:\n    gpt-4o-mini: {input: 1000000, output: 2000000}\n"
        "  keys:\n    - {id: k1, key: sk-one, budgets: [{period: day, usd: 100}]}\n"
    )
    gw = make_gateway(extra=cache_section() + gov, models=MODELS, env={"TG_ADMIN": ADMIN_KEY})
    h = {"authorization": "Bearer sk-one"}
    first = chat(gw, h)
    settle()
    second = chat(gw, h)
    assert second.headers["x-tollgate-cache"] == "hit-exact"
    u = first.json()["usage"]
    # $1 per input token and $2 per output token.
    cost = u["prompt_tokens"] * 1 + u["completion_tokens"] * 2
    lines = [l for l in gw.log() if l["path"] == "/v1/chat/completions"]
    assert [l["cache"] for l in lines] == ["miss", "hit-exact"]
    assert float(lines[0]["cost_usd"]) == cost
    assert float(lines[1]["cost_usd"]) == 0
    assert float(lines[1]["cache_saved_usd"]) == cost
    assert lines[1]["provider"] == "sim" and lines[1]["key"] == "k1"
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'tollgate_cache_hits_total{key="k1",layer="exact",model="gpt-4o-mini"} 1' in metrics
    assert 'tollgate_cache_misses_total{key="k1",model="gpt-4o-mini"} 1' in metrics
    assert f'tollgate_cache_saved_usd_total{{layer="exact",model="gpt-4o-mini",key="k1"}} {cost}' \
        in metrics
    # The key was charged once: for the miss.
    admin = gw.config.read_text().split("admin: {listen: ")[1].split(",")[0]
    usage = requests.get(f"http://{admin}/admin/usage/key/k1",
                         headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=5).json()
    assert float(usage["usage"][0]["budgets"][0]["used_usd"]) == cost, usage


def test_admin_api_clears_by_namespace_and_by_entry(make_gateway, sim):
    port = free_port()
    gov = f"governance:\n  auth: off\n  store: gov.db\n  admin: {{listen: 127.0.0.1:{port}, key: env:TG_ADMIN}}\n"
    gw = make_gateway(extra=cache_section() + gov, models=MODELS, env={"TG_ADMIN": ADMIN_KEY})
    admin = f"http://127.0.0.1:{port}/admin/cache"
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    a, b = {"x-tollgate-cache-namespace": "a"}, {"x-tollgate-cache-namespace": "b"}
    chat(gw, a)
    chat(gw, b)
    chat(gw)
    settle()
    key = chat(gw).headers["x-tollgate-cache-key"]
    assert requests.delete(admin + "/namespaces/a", headers=auth, timeout=5).json()["cleared"] == 1
    assert chat(gw, a).headers["x-tollgate-cache"] == "miss"
    assert chat(gw, b).headers["x-tollgate-cache"] == "hit-exact"
    r = requests.delete(admin + f"/entries/{key}", headers=auth, timeout=5)
    assert r.status_code == 200
    assert chat(gw).headers["x-tollgate-cache"] == "miss"
    assert requests.delete(admin + f"/entries/{key}", timeout=5).status_code == 401
    for bad in ["/entries/zz", "/entries/+1", "/entries/" + "0" * 33, "/namespaces/" + "n" * 65]:
        r = requests.delete(admin + bad, headers=auth, timeout=5)
        assert r.status_code == 400 and r.json()["error"]["code"].startswith("invalid_"), bad
    settle()
    assert requests.delete(admin, headers=auth, timeout=5).json()["cleared"] >= 2
    assert chat(gw, b).headers["x-tollgate-cache"] == "miss"


def test_anthropic_messages_are_cached_and_replayed_as_a_stream(make_gateway, sim):
    gw = make_gateway(extra=cache_section(), models=MODELS)
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused")
    msgs = [{"role": "user", "content": "Hello Claude"}]
    first = client.messages.with_raw_response.create(model="gpt-4o-mini", max_tokens=64,
                                                     messages=msgs)
    assert first.headers["x-tollgate-cache"] == "miss"
    settle()
    text = first.parse().content[0].text
    with client.messages.stream(model="gpt-4o-mini", max_tokens=64, messages=msgs) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == text
    assert final.usage.cache_read_input_tokens and final.usage.input_tokens == 0
    assert upstream_calls(sim) == 1


def gateway_on_redis(make_gateway, url):
    return make_gateway(extra=cache_section(extra=f"  store: redis\n  redis_url: {url}\n"),
                        models=MODELS)


def test_two_gateways_share_exact_and_semantic_entries_through_redis(make_gateway, sim, redis_url):
    one = gateway_on_redis(make_gateway, redis_url)
    two = gateway_on_redis(make_gateway, redis_url)
    sem = {"x-tollgate-cache": "semantic"}
    assert chat(one, sem).headers["x-tollgate-cache"] == "miss"
    time.sleep(1.5)  # the vector reaches the other replica through the Redis stream
    assert chat(two, sem).headers["x-tollgate-cache"] == "hit-exact"
    para = [{"role": "user", "content": "how do I reset my password"}]
    r = chat(two, sem, messages=para)
    assert r.headers["x-tollgate-cache"] == "hit-semantic"
    assert upstream_calls(sim) == 1
    # A replica that restarts rebuilds its index from Redis.
    assert two.stop() == 0
    three = gateway_on_redis(make_gateway, redis_url)
    r = chat(three, sem, messages=[{"role": "user", "content": "How do I reset my password"}])
    assert r.headers["x-tollgate-cache"] == "hit-semantic"
    assert upstream_calls(sim) == 1


class Blackhole:
    """A TCP proxy to Redis that can go silent: while `silent`, it drops every byte without
    closing anything, as a lost link or a stuck middlebox does. Connections made while silent,
    or before, stay dead; new ones after `silent = False` work."""

    def __init__(self, target_port: int):
        import socket
        import threading
        self.target = target_port
        self.silent = False
        self.dead = set()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        import socket
        import threading
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            conn = (client, upstream)
            for a, b in (conn, conn[::-1]):
                threading.Thread(target=self.pipe, args=(a, b, conn), daemon=True).start()

    def pipe(self, src, dst, conn):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.silent:
                self.dead.add(conn)
            if conn not in self.dead:
                try:
                    dst.sendall(data)
                except OSError:
                    return


def test_a_replica_whose_redis_link_went_silent_catches_up_on_vectors(make_gateway, sim, redis_url):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    hole = Blackhole(port)
    one = gateway_on_redis(make_gateway, redis_url)
    two = gateway_on_redis(make_gateway, f"redis://127.0.0.1:{hole.port}/0")
    sem = {"x-tollgate-cache": "semantic"}
    assert chat(two, sem).headers["x-tollgate-cache"] == "miss"
    time.sleep(1.5)
    hole.silent = True
    time.sleep(1.5)  # the replica's blocking read of the vector stream is now lost
    hole.silent = False
    question = [{"role": "user", "content": "Can I change the card's PIN at an ATM?"}]
    assert chat(one, sem, messages=question).headers["x-tollgate-cache"] == "miss"
    para = [{"role": "user", "content": "can I change the card's PIN at an ATM"}]
    deadline, status = time.time() + 15, None
    while time.time() < deadline and status != "hit-semantic":
        time.sleep(0.5)
        status = chat(two, {**sem, "x-tollgate-cache-no-store": "true"},
                      messages=para).headers["x-tollgate-cache"]
    assert status == "hit-semantic", "the replica's vector feed never came back"


def test_remote_embedder_through_a_provider_is_priced(make_gateway, sim):
    gw = make_gateway(extra=cache_section("remote", threshold=0.99), models=MODELS)
    sem = {"x-tollgate-cache": "semantic"}
    q = [{"role": "user", "content": "What is the capital of France?"}]
    assert chat(gw, sem, messages=q).headers["x-tollgate-cache"] == "miss"
    settle()
    # The simulator embeds bags of words: case and punctuation do not change the vector.
    r = chat(gw, sem, messages=[{"role": "user", "content": "what is the capital of france"}])
    assert r.headers["x-tollgate-cache"] == "hit-semantic"
    assert float(r.headers["x-tollgate-cache-similarity"]) > 0.999
    assert upstream_calls(sim, "/v1/embeddings") == 2
    assert upstream_calls(sim) == 1
    hit = [l for l in gw.log() if l.get("cache") == "hit-semantic"][0]
    assert float(hit["cost_usd"]) > 0, "the embedding call is the hit's cost"


def test_minilm_embedder_gives_the_reference_similarity(make_gateway, sim):
    gw = make_gateway(extra=cache_section("minilm", threshold=0.75), models=MODELS)
    sem = {"x-tollgate-cache": "semantic"}
    assert chat(gw, sem, messages=[{"role": "user", "content": "A man is eating food."}]) \
        .headers["x-tollgate-cache"] == "miss"
    settle()
    r = chat(gw, sem, messages=[{"role": "user", "content": "A man is eating a piece of bread."}])
    assert r.headers["x-tollgate-cache"] == "hit-semantic"
    assert abs(float(r.headers["x-tollgate-cache-similarity"]) - 0.7553) < 0.002


def test_an_answer_over_the_entry_bound_is_not_cached(make_gateway, sim):
    gw = make_gateway(extra=cache_section(None, extra="  max_entry_bytes: 1000\n"), models=MODELS)
    many = {"x-sim-chunks": "200"}
    assert chat(gw, many, stream=True).headers["x-tollgate-cache"] == "miss"
    settle()
    assert chat(gw, many, stream=True).headers["x-tollgate-cache"] == "miss"
    short = [{"role": "user", "content": "y"}]
    chat(gw, messages=short, max_tokens=1)
    settle()
    assert chat(gw, messages=short, max_tokens=1).headers["x-tollgate-cache"] == "hit-exact"


def test_check_reports_cache_errors(tmp_path):
    cfg = tmp_path / "gateway.yaml"
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    cfg.write_text(
        "listen: 127.0.0.1:1\nproviders:\n  sim: {kind: openai, base_url: 'http://127.0.0.1:1/v1'}\n"
        "models: [{id: sim/m}]\n"
        "cache:\n  mode: semantic\n  store: redis\n"
        "  semantic:\n    embedder: {kind: static, path: /nonexistent}\n    threshold: 1.5\n"
    )
    r = subprocess.run([str(BIN / "tollgate"), "check", "--config", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    for want in ["redis_url is required", "threshold must be in (0, 1]", "fetch-models.sh"]:
        assert want in r.stdout + r.stderr, want


# Faults an adversarial review found, each kept as a test.

def test_redis_down_or_gone_never_stops_requests_and_caching_resumes(make_gateway, sim, tmp_path):
    import shutil
    import socket
    port, admin_port = free_port(), free_port()
    gov = f"governance:\n  auth: off\n  store: gov.db\n  admin: {{listen: 127.0.0.1:{admin_port}, key: env:TG_ADMIN}}\n"
    gw = make_gateway(extra=cache_section(None, extra=f"  store: redis\n  redis_url: redis://127.0.0.1:{port}/0\n") + gov,
                      models=MODELS, env={"TG_ADMIN": ADMIN_KEY})
    t = time.time()
    r = chat(gw)
    assert r.status_code == 200 and r.headers["x-tollgate-cache"] == "miss"
    assert time.time() - t < 2, "no Redis: answered uncached, at once"
    # The admin API says the store failed, not that the request was bad.
    admin = f"http://127.0.0.1:{admin_port}/admin/cache"
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    for path in ["", "/namespaces/default", "/entries/" + r.headers["x-tollgate-cache-key"]]:
        r = requests.delete(admin + path, headers=auth, timeout=5)
        assert r.status_code == 500 and r.json()["error"]["code"] == "store_error", path
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        # Caching resumes once the gateway has reconnected.
        deadline, status = time.time() + 15, None
        while time.time() < deadline and status != "hit-exact":
            status = chat(gw).headers["x-tollgate-cache"]
            time.sleep(0.3)
        assert status == "hit-exact"
        # A Redis that stops answering (SIGSTOP) costs a short wait, never a hang.
        os.kill(proc.pid, 19)
        t = time.time()
        r = chat(gw, messages=[{"role": "user", "content": "while redis sleeps"}])
        assert r.status_code == 200 and time.time() - t < 3
        os.kill(proc.pid, 18)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert gw.stop() == 0
    assert "panicked" not in gw.stderr()


def test_texts_past_the_embedder_window_or_unknown_to_it_are_not_compared(make_gateway, sim):
    gw = make_gateway(extra=cache_section("minilm", threshold=0.9), models=MODELS)
    sem = {"x-tollgate-cache": "semantic"}
    doc = " ".join(f"Clause {i}: the supplier shall deliver goods number {i} on time." for i in range(60))
    pairs = [
        (doc + "\n\nQuestion: who is the supplier?",
         doc + "\n\nQuestion: translate the whole contract into French."),
        ("😀😀😀", "😡😡😡"),
        ("ฉันจะรีเซ็ตรหัสผ่านได้อย่างไร", "ฉันจะลบบัญชีได้อย่างไร"),
    ]
    for a, b in pairs:
        assert chat(gw, sem, messages=[{"role": "user", "content": a}]).headers["x-tollgate-cache"] == "miss"
        settle()
        r = chat(gw, sem, messages=[{"role": "user", "content": b}])
        assert r.headers["x-tollgate-cache"] == "miss", b[-40:]


def test_a_fallback_answer_is_not_served_once_the_route_wants_another_target(make_gateway, sim):
    dead = free_port()
    providers = f"""\
  sim:
    kind: openai
    base_url: {sim.url}/v1
  down:
    kind: openai
    base_url: http://127.0.0.1:{dead}/v1
"""
    models = MODELS + "  - id: down/gpt-4o-mini\n"
    rules = "rules:\n  - name: chat\n    match: {model: chat}\n    targets: [{to: down/gpt-4o-mini}]\n" \
            "    fallback: [sim/gpt-4o-mini]\n"
    gw = make_gateway(providers=providers, models=models, rules=rules, extra=cache_section(None))
    first = chat(gw, model="chat")
    assert first.status_code == 200 and first.headers["x-tollgate-model"] == "sim/gpt-4o-mini"
    settle()
    again = chat(gw, model="chat")
    assert again.headers["x-tollgate-cache"] == "miss", "the fallback's answer is not the route's"
    # Retargeted on reload to the model that answered: its answer serves; to another: it does not.
    gw.write_rules("rules:\n  - name: chat\n    match: {model: chat}\n    targets: [{to: sim/gpt-4o-mini}]\n")
    time.sleep(1.5)
    r = chat(gw, model="chat")
    assert r.headers["x-tollgate-cache"] == "hit-exact"
    assert r.headers["x-tollgate-model"] == "sim/gpt-4o-mini"
    gw.write_rules("rules:\n  - name: chat\n    match: {model: chat}\n    targets: [{to: sim/gpt-4o}]\n")
    time.sleep(1.5)
    assert chat(gw, model="chat").headers["x-tollgate-cache"] == "miss"


def test_a_key_never_gets_an_answer_from_a_target_it_may_not_use(make_gateway, sim):
    gov = ("governance:\n  auth: required\n  store: gov.db\n  teams: [{id: t}]\n  keys:\n"
           "    - {id: senior, key: sk-senior, team: t}\n"
           "    - {id: intern, key: sk-intern, team: t, models: {deny: ['sim/gpt-4o']}}\n")
    rules = "rules:\n  - name: chat\n    match: {model: chat}\n    targets: [{to: sim/gpt-4o}]\n" \
            "    fallback: [sim/gpt-4o-mini]\n"
    gw = make_gateway(models=MODELS, rules=rules, extra=cache_section("static") + gov)
    senior, intern = {"authorization": "Bearer sk-senior"}, {"authorization": "Bearer sk-intern"}
    r = chat(gw, senior, model="chat")
    assert r.headers["x-tollgate-model"] == "sim/gpt-4o" and r.headers["x-tollgate-cache"] == "miss"
    settle()
    for mode in ["exact", "semantic"]:
        r = chat(gw, {**intern, "x-tollgate-cache": mode, "x-tollgate-cache-no-store": "true"},
                 model="chat")
        assert r.headers["x-tollgate-cache"] == "miss", mode
        assert r.headers["x-tollgate-model"] == "sim/gpt-4o-mini", mode
    # The intern's own answer, from the model it may use, serves the intern.
    chat(gw, intern, model="chat")
    settle()
    r = chat(gw, intern, model="chat")
    assert r.headers["x-tollgate-cache"] == "hit-exact"
    assert r.headers["x-tollgate-model"] == "sim/gpt-4o-mini"
    assert upstream_calls(sim) == 4


def test_forwarded_headers_that_change_the_answer_split_the_key(cgw, sim):
    body = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    url = cgw.url + "/v1/messages"
    assert requests.post(url, json=body, headers={"anthropic-beta": "a"}, timeout=10) \
        .headers["x-tollgate-cache"] == "miss"
    settle()
    assert requests.post(url, json=body, headers={"anthropic-beta": "a"}, timeout=10) \
        .headers["x-tollgate-cache"] == "hit-exact"
    assert requests.post(url, json=body, headers={"anthropic-beta": "output-128k"}, timeout=10) \
        .headers["x-tollgate-cache"] == "miss"


def test_cache_control_directives_and_header_values(cgw, sim):
    first = chat(cgw)
    key = first.headers["x-tollgate-cache-key"]
    settle()
    hit = chat(cgw)
    assert hit.headers["x-tollgate-cache"] == "hit-exact" and hit.headers["x-tollgate-cache-key"] == key
    for cc in ["no-cache", "max-age=0", "private, no-cache"]:
        assert chat(cgw, {"cache-control": cc}).headers["x-tollgate-cache"] == "miss", cc
    assert chat(cgw, {"cache-control": "no-store-please"}).headers["x-tollgate-cache"] == "hit-exact"
    m = [{"role": "user", "content": "not kept"}]
    chat(cgw, {"x-tollgate-cache-no-store": "on"}, messages=m)
    settle()
    assert chat(cgw, messages=m).headers["x-tollgate-cache"] == "miss"
    r = requests.post(cgw.url + "/v1/chat/completions", timeout=10,
                      json={"model": "gpt-4o-mini", "messages": MSG},
                      headers={"x-tollgate-cache-namespace": "é".encode("latin-1")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cache_header"
    assert chat(cgw, {"x-tollgate-cache-no-store": "perhaps"}).status_code == 400


def check_cache(tmp_path, cache: str) -> str:
    """`tollgate check` of a config with this cache section; must fail; its report."""
    cfg = tmp_path / "gateway.yaml"
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    cfg.write_text(
        "listen: 127.0.0.1:1\nproviders:\n  sim: {kind: openai, base_url: 'http://127.0.0.1:1/v1'}\n"
        "models: [{id: sim/m}]\ncache:\n" + cache)
    r = subprocess.run([str(BIN / "tollgate"), "check", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1
    return r.stdout


def test_check_refuses_zero_sizes_and_ttls(tmp_path):
    out = check_cache(tmp_path, "  ttl_secs: 0\n  max_bytes: 0\n")
    assert "cache.ttl_secs must be greater than 0" in out and "cache.max_bytes" in out


def test_check_refuses_ttls_past_ten_years(tmp_path):
    out = check_cache(tmp_path, "  ttl_secs: 2305843009213693952\n  max_ttl_secs: 10000000000000000\n")
    assert "cache.ttl_secs must be at most 315360000" in out, out
    assert "cache.max_ttl_secs must be at most" in out, out
