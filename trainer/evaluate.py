"""Full-ranking evaluation (MMRec protocol): Recall, NDCG, Precision and MAP at K over all items.

Every user with at least one ground-truth item is ranked against the whole catalogue; the items in
``mask`` (training items, plus validation items at test time) are excluded from the ranking. Ties in
score are broken in favour of the lower item index, exactly, so results are deterministic.
Per-user metrics are averaged over the users that have ground truth.

Definitions for one user with ground-truth set G and ranked list r_1..r_K (rel_j = [r_j ∈ G]):
    Recall@K    = Σ_j rel_j / |G|
    Precision@K = Σ_j rel_j / K
    NDCG@K      = Σ_j rel_j / log2(j + 1)  /  Σ_{j ≤ min(|G|, K)} 1 / log2(j + 1)
    MAP@K       = Σ_j rel_j · Precision@j  /  min(|G|, K)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

DEFAULT_KS = (10, 20, 50)
METRIC_NAMES = ("recall", "ndcg", "precision", "map")
# Memory bounds, in scores per block. One evaluation batch holds [rows, n_items] float32 scores and a bool copy of
# its ground truth; rows are capped so that a block stays below MAX_BLOCK_ELEMENTS scores (512 MiB) whatever batch
# size was asked for (4096 users x 1M items would be 16 GiB). Rows whose k-th and (k+1)-th scores tie take the exact
# path, whose int64 sort keys and their temporaries cost several times the scores; they run in chunks of at most
# EXACT_BLOCK_ELEMENTS. Blocking changes no result: every row is ranked on its own.
MAX_BLOCK_ELEMENTS = 2**27
EXACT_BLOCK_ELEMENTS = 2**25


def metric_key(name: str, k: int) -> str:
    return f"{name}@{k}"


def hits_to_metrics(hits: Tensor, n_relevant: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user metrics from the relevance of each ranked position.

    Args:
        hits: float [U, K_max]; hits[u, j] = 1 when the item ranked j+1 for user u is relevant.
        n_relevant: float [U]; |G| per user, > 0.
        ks: cut-offs, each ≤ K_max.
    Returns:
        ``{"recall@10": float [U], ...}`` for every metric and cut-off.
    """
    k_max = hits.shape[1]
    positions = torch.arange(1, k_max + 1, dtype=hits.dtype, device=hits.device)
    discounts = 1.0 / torch.log2(positions + 1.0)
    cumulative_hits = hits.cumsum(dim=1)
    precision_at_rank = cumulative_hits / positions
    ideal_cumulative = discounts.cumsum(dim=0)
    out: dict[str, Tensor] = {}
    for k in ks:
        if k > k_max:
            raise ValueError(f"cut-off {k} exceeds the ranked list length {k_max}")
        hits_k = hits[:, :k]
        n_hits = cumulative_hits[:, k - 1]
        ideal_len = torch.clamp(n_relevant, max=k).long()
        idcg = ideal_cumulative[ideal_len - 1]
        out[metric_key("recall", k)] = n_hits / n_relevant
        out[metric_key("precision", k)] = n_hits / k
        out[metric_key("ndcg", k)] = (hits_k * discounts[:k]).sum(dim=1) / idcg
        out[metric_key("map", k)] = (precision_at_rank[:, :k] * hits_k).sum(dim=1) / ideal_len.to(hits.dtype)
    return out


