"""Starts the real binaries on free loopback ports for the integration tests.

The binaries come from TOLLGATE_BIN_DIR (default: target/release); `scripts/test.sh` builds them.
"""

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("TOLLGATE_BIN_DIR", ROOT / "target" / "release"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            requests.get(url, timeout=0.5)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class Sim:
    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(BIN / "tollgate-sim"), "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=open(tmp / f"sim-{self.port}.out", "w"),
            stderr=subprocess.STDOUT,
        )
        wait_http(self.url + "/sim/requests")

    def requests(self) -> list:
        return requests.get(self.url + "/sim/requests", timeout=5).json()["requests"]

    def clear(self) -> None:
        requests.delete(self.url + "/sim/requests", timeout=5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


DEFAULT_MODELS = """\
models:
  - id: sim/gpt-4o-mini
    aliases: [gpt-4o-mini]
  - id: sim/text-embedding-3-small
    aliases: [text-embedding-3-small]
"""


class Gateway:
    """A `tollgate run` process with its own config directory."""

    def __init__(self, tmp: Path, sim: Sim, providers: str = "", models: str = DEFAULT_MODELS,
                 rules: str = "rules: []\n", extra: str = "", env: dict | None = None):
        self.dir = tmp / f"gw-{free_port()}"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.dir / "gateway.yaml"
        self.rules = self.dir / "rules.yaml"
        self.log_path = self.dir / "access.log"
        providers = providers or f"""\
  sim:
    kind: openai
    base_url: {sim.url}/v1
    keys:
      - key: sk-sim-provider
"""
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\naccess_log: access.log\nthreads: 2\n{extra}"
            f"providers:\n{providers}{models}"
        )
        self.rules.write_text(rules)
        self.stderr_path = self.dir / "stderr.log"
        self.proc = subprocess.Popen(
            [str(BIN / "tollgate"), "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderr_path, "w"),
            env={**os.environ, **(env or {})},
        )
        wait_http(self.url + "/health")

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def log(self) -> list:
        """Access-log lines; waits briefly for the background writer."""
        time.sleep(0.2)
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def write_rules(self, text: str) -> None:
        tmp = self.rules.with_suffix(".tmp")
        tmp.write_text(textwrap.dedent(text))
        tmp.replace(self.rules)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # Never leave a gateway behind: a stuck one is killed, and the test fails.
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise
        return self.proc.returncode


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def make_gateway(tmp_path, sim):
    started = []

    def make(**kw):
        g = Gateway(tmp_path, sim, **kw)
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop(signal.SIGINT)


@pytest.fixture
def gateway(make_gateway):
    return make_gateway()
