"""Multi-KG4Rec: CKG construction, TransR, knowledge-aware attention, BFS sequences, fusion switches."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.graphs import normalized_bipartite_adjacency, to_torch_sparse_csr
from trainer.kg import (
    INTERACT,
    INTERACTED_BY,
    KGBuildError,
    bfs_sequences,
    build_collaborative_kg,
    neighbour_mean_features,
    segment_softmax,
    transr_distance,
    transr_loss,
)
from trainer.models.base import BPRBatch, KGTensors, ModelInputError, ModelInputs
from trainer.models.lightgcn import propagate as lightgcn_propagate
from trainer.models.multikg4rec import LinearAggregator, _stack_layers, parse_fusion
from trainer.models.registry import build_model


def _train(pairs: list[tuple[int, int]], n_users: int, n_items: int) -> sp.csr_matrix:
    rows, cols = zip(*pairs, strict=True)
    return sp.csr_matrix((np.ones(len(pairs), np.float32), (rows, cols)), shape=(n_users, n_items))


# ---------------------------------------------------------------------------------------- CKG
def test_collaborative_kg_counts_inverse_relations_and_unlinked_items():
    train = _train([(0, 0), (0, 1), (1, 2)], n_users=2, n_items=3)
    triples = np.array([[0, 0, 3], [1, 1, 3]])  # entities 0..3; items 0, 1 linked to entities 0, 1
    ckg = build_collaborative_kg(
        train, triples, n_entities=4, n_kg_relations=2, item_entity=np.array([0, 1, -1])
    )
    assert ckg.n_nodes == 4 + 1 + 2  # entities, one extra node for unlinked item 2, two users
    assert ckg.n_relations == 2 + 2 * 2
    np.testing.assert_array_equal(ckg.item_node, [0, 1, 4])
    np.testing.assert_array_equal(ckg.user_node, [5, 6])
    assert ckg.n_edges == 2 * 3 + 2 * 2 and ckg.n_kg_edges == 4
    edges = set(zip(ckg.heads.tolist(), ckg.relations.tolist(), ckg.tails.tolist(), strict=True))
    assert (5, INTERACT, 0) in edges and (0, INTERACTED_BY, 5) in edges and (6, INTERACT, 4) in edges
    assert (0, 2, 3) in edges and (3, 2 + 2, 0) in edges  # relation 0 and its inverse
    assert (1, 3, 3) in edges and (3, 3 + 2, 1) in edges
    np.testing.assert_array_equal(np.diff(ckg.relation_ptr), [3, 3, 1, 1, 1, 1])
    assert list(ckg.node_types()) == [1, 1, 0, 0, 1, 2, 2]


@pytest.mark.parametrize(
    "triples, links, message",
    [
        (np.array([[0, 0, 9]]), np.array([0, 1]), "entity outside"),
        (np.array([[0, 5, 1]]), np.array([0, 1]), "relation outside"),
        (np.array([[0, 0, 1]]), np.array([0]), "one entry per item"),
    ],
)
def test_collaborative_kg_rejects_inconsistent_inputs(triples, links, message):
    train = _train([(0, 0), (0, 1)], n_users=1, n_items=2)
    with pytest.raises(KGBuildError, match=message):
        build_collaborative_kg(train, triples, n_entities=3, n_kg_relations=1, item_entity=links)


def test_collaborative_kg_accepts_two_items_linked_to_the_same_entity():
    # formerly refused; now item 1 gets its own node 3 and a "same entity as" edge (relation 2 + 1) to entity 1
    train = _train([(0, 0), (0, 1)], n_users=1, n_items=2)
    ckg = build_collaborative_kg(
        train, np.array([[0, 0, 1]]), n_entities=3, n_kg_relations=1, item_entity=np.array([1, 1])
    )
    np.testing.assert_array_equal(ckg.item_node, [1, 3])
    edges = set(zip(ckg.heads.tolist(), ckg.relations.tolist(), ckg.tails.tolist(), strict=True))
    assert (3, 3, 1) in edges and (1, 3 + 2, 3) in edges and ckg.n_relations == 2 + 2 * 2


def test_neighbour_mean_features_for_users_entities_and_items():
    train = _train([(0, 0), (0, 1)], n_users=1, n_items=2)
    ckg = build_collaborative_kg(train, np.array([[0, 0, 2]]), 3, 1, np.array([0, 1]))
    features = np.array([[1.0, 0.0], [3.0, 4.0]], np.float32)
    got = neighbour_mean_features(ckg, features, np.array([ckg.user_node[0], 2, 1]))
    np.testing.assert_allclose(got, [[2.0, 2.0], [1.0, 0.0], [3.0, 4.0]])


# ---------------------------------------------------------------------------------------- TransR
def test_transr_distance_and_loss_on_hand_checked_tensors():
    projection = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # e @ W_r scales the second coordinate by 2
    head, relation = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, -1.0]])
    tail, corrupted = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    positive = transr_distance(head, relation, tail, projection)  # ‖(1,0) + (1,-1) − (0,2)‖² = 4 + 9
    negative = transr_distance(head, relation, corrupted, projection)  # ‖(1,0) + (1,-1) − (1,2)‖² = 1 + 9
    torch.testing.assert_close(positive, torch.tensor([13.0]))
    torch.testing.assert_close(negative, torch.tensor([10.0]))
    # −ln σ(g(t′) − g(t)) = −ln σ(−3) = ln(1 + e³)
    torch.testing.assert_close(transr_loss(positive, negative), torch.tensor(math.log1p(math.exp(3.0))))
    # a more plausible true tail gives a smaller loss
    assert transr_loss(torch.tensor([1.0]), torch.tensor([10.0])) < transr_loss(positive, negative)


# ---------------------------------------------------------------------------------------- attention
def test_segment_softmax_normalises_within_each_segment_and_is_differentiable():
    scores = torch.tensor([1.0, 2.0, 3.0, -1.0, 500.0, 0.0], requires_grad=True)
    segments = torch.tensor([0, 0, 0, 2, 2, 3])
    weights = segment_softmax(scores, segments, n_segments=4)
    sums = torch.zeros(4).index_add(0, segments, weights.detach())
    torch.testing.assert_close(sums, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(weights[:3].detach(), torch.softmax(scores[:3].detach(), 0))
    assert torch.isfinite(weights).all()  # a large score does not overflow
    weights[0].backward()
    assert scores.grad is not None and scores.grad[:3].abs().sum() > 0 and scores.grad[3:].abs().sum() == 0


NO_KG_FILTER = {"min_entity_triples": 0, "min_relation_triples": 0}  # keep every triple of the tiny KG


def _tiny_inputs(with_isolated_item: bool = False) -> ModelInputs:
    """3 users, 5 items (item 4 has no interactions and no entity when ``with_isolated_item``), 2 modalities."""
    generator = torch.Generator().manual_seed(0)
    pairs = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (2, 0)]
    if not with_isolated_item:
        pairs.append((2, 4))
    train = _train(pairs, n_users=3, n_items=5)
    item_entity = torch.tensor([0, 1, 2, 3, -1 if with_isolated_item else 4])
    kg = KGTensors(
        triples=torch.tensor([[0, 0, 5], [1, 0, 5], [2, 1, 6], [3, 1, 6], [5, 2, 6]]),
        n_entities=7,
        n_relations=3,
        item_entity=item_entity,
    )
    return ModelInputs.from_train_matrix(
        train,
        features={
            "text": torch.randn(5, 6, generator=generator),
            "image": torch.randn(5, 4, generator=generator),
        },
        kg=kg,
    )


@pytest.mark.parametrize("sparse_edge_products", [True, False])
def test_knowledge_aware_attention_matches_the_formula_and_normalises_over_each_heads_neighbours(
    sparse_edge_products,
):
    torch.manual_seed(0)
    params = {**NO_KG_FILTER, "embedding_dim": 8, "relation_dim": 4, "n_heads": 2}
    model = build_model("multikg4rec", _tiny_inputs(), {**params, "sparse_edge_products": sparse_edge_products})
    ego = model.ego_embeddings()
    attention = model.attention(ego)
    heads, relations, tails = model.edge_heads, model.edge_relations, model.edge_tails
    sums = torch.zeros(model.n_nodes).index_add(0, heads, attention.detach())
    has_edges = torch.zeros(model.n_nodes, dtype=torch.bool)
    has_edges[heads] = True
    torch.testing.assert_close(sums[has_edges], torch.ones(int(has_edges.sum())))
    # reference: π(h, r, t) = (W_r e_t)ᵀ tanh(W_r e_h + e_r), softmax over each head's edges, one edge at a time
    with torch.no_grad():
        w, e_r = model.relation_projection, model.relation_embedding.weight
        logits = torch.stack(
            [
                (ego[t] @ w[r]) @ torch.tanh(ego[h] @ w[r] + e_r[r])
                for h, r, t in zip(heads, relations, tails, strict=True)
            ]
        )
        expected = torch.empty_like(logits)
        for head in heads.unique():
            mask = heads == head
            expected[mask] = torch.softmax(logits[mask], dim=0)
    torch.testing.assert_close(attention.detach(), expected, rtol=1e-5, atol=1e-6)
    attention.sum().backward()  # the attention is inside autograd: its parameters receive gradients
    assert model.relation_projection.grad is not None and model.relation_projection.grad.abs().sum() > 0


@pytest.mark.parametrize("sparse_edge_products", [True, False])
def test_propagation_matches_the_per_edge_sum_also_for_parallel_edges(sparse_edge_products):
    # entity 0 -> entity 5 under relations 0 and 2: two CKG edges (and two inverse ones) between one node pair
    inputs = _tiny_inputs()
    kg = dataclasses.replace(inputs.kg, triples=torch.cat([inputs.kg.triples, torch.tensor([[0, 2, 5]])]))
    torch.manual_seed(0)
    params = {**NO_KG_FILTER, "embedding_dim": 8, "relation_dim": 4, "n_heads": 2}
    model = build_model(
        "multikg4rec", dataclasses.replace(inputs, kg=kg), {**params, "sparse_edge_products": sparse_edge_products}
    ).eval()
    heads, tails = model.edge_heads, model.edge_tails
    assert model.node_pattern.nnz < len(heads)  # some node pairs carry more than one edge
    with torch.no_grad():
        ego = model.ego_embeddings()
        weights = model.attention(ego).unsqueeze(-1)
        expected = _stack_layers(
            ego, model.layers, lambda x: torch.zeros_like(x).index_add(0, heads, weights * x[tails])
        )
        torch.testing.assert_close(model.propagate(ego), expected, rtol=1e-5, atol=1e-6)


def test_item_vectors_reduce_each_token_node_once_with_the_same_result():
    torch.manual_seed(0)
    model = build_model(
        "multikg4rec", _tiny_inputs(), {**NO_KG_FILTER, "embedding_dim": 8, "relation_dim": 4, "n_heads": 2}
    ).eval()
    with torch.no_grad():
        model.multimodal.gate.fill_(0.5)  # initialised at 0, which would make every output 0
        rows = model.sequence_token_rows
        raw = [getattr(model, f"token_features_{m}")[rows] for m in range(len(model.modalities))]
        expected = model.multimodal(raw, model.sequence_types, model.sequence_hops, model.sequence_padding)
        vectors = model.multimodal_item_vectors()
    assert vectors.abs().sum() > 0
    torch.testing.assert_close(vectors, expected)


def test_sparse_edge_products_default_to_the_cpu_and_give_the_gather_paths_gradients():
    params = {**NO_KG_FILTER, "embedding_dim": 8, "relation_dim": 4, "n_heads": 2, "message_dropout": 0.0}
    models = {}
    for choice in (None, True, False):
        torch.manual_seed(0)
        models[choice] = build_model("multikg4rec", _tiny_inputs(), {**params, "sparse_edge_products": choice})
    assert models[None]._sparse_edge_products(torch.device("cpu"))
    assert not models[None]._sparse_edge_products(torch.device("cuda"))
    grads = {}
    for choice in (True, False):
        model = models[choice].eval()
        users, items = model.representations()
        (users.square().sum() + items.sum()).backward()
        grads[choice] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and "relation_projection" in grads[True]
    for name, grad in grads[True].items():
        torch.testing.assert_close(grad, grads[False][name], rtol=1e-4, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------- BFS
def test_bfs_sequences_are_sorted_by_hop_with_path_count_then_degree_ties():
    # 0-1, 0-2, 1-3, 2-3, 2-4 (undirected); from 0: hop 1 {2 (degree 3), 1 (degree 2)}; hop 2 {3 (2 paths), 4}
    edges = [(0, 1), (0, 2), (1, 3), (2, 3), (2, 4)]
    rows, cols = zip(*(edges + [(b, a) for a, b in edges]), strict=True)
    adjacency = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(5, 5))
    nodes, hops = bfs_sequences(adjacency, np.array([0, 4]), length=6, chunk_size=1)
    np.testing.assert_array_equal(nodes[0], [0, 2, 1, 3, 4, -1])
    np.testing.assert_array_equal(hops[0], [0, 1, 1, 2, 2, -1])
    np.testing.assert_array_equal(
        nodes[1], [4, 2, 0, 3, 1, -1]
    )  # hop 2 from 4: 0 and 3 (1 path each; tie by degree)
    np.testing.assert_array_equal(hops[1], [0, 1, 2, 2, 3, -1])
    short, short_hops = bfs_sequences(adjacency, np.array([0]), length=2)
    np.testing.assert_array_equal(short, [[0, 2]])  # truncated to the nearest
    assert (np.diff(hops[0][hops[0] >= 0]) >= 0).all()
    weighted = sp.csr_matrix((np.full(len(rows), 2.0, np.float32), (rows, cols)), shape=(5, 5))
    bfs_sequences(weighted, np.array([0]), length=3)
    assert (weighted.data == 2.0).all()  # the caller's matrix is left as it is


def test_model_bfs_sequences_start_with_the_item_and_never_decrease_in_hop():
    torch.manual_seed(0)
    model = build_model(
        "multikg4rec", _tiny_inputs(), {"embedding_dim": 8, "n_heads": 2, "sequence_length": 6}
    )
    hops, padding = model.sequence_hops, model.sequence_padding
    assert (hops[:, 0] == 0).all() and (model.sequence_types[:, 0] == 1).all()
    for row_hops, row_padding in zip(hops, padding, strict=True):
        valid = row_hops[~row_padding]
        assert (valid[1:] >= valid[:-1]).all()


# ---------------------------------------------------------------------------------------- fusion switches
def test_parse_fusion_directions_are_generic_over_the_dataset_modalities():
    modalities = ["kg", "text"]
    assert parse_fusion("bi", modalities) == [[0, 1], [0, 1]]
    assert parse_fusion("self", modalities) == [[0], [1]]
    assert parse_fusion("none", modalities) is None
    assert parse_fusion("text->kg", modalities) == [[0, 1], [1]]  # kg's queries read text
    assert parse_fusion("kg -> text", modalities) == [[0], [1, 0]]
    for bad in ("image->text", "text->text", "both", "text>kg"):
        with pytest.raises(ModelInputError):
            parse_fusion(bad, modalities)
    with pytest.raises(ModelInputError, match="no modality"):
        parse_fusion("bi", [])


def test_one_direction_ablation_trains_and_kgat_has_no_multimodal_part():
    inputs = _tiny_inputs()
    batch = BPRBatch(
        users=torch.tensor([0, 1]), pos_items=torch.tensor([0, 2]), neg_items=torch.tensor([3, 4])
    )
    torch.manual_seed(0)
    directed = build_model(
        "multikg4rec", inputs, {**NO_KG_FILTER, "embedding_dim": 8, "n_heads": 2, "fusion": "image->text"}
    )
    with torch.no_grad():
        directed.multimodal.gate.fill_(
            0.5
        )  # the gate starts at 0 (pure KGAT); open it to reach the transformer
    terms = directed.loss_terms(batch)
    assert set(terms) == {"bpr", "reg", "kg", "kg_reg"}
    sum(terms.values()).backward()
    assert directed.multimodal.projections[0][0].weight.grad.abs().sum() > 0
    kgat = build_model("kgat", inputs, {**NO_KG_FILTER, "embedding_dim": 8})
    assert kgat.multimodal is None and kgat.item_encoder() is None
    users, items = kgat.representations()
    assert users.shape == (3, 8 + 64 + 32 + 16) and items.shape == (5, 8 + 64 + 32 + 16)


def test_kg_batches_are_seeded_through_torch_rng():
    inputs = _tiny_inputs()
    batch = BPRBatch(users=torch.tensor([0]), pos_items=torch.tensor([0]), neg_items=torch.tensor([3]))
    torch.manual_seed(0)
    model = build_model(
        "kgat", inputs, {**NO_KG_FILTER, "embedding_dim": 8, "message_dropout": 0.0, "kg_batch_size": 4}
    )
    torch.manual_seed(5)
    first = model.loss_terms(batch)["kg"]
    torch.manual_seed(5)
    assert model.loss_terms(batch)["kg"] == first


def test_kg_loss_with_kg_node_negatives_never_touches_user_nodes():
    # TransR is trained on the KG part of the CKG: heads and tails are KG edges; with kg_negative_tails: kg_nodes the
    # corrupted tails are drawn from the entity/item nodes only (no KG-loss gradient reaches user embeddings); without
    # any KG edge there is no KG loss at all (it used to train TransR on the user-item edges)
    inputs = _tiny_inputs()
    params = {**NO_KG_FILTER, "embedding_dim": 8, "message_dropout": 0.0, "kg_batch_size": 512,
              "kg_negative_tails": "kg_nodes"}
    torch.manual_seed(0)
    model = build_model("kgat", inputs, params)
    n_entity_and_item_nodes = model.n_nodes - inputs.n_users  # users are the last nodes
    assert int(model.user_node.min()) == n_entity_and_item_nodes
    torch.manual_seed(1)
    terms = model.kg_loss_terms(model.ego_embeddings())
    sum(terms.values()).backward()
    grad = model.node_embedding.weight.grad
    assert grad[model.user_node].abs().sum() == 0
    assert (grad[:n_entity_and_item_nodes].abs().sum(dim=1) > 0).all()  # every entity/item node was drawn
    batch = BPRBatch(users=torch.tensor([0]), pos_items=torch.tensor([0]), neg_items=torch.tensor([3]))
    without_kg = build_model("kgat", dataclasses.replace(inputs, kg=None), params)
    assert set(without_kg.loss_terms(batch)) == {"bpr", "reg"}


@pytest.mark.parametrize(
    "structure",
    [{}, {"aggregator": "linear", "layer_dims": [8, 8]}, {"aggregator": "linear", "layer_dims": [8], "edge_weights": "symmetric"}],
    ids=["bi_interaction", "linear", "linear_symmetric"],
)
def test_cold_start_encoder_equals_the_representation_of_an_isolated_item(structure):
    torch.manual_seed(0)
    inputs = _tiny_inputs(with_isolated_item=True)
    params = {**NO_KG_FILTER, "embedding_dim": 8, "n_heads": 2, "cold_start_encoder": "multimodal", **structure}
    model = build_model("multikg4rec", inputs, params).eval()
    isolated = int(model.item_node[4])
    with torch.no_grad():
        model.node_embedding.weight[isolated] = 0.0  # a new item has no ID embedding
        model.multimodal.gate.fill_(0.5)  # trained models have an open gate; at 0 every new item is identical
        items = model.representations()[1]
        encoded = model.item_encoder()(*[inputs.features[m][4:5] for m in sorted(inputs.features)])
    torch.testing.assert_close(encoded[0], items[4], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(encoded[0], items[0])


def test_kg_loss_draws_corrupted_tails_from_every_node_by_default():
    """The default (chosen on valid): corrupted tails over every CKG node, users included, as KGAT's reference code."""
    inputs = _tiny_inputs()
    params = {**NO_KG_FILTER, "embedding_dim": 8, "message_dropout": 0.0, "kg_batch_size": 512}
    torch.manual_seed(0)
    model = build_model("kgat", inputs, params)
    assert model.config.kg_negative_tails == "all_nodes" and model.n_corruption_nodes == model.n_nodes
    torch.manual_seed(1)
    sum(model.kg_loss_terms(model.ego_embeddings()).values()).backward()
    assert model.node_embedding.weight.grad[model.user_node].abs().sum() > 0
    with pytest.raises(ModelInputError, match="kg_negative_tails"):
        build_model("kgat", inputs, {**params, "kg_negative_tails": "users"})


