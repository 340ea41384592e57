"""The training loop: BPR with uniform negatives, Adam, early stopping on VALID, test read once."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from trainer.config import RunConfig
from trainer.data.dataset import DatasetError, InteractionDataset
from trainer.evaluate import evaluate_full_ranking
from trainer.models.base import BPRBatch, ModelInputs, Recommender, RowIds
from trainer.models.registry import build_model
from trainer.warm_start import WarmStartReport, WarmStartSource, apply_warm_start

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
SPLIT_FILE = "split.inter"


def make_adam(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """The trainer's Adam: the multi-tensor (``foreach``) implementation on every device.

    torch picks it by default only on CUDA; on CPU its default is a Python loop over the parameters, ten or so
    small kernels each, which for models with many small parameter tensors (LUDP, SAND) is a visible share of
    a training step. On CPU the two implementations give bit-identical parameters (tested).
    """
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch.cuda.is_available() is False")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


def denormals_are_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (``torch.set_flush_denormal``, which has no getter)."""
    return bool(torch.tensor([1e-320], dtype=torch.float64)[0] == 0)


@contextlib.contextmanager
def denormals_flushed(device: torch.device, enabled: bool = True):
    """Flush denormal floats to zero on a CPU for the duration of the block (x86 FTZ/DAZ; a no-op on other devices,
    on CPUs without the flags, or when ``enabled`` is False). The previous mode is restored on exit.

    The slowdown it avoids is real in this project: a matrix product whose operands produce denormals (gradients
    scaled by a softmax weight near 1e-30) ran about 150x slower on the 2-core sandbox
    (tests/benchmarks/bench_denormals.py).
    """
    if not enabled or device.type != "cpu" or denormals_are_flushed():
        yield
        return
    switched = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if switched:
            torch.set_flush_denormal(False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class NegativeSampler:
    """Uniform negatives not among the user's training items (rejection sampling, vectorised)."""

    def __init__(self, train: sp.csr_matrix, rng: np.random.Generator) -> None:
        coo = train.tocoo()
        self.n_items = train.shape[1]
        self.users = coo.row.astype(np.int64)
        self.items = coo.col.astype(np.int64)
        self.known = np.sort(self.users * self.n_items + self.items)
        full_rows = np.flatnonzero(np.diff(train.indptr) >= self.n_items)
        if len(full_rows):
            raise ValueError(f"user row {int(full_rows[0])} interacted with every item: no negative exists")
        self.rng = rng

    def _is_known(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        positions = np.searchsorted(self.known, keys)
        positions = np.minimum(positions, len(self.known) - 1)
        return self.known[positions] == keys

    def sample(self, users: np.ndarray) -> np.ndarray:
        negatives = self.rng.integers(0, self.n_items, size=len(users))
        redo = self._is_known(users, negatives)
        while redo.any():
            negatives[redo] = self.rng.integers(0, self.n_items, size=int(redo.sum()))
            redo[redo] = self._is_known(users[redo], negatives[redo])
        return negatives

    def epoch_batches(self, batch_size: int, device: torch.device):
        """Yield BPRBatch over a random permutation of all training pairs."""
        order = self.rng.permutation(len(self.users))
        users, positives = self.users[order], self.items[order]
        negatives = self.sample(users)
        for start in range(0, len(order), batch_size):
            stop = start + batch_size
            yield BPRBatch(
                users=torch.as_tensor(users[start:stop], device=device),
                pos_items=torch.as_tensor(positives[start:stop], device=device),
                neg_items=torch.as_tensor(negatives[start:stop], device=device),
            )


@dataclass
class FitResult:
    model: Recommender
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]]
    seconds_per_epoch: float
    device: str
    warm_start: WarmStartReport | None = None


@torch.no_grad()
def compute_representations(model: Recommender) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    users, items = model.representations()
    model.train(was_training)
    return users.detach(), items.detach()


