"""Epoch time and peak memory of SAND (ℓ2), SAND (MI) and LightGCN, interleaved so shared-machine noise hits all.

Data: Amazon Baby interactions (LATTICE json from the shared datasets folder, MMRec's own split) with
generated item features of the real shapes (image 4096-d, text 384-d; the real feature files are not
available here). The per-batch work mirrors ``trainer.loop.fit``: BPR batches with uniform negatives,
the auxiliary (CLUB) optimiser step when the model has one, then the main Adam step.

    .venv/bin/python tests/benchmarks/bench_sand.py [--dataset DIR] [--rounds 5] [--epochs 1] [--threads 1]
        [--models lightgcn sand_l2 sand_mi sand_l2_bf16 sand_mi_bf16] [--keep-denormals]

On a CPU every model trains with denormal floats flushed to zero, as ``trainer fit`` does
(``trainer.loop.denormals_flushed``); ``--keep-denormals`` times them without (the trainer before session 13).

The ``*_bf16`` variants (not timed by default) store the standardised features in bfloat16 and run the
feature projection in bfloat16 (``feature_dtype: bfloat16``). The ``*_no_tcopy`` variants (not timed by
default) drop the transposed feature copy (``transposed_feature_copy: false``), to show what it buys.

All three models are built first; then, for ``--rounds`` rounds, each model trains ``--epochs`` epochs
(the model order rotates every round, and every model sees the same batches in the same round), so a
burst of load from other jobs lands on every model instead of one. For every model the script prints the
median and minimum over rounds of the wall seconds (``time.perf_counter``) and of the process CPU seconds
(``time.process_time``, all threads together; far less sensitive to other jobs than wall time) per epoch,
and the ratios of the medians to LightGCN's. Peak memory: each model is also trained for a few batches in a
fresh subprocess that holds only that model; after the data are loaded the subprocess frees what loading
left behind and resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), then prints the peak
resident set (VmHWM) over model building + training, the RSS before building, and on a GPU the peak torch
CUDA allocation. The machine's load average before and after is printed too.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainer.data import load_dataset
from trainer.loop import NegativeSampler, denormals_flushed, make_adam
from trainer.models.base import ModelInputs
from trainer.models.registry import build_model

DEFAULT_DATASET = Path(os.environ.get("MODALREC_SHARED_DATASETS", "/work/shared/datasets")) / "amazon-baby"
FEATURE_SHAPES = {"image": 4096, "text": 384}
VARIANTS = {
    "lightgcn": ("lightgcn", {}),
    "sand_l2": ("sand", {"distance": "l2"}),
    "sand_mi": ("sand", {"distance": "mi"}),
    # features stored and projected in bfloat16 (`feature_dtype`; not the paper's setting, see SANDConfig)
    "sand_l2_bf16": ("sand", {"distance": "l2", "feature_dtype": "bfloat16"}),
    "sand_mi_bf16": ("sand", {"distance": "mi", "feature_dtype": "bfloat16"}),
    # without the transposed feature copy that speeds up the projection's weight gradient on CPU
    "sand_l2_no_tcopy": ("sand", {"distance": "l2", "transposed_feature_copy": False}),
    "sand_mi_no_tcopy": ("sand", {"distance": "mi", "transposed_feature_copy": False}),
}
DEFAULT_MODELS = ["lightgcn", "sand_l2", "sand_mi"]
TARGETS = {
    "sand_l2": 2.0, "sand_mi": 3.0, "sand_l2_bf16": 2.0, "sand_mi_bf16": 3.0,
    "sand_l2_no_tcopy": 2.0, "sand_mi_no_tcopy": 3.0,
}


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


class Trainee:
    """One model with its optimisers (main Adam + auxiliary Adam for the CLUB estimators) and its sampler."""

    def __init__(self, name: str, params: dict, inputs: ModelInputs, dataset, embedding_dim: int) -> None:
        torch.manual_seed(0)
        self.model = build_model(name, inputs, {"embedding_dim": embedding_dim, **params})
        aux_params = self.model.auxiliary_parameters()
        aux_ids = {id(p) for p in aux_params}
        self.optimizer = make_adam([p for p in self.model.parameters() if id(p) not in aux_ids], lr=1e-3)
        self.aux_optimizer = make_adam(aux_params, lr=1e-3) if aux_params else None
        self.train_matrix = dataset.train
        self.model.train()

    def step(self, batch) -> None:
        if self.aux_optimizer is not None:
            aux_terms = self.model.auxiliary_loss_terms(batch)
            if aux_terms:
                self.aux_optimizer.zero_grad(set_to_none=True)
                sum(aux_terms.values()).backward()
                self.aux_optimizer.step()
        loss = sum(self.model.loss_terms(batch).values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def batches(self, seed: int, batch_size: int, device: torch.device):
        return NegativeSampler(self.train_matrix, np.random.default_rng(seed)).epoch_batches(
            batch_size, device
        )

    def run_epoch(self, seed: int, batch_size: int, device: torch.device) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one epoch."""
        batches = list(self.batches(seed, batch_size, device))  # sampling is not part of the model's time
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            self.step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mib() -> float:
    """Peak resident set of this process in MiB (VmHWM; since the last :func:`reset_peak_rss` if it worked)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def reset_peak_rss() -> bool:
    """Free what loading left behind and reset the kernel's peak-RSS counter (Linux: clear_refs 5)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def load(args) -> tuple:
    dataset = load_dataset(args.dataset)
    dataset.features = generated_features(dataset.n_items, seed=0)
    return dataset, ModelInputs.from_dataset(dataset, torch.device(args.device))


