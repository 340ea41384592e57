"""Epoch time and peak memory of SAND (ℓ2), SAND (MI) and LightGCN, measured side by side in one run.

Data: Amazon Baby interactions (LATTICE json from the shared datasets folder, MMRec's own split) with
generated item features of the real shapes (image 4096-d, text 384-d; the real feature files are not
available here). The per-batch work mirrors ``trainer.loop.fit``: BPR batches with uniform negatives,
the auxiliary (CLUB) optimiser step when the model has one, then the main Adam step.

    .venv/bin/python tests/benchmarks/bench_sand.py [--dataset DIR] [--epochs 2] [--threads 2] [--device cpu]

Prints seconds per epoch (median over the timed epochs, after one untimed warm-up of 5 batches), the
ratios to LightGCN and the process's peak resident memory after each model (ru_maxrss is a running
maximum, so each model's row is an upper bound including everything before it) plus the peak torch
CUDA memory when running on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainer.data import load_dataset
from trainer.loop import NegativeSampler
from trainer.models.base import ModelInputs
from trainer.models.registry import build_model

DEFAULT_DATASET = Path(os.environ.get("MODALREC_SHARED_DATASETS", "/work/shared/datasets")) / "amazon-baby"
FEATURE_SHAPES = {"image": 4096, "text": 384}


def generated_features(n_items: int, seed: int) -> dict[str, np.ndarray]:
    """Clustered non-negative 'image' (like VGG fc7) and unit-norm 'text' (like MiniLM) features."""
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 50, size=n_items)
    features = {}
    for name, dim in FEATURE_SHAPES.items():
        centroids = rng.normal(size=(50, dim)).astype(np.float32)
        matrix = centroids[clusters] + rng.normal(scale=0.5, size=(n_items, dim)).astype(np.float32)
        if name == "image":
            matrix = np.maximum(matrix, 0.0)
        else:
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        features[name] = matrix.astype(np.float32)
    return features


def time_epochs(
    model, sampler: NegativeSampler, batch_size: int, device: torch.device, epochs: int
) -> list[float]:
    aux_params = model.auxiliary_parameters()
    aux_ids = {id(p) for p in aux_params}
    optimizer = torch.optim.Adam([p for p in model.parameters() if id(p) not in aux_ids], lr=1e-3)
    aux_optimizer = torch.optim.Adam(aux_params, lr=1e-3) if aux_params else None

    def step(batch) -> None:
        if aux_optimizer is not None:
            aux_terms = model.auxiliary_loss_terms(batch)
            if aux_terms:
                aux_optimizer.zero_grad(set_to_none=True)
                sum(aux_terms.values()).backward()
                aux_optimizer.step()
        loss = sum(model.loss_terms(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for index, batch in enumerate(sampler.epoch_batches(batch_size, device)):
        step(batch)
        if index == 4:
            break
    seconds = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in sampler.epoch_batches(batch_size, device):
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    dataset = load_dataset(args.dataset)
    dataset.features = generated_features(dataset.n_items, seed=0)
    inputs = ModelInputs.from_dataset(dataset, device)
    print(
        f"data: {args.dataset.name} users={dataset.n_users} items={dataset.n_items} train={dataset.train.nnz} "
        f"features={ {k: v.shape[1] for k, v in dataset.features.items()} } batch={args.batch_size} "
        f"dim={args.embedding_dim} threads={torch.get_num_threads()} device={device}",
        flush=True,
    )
    variants = {
        "lightgcn": ("lightgcn", {}),
        "sand_l2": ("sand", {"distance": "l2"}),
        "sand_mi": ("sand", {"distance": "mi"}),
    }
    results: dict[str, float] = {}
    for label, (name, params) in variants.items():
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        build_started = time.perf_counter()
        model = build_model(name, inputs, {"embedding_dim": args.embedding_dim, **params})
        build_seconds = time.perf_counter() - build_started
        sampler = NegativeSampler(dataset.train, np.random.default_rng(0))
        seconds = time_epochs(model, sampler, args.batch_size, device, args.epochs)
        results[label] = statistics.median(seconds)
        gpu = (
            f" peak_cuda={torch.cuda.max_memory_allocated() / 2**20:.0f}MiB" if device.type == "cuda" else ""
        )
        print(
            f"{label:9s} epoch_s={results[label]:.3f} (epochs: {', '.join(f'{s:.3f}' for s in seconds)}) "
            f"build_s={build_seconds:.2f} peak_rss={peak_rss_mib():.0f}MiB{gpu}",
            flush=True,
        )
        del model, sampler
        gc.collect()
    base = results["lightgcn"]
    print(f"ratio sand_l2/lightgcn = {results['sand_l2'] / base:.2f} (target <= 2)")
    print(f"ratio sand_mi/lightgcn = {results['sand_mi'] / base:.2f} (target <= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
