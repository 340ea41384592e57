"""Warm start: initialise a freshly built model from a previous checkpoint of the same model and model parameters.

:func:`apply_warm_start` is pure (no file I/O) and all-or-nothing. It copies every learned parameter whose meaning
carries over to the new dataset:

* a parameter the model declares in :meth:`~trainer.models.base.Recommender.row_tables` (one row per user or per
  item) is copied row by row, matching EXTERNAL ids: the new row of id ``x`` gets the old row of id ``x``; rows of
  new ids keep their fresh initialisation, old rows of ids no longer in the dataset are dropped. Nothing assumes
  the new ids extend the old ones;
* every other parameter (projections, attention, fusion weights...) must have the same shape and is copied whole;
* buffers (graphs, features, normalised adjacencies, feature statistics) are never copied: the new model built
  them from the new data.

It refuses, leaving the fresh model exactly as it was, when the model cannot be warm-started
(:meth:`~trainer.models.base.Recommender.warm_start_unsupported`), the checkpoint is of another model name or other
model parameters (those it lacks, fields added since it was written, take their defaults, as ``trainer export``
rebuilds it), a parameter is missing on either side, a shape differs other than along a declared row axis, a
table's row count does not match its id list, ids repeat, or a value is not finite. Optimiser state is not carried
over (checkpoints do not hold it): the new run starts Adam afresh.

:func:`load_previous_run` reads the source from a run directory (``checkpoint.pt`` and the ids of its rows).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainer.models.base import Recommender

logger = logging.getLogger(__name__)


@dataclass
class WarmStartSource:
    """A previous model: registry name, resolved model parameters, state_dict (any device) and the external ids of
    its user and item rows (row ``i`` of a user table is ``user_ids[i]``). ``origin`` says where it came from."""

    model: str
    model_params: dict[str, Any]
    state_dict: Mapping[str, Tensor]
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    origin: str = ""
    epoch: int | None = None


@dataclass
class WarmStartReport:
    """What a warm start did.

    Attributes:
        applied: True when the model now holds the previous parameters; False when refused (model untouched) or
            not attempted (``reason`` says why).
        reason: why it was refused or not attempted; None when applied.
        source: where the previous model came from (``WarmStartSource.origin``).
        copied: parameters copied whole.
        row_mapped: per-row tables: {name: {"kind", "kept" (rows copied by id), "new" (fresh rows), "dropped" (old
            rows whose id is gone)}}.
        skipped: {name: reason} for what was deliberately not copied (buffers).
    """

    applied: bool
    reason: str | None = None
    source: str = ""
    copied: list[str] = field(default_factory=list)
    row_mapped: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        if not self.applied:
            return f"warm start not applied ({self.source or 'no source'}): {self.reason}"
        tables = ", ".join(
            f"{name} ({info['kind']}: {info['kept']} rows kept, {info['new']} new, {info['dropped']} dropped)"
            for name, info in self.row_mapped.items()
        )
        return (f"warm start from {self.source}: {len(self.copied)} parameters copied, row-mapped {tables or 'none'}; "
                f"{len(self.skipped)} buffers rebuilt from the new data")


class WarmStartRefused(ValueError):
    """The previous checkpoint cannot initialise this model (the message says why)."""


def _comparable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Model parameters as JSON would store them (tuples and lists alike)."""
    return json.loads(json.dumps(dict(params), default=str))


def _id_rows(ids: Sequence[str], what: str) -> dict[str, int]:
    rows = {str(identifier): row for row, identifier in enumerate(ids)}
    if len(rows) != len(ids):
        raise WarmStartRefused(f"the {what} ids repeat: rows cannot be matched by id")
    return rows


