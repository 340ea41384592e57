"""Metric functions on hand-computed cases: ties, short ground truth, masking."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.evaluate import evaluate_full_ranking, ranking_metrics, top_k_items


def test_single_user_hand_computed():
    # ranked: 5 3 1 4 2 ; relevant {3, 2}
    got = ranking_metrics([[5, 3, 1, 4, 2]], [{3, 2}], ks=(2, 5))
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["precision@2"] == pytest.approx(0.5)
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert got["map@2"] == pytest.approx((1 / 2) / 2)
    assert got["recall@5"] == pytest.approx(1.0)
    assert got["precision@5"] == pytest.approx(2 / 5)
    ideal = 1 + 1 / math.log2(3)
    assert got["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / ideal)
    assert got["map@5"] == pytest.approx((1 / 2 + 2 / 5) / 2)


def test_fewer_relevant_than_k_uses_min_in_ideal_dcg_and_map():
    got = ranking_metrics([[7, 1, 2, 3]], [{7}], ks=(4,))
    assert got["recall@4"] == 1.0
    assert got["ndcg@4"] == pytest.approx(1.0)  # ideal DCG over min(|G|, K) = 1 position
    assert got["map@4"] == pytest.approx(1.0)
    assert got["precision@4"] == pytest.approx(0.25)


def test_users_without_ground_truth_are_skipped_in_the_mean():
    got = ranking_metrics([[0, 1], [0, 1]], [{0}, set()], ks=(1,))
    assert got["recall@1"] == 1.0


def test_top_k_breaks_ties_by_lower_index_exactly():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert top_k_items(scores, 3).tolist() == [[1, 2, 4], [0, 1, 2]]
    assert top_k_items(scores, 2).tolist() == [[1, 2], [0, 1]]  # tie crossing the boundary
    neg = torch.tensor([[-1.0, -0.5, -2.0, -0.5, -torch.inf]])
    assert top_k_items(neg, 4).tolist() == [[1, 3, 0, 2]]


def _csr(rows, n_users, n_items):
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_users, n_items))


def test_full_ranking_masks_training_items_and_matches_reference():
    # item scores for every user are 4,3,2,1,0 (item 0 best)
    items = torch.tensor([[4.0], [3.0], [2.0], [1.0], [0.0]])
    users = torch.ones(2, 1)
    train = _csr([[0], [1, 2]], 2, 5)
    truth = _csr([[1], [4]], 2, 5)
    got = evaluate_full_ranking(users, items, truth, train, ks=(1, 2))
    # user 0: item 0 masked -> ranking 1,2,... hit at 1 ; user 1: ranking 0,3,4 -> miss at 2
    assert got["recall@1"] == pytest.approx(0.5)
    assert got["recall@2"] == pytest.approx(0.5)
    reference = ranking_metrics([[1, 2, 3, 4], [0, 3, 4]], [{1}, {4}], ks=(1, 2))
    for key, value in reference.items():
        assert got[key] == pytest.approx(value)
    unmasked = evaluate_full_ranking(users, items, truth, None, ks=(1, 2))
    assert unmasked["recall@2"] == pytest.approx(0.5)  # user 0 finds item 1 at rank 2, user 1 never
    assert unmasked["recall@1"] == 0.0


def test_batching_does_not_change_results():
    users, items = torch.randn(57, 8), torch.randn(40, 8)
    truth = sp.random(57, 40, density=0.1, random_state=1, format="csr")
    mask = sp.random(57, 40, density=0.2, random_state=2, format="csr")
    truth.data[:] = 1
    mask.data[:] = 1
    truth = (truth - truth.multiply(mask)).tocsr()
    truth.eliminate_zeros()
    a = evaluate_full_ranking(users, items, truth, mask, ks=(5, 10), batch_size=7)
    b = evaluate_full_ranking(users, items, truth, mask, ks=(5, 10), batch_size=1000)
    assert a == pytest.approx(b)


def test_negative_zero_ties_with_positive_zero():
    # a user with an all-zero representation scores every item +-0.0: the order is by item index only
    scores = torch.tensor([[-0.0, 0.0, 0.0, 0.0]])
    assert top_k_items(scores, 2).tolist() == [[0, 1]]
    assert top_k_items(scores, 4).tolist() == [[0, 1, 2, 3]]


def test_catalogue_smaller_than_a_cut_off_ranks_every_item():
    users = np.array([[1.0]], dtype=np.float32)
    items = np.array([[3.0], [2.0], [1.0]], dtype=np.float32)
    train = sp.csr_matrix(np.array([[1, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1]], dtype=np.float32))
    # i0 is masked; i1 > i2, so the test item is second of the remaining two (as trainer.bundle_eval counts it)
    metrics = evaluate_full_ranking(users, items, test, train, ks=(1, 2, 5))
    assert metrics["recall@1"] == 0.0 and metrics["recall@2"] == 1.0 and metrics["recall@5"] == 1.0
    assert metrics["ndcg@5"] == pytest.approx(1 / math.log2(3)) and metrics["precision@5"] == pytest.approx(1 / 5)


def test_score_blocks_stay_under_the_memory_bound_whatever_the_batch_size(monkeypatch):
    # a large catalogue must not be scored 4096 users at a time ([4096, 1M] float32 is 16 GiB, plus the bool
    # ground truth and, for rows tied across the cut-off, int64 sort keys): blocks are capped by their element count
    import trainer.evaluate as evaluate

    rng = np.random.default_rng(0)
    n_users, n_items = 50, 40
    users = torch.as_tensor(rng.integers(-2, 3, (n_users, 2)), dtype=torch.float32)  # small integers: many ties
    items = torch.as_tensor(rng.integers(-2, 3, (n_items, 2)), dtype=torch.float32)
    mask = sp.csr_matrix((rng.random((n_users, n_items)) < 0.2).astype(np.float32))
    truth = sp.csr_matrix(((rng.random((n_users, n_items)) < 0.1) & (mask.toarray() == 0)).astype(np.float32))
    expected = evaluate_full_ranking(users, items, truth, mask, ks=(5, 10))

    blocks, exact_blocks = [], []
    real_top_k, real_exact = evaluate.top_k_items, evaluate._top_k_exact

    def top_k_spy(scores, k):
        blocks.append(tuple(scores.shape))
        return real_top_k(scores, k)

    def exact_spy(scores, k):
        exact_blocks.append(tuple(scores.shape))
        return real_exact(scores, k)

    monkeypatch.setattr(evaluate, "top_k_items", top_k_spy)
    monkeypatch.setattr(evaluate, "_top_k_exact", exact_spy)
    monkeypatch.setattr(evaluate, "MAX_BLOCK_ELEMENTS", 7 * n_items, raising=False)
    monkeypatch.setattr(evaluate, "EXACT_BLOCK_ELEMENTS", 2 * n_items, raising=False)
    got = evaluate_full_ranking(users, items, truth, mask, ks=(5, 10), batch_size=4096)
    assert got == pytest.approx(expected, rel=1e-12)  # the same per-user values, summed in other groups
    assert blocks and all(rows <= 7 for rows, _ in blocks)
    assert exact_blocks and all(rows <= 2 for rows, _ in exact_blocks)
    assert sum(rows for rows, _ in blocks) == int((np.diff(truth.indptr) > 0).sum())
