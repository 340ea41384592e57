"""LightGCN + projected features, with SAND's alignment and distancing plugged in (the paper's Table 3 idea).

VBPR-style late fusion on a LightGCN backbone:

* user = [LightGCN user (D) ‖ θ_u (D)], θ_u a free (unpropagated) feature-preference embedding;
* item = [LightGCN item (D) ‖ g_1 ‖ q_1 ‖ g_2 ‖ q_2 ‖ ...], the feature half being the modalities' generic
  and unique parts from :class:`~trainer.modules.alignment.ModalSplitProjection` (p = D / (2M) each);
* loss = BPR + reg + α·align + β·Σ_m distance, exactly as in SAND (same modules, same batch items).

The final dimension is 2·embedding_dim, like MMRec's VBPR. A cold-start item gets [0 ‖ its projected
features]: it has no ID embedding and no interactions to propagate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainer.graphs import normalized_bipartite_adjacency, to_torch_sparse_csr
from trainer.models.base import BPRBatch, ModelConfig, ModelInputs, Recommender, RowKind
from trainer.models.sand import SANDObjectiveMixin
from trainer.modules.alignment import ModalSplitProjection
from trainer.modules.sand_sparse import SparsePropagation


@dataclass
class LightGCNSANDConfig(ModelConfig):
    """embedding_dim D: the ID half; the feature half is also D (divisible by 2·M). Other fields as in SAND."""

    embedding_dim: int = 64
    reg_weight: float = 1e-4
    n_layers: int = 2
    align: str = "solosim"
    distance: str = "mi"
    alpha: float = 0.1
    beta: float = 0.1
    temperature: float = 0.2
    club_hidden_dim: int | None = None
    objective_on_negatives: bool = False
    modalities: list[str] | None = None
    feature_dims: dict[str, int] | None = None
    feature_dtype: str = "float32"
    transposed_feature_copy: bool | None = None


class LightGCNSANDItemEncoder(nn.Module):
    """Raw modality features (positional, sorted names) -> [0 (D) ‖ g_1 ‖ q_1 ‖ ...] [B, 2D]."""

    def __init__(self, projection: ModalSplitProjection, id_dim: int) -> None:
        super().__init__()
        self.projection = projection
        self.id_dim = id_dim

    def forward(self, *features: Tensor) -> Tensor:
        feature_half = ModalSplitProjection.concatenate(
            self.projection(dict(zip(self.projection.modalities, features, strict=False)))
        )
        return torch.cat([feature_half.new_zeros(feature_half.shape[0], self.id_dim), feature_half], dim=1)


class LightGCNSAND(SANDObjectiveMixin, Recommender):
    config_class = LightGCNSANDConfig

    def __init__(self, inputs: ModelInputs, config: LightGCNSANDConfig) -> None:
        super().__init__(inputs, config)
        self._init_modal_objective(inputs, config)
        self.user_embedding = nn.Embedding(inputs.n_users, config.embedding_dim)
        self.user_feature_preference = nn.Embedding(inputs.n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(inputs.n_items, config.embedding_dim)
        for table in (self.user_embedding, self.user_feature_preference, self.item_embedding):
            nn.init.xavier_uniform_(table.weight)
        adjacency = normalized_bipartite_adjacency(inputs.train_matrix)
        self.user_item_graph = SparsePropagation(
            to_torch_sparse_csr(adjacency, inputs.device), symmetric=True
        )


    def _forward(self) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        total, current = ego, ego
        for _ in range(self.config.n_layers):
            current = self.user_item_graph(current)
            total = total + current
        final = total / (self.config.n_layers + 1)  # LightGCN: mean over layers 0..L (see lightgcn.propagate)
        parts = self._project_all()
        users = torch.cat([final[: self.n_users], self.user_feature_preference.weight], dim=1)
        items = torch.cat([final[self.n_users :], ModalSplitProjection.concatenate(parts)], dim=1)
        return users, items, parts

    def _regularised_rows(self, batch: BPRBatch) -> tuple[Tensor, ...]:
        return (
            self.user_embedding(batch.users),
            self.user_feature_preference(batch.users),
            self.item_embedding(batch.pos_items),
            self.item_embedding(batch.neg_items),
        )

    def row_tables(self) -> dict[str, RowKind]:
        return {
            "user_embedding.weight": "user",
            "user_feature_preference.weight": "user",
            "item_embedding.weight": "item",
        }

    def item_encoder(self) -> nn.Module:
        return LightGCNSANDItemEncoder(self.projection, self.config.embedding_dim)
