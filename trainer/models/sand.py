"""SAND: Separate Alignment aNd Distancing of modal-generic and modal-unique representations.

Per modality m (any number M ≥ 2, any feature dimension), item features are standardised, projected and
split into a generic part E_g^m and a unique part E_q^m ([n_items, p] each, p = embedding_dim / (2M)).

* User-item graph: per modality, users have a free embedding [n_users, 2p] and items their [E_g^m ‖ E_q^m];
  symmetric-normalised LightGCN propagation, layers 0..L summed. All modalities propagate as the column
  blocks of one [n_users + n_items, embedding_dim] matrix (propagation is column-wise, so this is exactly
  M separate GCNs, at LightGCN's cost for the same width).
* Item-item graph: per modality, binary cosine top-k graph of the raw features, symmetric-normalised;
  mixed with fixed weights S = Σ_m w_m S_m (the paper's W_s·S_v + (1 - W_s)·S_t for two modalities);
  H = S^K · E_id with a free item ID embedding [n_items, embedding_dim].
* item = [g_1 ‖ q_1 ‖ g_2 ‖ q_2 ‖ ...] (after the GCN) + H;
  user = [a_1·u_1 ‖ a_2·u_2 ‖ ...] with a_m = softmax_m(wᵀ tanh(W u_m + b)) per user.
* loss = BPR + reg + α·align(E_g over all modality pairs) + β·Σ_m distance(E_q^m, E_g^m), both on the
  distinct positive items of the batch (optionally ∪ negatives), computed before the graph convolution; an item
  whose feature row in modality m is all zero (a movie without KG facts) is left out of every term of m.
  With ``distance: mi`` the CLUB q-networks are fitted in :meth:`auxiliary_loss_terms` (one estimator
  step per batch, on the same within-modality (generic, unique) pairs the bound is evaluated on).

Ablations: ``align: none`` (w/o alignment), ``distance: none`` (w/o distancing), both (w/o both).
Our modifications, each off by default (see :class:`SANDConfig`): ``item_id_in_graph``, ``user_attention: uniform``,
``layer_combination: mean``, ``modal_scale`` and ``knn_scale``.
Every call of :meth:`representations` recomputes everything from the current parameters (no caches).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from trainer.graphs import (
    knn_graph,
    normalized_bipartite_adjacency,
    rows_with_features,
    sym_normalize,
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
from trainer.modules.alignment import ModalSplitProjection, SeparateAlignmentDistancing, select_modalities
from trainer.modules.sand_sparse import SparsePropagation

logger = logging.getLogger(__name__)

USER_ATTENTIONS = ("softmax", "uniform")


@dataclass
class SANDConfig(ModelConfig):
    """SAND hyperparameters (defaults: the paper's settings where it gives them).

    Attributes:
        embedding_dim: final embedding dimension D (= 2·M·p); must be divisible by 2·M.
        n_layers: user-item GCN layers L (summed with layer 0).
        knn_k: neighbours per item in each modality's item-item graph.
        knn_layers: propagation steps K on the item-item graph.
        knn_modality_weights: mixing weights w_m in sorted modality order (normalised to sum 1);
            None gives equal weights.
        align: solosim | infonce | none.
        distance: mi | l2 | none.
        alpha, beta: weights of the alignment and distancing terms.
        temperature: τ of the alignment softmax.
        club_hidden_dim: hidden width of each CLUB q-network (None: 2·p).
        attention_dim: width of the user modality attention.
        objective_on_negatives: also align/distance the batch's sampled negatives (default: the distinct
            positive items only, which keeps the in-batch softmax about 4x smaller).
        modalities: modality names to use (None: every modality of the dataset).
        feature_dims: expected {modality: feature dimension}; a mismatch raises ModelInputError.
        feature_dtype: float32 (default) | bfloat16: precision in which the standardised item features are
            stored and projected (see ``FEATURE_DTYPES``); the parameters and everything after the
            projection stay float32.
        transposed_feature_copy: keep a second, transposed copy of the standardised features for the
            projection's weight gradient (faster on CPU, see ``_ConstantFeatureLinear``; costs one more feature
            table of memory). None (default): keep it when the model is on the CPU; not on CUDA, where it was
            not measured and would cost GPU memory.
        item_id_in_graph: OUR EXTENSION, not in the paper (default False = the paper's model). When True the
            free item ID table E_id is also added to every item's layer-0 row of the user-item graph
            ([g_1 ‖ q_1 ‖ ...] + E_id), so items get a LightGCN-style collaborative embedding besides the
            kNN term H = S^K · E_id.
        user_attention: how a user's per-modality GCN chunks are weighted: ``softmax`` (default, the paper's
            a_m = softmax_m(wᵀ tanh(W u_m + b))) or ``uniform`` (OUR MODIFICATION, not in the paper: a_m = 1/M for
            every user, no attention parameters). On ML-100K the paper's attention puts > 0.99 of every user's
            weight on one modality within a few epochs (docs/results/sand.md), which silences the other
            modalities' columns of the scores.
        layer_combination: ``sum`` (default, the paper's: GCN layers 0..L summed) or ``mean`` (OUR MODIFICATION,
            LightGCN's: divided by L + 1). H is added after the combination either way.
        modal_scale: OUR MODIFICATION (default 1.0 = the paper's): factor on the projected modal parts
            [g_1 ‖ q_1 ‖ ...] where they enter the user-item graph's layer 0 (and hence on the cold-start
            encoder's output). The alignment and distancing terms see the unscaled parts. 0 takes the content out
            of the scores (an analysis setting; needs item_id_in_graph, and new items then encode to zero).
        knn_scale: OUR MODIFICATION (default 1.0 = the paper's): factor on H = S^K · E_id where it is added to the
            items (item = GCN + knn_scale · H); 0 drops H (and, without item_id_in_graph, leaves the ID table out of
            every score).
    """

    embedding_dim: int = 64
    reg_weight: float = 1e-4
    n_layers: int = 2
    knn_k: int = 10
    knn_layers: int = 1
    knn_modality_weights: list[float] | None = None
    align: str = "solosim"
    distance: str = "mi"
    alpha: float = 0.1
    beta: float = 0.1
    temperature: float = 0.2
    club_hidden_dim: int | None = None
    attention_dim: int = 32
    objective_on_negatives: bool = False
    modalities: list[str] | None = None
    feature_dims: dict[str, int] | None = None
    item_id_in_graph: bool = False
    feature_dtype: str = "float32"
    transposed_feature_copy: bool | None = None
    user_attention: str = "softmax"
    layer_combination: str = "sum"
    modal_scale: float = 1.0
    knn_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.user_attention not in USER_ATTENTIONS:
            raise ModelInputError(f"user_attention must be one of {USER_ATTENTIONS}, got {self.user_attention!r}")
        if self.layer_combination not in LAYER_COMBINATIONS:
            raise ModelInputError(
                f"layer_combination must be one of {LAYER_COMBINATIONS}, got {self.layer_combination!r}"
            )
        self.require_finite_scale("modal_scale", "knn_scale", allow_zero=True)
        if self.modal_scale == 0 and not self.item_id_in_graph:
            raise ModelInputError(
                "modal_scale 0 removes the item features from the user-item graph, which leaves items without a "
                "layer-0 row: set item_id_in_graph: true"
            )


# Storage precision of the standardised item features, the input of the feature projection. bfloat16 halves
# their memory and runs the projection GEMMs (forward and weight gradient) in bfloat16 with float32 outputs
# added to the float32 bias; worth it on GPUs and on CPUs with native bfloat16 (AVX512-BF16 / AMX), slower
# elsewhere. Not the paper's setting: float32 is the default.
FEATURE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def part_dimension(embedding_dim: int, n_modalities: int) -> int:
    """p = embedding_dim / (2·M), with a clear error when it does not divide."""
    if embedding_dim % (2 * n_modalities) != 0 or embedding_dim <= 0:
        raise ModelInputError(
            f"embedding_dim {embedding_dim} must be a positive multiple of 2 x {n_modalities} modalities "
            f"(one generic and one unique part per modality)"
        )
    return embedding_dim // (2 * n_modalities)


def mixed_knn_adjacency(features: dict[str, Tensor], k: int, weights: list[float] | None) -> sp.csr_matrix:
    """Σ_m w_m · sym_normalize(binary cosine top-k graph of modality m) as CSR [n_items, n_items].

    An item whose features in modality m are all zero (e.g. a movie without KG facts) has cosine 0 to every item,
    so its top k would be tie order (the first k items of the catalogue for every such item); it gets only
    itself as its neighbour in that modality, as an item with features has itself as its nearest neighbour.

    Args:
        features: modality -> float [n_items, d_m] (only their row similarities are used).
        k: neighbours per item (each item is among its own candidates, as in LATTICE/FREEDOM).
        weights: per-modality weights in sorted modality order, or None for equal weights.
    """
    names = sorted(features)
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names) or min(weights) < 0 or sum(weights) <= 0:
        raise ModelInputError(
            f"knn_modality_weights must be {len(names)} non-negative numbers (for {names}), got {weights}"
        )
    total = float(sum(weights))
    mixed = None
    for name, weight in zip(names, weights, strict=False):
        neighbours, _ = knn_graph(features[name], k, exclude_self=False)
        n, k_used = neighbours.shape
        columns = neighbours.cpu().numpy().copy()
        values = np.ones((n, k_used), dtype=np.float32)
        no_features = np.flatnonzero(~rows_with_features(features[name]).cpu().numpy())
        columns[no_features] = no_features[:, None]
        values[no_features, 1:] = 0.0
        binary = sp.csr_matrix(
            (values.reshape(-1), (np.repeat(np.arange(n), k_used), columns.reshape(-1))), shape=(n, n)
        )
        binary.eliminate_zeros()
        term = sym_normalize(binary) * (weight / total)
        mixed = term if mixed is None else mixed + term
    return mixed.tocsr()


class SANDItemEncoder(nn.Module):
    """Cold-start encoder: raw modality features (positional, sorted names) -> [g_1 ‖ q_1 ‖ ...] [B, D].

    A new item has no interactions and no kNN-graph neighbourhood in the trained graphs, so it gets the
    layer-0 term of its GCN representation only (its projected, split features times ``scale``: modal_scale,
    and 1 / (L + 1) under the layer mean); the propagated user terms and H (which come from interactions and
    the item ID table) are zero for it.
    """

    def __init__(self, projection: ModalSplitProjection, scale: float = 1.0) -> None:
        super().__init__()
        self.projection = projection
        self.scale = float(scale)

    def forward(self, *features: Tensor) -> Tensor:
        if len(features) != len(self.projection.modalities):
            raise ValueError(
                f"expected {len(self.projection.modalities)} inputs {self.projection.modalities}"
            )
        parts = self.projection(dict(zip(self.projection.modalities, features, strict=False)))
        encoded = ModalSplitProjection.concatenate(parts)
        return encoded if self.scale == 1.0 else encoded * self.scale


class SANDObjectiveMixin:
    """The alignment/distancing plumbing shared by every backbone that uses SAND's objective.

    Expects ``self.objective`` (a :class:`SeparateAlignmentDistancing`), ``self.projection``, ``self.modalities`` and
    ``features_<modality>`` buffers, ``config.objective_on_negatives``, and two methods of the backbone:
    ``_forward() -> (users [n_users, d], items [n_items, d], modal parts)`` and ``_regularised_rows(batch)``
    (the batch's ID-embedding rows under the L2 penalty).
    """

    def _init_modal_objective(self, inputs: ModelInputs, config: ModelConfig) -> None:
        """Modalities, the split projection, the standardised feature buffers and the objective, for every
        backbone's constructor. ``config`` has SANDConfig's modality and objective fields (modalities,
        feature_dims, feature_dtype, embedding_dim, align, distance, alpha, beta, temperature, club_hidden_dim)."""
        if config.feature_dtype not in FEATURE_DTYPES:
            raise ModelInputError(
                f"feature_dtype must be one of {sorted(FEATURE_DTYPES)}, got {config.feature_dtype!r}"
            )
        dims = select_modalities(inputs.features, config.modalities, config.feature_dims)
        self.modalities = sorted(dims)
        self.part_dim = part_dimension(config.embedding_dim, len(self.modalities))
        features = {name: inputs.features[name].float() for name in self.modalities}
        for name, matrix in features.items():
            if matrix.shape[0] != inputs.n_items:
                raise ModelInputError(
                    f"modality {name!r} has {matrix.shape[0]} rows, expected n_items={inputs.n_items}"
                )
        self.projection = ModalSplitProjection(features, self.part_dim)
        with torch.no_grad():
            standardized = self.projection.standardize(features)
        storage = FEATURE_DTYPES[config.feature_dtype]
        if storage is torch.bfloat16 and inputs.device.type == "cpu":
            cpu_capability = torch.backends.cpu.get_cpu_capability()
            if cpu_capability != "AVX512":
                logger.warning(
                    "feature_dtype bfloat16 pays off only with native bfloat16 (AVX512-BF16/AMX CPUs, GPUs); torch's "
                    "CPU kernels here run at %s, and on such a CPU SAND's epoch was ~9x slower than with float32 "
                    "(docs/results/sand.md, session 18): use float32 on this machine",
                    cpu_capability,
                )
        transposed = config.transposed_feature_copy
        if transposed is None:
            transposed = inputs.device.type == "cpu"
        self.transposed_feature_copy = bool(transposed)
        for name in self.modalities:  # constant, standardised once (the projection's input)
            stored = standardized[name].to(storage)
            self.register_buffer(f"features_{name}", stored, persistent=False)
            if self.transposed_feature_copy:
                self.register_buffer(f"features_t_{name}", stored.t().contiguous(), persistent=False)
        self.objective = SeparateAlignmentDistancing(
            self.modalities,
            self.part_dim,
            config.align,
            config.distance,
            config.alpha,
            config.beta,
            config.temperature,
            config.club_hidden_dim,
            has_features={name: rows_with_features(matrix) for name, matrix in features.items()},
        )

    def representations(self) -> tuple[Tensor, Tensor]:
        users, items, _ = self._forward()
        return users, items

    def loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        """BPR + L2 on the batch's ID rows + the alignment and distancing terms on its distinct items."""
        u, p, n, parts = self._batch_forward(batch)
        reg = l2_reg(*self._regularised_rows(batch))
        terms = {"bpr": bpr_loss((u * p).sum(-1), (u * n).sum(-1)), "reg": self.config.reg_weight * reg}
        terms.update(self.objective.loss_terms(parts, self._objective_items(batch)))
        return terms

    def _batch_forward(
        self, batch: BPRBatch
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """(users [B, d], positives [B, d], negatives [B, d], modal parts of all items) for one batch.

        Default: the full forward, then the batch rows; backbones may compute only the rows they need.
        """
        users, items, parts = self._forward()
        return users[batch.users], items[batch.pos_items], items[batch.neg_items], parts

    def _objective_items(self, batch: BPRBatch) -> Tensor:
        """Distinct batch items the alignment/distancing terms use: positives (+ negatives if configured)."""
        negatives = batch.neg_items if self.config.objective_on_negatives else None
        return self.objective.batch_items(batch.pos_items, negatives)

    def _project_all(self) -> dict[str, tuple[Tensor, Tensor]]:
        """{modality: (E_g, E_q) [n_items, p]} of every item (the 4096-d projection is the costly part)."""
        transposed = (
            {name: getattr(self, f"features_t_{name}") for name in self.modalities}
            if self.transposed_feature_copy
            else None
        )
        return self.projection(self._features(), standardized=True, features_t=transposed)

    def _features(self, items: Tensor | None = None) -> dict[str, Tensor]:
        if items is None:
            return {name: getattr(self, f"features_{name}") for name in self.modalities}
        return {name: getattr(self, f"features_{name}")[items] for name in self.modalities}

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return self.objective.estimator_parameters()

    def auxiliary_loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        """One q-network fitting step on the (E_g^m, E_q^m) pairs of this batch's distinct items."""
        items = self._objective_items(batch)
        return self.objective.estimator_loss_terms(
            self.projection, self._features(items), standardized=True, items=items
        )


class SAND(SANDObjectiveMixin, Recommender):
    config_class = SANDConfig

    def __init__(self, inputs: ModelInputs, config: SANDConfig) -> None:
        super().__init__(inputs, config)
        self._init_modal_objective(inputs, config)
        self.user_embedding = nn.Embedding(inputs.n_users, config.embedding_dim)
        self.item_id_embedding = nn.Embedding(inputs.n_items, config.embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        if config.user_attention == "softmax":
            self.attention = nn.Linear(2 * self.part_dim, config.attention_dim)
            self.attention_query = nn.Parameter(torch.empty(config.attention_dim).uniform_(-0.1, 0.1))

        adjacency = normalized_bipartite_adjacency(inputs.train_matrix)
        self.user_item_graph = SparsePropagation(
            to_torch_sparse_csr(adjacency, inputs.device), symmetric=True
        )
        raw_features = {name: inputs.features[name].float() for name in self.modalities}
        item_graph = mixed_knn_adjacency(raw_features, config.knn_k, config.knn_modality_weights)
        self.item_item_graph = SparsePropagation(
            to_torch_sparse_csr(item_graph, inputs.device), symmetric=False
        )
        # (batch, parameter versions, grad mode, projection) handed from the auxiliary to the main step
        self._stash: tuple | None = None

    # -------------------------------------------------------------------------------------- forward

    def _propagate(
        self, parts: dict[str, tuple[Tensor, Tensor]] | None = None
    ) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """(GCN layers combined [n_users + n_items, D], knn_scale · H [n_items, D], {m: (E_g, E_q) [n_items, p]})."""
        if parts is None:
            parts = self._project_all()
        item_ego = ModalSplitProjection.concatenate(parts)
        if self.config.modal_scale != 1.0:  # our modification (see SANDConfig)
            item_ego = item_ego * self.config.modal_scale
        if self.config.item_id_in_graph:  # our extension (see SANDConfig)
            item_ego = item_ego + self.item_id_embedding.weight
        ego = torch.cat([self.user_embedding.weight, item_ego], dim=0)
        summed = ego
        current = ego
        for _ in range(self.config.n_layers):
            current = self.user_item_graph(current)
            summed = summed + current
        if self.config.layer_combination == "mean":  # our modification (see SANDConfig)
            summed = summed / (self.config.n_layers + 1)
        h = self.item_id_embedding.weight
        for _ in range(self.config.knn_layers):
            h = self.item_item_graph(h)
        if self.config.knn_scale != 1.0:  # our modification (see SANDConfig)
            h = h * self.config.knn_scale
        return summed, h, parts

    def _attend(self, user_rows: Tensor) -> Tensor:
        """User modality attention, row-wise: GCN user rows [B, D] -> [a_1·u_1 ‖ a_2·u_2 ‖ ...] [B, D]."""
        if self.config.user_attention == "uniform":
            return user_rows / len(self.modalities)
        stacked = user_rows.reshape(user_rows.shape[0], len(self.modalities), 2 * self.part_dim)  # [B, M, 2p]
        attention = torch.softmax(torch.tanh(self.attention(stacked)) @ self.attention_query, dim=1)  # [B, M]
        return (stacked * attention.unsqueeze(-1)).reshape(user_rows.shape[0], -1)

    def _forward(self) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """(users [n_users, D], items [n_items, D], {modality: (E_g, E_q) [n_items, p]})."""
        summed, h, parts = self._propagate()
        return self._attend(summed[: self.n_users]), summed[self.n_users :] + h, parts

    def _batch_forward(
        self, batch: BPRBatch
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """The batch rows of :meth:`_forward` (the attention and the item sum are row-wise, so only the
        batch's rows are computed); reuses the propagation of :meth:`auxiliary_loss_terms` for the same batch."""
        summed, h, parts = self._propagate(self._take_projection(batch))
        pos, neg = batch.pos_items, batch.neg_items
        # one gather per table (its backward: one zero-filled [n_users + n_items, D] gradient, not three)
        items = torch.cat([pos, neg])
        users, pos_rows, neg_rows = summed.index_select(
            0, torch.cat([batch.users, items + self.n_users])
        ).split([batch.users.shape[0], pos.shape[0], neg.shape[0]])
        pos_h, neg_h = h.index_select(0, items).split([pos.shape[0], neg.shape[0]])
        return self._attend(users), pos_rows + pos_h, neg_rows + neg_h, parts

    # The MI variant's auxiliary (CLUB) step needs the batch items' (E_g, E_q), i.e. rows of the projection
    # the main step computes anyway. The auxiliary step runs first and changes only the estimators, so it
    # projects all items once (with autograd) and hands the projection to the main step of the same batch;
    # the hand-over is refused if any non-estimator parameter changed in between (their version counters).

    def _parameter_versions(self) -> tuple[int, ...]:
        aux_ids = {id(p) for p in self.auxiliary_parameters()}
        return tuple(p._version for p in self.parameters() if id(p) not in aux_ids)

    def _take_projection(self, batch: BPRBatch) -> dict[str, tuple[Tensor, Tensor]] | None:
        """The auxiliary step's projection if it is for this batch and still current, else None."""
        stash, self._stash = self._stash, None
        if (
            stash is not None
            and stash[0] is batch
            and stash[1] == self._parameter_versions()
            and stash[2] == torch.is_grad_enabled()
        ):
            return stash[3]
        return None

    def auxiliary_loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        """One q-network fitting step on the (E_g^m, E_q^m) pairs of this batch's distinct items."""
        self._stash = None
        if not self.objective.has_estimator_step:
            return {}
        parts = self._project_all()
        self._stash = (batch, self._parameter_versions(), torch.is_grad_enabled(), parts)
        return self.objective.estimator_loss_terms_from_parts(parts, self._objective_items(batch))

    def _regularised_rows(self, batch: BPRBatch) -> tuple[Tensor, ...]:
        return (
            self.user_embedding(batch.users),
            self.item_id_embedding(batch.pos_items),
            self.item_id_embedding(batch.neg_items),
        )

    def row_tables(self) -> dict[str, RowKind]:
        return {"user_embedding.weight": "user", "item_id_embedding.weight": "item"}

    def item_encoder(self) -> nn.Module:
        scale = self.config.modal_scale
        if self.config.layer_combination == "mean":
            scale = scale / (self.config.n_layers + 1)
        return SANDItemEncoder(self.projection, scale)
