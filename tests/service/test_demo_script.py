"""scripts/demo.sh (``make demo``) against a tiny bundle: the trainer step is stubbed out (it trains on MovieLens), the
service, curl calls and the new-item write are the script's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.bench import free_port
from tests.service.conftest import MODALITIES, N_ITEMS, build_tiny_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the demo script needs curl")
def test_the_demo_adds_its_new_item_when_a_write_token_is_exported(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    build_tiny_bundle(workdir / "run" / "bundles")  # what `python -m trainer demo` leaves behind
    (workdir / "run" / "split.inter").write_text("user_id:token\titem_id:token\tlabel:float\nu0\ti0\t0\n")
    features = workdir / "ml-100k-mm"
    features.mkdir()
    for name, dim in MODALITIES.items():
        np.save(features / f"{name}_feat.npy", np.full((N_ITEMS, dim), 0.5, dtype=np.float32))
    python = tmp_path / "python"  # $PY: `-m trainer ...` does nothing, the rest is this interpreter
    python.write_text(f'#!/usr/bin/env bash\n[ "$1 $2" = "-m trainer" ] && exit 0\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    token = "demo-write-token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODALREC_")}
    env.update(PY=str(python), WORKDIR=str(workdir), PORT=str(free_port()), DEMO_KEEP_SERVING="0",
               MODALREC_WRITE_TOKEN=token)
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "demo.sh")], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "missing or wrong bearer token" not in done.stdout, done.stdout
    assert '"item_id":"new-movie-1","replaced":false' in done.stdout, done.stdout
    # the echoed command names the variable, never the secret
    assert 'Authorization: Bearer $MODALREC_WRITE_TOKEN' in done.stdout and token not in done.stdout
