"""Provider dialects and keys: Azure addressing, key injection, weighted keys."""

import collections

import requests


def chat(gw, model="gpt-4o-mini", headers=None):
    return requests.post(
        gw.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers or {},
        timeout=10,
    )


def test_azure_deployment_path_version_and_api_key(make_gateway, sim):
    gw = make_gateway(
        providers=f"""\
  az:
    kind: azure
    base_url: {sim.url}
    api_version: "2024-10-21"
    deployments: {{gpt-4o-mini: prod-mini}}
    keys: [{{key: env:TG_TEST_AZURE_KEY}}]
""",
        models="models:\n  - id: az/gpt-4o-mini\n    aliases: [gpt-4o-mini]\n",
        env={"TG_TEST_AZURE_KEY": "azure-secret"},
    )
    r = chat(gw, headers={"authorization": "Bearer client-secret"})
    assert r.status_code == 200, r.text
    seen = sim.requests()[-1]
    assert seen["path"] == "/openai/deployments/prod-mini/chat/completions"
    assert seen["query"] == "api-version=2024-10-21"
    assert seen["headers"]["api-key"] == "azure-secret"
    assert "authorization" not in seen["headers"]


def test_client_credentials_never_reach_the_provider(gateway, sim):
    chat(gateway, headers={"authorization": "Bearer client-secret", "x-api-key": "client-key", "cookie": "a=b"})
    seen = sim.requests()[-1]["headers"]
    assert seen["authorization"] == "Bearer sk-sim-provider"
    assert "x-api-key" not in seen and "cookie" not in seen


def test_keys_are_chosen_by_weight(make_gateway, sim):
    gw = make_gateway(
        providers=f"""\
  sim:
    kind: openai
    base_url: {sim.url}/v1
    keys:
      - {{key: sk-light, weight: 1}}
      - {{key: sk-heavy, weight: 3}}
""",
    )
    sim.clear()
    n = 200
    for _ in range(n):
        assert chat(gw).status_code == 200
    counts = collections.Counter(r["headers"]["authorization"] for r in sim.requests()[-n:])
    heavy = counts["Bearer sk-heavy"] / n
    assert 0.62 < heavy < 0.88, counts


def test_missing_key_falls_back_and_unavailable_route_is_503(make_gateway, sim):
    gw = make_gateway(
        providers=f"""\
  paid:
    kind: openai
    base_url: http://127.0.0.1:9/v1
    keys: [{{key: env:TG_TEST_NEVER_SET_KEY}}]
  sim:
    kind: openai
    base_url: {sim.url}/v1
""",
        models="models:\n  - id: paid/gpt-4o-mini\n    aliases: [only-paid]\n  - id: sim/gpt-4o-mini\n",
        rules="rules:\n  - name: r1\n    match: {model: gpt-4o-mini}\n    targets: [{to: paid/gpt-4o-mini}]\n    fallback: [sim/gpt-4o-mini]\n",
    )
    r = chat(gw)
    assert r.status_code == 200 and r.headers["x-tollgate-provider"] == "sim"
    assert r.headers["x-tollgate-attempts"] == "1"
    r = chat(gw, model="only-paid")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_available_provider"
    assert "TG_TEST_NEVER_SET_KEY" in r.json()["error"]["message"]


def test_request_id_is_echoed_or_made(gateway, sim):
    r = chat(gateway, headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert sim.requests()[-1]["headers"]["x-request-id"] == "abc-123"
    r = chat(gateway)
    assert len(r.headers["x-request-id"]) == 32
    assert gateway.log()[-1]["request_id"] == r.headers["x-request-id"]


def test_access_log_has_one_line_per_request(gateway):
    for i in range(3):
        chat(gateway, headers={"x-request-id": f"log-{i}"})
    requests.get(gateway.url + "/v1/models", timeout=5)
    lines = gateway.log()
    assert [l["request_id"] for l in lines[-4:-1]] == ["log-0", "log-1", "log-2"]
    last_chat = lines[-2]
    for field in ("ts_ms", "model", "provider", "status", "latency_ms", "ttfb_ms", "prompt_tokens",
                  "completion_tokens", "cached_tokens"):
        assert last_chat[field] is not None, field
    assert last_chat["ttfb_ms"] <= last_chat["latency_ms"]
    assert lines[-1]["path"] == "/v1/models" and lines[-1]["status"] == 200


def test_cached_tokens_are_recorded(gateway):
    chat(gateway, headers={"x-sim-cached-tokens": "7"})
    assert gateway.log()[-1]["cached_tokens"] == 7
