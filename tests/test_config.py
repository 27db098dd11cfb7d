"""`tollgate check`, hot reload of rules.yaml, SIGTERM draining, and --help."""

import signal
import subprocess
import threading
import time

import requests

from conftest import BIN, ROOT


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tollgate"), "check", "--config", str(path)], capture_output=True, text=True)


def test_check_accepts_the_default_config():
    r = check(ROOT / "conf" / "gateway.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok" in r.stdout


def test_check_reports_every_error_with_path_and_line(tmp_path):
    (tmp_path / "gateway.yaml").write_text(
        """\
listen: 127.0.0.1:8080
providers:
  sim:
    kind: openai
    base_url: http://127.0.0.1:1/v1
    colour: blue
  az:
    kind: azure
    base_url: https://example.invalid
models:
  - id: sim/a
    aliases: [a]
  - id: ghost/b
"""
    )
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    r = check(tmp_path / "gateway.yaml")
    assert r.returncode == 1
    out = r.stdout
    assert "gateway.yaml:6: providers.sim.colour: unknown field `colour`" in out, out
    assert "gateway.yaml:7: providers.az.api_version: an azure provider needs `api_version`" in out, out
    assert "gateway.yaml:13: models[1].id: unknown provider `ghost`" in out, out
    assert "3 error(s)" in out


def test_check_refuses_values_that_would_break_at_run_time(tmp_path):
    (tmp_path / "gateway.yaml").write_text(
        """\
listen: 127.0.0.1:8080
threads: 0
shutdown_grace_secs: 99999999
timeouts: {first_byte_ms: 0}
providers:
  sim:
    kind: openai
    base_url: http://127.0.0.1:1/v 1
  az:
    kind: azure
    base_url: https://example.invalid
    api_version: "2024-10-21"
models:
  - id: az/other model
"""
    )
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    r = check(tmp_path / "gateway.yaml")
    assert r.returncode == 1
    for expected in ["gateway.yaml:2: threads:", "gateway.yaml:3: shutdown_grace_secs:", "gateway.yaml:4: timeouts.first_byte_ms:",
                     "gateway.yaml:8: providers.sim.base_url:", "gateway.yaml:14: models[0].id: azure deployment"]:
        assert expected in r.stdout, r.stdout


def test_check_reports_rule_errors(tmp_path):
    (tmp_path / "gateway.yaml").write_text(
        "listen: 127.0.0.1:8080\nproviders:\n  sim:\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\nmodels:\n  - id: sim/a\n"
    )
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: r1\n    match: {model: x}\n    targets:\n      - to: sim/a\n        weight: -1\n      - to: sim/zzz\n"
    )
    r = check(tmp_path / "gateway.yaml")
    assert r.returncode == 1
    assert "rules.yaml:6: rules[0].targets[0].weight: a weight must be a positive number" in r.stdout, r.stdout
    assert "rules.yaml:7: rules[0].targets[1].to: `sim/zzz` is not a model id" in r.stdout, r.stdout


def test_check_reports_rules_that_cannot_be_read_and_the_others_errors_together(tmp_path):
    (tmp_path / "gateway.yaml").write_text(
        "listen: 127.0.0.1:8080\nproviders:\n  sim:\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\nmodels:\n  - id: sim/a\n"
    )
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: r1\n    match: {model: x, colour: red}\n    targets: [{to: sim/a}]\n"
        "  - name: r2\n    match: {model: y}\n    targets: [{to: elsewhere/a}]\n"
        "  - name: r3\n    match: {model: '*'}\n    targets: [{to: sim/a}]\n"
        "  - name: r4\n    match: {model: z}\n    targets: [{to: sim/a}]\n"
    )
    r = check(tmp_path / "gateway.yaml")
    assert r.returncode == 1
    assert "rules.yaml:3: rules[0].match.colour: unknown field `colour`" in r.stdout, r.stdout
    assert "rules[1].targets[0].to: unknown provider `elsewhere`" in r.stdout, r.stdout
    assert "rules[3].match: can never match: rules[2] (`r3`)" in r.stdout, r.stdout


