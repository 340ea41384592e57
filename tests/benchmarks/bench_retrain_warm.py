"""Warm vs cold retrain on a real dataset: epochs to the best valid epoch, total epochs, wall time, valid Recall@20.

    .venv/bin/python tests/benchmarks/bench_retrain_warm.py [--dataset data/ml-100k-mm] [--models lightgcn ludp]
        [--event-fraction 0.2] [--new-user-fraction 0.05] [--split-seed 0] [--seeds 999] [--max-epochs 400]
        [--threads 2] [--warm lr_scale=1,shrink=1 [lr_scale=0.3 shrink=0.5 ...]]

Simulated online traffic (``--split-seed``): a random ``--new-user-fraction`` of the users are new: absent from the
previous ("base") model's dataset, all their train interactions are events; for every other user a random
``--event-fraction`` of its TRAIN interactions is taken out of the base train and is events. The retrain trains on
the base plus the events, i.e. the dataset's full train split again (checked against
``trainer.retrain.merge_events(base, events)``, what ``trainer retrain`` builds), with the dataset's own valid and
test splits, new users' rows included. The new users sit in the middle of the dataset's row order, so the warm
start has to match rows by id (the new users keep their fresh initialisation).

Per model and seed, in one process: the base model is trained with early stopping on VALID (its checkpoint written
as ``fit`` writes it); then the retrain runs twice with the same seed and settings (the model's dataset preset):
cold (fresh initialisation, today's retrain) and warm (from the base checkpoint, loaded by
``trainer.warm_start.load_previous_run`` as ``trainer retrain --warm-start`` does). Printed per run: epochs to the
best valid epoch, total epochs (best + patience, or the ``--max-epochs`` cap), wall seconds of the fit, valid
Recall@20 at the best epoch, and the warm/cold ratios; plus the warm-started model's valid Recall@20 before any
training step. The TEST split is never read (``fit(evaluate_test=False)``): nothing here is chosen on it.

``--warm`` runs one warm retrain per setting, all from the same base checkpoint and with the same seed:
``lr_scale=S`` sets ``train.warm_start_lr`` to S × the preset's lr, ``shrink=L`` sets ``train.warm_start_shrink``
(λ·previous + (1 − λ)·fresh initialisation). The default is the plain warm start (``lr_scale=1,shrink=1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def split_events(dataset, fraction: float, new_user_fraction: float, seed: int):
    """(base dataset, events [(user_id, item_id)]): a random ``fraction`` of every user's train pairs are events and
    out of the base train; the users drawn as new (``new_user_fraction``) have all their train pairs as events and
    are not in the base dataset at all (their rows, valid and test rows included, are removed from it)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    train = dataset.train.tocsr()
    new_user = rng.random(dataset.n_users) < new_user_fraction
    keep_rows, keep_cols, events = [], [], []
    for user in range(dataset.n_users):
        items = train.indices[train.indptr[user]:train.indptr[user + 1]]
        taken = np.ones(len(items), bool) if new_user[user] else rng.random(len(items)) < fraction
        if taken.all() and not new_user[user]:  # every base user keeps at least one training interaction
            taken[rng.integers(len(items))] = False
        keep_rows.append(np.full(int((~taken).sum()), user))
        keep_cols.append(items[~taken])
        events += [(dataset.user_ids[user], dataset.item_ids[item]) for item in items[taken]]
    rows, cols = np.concatenate(keep_rows), np.concatenate(keep_cols)
    base_train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=train.shape)
    kept = np.flatnonzero(~new_user)
    base = dataclasses.replace(
        dataset, user_ids=[dataset.user_ids[u] for u in kept], train=base_train[kept].tocsr(),
        valid=dataset.valid.tocsr()[kept].tocsr(), test=dataset.test.tocsr()[kept].tocsr(),
    )
    order = rng.permutation(len(events))  # events arrive interleaved across users
    return base, [events[k] for k in order], int(new_user.sum())


def pairs(dataset) -> set[tuple[str, str]]:
    coo = dataset.train.tocoo()
    return {(dataset.user_ids[u], dataset.item_ids[i]) for u, i in zip(coo.row, coo.col)}


