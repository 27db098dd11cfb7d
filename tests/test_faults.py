"""Broken upstreams and awkward clients: every failure reaches the client as a clean answer."""

import json
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
import requests

from conftest import BIN, free_port

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def plain_upstream():
    """A tiny upstream that answers every POST with a fixed status, content type and body."""
    answer = {"status": 503, "type": "text/plain", "body": b""}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(answer["status"])
            self.send_header("content-type", answer["type"])
            self.send_header("content-length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answer
    server.shutdown()


@pytest.mark.parametrize("body", [b"", b"<html>down for maintenance</html>"])
def test_non_json_upstream_errors_become_json_with_framing(make_gateway, plain_upstream, body):
    url, answer = plain_upstream
    answer["body"] = body
    gw = make_gateway(providers=f"  sim:\n    kind: openai\n    base_url: {url}/v1\n")
    r = requests.post(gw.url + "/v1/chat/completions", json=BODY, timeout=10)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "upstream_error" and err["type"] == "upstream_error"
    assert "503 with a non-JSON body (text/plain)" in err["message"], err["message"]
    # The connection is reusable afterwards.
    assert requests.get(gw.url + "/health", timeout=5).status_code == 200
    assert gw.log()[-2]["error"] == "upstream_error"


def test_upstream_json_errors_are_logged(gateway):
    r = requests.post(gateway.url + "/v1/chat/completions", json=BODY, headers={"x-sim-fault": "500"}, timeout=10)
    assert r.status_code == 500 and r.json()["error"]
    assert gateway.log()[-1]["error"] == "upstream_error"


def test_gateway_made_errors_carry_the_request_id(make_gateway):
    dead = free_port()
    gw = make_gateway(providers=f"  sim:\n    kind: openai\n    base_url: http://127.0.0.1:{dead}/v1\n")
    r = requests.post(gw.url + "/v1/chat/completions", json=BODY, headers={"x-request-id": "rid-502"}, timeout=10)
    assert r.status_code == 502
    assert r.headers["x-request-id"] == "rid-502"
    assert gw.log()[-1]["error"] == "upstream_unavailable"


def test_stalled_upstream_times_out_with_504(make_gateway, sim):
    gw = make_gateway(
        providers=f"  sim:\n    kind: openai\n    base_url: {sim.url}/v1\n    timeouts: {{first_byte_ms: 500}}\n"
    )
    r = requests.post(gw.url + "/v1/chat/completions", json=BODY, headers={"x-sim-fault": "stall"}, timeout=10)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"


def test_midstream_error_reaches_the_client_and_the_log(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0,
                           default_headers={"x-sim-fault": "midstream"})
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=BODY["messages"], stream=True):
            pass
    line = gateway.log()[-1]
    assert line["status"] == 200 and line["error"] == "upstream_stream_error"


def test_stream_that_goes_idle_ends_with_an_error_event(make_gateway, sim):
    gw = make_gateway(
        providers=f"  sim:\n    kind: openai\n    base_url: {sim.url}/v1\n    timeouts: {{idle_ms: 400}}\n"
    )
    r = requests.post(
        gw.url + "/v1/chat/completions",
        json={**BODY, "stream": True},
        headers={"x-sim-chunks": "4", "x-sim-chunk-gap-ms": "1500"},
        timeout=10,
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e.strip()]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_stream_error"
    assert "[DONE]" not in r.text
    assert gw.log()[-1]["error"] == "upstream_timeout"


def sim_with_timeouts(make_gateway, sim, first_byte_ms, idle_ms):
    timeouts = f"{{first_byte_ms: {first_byte_ms}, idle_ms: {idle_ms}}}"
    return make_gateway(providers=f"  sim:\n    kind: openai\n    base_url: {sim.url}/v1\n    timeouts: {timeouts}\n")


def test_a_slow_first_byte_is_bounded_by_first_byte_not_idle(make_gateway, sim):
    gw = sim_with_timeouts(make_gateway, sim, first_byte_ms=3000, idle_ms=200)
    slow = {"x-sim-latency-ms": "800"}
    r = requests.post(gw.url + "/v1/chat/completions", json=BODY, headers=slow, timeout=10)
    assert r.status_code == 200, r.text
    r = requests.post(gw.url + "/v1/chat/completions", json={**BODY, "stream": True}, headers=slow, timeout=10)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text


def test_stream_gaps_are_bounded_by_idle_not_first_byte(make_gateway, sim):
    gw = sim_with_timeouts(make_gateway, sim, first_byte_ms=300, idle_ms=3000)
    gaps = {"x-sim-chunks": "3", "x-sim-chunk-gap-ms": "700"}
    r = requests.post(gw.url + "/v1/chat/completions", json={**BODY, "stream": True}, headers=gaps, timeout=10)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
    # A whole answer that takes longer than first_byte_ms is a timeout.
    r = requests.post(gw.url + "/v1/chat/completions", json=BODY, headers={"x-sim-latency-ms": "1500"}, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


def test_a_stalled_stream_times_out_at_first_byte_ms(make_gateway, sim):
    gw = sim_with_timeouts(make_gateway, sim, first_byte_ms=400, idle_ms=5000)
    started = time.monotonic()
    r = requests.post(gw.url + "/v1/chat/completions", json={**BODY, "stream": True},
                      headers={"x-sim-fault": "stall"}, timeout=20)
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "upstream_timeout" and "no first byte within 400 ms" in err["message"], err
    assert time.monotonic() - started < 4, "two tries of 400 ms and a backoff, not the 5 s idle bound"


def test_expect_100_continue_is_answered(gateway, sim):
    body = json.dumps({**BODY, "messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"Expect: 100-continue\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    assert sock.recv(100).startswith(b"HTTP/1.1 100"), "a client that waits for 100 Continue gets it"
    sock.sendall(body)
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    assert got.startswith(b"HTTP/1.1 200")
    sock.close()
    assert "expect" not in sim.requests()[-1]["headers"]


def test_broken_chunked_body_is_400(gateway):
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    got = sock.recv(65536)
    assert got.startswith(b"HTTP/1.1 400"), got[:100]
    assert b'"invalid_body"' in got


def test_busy_port_fails_fast_with_a_message(tmp_path, sim):
    from conftest import Gateway

    gw = Gateway(tmp_path, sim)
    try:
        r = subprocess.run(
            [str(BIN / "tollgate"), "run", "--config", str(gw.config)], capture_output=True, text=True, timeout=20
        )
        assert r.returncode == 1
        assert f"cannot listen on 127.0.0.1:{gw.port}" in r.stderr
    finally:
        gw.stop()


def test_requests_cut_by_shutdown_still_get_a_log_line(make_gateway):
    gw = make_gateway(extra="shutdown_grace_secs: 1\n")

    def long_stream():
        try:
            requests.post(gw.url + "/v1/chat/completions", json={**BODY, "stream": True},
                          headers={"x-sim-chunks": "10", "x-sim-chunk-gap-ms": "500"}, timeout=15).text
        except requests.RequestException:
            pass

    t = threading.Thread(target=long_stream)
    t.start()
    time.sleep(0.5)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=15) == 0
    t.join()
    lines = gw.log()
    assert [l["error"] for l in lines if l["path"] == "/v1/chat/completions"] == ["interrupted"]
