"""Multi-KG4Rec speed/memory benchmark (not collected by pytest).

Part 1 (same data, same run): training-epoch seconds and peak RSS of ``multikg4rec``, ``kgat`` and
``lightgcn`` on one dataset (``--dataset DIR``, default data/ml-100k-mm when present, else the planted
synthetic dataset), each model measured in its own child process so peak RSS is per model.
Part 2 (``--big``): one training epoch of ``multikg4rec`` on a synthetic collaborative KG with
``--triples`` KG triples (default 1,000,000), with its time and peak RSS.

    .venv/bin/python tests/benchmarks/bench_multikg4rec.py [--dataset DIR] [--epochs 2] [--big] [--threads 2]
        [--schedule cpu|gpu|lightgcn_settings] [--batch-size 16384] [--keep-denormals]

``--schedule lightgcn_settings --batch-size 2048 --lr 0.005`` times the session-19 variants (our modifications):
kgat and multikg4rec with trainer/configs/ml-100k-mm/{kgat,multikg4rec}_lightgcn_settings.yaml over their presets.

Every model trains with denormal floats flushed to zero, as ``trainer fit`` trains on a CPU
(``trainer.loop.denormals_flushed``); ``--keep-denormals`` times them without (the trainer before session 13).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import yaml

REPO = Path(__file__).resolve().parents[2]
MODELS = ("lightgcn", "kgat", "multikg4rec")


def _overlay(name: str) -> dict:
    return yaml.safe_load((REPO / "trainer" / "configs" / "ml-100k-mm" / name).read_text())["model_params"]


# model settings per schedule, used for every model so that per-epoch cost is comparable: ``cpu`` = the ML-100K
# CPU preset (Bi-Transformer with gradient on one step in four, sequences of 6), ``gpu`` = the GPU presets'
# per-step schedule (every step, sequences of 8; pair it with --batch-size 4096 as in those presets)
MODEL_PARAMS = {
    "cpu": {
        "multikg4rec": {"sequence_length": 6, "multimodal_refresh_every": 4, "kg_batch_size": 4096},
        "kgat": {"kg_batch_size": 4096},
    },
    "gpu": {
        "multikg4rec": {"sequence_length": 8, "multimodal_refresh_every": 1, "kg_batch_size": 4096},
        "kgat": {"kg_batch_size": 4096},
    },
}
# the CPU presets with the session-19 overlays (linear aggregator, symmetric weights, no TransR, ...)
MODEL_PARAMS["lightgcn_settings"] = {
    name: {**MODEL_PARAMS["cpu"][name], **_overlay(f"{name}_lightgcn_settings.yaml")} for name in ("multikg4rec", "kgat")
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synthetic_kg_dataset(
    n_triples: int, n_users: int, n_items: int, n_entities: int, n_interactions: int, seed: int = 0
):
    """A random dataset with a KG of ``n_triples`` triples and two modalities (for scale tests only)."""
    from trainer.data.dataset import InteractionDataset, KnowledgeGraph

    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_interactions)
    items = rng.integers(0, n_items, n_interactions)
    train = sp.csr_matrix((np.ones(n_interactions, np.float32), (users, items)), shape=(n_users, n_items))
    train.data[:] = 1.0
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    heads = rng.integers(0, n_entities, n_triples)
    heads[: n_triples // 2] = rng.integers(0, n_items, n_triples // 2)  # half the triples start at an item
    triples = np.stack(
        [heads, rng.integers(0, 20, n_triples), rng.integers(0, n_entities, n_triples)], axis=1
    )
    kg = KnowledgeGraph(
        triples=triples.astype(np.int64),
        entity_ids=[str(e) for e in range(n_entities)],
        relation_ids=[f"r{r}" for r in range(20)],
        item_entity=np.arange(n_items, dtype=np.int64),
    )
    features = {
        "text": rng.normal(size=(n_items, 384)).astype(np.float32),
        "image": rng.normal(size=(n_items, 512)).astype(np.float32),
    }
    return InteractionDataset(
        name=f"synthetic-kg-{n_triples}",
        user_ids=[str(u) for u in range(n_users)],
        item_ids=[str(i) for i in range(n_items)],
        train=train,
        valid=empty,
        test=empty,
        features=features,
        kg=kg,
    )


def measure_one(
    model_name: str, dataset, epochs: int, batch_size: int, lr: float, schedule: str = "cpu"
) -> dict:
    """Train ``epochs`` epochs in this process; return build seconds, per-epoch seconds and peak RSS."""
    import torch

    from trainer.loop import NegativeSampler, make_adam
    from trainer.models.base import ModelInputs
    from trainer.models.registry import build_model

    torch.manual_seed(0)
    started = time.perf_counter()
    inputs = ModelInputs.from_dataset(dataset, torch.device("cpu"))
    model = build_model(model_name, inputs, MODEL_PARAMS[schedule].get(model_name, {}))
    build_seconds = time.perf_counter() - started
    optimizer = make_adam(model.parameters(), lr=lr)
    sampler = NegativeSampler(dataset.train, np.random.default_rng(0))
    epoch_seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for batch in sampler.epoch_batches(batch_size, torch.device("cpu")):
            loss = sum(model.loss_terms(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - started)
    return {
        "model": model_name,
        "build_s": round(build_seconds, 2),
        "epoch_s": round(float(np.mean(epoch_seconds)), 2),
        "steps_per_epoch": -(-dataset.train.nnz // batch_size),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def load_dataset(path: str | None):
    if path and path != "planted":
        from trainer.pipeline import load_dataset_dir

        return load_dataset_dir(Path(path))
    from trainer.data.synthetic import planted_dataset

    return planted_dataset(seed=0)


def child(args: argparse.Namespace) -> None:
    import torch

    from trainer.loop import denormals_flushed

    torch.set_num_threads(args.threads)
    with denormals_flushed(torch.device("cpu"), not args.keep_denormals):
        result = _child_result(args)
    print("RESULT " + json.dumps(result), flush=True)


def _child_result(args: argparse.Namespace) -> dict:
    if args.big:
        dataset = synthetic_kg_dataset(
            args.triples, args.big_users, args.big_items, args.big_entities, args.big_interactions
        )
        result = measure_one("multikg4rec", dataset, 1, args.batch_size, args.lr, args.schedule)
        result["kg_triples"] = args.triples
    else:
        result = measure_one(
            args.one, load_dataset(args.dataset), args.epochs, args.batch_size, args.lr, args.schedule
        )
    return result


def run_child(extra: list[str], args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--epochs",
        str(args.epochs),
        "--schedule",
        args.schedule,
        *extra,
    ]
    if args.dataset:
        command += ["--dataset", args.dataset]
    if args.keep_denormals:
        command.append("--keep-denormals")
    output = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default=None, help="dataset directory or 'planted' (default: data/ml-100k-mm if present)"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--schedule",
        choices=sorted(MODEL_PARAMS),
        default="cpu",
        help="model settings of the CPU or GPU presets, or the session-19 LightGCN-settings variants",
    )
    parser.add_argument(
        "--big", action="store_true", help="also run one epoch on a synthetic KG of --triples"
    )
    parser.add_argument(
        "--keep-denormals", action="store_true", help="train without flushing denormals to zero (default: flushed)"
    )
    parser.add_argument("--triples", type=int, default=1_000_000)
    parser.add_argument("--big-users", type=int, default=5_000)
    parser.add_argument("--big-items", type=int, default=10_000)
    parser.add_argument("--big-entities", type=int, default=100_000)
    parser.add_argument("--big-interactions", type=int, default=100_000)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-big", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or args.child_big:
        args.big = args.child_big
        child(args)
        return
    if args.dataset is None and (REPO / "data" / "ml-100k-mm").is_dir():
        args.dataset = str(REPO / "data" / "ml-100k-mm")
    print(
        f"dataset: {args.dataset}; threads {args.threads}; batch {args.batch_size}; "
        f"{args.epochs} epochs per model; {args.schedule} schedule"
    )
    results = [run_child(["--one", name], args) for name in MODELS]
    baseline = results[0]
    print(f"{'model':<12} {'build s':>8} {'epoch s':>8} {'steps':>6} {'x lightgcn':>10} {'peak RSS MiB':>13}")
    for row in results:
        ratio = row["epoch_s"] / max(baseline["epoch_s"], 1e-9)
        print(
            f"{row['model']:<12} {row['build_s']:>8.2f} {row['epoch_s']:>8.2f} {row['steps_per_epoch']:>6d} "
            f"{ratio:>10.1f} {row['peak_rss_mib']:>13.1f}"
        )
    if args.big:
        extra = [
            "--child-big",
            "--triples",
            str(args.triples),
            "--big-users",
            str(args.big_users),
            "--big-items",
            str(args.big_items),
            "--big-entities",
            str(args.big_entities),
            "--big-interactions",
            str(args.big_interactions),
        ]
        big = run_child(extra, args)
        print(
            f"synthetic KG with {big['kg_triples']:,} triples ({args.big_users} users, {args.big_items} items, "
            f"{args.big_entities} entities, {args.big_interactions} interactions): build {big['build_s']:.1f} s, "
            f"one epoch {big['epoch_s']:.1f} s ({big['steps_per_epoch']} steps), "
            f"peak RSS {big['peak_rss_mib'] / 1024:.2f} GiB"
        )


if __name__ == "__main__":
    main()
