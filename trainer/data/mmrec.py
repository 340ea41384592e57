"""MMRec format: ``<name>.inter`` (tab-separated, header ``userID itemID x_label`` + optional columns;
x_label 0/1/2 = train/valid/test) + ``<modality>_feat.npy`` + optional RecBole ``<name>.kg`` /
``<name>.link``.

Item order (= feature row order): the distinct item ids of ``.inter`` sorted numerically (lexicographically
when not all integers). MMRec's own convention, ``n_items = max itemID + 1`` with row ``k`` = item ``k``, is
used instead when the ids are canonical non-negative integers and every feature file has exactly
``max itemID + 1`` rows (this only differs when some ids in ``0..max`` have no interaction). Users are the
distinct user ids sorted the same way. The split on disk is kept as is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainer.data.dataset import DatasetError, InteractionDataset
from trainer.data.kg import read_recbole_kg
from trainer.data.parsing import (
    binary_csr,
    check_disjoint,
    column_index,
    feature_files,
    index_of,
    load_feature,
    parse_int,
    read_header_table,
    sorted_ids,
)

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")


def find_inter_file(directory: Path) -> Path:
    """``<dirname>.inter`` when present, else the only ``*.inter`` file of ``directory``."""
    preferred = directory / f"{directory.name}.inter"
    if preferred.is_file():
        return preferred
    candidates = sorted(directory.glob("*.inter"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DatasetError(f"{directory}: no *.inter file found")
    raise DatasetError(
        f"{directory}: several .inter files ({', '.join(p.name for p in candidates)}); expected one, "
        f"or one named {preferred.name}"
    )


def _is_canonical_int(text: str) -> bool:
    return text.isascii() and text.isdigit() and str(int(text)) == text


def _item_order(item_ids: set[str], feature_rows: set[int]) -> list[str]:
    distinct = sorted_ids(item_ids)
    if all(_is_canonical_int(i) for i in distinct):
        dense_count = int(distinct[-1]) + 1
        if feature_rows == {dense_count} and dense_count != len(distinct):
            logger.info(
                "features have max itemID + 1 = %d rows: using MMRec's dense item ids 0..%d "
                "(%d ids without interactions)",
                dense_count,
                dense_count - 1,
                dense_count - len(distinct),
            )
            return [str(i) for i in range(dense_count)]
    return distinct


def read_mmrec(directory: Path) -> InteractionDataset:
    inter_path = find_inter_file(directory)
    header, rows = read_header_table(inter_path)
    user_col, item_col, label_col = (
        column_index(inter_path, header, c) for c in ("userID", "itemID", "x_label")
    )
    if not rows:
        raise DatasetError(f"{inter_path}: no interactions after the header")
    users, items, labels = [], [], np.empty(len(rows), dtype=np.int64)
    for pos, row in enumerate(rows):
        user, item = row.fields[user_col].strip(), row.fields[item_col].strip()
        if not user or not item:
            raise DatasetError(f"{inter_path}:{row.line_no}: expected non-empty userID and itemID")
        label = parse_int(
            inter_path, row.line_no, row.fields[label_col], "x_label (0 train, 1 valid, 2 test)"
        )
        if label > 2:
            raise DatasetError(f"{inter_path}:{row.line_no}: expected x_label 0, 1 or 2, got {label}")
        users.append(user)
        items.append(item)
        labels[pos] = label

    raw_features = {m: load_feature(p, m) for m, p in feature_files(directory).items()}
    user_ids = sorted_ids(set(users))
    item_ids = _item_order(set(items), {f.shape[0] for f in raw_features.values()})
    for modality, matrix in raw_features.items():
        if matrix.shape[0] != len(item_ids):
            raise DatasetError(
                f"{directory / (modality + '_feat.npy')}: feature '{modality}' has {matrix.shape[0]} rows, "
                f"expected {len(item_ids)} (one per distinct itemID of {inter_path.name}, in id order)"
            )
    user_index, item_index = index_of(user_ids), index_of(item_ids)
    user_idx = np.fromiter((user_index[u] for u in users), dtype=np.int64, count=len(users))
    item_idx = np.fromiter((item_index[i] for i in items), dtype=np.int64, count=len(items))
    shape = (len(user_ids), len(item_ids))
    splits = {
        name: binary_csr(user_idx[labels == label], item_idx[labels == label], shape)
        for label, name in enumerate(SPLIT_NAMES)
    }
    check_disjoint(splits, inter_path)

    kg = None
    kg_path, link_path = inter_path.with_suffix(".kg"), inter_path.with_suffix(".link")
    if kg_path.is_file() or link_path.is_file():
        kg, _ = read_recbole_kg(kg_path, link_path, item_index)
    return InteractionDataset(
        name=directory.name, user_ids=user_ids, item_ids=item_ids, features=raw_features, kg=kg, **splits
    )
