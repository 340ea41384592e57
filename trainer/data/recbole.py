"""RecBole atomic files: ``<name>.inter`` with a typed header (``user_id:token item_id:token rating:float
timestamp:float``), optional ``<name>.item``, ``<name>.kg`` + ``<name>.link`` and ``<modality>_feat.npy``.

Every row of ``.inter`` is an interaction (implicit feedback; ratings are ignored, repeated pairs collapse).
There is no split on disk: the MMRec split (:mod:`trainer.data.split`) is applied with ``split_seed``.
Items are the distinct item ids of ``.inter`` sorted numerically (lexicographically when not all
integers); items listed in ``.item`` without any interaction are dropped (logged). Feature files, if any,
must have one row per item in that order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainer.data.dataset import DatasetError, InteractionDataset
from trainer.data.kg import read_recbole_kg
from trainer.data.mmrec import find_inter_file
from trainer.data.parsing import (
    binary_csr,
    column_index,
    index_of,
    load_features,
    read_header_table,
    sorted_ids,
)
from trainer.data.split import split_per_user

logger = logging.getLogger(__name__)


def field_names(path: Path, header: list[str]) -> list[str]:
    """``name:type`` header -> names; :class:`DatasetError` when a column has no ``:type``."""
    names = []
    for column in header:
        name, sep, kind = column.partition(":")
        if not sep or not name or not kind:
            raise DatasetError(
                f"{path}:1: expected a typed RecBole header 'name:type', got column {column!r}"
            )
        names.append(name)
    return names


def read_item_table(path: Path) -> dict[str, dict[str, str]]:
    """RecBole ``.item``: external item id -> {field name: raw value}, in file order."""
    header, rows = read_header_table(path)
    names = field_names(path, header)
    item_col = column_index(path, names, "item_id")
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        item = row.fields[item_col].strip()
        if not item:
            raise DatasetError(f"{path}:{row.line_no}: expected a non-empty item_id")
        if item in table:
            raise DatasetError(f"{path}:{row.line_no}: item_id {item!r} is listed twice (expected once)")
        table[item] = {name: value for name, value in zip(names, row.fields, strict=True)}
    return table


def read_interactions(path: Path) -> tuple[list[str], list[str]]:
    """(user ids, item ids) of every row of a RecBole ``.inter`` file."""
    header, rows = read_header_table(path)
    names = field_names(path, header)
    user_col, item_col = (column_index(path, names, c) for c in ("user_id", "item_id"))
    if not rows:
        raise DatasetError(f"{path}: no interactions after the header")
    users, items = [], []
    for row in rows:
        user, item = row.fields[user_col].strip(), row.fields[item_col].strip()
        if not user or not item:
            raise DatasetError(f"{path}:{row.line_no}: expected non-empty user_id and item_id")
        users.append(user)
        items.append(item)
    return users, items


def read_recbole(directory: Path, split_seed: int) -> InteractionDataset:
    inter_path = find_inter_file(directory)
    users, items = read_interactions(inter_path)
    user_ids, item_ids = sorted_ids(set(users)), sorted_ids(set(items))
    user_index, item_index = index_of(user_ids), index_of(item_ids)
    shape = (len(user_ids), len(item_ids))
    interactions = binary_csr(
        np.fromiter((user_index[u] for u in users), np.int64, len(users)),
        np.fromiter((item_index[i] for i in items), np.int64, len(items)),
        shape,
    )
    if interactions.nnz != len(users):
        logger.info(
            "%s: %d repeated (user, item) rows collapsed", inter_path.name, len(users) - interactions.nnz
        )

    items_without_interactions: list[str] = []
    item_path = inter_path.with_suffix(".item")
    if item_path.is_file():
        items_without_interactions = [i for i in read_item_table(item_path) if i not in item_index]
        if items_without_interactions:
            logger.warning(
                "%s: dropped %d items listed without any interaction (first: %s)",
                item_path.name,
                len(items_without_interactions),
                items_without_interactions[:5],
            )

    split = split_per_user(interactions, split_seed)
    kg = None
    kg_path, link_path = inter_path.with_suffix(".kg"), inter_path.with_suffix(".link")
    if kg_path.is_file() or link_path.is_file():
        kg, _ = read_recbole_kg(kg_path, link_path, item_index, items_without_interactions)
    return InteractionDataset(
        name=directory.name,
        user_ids=user_ids,
        item_ids=item_ids,
        train=split.train,
        valid=split.valid,
        test=split.test,
        features=load_features(directory, len(item_ids)),
        kg=kg,
    )
