"""Scheduled retrain: fold the service's online events (and online items) into the training split.

The service appends one entry per (user, item) event to the Redis stream ``<prefix>events`` (fields
``user_id``, ``item_id``, ``type``, ``ts``) and stores items added online in the hash ``<prefix>items``
(item_id -> JSON ``{"features": {modality: [floats]}}``); see docs/service.md. This job reads both,
adds the events to the TRAIN split (valid and test stay as they are, so early stopping and the reported
test metrics keep their meaning), trains, exports a new bundle under ``<out>/bundles`` (atomically
swapping ``current``) and publishes the new version on ``<prefix>reload`` so replicas reload it.

The stream is capped (``MAXLEN ~ redis_stream_maxlen``) and the dataset on disk never changes, so every event read
is also kept in ``<out>/online_events.jsonl`` (one JSON ``[stream id, user_id, item_id]`` a line, rewritten
atomically before training): later runs train on that log plus the stream, and events the cap has since trimmed
from the stream are not lost.

``warm_start=True`` (CLI ``--warm-start``) starts training from the previous run's ``<out>/checkpoint.pt`` instead of
a fresh initialisation (``trainer.warm_start``; docs/retrain.md): rows of users and items (and Multi-KG4Rec's graph
nodes and relations) are matched by external key, new ones start fresh. Without a usable previous checkpoint (none,
unreadable, another model or model_params, a Multi-KG4Rec checkpoint without its row keys) the run trains from
scratch and says why in the log, metrics.json and the returned report. Off by default: a cold retrain is a function of the dataset, the events and the config alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from trainer.data.dataset import DatasetError, InteractionDataset, is_storable_id

logger = logging.getLogger(__name__)

EVENTS_LOG = "online_events.jsonl"


@dataclass
class MergeReport:
    events_read: int
    events_added: int
    duplicate_events: int
    new_users: int
    new_items: int
    skipped_unknown_items: int


def merge_events(
    dataset: InteractionDataset,
    events: Iterable[tuple[str, str]],
    online_items: Mapping[str, Mapping[str, list[float]]] | None = None,
) -> tuple[InteractionDataset, MergeReport]:
    """Return a new dataset whose train split also holds ``events`` (user_id, item_id).

    Unknown users are appended as new rows. Unknown items are appended only when ``online_items`` has
    features for every modality of the dataset with the right dimensions; events on other unknown items
    are skipped and counted. Events already in any split are not added twice. Events whose user or item id has a
    tab or line break (which the service takes but a dataset refuses) are skipped with a warning.
    """
    online_items = online_items or {}
    user_index = {uid: row for row, uid in enumerate(dataset.user_ids)}
    item_index = {iid: row for row, iid in enumerate(dataset.item_ids)}
    user_ids, item_ids = list(dataset.user_ids), list(dataset.item_ids)
    features = {name: [matrix] for name, matrix in dataset.features.items()}
    dims = dataset.modality_dims
    existing = (dataset.train + dataset.valid + dataset.test).tocsr()
    pairs: set[tuple[int, int]] = set()
    read = duplicates = skipped = 0
    bad_ids: list[tuple[str, str]] = []
    for user_id, item_id in events:
        read += 1
        if not (is_storable_id(user_id) and is_storable_id(item_id)):
            # the service takes any non-empty id, a dataset refuses these (InteractionDataset.validate): one such
            # event, kept in the events log, would otherwise make every later retrain fail
            bad_ids.append((user_id, item_id))
            continue
        if item_id not in item_index:
            vector = online_items.get(item_id)
            if vector is None or set(vector) != set(dims) or any(len(vector[m]) != dims[m] for m in dims):
                skipped += 1
                continue
            rows = {m: np.asarray(vector[m], dtype=np.float32).reshape(1, -1) for m in dims}
            if not all(np.isfinite(r).all() for r in rows.values()):
                skipped += 1
                continue
            item_index[item_id] = len(item_ids)
            item_ids.append(item_id)
            for m in dims:
                features[m].append(rows[m])
        if user_id not in user_index:
            user_index[user_id] = len(user_ids)
            user_ids.append(user_id)
        pair = (user_index[user_id], item_index[item_id])
        known = pair[0] < existing.shape[0] and pair[1] < existing.shape[1] and existing[pair] != 0
        if known or pair in pairs:
            duplicates += 1
            continue
        pairs.add(pair)
    shape = (len(user_ids), len(item_ids))

    def grow(matrix: sp.csr_matrix) -> sp.csr_matrix:
        coo = matrix.tocoo()
        return sp.csr_matrix((coo.data, (coo.row, coo.col)), shape=shape, dtype=np.float32)

    added = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    extra = sp.csr_matrix((np.ones(len(added), np.float32), (added[:, 0], added[:, 1])), shape=shape)
    merged = InteractionDataset(
        name=dataset.name,
        user_ids=user_ids,
        item_ids=item_ids,
        train=(grow(dataset.train) + extra).tocsr(),
        valid=grow(dataset.valid),
        test=grow(dataset.test),
        features={m: np.concatenate(parts, axis=0) for m, parts in features.items()},
        kg=_grow_kg(dataset, len(item_ids)),
    )
    if bad_ids:
        logger.warning("skipped %d events whose user or item id has a tab or line break (a dataset cannot hold "
                       "them; first: %r)", len(bad_ids), bad_ids[:3])
    merged.validate()
    report = MergeReport(read, len(pairs), duplicates, len(user_ids) - dataset.n_users,
                         len(item_ids) - dataset.n_items, skipped)
    return merged, report


def _grow_kg(dataset: InteractionDataset, n_items: int):
    if dataset.kg is None or n_items == dataset.n_items:
        return dataset.kg
    from dataclasses import replace

    padding = np.full(n_items - dataset.n_items, -1, dtype=np.int64)
    return replace(dataset.kg, item_entity=np.concatenate([dataset.kg.item_entity, padding]))


def read_store_events(redis_url: str, prefix: str = "modalrec:", batch: int = 10_000) -> tuple[
    list[tuple[str, str]], dict[str, dict[str, list[float]]], str | None
]:
    """All (user_id, item_id) events of ``<prefix>events``, the online items, and the last stream id read."""
    entries, online_items, last_id = read_store_entries(redis_url, prefix, batch)
    return [(user_id, item_id) for _, user_id, item_id in entries], online_items, last_id


def read_store_entries(redis_url: str, prefix: str = "modalrec:", batch: int = 10_000) -> tuple[
    list[tuple[str, str, str]], dict[str, dict[str, list[float]]], str | None
]:
    """Like :func:`read_store_events`, with each event's stream id: (entry_id, user_id, item_id)."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    events: list[tuple[str, str, str]] = []
    last_id: str | None = None
    start = "-"
    while True:
        chunk = client.xrange(f"{prefix}events", min=start, max="+", count=batch)
        if not chunk:
            break
        for entry_id, fields in chunk:
            if "user_id" not in fields or "item_id" not in fields:
                raise DatasetError(f"stream entry {entry_id} lacks user_id/item_id: {fields}")
            events.append((entry_id, fields["user_id"], fields["item_id"]))
            last_id = entry_id
        start = "(" + chunk[-1][0]
        if len(chunk) < batch:
            break
    online_items: dict[str, dict[str, list[float]]] = {}
    for item_id, payload in client.hgetall(f"{prefix}items").items():
        online_items[item_id] = json.loads(payload)["features"]
    return events, online_items, last_id


