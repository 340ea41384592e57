"""MF-BPR: users and items as free embeddings, score = inner product (Rendle et al., UAI 2009)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from trainer.losses import bpr_loss, l2_reg
from trainer.models.base import BPRBatch, ModelConfig, ModelInputs, Recommender, RowKind


@dataclass
class MFConfig(ModelConfig):
    embedding_dim: int = 64
    reg_weight: float = 1e-4


class MFBPR(Recommender):
    config_class = MFConfig

    def __init__(self, inputs: ModelInputs, config: MFConfig) -> None:
        super().__init__(inputs, config)
        self.user_embedding = nn.Embedding(inputs.n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(inputs.n_items, config.embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def representations(self) -> tuple[Tensor, Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight

    def row_tables(self) -> dict[str, RowKind]:
        return {"user_embedding.weight": "user", "item_embedding.weight": "item"}

    def loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        u = self.user_embedding(batch.users)
        p = self.item_embedding(batch.pos_items)
        n = self.item_embedding(batch.neg_items)
        return {
            "bpr": bpr_loss((u * p).sum(-1), (u * n).sum(-1)),
            "reg": self.config.reg_weight * l2_reg(u, p, n),
        }