def ranking_metrics(
    ranked_items: Sequence[Sequence[int]], ground_truth: Sequence[set[int]], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Mean metrics for explicit ranked lists (reference implementation, used in tests and tools).

    Args:
        ranked_items: per user, item indices best first (at least max(ks) long).
        ground_truth: per user, the set of relevant items; users with an empty set are skipped.
    """
    keep = [u for u, truth in enumerate(ground_truth) if truth]
    if not keep:
        return {metric_key(name, k): 0.0 for name in METRIC_NAMES for k in ks}
    k_max = max(ks)
    hits = torch.tensor(
        [[1.0 if item in ground_truth[u] else 0.0 for item in list(ranked_items[u])[:k_max]] for u in keep],
        dtype=torch.float64,
    )
    if hits.shape[1] < k_max:
        raise ValueError(f"ranked lists must hold at least {k_max} items")
    n_relevant = torch.tensor([len(ground_truth[u]) for u in keep], dtype=torch.float64)
    per_user = hits_to_metrics(hits, n_relevant, ks)
    return {key: float(values.mean()) for key, values in per_user.items()}


def _sortable_keys(scores: Tensor) -> Tensor:
    """int64 keys whose descending order is (score descending, item index ascending), exactly.

    float32 scores are mapped to int32 with the same order (sign-magnitude to two's complement), then
    shifted left 32 bits with the complemented item index in the low bits.
    """
    bits = (scores + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0, which it equals
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    n_items = scores.shape[1]
    tie_break = (0xFFFFFFFF - torch.arange(n_items, device=scores.device, dtype=torch.int64)).unsqueeze(0)
    return (ordered << 32) | tie_break


def _top_k_exact(scores: Tensor, k: int) -> Tensor:
    keys = _sortable_keys(scores)
    return torch.topk(keys, k, dim=1, largest=True, sorted=True).indices


def top_k_items(scores: Tensor, k: int) -> Tensor:
    """Indices int64 [B, k] of the k best items per row, ties broken by lower item index.

    A float top-(k+1) does the work; its output is re-ordered stably by (score desc, index asc), and the
    rare rows whose k-th score equals the (k+1)-th (a tie across the cut) are recomputed exactly.
    """
    if scores.dtype != torch.float32:
        scores = scores.float()
    probe = min(k + 1, scores.shape[1])
    values, indices = torch.topk(scores, probe, dim=1, largest=True, sorted=True)
    boundary_ties = values[:, k - 1] == values[:, k] if probe > k else torch.zeros_like(values[:, 0], dtype=torch.bool)
    values, indices = values[:, :k], indices[:, :k]
    indices_ascending, permutation = indices.sort(dim=1)
    values_by_index = values.gather(1, permutation)
    order = torch.sort(values_by_index, dim=1, descending=True, stable=True).indices
    indices = indices_ascending.gather(1, order)
    if bool(boundary_ties.any()):
        rows = boundary_ties.nonzero().squeeze(1)
        for chunk in rows.split(max(1, EXACT_BLOCK_ELEMENTS // scores.shape[1])):
            indices[chunk] = _top_k_exact(scores[chunk], k)
    return indices


def _csr_rows_to_dense(matrix: sp.csr_matrix, rows: np.ndarray, device: torch.device) -> Tensor:
    """bool [len(rows), n_cols] dense slice of a CSR matrix."""
    sub = matrix[rows]
    dense = torch.zeros(sub.shape, dtype=torch.bool, device=device)
    coo = sub.tocoo()
    if coo.nnz:
        dense[torch.as_tensor(coo.row, device=device), torch.as_tensor(coo.col, device=device)] = True
    return dense


@torch.no_grad()
def evaluate_full_ranking(
    user_repr: Tensor | np.ndarray,
    item_repr: Tensor | np.ndarray,
    ground_truth: sp.csr_matrix,
    mask: sp.csr_matrix | None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 4096,
) -> dict[str, float]:
    """Mean metrics over users with ground truth, ranking all items by inner product.

    Args:
        user_repr: float [n_users, d]; item_repr: float [n_items, d] (torch on any device, or numpy).
        ground_truth: CSR [n_users, n_items] of relevant items (valid or test split).
        mask: CSR [n_users, n_items] of items excluded from the ranking (train, or train + valid), or None.
        ks: cut-offs.
        batch_size: users scored per batch (fewer when n_items is large, see ``MAX_BLOCK_ELEMENTS``).
    Returns:
        ``{"recall@20": ..., ..., "n_users": U}``.
    """
    user_repr = torch.as_tensor(user_repr)
    item_repr = torch.as_tensor(item_repr, device=user_repr.device)
    device = user_repr.device
    ground_truth = sp.csr_matrix(ground_truth)
    mask = sp.csr_matrix(mask) if mask is not None else None
    n_relevant_all = np.diff(ground_truth.indptr)
    users = np.flatnonzero(n_relevant_all > 0)
    k_max = min(max(ks), item_repr.shape[0])
    sums = {metric_key(name, k): 0.0 for name in METRIC_NAMES for k in ks}
    item_t = item_repr.float().T.contiguous()
    rows_per_block = max(1, min(batch_size, MAX_BLOCK_ELEMENTS // max(item_repr.shape[0], 1)))
    for start in range(0, len(users), rows_per_block):
        batch = users[start : start + rows_per_block]
        batch_t = torch.as_tensor(batch, device=device)
        scores = user_repr[batch_t].float() @ item_t
        if mask is not None:
            masked = mask[batch].tocoo()
            if masked.nnz:
                scores[torch.as_tensor(masked.row, device=device), torch.as_tensor(masked.col, device=device)] = (
                    -torch.inf
                )
        top = top_k_items(scores, k_max)
        truth = _csr_rows_to_dense(ground_truth, batch, device)
        hits = truth.gather(1, top).to(torch.float64)
        if hits.shape[1] < max(ks):  # a catalogue smaller than a cut-off: the ranking is every item, then nothing
            hits = torch.nn.functional.pad(hits, (0, max(ks) - hits.shape[1]))
        n_relevant = torch.as_tensor(n_relevant_all[batch], dtype=torch.float64, device=device)
        for key, values in hits_to_metrics(hits, n_relevant, ks).items():
            sums[key] += float(values.sum())
    n_users = max(len(users), 1)
    result: dict[str, float] = {key: value / n_users for key, value in sums.items()}
    result["n_users"] = float(len(users))
    return result