def _plan(model: Recommender, model_name: str, source: WarmStartSource, user_ids: Sequence[str],
          item_ids: Sequence[str]) -> tuple[dict[str, Tensor], WarmStartReport]:
    """The new value of every parameter (on the parameter's device) and the report; raises WarmStartRefused."""
    unsupported = model.warm_start_unsupported()
    if unsupported:
        raise WarmStartRefused(f"model {model_name!r} cannot be warm-started: {unsupported}")
    if source.model != model_name:
        raise WarmStartRefused(f"the previous checkpoint is model {source.model!r}, this run trains {model_name!r}")
    from trainer.models.registry import build_config

    try:  # as export/explain rebuild a checkpoint: a field added to the config since it was written takes its default
        previous = dataclasses.asdict(build_config(source.model, source.model_params))
    except (ValueError, TypeError, KeyError) as exc:
        raise WarmStartRefused(
            f"the previous checkpoint's model_params do not build a {model_name!r} config: {exc}"
        ) from exc
    wanted, found = _comparable(dataclasses.asdict(model.config)), _comparable(previous)
    if wanted != found:
        differences = sorted(key for key in set(wanted) | set(found) if wanted.get(key) != found.get(key))
        details = ", ".join(f"{key}: {found.get(key)!r} -> {wanted.get(key)!r}" for key in differences)
        raise WarmStartRefused(f"the previous checkpoint has other model_params ({details})")
    parameters = dict(model.named_parameters())
    buffers = {name for name, _ in model.named_buffers()}
    tables = model.row_tables()
    undeclared = sorted(set(tables) - set(parameters))
    if undeclared:
        raise WarmStartRefused(f"row_tables() names parameters the model does not have: {undeclared}")
    unknown = sorted(set(source.state_dict) - set(parameters) - set(model.state_dict()) - buffers)
    if unknown:
        raise WarmStartRefused(f"the previous checkpoint has entries this model does not: {unknown[:5]}")
    missing = sorted(set(parameters) - set(source.state_dict))
    if missing:
        raise WarmStartRefused(f"the previous checkpoint lacks parameters: {missing[:5]}")
    ids = {"user": (list(user_ids), list(source.user_ids)), "item": (list(item_ids), list(source.item_ids))}
    expected_rows = {"user": model.n_users, "item": model.n_items}
    for kind, (new_ids, _) in ids.items():
        if len(new_ids) != expected_rows[kind]:
            raise WarmStartRefused(f"{len(new_ids)} {kind} ids given for a model with {expected_rows[kind]} {kind}s")
    mappings: dict[str, tuple[list[int], list[int], int]] = {}
    for kind in sorted(set(tables.values())):
        if kind not in ids:
            raise WarmStartRefused(f"row_tables() declares an unknown row kind {kind!r}")
        new_ids, old_ids = ids[kind]
        old_rows = _id_rows(old_ids, f"previous {kind}")
        _id_rows(new_ids, f"new {kind}")
        new_positions = [row for row, identifier in enumerate(new_ids) if str(identifier) in old_rows]
        old_positions = [old_rows[str(new_ids[row])] for row in new_positions]
        mappings[kind] = (new_positions, old_positions, len(old_ids) - len(new_positions))

    values: dict[str, Tensor] = {}
    report = WarmStartReport(applied=True, source=source.origin)
    for name, parameter in parameters.items():
        old = source.state_dict[name]
        if not isinstance(old, Tensor):
            raise WarmStartRefused(f"checkpoint entry {name} is not a tensor")
        if not torch.isfinite(old).all():
            raise WarmStartRefused(f"checkpoint parameter {name} has non-finite values")
        kind = tables.get(name)
        if kind is None:
            if tuple(old.shape) != tuple(parameter.shape):
                raise WarmStartRefused(
                    f"parameter {name}: checkpoint shape {tuple(old.shape)} != model shape {tuple(parameter.shape)} "
                    "(not a declared per-user/per-item table)"
                )
            values[name] = old.detach().to(device=parameter.device, dtype=parameter.dtype)
            report.copied.append(name)
            continue
        new_positions, old_positions, dropped = mappings[kind]
        old_ids = ids[kind][1]
        if old.dim() == 0 or old.shape[0] != len(old_ids) or tuple(old.shape[1:]) != tuple(parameter.shape[1:]):
            raise WarmStartRefused(
                f"{kind} table {name}: checkpoint shape {tuple(old.shape)} does not fit {len(old_ids)} previous "
                f"{kind} ids and rows of shape {tuple(parameter.shape[1:])}"
            )
        value = parameter.detach().clone()
        if new_positions:
            device = parameter.device
            source_rows = old.detach().to(device)[torch.as_tensor(old_positions, dtype=torch.long, device=device)]
            value[torch.as_tensor(new_positions, dtype=torch.long, device=device)] = source_rows.to(parameter.dtype)
        values[name] = value
        report.row_mapped[name] = {"kind": kind, "kept": len(new_positions),
                                   "new": int(parameter.shape[0]) - len(new_positions), "dropped": dropped}
    for name in sorted(buffers):
        report.skipped[name] = "buffer: rebuilt from the new data, never copied"
    return values, report


