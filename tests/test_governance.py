"""Governance end to end: virtual keys, budgets, rate limits, model rules, refusals before any
upstream call, exact admission under concurrency, spend that survives a restart, the admin API,
budget alerts, routing on budget use and /metrics."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

import anthropic
import openai
import pytest
import requests

from conftest import free_port

ADMIN_KEY = "admin-secret-1"
MSG = [{"role": "user", "content": "hi"}]
# Output tokens cost $0.001 each and input is free, so a request's reserved cost is
# max_tokens x $0.001. The simulator answers "sim reply to: hi": 4 output tokens, $0.004.
PRICES = """\
  prices:
    gpt-4o-mini: {input: 0, output: 1000}
    cheap-model: {input: 0, output: 1}
"""
MODELS = """\
models:
  - id: sim/gpt-4o-mini
    aliases: [gpt-4o-mini]
  - id: sim/cheap-model
    aliases: [cheap]
  - id: sim/text-embedding-3-small
    aliases: [text-embedding-3-small]
"""


def governance(entities: str, admin_port: int, store, extra: str = "") -> str:
    return (
        "governance:\n"
        "  auth: required\n"
        f"  store: {store}\n"
        "  flush_ms: 100\n"
        f"  admin: {{listen: 127.0.0.1:{admin_port}, key: env:TG_ADMIN}}\n"
        f"{PRICES}{extra}{entities}"
    )


ENV = {"TG_ADMIN": ADMIN_KEY, "TG_KEY_ENV": "sk-from-env"}


class Gov:
    def __init__(self, make_gateway, entities: str, extra: str = "", rules: str = "rules: []\n"):
        self.make = make_gateway
        self.admin_port = free_port()
        self.rules = rules
        # One SQLite file outside the gateway's own directory, so a restarted gateway finds it.
        store = f"gov-{self.admin_port}.db"
        self.extra = governance(entities, self.admin_port, "STORE", extra)
        self.gw = make_gateway(extra=self.extra.replace("STORE", "../" + store), models=MODELS,
                               rules=rules, env=ENV)
        self.store = "../" + store
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    def restart(self):
        """Stops the gateway with SIGTERM and starts another on the same store."""
        assert self.gw.stop() == 0
        self.restart_after_crash()

    def restart_after_crash(self):
        """Starts another gateway on the same store (the last one already stopped)."""
        self.gw = self.make(extra=self.extra.replace("STORE", self.store), models=MODELS,
                            rules=self.rules, env=ENV)

    def chat(self, key: str | None, model="gpt-4o-mini", headers=None, **body):
        h = dict(headers or {})
        if key:
            h["authorization"] = f"Bearer {key}"
        return requests.post(self.gw.url + "/v1/chat/completions", headers=h,
                             json={"model": model, "messages": MSG, **body}, timeout=20)

    def api(self, method: str, path: str, **kw):
        h = {"authorization": f"Bearer {ADMIN_KEY}"}
        return requests.request(method, self.admin + path, headers=h, timeout=10, **kw)

    def usage(self, scope: str) -> dict:
        level, ident = scope.split(":")
        r = self.api("GET", f"/admin/usage/{level}/{ident}")
        assert r.status_code == 200, r.text
        return r.json()["usage"][0]


def burst(n: int, fn):
    """n calls released together."""
    gate = threading.Barrier(n)

    def one(_):
        gate.wait()
        return fn()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def codes(responses):
    out = {}
    for r in responses:
        key = r.status_code if r.status_code == 200 else (r.status_code, r.json()["error"]["code"])
        out[key] = out.get(key, 0) + 1
    return out


KEYS = """\
  customers:
    - {id: acme, budgets: [{usd: 100, period: month}]}
  teams:
    - {id: search, customer: acme, models: {deny: ['*embedding*']}}
  keys:
    - {id: bot, key: sk-bot-secret, team: search}
    - {id: env-key, key: env:TG_KEY_ENV}
    - {id: gone, key: sk-revoked, revoked: true}
    - {id: old, key: sk-expired, expires: '2020-01-01T00:00:00Z'}
    - {id: contractor, key: sk-contractor, models: {allow: ['cheap*']}}
