"""LUDP: Learning the User's Deeper Preferences (Lei et al., ACM TOMM 2023).

Three parts, added together:

* collaborative: LightGCN on the user-item graph, summed over layers 0..L -> E_u, E_i;
* item side: per modality m, a kNN item-item graph over cosine similarity of the item features keeping the
  top-k similarity values, item ID embeddings propagated on it with a_ij = s_ij / sqrt(|N_i|) (no feature
  transform, no nonlinearity), modalities fused (attention w_i^m = q^T tanh(W_m h_i^m + b), softmax over
  modalities; or sum; or concat + linear) -> H_i;
* user side (user preference graph): p^m = LeakyReLU(mean over the user's training items of W1_m x_j^m),
  p_hat^m = LeakyReLU(W2_m p^m) + e_u, fused over modalities the same way -> P_u.

Final representations e_u* = E_u + P_u, e_i* = E_i + H_i; score = e_u*^T e_i*; loss BPR + lambda * L2.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.graphs import (
    ITEM_GRAPH_WEIGHT_MODES,
    csr_transpose,
    knn_graph,
    knn_to_torch_sparse_csr,
    ludp_item_graph_weights,
    normalized_bipartite_adjacency,
    sparse_matmul,
    to_torch_sparse_csr,
)
from trainer.losses import bpr_loss, l2_reg
from trainer.models.base import (
    LAYER_COMBINATIONS,
    BPRBatch,
    ModelConfig,
    ModelInputError,
    ModelInputs,
    Recommender,
    RowKind,
)
from trainer.modules.cold_start import DEFAULT_NEIGHBOURS, FeatureNeighbourSearch, NeighbourMeanEncoder

logger = logging.getLogger(__name__)

FUSIONS = ("attention", "sum", "concat")
COLD_START_ENCODERS = ("neighbour_mean", "item_graph")


@dataclass
class LUDPConfig(ModelConfig):
    """LUDP hyperparameters (defaults: the paper's d = 64, k = 10, attention fusion, both graphs on).

    Attributes:
        n_layers: LightGCN layers on the user-item graph.
        layer_combination: how E_u, E_i combine the LightGCN layers 0..n_layers: ``sum`` (the LUDP paper's
            E_u = sum_l e_u^(l)) or ``mean`` (the LightGCN paper's 1 / (L + 1) weights, as the project's
            ``lightgcn`` model does). With ``mean`` and both graphs off, LUDP is exactly ``lightgcn``.
        item_graph: use the item-item modal similarity graphs (H); False is the "no item graph" ablation.
        user_graph: use the user preference graph (P); False is the "no user graph" ablation.
        fusion: how per-modality representations are combined: attention | sum | concat (concat + linear).
        knn_k: neighbours kept per item in each modality's kNN graph.
        item_graph_layers: propagation layers on the item graphs (H is the last layer's output).
        item_graph_weights: similarity (a_ij = s_ij / sqrt(|N_i|), the paper's), binary (a_ij = 1 / sqrt(|N_i|)) or
            mean (our variant: a_ij = max(s_ij, 0) / sum_j max(s_ij, 0), a similarity-weighted mean of the neighbours).
        item_graph_scale: every item-graph edge weight is multiplied by this (1 = as above; with
            ``item_graph_layers`` L, H scales by its L-th power). With ``mean`` weights and a scale below one, the
            item graph adds a small feature-neighbour term to LightGCN's item embedding instead of dominating it
            (docs/results/ludp.md, session 16).
        user_graph_scale: OUR MODIFICATION (default 1.0 = the paper's e_u* = E_u + P): factor on the user preference
            graph's P where it is added to the users, e_u* = E_u + user_graph_scale * P. The modality weights are
            those of the unscaled P (the factor multiplies the fused vector). P carries e_u once more (p_hat^m =
            LeakyReLU(W2 p^m) + e_u), so with the layer mean the paper's P gives the ID embedding four times the
            weight of each propagated layer; a small factor adds the feature term without that.
        negative_slope: LeakyReLU slope of the user preference graph.
        modalities: the modalities to use (None: every modality of the dataset).
        cold_start_encoder: what ``item_encoder()`` gives a new item. ``neighbour_mean`` (default since session
            10): the similarity-weighted mean of the final embeddings e_j* of its ``cold_start_neighbours`` nearest
            items by features, per modality, averaged over the modalities it has features for. ``item_graph``: what
            LUDP itself computes for an item node without interactions, E = 0 and H = the fused item-graph
            propagation over its ``knn_k`` feature neighbours (needs ``item_graph``; the default in sessions 7-9).
            On the validation items of two ML-100K held-out splits the neighbour mean with k = 30 ranked 0.372 /
            0.319 Recall@20 against 0.340 / 0.294 (docs/results/coldstart.md, session 10).
        cold_start_neighbours: k of the ``neighbour_mean`` encoder (the export's default for every model, chosen on
            validation items); the item graph keeps ``knn_k``.
    """

    embedding_dim: int = 64
    reg_weight: float = 1e-4
    n_layers: int = 2
    layer_combination: str = "sum"
    item_graph: bool = True
    user_graph: bool = True
    fusion: str = "attention"
    knn_k: int = 10
    item_graph_layers: int = 1
    item_graph_weights: str = "similarity"
    item_graph_scale: float = 1.0
    user_graph_scale: float = 1.0
    negative_slope: float = 0.01
    modalities: list[str] | None = None
    cold_start_encoder: str = "neighbour_mean"
    cold_start_neighbours: int = DEFAULT_NEIGHBOURS

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ModelInputError(f"LUDP fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.cold_start_neighbours < 1:
            raise ModelInputError(f"LUDP cold_start_neighbours must be >= 1, got {self.cold_start_neighbours}")
        if self.cold_start_encoder not in COLD_START_ENCODERS:
            raise ModelInputError(
                f"LUDP cold_start_encoder must be one of {COLD_START_ENCODERS}, got {self.cold_start_encoder!r}"
            )
        if self.cold_start_encoder == "item_graph" and not self.item_graph:
            raise ModelInputError("LUDP cold_start_encoder 'item_graph' needs item_graph: true")
        if self.layer_combination not in LAYER_COMBINATIONS:
            raise ModelInputError(
                f"LUDP layer_combination must be one of {LAYER_COMBINATIONS}, got {self.layer_combination!r}"
            )
        if self.item_graph_weights not in ITEM_GRAPH_WEIGHT_MODES:
            raise ModelInputError(
                f"LUDP item_graph_weights must be one of {ITEM_GRAPH_WEIGHT_MODES}, got {self.item_graph_weights!r}"
            )
        self.require_finite_scale("item_graph_scale", "user_graph_scale", prefix="LUDP ")
        for name in ("embedding_dim", "knn_k", "item_graph_layers"):
            if getattr(self, name) < 1:
                raise ModelInputError(f"LUDP {name} must be >= 1, got {getattr(self, name)}")
        if self.n_layers < 0:
            raise ModelInputError(f"LUDP n_layers must be >= 0, got {self.n_layers}")


def _tanh_(x: Tensor) -> Tensor:
    """In-place tanh. On CPU evaluated as 2 * sigmoid(2x) - 1: the same function (differs from torch.tanh by
    float rounding, max abs error ~2e-7), but torch's CPU tanh kernel is about five times slower than its
    sigmoid kernel."""
    if x.device.type == "cpu":
        return x.mul_(2).sigmoid_().mul_(2).sub_(1)
    return x.tanh_()


def _attention_scores(
    stacked: Tensor, weight: Tensor, bias: Tensor, query: Tensor, differentiable: bool = False
) -> tuple[Tensor, Tensor]:
    """(tanh(W_m h^m + b) [M, N, d], alpha = softmax over m of q^T tanh(W_m h^m + b) [M, N]).

    stacked [M, N, d]; weight [M, d, d] (W_m in nn.Linear layout, rows are outputs); bias, query [d].
    ``differentiable=False`` uses the in-place tanh, which autograd cannot differentiate through (fine
    inside ``_AttentionFusion.forward`` and under no_grad).
    """
    pre = torch.baddbmm(bias, stacked, weight.transpose(1, 2))
    hidden = torch.tanh(pre) if differentiable else _tanh_(pre)
    return hidden, torch.softmax(hidden @ query, dim=0)


class _AttentionFusion(torch.autograd.Function):
    """sum_m alpha^m h^m, alpha = softmax_m(q^T tanh(W_m h^m + b)), with the backward pass written out.

    The same function and gradients as the autograd composition baddbmm -> tanh -> matmul -> softmax ->
    weighted sum, with fewer intermediate [M, N, d] tensors: LUDP runs it on every item and on the batch's
    users at each step, where it is a visible share of the step time on CPU.
    """

    @staticmethod
    def forward(ctx, stacked: Tensor, weight: Tensor, bias: Tensor, query: Tensor) -> Tensor:  # type: ignore[override]
        hidden, alpha = _attention_scores(stacked, weight, bias, query)
        fused = stacked[0] * alpha[0].unsqueeze(-1)
        for m in range(1, stacked.shape[0]):
            fused.addcmul_(stacked[m], alpha[m].unsqueeze(-1))
        ctx.save_for_backward(stacked, weight, query, hidden, alpha)
        return fused

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        stacked, weight, query, hidden, alpha = ctx.saved_tensors
        grad_alpha = (stacked * grad).sum(dim=-1)  # [M, N]
        grad_logits = alpha * (grad_alpha - (alpha * grad_alpha).sum(dim=0, keepdim=True))  # softmax backward
        # d loss / d (W_m h^m + b) = (1 - tanh^2) * grad_logits * q
        grad_pre = (hidden * hidden).neg_().add_(1).mul_(grad_logits.unsqueeze(-1)).mul_(query)
        grad_query = hidden.reshape(-1, hidden.shape[-1]).t() @ grad_logits.reshape(-1)
        grad_bias = grad_pre.sum(dim=(0, 1))
        grad_weight = torch.bmm(grad_pre.transpose(1, 2), stacked)  # [M, d_out, d_in]
        grad_stacked = torch.bmm(grad_pre, weight).addcmul_(alpha.unsqueeze(-1), grad)
        return grad_stacked, grad_weight, grad_bias, grad_query


class ModalityFusion(nn.Module):
    """Combine per-modality representations [M, N, d] into [N, d].

    ``attention``: w^m = q^T tanh(W_m h^m + b), alpha = softmax over m, output sum_m alpha^m h^m.
    ``sum``: sum_m h^m. ``concat``: Linear([h^1 || ... || h^M]) -> d.

    The attention projections of all modalities run as one batched matmul over the stacked W_m [M, d, d]
    (``_AttentionFusion``); the parameters stay one ``nn.Linear`` per modality.
    """

    def __init__(self, fusion: str, n_modalities: int, dim: int) -> None:
        super().__init__()
        self.fusion = fusion
        self.n_modalities = n_modalities
        if fusion == "attention":
            self.projections = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n_modalities))
            self.bias = nn.Parameter(torch.zeros(dim))
            self.query = nn.Parameter(torch.empty(dim))
            nn.init.normal_(self.query, std=dim**-0.5)
        elif fusion == "concat":
            self.linear = nn.Linear(n_modalities * dim, dim)

    def _stacked_weight(self) -> Tensor:
        return torch.stack([proj.weight for proj in self.projections], dim=0)  # [M, d, d]

    def weights(self, stacked: Tensor) -> Tensor | None:
        """Modality weights [N, M] (rows sum to one); uniform for ``sum``; None for ``concat``."""
        if self.fusion == "attention":
            _, alpha = _attention_scores(
                stacked, self._stacked_weight(), self.bias, self.query, differentiable=torch.is_grad_enabled()
            )
            return alpha.t().contiguous()
        if self.fusion == "sum":
            n = stacked.shape[1]
            return torch.full((n, self.n_modalities), 1.0 / self.n_modalities, device=stacked.device)
        return None

    def forward(self, stacked: Tensor) -> Tensor:
        """stacked [M, N, d] -> fused [N, d]."""
        if stacked.shape[0] != self.n_modalities:
            raise ValueError(f"expected {self.n_modalities} modalities, got {stacked.shape[0]}")
        if self.fusion == "attention":
            return _AttentionFusion.apply(stacked, self._stacked_weight(), self.bias, self.query)
        if self.fusion == "sum":
            return stacked.sum(dim=0)
        return self.linear(torch.cat(list(stacked), dim=1))


def lightgcn_layer_sum(adjacency: Tensor, ego: Tensor, n_layers: int) -> Tensor:
    """sum_{l=0..L} A^l ego for a SYMMETRIC sparse adjacency [N, N]; ego [N, d] -> [N, d]."""
    total = ego
    current = ego
    for _ in range(n_layers):
        current = sparse_matmul(adjacency, current)
        total = total + current
    return total


def mean_item_features_per_user(train_matrix: sp.spmatrix, features: Tensor) -> Tensor:
    """Mean of each user's training items' features: D_u^-1 R X; [n_users, n_items] x [n_items, d] -> [n_users, d].

    Users without training items get zeros.
    """
    r = sp.csr_matrix(train_matrix, dtype=np.float32, copy=True)
    r.data[:] = 1.0
    degree = np.asarray(r.sum(axis=1)).ravel()
    inv = np.zeros_like(degree)
    inv[degree > 0] = 1.0 / degree[degree > 0]
    mean_operator = to_torch_sparse_csr(sp.diags(inv) @ r, features.device)
    return torch.sparse.mm(mean_operator, features.float())


class LUDP(Recommender):
    config_class = LUDPConfig

    def __init__(self, inputs: ModelInputs, config: LUDPConfig) -> None:
        super().__init__(inputs, config)
        self.all_modalities = sorted(inputs.features)
        wanted = self.all_modalities if config.modalities is None else list(config.modalities)
        missing = [m for m in wanted if m not in inputs.features]
        if missing:
            raise ModelInputError(
                f"LUDP modalities {missing} are not in the dataset (it has {self.all_modalities or 'none'})"
            )
        if not wanted:
            raise ModelInputError("LUDP needs at least one item feature modality; the dataset has none")
        self.modalities = sorted(wanted)
        for name in self.modalities:
            matrix = inputs.features[name]
            if matrix.ndim != 2 or matrix.shape[0] != inputs.n_items:
                raise ModelInputError(
                    f"feature {name!r} must be [n_items={inputs.n_items}, d], got {tuple(matrix.shape)}"
                )
        d = config.embedding_dim
        n_modalities = len(self.modalities)
        self.user_embedding = nn.Embedding(inputs.n_users, d)
        self.item_embedding = nn.Embedding(inputs.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        adjacency = normalized_bipartite_adjacency(inputs.train_matrix)
        asymmetry = abs(adjacency - adjacency.T).max() if adjacency.nnz else 0.0
        if asymmetry > 1e-6:  # lightgcn_layer_sum uses the adjacency as its own transpose
            raise ModelInputError(f"user-item adjacency is not symmetric (max |A - A^T| = {asymmetry:.3g})")
        self.register_buffer("adjacency", to_torch_sparse_csr(adjacency, inputs.device), persistent=False)

        # kNN graphs and feature tables are rebuilt from the inputs, so they are not saved in checkpoints.
        all_neighbours, all_weights = [], []
        for index, name in enumerate(self.modalities):
            neighbours, similarities = knn_graph(inputs.features[name], config.knn_k)
            weights = ludp_item_graph_weights(similarities, config.item_graph_weights, config.item_graph_scale)
            all_neighbours.append(neighbours)
            all_weights.append(weights)
            graph = knn_to_torch_sparse_csr(neighbours, weights, inputs.n_items)
            self.register_buffer(f"item_graph_{index}", graph, persistent=False)
            features = inputs.features[name].float()
            unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.register_buffer(f"unit_features_{index}", unit, persistent=False)
        if config.item_graph:
            # All modalities in one sparse matmul per layer: the first layer propagates the same item ID
            # embeddings on every graph, [G_1; ...; G_M] [M * n_items, n_items]; later layers use
            # blockdiag(G_1, ..., G_M) [M * n_items, M * n_items] on the stacked per-modality embeddings.
            n = inputs.n_items
            stacked = knn_to_torch_sparse_csr(torch.cat(all_neighbours), torch.cat(all_weights), n)
            self.register_buffer("item_graph_stacked", stacked, persistent=False)
            self.register_buffer("item_graph_stacked_t", csr_transpose(stacked), persistent=False)
            if config.item_graph_layers > 1:
                offsets = [neighbours + m * n for m, neighbours in enumerate(all_neighbours)]
                block = knn_to_torch_sparse_csr(torch.cat(offsets), torch.cat(all_weights), n_modalities * n)
                self.register_buffer("item_graph_block", block, persistent=False)
                self.register_buffer("item_graph_block_t", csr_transpose(block), persistent=False)
            self.item_fusion = ModalityFusion(config.fusion, n_modalities, d)
        if config.user_graph:
            for index, name in enumerate(self.modalities):
                means = mean_item_features_per_user(inputs.train_matrix, inputs.features[name])
                self.register_buffer(f"user_mean_features_{index}", means, persistent=False)
            self.feature_projections = nn.ModuleList(
                nn.Linear(inputs.features[name].shape[1], d) for name in self.modalities
            )
            self.preference_projections = nn.ModuleList(nn.Linear(d, d) for _ in self.modalities)
            self.user_fusion = ModalityFusion(config.fusion, n_modalities, d)

    def _per_modality(self, prefix: str) -> list[Tensor]:
        return [getattr(self, f"{prefix}_{index}") for index in range(len(self.modalities))]

    @property
    def item_graphs(self) -> list[Tensor]:
        """Per-modality normalised kNN item graphs, sparse CSR [n_items, n_items] (order: ``modalities``)."""
        return self._per_modality("item_graph")

    @property
    def unit_features(self) -> list[Tensor]:
        """Per-modality L2-normalised item features [n_items, d_m]."""
        return self._per_modality("unit_features")

    @property
    def user_mean_features(self) -> list[Tensor]:
        """Per-modality mean feature of each user's training items [n_users, d_m]."""
        return self._per_modality("user_mean_features")

    # ----- parts -----------------------------------------------------------------------------------------

    def collaborative(self) -> tuple[Tensor, Tensor]:
        """(E_u [n_users, d], E_i [n_items, d]): LightGCN layers 0..n_layers, summed or averaged."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        final = lightgcn_layer_sum(self.adjacency, ego, self.config.n_layers)
        if self.config.layer_combination == "mean":
            final = final / (self.config.n_layers + 1)
        return final[: self.n_users], final[self.n_users :]

    def item_modal_representations(self, layers: int | None = None) -> Tensor:
        """h^m: item ID embeddings propagated ``layers`` times (default ``item_graph_layers``; 0 gives the ID
        embeddings themselves) on each modality's kNN graph; [M, n_items, d]."""
        layers = self.config.item_graph_layers if layers is None else layers
        embeddings = self.item_embedding.weight
        if layers == 0:
            return embeddings.unsqueeze(0).expand(len(self.modalities), -1, -1)
        h = sparse_matmul(self.item_graph_stacked, embeddings, self.item_graph_stacked_t)
        for _ in range(layers - 1):
            h = sparse_matmul(self.item_graph_block, h, self.item_graph_block_t)
        return h.view(len(self.modalities), self.n_items, -1)

    def user_modal_representations(self, users: Tensor | None = None) -> Tensor:
        """p_hat^m for ``users`` (int64 [B]; all users if None); [M, B, d].

        W1_m differ in input size and run one per modality; the W2_m run as one batched matmul.
        """
        ego = self.user_embedding.weight if users is None else self.user_embedding(users)
        slope = self.config.negative_slope
        p = torch.stack(
            [
                F.leaky_relu(w1(mean_features if users is None else mean_features.index_select(0, users)), slope)
                for mean_features, w1 in zip(self.user_mean_features, self.feature_projections, strict=True)
            ],
            dim=0,
        )  # [M, B, d]
        w2_t = torch.stack([w2.weight for w2 in self.preference_projections], dim=0).transpose(1, 2)
        b2 = torch.stack([w2.bias for w2 in self.preference_projections], dim=0).unsqueeze(1)  # [M, 1, d]
        return F.leaky_relu(torch.baddbmm(b2, p, w2_t), slope).add_(ego)

    def item_graph_part(self) -> Tensor | None:
        """H [n_items, d], or None when the item graph is switched off."""
        return self.item_fusion(self.item_modal_representations()) if self.config.item_graph else None

    def user_graph_part(self, users: Tensor | None = None) -> Tensor | None:
        """user_graph_scale * P [B, d] for ``users`` (all if None), or None when the user graph is switched off."""
        if not self.config.user_graph:
            return None
        fused = self.user_fusion(self.user_modal_representations(users))
        scale = self.config.user_graph_scale
        return fused if scale == 1.0 else fused * scale

    # ----- contract ----------------------------------------------------------------------------------------

    def representations(self) -> tuple[Tensor, Tensor]:
        users, items = self.collaborative()
        item_part = self.item_graph_part()
        user_part = self.user_graph_part()
        if item_part is not None:
            items = items + item_part
        if user_part is not None:
            users = users + user_part
        return users, items

    def loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        users, items = self.collaborative()
        item_part = self.item_graph_part()
        if item_part is not None:
            items = items + item_part
        if self.config.user_graph:
            # P only for the batch's distinct users (~70% of users at batch 2048 on ml-100k-mm): the loss
            # does not depend on the others, so values and gradients are those of the full computation.
            unique_users, inverse = torch.unique(batch.users, return_inverse=True)
            u = (users.index_select(0, unique_users) + self.user_graph_part(unique_users)).index_select(0, inverse)
        else:
            u = users[batch.users]
        p, n = items[batch.pos_items], items[batch.neg_items]
        reg = l2_reg(
            self.user_embedding(batch.users),
            self.item_embedding(batch.pos_items),
            self.item_embedding(batch.neg_items),
        )
        return {"bpr": bpr_loss((u * p).sum(-1), (u * n).sum(-1)), "reg": self.config.reg_weight * reg}

    @torch.no_grad()
    def modality_weights(self) -> tuple[Tensor | None, Tensor | None]:
        """Per-user and per-item modality weights (users [n_users, M], items [n_items, M]); rows sum to one.

        Columns follow ``self.modalities``. A side is None when its graph is off or fusion is ``concat``
        (concatenation has no per-modality weights); ``sum`` gives uniform weights.
        """
        user_weights = (
            self.user_fusion.weights(self.user_modal_representations()) if self.config.user_graph else None
        )
        item_weights = (
            self.item_fusion.weights(self.item_modal_representations()) if self.config.item_graph else None
        )
        return user_weights, item_weights

    def row_tables(self) -> dict[str, RowKind]:
        return {"user_embedding.weight": "user", "item_embedding.weight": "item"}

    @torch.no_grad()
    def item_encoder(self) -> nn.Module:
        was_training = self.training
        self.eval()
        try:
            if self.config.cold_start_encoder == "item_graph":
                return self._item_graph_encoder()
            _, items = self.representations()
        finally:
            self.train(was_training)
        return NeighbourMeanEncoder(
            item_embeddings=items, **self._feature_neighbour_arguments(self.config.cold_start_neighbours)
        )

    def _feature_neighbour_arguments(self, k: int) -> dict:
        """What both cold-start encoders' neighbour search (``FeatureNeighbourSearch``) takes from this model."""
        return {
            "unit_features": self.unit_features,
            "used_positions": [self.all_modalities.index(name) for name in self.modalities],
            "n_inputs": len(self.all_modalities),
            "k": k,
        }

    def _item_graph_encoder(self) -> nn.Module:
        """LUDPItemGraphEncoder over this model's tables (called under no_grad, in eval mode)."""
        # the new node's layer L sums its neighbours' layer L-1 rows (the ID embeddings for L = 1)
        tables = self.item_modal_representations(self.config.item_graph_layers - 1)
        return LUDPItemGraphEncoder(
            neighbour_tables=tables.detach().clone(),
            weight_mode=self.config.item_graph_weights,
            weight_scale=self.config.item_graph_scale,
            fusion=self.item_fusion,
            **self._feature_neighbour_arguments(self.config.knn_k),
        )


class LUDPItemGraphEncoder(FeatureNeighbourSearch):
    """Cold-start encoder ``cold_start_encoder: item_graph``: what LUDP computes for an item node that has no
    interactions. Its collaborative part E is zero (no trained ID row), and H is the model's item-graph part:
    per modality m, the top-k existing items by cosine similarity of the features (MatMul, TopK), the training
    edge weights (``ludp_item_graph_weights``), h^m = sum_j a_j T_m[j] with T_m the items' layer L-1 item-graph
    representations (the ID embeddings for L = 1), and a frozen copy of the model's fusion over modalities (for
    attention its ``weights``, so that no custom autograd function enters the ONNX graph).

    Forward takes one float [B, dim_m] tensor per dataset modality in sorted order (unused ones ignored) and
    returns [B, d].
    """

    def __init__(
        self,
        unit_features: list[Tensor],
        neighbour_tables: Tensor,
        used_positions: list[int],
        n_inputs: int,
        k: int,
        weight_mode: str,
        weight_scale: float,
        fusion: ModalityFusion,
    ) -> None:
        super().__init__(unit_features, used_positions, n_inputs, k)
        self.weight_mode = weight_mode
        self.weight_scale = weight_scale
        self.register_buffer("neighbour_tables", neighbour_tables)  # [M, n_items, d]
        self.fusion = copy.deepcopy(fusion).requires_grad_(False)

    def forward(self, *features: Tensor) -> Tensor:
        stacked = torch.stack(
            [
                (ludp_item_graph_weights(values, self.weight_mode, self.weight_scale).unsqueeze(-1) * self.neighbour_tables[m][neighbours]).sum(1)
                for m, (values, neighbours) in enumerate(self._neighbours(features))
            ],
            dim=0,
        )  # [M, B, d]
        if self.fusion.fusion != "attention":
            return self.fusion(stacked)
        return (self.fusion.weights(stacked).t().unsqueeze(-1) * stacked).sum(dim=0)
