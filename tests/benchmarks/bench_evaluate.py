"""Full-ranking evaluation speed on Amazon Baby: all test users ranked against all items.

Usage: python tests/benchmarks/bench_evaluate.py [--bundle RUN/bundles] [--repeats 5] [--threads 2]
Without --bundle, random 64-d embeddings are used (the cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from trainer.data import load_dataset  # noqa: E402
from trainer.evaluate import evaluate_full_ranking  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "datasets" / "amazon-baby")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    if args.bundle is not None:
        from service.bundle import load_bundle

        bundle = load_bundle(args.bundle)
        users, items = torch.from_numpy(bundle.user_embeddings), torch.from_numpy(bundle.item_embeddings)
        source = f"bundle {bundle.path}"
    else:
        generator = torch.Generator().manual_seed(0)
        users = torch.randn(dataset.n_users, 64, generator=generator)
        items = torch.randn(dataset.n_items, 64, generator=generator)
        source = "random 64-d embeddings"
    mask = (dataset.train + dataset.valid).tocsr()
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = evaluate_full_ranking(users, items, dataset.test, mask, batch_size=args.batch_size)
        timings.append(time.perf_counter() - started)
    print(f"dataset {dataset.name}: {int(result['n_users'])} test users x {dataset.n_items} items, {source}, "
          f"{args.threads} threads")
    print(f"full-ranking test evaluation (R/N/P/MAP @10/20/50): median {statistics.median(timings):.3f} s, "
          f"min {min(timings):.3f} s over {args.repeats} runs; target <= 2 s")
    print(f"recall@20 = {result['recall@20']:.4f}")
    print("timings:", " ".join(f"{t:.3f}" for t in timings), "| numpy", np.__version__, "| torch", torch.__version__)


if __name__ == "__main__":
    main()
