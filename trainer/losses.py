"""Loss terms as pure functions (and small modules where a loss has its own parameters)."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Mean of -log sigmoid(pos - neg); inputs float [B]."""
    return F.softplus(neg_scores - pos_scores).mean()


def l2_reg(*tensors: Tensor) -> Tensor:
    """LightGCN/MMRec regulariser: 0.5 * sum of squared entries of the batch's ego embeddings / batch size.

    ``tensors`` are [B, d] rows gathered for the batch; B is taken from the first.
    """
    batch = tensors[0].shape[0]
    return sum(t.pow(2).sum() for t in tensors) / (2 * batch)
