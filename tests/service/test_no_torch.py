"""The service must never import torch: import and exercise it in a subprocess where torch is blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"service imported {name}")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import pathlib, tempfile
    import service, service.__main__, service.app, service.api, service.bench, service.index
    import service.encoder, service.store, service.metrics, service.runtime, service.state
    from fastapi.testclient import TestClient
    from tests.service.conftest import build_tiny_bundle, make_settings
    from service.app import create_app

    root = pathlib.Path(tempfile.mkdtemp()) / "bundles"
    build_tiny_bundle(root)
    with TestClient(create_app(make_settings(root))) as client:
        assert client.post("/recommend/u0", json={"k": 3}).status_code == 200
        features = {"image": [0.0] * 4, "text": [0.0] * 5}
        assert client.post("/items", json={"item_id": "x", "features": features}).status_code == 201
    # raw text through a bundle's text encoder (tokenizers + onnxruntime)
    from tests.service.test_text_items import build_text_bundle
    text_root = pathlib.Path(tempfile.mkdtemp()) / "bundles"
    build_text_bundle(text_root)
    with TestClient(create_app(make_settings(text_root))) as client:
        assert client.get("/model").json()["text_encoder"] == "text"
        features = {"image": [0.0] * 4, "text": "warm wool sock"}
        answer = client.post("/items", json={"item_id": "t", "features": features})
        assert answer.status_code == 201, answer.text
    assert "torch" not in sys.modules
    print("NO_TORCH_OK")
    """
)


def test_service_runs_with_torch_blocked() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NO_TORCH_OK" in result.stdout