def parse_warm_setting(text: str) -> dict[str, float]:
    """``"lr_scale=0.3,shrink=0.5"`` -> {"lr_scale": 0.3, "shrink": 0.5}; missing keys default to 1."""
    setting = {"lr_scale": 1.0, "shrink": 1.0}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in setting:
            raise argparse.ArgumentTypeError(f"--warm {text!r}: expected lr_scale=S and/or shrink=L, comma-separated")
        setting[key.strip()] = float(value)
    return setting


def warm_label(setting: dict[str, float]) -> str:
    return f"warm lr×{setting['lr_scale']:g} λ{setting['shrink']:g}"


def one_fit(dataset, run_config, warm_start=None, checkpoint_path=None) -> dict:
    from trainer.loop import fit

    started = time.perf_counter()
    result = fit(dataset, run_config, progress=False, checkpoint_path=checkpoint_path, evaluate_test=False,
                 warm_start=warm_start)
    return {
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "seconds": time.perf_counter() - started,
        "valid_r20": result.valid["recall@20"],
        "warm_start": result.warm_start,
    }


def warm_start_valid(dataset, run_config, source, shrink: float = 1.0) -> float:
    """Valid Recall@20 of the warm-started model before any training step (new rows fresh, graph of the new data)."""

    from trainer.evaluate import evaluate_full_ranking
    from trainer.loop import compute_representations, seed_everything, select_device
    from trainer.models.base import ModelInputs, RowIds
    from trainer.models.registry import build_model
    from trainer.warm_start import apply_warm_start

    seed_everything(run_config.train.seed)
    device = select_device(run_config.train.device)
    model = build_model(run_config.model, ModelInputs.from_dataset(dataset, device), run_config.model_params)
    report = apply_warm_start(model, run_config.model, source, RowIds.of(dataset), shrink=shrink)
    if not report.applied:
        raise RuntimeError(report.reason)
    users, items = compute_representations(model)
    return evaluate_full_ranking(users, items, dataset.valid, dataset.train)["recall@20"]