def apply_warm_start(model: Recommender, model_name: str, source: WarmStartSource, user_ids: Sequence[str],
                     item_ids: Sequence[str]) -> WarmStartReport:
    """Initialise ``model`` (freshly built on the new dataset, whose rows are ``user_ids`` / ``item_ids``) from
    ``source``; all or nothing. ``model_name`` is the registry name the model was built as (``kgat`` and
    ``multikg4rec`` share a class).

    Returns a report; ``applied`` False (with the reason) when refused, and then no parameter has changed.
    """
    try:
        values, report = _plan(model, model_name, source, user_ids, item_ids)
    except WarmStartRefused as exc:
        return not_applied(str(exc), source.origin)
    parameters = dict(model.named_parameters())
    with torch.no_grad():  # every value is staged and checked above: this loop cannot refuse half-way
        for name, value in values.items():
            parameters[name].copy_(value)
    return report


def not_applied(reason: str, source: str = "") -> WarmStartReport:
    return WarmStartReport(applied=False, reason=reason, source=source)


def load_previous_run(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[WarmStartSource | None, str]:
    """The previous model of run directory ``run_dir`` as a warm-start source, or (None, why not).

    The ids of the checkpoint's rows come from the checkpoint itself (``user_ids`` / ``item_ids``, written by
    ``fit`` with every checkpoint from the dataset the model was built on: they match its rows by construction).
    A checkpoint written before it stored them falls back to the bundle the same run exported, the one named in
    ``run_dir/metrics.json`` (written last by a finished run, after its checkpoint), when that metrics.json
    describes this checkpoint (same model and epoch); its id lists are checked against the checkpoint's table
    shapes by :func:`apply_warm_start`. Neither ``bundles/current`` (a later ``trainer export`` may have replaced
    it) nor ``split.inter`` (it lists interactions: a row without any is absent, and its order is not the row
    order) is guaranteed to match the checkpoint's rows.
    """
    from trainer.loop import CHECKPOINT

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None, f"no previous checkpoint at {path}"
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a torn or foreign file: train from scratch rather than fail the job
        return None, f"cannot read the previous checkpoint {path}: {type(exc).__name__}: {exc}"
    if not isinstance(payload, dict) or not {"model", "model_params", "state_dict"} <= set(payload):
        return None, f"{path} is not a trainer checkpoint (model, model_params, state_dict)"
    user_ids, item_ids = payload.get("user_ids"), payload.get("item_ids")
    origin = f"{path} (epoch {payload.get('epoch')})"
    if user_ids is None or item_ids is None:
        user_ids, item_ids, why = _ids_from_run_bundle(Path(run_dir), payload)
        if user_ids is None:
            return None, f"{path} does not store the ids of its rows and {why}"
        origin += f", row ids from {why}"
    return WarmStartSource(
        model=str(payload["model"]),
        model_params=dict(payload["model_params"]),
        state_dict=payload["state_dict"],
        user_ids=[str(x) for x in user_ids],
        item_ids=[str(x) for x in item_ids],
        origin=origin,
        epoch=payload.get("epoch"),
    ), ""


def _ids_from_run_bundle(run_dir: Path, payload: dict[str, Any]) -> tuple[list[str] | None, list[str] | None, str]:
    """(user ids, item ids, the bundle used) from the bundle named by ``run_dir/metrics.json``; (None, None, why not)."""
    from trainer.loop import METRICS

    metrics_path = run_dir / METRICS
    if not metrics_path.is_file():
        return None, None, f"{metrics_path} is missing (the previous run did not finish)"
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return None, None, f"{metrics_path} is not JSON: {exc}"
    if metrics.get("model") != payload.get("model") or metrics.get("best_epoch") != payload.get("epoch"):
        return None, None, (f"{metrics_path} describes another model or epoch ({metrics.get('model')} epoch "
                            f"{metrics.get('best_epoch')}) than the checkpoint ({payload.get('model')} epoch "
                            f"{payload.get('epoch')})")
    if not metrics.get("bundle"):
        return None, None, f"{metrics_path} names no bundle"
    from service.bundle import BundleError, load_bundle

    bundle_dir = run_dir / "bundles" / Path(metrics["bundle"]).name  # stored as given when written
    try:
        bundle = load_bundle(bundle_dir, verify=True)
    except (BundleError, OSError, ValueError) as exc:
        return None, None, f"its run's bundle {bundle_dir} cannot be read: {exc}"
    return list(bundle.user_ids), list(bundle.item_ids), f"its run's bundle {bundle_dir}"
