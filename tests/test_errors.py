"""Every error case, with curl: the status and OpenAI's error shape."""

import json
import subprocess

import pytest


def curl(*args: str) -> tuple[int, dict, dict]:
    """Runs curl; returns (status, headers, JSON body)."""
    out = subprocess.run(
        ["curl", "-s", "-i", "--max-time", "20", *args], capture_output=True, check=True
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    return status, headers, json.loads(body)


def assert_error(body: dict, code: str) -> None:
    err = body["error"]
    assert set(err) == {"message", "type", "code"}
    assert err["code"] == code and err["message"] and err["type"]


def post(url: str, body: str, *extra: str):
    return curl("-X", "POST", url, "-H", "content-type: application/json", "--data-binary", body, *extra)


def test_unknown_model_is_404(gateway):
    status, headers, body = post(gateway.url + "/v1/chat/completions", '{"model":"nope","messages":[{"role":"user","content":"x"}]}')
    assert status == 404
    assert_error(body, "model_not_found")
    assert headers["content-type"] == "application/json" and headers["x-request-id"]


@pytest.mark.parametrize(
    "body,code",
    [
        ("{not json", "invalid_json"),
        ("", "invalid_json"),
        ("[1,2]", "invalid_type"),
        ('{"model":"gpt-4o-mini","messages":"hi"}', "invalid_type"),
        ('{"model":42,"messages":[{"role":"user","content":"x"}]}', "invalid_type"),
        ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"stream":"yes"}', "invalid_type"),
        ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":"10"}', "invalid_type"),
        ('{"messages":[{"role":"user","content":"x"}]}', "missing_field"),
    ],
)
def test_bad_bodies_are_400(gateway, sim, body, code):
    status, _, resp = post(gateway.url + "/v1/chat/completions", body)
    assert status == 400, resp
    assert_error(resp, code)
    assert sim.requests() == [], "nothing reaches the upstream"


def test_body_over_the_limit_is_413(make_gateway, tmp_path):
    gw = make_gateway(extra="limits:\n  max_body_bytes: 1000\n")
    big = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 2000}]})
    status, _, body = post(gw.url + "/v1/chat/completions", big)
    assert status == 413
    assert_error(body, "request_too_large")
    # Chunked upload with no Content-Length is cut off too.
    status, _, body = post(gw.url + "/v1/chat/completions", big, "-H", "transfer-encoding: chunked")
    assert status == 413
    # The connection still serves after a refusal.
    status, _, _ = curl(gw.url + "/health")
    assert status == 200


def test_wrong_method_is_405(gateway):
    status, headers, body = curl(gateway.url + "/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST"
    assert_error(body, "method_not_allowed")
    status, headers, body = curl("-X", "POST", gateway.url + "/v1/models")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_unknown_path_is_404(gateway):
    status, _, body = curl(gateway.url + "/v2/whatever")
    assert status == 404
    assert_error(body, "not_found")


def test_health_and_ready(gateway):
    assert curl(gateway.url + "/health")[0] == 200
    assert curl(gateway.url + "/ready")[0] == 200


def test_html_upstream_error_becomes_json(gateway):
    status, headers, body = post(
        gateway.url + "/v1/chat/completions",
        '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}',
        "-H", "x-sim-fault: html",
    )
    assert status == 502
    assert headers["content-type"] == "application/json"
    assert_error(body, "upstream_error")
    assert "502 with a non-JSON body (text/html" in body["error"]["message"]


def test_upstream_json_error_passes_through(gateway):
    status, headers, body = post(
        gateway.url + "/v1/chat/completions",
        '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}',
        "-H", "x-sim-fault: 429",
    )
    assert status == 429 and headers.get("retry-after") == "1"
    assert body["error"]["message"]


def test_unreachable_upstream_is_502_json(make_gateway, sim):
    from conftest import free_port

    dead = free_port()
    gw = make_gateway(providers=f"  sim:\n    kind: openai\n    base_url: http://127.0.0.1:{dead}/v1\n")
    status, _, body = post(gw.url + "/v1/chat/completions", '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}')
    assert status == 502
    assert_error(body, "upstream_unavailable")
    assert "2 attempts failed" in body["error"]["message"], "retried once with backoff, then given up"


def test_reset_upstream_is_502_json(gateway):
    status, _, body = post(
        gateway.url + "/v1/chat/completions",
        '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}',
        "-H", "x-sim-fault: reset",
    )
    assert status == 502
    assert_error(body, "upstream_unavailable")