"""


def test_keys_by_bearer_or_x_api_key_and_refusals_of_bad_ones(make_gateway, sim):
    g = Gov(make_gateway, KEYS)
    oa = openai.OpenAI(base_url=g.gw.url + "/v1", api_key="sk-bot-secret", max_retries=0)
    r = oa.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert r.choices[0].message.content == "sim reply to: hi"
    assert g.chat("sk-from-env").status_code == 200
    # The anthropic SDK sends x-api-key.
    an = anthropic.Anthropic(base_url=g.gw.url, api_key="sk-bot-secret", max_retries=0)
    m = an.messages.create(model="gpt-4o-mini", max_tokens=20, messages=MSG)
    assert m.content[0].text == "sim reply to: hi"

    for key, code in [(None, "missing_api_key"), ("sk-nope", "invalid_api_key"),
                      ("sk-revoked", "revoked_api_key"), ("sk-expired", "expired_api_key")]:
        r = g.chat(key)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == code
    bad = openai.OpenAI(base_url=g.gw.url + "/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=g.gw.url, api_key="sk-nope", max_retries=0).messages.create(
            model="gpt-4o-mini", max_tokens=20, messages=MSG)
    assert len(sim.requests()) == 3, "refused requests never reach the provider"

    # Secrets never reach the log, the access log, or the provider.
    log = g.gw.log()
    assert {line.get("key") for line in log if line["path"].startswith("/v1/") and line["status"] == 200} == {"bot", "env-key"}
    text = g.gw.stderr() + g.gw.log_path.read_text() + json.dumps(sim.requests())
    for secret in ["sk-bot-secret", "sk-from-env", "sk-revoked", "sk-nope"]:
        assert secret not in text


def test_key_header_forms_count_tokens_and_anthropic_refusals(make_gateway, sim):
    g = Gov(make_gateway, KEYS + "    - {id: broke, key: sk-broke, budgets: [{usd: '0.000000001', period: day}]}\n")
    for auth in ["BEARER sk-bot-secret", "bearer  sk-bot-secret", "Bearer sk-bot-secret "]:
        r = requests.post(g.gw.url + "/v1/chat/completions", headers={"authorization": auth},
                          json={"model": "gpt-4o-mini", "messages": MSG}, timeout=10)
        assert r.status_code == 200, (auth, r.text)
    # count_tokens needs a key and follows model rules.
    ct = lambda key: requests.post(g.gw.url + "/v1/messages/count_tokens", headers={"x-api-key": key},
                                   json={"model": "gpt-4o-mini", "messages": MSG}, timeout=10)
    assert ct("sk-bot-secret").status_code == 200
    assert ct("sk-contractor").status_code == 403
    assert ct("sk-nope").status_code == 401
    # Anthropic clients get Anthropic's error types.
    an = anthropic.Anthropic(base_url=g.gw.url, api_key="sk-broke", max_retries=0)
    assert an.messages.create(model="gpt-4o-mini", max_tokens=5, messages=MSG).content
    r = requests.post(g.gw.url + "/v1/messages", headers={"x-api-key": "sk-broke"},
                      json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": MSG}, timeout=10)
    assert r.status_code == 402 and r.json()["error"]["type"] == "billing_error", r.text


def test_config_wins_over_an_admin_made_entity_of_the_same_id(make_gateway, sim):
    g = Gov(make_gateway, KEYS)
    made = g.api("POST", "/admin/keys", json={"id": "later"})
    assert made.status_code == 201
    old_secret = made.json()["key"]
    assert g.gw.stop() == 0
    g.extra = g.extra.replace("  keys:\n", "  keys:\n    - {id: later, key: sk-later}\n", 1)
    g.restart_after_crash()
    assert "ignoring the key `later`" in g.gw.stderr()
    assert g.chat("sk-later").status_code == 200
    assert g.chat(old_secret).status_code == 401
    assert g.api("POST", "/admin/keys", json={"id": "y", "key": " padded "}).status_code == 400


def test_model_access_rules_per_key_and_team(make_gateway, sim):
    g = Gov(make_gateway, KEYS)
    r = g.chat("sk-contractor")
    assert r.status_code == 403 and r.json()["error"]["code"] == "key_model_not_allowed", r.text
    assert g.chat("sk-contractor", model="cheap").status_code == 200
    r = requests.post(g.gw.url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"},
                      headers={"authorization": "Bearer sk-bot-secret"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "team_model_not_allowed", r.text
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=g.gw.url + "/v1", api_key="sk-contractor", max_retries=0) \
            .chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert len(sim.requests()) == 1


def test_a_budget_that_fits_n_requests_lets_exactly_n_of_64_through(make_gateway, sim):
    # Each request reserves 5 tokens x $0.001 = $0.005; $0.025 fits five.
    g = Gov(make_gateway, "  keys:\n    - {id: k, key: sk-k, budgets: [{usd: '0.025', period: day}]}\n")
    slow = {"x-sim-latency-ms": "400"}
    got = burst(64, lambda: g.chat("sk-k", headers=slow, max_tokens=5))
    assert codes(got) == {200: 5, (402, "key_budget_exceeded"): 59}
    assert len(sim.requests()) == 5
    refused = next(r for r in got if r.status_code == 402)
    assert refused.json()["error"]["type"] == "insufficient_quota"
    # Settled at the real cost: 5 x 4 tokens = $0.020 of $0.025, so one more fits.
    u = g.usage("key:k")["budgets"][0]
    assert (u["used_usd"], u["remaining_usd"]) == ("0.02", "0.005"), u
    # A request is admitted while the budget is not used up: $0.024, then $0.028, then none.
    assert g.chat("sk-k", max_tokens=5).status_code == 200
    assert g.chat("sk-k", max_tokens=5).status_code == 200
    assert g.chat("sk-k", max_tokens=5).status_code == 402


def test_request_rate_limit_is_exact_under_concurrency(make_gateway, sim):
    g = Gov(make_gateway, "  teams: [{id: t, limits: {requests: [{max: 7, per: day}]}}]\n"
                          "  keys: [{id: k, key: sk-k, team: t}]\n")
    got = burst(64, lambda: g.chat("sk-k", headers={"x-sim-latency-ms": "200"}))
    assert codes(got) == {200: 7, (429, "team_request_limit_exceeded"): 57}
    ok = [r for r in got if r.status_code == 200]
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == list(range(7))
    assert {r.headers["x-ratelimit-limit-requests"] for r in ok} == {"7"}
    refused = next(r for r in got if r.status_code == 429)
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=g.gw.url + "/v1", api_key="sk-k", max_retries=0) \
            .chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert len(sim.requests()) == 7


def test_token_limit_reserves_then_settles(make_gateway, sim):
    g = Gov(make_gateway, "  keys: [{id: probe, key: sk-probe, limits: {tokens: [{max: 100000, per: day}]}}]\n")
    r = g.chat("sk-probe", max_tokens=50)
    # While in flight it held its estimate; after settling only the real use counts.
    est = 100000 - int(r.headers["x-ratelimit-remaining-tokens"])
    assert est >= 50
    # A key whose token limit fits exactly three estimates (but not four), made through the API.
    limit = 3 * est + est - 1
    made = g.api("POST", "/admin/keys", json={"id": "tok", "limits": {"tokens": [{"max": limit, "per": "day"}]}})
    assert made.status_code == 201, made.text
    secret = made.json()["key"]
    got = burst(32, lambda: g.chat(secret, max_tokens=50, headers={"x-sim-latency-ms": "300"}))
    assert codes(got) == {200: 3, (429, "key_token_limit_exceeded"): 29}
    # Settled: three real uses, far below the estimates, leave room for more.
    after = g.chat(secret, max_tokens=50)
    assert after.status_code == 200, after.text


def test_concurrent_requests_per_key(make_gateway, sim):
    g = Gov(make_gateway, "  keys: [{id: k, key: sk-k, limits: {concurrent: 3}}]\n")
    got = burst(20, lambda: g.chat("sk-k", headers={"x-sim-latency-ms": "400"}))
    assert codes(got) == {200: 3, (429, "key_concurrency_limit_exceeded"): 17}
    # Slots come back when requests end, failed ones included.
    assert g.chat("sk-k", headers={"x-sim-fault": "500"}).status_code >= 500
    assert codes(burst(3, lambda: g.chat("sk-k"))) == {200: 3}


def test_a_failed_request_costs_nothing_and_spend_survives_restart(make_gateway, sim, tmp_path):
    entities = "  keys: [{id: k, key: sk-k, budgets: [{usd: 1, period: month}]}]\n"
    g = Gov(make_gateway, entities)
    assert g.chat("sk-k", headers={"x-sim-fault": "500"}).status_code == 500
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "0.00"
    for _ in range(3):
        assert g.chat("sk-k").status_code == 200
    stream = requests.post(g.gw.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-k"},
                           json={"model": "gpt-4o-mini", "messages": MSG, "stream": True}, timeout=10)
    assert stream.status_code == 200 and "[DONE]" in stream.text
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "0.016"
    # A clean stop loses nothing: the spend is read back at start.
    g.restart()
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "0.016"
    assert g.chat("sk-k").status_code == 200
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "0.02"


def test_admin_api_crud_persists_and_needs_the_admin_key(make_gateway, sim):
    g = Gov(make_gateway, KEYS)
    assert requests.get(g.admin + "/admin/keys", timeout=5).status_code == 401
    assert requests.get(g.admin + "/admin/keys", headers={"authorization": "Bearer wrong"},
                        timeout=5).status_code == 401
    assert g.api("POST", "/admin/customers", json={"id": "globex"}).status_code == 201
    r = g.api("POST", "/admin/teams", json={"id": "ml", "customer": "globex",
                                            "budgets": [{"usd": "5", "period": "week"}]})
    assert r.status_code == 201, r.text
    r = g.api("POST", "/admin/keys", json={"id": "ml-bot", "team": "ml"})
    assert r.status_code == 201, r.text
    secret = r.json()["key"]
    assert secret.startswith("tg-") and "key_sha256" in r.json()
    listed = g.api("GET", "/admin/keys").json()["keys"]
    assert secret not in json.dumps(listed)
    assert {k["id"]: k["source"] for k in listed}["bot"] == "config"
    assert g.chat(secret).status_code == 200
    # Checked as a whole: an unknown team, a duplicate, a config entity.
    assert g.api("POST", "/admin/keys", json={"id": "x", "team": "nope"}).status_code == 400
    assert g.api("POST", "/admin/keys", json={"id": "ml-bot"}).status_code == 409
    assert g.api("DELETE", "/admin/keys/bot").status_code == 409
    assert g.api("PUT", "/admin/teams/ml", json={"customer": "globex", "budgets": [{"usd": "0.001", "period": "week"}]}).status_code == 200
    u = g.usage("team:ml")["budgets"][0]
    assert u["budget_usd"] == "0.001" and u["period"] == "week"
    assert u["window_start"].endswith("T00:00:00Z")
    # Spend so far ($0.004) is over the new budget: refused, then reset.
    r = g.chat(secret)
    assert r.status_code == 402 and r.json()["error"]["code"] == "team_budget_exceeded"
    assert g.api("POST", "/admin/usage/reset", json={"level": "team", "id": "ml"}).json()["reset"] >= 1
    assert g.chat(secret).status_code == 200
    prices = g.api("GET", "/admin/prices").json()["prices"]
    assert prices["gpt-4o-mini"]["output"] == "1000.00" and "claude-sonnet-4-5" in prices

    # Survives a restart: the key, its team and customer come back from SQLite.
    g.restart()
    r = g.chat(secret)
    assert r.status_code == 402 and r.json()["error"]["code"] == "team_budget_exceeded", r.text
    assert g.api("POST", "/admin/usage/reset", json={"level": "team", "id": "ml"}).status_code == 200
    assert g.chat(secret).status_code == 200
    assert g.api("DELETE", "/admin/keys/ml-bot").status_code == 200
    assert g.chat(secret).status_code == 401
    g.restart()
    assert g.chat(secret).status_code == 401


class Hook(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):
        n = int(self.headers["content-length"])
        Hook.got.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_budget_alerts_fire_once_per_threshold(make_gateway, sim):
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.got = []
    try:
        hook = f"  alerts: {{webhook: 'http://127.0.0.1:{server.server_port}/hook', thresholds: [50, 80, 100]}}\n"
        # $0.010 a day; each request costs $0.004: 40%, 80%, 120%, then refused.
        g = Gov(make_gateway, "  keys: [{id: k, key: sk-k, budgets: [{usd: '0.01', period: day}]}]\n", extra=hook)
        for _ in range(3):
            assert g.chat("sk-k", max_tokens=5).status_code == 200
        assert g.chat("sk-k", max_tokens=5).status_code == 402
        assert g.chat("sk-k", max_tokens=5).status_code == 402
        import time
        deadline = time.time() + 5
        while len(Hook.got) < 3 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert [a["threshold_percent"] for a in Hook.got] == [50, 80, 100], Hook.got
        a = Hook.got[-1]
        assert (a["level"], a["id"], a["period"], a["budget_usd"], a["used_usd"]) == \
            ("key", "k", "day", "0.01", "0.012")
    finally:
        server.shutdown()


def test_routing_sends_a_team_over_80_percent_to_a_cheaper_model(make_gateway, sim):
    rules = """\
