"""KGAT text format: ``train.txt`` / ``test.txt`` lines ``user item item ...`` (integers), optional
``kg_final.txt`` (``head relation tail``; item ``i`` is entity ``i``) and ``<modality>_feat.npy``.

Ids are dense integers kept as strings: ``n_users = max user + 1`` (over every line, also lines
without items), ``n_items = max item + 1``. KGAT has no valid split: 1/9 of each user's training items
(seeded) becomes valid. KGAT's own ``test.txt`` holds about 20% of each user's interactions, so the result is
roughly train:valid:test = 71:9:20, not MMRec's 8:1:1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data.dataset import DatasetError, InteractionDataset
from trainer.data.kg import read_kgat_kg
from trainer.data.parsing import (
    binary_csr,
    check_disjoint,
    iter_lines,
    load_features,
    parse_int,
    require_file,
)
from trainer.data.split import carve_valid_from_train


def read_user_item_lists(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(users, items) int64 pairs of a ``user item item ...`` file and the largest user id on any line
    (a line with only a user declares the user but adds no pair; -1 for an empty file)."""
    require_file(path, "KGAT user -> items list")
    users, items, max_user = [], [], -1
    for line_no, line in iter_lines(path):
        fields = line.split()
        user = parse_int(path, line_no, fields[0], "user id (line format 'user item item ...')")
        max_user = max(max_user, user)
        for field in fields[1:]:
            users.append(user)
            items.append(parse_int(path, line_no, field, "item id (line format 'user item item ...')"))
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), max_user


def read_kgat(directory: Path, split_seed: int) -> InteractionDataset:
    train_users, train_items, max_train_user = read_user_item_lists(directory / "train.txt")
    test_users, test_items, max_test_user = read_user_item_lists(directory / "test.txt")
    all_items = np.concatenate([train_items, test_items])
    if not len(all_items):
        raise DatasetError(f"{directory}: train.txt and test.txt hold no interactions")
    shape = (max(max_train_user, max_test_user) + 1, int(all_items.max()) + 1)
    train, valid = carve_valid_from_train(binary_csr(train_users, train_items, shape), split_seed)
    test = binary_csr(test_users, test_items, shape)
    check_disjoint({"train": train + valid, "test": test}, directory)
    kg_path = directory / "kg_final.txt"
    kg = read_kgat_kg(kg_path, shape[1])[0] if kg_path.is_file() else None
    return InteractionDataset(
        name=directory.name,
        user_ids=[str(u) for u in range(shape[0])],
        item_ids=[str(i) for i in range(shape[1])],
        train=train,
        valid=valid,
        test=test,
        features=load_features(directory, shape[1]),
        kg=kg,
    )
