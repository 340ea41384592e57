"""LightGCN (He et al., SIGIR 2020): linear propagation on the normalised user-item graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainer.graphs import normalized_bipartite_adjacency, sparse_matmul, to_torch_sparse_csr
from trainer.losses import bpr_loss, l2_reg
from trainer.models.base import BPRBatch, ModelConfig, ModelInputs, Recommender, RowKind


@dataclass
class LightGCNConfig(ModelConfig):
    """LightGCN hyperparameters.

    Attributes:
        embedding_dim, n_layers, reg_weight: the paper's (reg on the batch's layer-0 rows).
        user_scale: OUR ANALYSIS OPTION (default 1.0 = the paper's model): factor on the users' final
            representation, so every score is user_scale · ⟨u, i⟩. The ranking of one user's items does not
            change; training does (BPR's sigmoid sees scaled margins, and the regularisers weigh relatively more
            under Adam). SAND with uniform user weights over M modality chunks and no content in its scores is
            this model with user_scale 1/M (docs/results/sand.md, "Session 21").
    """

    embedding_dim: int = 64
    n_layers: int = 2
    reg_weight: float = 1e-4
    user_scale: float = 1.0

    def __post_init__(self) -> None:
        self.require_finite_scale("user_scale")


def propagate(adjacency: Tensor, ego: Tensor, n_layers: int) -> Tensor:
    """Mean over layers 0..L of Â^l · ego; adjacency symmetric sparse [N, N], ego [N, d] -> [N, d].

    A running sum divided by L + 1: on CPU the same floats as ``torch.stack(layers).mean(0)`` (forward and
    gradients), without materialising the [L + 1, N, d] stack and its gradient every step.
    """
    total = ego
    current = ego
    for _ in range(n_layers):
        current = sparse_matmul(adjacency, current)
        total = total + current
    return total / (n_layers + 1)


class LightGCN(Recommender):
    config_class = LightGCNConfig

    def __init__(self, inputs: ModelInputs, config: LightGCNConfig) -> None:
        super().__init__(inputs, config)
        self.user_embedding = nn.Embedding(inputs.n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(inputs.n_items, config.embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        adjacency = normalized_bipartite_adjacency(inputs.train_matrix)
        self.register_buffer("adjacency", to_torch_sparse_csr(adjacency, inputs.device), persistent=False)

    def representations(self) -> tuple[Tensor, Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        final = propagate(self.adjacency, ego, self.config.n_layers)
        users = final[: self.n_users]
        if self.config.user_scale != 1.0:  # our analysis option (see LightGCNConfig)
            users = users * self.config.user_scale
        return users, final[self.n_users :]

    def row_tables(self) -> dict[str, RowKind]:
        return {"user_embedding.weight": "user", "item_embedding.weight": "item"}

    def loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        users, items = self.representations()
        u, p, n = users[batch.users], items[batch.pos_items], items[batch.neg_items]
        reg = l2_reg(
            self.user_embedding(batch.users), self.item_embedding(batch.pos_items), self.item_embedding(batch.neg_items)
        )
        return {"bpr": bpr_loss((u * p).sum(-1), (u * n).sum(-1)), "reg": self.config.reg_weight * reg}
