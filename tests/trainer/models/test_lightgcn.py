"""LightGCN's propagation: a hand-checked tiny graph and equality with the stacked-mean formulation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.graphs import normalized_bipartite_adjacency, to_torch_sparse_csr
from trainer.models.base import ModelInputError, ModelInputs
from trainer.models.lightgcn import propagate
from trainer.models.registry import build_model


def test_propagate_is_the_layer_mean_on_a_hand_checked_graph():
    # one user, one item, one interaction: Â = [[0, 1], [1, 0]] (both degrees 1)
    adjacency = to_torch_sparse_csr(normalized_bipartite_adjacency(sp.csr_matrix(np.array([[1.0]]))), torch.device("cpu"))
    ego = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    # layers: ego, swapped, ego again -> mean = (2 ego + swapped) / 3
    expected = torch.tensor([[(2 * 1 + 3) / 3, (2 * 2 + 5) / 3], [(2 * 3 + 1) / 3, (2 * 5 + 2) / 3]])
    torch.testing.assert_close(propagate(adjacency, ego, 2), expected)
    torch.testing.assert_close(propagate(adjacency, ego, 0), ego)


def test_propagate_equals_stack_mean_exactly_values_and_gradients():
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((30, 20)) < 0.2).astype(np.float32))
    adjacency = to_torch_sparse_csr(normalized_bipartite_adjacency(train), torch.device("cpu"))
    for n_layers in (1, 2, 3):
        ego = torch.randn(50, 8, requires_grad=True)
        reference_ego = ego.detach().clone().requires_grad_(True)
        layers = [reference_ego]
        for _ in range(n_layers):
            layers.append(torch.sparse.mm(adjacency, layers[-1]))
        reference = torch.stack(layers, dim=0).mean(dim=0)
        result = propagate(adjacency, ego, n_layers)
        assert torch.equal(result, reference)
        weights = torch.randn(50, 8)
        (result * weights).sum().backward()
        (reference * weights).sum().backward()
        torch.testing.assert_close(ego.grad, reference_ego.grad, rtol=0, atol=1e-6)


def test_user_scale_multiplies_the_users_only_and_must_be_positive():
    train = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float32))
    inputs = ModelInputs.from_train_matrix(train)
    torch.manual_seed(0)
    plain = build_model("lightgcn", inputs, {"embedding_dim": 4})
    scaled = build_model("lightgcn", inputs, {"embedding_dim": 4, "user_scale": 0.25})
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        (users, items), (scaled_users, scaled_items) = plain.representations(), scaled.representations()
    torch.testing.assert_close(scaled_users, users * 0.25)
    torch.testing.assert_close(scaled_items, items)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ModelInputError, match="user_scale must be a positive finite number"):
            build_model("lightgcn", inputs, {"user_scale": bad})