def summarise_settings(rows) -> None:
    """Per model and warm setting: mean over seeds of warm − cold valid R@20 and of the warm/cold wall-time ratio."""
    import numpy as np

    groups: dict[tuple[str, str], list] = {}
    for model, _, label, cold, warm in rows:
        groups.setdefault((model, label), []).append((warm["valid_r20"] - cold["valid_r20"],
                                                      warm["seconds"] / cold["seconds"]))
    print("\nper setting (mean over seeds, min..max) | model | warm setting | seeds | warm - cold valid R@20 | "
          "warm/cold wall s")
    for (model, label), values in groups.items():
        gaps, ratios = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        print(f"  {model} | {label} | {len(values)} | {gaps.mean():+.4f} ({gaps.min():+.4f}..{gaps.max():+.4f}) | "
              f"{ratios.mean():.2f} ({ratios.min():.2f}..{ratios.max():.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=REPO / "data" / "ml-100k-mm")
    parser.add_argument("--models", nargs="+", default=["lightgcn", "ludp"])
    parser.add_argument("--event-fraction", type=float, default=0.2)
    parser.add_argument("--new-user-fraction", type=float, default=0.05)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[999])
    parser.add_argument("--max-epochs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto: where every run trains")
    parser.add_argument("--warm", type=parse_warm_setting, nargs="+", default=[parse_warm_setting("")],
                        help="warm-start settings, one warm retrain each: lr_scale=S,shrink=L")
    args = parser.parse_args()

    import torch

    from trainer.config import resolve_run_config
    from trainer.pipeline import dataset_preset_name, load_dataset_dir
    from trainer.retrain import merge_events
    from trainer.warm_start import load_previous_run

    torch.set_num_threads(args.threads)
    dataset = load_dataset_dir(args.dataset)
    base, events, n_new = split_events(dataset, args.event_fraction, args.new_user_fraction, args.split_seed)
    merged, merge = merge_events(base, events)
    # the retrain's train is the base plus the events (what `trainer retrain` merges), i.e. the dataset's own train
    assert pairs(merged) == pairs(dataset) and merge.new_users == n_new
    # the retrain runs on the dataset itself: the same train pairs, and valid/test unchanged, new users' rows
    # included (merge_events would append new users without valid/test rows and in another row order)
    retrain_data = merged if n_new == 0 else dataset
    print(f"dataset {dataset.name}: {dataset.n_users} users, {dataset.n_items} items; base: {base.n_users} users "
          f"({n_new} held out as new users), train {base.train.nnz}; {len(events)} events ({args.event_fraction:.0%} "
          f"of each base user's train + all of the new users', split seed {args.split_seed}); retrain train "
          f"{retrain_data.train.nnz}; valid {retrain_data.valid.nnz} = the dataset's; test never read; torch threads "
          f"{args.threads}; device {args.device}")
    rows = []
    for model in args.models:
        for seed in args.seeds:
            run_config = resolve_run_config(model, dataset_preset_name(args.dataset), None,
                                            train_overrides={"seed": seed, "device": args.device,
                                                             "max_epochs": args.max_epochs})
            with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
                base_run = one_fit(base, run_config, checkpoint_path=Path(tmp) / "checkpoint.pt")
                source, why = load_previous_run(Path(tmp))
                if source is None:
                    raise RuntimeError(why)
            cold = one_fit(retrain_data, run_config)
            print(f"\n{model} seed {seed} (lr {run_config.train.lr}, patience {run_config.train.patience}, "
                  f"max epochs {run_config.train.max_epochs})")
            print(f"  base (train minus events): best epoch {base_run['best_epoch']}, {base_run['epochs']} epochs, "
                  f"{base_run['seconds']:.1f} s, valid R@20 {base_run['valid_r20']:.4f}")
            print("  | retrain | epochs to best valid | total epochs | wall s | valid R@20 (best) | valid R@20 before "
                  "training | warm/cold: best, total, s |")
            print("  |---|---|---|---|---|---|---|")
            print(f"  | cold | {cold['best_epoch']} | {cold['epochs']} | {cold['seconds']:.1f} | "
                  f"{cold['valid_r20']:.4f} | | |")
            for setting in args.warm:
                warm_config = dataclasses.replace(run_config, train=dataclasses.replace(
                    run_config.train, warm_start_lr=run_config.train.lr * setting["lr_scale"],
                    warm_start_shrink=setting["shrink"]))
                at_start = warm_start_valid(retrain_data, warm_config, source, setting["shrink"])
                warm = one_fit(retrain_data, warm_config, warm_start=source)
                assert warm["warm_start"].applied, warm["warm_start"].reason
                rows.append((model, seed, warm_label(setting), cold, warm))
                print(f"  | {warm_label(setting)} | {warm['best_epoch']} | {warm['epochs']} | {warm['seconds']:.1f} | "
                      f"{warm['valid_r20']:.4f} ({warm['valid_r20'] - cold['valid_r20']:+.4f}) | {at_start:.4f} | "
                      f"{warm['best_epoch'] / cold['best_epoch']:.2f}, {warm['epochs'] / cold['epochs']:.2f}, "
                      f"{warm['seconds'] / cold['seconds']:.2f} |", flush=True)
            print(f"  warm start: {warm['warm_start'].summary()}")
    if len(rows) > 1:
        print("\nsummary | model | seed | warm setting | cold best/total/s/R@20 | warm best/total/s/R@20 | "
              "warm - cold R@20 | ratios best, total, s")
        for model, seed, label, cold, warm in rows:
            print(f"  {model} | {seed} | {label} | {cold['best_epoch']}/{cold['epochs']}/{cold['seconds']:.1f}/"
                  f"{cold['valid_r20']:.4f} | {warm['best_epoch']}/{warm['epochs']}/{warm['seconds']:.1f}/"
                  f"{warm['valid_r20']:.4f} | {warm['valid_r20'] - cold['valid_r20']:+.4f} | "
                  f"{warm['best_epoch'] / cold['best_epoch']:.2f}, {warm['epochs'] / cold['epochs']:.2f}, "
                  f"{warm['seconds'] / cold['seconds']:.2f}")
        summarise_settings(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