def fit(
    dataset: InteractionDataset,
    run_config: RunConfig,
    progress: bool = True,
    checkpoint_path: Path | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    evaluate_test: bool = True,
    warm_start: WarmStartSource | None = None,
) -> FitResult:
    """Train ``run_config.model`` on ``dataset``; select the epoch on VALID; evaluate TEST once.

    The test split is masked with train + valid items and evaluated only after training, with the
    best-valid state restored; ``evaluate_test=False`` (hyperparameter search) never reads it.

    ``warm_start``: a previous model to initialise from (``trainer.warm_start.apply_warm_start``), applied after the
    model is built (so the random draws of the run are those of a cold run with the same seed) and before the
    optimiser exists; when it is refused the run trains from its fresh initialisation. The report is logged and
    returned in ``FitResult.warm_start``. Checkpoints record the dataset's ``user_ids`` / ``item_ids`` (the ids of
    the model's rows) and the keys of the model's other kinds of rows (``row_keys``), so a later run can warm-start
    from them.

    On a CPU, training and evaluation run with denormals flushed to zero unless ``train.flush_denormals`` is off.
    """
    device = select_device(run_config.train.device)
    with denormals_flushed(device, run_config.train.flush_denormals):
        return _fit_on(device, dataset, run_config, progress, checkpoint_path, checkpoint_extra, evaluate_test,
                       warm_start)


