"""What raw text costs ``POST /items``: the same new items sent as raw text and as their feature floats, through the
real app (TestClient, in-process, embedded store) on a bundle with a text encoder, interleaved in one run.

Prints the median milliseconds per request of each kind and their ratio, and the text encoder alone (tokenizer +
ONNX, 1 thread). The bundle must carry ``text_encoder.onnx`` (any bundle exported from a dataset built by
``trainer features``, e.g. ``make demo``'s ``runs/demo/run/bundles/current``).

Usage: python tests/benchmarks/bench_text_items.py --bundle runs/demo/run/bundles/current [--items 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from service.app import create_app  # noqa: E402
from service.bundle import resolve_bundle_dir  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import MemoryStore  # noqa: E402

GENRES = ["Action", "Comedy", "Drama", "Thriller", "Romance", "Animation", "Sci-Fi", "Documentary"]


def texts(n: int) -> list[str]:
    return [f"Some New Film {i} ({1990 + i % 30}): {GENRES[i % 8]}, {GENRES[(3 * i + 1) % 8]}" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory or bundle root")
    parser.add_argument("--items", type=int, default=200, help="new items per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    bundle_dir = resolve_bundle_dir(args.bundle)
    settings = Settings(bundle_root=bundle_dir.parent, reload_poll_s=0, threads_per_worker=1)
    app = create_app(settings, store=MemoryStore(), registry=CollectorRegistry())
    with TestClient(app) as client:
        model = client.get("/model").json()
        modality = model.get("text_encoder")
        if not modality:
            sys.exit(f"{bundle_dir} has no text encoder (text_encoder.onnx); export one from a `trainer features` dataset")
        state = app.state.runtime.state
        others = {name: [0.0] * dim for name, dim in model["modalities"].items() if name != modality}
        batch = texts(args.items)
        as_floats = [state.text_encoder.encode(text) for text in batch]
        per_kind: dict[str, list[float]] = {"raw text": [], "floats": [], "text encoder alone": []}
        for round_index in range(args.rounds):
            for kind in per_kind:
                started = time.perf_counter()
                for i, text in enumerate(batch):
                    if kind == "text encoder alone":
                        state.text_encoder.encode(text)
                        continue
                    value = text if kind == "raw text" else as_floats[i]
                    answer = client.post("/items", json={"item_id": f"{kind}-{round_index}-{i}",
                                                         "features": {**others, modality: value}})
                    if answer.status_code != 201:
                        sys.exit(f"POST /items failed: {answer.status_code} {answer.text}")
                per_kind[kind].append((time.perf_counter() - started) / len(batch) * 1000)
    medians = {kind: statistics.median(values) for kind, values in per_kind.items()}
    print(f"bundle {bundle_dir.name} ({model['model']}, {model['n_items']} items), {args.items} items x "
          f"{args.rounds} rounds, interleaved, 1 ONNX thread; median ms per request:")
    for kind, value in medians.items():
        print(f"  {kind:20s} {value:7.2f}  (rounds: {', '.join(f'{v:.2f}' for v in per_kind[kind])})")
    print(f"raw text / floats: {medians['raw text'] / medians['floats']:.2f}x")


if __name__ == "__main__":
    main()