# ---------------------------------------------------------------------------------------- LightGCN-settings options
def test_symmetric_edge_weights_are_one_over_the_root_of_both_degrees():
    # user 0 - items 0, 1; user 1 - item 1; no KG: degrees user 0: 2, user 1: 1, item 0: 1, item 1: 2
    train = _train([(0, 0), (0, 1), (1, 1)], n_users=2, n_items=2)
    inputs = ModelInputs.from_train_matrix(train, features={}, kg=None)
    model = build_model("kgat", inputs, {"embedding_dim": 4, "edge_weights": "symmetric"})
    user, item = model.user_node.tolist(), model.item_node.tolist()
    expected = {
        (user[0], item[0]): 1 / math.sqrt(2),
        (user[0], item[1]): 1 / 2,
        (user[1], item[1]): 1 / math.sqrt(2),
    }
    expected.update({(t, h): w for (h, t), w in list(expected.items())})
    weights = model.edge_weights(model.ego_embeddings())
    # attention_symmetric with a uniform attention (all relation parameters zero: every logit 0) gives the same
    uniform = build_model("kgat", inputs, {"embedding_dim": 4, "edge_weights": "attention_symmetric"})
    with torch.no_grad():
        uniform.relation_projection.zero_()
        torch.testing.assert_close(uniform.edge_weights(uniform.ego_embeddings()), weights)
    got = {(h, t): w for h, t, w in zip(model.edge_heads.tolist(), model.edge_tails.tolist(), weights.tolist(), strict=True)}
    assert got.keys() == expected.keys()
    for edge, weight in expected.items():
        assert got[edge] == pytest.approx(weight)


