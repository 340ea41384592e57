"""Cold-start encoders built from a new item's nearest existing items in feature space.

``FeatureNeighbourSearch`` finds, per modality, the new item's top-k existing items by cosine similarity of the
features (MatMul against stored L2-normalised tables, then TopK: standard ONNX operators). ``NeighbourMeanEncoder``
places the new item at the similarity-weighted mean of those neighbours' final embeddings. It needs nothing from a
model but its final item embeddings, so it is also the encoder the export gives a model that has none of its own
(``neighbour_mean_encoder``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

# chosen on VALIDATION held-out items (`trainer coldstart --validation --neighbour-k ...`, docs/results/coldstart.md,
# session 10): 30 ranked best of 1-100 for LightGCN and KGAT on ML-100K, both validation splits
DEFAULT_NEIGHBOURS = 30


def top_k_lower_index_first(similarities: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest entries per row of float [B, n], ties to the lower index.

    That is ONNX TopK's rule. ``torch.topk`` breaks ties in no promised order (on the CPU it can pick a higher index),
    so in eager mode a stable descending sort gives the same picks as the exported graph, which keeps TopK.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(similarities, k, dim=1)
    values, indices = torch.sort(similarities, dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


def unit_rows(features: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (all-zero rows stay zero); float [n, d] -> float [n, d]."""
    features = features.float()
    return features / torch.sqrt((features * features).sum(dim=1, keepdim=True)).clamp_min(1e-12)


class FeatureNeighbourSearch(nn.Module):
    """A new item's top-k existing items per used modality by cosine similarity of the features.

    ``unit_features``: per used modality, the existing items' L2-normalised features float [n_items, d_m];
    ``used_positions``: where each used modality sits among the ``n_inputs`` positional inputs of ``forward``
    (the dataset's modalities in sorted order; the others are ignored).
    """

    def __init__(self, unit_features: Sequence[Tensor], used_positions: Sequence[int], n_inputs: int, k: int) -> None:
        super().__init__()
        if len(unit_features) != len(used_positions) or not unit_features:
            raise ValueError("need one feature table per used modality, and at least one")
        self.used_positions = list(used_positions)
        self.n_inputs = n_inputs
        self.k = min(k, unit_features[0].shape[0])
        for index, table in enumerate(unit_features):
            self.register_buffer(f"unit_features_{index}", table.detach().clone())

    def _neighbours(self, features: tuple[Tensor, ...]) -> list[tuple[Tensor, Tensor]]:
        """Per used modality (values float [B, k], neighbours int64 [B, k]) of the top-k cosine similarities."""
        if len(features) != self.n_inputs:
            raise ValueError(f"expected {self.n_inputs} modality tensors (sorted by name), got {len(features)}")
        found = []
        for index, position in enumerate(self.used_positions):
            x = unit_rows(features[position])
            found.append(top_k_lower_index_first(x @ getattr(self, f"unit_features_{index}").T, self.k))
        return found

    def present(self, features: tuple[Tensor, ...]) -> list[Tensor]:
        """Per used modality, float [B, 1]: 1 where the item's feature row has a nonzero entry, else 0 (an all-zero
        row has cosine 0 to every item, so its top-k is only tie order)."""
        return [(features[position].abs().amax(dim=1, keepdim=True) > 0).float() for position in self.used_positions]


class NeighbourMeanEncoder(FeatureNeighbourSearch):
    """A new item's embedding: per used modality, the weighted mean of its top-k feature neighbours' final
    embeddings (weights max(cosine, 0), normalised to sum to one; uniform if all are <= 0), then the mean over
    the modalities whose feature row is not all zero (a missing modality says nothing about the item); an item
    with every row all zero gets the mean item embedding. An existing item's own features give (close to) the
    mean of itself and its nearest items, not exactly its trained embedding.

    ``item_embeddings``: the model's final item embeddings float [n_items, d]. Forward takes one float [B, dim_m]
    tensor per input modality in sorted order and returns [B, d].
    """

    def __init__(
        self,
        unit_features: Sequence[Tensor],
        item_embeddings: Tensor,
        used_positions: Sequence[int],
        n_inputs: int,
        k: int,
    ) -> None:
        super().__init__(unit_features, used_positions, n_inputs, k)
        self.register_buffer("item_embeddings", item_embeddings.detach().clone())
        self.register_buffer("mean_item_embedding", item_embeddings.detach().float().mean(dim=0, keepdim=True))

    def forward(self, *features: Tensor) -> Tensor:
        per_modality = []
        for values, neighbours in self._neighbours(features):
            weights = torch.relu(values) + 1e-8
            weights = weights / weights.sum(dim=1, keepdim=True)
            per_modality.append((weights.unsqueeze(-1) * self.item_embeddings[neighbours]).sum(dim=1))
        present = torch.stack(self.present(features), dim=0)  # [M, B, 1]
        n_present = present.sum(dim=0)
        mean = (present * torch.stack(per_modality, dim=0)).sum(dim=0) / n_present.clamp_min(1.0)
        return torch.where(n_present > 0, mean, self.mean_item_embedding)


def neighbour_mean_encoder(
    item_embeddings: Tensor, features: Mapping[str, Tensor], k: int = DEFAULT_NEIGHBOURS
) -> NeighbourMeanEncoder:
    """The neighbour-mean encoder over every modality of ``features`` ({name: float [n_items, d_m]}), inputs in
    sorted name order; ``item_embeddings`` float [n_items, d] are the final embeddings the search points into."""
    names = sorted(features)
    if not names:
        raise ValueError("a neighbour-mean encoder needs at least one feature modality")
    for name in names:
        if features[name].ndim != 2 or features[name].shape[0] != item_embeddings.shape[0]:
            raise ValueError(
                f"feature {name!r} must be [n_items={item_embeddings.shape[0]}, d], got {tuple(features[name].shape)}"
            )
    tables = [unit_rows(torch.as_tensor(features[name], device=item_embeddings.device)) for name in names]
    return NeighbourMeanEncoder(tables, item_embeddings, list(range(len(names))), len(names), k)
