"""The MMRec per-user split: proportions, small-user rules, determinism, disjointness."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from trainer.data.split import (
    Split,
    SplitError,
    carve_valid_from_train,
    drop_holdout_without_train,
    holdout_counts,
    split_per_user,
)


def random_interactions(n_users: int = 200, n_items: int = 500, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for user in range(n_users):
        n = int(rng.integers(10, 60))
        rows += [user] * n
        cols += rng.choice(n_items, size=n, replace=False).tolist()
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


def per_user(matrix: sp.csr_matrix) -> np.ndarray:
    return np.diff(matrix.indptr)


def test_proportions_are_eight_one_one():
    interactions = random_interactions()
    split = split_per_user(interactions, seed=1)
    total = interactions.nnz
    assert split.train.nnz + split.valid.nnz + split.test.nnz == total
    assert abs(split.train.nnz / total - 0.8) < 0.01
    assert abs(split.valid.nnz / total - 0.1) < 0.01
    assert abs(split.test.nnz / total - 0.1) < 0.01


def test_splits_are_disjoint_and_cover_the_input():
    interactions = random_interactions(n_users=50)
    split = split_per_user(interactions, seed=3)
    assert split.train.multiply(split.valid).nnz == 0
    assert split.train.multiply(split.test).nnz == 0
    assert split.valid.multiply(split.test).nnz == 0
    assert ((split.train + split.valid + split.test) != interactions).nnz == 0


def test_same_seed_same_split_other_seed_other_split():
    interactions = random_interactions(n_users=60)
    first, again, other = (split_per_user(interactions, seed=s) for s in (5, 5, 6))
    for name in ("train", "valid", "test"):
        assert (getattr(first, name) != getattr(again, name)).nnz == 0
    assert (first.test != other.test).nnz > 0


def test_result_does_not_depend_on_input_row_order():
    interactions = random_interactions(n_users=30).tocoo()
    order = np.random.default_rng(9).permutation(interactions.nnz)
    shuffled = sp.coo_matrix(
        (interactions.data[order], (interactions.row[order], interactions.col[order])),
        shape=interactions.shape,
    )
    a, b = split_per_user(interactions, seed=2), split_per_user(shuffled, seed=2)
    assert (a.test != b.test).nnz == 0 and (a.valid != b.valid).nnz == 0


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, (1, 0, 0)),
        (2, (2, 0, 0)),
        (3, (1, 1, 1)),
        (5, (3, 1, 1)),
        (9, (7, 1, 1)),
        (10, (8, 1, 1)),
        (15, (11, 2, 2)),
        (24, (20, 2, 2)),
        (25, (19, 3, 3)),
    ],
)
def test_small_user_rules(n, expected):
    interactions = sp.csr_matrix(np.ones((1, n), dtype=np.float32))
    split = split_per_user(interactions, seed=0)
    assert (split.train.nnz, split.valid.nnz, split.test.nnz) == expected


def test_holdout_counts_vectorised():
    n_valid, n_test = holdout_counts(np.array([0, 2, 3, 9, 10, 100]))
    assert n_valid.tolist() == [0, 0, 1, 1, 1, 10]
    assert n_test.tolist() == [0, 0, 1, 1, 1, 10]


def test_duplicates_and_users_without_interactions():
    dense = np.zeros((3, 12), dtype=np.float32)
    dense[0, :12] = 2.0  # counts above 1 are still one interaction each
    interactions = sp.csr_matrix(dense)
    split = split_per_user(interactions, seed=4)
    assert per_user(split.train).tolist() == [10, 0, 0]
    assert split.train.data.tolist() == [1.0] * 10


def test_drop_holdout_without_train():
    train = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]], dtype=np.float32))
    valid = sp.csr_matrix(np.array([[0, 1, 0], [0, 1, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1], [1, 0, 1]], dtype=np.float32))
    cleaned = drop_holdout_without_train(Split(train, valid, test))
    assert per_user(cleaned.valid).tolist() == [1, 0]
    assert per_user(cleaned.test).tolist() == [1, 0]


def test_carve_valid_from_train():
    train = random_interactions(n_users=100, seed=2)
    kept, valid = carve_valid_from_train(train, seed=1)
    assert kept.multiply(valid).nnz == 0 and ((kept + valid) != train).nnz == 0
    assert abs(valid.nnz / train.nnz - 1 / 9) < 0.01
    assert per_user(kept).min() >= 1
    single = sp.csr_matrix(np.ones((1, 1), dtype=np.float32))
    assert carve_valid_from_train(single, seed=0)[1].nnz == 0


def test_bad_input():
    with pytest.raises(SplitError, match="scipy sparse"):
        split_per_user(np.ones((2, 2)), seed=0)
    with pytest.raises(SplitError, match="ratios"):
        split_per_user(sp.csr_matrix((2, 2)), seed=0, valid_ratio=0.6, test_ratio=0.5)