def _fit_on(
    device: torch.device,
    dataset: InteractionDataset,
    run_config: RunConfig,
    progress: bool,
    checkpoint_path: Path | None,
    checkpoint_extra: dict[str, Any] | None,
    evaluate_test: bool,
    warm_start: WarmStartSource | None,
) -> FitResult:
    """``fit``'s body, on ``device``."""
    cfg = run_config.train
    empty = [name for name, split in (("valid", dataset.valid), ("test", dataset.test)) if split.nnz == 0]
    if "valid" in empty or (evaluate_test and empty):
        raise DatasetError(
            f"dataset {dataset.name!r} has an empty {' and '.join(empty)} split: early stopping and every choice are "
            "made on VALID and the result is read on TEST, so both need interactions (a ratio split gives valid and "
            "test rows only to users with enough interactions)"
        )
    seed_everything(cfg.seed)
    inputs = ModelInputs.from_dataset(dataset, device)
    model = build_model(run_config.model, inputs, run_config.model_params)
    row_ids = RowIds.of(dataset)
    warm_report = None
    if warm_start is not None:
        warm_report = apply_warm_start(model, run_config.model, warm_start, row_ids, shrink=cfg.warm_start_shrink)
        if warm_report.applied:
            logger.info("%s", warm_report.summary())
        else:
            logger.warning("%s; training from scratch", warm_report.summary())
    if checkpoint_path is not None:
        # the keys of the model's other kinds of rows (Multi-KG4Rec's graph nodes and relations): the user and item
        # ids are stored as such
        other_keys = {kind: keys for kind, keys in model.row_keys(row_ids).items()
                      if kind not in ("user", "item")}
        checkpoint_extra = {**(checkpoint_extra or {}), "user_ids": list(dataset.user_ids),
                            "item_ids": list(dataset.item_ids), "row_keys": other_keys}
    aux_params = model.auxiliary_parameters()
    aux_ids = {id(p) for p in aux_params}
    main_params = [p for p in model.parameters() if id(p) not in aux_ids]
    lr = cfg.lr
    if warm_report is not None and warm_report.applied and cfg.warm_start_lr is not None:
        lr = cfg.warm_start_lr
        logger.info("warm-started run: learning rate %g (train.warm_start_lr) instead of %g", lr, cfg.lr)
    optimizer = make_adam(main_params, lr=lr, weight_decay=cfg.weight_decay)
    aux_optimizer = make_adam(aux_params, lr=lr) if aux_params else None
    sampler = NegativeSampler(dataset.train, np.random.default_rng(cfg.seed))
    train_and_valid = (dataset.train + dataset.valid).tocsr()
    logger.info("fit %s on %s (%s); %d parameters", run_config.model, dataset.name, device,
                sum(p.numel() for p in main_params))

    best_score, best_epoch, best_state, best_valid = -1.0, -1, None, {}
    epochs_without_gain = 0
    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    fit_started = time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=run_config.model, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        model.on_epoch_start(epoch)
        started = time.perf_counter()
        # summed on the device and read once per epoch: a float() per step would synchronise with the GPU
        totals: dict[str, torch.Tensor] = {}
        n_batches = 0
        for batch in sampler.epoch_batches(cfg.batch_size, device):
            if aux_optimizer is not None:
                aux_terms = model.auxiliary_loss_terms(batch)
                if aux_terms:
                    aux_optimizer.zero_grad(set_to_none=True)
                    aux_loss = sum(aux_terms.values())
                    aux_loss.backward()
                    aux_optimizer.step()
                    for name, value in aux_terms.items():
                        totals[f"aux_{name}"] = totals.get(f"aux_{name}", 0.0) + value.detach()
            terms = model.loss_terms(batch)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.detach()
            n_batches += 1
        mean_terms = {name: float(value) / max(n_batches, 1) for name, value in totals.items()}
        if not all(math.isfinite(value) for value in mean_terms.values()):
            raise FloatingPointError(f"non-finite loss in epoch {epoch}: mean terms {mean_terms}")
        epoch_seconds = time.perf_counter() - started
        train_seconds += epoch_seconds
        record: dict[str, Any] = {"epoch": epoch, "train_seconds": round(epoch_seconds, 4), "loss": mean_terms}
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - fit_started >= cfg.max_seconds
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs or out_of_time:
            eval_started = time.perf_counter()
            users, items = compute_representations(model)
            valid = evaluate_full_ranking(users, items, dataset.valid, dataset.train, batch_size=cfg.eval_batch_size)
            record["eval_seconds"] = round(time.perf_counter() - eval_started, 4)
            record["valid"] = valid
            score = valid[cfg.stopping_metric]
            if score > best_score:
                best_score, best_epoch, best_valid = score, epoch, valid
                best_state = copy.deepcopy(model.state_dict())
                epochs_without_gain = 0
                if checkpoint_path is not None:
                    save_checkpoint(checkpoint_path, run_config, model, epoch, checkpoint_extra)
            else:
                epochs_without_gain += cfg.eval_every
        history.append(record)
        loss_text = " ".join(f"{k}={v:.4f}" for k, v in record["loss"].items())
        valid_text = f" valid {cfg.stopping_metric}={record['valid'][cfg.stopping_metric]:.4f}" if "valid" in record else ""
        logger.info("epoch %d %s train %.2fs%s", epoch, loss_text, epoch_seconds, valid_text)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", best=f"{best_score:.4f}@{best_epoch}")
        if epochs_without_gain >= cfg.patience:
            logger.info("early stop at epoch %d: no valid gain for %d epochs", epoch, cfg.patience)
            break
        if out_of_time:
            logger.info("time budget of %.0f s reached after epoch %d (best epoch %d)", cfg.max_seconds, epoch,
                        best_epoch)
            break
    bar.close()
    if best_state is None:
        raise RuntimeError("training ended without any validation epoch")
    model.load_state_dict(best_state)
    test: dict[str, float] = {}
    if evaluate_test:
        users, items = compute_representations(model)
        test = evaluate_full_ranking(users, items, dataset.test, train_and_valid, batch_size=cfg.eval_batch_size)
    return FitResult(
        model=model,
        best_epoch=best_epoch,
        valid=best_valid,
        test=test,
        history=history,
        seconds_per_epoch=train_seconds / max(len(history), 1),
        device=str(device),
        warm_start=warm_report,
    )


def save_checkpoint(
    path: Path, run_config: RunConfig, model: Recommender, epoch: int, extra: dict[str, Any] | None = None
) -> None:
    """Atomically write {model, model_params (resolved config), run config, epoch, state_dict}."""
    payload = {
        "model": run_config.model,
        "model_params": dataclasses.asdict(model.config),
        "run_config": run_config.to_dict(),
        "epoch": epoch,
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def write_split(path: Path, dataset: InteractionDataset) -> None:
    """MMRec-format split file with external ids: header ``userID itemID x_label`` (0 train, 1 valid, 2 test)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("userID\titemID\tx_label\n")
        for label, matrix in enumerate((dataset.train, dataset.valid, dataset.test)):
            coo = matrix.tocoo()
            order = np.lexsort((coo.col, coo.row))
            for row, col in zip(coo.row[order], coo.col[order]):
                handle.write(f"{dataset.user_ids[row]}\t{dataset.item_ids[col]}\t{label}\n")
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float), encoding="utf-8")
    os.replace(tmp, path)
