"""LUDP speed benchmark: epoch time vs LightGCN on the same data in the same run, and kNN graph build at scale.

    .venv/bin/python tests/benchmarks/bench_ludp.py [--dataset data/ml-100k-mm] [--epochs 3]
        [--knn-items 100000] [--knn-dim 384] [--knn-k 10] [--threads 2] [--epoch-threads 1]
        [--denormals flushed|kept|both] [--also ludp_item [MODEL[:CONFIG.yaml] ...]]

Part 1 trains LightGCN and LUDP (registry defaults, batch 2048, Adam) for ``--epochs`` full epochs each,
interleaved, on ``--epoch-threads`` torch threads (1, as in the training runs: on a shared 2-core machine
more threads oversubscribe the cores), and prints the median epoch seconds, the ratio, and the process's peak RSS.
Each ``--also MODEL[:CONFIG.yaml]`` adds one more model to the same interleaved rounds (e.g. ``ludp_item``), with
the model parameters ``trainer fit`` would resolve for it on this dataset (model preset, dataset preset, CONFIG).
``flushed`` times both models with denormal floats flushed to zero, as ``trainer fit`` trains on a CPU
(``trainer.loop.denormals_flushed``); ``kept`` without (the trainer before session 13); ``both`` (default) runs
the two one after the other, fresh models each.
Part 2 builds a kNN graph (``trainer.graphs.knn_graph``) over ``--knn-items`` random ``--knn-dim``-d features
in a fresh subprocess and prints its wall time and that subprocess's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_epochs(
    dataset_dir: Path, epochs: int, batch_size: int, flush_denormals: bool, also: tuple[str, ...] | list[str] = ()
) -> dict:
    import torch

    from trainer.loop import denormals_flushed

    with denormals_flushed(torch.device("cpu"), flush_denormals):
        result = _bench_epochs(dataset_dir, epochs, batch_size, also)
    return {"denormals": "flushed" if flush_denormals else "kept", **result}


def _bench_epochs(dataset_dir: Path, epochs: int, batch_size: int, also: tuple[str, ...] | list[str]) -> dict:
    import numpy as np
    import torch

    from trainer.config import resolve_run_config
    from trainer.loop import NegativeSampler, make_adam
    from trainer.models.base import ModelInputs
    from trainer.models.registry import build_model
    from trainer.pipeline import dataset_preset_name, load_dataset_dir

    dataset = load_dataset_dir(dataset_dir)
    inputs = ModelInputs.from_dataset(dataset, torch.device("cpu"))
    torch.manual_seed(0)
    started = time.perf_counter()
    models = {"lightgcn": build_model("lightgcn", inputs), "ludp": build_model("ludp", inputs)}
    for spec in also:
        name, _, config = spec.partition(":")
        run = resolve_run_config(name, dataset_preset_name(dataset_dir), Path(config) if config else None)
        models[spec] = build_model(name, inputs, run.model_params)
    build_seconds = time.perf_counter() - started
    optimizers = {name: make_adam(model.parameters(), lr=1e-3) for name, model in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in models}
    for epoch in range(epochs):
        for name, model in models.items():
            sampler = NegativeSampler(dataset.train, np.random.default_rng(epoch))
            model.train()
            began, began_cpu = time.perf_counter(), time.process_time()
            for batch in sampler.epoch_batches(batch_size, torch.device("cpu")):
                loss = sum(model.loss_terms(batch).values())
                optimizers[name].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[name].step()
            seconds[name].append(time.perf_counter() - began)
            cpu_seconds[name].append(time.process_time() - began_cpu)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu_seconds.items()}
    return {
        "dataset": dataset.name,
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "n_train": int(dataset.train.nnz),
        "modalities": dataset.modality_dims,
        "epochs_each": epochs,
        "batch_size": batch_size,
        "epoch_seconds": {name: [round(v, 3) for v in values] for name, values in seconds.items()},
        "median_epoch_seconds": {name: round(v, 3) for name, v in median.items()},
        "ludp_over_lightgcn": round(median["ludp"] / median["lightgcn"], 3),
        # process CPU seconds: robust to other jobs competing for the cores (wall time is not)
        "epoch_cpu_seconds": {name: [round(v, 3) for v in values] for name, values in cpu_seconds.items()},
        "median_epoch_cpu_seconds": {name: round(v, 3) for name, v in median_cpu.items()},
        "ludp_over_lightgcn_cpu": round(median_cpu["ludp"] / median_cpu["lightgcn"], 3),
        "over_lightgcn": {name: round(median[name] / median["lightgcn"], 3) for name in models if name != "lightgcn"},
        "over_lightgcn_cpu": {
            name: round(median_cpu[name] / median_cpu["lightgcn"], 3) for name in models if name != "lightgcn"
        },
        # the two models' epochs alternate, so epoch e of each ran back to back: one paired ratio per epoch
        "paired_epoch_ratios": [round(a / b, 3) for a, b in zip(seconds["ludp"], seconds["lightgcn"], strict=True)],
        "model_build_seconds_both": round(build_seconds, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def bench_knn(n_items: int, dim: int, k: int) -> dict:
    import torch

    from trainer.graphs import knn_graph

    features = torch.randn(n_items, dim, generator=torch.Generator().manual_seed(0))
    rss_before = peak_rss_mib()
    started = time.perf_counter()
    neighbours, similarities = knn_graph(features, k)
    seconds = time.perf_counter() - started
    return {
        "n_items": n_items,
        "dim": dim,
        "k": k,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_rss_before_build_mib": round(rss_before, 1),
        "features_mib": round(features.numel() * 4 / 2**20, 1),
        "dense_similarity_matrix_would_be_gib": round(n_items * n_items * 4 / 2**30, 1),
        "output_shape": list(neighbours.shape),
        "similarity_range": [round(float(similarities.min()), 4), round(float(similarities.max()), 4)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=REPO / "data" / "ml-100k-mm")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--knn-items", type=int, default=100_000)
    parser.add_argument("--knn-dim", type=int, default=384)
    parser.add_argument("--knn-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the kNN build")
    parser.add_argument(
        "--epoch-threads", type=int, default=1, help="torch threads of the epoch timing (training runs use 1)"
    )
    parser.add_argument(
        "--denormals", choices=("flushed", "kept", "both"), default="both",
        help="time the epochs with denormals flushed to zero (as trainer fit on a CPU), kept, or both",
    )
    parser.add_argument("--also", nargs="+", default=[], metavar="MODEL[:CONFIG.yaml]",
                        help="more models in the same rounds, with the parameters fit resolves for this dataset")
    parser.add_argument("--skip-epochs", action="store_true")
    parser.add_argument("--skip-knn", action="store_true")
    parser.add_argument("--knn-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads if args.knn_only else args.epoch_threads)
    if args.knn_only:
        print(json.dumps(bench_knn(args.knn_items, args.knn_dim, args.knn_k)))
        return
    if not args.skip_epochs:
        modes = {"flushed": [True], "kept": [False], "both": [True, False]}[args.denormals]
        for flush_denormals in modes:
            result = bench_epochs(args.dataset, args.epochs, args.batch_size, flush_denormals, args.also)
            print(f"epoch time (same data, same run, interleaved), denormals {result['denormals']}:")
            print(json.dumps(result, indent=2))
    if not args.skip_knn:
        command = [
            sys.executable, __file__, "--knn-only", "--knn-items", str(args.knn_items),
            "--knn-dim", str(args.knn_dim), "--knn-k", str(args.knn_k), "--threads", str(args.threads),
        ]  # fmt: skip
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout
        print("kNN graph build (fresh subprocess; peak RSS is that process's):")
        print(json.dumps(json.loads(output.strip().splitlines()[-1]), indent=2))


if __name__ == "__main__":
    main()
