"""Collaborative knowledge graph (CKG) construction and KG graph operations as pure functions.

The CKG joins users, items and knowledge-graph entities into one node set:

* node layout: ``[0, n_entities)`` the KG entities, ``[n_entities, n_entities + n_own)`` one extra node per
  item without an entity node of its own, in item order, then one node per user;
* item ``i`` is the node ``item_entity[i]`` when linked and no lower-indexed item is linked to the same
  entity; else (unlinked, or sharing its entity with a lower-indexed item) its own extra node;
* relation layout: ``0`` interact (user -> item), ``1`` interacted-by (item -> user), ``2 + r`` the KG
  relation ``r`` and ``2 + n_kg_relations' + r`` its inverse, where ``n_kg_relations'`` is the dataset's
  ``n_kg_relations``, plus one when some entity is linked by several items: then the KG relation
  ``r = n_kg_relations`` is "same entity as", with one triple (item's extra node, same entity as, shared
  entity) per item that does not hold its entity's node, so that item reaches the entity's facts in one hop.
  Without shared entities the graph is exactly the one of the dataset's relations alone.

Edges are stored as three int64 vectors (never a dense matrix), sorted by (relation, head, tail), with
exact duplicates removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torch.nn import functional as F

logger = logging.getLogger(__name__)

INTERACT = 0
INTERACTED_BY = 1
N_CF_RELATIONS = 2


class KGBuildError(ValueError):
    """The interaction matrix and the knowledge graph do not fit together."""


@dataclass(frozen=True)
class CollaborativeKG:
    """The collaborative knowledge graph as sparse edge lists (numpy, CPU).

    Attributes:
        heads, relations, tails: int64 [n_edges], sorted by (relation, head, tail).
        relation_ptr: int64 [n_relations + 1]; the edges of relation ``r`` start at ``relation_ptr[r]``.
        item_node: int64 [n_items]; CKG node of each item, all distinct: the linked entity for the item of
            lowest index linked to it, otherwise an extra node in ``[n_entities, n_entities + n_own)``.
        user_node: int64 [n_users]; CKG node of each user.
        n_nodes, n_relations: sizes (relations include the two CF relations and all inverses).
        n_kg_edges: number of edges coming from KG triples (both directions, "same entity as" included), the
            rest are CF edges.
        n_same_entity_items: number of items linked to an entity whose node a lower-indexed item holds; each
            has one "same entity as" edge to that entity and one inverse edge back. 0: no such relation.
    """

    heads: np.ndarray
    relations: np.ndarray
    tails: np.ndarray
    relation_ptr: np.ndarray
    item_node: np.ndarray
    user_node: np.ndarray
    n_nodes: int
    n_relations: int
    n_kg_edges: int
    n_same_entity_items: int = 0

    @property
    def n_edges(self) -> int:
        return int(len(self.heads))

    @property
    def n_kg_relations(self) -> int:
        """KG relations without inverses, "same entity as" included when present (relation tables need
        ``N_CF_RELATIONS + 2 * n_kg_relations`` rows = ``n_relations``)."""
        return (self.n_relations - N_CF_RELATIONS) // 2

    @property
    def same_entity_relation(self) -> int | None:
        """CKG relation id of "same entity as" (its inverse: this + ``n_kg_relations``); None when absent."""
        if self.n_same_entity_items == 0:
            return None
        return N_CF_RELATIONS + self.n_kg_relations - 1

    def adjacency(self) -> sp.csr_matrix:
        """Binary scipy CSR [n_nodes, n_nodes] with a 1 at (head, tail) for every edge (relations merged)."""
        data = np.ones(self.n_edges, dtype=np.float32)
        matrix = sp.csr_matrix((data, (self.heads, self.tails)), shape=(self.n_nodes, self.n_nodes))
        matrix.data[:] = 1.0
        return matrix

    def node_types(self) -> np.ndarray:
        """int64 [n_nodes]: 0 entity (not an item), 1 item, 2 user."""
        types = np.zeros(self.n_nodes, dtype=np.int64)
        types[self.item_node] = 1
        types[self.user_node] = 2
        return types


def build_collaborative_kg(
    train: sp.spmatrix,
    triples: np.ndarray | Tensor | None = None,
    n_entities: int = 0,
    n_kg_relations: int = 0,
    item_entity: np.ndarray | Tensor | None = None,
) -> CollaborativeKG:
    """Build the CKG from training interactions and item-entity triples, with inverse relations.

    Args:
        train: scipy sparse [n_users, n_items] training interactions (non-zeros are edges).
        triples: int64 [n_triples, 3] (head entity, relation, tail entity) or None for no KG.
        n_entities, n_kg_relations: sizes of the KG's entity and relation tables.
        item_entity: int64 [n_items], linked entity per item or -1; None means no item is linked. Several
            items may be linked to one entity: the lowest-indexed one is the entity's node, every other one
            gets an extra node joined to the entity by the "same entity as" relation (module docstring).

    Raises:
        KGBuildError: wrong shapes or indices out of range.
    """
    coo = sp.coo_matrix(train)
    n_users, n_items = coo.shape
    triples_np = np.zeros((0, 3), dtype=np.int64) if triples is None else _as_numpy(triples).astype(np.int64)
    if triples_np.ndim != 2 or triples_np.shape[1] != 3:
        raise KGBuildError(
            f"triples must be int64 [n, 3] (head, relation, tail), got shape {triples_np.shape}"
        )
    links = (
        np.full(n_items, -1, dtype=np.int64)
        if item_entity is None
        else _as_numpy(item_entity).astype(np.int64)
    )
    if links.shape != (n_items,):
        raise KGBuildError(f"item_entity must have one entry per item ({n_items}), got shape {links.shape}")
    if len(triples_np):
        entity_columns = triples_np[:, [0, 2]]
        if entity_columns.min() < 0 or entity_columns.max() >= n_entities:
            raise KGBuildError(f"a triple references an entity outside [0, {n_entities})")
        if triples_np[:, 1].min() < 0 or triples_np[:, 1].max() >= n_kg_relations:
            raise KGBuildError(f"a triple references a relation outside [0, {n_kg_relations})")
    linked = links >= 0
    if (links[linked] >= n_entities).any():
        raise KGBuildError(f"item_entity references an entity outside [0, {n_entities})")
    holds_entity = entity_holders(links)
    has_own_node = ~holds_entity  # unlinked, or linked to an entity that a lower-indexed item holds
    sharing = linked & has_own_node
    n_own = int(has_own_node.sum())
    item_node = links.copy()
    item_node[has_own_node] = n_entities + np.arange(n_own, dtype=np.int64)
    user_node = n_entities + n_own + np.arange(n_users, dtype=np.int64)
    n_nodes = n_entities + n_own + n_users

    n_same_entity_items = int(sharing.sum())
    n_ckg_kg_relations = n_kg_relations
    if n_same_entity_items:
        same_entity = np.full((n_same_entity_items, 1), n_kg_relations, dtype=np.int64)
        same_entity_triples = np.hstack([item_node[sharing, None], same_entity, links[sharing, None]])
        triples_np = np.vstack([triples_np, same_entity_triples])
        n_ckg_kg_relations += 1
        logger.warning(
            "%d items are linked to a KG entity that a lower-indexed item already holds (%d shared "
            "entities); each gets its own node and a 'same entity as' edge (KG relation %d) to the entity",
            n_same_entity_items,
            len(np.unique(links[sharing])),
            n_kg_relations,
        )
    n_relations = N_CF_RELATIONS + 2 * n_ckg_kg_relations

    cf_users = user_node[coo.row.astype(np.int64)]
    cf_items = item_node[coo.col.astype(np.int64)]
    kg_heads, kg_relations, kg_tails = triples_np[:, 0], triples_np[:, 1], triples_np[:, 2]
    heads = np.concatenate([cf_users, cf_items, kg_heads, kg_tails])
    tails = np.concatenate([cf_items, cf_users, kg_tails, kg_heads])
    relations = np.concatenate(
        [
            np.full(len(cf_users), INTERACT, dtype=np.int64),
            np.full(len(cf_items), INTERACTED_BY, dtype=np.int64),
            kg_relations + N_CF_RELATIONS,
            kg_relations + N_CF_RELATIONS + n_ckg_kg_relations,
        ]
    )
    edges = np.unique(np.stack([relations, heads, tails], axis=1), axis=0)  # sorts by relation, head, tail
    relations, heads, tails = (np.ascontiguousarray(edges[:, k]) for k in range(3))
    relation_ptr = np.searchsorted(relations, np.arange(n_relations + 1)).astype(np.int64)
    n_kg_edges = int(len(relations) - relation_ptr[N_CF_RELATIONS])
    logger.info(
        "collaborative KG: %d nodes (%d entities, %d items with their own node of which %d share an entity, "
        "%d users), %d relations, %d edges (%d from KG)",
        n_nodes,
        n_entities,
        n_own,
        n_same_entity_items,
        n_users,
        n_relations,
        len(heads),
        n_kg_edges,
    )
    return CollaborativeKG(
        heads=heads,
        relations=relations,
        tails=tails,
        relation_ptr=relation_ptr,
        item_node=item_node,
        user_node=user_node,
        n_nodes=n_nodes,
        n_relations=n_relations,
        n_kg_edges=n_kg_edges,
        n_same_entity_items=n_same_entity_items,
    )


def entity_holders(item_entity: np.ndarray) -> np.ndarray:
    """Which items hold their linked entity's CKG node: the lowest-indexed item linked to each entity.

    Args:
        item_entity: int64 [n_items], linked entity per item or -1.

    Returns:
        bool [n_items]; False for unlinked items and for items whose entity a lower-indexed item holds.
    """
    links = np.asarray(item_entity, dtype=np.int64)
    linked_items = np.flatnonzero(links >= 0)
    _, first = np.unique(links[linked_items], return_index=True)  # first occurrence = lowest item index
    holds = np.zeros(len(links), dtype=bool)
    holds[linked_items[first]] = True
    return holds


def filter_kg(
    triples: np.ndarray | Tensor,
    n_entities: int,
    item_entity: np.ndarray | Tensor,
    min_entity_triples: int = 10,
    min_relation_triples: int = 50,
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """KGAT's KG preprocessing: drop rare entities and relations, then renumber the entities that remain.

    A triple is kept when both endpoints are item entities or occur in at least ``min_entity_triples``
    triples, and its relation has at least ``min_relation_triples`` such triples. Item entities keep
    their link even when all their triples are dropped. Items linked to the same entity stay linked to its
    one new id (:func:`build_collaborative_kg` then gives all but the lowest-indexed one their own node); the
    "same entity as" relation is not a KG relation here: it is added by the CKG build, after filtering.

    Args:
        triples: int64 [n, 3]; item_entity: int64 [n_items] (-1 unlinked).

    Returns:
        (triples int64 [m, 3] with new entity ids, new entity count, item_entity int64 [n_items] renumbered,
        kept int64 [new entity count]: the original id of each new entity id).
    """
    triples_np = _as_numpy(triples).astype(np.int64).reshape(-1, 3)
    links = _as_numpy(item_entity).astype(np.int64)
    is_item = np.zeros(n_entities, dtype=bool)
    is_item[links[links >= 0]] = True
    occurrences = np.bincount(triples_np[:, [0, 2]].ravel(), minlength=n_entities)
    frequent = is_item | (occurrences >= min_entity_triples)
    keep = frequent[triples_np[:, 0]] & frequent[triples_np[:, 2]]
    relation_counts = np.bincount(triples_np[keep, 1], minlength=int(triples_np[:, 1].max(initial=-1)) + 1)
    keep &= relation_counts[triples_np[:, 1]] >= min_relation_triples
    kept = triples_np[keep]
    used = is_item.copy()
    used[kept[:, [0, 2]].ravel()] = True
    new_id = np.full(n_entities, -1, dtype=np.int64)
    new_id[used] = np.arange(int(used.sum()))
    renumbered = np.stack([new_id[kept[:, 0]], kept[:, 1], new_id[kept[:, 2]]], axis=1)
    new_links = np.where(links >= 0, new_id[np.maximum(links, 0)], -1)
    logger.info(
        "KG filter (entities >= %d triples, relations >= %d): %d -> %d triples, %d -> %d entities",
        min_entity_triples,
        min_relation_triples,
        len(triples_np),
        len(renumbered),
        n_entities,
        int(used.sum()),
    )
    return renumbered, int(used.sum()), new_links, np.flatnonzero(used)


def _as_numpy(array: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(array, Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def segment_softmax(scores: Tensor, segments: Tensor, n_segments: int) -> Tensor:
    """Softmax of ``scores`` within each segment (e.g. over each head node's outgoing edges).

    Args:
        scores: float [E] edge scores.
        segments: int64 [E] segment (head node) of each edge, values in ``[0, n_segments)``.

    Returns:
        float [E]; the entries of every non-empty segment sum to 1. Differentiable w.r.t. ``scores``.
    """
    if scores.shape != segments.shape or scores.dim() != 1:
        raise ValueError(
            f"scores and segments must be 1-D of equal length, got {scores.shape} and {segments.shape}"
        )
    maxima = torch.full((n_segments,), float("-inf"), dtype=scores.dtype, device=scores.device)
    maxima = maxima.scatter_reduce(0, segments, scores.detach(), reduce="amax", include_self=True)
    exponentials = torch.exp(scores - maxima[segments])
    sums = torch.zeros(n_segments, dtype=scores.dtype, device=scores.device).index_add(
        0, segments, exponentials
    )
    return exponentials / sums[segments]


def transr_distance(heads: Tensor, relations: Tensor, tails: Tensor, projection: Tensor) -> Tensor:
    """TransR plausibility g(h, r, t) = ‖W_r e_h + e_r − W_r e_t‖² (lower is more plausible).

    Args:
        heads, tails: float [B, d] entity embeddings e_h, e_t.
        relations: float [B, k] relation embeddings e_r.
        projection: float [B, d, k] the relation's projection W_r (applied as e @ W_r).

    Returns:
        float [B].
    """
    projected = torch.bmm((heads - tails).unsqueeze(1), projection).squeeze(1)  # W_r e_h − W_r e_t
    return (projected + relations).pow(2).sum(dim=-1)


def transr_distance_grouped(
    heads: Tensor,
    relation_ids: Tensor,
    tails: Tensor,
    relation_table: Tensor,
    projection_table: Tensor,
    normalize: bool = False,
) -> Tensor:
    """:func:`transr_distance` for rows sorted by relation, one matmul per relation instead of B tiny ones.

    Args:
        heads, tails: float [B, d]; relation_ids: int64 [B], sorted ascending.
        relation_table: float [R, k] relation embeddings; projection_table: float [R, d, k].
        normalize: L2-normalise W_r e_h, W_r e_t and e_r first (TransR's norm constraints, made exact),
            which bounds g by 9 and keeps the loss from blowing up at large learning rates.

    Returns:
        float [B].
    """
    if len(relation_ids) > 1 and bool((relation_ids[1:] < relation_ids[:-1]).any()):
        raise ValueError("relation_ids must be sorted ascending")
    counts = torch.bincount(relation_ids, minlength=projection_table.shape[0]).tolist()
    both = torch.stack([heads, tails], dim=1)  # [B, 2, d]
    projected = torch.cat(
        [rows @ projection_table[r] for r, rows in enumerate(torch.split(both, counts))], dim=0
    )
    relations = relation_table[relation_ids]
    if normalize:
        projected, relations = F.normalize(projected, dim=-1), F.normalize(relations, dim=-1)
    return (projected[:, 0] + relations - projected[:, 1]).pow(2).sum(dim=-1)


def transr_loss(positive_distance: Tensor, negative_distance: Tensor) -> Tensor:
    """L_KG = mean of −ln σ(g(h, r, t′) − g(h, r, t)) over (tail t, corrupted t′); inputs [B]."""
    return F.softplus(positive_distance - negative_distance).mean()


def bfs_sequences(
    adjacency: sp.spmatrix,
    sources: np.ndarray,
    length: int,
    max_hops: int = 4,
    chunk_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Breadth-first sequences of each source's ``length`` nearest nodes (the source first), sorted by hop.

    Within one hop, nodes reached by more paths from the previous hops come first, then nodes of
    higher degree, then lower node index, so the result is deterministic. Sources are processed in
    chunks of ``chunk_size`` with sparse frontier products (no dense [sources, nodes] matrix).

    Args:
        adjacency: scipy sparse [N, N]; non-zero (u, v) means v is a neighbour of u.
        sources: int64 [S] start nodes.
        length: sequence length n (including the source itself at position 0).
        max_hops: stop expanding after this many hops.

    Returns:
        (nodes int64 [S, length], hops int64 [S, length]); positions not filled are -1 in both.
    """
    if length < 1:
        raise ValueError(f"sequence length must be >= 1, got {length}")
    graph = sp.csr_matrix(adjacency, dtype=np.float32, copy=True)  # the caller's matrix stays as it is
    graph.data[:] = 1.0
    n_nodes = graph.shape[0]
    degree = np.asarray(graph.sum(axis=1)).ravel()
    # one sortable key per node for the tie-break: higher degree first, then lower index
    degree_rank = np.empty(n_nodes, dtype=np.int64)
    degree_rank[np.lexsort((np.arange(n_nodes), -degree))] = np.arange(n_nodes)
    sources = np.asarray(sources, dtype=np.int64)
    nodes = np.full((len(sources), length), -1, dtype=np.int64)
    hops = np.full((len(sources), length), -1, dtype=np.int64)
    nodes[:, 0] = sources
    hops[:, 0] = 0
    for start in range(0, len(sources), chunk_size):
        chunk = sources[start : start + chunk_size]
        rows = np.arange(len(chunk))
        frontier = sp.csr_matrix(
            (np.ones(len(chunk), np.float32), (rows, chunk)), shape=(len(chunk), n_nodes)
        )
        visited = frontier.copy()
        filled = np.ones(len(chunk), dtype=np.int64)
        for hop in range(1, max_hops + 1):
            if frontier.nnz == 0:
                break
            reach = (frontier @ graph).tocsr()
            reach = (reach - reach.multiply(visited)).tocsr()  # path counts to nodes not yet visited
            reach.eliminate_zeros()
            selected_rows: list[np.ndarray] = []
            selected_cols: list[np.ndarray] = []
            for row in np.flatnonzero(np.diff(reach.indptr)):
                free = length - filled[row]
                if free <= 0:
                    continue
                lo, hi = reach.indptr[row], reach.indptr[row + 1]
                candidates, counts = reach.indices[lo:hi], reach.data[lo:hi]
                order = np.lexsort((degree_rank[candidates], -counts))[:free]
                chosen = candidates[order]
                position = start + row
                nodes[position, filled[row] : filled[row] + len(chosen)] = chosen
                hops[position, filled[row] : filled[row] + len(chosen)] = hop
                filled[row] += len(chosen)
                if filled[row] < length:  # every node of this hop was taken: expand all of them next
                    selected_rows.append(np.full(len(chosen), row))
                    selected_cols.append(chosen)
            if not selected_rows:
                break
            sel_rows, sel_cols = np.concatenate(selected_rows), np.concatenate(selected_cols)
            frontier = sp.csr_matrix(
                (np.ones(len(sel_rows), np.float32), (sel_rows, sel_cols)), shape=(len(chunk), n_nodes)
            )
            visited = (visited + frontier).tocsr()
    return nodes, hops


def neighbour_mean_features(
    ckg: CollaborativeKG, item_features: np.ndarray | Tensor, nodes: np.ndarray
) -> np.ndarray:
    """Features for arbitrary CKG nodes: an item's own row, otherwise the mean over adjacent items.

    Users get the mean of their training items' features, entities the mean of the items they are
    linked to by a KG edge; nodes with no adjacent item get zeros.

    Args:
        item_features: float [n_items, d_m].
        nodes: int64 [K] CKG nodes.

    Returns:
        float32 [K, d_m].
    """
    features = _as_numpy(item_features).astype(np.float32)
    n_items = features.shape[0]
    node_to_item = np.full(ckg.n_nodes, -1, dtype=np.int64)
    node_to_item[ckg.item_node] = np.arange(n_items)
    tail_items = node_to_item[ckg.tails]
    keep = tail_items >= 0
    adjacency = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (ckg.heads[keep], tail_items[keep])),
        shape=(ckg.n_nodes, n_items),
    )
    adjacency.data[:] = 1.0
    rows = adjacency[nodes]
    degree = np.asarray(rows.sum(axis=1)).ravel()
    scale = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    result = np.asarray(sp.diags(scale) @ rows @ features, dtype=np.float32)
    own = node_to_item[nodes]
    is_item = own >= 0
    result[is_item] = features[own[is_item]]
    return result
