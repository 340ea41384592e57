import os
import tempfile
from pathlib import Path

import pytest

# Tiny tensors: one intra-op thread is faster than two, and avoids oversubscription when CI runs
# pytest beside other processes on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the service can be tested without torch
    pass

# Exports cached by the trainer (the ONNX text encoder) go to a directory of this test session, not ~/.cache.
os.environ.setdefault("MODALREC_CACHE_DIR", tempfile.mkdtemp(prefix="modalrec-test-cache-"))

# Apps built here read MODALREC_* variables (Settings): a write token exported for docker compose would make every
# unauthenticated POST /items and POST /users/{id}/events in the tests a 401. Tests that want one set it themselves.
os.environ.pop("MODALREC_WRITE_TOKEN", None)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("MODALREC_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