def memory_only(args) -> int:
    """Subprocess mode: build one model, train a few batches, print JSON with its peak memory."""
    device = torch.device(args.device)
    dataset, inputs = load(args)
    reset = reset_peak_rss()
    before = current_rss_mib()
    name, params = VARIANTS[args.memory_only]
    trainee = Trainee(name, params, inputs, dataset, args.embedding_dim)
    for index, batch in enumerate(trainee.batches(0, args.batch_size, device)):
        trainee.step(batch)
        if index + 1 >= args.memory_batches:
            break
    result = {"peak_rss_mib": peak_rss_mib(), "rss_before_model_mib": before, "peak_was_reset": reset}
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))
    return 0


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):7.3f} min {min(values):7.3f}"


def paired_round_ratios(model_seconds: list[float], base_seconds: list[float], epochs: int) -> list[float]:
    """Per round, the model's epoch seconds over LightGCN's in the same round (the two ran back to back, so a
    slow spell of the shared machine mostly hits both); one ratio per round."""
    rounds = len(base_seconds) // epochs
    return [
        sum(model_seconds[r * epochs : (r + 1) * epochs]) / sum(base_seconds[r * epochs : (r + 1) * epochs])
        for r in range(rounds)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each: every model trains)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per model per round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (reported)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-batches", type=int, default=10, help="batches per peak-memory subprocess")
    parser.add_argument(
        "--models", nargs="+", default=DEFAULT_MODELS, choices=list(VARIANTS),
        help="variants to time (the *_bf16 ones store and project the features in bfloat16)",
    )
    parser.add_argument(
        "--keep-denormals", action="store_true", help="train without flushing denormals to zero (default: flushed)"
    )
    parser.add_argument("--memory-only", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with denormals_flushed(torch.device(args.device), not args.keep_denormals):
        return memory_only(args) if args.memory_only else timed(args)


def timed(args: argparse.Namespace) -> int:
    """Interleaved epoch timing of ``args.models``, then each model's peak memory in a fresh subprocess."""
    device = torch.device(args.device)

    dataset, inputs = load(args)
    print(
        f"data: {args.dataset.name} users={dataset.n_users} items={dataset.n_items} train={dataset.train.nnz} "
        f"features={ {k: v.shape[1] for k, v in dataset.features.items()} } batch={args.batch_size} "
        f"dim={args.embedding_dim} threads={torch.get_num_threads()} device={device} "
        f"rounds={args.rounds} epochs/round={args.epochs} cpus={os.cpu_count()} "
        f"denormals={'kept' if args.keep_denormals else 'flushed'} "
        f"loadavg_before={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    trainees = {}
    for label in args.models:
        started = time.perf_counter()
        trainees[label] = Trainee(*VARIANTS[label], inputs, dataset, args.embedding_dim)
        print(f"built {label} in {time.perf_counter() - started:.2f}s", flush=True)
    for trainee in trainees.values():  # warm-up: 5 batches each (allocator, kernels, lazy inits)
        for index, batch in enumerate(trainee.batches(12345, args.batch_size, device)):
            trainee.step(batch)
            if index == 4:
                break

    wall: dict[str, list[float]] = {label: [] for label in trainees}
    cpu: dict[str, list[float]] = {label: [] for label in trainees}
    labels = list(trainees)
    for round_index in range(args.rounds):
        order = labels[round_index % len(labels) :] + labels[: round_index % len(labels)]
        for label in order:
            for epoch in range(args.epochs):
                seconds, cpu_seconds = trainees[label].run_epoch(
                    round_index * 1000 + epoch, args.batch_size, device
                )
                wall[label].append(seconds)
                cpu[label].append(cpu_seconds)
        print(
            f"round {round_index + 1}: "
            + "  ".join(f"{label} wall={wall[label][-1]:.2f}s cpu={cpu[label][-1]:.2f}s" for label in order)
            + f"  loadavg={os.getloadavg()[0]:.2f}",
            flush=True,
        )
    del trainees
    gc.collect()

    print(f"\nper-epoch seconds over {args.rounds * args.epochs} epochs per model (threads={args.threads})")
    for label in labels:
        print(f"{label:12s} wall {summary(wall[label])} | cpu {summary(cpu[label])}")
    if "lightgcn" in labels:
        base_wall, base_cpu = statistics.median(wall["lightgcn"]), statistics.median(cpu["lightgcn"])
        for label in labels:
            if label in TARGETS:
                paired = paired_round_ratios(wall[label], wall["lightgcn"], args.epochs)
                print(
                    f"ratio {label}/lightgcn: wall {statistics.median(wall[label]) / base_wall:.2f} "
                    f"cpu {statistics.median(cpu[label]) / base_cpu:.2f} (target <= {TARGETS[label]:g}); "
                    f"per-round wall ratios median {statistics.median(paired):.2f} "
                    f"range {min(paired):.2f}-{max(paired):.2f}"
                )

    print(f"\npeak memory, one model per fresh process ({args.memory_batches} training batches):")
    for label in labels:
        command = [
            sys.executable,
            "-W",
            "ignore",
            __file__,
            "--memory-only",
            label,
            "--dataset",
            str(args.dataset),
            "--threads",
            str(args.threads),
            "--batch-size",
            str(args.batch_size),
            "--embedding-dim",
            str(args.embedding_dim),
            "--device",
            args.device,
            "--memory-batches",
            str(args.memory_batches),
            *(["--keep-denormals"] if args.keep_denormals else []),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        gpu = f" peak_cuda={result['peak_cuda_mib']:.0f}MiB" if "peak_cuda_mib" in result else ""
        scope = "model build + training" if result["peak_was_reset"] else "whole process incl. data loading"
        print(
            f"{label:12s} peak_rss={result['peak_rss_mib']:.0f}MiB over {scope} "
            f"(rss before building the model: {result['rss_before_model_mib']:.0f}MiB; "
            f"model increment <= {result['peak_rss_mib'] - result['rss_before_model_mib']:.0f}MiB){gpu}",
            flush=True,
        )
    print(f"loadavg_after={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