def _stream_id_key(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def keep_events(log_path: Path, entries: Iterable[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Add stream ``entries`` (entry_id, user_id, item_id) to the events log at ``log_path``; return every logged
    (user_id, item_id) event in stream order.

    The log holds each stream entry once (by id), so reading the same entries again adds nothing. It is rewritten
    through a temporary file and an atomic rename: a crash leaves the previous log whole.
    """
    logged: dict[str, tuple[str, str]] = {}
    if log_path.exists():
        with open(log_path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    entry_id, user_id, item_id = json.loads(line)
                except (ValueError, TypeError) as exc:
                    raise DatasetError(f"{log_path}:{number}: not an [id, user_id, item_id] entry: {exc}") from exc
                logged[str(entry_id)] = (str(user_id), str(item_id))
    added = 0
    for entry_id, user_id, item_id in entries:
        if entry_id not in logged:
            logged[entry_id] = (user_id, item_id)
            added += 1
    order = sorted(logged, key=_stream_id_key)
    if added:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = log_path.with_name(f"{log_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for entry_id in order:
                handle.write(json.dumps([entry_id, *logged[entry_id]]) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, log_path)
    logger.info("events log %s: %d events, %d new", log_path, len(order), added)
    return [logged[entry_id] for entry_id in order]


def retrain(
    dataset_path: Path,
    out_dir: Path,
    model: str = "lightgcn",
    redis_url: str | None = None,
    prefix: str | None = None,
    max_epochs: int | None = None,
    keep_bundles: int = 5,
    config_path: Path | None = None,
    warm_start: bool = False,
) -> dict[str, Any]:
    """Merge the store's events (and those of earlier runs, ``<out_dir>/online_events.jsonl``) into the dataset,
    train ``model``, export and signal a reload; then delete all but the ``keep_bundles`` newest bundles under
    ``<out_dir>/bundles`` (0 keeps every one; the current one is never deleted).

    ``config_path``: a YAML config applied after the model's and the dataset's presets (as ``fit --config``); it
    is read before anything else, so a bad one stops the job before the store is read.

    ``warm_start``: initialise from ``<out_dir>/checkpoint.pt`` (the previous retrain's model) when it fits (module
    docstring); the returned ``warm_start`` entry says whether it was applied, and how or why not.
    """
    if keep_bundles < 0:
        raise ValueError(f"keep_bundles must be >= 0, got {keep_bundles}")
    from trainer.config import resolve_run_config
    from trainer.models.registry import build_config
    from trainer.pipeline import dataset_preset_name, load_dataset_dir, run_fit_config

    overrides = {"max_epochs": max_epochs} if max_epochs else None
    run_config = resolve_run_config(
        model, dataset_preset_name(Path(dataset_path)), config_path, train_overrides=overrides
    )
    build_config(run_config.model, run_config.model_params)

    redis_url = redis_url or os.environ.get("MODALREC_REDIS_URL")
    prefix = prefix or os.environ.get("MODALREC_REDIS_PREFIX") or "modalrec:"  # the service's own default
    dataset = load_dataset_dir(Path(dataset_path))
    last_id = None
    report = MergeReport(0, 0, 0, 0, 0, 0)
    if redis_url:
        entries, online_items, last_id = read_store_entries(redis_url, prefix)
        # kept before training: the stream's cap may trim these entries before the next run reads it
        events = keep_events(Path(out_dir) / EVENTS_LOG, entries)
        dataset, report = merge_events(dataset, events, online_items)
    else:
        logger.warning("no Redis URL given (MODALREC_REDIS_URL): retraining on the dataset alone")
    logger.info("retrain merge report: %s", report)
    derived = None
    if report.events_added or report.new_users or report.new_items:
        # the merged dataset exists only in this process: the checkpoint must not claim the dataset on disk
        derived = {
            "kind": "retrain: the dataset plus the store's online events",
            "merge": report.__dict__,
            "events_until": last_id,
            "note": "not saved; re-exporting this checkpoint needs that merged dataset (run `trainer retrain` again)",
        }
    warm_kwargs: dict[str, Any] = {}
    if warm_start:
        from trainer.warm_start import load_previous_run, not_applied

        source, why_not = load_previous_run(Path(out_dir))
        if source is None:
            logger.warning("warm start requested but not possible: %s; training from scratch", why_not)
            warm_kwargs["warm_start_report"] = not_applied(why_not)
        else:
            logger.info("warm start from %s", source.origin)
            warm_kwargs["warm_start"] = source
    metrics = run_fit_config(
        run_config, dataset, Path(dataset_path), Path(out_dir), progress=False, derived_dataset=derived,
        **warm_kwargs,
    )
    if redis_url:
        import redis

        version = Path(metrics["bundle"]).name
        redis.Redis.from_url(redis_url).publish(f"{prefix}reload", version)
    pruned: list[str] = []
    if keep_bundles:
        from service.bundle import prune_bundles

        pruned = prune_bundles(Path(metrics["bundle"]).parent, keep_bundles)
    return {"bundle": metrics["bundle"], "merge": report.__dict__, "events_until": last_id,
            "valid": metrics["valid"], "test": metrics["test"], "pruned_bundles": pruned,
            "warm_start": metrics.get("warm_start")}
