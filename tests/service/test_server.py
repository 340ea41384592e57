"""The real server: ``python -m service --workers 2`` on loopback, multiprocess Prometheus metrics
aggregated over workers and valid for ``promtool check metrics`` (or prometheus_client's parser)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import build_tiny_bundle
from tests.service.test_store_outage import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def request(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST" if body is not None else "GET",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_two_workers_share_metrics(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    build_tiny_bundle(root)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODALREC_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    (tmp_path / "prom").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--bundle-root", str(root), "--port", str(port), "--workers", "2"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if request(base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "server did not become ready"
            time.sleep(0.2)
        n_requests = 24
        for i in range(n_requests):
            status, _ = request(f"{base}/recommend/u{i % 6}", b'{"k": 3}')
            assert status == 200
        assert request(f"{base}/recommend/u0", b'{"k": 0}')[0] == 422
        status, text = request(base + "/metrics")
        assert status == 200
    finally:
        process.terminate()
        process.wait(timeout=20)
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    served = sum(
        s.value
        for s in families["modalrec_http_requests"].samples
        if s.name.endswith("_total")
        and s.labels["route"] == "/recommend/{user_id}"
        and s.labels["status"] == "200"
    )
    assert served == n_requests  # counted in whichever worker served them, summed over both
    assert len(list((tmp_path / "prom").glob("*.db"))) >= 2  # one file set per worker
    info = [s for s in families["modalrec_model_info"].samples if s.value == 1.0]
    assert len(info) == 1 and info[0].labels["model"] == "test-model"
    if shutil.which("promtool"):
        result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