rules:
  - name: thrifty
    priority: 10
    match: {team: search, budget_used_percent: '>= 80'}
    targets: [{to: sim/cheap-model}]
  - name: normal
    match: {model: gpt-4o-mini}
    targets: [{to: sim/gpt-4o-mini}]
"""
    # $0.010 a month for the team; each gpt-4o-mini answer costs $0.004.
    g = Gov(make_gateway, "  teams: [{id: search, budgets: [{usd: '0.01', period: month}]}]\n"
                          "  keys: [{id: k, key: sk-k, team: search}]\n", rules=rules)
    models = [g.chat("sk-k", max_tokens=5).headers["x-tollgate-model"] for _ in range(3)]
    assert models == ["sim/gpt-4o-mini", "sim/gpt-4o-mini", "sim/cheap-model"]


def test_metrics_are_labelled_and_pass_promtool(make_gateway, sim):
    import shutil
    import subprocess
    g = Gov(make_gateway, KEYS)
    assert g.chat("sk-bot-secret").status_code == 200
    assert g.chat("sk-contractor").status_code == 403
    assert g.chat("sk-bot-secret", model="cheap", max_tokens=3).status_code == 200
    text = requests.get(g.gw.url + "/metrics", timeout=5).text
    assert requests.get(g.admin + "/metrics", timeout=5).status_code == 200
    assert 'tollgate_requests_total{key="bot",model="gpt-4o-mini",provider="sim",status="200",team="search"} 1' in text
    assert 'tollgate_cost_usd_total{provider="sim",model="gpt-4o-mini",key="bot",team="search"} 0.004' in text
    assert 'tollgate_tokens_total{key="bot",kind="output",model="gpt-4o-mini",provider="sim",team="search"} 4' in text
    assert 'tollgate_refusals_total{key="contractor",level="key",reason="model_not_allowed",team=""} 1' in text
    assert "tollgate_request_duration_seconds_bucket" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed; scripts/test.sh installs it"
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture
def redis_url(tmp_path):
    import shutil
    import subprocess
    import time
    server = shutil.which("redis-server")
    assert server, "redis-server (Debian package redis-server) is needed; scripts/test.sh installs it"
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def test_two_gateways_on_one_redis_enforce_one_budget_and_one_limit(make_gateway, sim, redis_url):
    entities = ("  keys:\n"
                "    - {id: k, key: sk-k, budgets: [{usd: '0.03', period: day}]}\n"
                "    - {id: r, key: sk-r, limits: {requests: [{max: 9, per: day}]}}\n")
    extra = f"  state: redis\n  redis_url: {redis_url}\n"
    a = Gov(make_gateway, entities, extra=extra)
    b = Gov(make_gateway, entities, extra=extra)
    slow = {"x-sim-latency-ms": "400"}
    n = iter(range(1000))
    # Requests alternate between the two gateways; $0.03 fits six $0.005 reservations.
    got = burst(40, lambda: (a if next(n) % 2 else b).chat("sk-k", headers=slow, max_tokens=5))
    assert codes(got) == {200: 6, (402, "key_budget_exceeded"): 34}
    assert {r.headers["x-tollgate-provider"] for r in got if r.status_code == 200} == {"sim"}
    # Both see the settled spend: 6 x $0.004.
    assert a.usage("key:k")["budgets"][0]["used_usd"] == "0.024"
    assert b.usage("key:k")["budgets"][0]["used_usd"] == "0.024"
    got = burst(40, lambda: (a if next(n) % 2 else b).chat("sk-r", headers=slow))
    assert codes(got) == {200: 9, (429, "key_request_limit_exceeded"): 31}
    # A restart of one replica keeps the shared state.
    a.restart()
    assert a.usage("key:k")["budgets"][0]["used_usd"] == "0.024"
    assert a.chat("sk-r").status_code == 429


def test_auth_off_lets_unknown_callers_through_and_still_governs_known_keys(make_gateway, sim):
    extra = "  auth: off\n"
    entities = "  keys: [{id: k, key: sk-k, limits: {requests: [{max: 1, per: day}]}}]\n"
    port = free_port()
    text = governance(entities, port, f"gov-{port}.db").replace("  auth: required\n", extra)
    gw = make_gateway(extra=text, models=MODELS, env=ENV)
    post = lambda key: requests.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG},
                                     headers={"authorization": f"Bearer {key}"} if key else {}, timeout=10)
    assert post(None).status_code == 200
    assert post("sk-some-provider-key").status_code == 200
    assert post("sk-k").status_code == 200
    assert post("sk-k").status_code == 429


def test_provider_level_limits_per_key(make_gateway, sim):
    entities = ("  keys:\n"
                "    - id: k\n"
                "      key: sk-k\n"
                "      providers: {sim: {limits: {requests: [{max: 2, per: day}]}, budgets: [{usd: 5, period: month}]}}\n")
    g = Gov(make_gateway, entities)
    assert [g.chat("sk-k").status_code for _ in range(2)] == [200, 200]
    r = g.chat("sk-k")
    assert r.status_code == 429 and r.json()["error"]["code"] == "provider_request_limit_exceeded", r.text
    assert "provider `sim`" in r.json()["error"]["message"]
    assert len(sim.requests()) == 2


def stream_socket(g, key: str, extra_headers: str = "", max_tokens: int = 100):
    import socket
    body = json.dumps({"model": "gpt-4o-mini", "messages": MSG, "stream": True, "max_tokens": max_tokens})
    s = socket.create_connection(("127.0.0.1", g.gw.port))
    s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
               f"content-type: application/json\r\n{extra_headers}"
               f"content-length: {len(body)}\r\n\r\n{body}").encode())
    return s


def wait_used(g, scope, want, timeout=5.0):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline and g.usage(scope)["budgets"][0]["used_usd"] != want:
        time.sleep(0.05)
    return g.usage(scope)["budgets"][0]["used_usd"]


def test_a_cancelled_stream_gives_back_what_it_did_not_use(make_gateway, sim):
    g = Gov(make_gateway, "  keys: [{id: k, key: sk-k, budgets: [{usd: 1, period: day}], limits: {concurrent: 1}}]\n")
    s = stream_socket(g, "sk-k", "x-sim-ttft-ms: 2000\r\n")
    import time
    time.sleep(0.5)
    # In flight: $0.10 reserved, and the one slot taken.
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "0.10"
    assert g.chat("sk-k").status_code == 429
    s.close()
    # Nothing was generated before the client left: only the (free) prompt is charged.
    assert wait_used(g, "key:k", "0.00") == "0.00"
    assert g.chat("sk-k").status_code == 200


def test_a_client_that_leaves_before_the_usage_report_still_pays(make_gateway, sim):
    import time
    g = Gov(make_gateway, "  keys: [{id: k, key: sk-k, budgets: [{usd: 1, period: day}]}]\n")
    # Twenty content chunks 50 ms apart, then the finish and usage; the client reads 0.6 s.
    s = stream_socket(g, "sk-k", "x-sim-chunks: 20\r\nx-sim-chunk-gap-ms: 50\r\n")
    got = b""
    end = time.time() + 0.6
    while time.time() < end:
        got += s.recv(65536)
    s.close()
    assert b"[DONE]" not in got and got.count(b'"content"') >= 5
    used = float(wait_used(g, "key:k", "never"))
    # Charged for the text it was sent (about 4 characters a token, $0.001 a token), not
    # nothing, and not the whole $0.10 reservation.
    assert 0.001 <= used < 0.1, used


def test_a_crash_keeps_settled_spend_but_not_reservations_in_flight(make_gateway, sim):
    import signal
    import time
    g = Gov(make_gateway, "  keys: [{id: k, key: sk-k, budgets: [{usd: 10, period: day}], limits: {concurrent: 1}}]\n")
    assert g.chat("sk-k").status_code == 200
    s = stream_socket(g, "sk-k", "x-sim-ttft-ms: 5000\r\n", max_tokens=5000)
    time.sleep(0.5)
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "5.004"
    g.gw.stop(signal.SIGKILL)
    s.close()
    g.restart_after_crash()
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "0.004"
    assert g.chat("sk-k").status_code == 200


def test_a_reset_keeps_what_requests_in_flight_hold(make_gateway, sim):
    import time
    g = Gov(make_gateway, "  keys: [{id: k, key: sk-k, budgets: [{usd: 1, period: day}], limits: {concurrent: 1}}]\n")
    assert g.chat("sk-k").status_code == 200
    s = stream_socket(g, "sk-k", "x-sim-ttft-ms: 800\r\n")
    time.sleep(0.3)
    assert g.api("POST", "/admin/usage/reset", json={"level": "key", "id": "k"}).status_code == 200
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "0.10", "the reservation in flight stays"
    assert g.chat("sk-k").status_code == 429, "its slot too"
    s.close()
    assert wait_used(g, "key:k", "0.00") == "0.00"
    assert codes(burst(3, lambda: g.chat("sk-k", max_tokens=5, headers={"x-sim-latency-ms": "300"}))) == \
        {200: 1, (429, "key_concurrency_limit_exceeded"): 2}
    for body in [{"level": "key", "id": "*"}, {"level": "*", "id": "k"}, {"level": "key"}]:
        r = g.api("POST", "/admin/usage/reset", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_body", r.text


def test_absurd_max_tokens_cannot_erase_spend(make_gateway, sim):
    g = Gov(make_gateway, "  customers: [{id: c, budgets: [{usd: '0.02', period: day}]}]\n"
                          "  keys: [{id: k, key: sk-k, customer: c, budgets: [{usd: '0.02', period: day}]}]\n")
    for _ in range(3):
        assert g.chat("sk-k", max_tokens=5).status_code == 200
    assert g.usage("customer:c")["budgets"][0]["used_usd"] == "0.012"
    r = g.chat("sk-k", max_tokens=2**64 - 1, headers={"x-sim-fault": "400"})
    assert r.status_code in (400, 402), r.text
    assert g.usage("customer:c")["budgets"][0]["used_usd"] == "0.012"
    assert g.usage("key:k")["budgets"][0]["used_usd"] == "0.012"
    # max_tokens 0 still holds a token per choice, and n multiplies the hold.
    rem = lambda r: int(r.headers["x-ratelimit-remaining-tokens"])
    made = [g.api("POST", "/admin/keys", json={"id": f"t{i}", "limits": {"tokens": [{"max": 100000, "per": "day"}]}}).json()["key"]
            for i in range(3)]
    one = rem(g.chat(made[0], max_tokens=10))
    three = rem(g.chat(made[1], max_tokens=10, n=3))
    zero = rem(g.chat(made[2], max_tokens=0))
    assert one - three == 20 and zero - one == 9


def test_an_unpriced_model_is_flagged_not_free(make_gateway, sim):
    models = MODELS + "  - id: sim/mystery-model\n    aliases: [mystery]\n"
    port = free_port()
    text = governance("  keys: [{id: k, key: sk-k}, {id: b, key: sk-b, budgets: [{usd: 1, period: day}]}]\n",
                      port, f"gov-{port}.db")
    gw = make_gateway(extra=text, models=models, env=ENV)
    r = requests.post(gw.url + "/v1/chat/completions", json={"model": "mystery", "messages": MSG},
                      headers={"authorization": "Bearer sk-k"}, timeout=10)
    assert r.status_code == 200
    line = [x for x in gw.log() if x["path"] == "/v1/chat/completions"][-1]
    assert line["unpriced"] is True and "cost_usd" not in line
    assert "has no price" in gw.stderr()
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'tollgate_unpriced_requests_total{model="mystery-model",provider="sim"} 1' in metrics
    priced = requests.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG},
                           headers={"authorization": "Bearer sk-k"}, timeout=10)
    assert priced.status_code == 200
    line = [x for x in gw.log() if x["path"] == "/v1/chat/completions"][-1]
    assert line["cost_usd"] == "0.004" and line["key"] == "k" and "unpriced" not in line
    # A key with a budget cannot use a model its budget cannot price.
    r = requests.post(gw.url + "/v1/chat/completions", json={"model": "mystery", "messages": MSG},
                      headers={"authorization": "Bearer sk-b"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "key_model_unpriced", r.text


def test_check_reports_governance_errors(tmp_path):
    import subprocess
    from conftest import BIN
    cfg = tmp_path / "gateway.yaml"
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    cfg.write_text(
        "listen: 127.0.0.1:1\nproviders: {p: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
        "models: [{id: p/m}]\n"
        "governance:\n"
        "  prices: {m: {input: '1.0000001', output: 1}}\n"
        "  teams: [{id: t, customer: nobody}]\n"
        "  redis_url: 'nonsense://x'\n"
        "  admin: {listen: '127.0.0.1:1', key: 'env:TG_UNSET_ADMIN_KEY'}\n"
        "  keys: [{id: a, key: s, team: missing}, {id: b, key: s}, {id: e, key: ''},\n"
        "         {id: p, key: sp, providers: {nowhere: {budgets: [{usd: 1, period: day}]}}}]\n")
    p = subprocess.run([str(BIN / "tollgate"), "check", "--config", str(cfg)], capture_output=True, text=True)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    for want in ["price of `m`", "unknown customer `nobody`", "unknown team `missing`", "same secret",
                 "key `e`: the secret is empty", "unknown provider `nowhere`", "redis_url",
                 "TG_UNSET_ADMIN_KEY is not set"]:
        assert want in out, out
