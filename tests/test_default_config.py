"""The shipped conf/ works as README promises: with no API keys, the bundled simulator answers."""

import os
import subprocess
import time

import openai

from conftest import BIN, ROOT, free_port, wait_http


def test_default_config_answers_through_the_bundled_simulator(tmp_path):
    sim_port, port = free_port(), free_port()
    gw = (ROOT / "conf" / "gateway.yaml").read_text().replace("127.0.0.1:8089", f"127.0.0.1:{sim_port}")
    gw = gw.replace("path: ../models/", f"path: {ROOT}/models/")
    (tmp_path / "gateway.yaml").write_text(gw)
    (tmp_path / "rules.yaml").write_text((ROOT / "conf" / "rules.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.Popen(
        [str(BIN / "tollgate"), "run", "--config", str(tmp_path / "gateway.yaml"), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything", max_retries=0)
        r = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert r.headers["x-tollgate-provider"] == "sim"
        assert r.parse().choices[0].message.content == "sim reply to: hi"
        assert "gpt-4o-mini" in [m.id for m in client.models.list()]
        # The default config caches: the same question again is answered from the exact layer.
        time.sleep(0.2)
        again = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert again.headers["x-tollgate-cache"] == "hit-exact"
        assert again.parse().choices[0].message.content == "sim reply to: hi"
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
