"""Multi-KG4Rec (Wang et al., Expert Systems with Applications 268, 2025) and its KGAT ablation.

Pipeline per forward pass (all inside autograd):

1. Collaborative KG (users, items, entities; CF + KG relations and inverses), built once from the inputs.
   Items linked to an entity that a lower-indexed item holds get their own node and a "same entity as"
   relation to it (``trainer.kg``); the relation tables are sized from the built CKG, so they cover it.
2. Multimodal item vectors (``fusion != "none"``): each modality's features are reduced to ``embedding_dim``
   by Linear + LeakyReLU; every item reads a cached BFS sequence of its ``sequence_length`` nearest CKG
   nodes (itself first, sorted by hop); the Bi-Transformer fuses the per-modality token sequences; the
   item's output tokens of all modalities are concatenated and mapped to ``embedding_dim``.
3. Ego embedding of every node = ID embedding (+ the multimodal vector for item nodes).
4. Knowledge-aware attention π(h, r, t) = (W_r e_t)ᵀ tanh(W_r e_h + e_r) on ego embeddings, normalised
   by a segment softmax over each head's neighbours.
5. Bi-Interaction layers (sizes ``layer_dims``); ego and L2-normalised layer outputs are concatenated;
   score = e_uᵀ e_i.

Loss = BPR + λ‖Θ‖² on the batch's ego rows + ``kg_weight`` · TransR L_KG on a KG batch sampled inside
:meth:`MultiKG4Rec.loss_terms` (uniform KG edges, tails corrupted uniformly over all CKG nodes, or over the
entity/item nodes only with ``kg_negative_tails: kg_nodes``; torch's RNG).

Interpretations of the paper are listed in docs/results/multikg4rec.md. Options that are not the paper's (session 19):
``aggregator: linear`` (LightGCN's layer and layer mean instead of 5.; ``message_dropout`` is then unused),
``edge_weights: symmetric | attention_symmetric`` (instead of 4.), ``attention_gradient``, ``fusion_gate_init``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.graphs import EdgePattern, edge_dot, edge_weighted_sum
from trainer.kg import (
    N_CF_RELATIONS,
    CollaborativeKG,
    bfs_sequences,
    build_collaborative_kg,
    filter_kg,
    neighbour_mean_features,
    segment_softmax,
    transr_distance_grouped,
    transr_loss,
)
from trainer.losses import bpr_loss, l2_reg
from trainer.models.base import (
    BPRBatch,
    ModelConfig,
    ModelInputError,
    ModelInputs,
    Recommender,
    RowIds,
    RowKind,
)
from trainer.modules.multikg4rec_transformer import BiTransformer, leaky_projection

logger = logging.getLogger(__name__)

NODE_ENTITY, NODE_ITEM, NODE_USER, NODE_PADDING = 0, 1, 2, 3
COLD_START_ENCODERS = ("multimodal", "neighbour_mean")
KG_NEGATIVE_TAILS = ("all_nodes", "kg_nodes")
AGGREGATORS = ("bi_interaction", "linear")
EDGE_WEIGHTS = ("attention", "symmetric", "attention_symmetric")
_DIRECTION = re.compile(r"^\s*([^-\s>]+)\s*->\s*([^-\s>]+)\s*$")


@dataclass
class MultiKG4RecConfig(ModelConfig):
    """Hyperparameters; defaults are the paper's settings where it gives them.

    ``fusion``: ``bi`` (both directions), ``<a>-><b>`` (only modality b's cross attention reads a),
    ``self`` (per-modality transformers, no cross-modal exchange), or ``none`` (no multimodal features:
    the KGAT ablation).

    ``sparse_edge_products``: compute the attention logits and each layer's neighbourhood as sparse products
    (no [n_edges, d] tensor formed or kept for backward) instead of per-edge gathers + ``index_add``; the
    same function, different float rounding. ``None`` (default) = on for CPU tensors, where it is several
    times faster, off on CUDA, where a one-run check on an H100 found it ~8% slower per epoch on ML-100K;
    turn it on there to save GPU memory on large KGs.

    ``cold_start_encoder``: what a new item gets from its modality features. ``neighbour_mean`` (default since
    session 9): the similarity-weighted mean of the final embeddings of its top-k feature neighbours (k = 30)
    (``trainer.modules.cold_start``, the encoder every model without its own gets at export; KGAT always has this
    one). ``multimodal``: what the model gives an isolated item node (``ColdStartItemEncoder``; needs a fusion other
    than ``none``). On 336 held-out ML-100K items the neighbour mean ranked 0.23 / 0.21 Recall@20 on two held-out
    splits against 0.10 / 0.14 for ``multimodal`` (docs/results/coldstart.md, session 9).
    """

    embedding_dim: int = 64
    relation_dim: int = 64
    layer_dims: list[int] = field(default_factory=lambda: [64, 32, 16])
    message_dropout: float = 0.1
    reg_weight: float = 1e-5
    fusion: str = "bi"
    sequence_length: int = 8
    max_hops: int = 3
    n_blocks: int = 3
    n_heads: int = 8
    ffn_multiplier: int = 2
    transformer_dropout: float = 0.1
    kg_weight: float = 1.0
    kg_batch_size: int = 2048
    kg_reg_weight: float = 1e-5
    kg_normalize: bool = True
    # corrupted TransR tails: "all_nodes" (every CKG node, users included, as KGAT's reference code draws them; the
    # default, chosen on VALID in session 12) or "kg_nodes" (entity and item nodes only: no KG-loss gradient reaches
    # user rows; valid R@20 0.010 lower at convergence on ml-100k-mm, docs/results/multikg4rec.md)
    kg_negative_tails: str = "all_nodes"
    multimodal_refresh_every: int = 1
    min_entity_triples: int = 10
    min_relation_triples: int = 50
    sparse_edge_products: bool | None = None
    cold_start_encoder: str = "neighbour_mean"
    # Not the paper's model (our modifications, docs/results/multikg4rec.md "Session 19"). aggregator: "bi_interaction"
    # (the paper's and KGAT's) or "linear" (LightGCN's: a layer is the weighted neighbour sum, with no transform,
    # non-linearity or dropout, and the representation is the mean over layers 0..L; every layer_dims entry must then
    # equal embedding_dim). edge_weights: "attention" (the paper's knowledge-aware attention), "symmetric"
    # (LightGCN's 1/sqrt(deg_h·deg_t) over the CKG's edges, no attention) or "attention_symmetric" (the symmetric
    # weights rescaled by deg_h·π(h,r,t), whose mean over each head's edges is 1: π·sqrt(deg_h/deg_t); a uniform
    # attention gives LightGCN's weights exactly).
    # attention_gradient false: the attention is computed every step from the current embeddings but outside autograd
    # (as KGAT's reference code, which recomputes it once per epoch): its parameters then learn from TransR only.
    aggregator: str = "bi_interaction"
    edge_weights: str = "attention"
    attention_gradient: bool = True
    # initial value of the learned scalar gate on the fused multimodal vector (ours, docs/results/multikg4rec.md): 0 starts
    # from the structural (KGAT) model
    fusion_gate_init: float = 0.0

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ModelInputError(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        if self.edge_weights not in EDGE_WEIGHTS:
            raise ModelInputError(f"edge_weights must be one of {EDGE_WEIGHTS}, got {self.edge_weights!r}")
        if self.aggregator == "linear" and any(size != self.embedding_dim for size in self.layer_dims):
            raise ModelInputError(
                f"aggregator 'linear' keeps the embedding size: every layer_dims entry must be embedding_dim "
                f"({self.embedding_dim}), got {self.layer_dims}"
            )
        if not math.isfinite(self.fusion_gate_init):
            raise ModelInputError(f"fusion_gate_init must be a finite number, got {self.fusion_gate_init!r}")
        if self.kg_negative_tails not in KG_NEGATIVE_TAILS:
            raise ModelInputError(
                f"kg_negative_tails must be one of {KG_NEGATIVE_TAILS}, got {self.kg_negative_tails!r}"
            )
        if self.cold_start_encoder not in COLD_START_ENCODERS:
            raise ModelInputError(
                f"cold_start_encoder must be one of {COLD_START_ENCODERS}, got {self.cold_start_encoder!r}"
            )


def parse_fusion(fusion: str, modalities: list[str]) -> list[list[int]] | None:
    """Cross-attention sources per modality (positions in ``modalities``), or None for ``none``.

    Raises:
        ModelInputError: unknown mode or a direction naming a modality the dataset does not have.
    """
    mode = fusion.strip()
    if mode == "none":
        return None
    if not modalities:
        raise ModelInputError(f"fusion {fusion!r} needs item features, but the dataset has no modality")
    everyone = list(range(len(modalities)))
    if mode == "bi":
        return [everyone for _ in modalities]
    if mode == "self":
        return [[m] for m in everyone]
    match = _DIRECTION.match(mode)
    if match is None:
        raise ModelInputError(
            f"fusion must be 'bi', 'self', 'none' or '<modality>-><modality>', got {fusion!r}"
        )
    source, target = match.groups()
    for name in (source, target):
        if name not in modalities:
            raise ModelInputError(f"fusion {fusion!r} names modality {name!r}; the dataset has {modalities}")
    if source == target:
        raise ModelInputError(f"fusion {fusion!r} must name two different modalities")
    src, dst = modalities.index(source), modalities.index(target)
    return [[m] if m != dst else [dst, src] for m in everyone]


class BiInteraction(nn.Module):
    """KGAT's Bi-Interaction aggregator: LeakyReLU(W₁(e_h + e_N)) + LeakyReLU(W₂(e_h ⊙ e_N))"""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.sum_linear = nn.Linear(in_dim, out_dim)
        self.product_linear = nn.Linear(in_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.sum_linear.weight)
        nn.init.xavier_uniform_(self.product_linear.weight)

    def forward(self, ego: Tensor, neighbourhood: Tensor) -> Tensor:
        summed = F.leaky_relu(self.sum_linear(ego + neighbourhood), 0.2)
        product = F.leaky_relu(self.product_linear(ego * neighbourhood), 0.2)
        return self.dropout(summed + product)


class MultimodalItemEncoder(nn.Module):
    """Item token sequences (per modality) -> fused multimodal item vectors [B, d].

    Inputs: per modality raw features of the sequence's nodes float [B, n, d_m]; node types int64 [B, n];
    hops int64 [B, n]; padding bool [B, n]. The item itself is token 0.
    """

    def __init__(
        self, modality_dims: list[int], sources: list[list[int]], dim: int, config: MultiKG4RecConfig
    ):
        super().__init__()
        self.projections = nn.ModuleList(leaky_projection(d_m, dim) for d_m in modality_dims)
        self.type_embedding = nn.Embedding(4, dim)
        self.hop_embedding = nn.Embedding(config.max_hops + 1, dim)
        nn.init.normal_(self.type_embedding.weight, std=0.02)
        nn.init.normal_(self.hop_embedding.weight, std=0.02)
        self.transformer = BiTransformer(
            sources,
            dim,
            config.n_blocks,
            config.n_heads,
            config.ffn_multiplier * dim,
            config.transformer_dropout,
        )
        self.fuse = nn.Linear(len(modality_dims) * dim, dim)
        # gated output, gate initialised at fusion_gate_init (default 0: training starts from the structural (KGAT)
        # model) and learns how much multimodal signal to add; tanh bounds each coordinate by the gate
        self.gate = nn.Parameter(torch.full((1,), float(config.fusion_gate_init)))

    def project(self, features: list[Tensor]) -> list[Tensor]:
        """Per modality raw features [..., d_m] -> reduced features [..., d] (row-wise Linear + LeakyReLU)."""
        return [projection(x) for projection, x in zip(self.projections, features, strict=True)]

    def forward(self, features: list[Tensor], types: Tensor, hops: Tensor, padding: Tensor | None) -> Tensor:
        return self.encode_projected(self.project(features), types, hops, padding)

    def encode_projected(
        self, projected: list[Tensor], types: Tensor, hops: Tensor, padding: Tensor | None
    ) -> Tensor:
        """:meth:`forward` from already reduced token features (per modality float [B, n, d])."""
        position = self.type_embedding(types) + self.hop_embedding(hops)
        outputs = self.transformer([x + position for x in projected], padding)
        return self.gate * torch.tanh(self.fuse(torch.cat([out[:, 0] for out in outputs], dim=-1)))


class LinearAggregator(nn.Module):
    """LightGCN's layer: the (weighted) neighbourhood sum itself; no parameters. The ego input is unused."""

    def forward(self, ego: Tensor, neighbourhood: Tensor) -> Tensor:
        return neighbourhood


class ColdStartItemEncoder(nn.Module):
    """A new item's modality features -> its embedding in the item space (what an isolated item node gets).

    The new item has no ID embedding (zero), no interactions and no KG edges, so its BFS sequence is itself
    only and every Bi-Interaction layer sees an empty neighbourhood. Positional inputs: one float [B, d_m]
    per modality in ``sorted(modality)`` order; output [B, sum of the representation sizes].
    """

    def __init__(self, model: MultiKG4Rec) -> None:
        super().__init__()
        self.multimodal = model.multimodal
        self.layers = model.layers
        self.layer_mean = model.config.aggregator == "linear"

    def forward(self, *features: Tensor) -> Tensor:
        batch = features[0].shape[0]
        sequences = [x.unsqueeze(1) for x in features]
        types = torch.full((batch, 1), NODE_ITEM, dtype=torch.long, device=features[0].device)
        hops = torch.zeros((batch, 1), dtype=torch.long, device=features[0].device)
        ego = self.multimodal(sequences, types, hops, None)
        return _stack_layers(ego, self.layers, lambda x: torch.zeros_like(x), self.layer_mean)


def _stack_layers(ego: Tensor, layers: nn.ModuleList, neighbourhood, layer_mean: bool = False) -> Tensor:
    """[ego ‖ normalize(layer_1) ‖ ... ], or with ``layer_mean`` the mean of ego and the (unnormalised) layer
    outputs (LightGCN's combination; all the same size); ``neighbourhood(x)`` aggregates x over each node's
    neighbours."""
    if layer_mean:
        total = current = ego
        for layer in layers:
            current = layer(current, neighbourhood(current))
            total = total + current
        return total / (len(layers) + 1)
    outputs = [ego]
    current = ego
    for layer in layers:
        current = layer(current, neighbourhood(current))
        outputs.append(F.normalize(current, dim=-1))
    return torch.cat(outputs, dim=-1)


class MultiKG4Rec(Recommender):
    config_class = MultiKG4RecConfig

    def __init__(self, inputs: ModelInputs, config: MultiKG4RecConfig) -> None:
        super().__init__(inputs, config)
        if not config.layer_dims:
            raise ModelInputError("layer_dims must list at least one layer size")
        self.modalities = sorted(inputs.features)
        sources = parse_fusion(config.fusion, self.modalities)
        kg = inputs.kg
        if kg is None:
            logger.warning("no knowledge graph: Multi-KG4Rec runs on the user-item part of the CKG only")
        triples, n_entities, n_dataset_relations, item_entity = None, 0, 0, None
        kept_entities = np.zeros(0, dtype=np.int64)
        if kg is not None:
            n_dataset_relations = kg.n_relations
            triples, n_entities, item_entity, kept_entities = filter_kg(
                kg.triples,
                kg.n_entities,
                kg.item_entity,
                config.min_entity_triples,
                config.min_relation_triples,
            )
        ckg = build_collaborative_kg(
            inputs.train_matrix, triples, n_entities, n_dataset_relations, item_entity
        )
        self.n_nodes = ckg.n_nodes
        # what each node and relation row stands for (row_keys; numpy, CPU, not saved: rebuilt with the model)
        self._node_layout = (kept_entities, ckg.item_node, ckg.user_node)
        self._n_dataset_relations = n_dataset_relations
        self._has_same_entity_relation = ckg.same_entity_relation is not None
        # from the CKG, not the dataset: it adds the "same entity as" relation when items share an entity
        self.n_kg_relations = ckg.n_kg_relations
        self.n_relations = ckg.n_relations
        device = inputs.device
        self._register_graph(ckg, device)

        dim = config.embedding_dim
        self.node_embedding = nn.Embedding(ckg.n_nodes, dim)
        nn.init.xavier_uniform_(self.node_embedding.weight)
        # one row per CKG relation (CF, KG incl. "same entity as", inverses): e_r [n_relations, relation_dim],
        # W_r [n_relations, d, relation_dim]
        self.relation_embedding = nn.Embedding(ckg.n_relations, config.relation_dim)
        nn.init.xavier_uniform_(self.relation_embedding.weight)
        self.relation_projection = nn.Parameter(torch.empty(ckg.n_relations, dim, config.relation_dim))
        nn.init.xavier_uniform_(self.relation_projection)
        sizes = [dim, *config.layer_dims]
        self.layers = nn.ModuleList(
            BiInteraction(sizes[k], sizes[k + 1], config.message_dropout)
            if config.aggregator == "bi_interaction"
            else LinearAggregator()
            for k in range(len(config.layer_dims))
        )
        self.multimodal: MultimodalItemEncoder | None = None
        self._train_steps = 0
        self._cached_multimodal: Tensor | None = None
        if sources is not None:
            modality_dims = [int(inputs.features[m].shape[1]) for m in self.modalities]
            self.multimodal = MultimodalItemEncoder(modality_dims, sources, dim, config)
            self._register_sequences(ckg, inputs, device)

    # ------------------------------------------------------------------ construction helpers
    def _register_graph(self, ckg: CollaborativeKG, device: torch.device) -> None:
        def buffer(name: str, array: np.ndarray) -> None:
            self.register_buffer(
                name, torch.as_tensor(array, dtype=torch.long, device=device), persistent=False
            )

        buffer("edge_heads", ckg.heads)
        buffer("edge_tails", ckg.tails)
        if self.config.edge_weights != "attention":
            # symmetric: LightGCN's 1/sqrt(deg_h·deg_t), degrees counted over the CKG's edges (every edge has its
            # inverse); attention_symmetric: sqrt(deg_h/deg_t), what turns a softmax over the head's edges into it when
            # the attention is uniform. Only the one the config uses is kept (one float per edge).
            degree = np.bincount(ckg.heads, minlength=ckg.n_nodes).astype(np.float64)
            head_degree, tail_degree = degree[ckg.heads], degree[ckg.tails]
            if self.config.edge_weights == "symmetric":
                factors = 1.0 / np.sqrt(head_degree * tail_degree)
            else:
                factors = np.sqrt(head_degree / tail_degree)
            self.register_buffer(
                "edge_degree_factors", torch.as_tensor(factors, dtype=torch.float32, device=device), persistent=False
            )
        buffer("edge_relations", ckg.relations)
        buffer("item_node", ckg.item_node)
        buffer("user_node", ckg.user_node)
        # W_r e is computed once per (relation, node) pair, not once per edge; edges refer to pairs by index
        projection_nodes: list[np.ndarray] = []
        projection_ptr = [0]
        head_index, tail_index = np.empty_like(ckg.heads), np.empty_like(ckg.heads)
        for r in range(ckg.n_relations):
            lo, hi = ckg.relation_ptr[r], ckg.relation_ptr[r + 1]
            unique, inverse = np.unique(
                np.concatenate([ckg.heads[lo:hi], ckg.tails[lo:hi]]), return_inverse=True
            )
            head_index[lo:hi] = projection_ptr[-1] + inverse[: hi - lo]
            tail_index[lo:hi] = projection_ptr[-1] + inverse[hi - lo :]
            projection_nodes.append(unique)
            projection_ptr.append(projection_ptr[-1] + len(unique))
        buffer(
            "projection_nodes",
            np.concatenate(projection_nodes) if projection_nodes else np.zeros(0, np.int64),
        )
        buffer("edge_head_projection", head_index)
        buffer("edge_tail_projection", tail_index)
        self.projection_ptr = [int(p) for p in projection_ptr]
        n_pairs = projection_ptr[-1]
        buffer("pair_relations", np.repeat(np.arange(ckg.n_relations), np.diff(projection_ptr)))
        # attention logits: one entry per edge at (its (relation, head) pair, its (relation, tail) pair);
        # edges sorted by (relation, head, tail) and free of exact repeats are already in that CSR order
        self.pair_pattern = EdgePattern(head_index, tail_index, (n_pairs, n_pairs))
        # propagation: edges between the same two nodes under different relations add their weights
        pairs, merge_index = np.unique(ckg.heads * ckg.n_nodes + ckg.tails, return_inverse=True)
        buffer("edge_merge_index", merge_index.reshape(-1))
        self.node_pattern = EdgePattern(pairs // ckg.n_nodes, pairs % ckg.n_nodes, (ckg.n_nodes, ckg.n_nodes))
        # TransR samples the KG part only (never the CF edges): no KG edges -> no KG loss
        self.kg_edge_range = (int(ckg.relation_ptr[N_CF_RELATIONS]), ckg.n_edges)
        # corrupted tails: every node, or the entity/item nodes only (users are the last nodes of the CKG)
        n_kg_nodes = int(ckg.n_nodes - len(ckg.user_node))
        assert len(ckg.user_node) == 0 or int(ckg.user_node.min()) == n_kg_nodes
        self.n_corruption_nodes = int(ckg.n_nodes) if self.config.kg_negative_tails == "all_nodes" else n_kg_nodes
        if self.kg_edge_range[0] == self.kg_edge_range[1] and self.config.kg_weight > 0:
            logger.warning("the collaborative KG has no KG edges: the TransR loss (kg_weight) is skipped")

    def _register_sequences(self, ckg: CollaborativeKG, inputs: ModelInputs, device: torch.device) -> None:
        """BFS sequences of every item (built once per model = per training run) + token tables."""
        config = self.config
        nodes, hops = bfs_sequences(ckg.adjacency(), ckg.item_node, config.sequence_length, config.max_hops)
        padding = nodes < 0
        token_nodes, token_rows = np.unique(
            np.where(padding, ckg.item_node[:, None], nodes), return_inverse=True
        )
        token_rows = token_rows.reshape(nodes.shape)
        token_rows[padding] = len(token_nodes)  # the all-zero padding row
        node_types = ckg.node_types()
        types = np.where(padding, NODE_PADDING, node_types[np.where(padding, 0, nodes)])
        long = {"device": device, "dtype": torch.long}
        self.register_buffer("sequence_token_rows", torch.as_tensor(token_rows, **long), persistent=False)
        self.register_buffer("sequence_types", torch.as_tensor(types, **long), persistent=False)
        self.register_buffer(
            "sequence_hops", torch.as_tensor(np.where(padding, 0, hops), **long), persistent=False
        )
        self.register_buffer("sequence_padding", torch.as_tensor(padding, device=device), persistent=False)
        for position, name in enumerate(self.modalities):
            table = neighbour_mean_features(ckg, inputs.features[name], token_nodes)
            table = np.vstack([table, np.zeros((1, table.shape[1]), np.float32)])
            self.register_buffer(
                f"token_features_{position}", torch.as_tensor(table, device=device), persistent=False
            )
        logger.info(
            "BFS sequences: %d items x %d tokens, %.1f%% padding, mean hop %.2f",
            nodes.shape[0],
            nodes.shape[1],
            100 * padding.mean(),
            hops[~padding].mean(),
        )

    # ------------------------------------------------------------------ forward pieces
    def multimodal_item_vectors(self) -> Tensor:
        """Fused multimodal vector of every item, float [n_items, d]."""
        assert self.multimodal is not None
        # the reduction is row-wise, so it runs once per distinct token node, before the rows are gathered
        # into sequences (a node appears in many items' sequences)
        tables = self.multimodal.project(
            [getattr(self, f"token_features_{m}") for m in range(len(self.modalities))]
        )
        tokens = [table[self.sequence_token_rows] for table in tables]
        return self.multimodal.encode_projected(
            tokens, self.sequence_types, self.sequence_hops, self.sequence_padding
        )

    def ego_embeddings(self) -> Tensor:
        """Layer-0 embedding of every CKG node, float [n_nodes, d].

        In training with ``multimodal_refresh_every = N > 1``, the Bi-Transformer runs (with gradient) on
        one step in N; the other steps reuse its last output, detached (a stated cost/accuracy trade-off).
        """
        ego = self.node_embedding.weight
        if self.multimodal is None:
            return ego
        refresh_every = max(1, self.config.multimodal_refresh_every)
        if not self.training or refresh_every == 1:
            multimodal = self.multimodal_item_vectors()
        elif self._train_steps % refresh_every == 0 or self._cached_multimodal is None:
            multimodal = self.multimodal_item_vectors()
            self._cached_multimodal = multimodal.detach()
        else:
            multimodal = self._cached_multimodal
        if self.training:
            self._train_steps += 1
        return ego.index_add(0, self.item_node, multimodal)

    def relation_projected(self, ego: Tensor) -> Tensor:
        """W_r e for every (relation, node) pair of the CKG, float [n_pairs, relation_dim]."""
        parts = []
        for r in range(self.n_relations):
            lo, hi = self.projection_ptr[r], self.projection_ptr[r + 1]
            if hi > lo:
                parts.append(ego[self.projection_nodes[lo:hi]] @ self.relation_projection[r])
        return torch.cat(parts, dim=0)

    def _sparse_edge_products(self, device: torch.device) -> bool:
        chosen = self.config.sparse_edge_products
        return device.type == "cpu" if chosen is None else bool(chosen)

    def attention(self, ego: Tensor) -> Tensor:
        """Knowledge-aware attention per edge, softmax over each head's neighbours; float [n_edges].

        tanh(W_r e_h + e_r) depends on the (relation, head) pair only; with sparse edge products it is formed
        once per pair and the per-edge dot products with W_r e_t run as one sampled sparse product.
        """
        projected = self.relation_projected(ego)
        if self._sparse_edge_products(ego.device):
            queries = torch.tanh(projected + self.relation_embedding(self.pair_relations))
            logits = edge_dot(self.pair_pattern, queries, projected)
        else:
            tails = projected[self.edge_tail_projection]
            heads = projected[self.edge_head_projection]
            logits = (tails * torch.tanh(heads + self.relation_embedding(self.edge_relations))).sum(-1)
        return segment_softmax(logits, self.edge_heads, self.n_nodes)

    def edge_weights(self, ego: Tensor) -> Tensor:
        """Propagation weight of every CKG edge, float [n_edges]: the attention, the fixed symmetric weights, or the
        attention rescaled by sqrt(deg_h/deg_t) (``edge_weights``)."""
        if self.config.edge_weights == "symmetric":
            return self.edge_degree_factors.to(ego.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.attention_gradient):
            attention = self.attention(ego)
        if self.config.edge_weights == "attention_symmetric":
            return attention * self.edge_degree_factors.to(ego.dtype)
        return attention

    def propagate(self, ego: Tensor) -> Tensor:
        """Layer outputs of every node: concatenated, float [n_nodes, d + sum(layer_dims)], or with the linear
        aggregator their mean, float [n_nodes, d].

        Each layer's neighbourhood is Σ_t w(h,r,t) e_t (w = π or the symmetric weights): one sparse product with the
        weights as values (sparse edge products), or per-edge messages summed with ``index_add``.
        """
        weights = self.edge_weights(ego)
        layer_mean = self.config.aggregator == "linear"
        if self._sparse_edge_products(ego.device):
            merged = weights.new_zeros(self.node_pattern.nnz).index_add(0, self.edge_merge_index, weights)
            return _stack_layers(
                ego, self.layers, lambda x: edge_weighted_sum(self.node_pattern, merged, x), layer_mean
            )
        per_edge = weights.unsqueeze(-1)

        def neighbourhood(x: Tensor) -> Tensor:
            return torch.zeros_like(x).index_add(0, self.edge_heads, per_edge * x[self.edge_tails])

        return _stack_layers(ego, self.layers, neighbourhood, layer_mean)

    # ------------------------------------------------------------------ contract
    def representations(self) -> tuple[Tensor, Tensor]:
        final = self.propagate(self.ego_embeddings())
        return final[self.user_node], final[self.item_node]

    def loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        ego = self.ego_embeddings()
        final = self.propagate(ego)
        users = self.user_node[batch.users]
        positives, negatives = self.item_node[batch.pos_items], self.item_node[batch.neg_items]
        u, p, n = final[users], final[positives], final[negatives]
        terms = {
            "bpr": bpr_loss((u * p).sum(-1), (u * n).sum(-1)),
            "reg": self.config.reg_weight * l2_reg(ego[users], ego[positives], ego[negatives]),
        }
        if self.config.kg_weight > 0:
            terms.update(self.kg_loss_terms(ego))
        return terms

    def kg_loss_terms(self, ego: Tensor) -> dict[str, Tensor]:
        """TransR on a batch of KG edges (uniform, with inverses) with tails corrupted uniformly over every CKG node
        (``kg_negative_tails: all_nodes``) or over the entity and item nodes only (``kg_nodes``). Empty (no term)
        when the CKG has no KG edge.

        Edges are drawn from the CKG's KG part, so "same entity as" edges are sampled like any KG triple.
        """
        lo, hi = self.kg_edge_range
        if lo == hi:
            return {}
        device = ego.device
        # edges are stored sorted by relation, so sorted edge indices come grouped by relation
        edges = torch.randint(lo, hi, (self.config.kg_batch_size,), device=device).sort().values
        heads, relations, tails = self.edge_heads[edges], self.edge_relations[edges], self.edge_tails[edges]
        corrupted = torch.randint(0, self.n_corruption_nodes, (len(edges),), device=device)
        relation_table, projection_table = self.relation_embedding.weight, self.relation_projection
        e_h, e_t, e_c = ego[heads], ego[tails], ego[corrupted]
        normalize = self.config.kg_normalize
        positive = transr_distance_grouped(e_h, relations, e_t, relation_table, projection_table, normalize)
        negative = transr_distance_grouped(e_h, relations, e_c, relation_table, projection_table, normalize)
        return {
            "kg": self.config.kg_weight * transr_loss(positive, negative),
            "kg_reg": self.config.kg_reg_weight * l2_reg(e_h, relation_table[relations], e_t, e_c),
        }

    def row_tables(self) -> dict[str, RowKind]:
        return {
            "node_embedding.weight": "node",
            "relation_embedding.weight": "relation",
            "relation_projection": "relation",
        }

    def row_keys(self, ids: RowIds) -> dict[str, list[str]]:
        """Keys of the node rows (``entity:<id>`` for a KG entity, also when an item holds its node, ``item:<id>`` for
        an item with a node of its own, ``user:<id>``) and of the relation rows (``interact``, ``interacted by``,
        ``kg:<relation id>``, ``same entity as``, each KG one also as ``inverse <key>``); ``ids`` must be those of the
        dataset the model was built on."""
        kept_entities, item_node, user_node = self._node_layout
        if len(ids.entity_ids) < (int(kept_entities.max()) + 1 if len(kept_entities) else 0):
            raise ValueError(f"{len(ids.entity_ids)} entity ids given for a KG with entity index {kept_entities.max()}")
        if len(ids.relation_ids) != self._n_dataset_relations:
            raise ValueError(f"{len(ids.relation_ids)} relation ids given for a KG of {self._n_dataset_relations}")
        nodes = [f"entity:{ids.entity_ids[e]}" for e in kept_entities]
        nodes += [""] * (self.n_nodes - len(nodes))
        for row, node in enumerate(item_node):
            if node >= len(kept_entities):  # an item with a node of its own
                nodes[node] = f"item:{ids.item_ids[row]}"
        for row, node in enumerate(user_node):
            nodes[node] = f"user:{ids.user_ids[row]}"
        kg_relations = [f"kg:{name}" for name in ids.relation_ids]
        if self._has_same_entity_relation:
            kg_relations.append("same entity as")
        relations = ["interact", "interacted by", *kg_relations, *(f"inverse {key}" for key in kg_relations)]
        return {**super().row_keys(ids), "node": nodes, "relation": relations}

    def item_encoder(self) -> nn.Module | None:
        """``ColdStartItemEncoder`` with ``cold_start_encoder: multimodal``; None (the export's feature-neighbour
        mean) with ``neighbour_mean`` or without multimodal fusion."""
        if self.multimodal is None or self.config.cold_start_encoder == "neighbour_mean":
            return None
        return ColdStartItemEncoder(self)