def ask(gw, model="routed") -> requests.Response:
    return requests.post(
        gw.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


TWO_MODELS = "models:\n  - id: sim/alpha\n  - id: sim/beta\n"


def wait_for(pred, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_hot_reload_on_file_change_and_refusal_of_a_bad_file(make_gateway, sim):
    gw = make_gateway(models=TWO_MODELS, rules="rules:\n  - name: r1\n    match: {model: routed}\n    targets: [{to: sim/alpha}]\n")
    assert ask(gw).headers["x-tollgate-model"] == "sim/alpha"
    gw.write_rules("rules:\n  - name: r1\n    match: {model: routed}\n    targets: [{to: sim/beta}]\n")
    assert wait_for(lambda: ask(gw).headers.get("x-tollgate-model") == "sim/beta")
    assert sim.requests()[-1]["body"]["model"] == "beta"

    # An invalid file is refused and logged; the old rules keep serving.
    gw.write_rules("rules:\n  - name: r1\n    match: {model: routed}\n    targets: [{to: sim/nowhere}]\n")
    assert wait_for(lambda: "rules reload refused" in gw.stderr())
    assert "rules[0].targets[0].to" in gw.stderr()
    assert ask(gw).headers["x-tollgate-model"] == "sim/beta"
    gw.write_rules("rules: [unclosed\n")
    assert wait_for(lambda: gw.stderr().count("rules reload refused") >= 2)
    assert ask(gw).status_code == 200
    # An empty file (an editor truncating before it writes) is refused too.
    gw.write_rules("")
    assert wait_for(lambda: gw.stderr().count("rules reload refused") >= 3)
    assert ask(gw).headers["x-tollgate-model"] == "sim/beta"


def test_sighup_reloads(make_gateway):
    gw = make_gateway(models=TWO_MODELS, rules="rules:\n  - name: r1\n    match: {model: routed}\n    targets: [{to: sim/alpha}]\n")
    # Rewrite keeping size and restoring mtime is not needed: SIGHUP reloads regardless.
    gw.rules.write_text("rules:\n  - name: r1\n    match: {model: routed}\n    targets: [{to: sim/beta}]\n")
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: ask(gw).headers.get("x-tollgate-model") == "sim/beta")
    assert "SIGHUP" in gw.stderr()
    assert gw.proc.poll() is None


def test_in_flight_requests_finish_on_their_config_during_reload(make_gateway):
    gw = make_gateway(models=TWO_MODELS, rules="rules:\n  - name: r1\n    match: {model: routed}\n    targets: [{to: sim/alpha}]\n")
    results = []

    def slow():
        r = requests.post(
            gw.url + "/v1/chat/completions",
            json={"model": "routed", "messages": [{"role": "user", "content": "slow"}]},
            headers={"x-sim-latency-ms": "800"},
            timeout=10,
        )
        results.append(r)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    gw.write_rules("rules:\n  - name: r1\n    match: {model: routed}\n    targets: [{to: sim/beta}]\n")
    t.join()
    assert results[0].status_code == 200
    assert results[0].headers["x-tollgate-model"] == "sim/alpha"


def test_sigterm_drains_in_flight_requests(make_gateway):
    gw = make_gateway()
    results = []

    def slow():
        r = requests.post(
            gw.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]},
            headers={"x-sim-latency-ms": "1000"},
            timeout=10,
        )
        results.append(r.status_code)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    started = time.time()
    gw.proc.send_signal(signal.SIGTERM)
    t.join()
    assert results == [200]
    assert gw.proc.wait(timeout=15) == 0
    assert time.time() - started < 12
    # The access log was flushed on the way out.
    assert any(line["status"] == 200 for line in gw.log())


def test_help_explains_options():
    out = subprocess.run([str(BIN / "tollgate"), "run", "--help"], capture_output=True, text=True).stdout
    assert "--config" in out and "--listen" in out
    out = subprocess.run([str(BIN / "tollgate"), "--help"], capture_output=True, text=True).stdout
    assert "run" in out and "check" in out
    out = subprocess.run([str(BIN / "tollgate-sim"), "--help"], capture_output=True, text=True).stdout
    assert "--listen" in out


def test_listen_flag_overrides_config(tmp_path, sim):
    from conftest import Gateway, free_port

    gw = Gateway(tmp_path, sim)
    gw.stop()
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "tollgate"), "run", "--config", str(gw.config), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: _up(f"http://127.0.0.1:{port}/health"), 15)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _up(url):
    try:
        return requests.get(url, timeout=0.5).status_code == 200
    except requests.RequestException:
        return False