@pytest.mark.parametrize("sparse_edge_products", [True, False])
def test_linear_aggregator_with_symmetric_weights_and_no_kg_is_lightgcn(sparse_edge_products):
    # without KG edges the CKG is the user-item graph, so the two options together make LightGCN's propagation
    train = _train([(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (2, 0), (3, 2)], n_users=4, n_items=4)
    inputs = ModelInputs.from_train_matrix(train, features={}, kg=None)
    params = {"embedding_dim": 8, "aggregator": "linear", "edge_weights": "symmetric", "layer_dims": [8, 8],
              "sparse_edge_products": sparse_edge_products}
    torch.manual_seed(0)
    model = build_model("kgat", inputs, params).eval()
    ego = model.node_embedding.weight.detach()
    users_first = torch.cat([ego[model.user_node], ego[model.item_node]])
    adjacency = to_torch_sparse_csr(normalized_bipartite_adjacency(train), torch.device("cpu"))
    expected = lightgcn_propagate(adjacency, users_first, n_layers=2)
    with torch.no_grad():
        users, items = model.representations()
    torch.testing.assert_close(users, expected[:4], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, expected[4:], rtol=1e-5, atol=1e-6)


def test_linear_aggregator_layers_are_averaged_not_concatenated():
    ego = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    layers = torch.nn.ModuleList([LinearAggregator(), LinearAggregator()])
    # neighbourhood = 2x: layers 2·ego and 4·ego, mean over ego and both = 7/3·ego
    torch.testing.assert_close(_stack_layers(ego, layers, lambda x: 2 * x, layer_mean=True), ego * 7 / 3)


@pytest.mark.parametrize("edge_weights", ["attention", "attention_symmetric"])
def test_linear_aggregator_with_attention_trains_the_attention_and_the_fusion(edge_weights):
    inputs = _tiny_inputs()
    batch = BPRBatch(users=torch.tensor([0, 1]), pos_items=torch.tensor([0, 2]), neg_items=torch.tensor([3, 4]))
    torch.manual_seed(0)
    params = {**NO_KG_FILTER, "embedding_dim": 8, "n_heads": 2, "aggregator": "linear", "layer_dims": [8, 8],
              "edge_weights": edge_weights, "kg_weight": 0.0}
    model = build_model("multikg4rec", inputs, params)
    assert sum(p.numel() for p in model.layers.parameters()) == 0
    with torch.no_grad():
        model.multimodal.gate.fill_(0.5)
    users, items = model.representations()
    assert users.shape == (3, 8) and items.shape == (5, 8)
    sum(model.loss_terms(batch).values()).backward()
    assert model.relation_projection.grad[0].abs().sum() > 0  # the CF relation's W_r: through the attention
    assert model.multimodal.projections[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "params, message",
    [
        ({"aggregator": "gcn"}, "aggregator must be one of"),
        ({"edge_weights": "uniform"}, "edge_weights must be one of"),
        ({"fusion_gate_init": float("nan")}, "fusion_gate_init must be a finite number"),
        ({"aggregator": "linear"}, "every layer_dims entry must be embedding_dim"),
        ({"aggregator": "linear", "layer_dims": [8, 4]}, "every layer_dims entry must be embedding_dim"),
    ],
)
def test_lightgcn_setting_options_reject_bad_values(params, message):
    with pytest.raises(ModelInputError, match=message):
        build_model("kgat", _tiny_inputs(), {**NO_KG_FILTER, "embedding_dim": 8, **params})


def test_attention_without_gradient_leaves_the_relation_parameters_to_transr():
    inputs = _tiny_inputs()
    batch = BPRBatch(users=torch.tensor([0, 1]), pos_items=torch.tensor([0, 2]), neg_items=torch.tensor([3, 4]))
    params = {**NO_KG_FILTER, "embedding_dim": 8, "message_dropout": 0.0, "attention_gradient": False}
    torch.manual_seed(0)
    model = build_model("kgat", inputs, {**params, "kg_weight": 0.0})
    sum(model.loss_terms(batch).values()).backward()
    assert model.relation_projection.grad is None and model.node_embedding.weight.grad.abs().sum() > 0
    torch.manual_seed(0)
    with_gradient = build_model("kgat", inputs, {**params, "kg_weight": 0.0, "attention_gradient": True})
    with torch.no_grad():  # same weights either way: only the gradient differs
        torch.testing.assert_close(model.representations()[1], with_gradient.representations()[1])
    torch.manual_seed(0)
    model = build_model("kgat", inputs, {**params, "kg_weight": 1.0})
    sum(model.kg_loss_terms(model.ego_embeddings()).values()).backward()
    assert model.relation_projection.grad.abs().sum() > 0


def test_fusion_gate_starts_at_its_configured_value():
    torch.manual_seed(0)
    params = {**NO_KG_FILTER, "embedding_dim": 8, "n_heads": 2}
    closed = build_model("multikg4rec", _tiny_inputs(), params).eval()
    opened = build_model("multikg4rec", _tiny_inputs(), {**params, "fusion_gate_init": 0.1}).eval()
    assert closed.multimodal.gate.item() == 0.0 and opened.multimodal.gate.item() == pytest.approx(0.1)
    with torch.no_grad():
        assert closed.multimodal_item_vectors().abs().sum() == 0
        assert opened.multimodal_item_vectors().abs().max() <= 0.1 + 1e-6  # gate · tanh(·)
        assert opened.multimodal_item_vectors().abs().sum() > 0
