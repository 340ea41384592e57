"""LATTICE / MMHCL json format: ``train.json``, ``val.json``, ``test.json`` = ``{userID: [itemIDs]}``,
optional ``item2id.json`` / ``user2id.json`` (external -> integer id) and ``<modality>_feat.npy``.

Row ``k`` is the json's integer id ``k`` (feature row ``k`` is item ``k``), and the ids are dense:
``n_items = len(item2id)`` when present, else max item id + 1 over all splits (same for users). The ids the
dataset (and so every bundle and the service) uses are the EXTERNAL ones of ``item2id.json`` / ``user2id.json``
when the file is present (e.g. Amazon ASINs and reviewer ids), else the integers as strings. The split is kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.data.dataset import DatasetError, InteractionDataset
from trainer.data.parsing import binary_csr, check_disjoint, load_features, require_file

SPLIT_FILES = {"train": "train.json", "valid": "val.json", "test": "test.json"}


def _load_json(path: Path) -> object:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc


def _non_negative_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) int64 pairs of one ``{userID: [itemIDs]}`` file."""
    mapping = _load_json(path)
    if not isinstance(mapping, dict):
        raise DatasetError(
            f"{path}: expected a JSON object {{userID: [itemIDs]}}, got {type(mapping).__name__}"
        )
    users, items = [], []
    for key, values in mapping.items():
        user = _non_negative_int(key)
        if user is None:
            raise DatasetError(f"{path}: key {key!r}: expected a non-negative integer user id")
        if not isinstance(values, list):
            raise DatasetError(
                f"{path}: user {key!r}: expected a list of item ids, got {type(values).__name__}"
            )
        for value in values:
            item = _non_negative_int(value)
            if item is None:
                raise DatasetError(
                    f"{path}: user {key!r}: expected non-negative integer item ids, got {value!r}"
                )
            users.append(user)
            items.append(item)
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def _external_ids(directory: Path, mapping_file: str, observed_max: int, what: str) -> list[str]:
    """The id of every row: ``mapping_file``'s external ids ordered by their integer id, or ``"0".."max"``."""
    path = directory / mapping_file
    if not path.is_file():
        return [str(i) for i in range(observed_max + 1)]
    mapping = _load_json(path)
    if not isinstance(mapping, dict):
        raise DatasetError(f"{path}: expected a JSON object {{external id: integer id}}")
    parsed = [_non_negative_int(v) for v in mapping.values()]
    ids = sorted(-1 if v is None else v for v in parsed)
    if ids != list(range(len(ids))):
        raise DatasetError(f"{path}: expected the {what} ids 0..{len(ids) - 1}, each exactly once")
    if observed_max >= len(ids):
        raise DatasetError(
            f"{directory}: {what} id {observed_max} is used in a split but {mapping_file} "
            f"has only {len(ids)} ids"
        )
    external = [""] * len(ids)
    for key, row in zip(mapping, parsed, strict=True):
        external[row] = str(key)  # type: ignore[index]  # checked above: every value is an int in 0..n-1
    if any(not key.strip() for key in external):
        raise DatasetError(f"{path}: empty {what} id")
    return external


def read_lattice(directory: Path) -> InteractionDataset:
    pairs = {
        name: _read_split(require_file(directory / file, f"LATTICE {name} split"))
        for name, file in SPLIT_FILES.items()
    }
    max_user = max((int(u.max()) for u, _ in pairs.values() if len(u)), default=-1)
    max_item = max((int(i.max()) for _, i in pairs.values() if len(i)), default=-1)
    if max_user < 0:
        raise DatasetError(f"{directory}: the split files hold no interactions")
    user_ids = _external_ids(directory, "user2id.json", max_user, "user")
    item_ids = _external_ids(directory, "item2id.json", max_item, "item")
    shape = (len(user_ids), len(item_ids))
    splits = {name: binary_csr(u, i, shape) for name, (u, i) in pairs.items()}
    check_disjoint(splits, directory)
    return InteractionDataset(
        name=directory.name,
        user_ids=user_ids,
        item_ids=item_ids,
        features=load_features(directory, len(item_ids)),
        **splits,
    )
