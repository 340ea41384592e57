"""Warm start: initialise a freshly built model from a previous checkpoint of the same model and model parameters.

:func:`apply_warm_start` is pure (no file I/O) and all-or-nothing. It copies every learned parameter whose meaning
carries over to the new dataset:

* a parameter the model declares in :meth:`~trainer.models.base.Recommender.row_tables` (one row per user, per
  item, or per node or relation of the model's own graph) is copied row by row, matching EXTERNAL keys
  (:meth:`~trainer.models.base.Recommender.row_keys`: the user and item ids; for Multi-KG4Rec's node table the
  entity, item or user id a node stands for, for its relation tables the relation names): the new row of key ``x``
  gets the old row of key ``x``; rows of new keys keep their fresh initialisation, old rows of keys no longer there
  are dropped. Nothing assumes the new keys extend the old ones;
* every other parameter (projections, attention, fusion weights...) must have the same shape and is copied whole;
* buffers (graphs, features, normalised adjacencies, feature statistics) are never copied: the new model built
  them from the new data.

It refuses, leaving the fresh model exactly as it was, when the checkpoint is of another model name or other
model parameters (those it lacks, fields added since it was written, take their defaults, as ``trainer export``
rebuilds it), a parameter is missing on either side, a shape differs other than along a declared row axis, a
table's row count does not match its key list, keys repeat, the checkpoint does not record the keys of a kind of
row (a Multi-KG4Rec checkpoint written before session 13), or a value is not finite. Optimiser state is not carried
over (checkpoints do not hold it): the new run starts Adam afresh.

``shrink`` (λ, ``train.warm_start_shrink``) blends what is copied with the fresh initialisation: a copied value
becomes λ·previous + (1 − λ)·fresh (λ = 1: the previous value as it is).

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

from trainer.models.base import Recommender, RowIds

logger = logging.getLogger(__name__)


@dataclass
class WarmStartSource:
    """A previous model: registry name, resolved model parameters, state_dict (any device), the external ids of its
    user and item rows (row ``i`` of a user table is ``user_ids[i]``) and the keys of its other kinds of rows
    (``row_keys``: {kind: keys}, e.g. Multi-KG4Rec's ``node`` and ``relation`` rows). ``origin`` says where it came
    from."""

    model: str
    model_params: dict[str, Any]
    state_dict: Mapping[str, Tensor]
    user_ids: Sequence[str]
    item_ids: Sequence[str]
    origin: str = ""
    epoch: int | None = None
    row_keys: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def keys(self) -> dict[str, list[str]]:
        """{kind: keys of the previous model's rows of that kind}, user and item rows included."""
        keys = {kind: [str(x) for x in values] for kind, values in self.row_keys.items()}
        return {"user": [str(x) for x in self.user_ids], "item": [str(x) for x in self.item_ids], **keys}


@dataclass
class WarmStartReport:
    """What a warm start did.

    Attributes:
        applied: True when the model now holds the previous parameters; False when refused (model untouched) or
            not attempted (``reason`` says why).
        reason: why it was refused or not attempted; None when applied.
        source: where the previous model came from (``WarmStartSource.origin``).
        copied: parameters copied whole.
        row_mapped: per-row tables: {name: {"kind", "kept" (rows copied by key), "new" (fresh rows), "dropped" (old
            rows whose key is gone)}}.
        skipped: {name: reason} for what was deliberately not copied (buffers).
        shrink: λ of the blend with the fresh initialisation (1: copied as they were).
    """

    applied: bool
    reason: str | None = None
    source: str = ""
    shrink: float = 1.0
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
        blend = "" if self.shrink == 1.0 else f" (blended {self.shrink:g}·previous + {1 - self.shrink:g}·fresh)"
        return (f"warm start from {self.source}: {len(self.copied)} parameters copied, row-mapped {tables or 'none'}"
                f"{blend}; {len(self.skipped)} buffers rebuilt from the new data")


class WarmStartRefused(ValueError):
    """The previous checkpoint cannot initialise this model (the message says why)."""


def _comparable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Model parameters as JSON would store them (tuples and lists alike)."""
    return json.loads(json.dumps(dict(params), default=str))


def _key_rows(keys: Sequence[str], what: str) -> dict[str, int]:
    rows = {str(key): row for row, key in enumerate(keys)}
    if len(rows) != len(keys):
        raise WarmStartRefused(f"the {what} keys repeat: rows cannot be matched by key")
    return rows


def _blend(previous: Tensor, fresh: Tensor, shrink: float) -> Tensor:
    """shrink·previous + (1 − shrink)·fresh; ``previous`` itself when shrink is 1."""
    return previous if shrink == 1.0 else torch.lerp(fresh, previous, shrink)


def _plan(model: Recommender, model_name: str, source: WarmStartSource,
          ids: RowIds, shrink: float = 1.0) -> tuple[dict[str, Tensor], WarmStartReport]:
    """The new value of every parameter (on the parameter's device) and the report; raises WarmStartRefused."""
    if not 0.0 <= shrink <= 1.0:
        raise WarmStartRefused(f"shrink must be in [0, 1], got {shrink}")
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
    for kind, count in (("user", model.n_users), ("item", model.n_items)):
        given = len(ids.user_ids if kind == "user" else ids.item_ids)
        if given != count:
            raise WarmStartRefused(f"{given} {kind} ids given for a model with {count} {kind}s")
    try:
        new_keys = model.row_keys(ids)
    except ValueError as exc:  # ids that are not those of the model's dataset
        raise WarmStartRefused(f"the new rows' keys cannot be built: {exc}") from exc
    old_keys = source.keys()
    mappings: dict[str, tuple[list[int], list[int], int]] = {}
    for kind in sorted(set(tables.values())):
        if kind not in new_keys:
            raise WarmStartRefused(f"row_tables() declares row kind {kind!r} but row_keys() gives no keys for it")
        if kind not in old_keys:
            raise WarmStartRefused(
                f"the previous checkpoint does not record the keys of its {kind} rows (checkpoints store them since "
                "session 13)"
            )
        old_rows = _key_rows(old_keys[kind], f"previous {kind}")
        new_rows = _key_rows(new_keys[kind], f"new {kind}")
        kept = [(row, old_rows[key]) for key, row in new_rows.items() if key in old_rows]
        new_positions, old_positions = [new for new, _ in kept], [old for _, old in kept]
        mappings[kind] = (new_positions, old_positions, len(old_rows) - len(new_positions))

    values: dict[str, Tensor] = {}
    report = WarmStartReport(applied=True, source=source.origin, shrink=float(shrink))
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
            values[name] = _blend(old.detach().to(device=parameter.device, dtype=parameter.dtype),
                                  parameter.detach(), shrink)
            report.copied.append(name)
            continue
        new_positions, old_positions, dropped = mappings[kind]
        n_old, n_new = len(old_keys[kind]), len(new_keys[kind])
        if parameter.shape[0] != n_new:
            raise WarmStartRefused(f"{kind} table {name} has {parameter.shape[0]} rows but row_keys() gives {n_new}")
        if old.dim() == 0 or old.shape[0] != n_old or tuple(old.shape[1:]) != tuple(parameter.shape[1:]):
            raise WarmStartRefused(
                f"{kind} table {name}: checkpoint shape {tuple(old.shape)} does not fit {n_old} previous "
                f"{kind} keys and rows of shape {tuple(parameter.shape[1:])}"
            )
        value = parameter.detach().clone()
        if new_positions:
            device = parameter.device
            source_rows = old.detach().to(device)[torch.as_tensor(old_positions, dtype=torch.long, device=device)]
            targets = torch.as_tensor(new_positions, dtype=torch.long, device=device)
            value[targets] = _blend(source_rows.to(parameter.dtype), value[targets], shrink)
        values[name] = value
        report.row_mapped[name] = {"kind": kind, "kept": len(new_positions),
                                   "new": int(parameter.shape[0]) - len(new_positions), "dropped": dropped}
    for name in sorted(buffers):
        report.skipped[name] = "buffer: rebuilt from the new data, never copied"
    return values, report


def apply_warm_start(model: Recommender, model_name: str, source: WarmStartSource, ids: RowIds,
                     shrink: float = 1.0) -> WarmStartReport:
    """Initialise ``model`` (freshly built on the new dataset, whose row ids are ``ids``) from ``source``; all or
    nothing. ``model_name`` is the registry name the model was built as (``kgat`` and
    ``multikg4rec`` share a class). ``shrink``: λ of λ·previous + (1 − λ)·fresh for every copied value (module
    docstring).

    Returns a report; ``applied`` False (with the reason) when refused, and then no parameter has changed.
    """
    try:
        values, report = _plan(model, model_name, source, ids, shrink)
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
    row_keys = payload.get("row_keys") or {}
    if not isinstance(row_keys, dict) or not all(isinstance(keys, list | tuple) for keys in row_keys.values()):
        return None, f"{path} has a malformed row_keys entry (expected {{kind: [key, ...]}})"
    return WarmStartSource(
        model=str(payload["model"]),
        model_params=dict(payload["model_params"]),
        state_dict=payload["state_dict"],
        user_ids=[str(x) for x in user_ids],
        item_ids=[str(x) for x in item_ids],
        origin=origin,
        epoch=payload.get("epoch"),
        row_keys={str(kind): [str(key) for key in keys] for kind, keys in row_keys.items()},
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
