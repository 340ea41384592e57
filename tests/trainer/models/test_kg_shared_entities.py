"""Items linked to one KG entity: the CKG gives every item but the lowest-indexed its own node, joined to the
entity by a "same entity as" relation; KG models build and train on such data; without sharing the CKG is the
one built before the relation existed."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.data.synthetic import planted_dataset
from trainer.kg import INTERACT, INTERACTED_BY, bfs_sequences, build_collaborative_kg
from trainer.models.base import BPRBatch, ModelInputs
from trainer.models.registry import build_model


def _train(pairs: list[tuple[int, int]], n_users: int, n_items: int) -> sp.csr_matrix:
    rows, cols = zip(*pairs, strict=True)
    return sp.csr_matrix((np.ones(len(pairs), np.float32), (rows, cols)), shape=(n_users, n_items))


def _edges(ckg) -> list[tuple[int, int, int]]:
    return list(zip(ckg.heads.tolist(), ckg.relations.tolist(), ckg.tails.tolist(), strict=True))


def test_items_sharing_an_entity_get_own_nodes_joined_by_the_same_entity_relation(caplog):
    # 2 users, 3 items; items 0 and 2 linked to entity 0, item 1 unlinked; one KG triple (0, r0, 1)
    train = _train([(0, 0), (0, 1), (1, 1), (1, 2)], n_users=2, n_items=3)
    with caplog.at_level(logging.INFO, logger="trainer.kg"):
        ckg = build_collaborative_kg(
            train, np.array([[0, 0, 1]]), n_entities=2, n_kg_relations=1, item_entity=np.array([0, -1, 0])
        )
    # entities 0, 1; own nodes in item order: item 1 (unlinked) -> 2, item 2 (shares entity 0) -> 3;
    # users 4, 5
    np.testing.assert_array_equal(ckg.item_node, [0, 2, 3])
    np.testing.assert_array_equal(ckg.user_node, [4, 5])
    assert ckg.n_nodes == 6 and ckg.n_same_entity_items == 1
    # relations: 0 interact, 1 interacted-by, 2 KG r0, 3 same entity as, 4 inverse r0, 5 inverse same entity
    assert ckg.n_kg_relations == 2 and ckg.n_relations == 2 + 2 * 2 and ckg.same_entity_relation == 3
    assert _edges(ckg) == [
        (4, INTERACT, 0), (4, INTERACT, 2), (5, INTERACT, 2), (5, INTERACT, 3),
        (0, INTERACTED_BY, 4), (2, INTERACTED_BY, 4), (2, INTERACTED_BY, 5), (3, INTERACTED_BY, 5),
        (0, 2, 1),  # the KG triple
        (3, 3, 0),  # item 2's node -> the shared entity held by item 0 ("same entity as")
        (1, 4, 0),  # inverse of the KG triple
        (0, 5, 3),  # inverse "same entity as"
    ]  # fmt: skip
    np.testing.assert_array_equal(ckg.relation_ptr, [0, 4, 8, 9, 10, 11, 12])
    assert ckg.n_kg_edges == 4
    assert list(ckg.node_types()) == [1, 0, 1, 1, 2, 2]
    # item 2 reaches the shared entity in one hop and the entity's fact (entity 1) in two
    nodes, hops = bfs_sequences(ckg.adjacency(), ckg.item_node[[2]], length=6)
    assert nodes[0, :2].tolist() == [3, 0] and hops[0, :2].tolist() == [0, 1]
    assert 1 in nodes[0, hops[0] == 2]
    assert "1 items are linked to a KG entity that a lower-indexed item already holds" in caplog.text


def test_without_shared_entities_the_graph_is_the_one_built_before_the_relation_existed():
    # expected arrays: the output of build_collaborative_kg before "same entity as" existed
    train = _train([(0, 0), (0, 1), (1, 1), (1, 2)], n_users=2, n_items=3)
    ckg = build_collaborative_kg(train, np.array([[0, 0, 2]]), 3, 1, np.array([0, 1, -1]))
    np.testing.assert_array_equal(ckg.heads, [4, 4, 5, 5, 0, 1, 1, 3, 0, 2])
    np.testing.assert_array_equal(ckg.relations, [0, 0, 0, 0, 1, 1, 1, 1, 2, 3])
    np.testing.assert_array_equal(ckg.tails, [0, 1, 1, 3, 4, 4, 5, 5, 2, 0])
    np.testing.assert_array_equal(ckg.relation_ptr, [0, 4, 8, 9, 10])
    np.testing.assert_array_equal(ckg.item_node, [0, 1, 3])
    np.testing.assert_array_equal(ckg.user_node, [4, 5])
    assert (ckg.n_nodes, ckg.n_relations, ckg.n_kg_edges) == (6, 4, 2)
    assert ckg.n_same_entity_items == 0 and ckg.same_entity_relation is None and ckg.n_kg_relations == 1


def _planted_with_shared_entities():
    """Planted data (3 KG relations); items 10..14 are linked to the entities of items 0..4 (same cluster)."""
    dataset = planted_dataset(
        n_users=40, n_items=30, interactions_per_user=8, modality_dims={"text": 6, "image": 4}
    )
    assert dataset.kg is not None
    links = dataset.kg.item_entity.copy()
    links[10:15] = links[0:5]
    kg = dataclasses.replace(dataset.kg, item_entity=links)
    return ModelInputs.from_dataset(
        dataclasses.replace(dataset, kg=kg), torch.device("cpu")
    ), dataset.kg.n_relations


@pytest.mark.parametrize("name", ["multikg4rec", "kgat"])
@pytest.mark.parametrize("kg_filter", [{}, {"min_entity_triples": 0, "min_relation_triples": 0}])
def test_kg_models_train_on_items_sharing_an_entity(name, kg_filter):
    inputs, n_dataset_relations = _planted_with_shared_entities()
    torch.manual_seed(0)
    params = {"embedding_dim": 8, "relation_dim": 4, "n_heads": 2, "n_blocks": 1, "sequence_length": 4}
    model = build_model(name, inputs, {**params, **kg_filter, "kg_batch_size": 256})
    same_entity = 2 + n_dataset_relations
    assert model.n_kg_relations == n_dataset_relations + 1 and model.n_relations == 2 + 2 * (
        n_dataset_relations + 1
    )
    assert model.relation_embedding.weight.shape[0] == model.n_relations
    assert model.relation_projection.shape[0] == model.n_relations
    item_node = model.item_node
    assert len(item_node.unique()) == inputs.n_items  # every item its own node
    # the five sharing items get the extra nodes (in item order) between the entities and the users
    n_entities = int(model.user_node.min()) - 5
    assert item_node[10:15].tolist() == list(range(n_entities, n_entities + 5))
    assert (item_node[:10] < n_entities).all() and (item_node[15:] < n_entities).all()
    # the KG loss samples from the CKG's KG edges, which hold the same-entity edges in both directions
    lo, hi = model.kg_edge_range
    kg_part = list(zip(model.edge_heads[lo:hi].tolist(), model.edge_relations[lo:hi].tolist(), strict=True))
    for item in range(10, 15):
        assert (int(item_node[item]), same_entity) in kg_part
        assert (int(item_node[item - 10]), same_entity + model.n_kg_relations) in kg_part
    if model.multimodal is not None:  # token 0 of an item is its own node, carrying its own features
        rows = model.sequence_token_rows[:, 0]
        torch.testing.assert_close(model.token_features_1[rows], inputs.features["text"])
        assert (model.sequence_types[:, 0] == 1).all()

    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    before = model.node_embedding.weight.detach().clone()
    batch = BPRBatch(
        users=torch.tensor([0, 1, 2, 3]),
        pos_items=torch.tensor([10, 11, 0, 1]),
        neg_items=torch.tensor([12, 3, 13, 4]),
    )
    model.train()
    terms = model.loss_terms(batch)
    assert set(terms) == {"bpr", "reg", "kg", "kg_reg"}
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert model.relation_projection.grad[same_entity].abs().sum() > 0
    assert model.relation_projection.grad[same_entity + model.n_kg_relations].abs().sum() > 0
    assert model.node_embedding.weight.grad[item_node[10:13]].abs().sum(dim=1).gt(0).all()
    optimizer.step()
    assert not torch.equal(model.node_embedding.weight[item_node[10]], before[item_node[10]])
    model.eval()
    with torch.no_grad():
        users, items = model.representations()
    assert torch.isfinite(users).all() and torch.isfinite(items).all() and items.shape[0] == inputs.n_items
