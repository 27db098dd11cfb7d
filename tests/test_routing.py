"""The rule language: priorities, matches on model, type, headers and tier, weighted splits,
fractional weights, and hot reload under load."""

import collections
import http.client
import json
import threading
import time

import openai

MODELS = """\
models:
  - id: sim/alpha
  - id: sim/beta
  - id: sim/gamma
  - id: sim/emb
"""

RULES = """\
rules:
  - name: premium
    priority: 10
    match: {model: 'chat-*', tier: premium}
    targets: [{to: sim/gamma}]
  - name: research
    priority: 5
    match: {model: 'chat-*', headers: {x-team: 'research-*'}}
    targets: [{to: sim/beta}]
  - name: embeddings
    match: {type: embeddings}
    targets: [{to: sim/emb}]
  - name: split
    match: {model: chat-split}
    targets: [{to: sim/alpha, weight: 70}, {to: sim/beta, weight: 30}]
  - name: tiny
    match: {model: chat-tiny}
    targets: [{to: sim/alpha, weight: 0.999}, {to: sim/beta, weight: 0.001}]
  - name: default-chat
    match: {model: 'chat-*'}
    targets: [{to: sim/alpha}]
"""


def routed_model(client, model, headers=None):
    r = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], extra_headers=headers or {}
    )
    return r.headers["x-tollgate-model"]


def test_matches_by_priority_header_tier_and_type(make_gateway, sim):
    gw = make_gateway(models=MODELS, rules=RULES)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    assert routed_model(client, "chat-anything") == "sim/alpha"
    assert routed_model(client, "chat-anything", {"x-team": "research-nlp"}) == "sim/beta"
    assert routed_model(client, "chat-anything", {"x-team": "research-nlp", "x-tollgate-tier": "premium"}) == "sim/gamma"
    assert routed_model(client, "chat-anything", {"x-tollgate-tier": "free"}) == "sim/alpha"
    assert "x-tollgate-tier" not in sim.requests()[-1]["headers"], "gateway headers stay at the gateway"
    r = client.embeddings.with_raw_response.create(model="anything-at-all", input="x")
    assert r.headers["x-tollgate-model"] == "sim/emb"
    assert sim.requests()[-1]["body"]["model"] == "emb"


def split(port: int, model: str, n: int, threads: int = 4) -> collections.Counter:
    """Sends n small requests over keep-alive connections; counts x-tollgate-model."""
    counts = collections.Counter()
    lock = threading.Lock()
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})

    def worker(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        local = collections.Counter()
        for _ in range(k):
            conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            local[r.getheader("x-tollgate-model")] += 1
        with lock:
            counts.update(local)

    ts = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts


def test_weighted_split_within_two_points_over_10k(make_gateway):
    gw = make_gateway(models=MODELS, rules=RULES)
    counts = split(gw.port, "chat-split", 10_000)
    assert sum(counts.values()) == 10_000
    share = counts["sim/alpha"] / 10_000
    assert abs(share - 0.70) <= 0.02, counts


def test_fractional_weight_gets_its_share_not_zero(make_gateway):
    gw = make_gateway(models=MODELS, rules=RULES)
    counts = split(gw.port, "chat-tiny", 10_000)
    # 0.1% of 10,000 is 10; zero would have probability e^-10.
    assert 1 <= counts["sim/beta"] <= 30, counts


def test_reload_under_load_drops_nothing(make_gateway):
    gw = make_gateway(models=MODELS, rules=RULES)
    results = collections.Counter()
    stop = threading.Event()

    def load():
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        body = json.dumps({"model": "chat-x", "messages": [{"role": "user", "content": "hi"}]})
        while not stop.is_set():
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"content-type": "application/json", "x-sim-latency-ms": "5"})
            r = conn.getresponse()
            r.read()
            results[(r.status, r.getheader("x-tollgate-model"))] += 1

    ts = [threading.Thread(target=load) for _ in range(4)]
    for t in ts:
        t.start()
    for i in range(6):
        time.sleep(0.3)
        target = "sim/beta" if i % 2 == 0 else "sim/alpha"
        gw.write_rules(RULES.replace("targets: [{to: sim/alpha}]\n", f"targets: [{{to: {target}}}]\n"))
    time.sleep(0.3)
    stop.set()
    for t in ts:
        t.join()
    statuses = {status for status, _ in results}
    assert statuses == {200}, results
    assert {m for _, m in results} == {"sim/alpha", "sim/beta"}, "both rule versions served traffic"
    assert sum(results.values()) > 100
