"""LUDP: kNN graph, normalisation, fusion, user preference graph, ablations, cold-start encoder, explain.

The kNN example uses four items with hand-computed cosine similarities (unit vectors, no ties):

    x0 = (1, 0, 0), x1 = (0.8, 0.6, 0), x2 = (0.6, 0, 0.8), x3 = 2 * (0, 0.6, 0.8)   (x3 is not unit length)
    cos: 01 = .8, 02 = .6, 03 = 0, 12 = .48, 13 = .36, 23 = .64
    top-2 (self excluded): 0 -> [1 (.8), 2 (.6)], 1 -> [0 (.8), 2 (.48)], 2 -> [3 (.64), 0 (.6)], 3 -> [2 (.64), 1 (.36)]
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.data.dataset import InteractionDataset
from trainer.graphs import knn_graph, knn_to_torch_sparse_csr, ludp_item_graph_weights
from trainer.models.base import BPRBatch, ModelInputError, ModelInputs
from trainer.models.lightgcn import LightGCN, LightGCNConfig
from trainer.models.ludp import LUDP, LUDPConfig, ModalityFusion, mean_item_features_per_user

FEATURES = torch.tensor(
    [[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.0, 0.8], [0.0, 1.2, 1.6]],
)
EXPECTED_NEIGHBOURS = [[1, 2], [0, 2], [3, 0], [2, 1]]
EXPECTED_SIMILARITIES = [[0.8, 0.6], [0.8, 0.48], [0.64, 0.6], [0.64, 0.36]]

# 3 users x 4 items: user 0 -> {0, 1}, user 1 -> {2}, user 2 -> {1, 2, 3}
TRAIN = sp.csr_matrix((np.ones(6, dtype=np.float32), ([0, 0, 1, 2, 2, 2], [0, 1, 2, 1, 2, 3])), shape=(3, 4))


def tiny_inputs(features: dict[str, torch.Tensor] | None = None) -> ModelInputs:
    return ModelInputs.from_train_matrix(
        TRAIN, features=features if features is not None else {"text": FEATURES, "image": FEATURES.flip(1) + 0.1}
    )


# ----- kNN graph -------------------------------------------------------------------------------------------


def test_knn_graph_keeps_top_k_similarity_values_per_row():
    neighbours, similarities = knn_graph(FEATURES, k=2)
    assert neighbours.tolist() == EXPECTED_NEIGHBOURS
    torch.testing.assert_close(similarities, torch.tensor(EXPECTED_SIMILARITIES))


def test_knn_graph_chunking_does_not_change_the_result():
    # 16 bytes per chunk -> one row at a time (a row of similarities is 4 * 4 = 16 bytes)
    neighbours, similarities = knn_graph(FEATURES, k=2, max_chunk_bytes=16)
    assert neighbours.tolist() == EXPECTED_NEIGHBOURS
    torch.testing.assert_close(similarities, torch.tensor(EXPECTED_SIMILARITIES))


def test_knn_graph_with_self_and_k_clipped_to_candidates():
    neighbours, similarities = knn_graph(FEATURES, k=1, exclude_self=False)
    assert neighbours.ravel().tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(similarities.ravel(), torch.ones(4))
    neighbours, _ = knn_graph(FEATURES, k=10)
    assert neighbours.shape == (4, 3)


def test_knn_graph_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        knn_graph(torch.ones(4), k=2)
    with pytest.raises(ValueError, match="k >= 1"):
        knn_graph(FEATURES, k=0)


def test_ludp_normalisation_divides_similarities_by_sqrt_neighbour_count():
    _, similarities = knn_graph(FEATURES, k=2)
    weights = ludp_item_graph_weights(similarities)
    torch.testing.assert_close(weights, torch.tensor(EXPECTED_SIMILARITIES) / math.sqrt(2))
    binary = ludp_item_graph_weights(similarities, "binary")
    torch.testing.assert_close(binary, torch.full((4, 2), 1 / math.sqrt(2)))
    # an all-zero feature row is similar to nothing: its top-k are tie order only, so no edges in any mode
    _, with_zero_row = knn_graph(torch.cat([FEATURES, torch.zeros(1, FEATURES.shape[1])]), k=2)
    for mode in ("similarity", "binary", "mean"):
        assert torch.equal(ludp_item_graph_weights(with_zero_row, mode)[4], torch.zeros(2)), mode
    assert (ludp_item_graph_weights(with_zero_row, "binary")[:4] == 1 / math.sqrt(2)).all()
    with pytest.raises(ValueError, match="one of"):
        ludp_item_graph_weights(similarities, "sqrt")


def test_mean_item_graph_weights_are_the_similarity_weighted_mean_times_the_scale():
    _, similarities = knn_graph(FEATURES, k=2)
    expected = torch.tensor([[0.8 / 1.4, 0.6 / 1.4], [0.8 / 1.28, 0.48 / 1.28], [0.64 / 1.24, 0.6 / 1.24],
                             [0.64 / 1.0, 0.36 / 1.0]])  # fmt: skip
    torch.testing.assert_close(ludp_item_graph_weights(similarities, "mean"), expected)
    torch.testing.assert_close(ludp_item_graph_weights(similarities, "mean", scale=0.2), 0.2 * expected)
    torch.testing.assert_close(
        ludp_item_graph_weights(similarities, "similarity", scale=0.5), torch.tensor(EXPECTED_SIMILARITIES) / (2 * math.sqrt(2))
    )
    # a negative similarity among the kept ones counts as zero: the weights stay a convex combination
    mixed = torch.tensor([[0.5, -0.5], [0.0, 0.0], [-0.2, -0.4]])
    torch.testing.assert_close(
        ludp_item_graph_weights(mixed, "mean"), torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    )
    with pytest.raises(ValueError, match="item_graph_scale"):
        LUDPConfig(item_graph_scale=0.0)
    with pytest.raises(ValueError, match="item_graph_weights"):
        LUDPConfig(item_graph_weights="sqrt")


def test_mean_item_graph_propagation_is_the_hand_computed_scaled_mean():
    torch.manual_seed(0)
    config = LUDPConfig(embedding_dim=3, knn_k=2, item_graph_weights="mean", item_graph_scale=0.2)
    model = LUDP(tiny_inputs({"text": FEATURES}), config)
    e = model.item_embedding.weight.detach()
    with torch.no_grad():
        h = model.item_modal_representations()[0]
    expected = 0.2 * torch.stack(
        [
            (0.8 * e[1] + 0.6 * e[2]) / 1.4,
            (0.8 * e[0] + 0.48 * e[2]) / 1.28,
            (0.64 * e[3] + 0.6 * e[0]) / 1.24,
            (0.64 * e[2] + 0.36 * e[1]) / 1.0,
        ]
    )
    torch.testing.assert_close(h, expected)


def test_knn_sparse_matrix_places_weights_at_neighbours():
    neighbours, similarities = knn_graph(FEATURES, k=2)
    dense = knn_to_torch_sparse_csr(neighbours, similarities, 4).to_dense()
    expected = torch.zeros(4, 4)
    for row, (cols, values) in enumerate(zip(EXPECTED_NEIGHBOURS, EXPECTED_SIMILARITIES, strict=True)):
        expected[row, cols] = torch.tensor(values)
    torch.testing.assert_close(dense, expected)


# ----- model parts -----------------------------------------------------------------------------------------


def test_item_graph_propagation_is_the_hand_computed_weighted_sum():
    torch.manual_seed(0)
    model = LUDP(tiny_inputs({"text": FEATURES}), LUDPConfig(embedding_dim=3, knn_k=2, item_graph_layers=1))
    e = model.item_embedding.weight.detach()
    with torch.no_grad():
        h = model.item_modal_representations()[0]
    s = 1 / math.sqrt(2)
    expected = torch.stack(
        [
            s * (0.8 * e[1] + 0.6 * e[2]),
            s * (0.8 * e[0] + 0.48 * e[2]),
            s * (0.64 * e[3] + 0.6 * e[0]),
            s * (0.64 * e[2] + 0.36 * e[1]),
        ]
    )
    torch.testing.assert_close(h, expected)


def test_item_graph_layers_propagate_each_modality_on_its_own_graph():
    # the stacked / block-diagonal sparse matmuls equal G_m^L E per modality
    torch.manual_seed(0)
    features = {"a": FEATURES, "b": FEATURES.flip(1) + 0.1}
    model = LUDP(tiny_inputs(features), LUDPConfig(embedding_dim=3, knn_k=2, item_graph_layers=3))
    e = model.item_embedding.weight.detach()
    with torch.no_grad():
        h = model.item_modal_representations()
    for m, graph in enumerate(model.item_graphs):
        dense = graph.to_dense()
        torch.testing.assert_close(h[m], dense @ (dense @ (dense @ e)))


def test_attention_fusion_matches_formula_and_weights_sum_to_one():
    torch.manual_seed(0)
    fusion = ModalityFusion("attention", n_modalities=3, dim=4)
    stacked = torch.randn(3, 5, 4)
    weights = fusion.weights(stacked)
    assert weights.shape == (5, 3)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(5))
    logits = torch.stack(
        [
            torch.tanh(stacked[m] @ fusion.projections[m].weight.T + fusion.bias) @ fusion.query
            for m in range(3)
        ],
        dim=1,
    )
    alpha = torch.softmax(logits, dim=1)
    expected = sum(alpha[:, m : m + 1] * stacked[m] for m in range(3))
    torch.testing.assert_close(fusion(stacked), expected)


def test_attention_fusion_gradients_match_autograd_of_the_formula():
    # the fused forward/backward (_AttentionFusion) against autograd through torch.tanh, in float64
    torch.manual_seed(0)
    fusion = ModalityFusion("attention", n_modalities=3, dim=4).double()
    with torch.no_grad():
        fusion.bias.normal_()
    stacked = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 4, dtype=torch.float64)
    (fusion(stacked) * upstream).sum().backward()
    ours = [stacked.grad.clone()] + [p.grad.clone() for p in fusion.parameters()]
    stacked.grad = None
    fusion.zero_grad()
    logits = torch.stack(
        [torch.tanh(stacked[m] @ fusion.projections[m].weight.T + fusion.bias) @ fusion.query for m in range(3)]
    )
    reference = (torch.softmax(logits, dim=0).unsqueeze(-1) * stacked).sum(dim=0)
    (reference * upstream).sum().backward()
    expected = [stacked.grad] + [p.grad for p in fusion.parameters()]
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_sum_and_concat_fusion():
    stacked = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    torch.testing.assert_close(ModalityFusion("sum", 2, 2)(stacked), stacked[0] + stacked[1])
    concat = ModalityFusion("concat", 2, 2)
    expected = concat.linear(torch.cat([stacked[0], stacked[1]], dim=1))
    torch.testing.assert_close(concat(stacked), expected)
    assert concat.weights(stacked) is None


def test_user_mean_features_hand_checked():
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [0.0, 6.0]])
    means = mean_item_features_per_user(TRAIN, features)
    torch.testing.assert_close(means, torch.tensor([[2.0, 1.0], [5.0, 4.0], [8 / 3, 4.0]]))
    weighted = sp.csr_matrix(TRAIN, dtype=np.float32) * 3.0  # a float32 CSR shares its data with csr_matrix(...)
    before = weighted.data.copy()
    mean_item_features_per_user(weighted, features)
    np.testing.assert_array_equal(weighted.data, before)  # the caller's matrix is left as it is


def test_user_preference_graph_formula():
    torch.manual_seed(0)
    model = LUDP(tiny_inputs({"text": FEATURES}), LUDPConfig(embedding_dim=3, knn_k=2, negative_slope=0.2))
    means = torch.stack([FEATURES[[0, 1]].mean(0), FEATURES[2], FEATURES[[1, 2, 3]].mean(0)])
    w1, w2 = model.feature_projections[0], model.preference_projections[0]
    leaky = torch.nn.functional.leaky_relu
    expected = leaky(w2(leaky(w1(means), 0.2)), 0.2) + model.user_embedding.weight
    with torch.no_grad():
        torch.testing.assert_close(model.user_modal_representations()[0], expected.detach())
        # one modality: the attention weight is 1, so P is that modality's representation
        torch.testing.assert_close(model.user_graph_part(), expected.detach())


def test_modality_weights_rows_sum_to_one_for_users_and_items():
    torch.manual_seed(0)
    features = {"a": FEATURES, "b": FEATURES.flip(1) + 0.1, "c": torch.rand(4, 5)}
    model = LUDP(tiny_inputs(features), LUDPConfig(embedding_dim=8, knn_k=2))
    user_weights, item_weights = model.modality_weights()
    assert user_weights.shape == (3, 3) and item_weights.shape == (4, 3)
    torch.testing.assert_close(user_weights.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(item_weights.sum(dim=1), torch.ones(4))
    assert (user_weights > 0).all() and (item_weights > 0).all()


def test_representations_are_collaborative_plus_graph_parts():
    torch.manual_seed(0)
    model = LUDP(tiny_inputs(), LUDPConfig(embedding_dim=6, knn_k=2))
    with torch.no_grad():
        users, items = model.representations()
        collab_users, collab_items = model.collaborative()
        torch.testing.assert_close(users, collab_users + model.user_graph_part())
        torch.testing.assert_close(items, collab_items + model.item_graph_part())


@pytest.mark.parametrize("scale", [0.25, 1.0])
def test_user_graph_scale_multiplies_p_only(scale):
    inputs = tiny_inputs()
    torch.manual_seed(0)
    scaled = LUDP(inputs, LUDPConfig(embedding_dim=4, knn_k=2, layer_combination="mean", user_graph_scale=scale))
    torch.manual_seed(0)
    paper = LUDP(inputs, LUDPConfig(embedding_dim=4, knn_k=2, layer_combination="mean"))  # same initial parameters
    with torch.no_grad():
        collab_users, collab_items = paper.collaborative()
        users, items = scaled.representations()
        torch.testing.assert_close(users, collab_users + scale * paper.user_graph_part())
        torch.testing.assert_close(items, collab_items + paper.item_graph_part())
        # the modality weights are those of the unscaled P
        torch.testing.assert_close(scaled.modality_weights()[0], paper.modality_weights()[0])
    # the training loss scores with the same scaled users as representations()
    batch = BPRBatch(torch.tensor([0, 2, 2, 1]), torch.tensor([1, 3, 1, 2]), torch.tensor([2, 0, 0, 3]))
    users, items = scaled.representations()
    u = users[batch.users]
    expected = torch.nn.functional.softplus(
        (u * items[batch.neg_items]).sum(-1) - (u * items[batch.pos_items]).sum(-1)
    ).mean()
    torch.testing.assert_close(scaled.loss_terms(batch)["bpr"], expected)


def test_without_both_graphs_ludp_is_lightgcn_summed_over_layers():
    torch.manual_seed(0)
    inputs = tiny_inputs()
    ludp = LUDP(inputs, LUDPConfig(embedding_dim=4, n_layers=2, item_graph=False, user_graph=False))
    lightgcn = LightGCN(inputs, LightGCNConfig(embedding_dim=4, n_layers=2))
    lightgcn.load_state_dict(
        {
            "user_embedding.weight": ludp.user_embedding.weight,
            "item_embedding.weight": ludp.item_embedding.weight,
        }
    )
    with torch.no_grad():
        for ours, mean_form in zip(ludp.representations(), lightgcn.representations(), strict=True):
            torch.testing.assert_close(ours, 3 * mean_form)  # LightGCN averages layers 0..2, LUDP sums them


def test_layer_combination_mean_without_graphs_is_exactly_lightgcn():
    inputs = tiny_inputs()
    batch = BPRBatch(torch.tensor([0, 1, 2, 2]), torch.tensor([1, 2, 3, 1]), torch.tensor([2, 0, 0, 0]))
    torch.manual_seed(0)
    ludp = LUDP(inputs, LUDPConfig(embedding_dim=4, layer_combination="mean", item_graph=False, user_graph=False))
    torch.manual_seed(0)
    lightgcn = LightGCN(inputs, LightGCNConfig(embedding_dim=4, n_layers=2))  # same seed -> same initial tables
    for ours, theirs in zip(ludp.representations(), lightgcn.representations(), strict=True):
        assert torch.equal(ours, theirs)
    ours_terms, their_terms = ludp.loss_terms(batch), lightgcn.loss_terms(batch)
    assert ours_terms.keys() == their_terms.keys()
    for name in ours_terms:
        assert torch.equal(ours_terms[name], their_terms[name])
    sum(ours_terms.values()).backward()
    sum(their_terms.values()).backward()
    assert torch.equal(ludp.user_embedding.weight.grad, lightgcn.user_embedding.weight.grad)
    assert torch.equal(ludp.item_embedding.weight.grad, lightgcn.item_embedding.weight.grad)


def test_ablation_switches_remove_parameters_and_loss_has_gradients():
    inputs = tiny_inputs()
    batch = BPRBatch(torch.tensor([0, 2, 2]), torch.tensor([1, 3, 1]), torch.tensor([2, 0, 0]))
    full = LUDP(inputs, LUDPConfig(embedding_dim=4, knn_k=2))
    no_user = LUDP(inputs, LUDPConfig(embedding_dim=4, knn_k=2, user_graph=False))
    no_item = LUDP(inputs, LUDPConfig(embedding_dim=4, knn_k=2, item_graph=False))
    assert not hasattr(no_user, "user_fusion") and not hasattr(no_item, "item_fusion")
    assert no_user.modality_weights()[0] is None and no_item.modality_weights()[1] is None
    terms = full.loss_terms(batch)
    assert set(terms) == {"bpr", "reg"}
    sum(terms.values()).backward()
    assert float(full.item_fusion.query.grad.abs().sum()) > 0
    assert float(full.feature_projections[0].weight.grad.abs().sum()) > 0


def test_loss_uses_the_same_scores_as_representations():
    torch.manual_seed(0)
    model = LUDP(tiny_inputs(), LUDPConfig(embedding_dim=4, knn_k=2, reg_weight=0.0))
    batch = BPRBatch(torch.tensor([0, 2, 2]), torch.tensor([1, 3, 1]), torch.tensor([2, 0, 0]))
    users, items = model.representations()
    pos = (users[batch.users] * items[batch.pos_items]).sum(-1)
    neg = (users[batch.users] * items[batch.neg_items]).sum(-1)
    expected = torch.nn.functional.softplus(neg - pos).mean()
    torch.testing.assert_close(model.loss_terms(batch)["bpr"], expected)


def test_loss_gradients_equal_those_of_the_full_user_computation():
    # loss_terms computes P only for the batch's distinct users; gradients must match the full computation
    torch.manual_seed(0)
    model = LUDP(tiny_inputs(), LUDPConfig(embedding_dim=4, knn_k=2))
    batch = BPRBatch(torch.tensor([0, 2, 2, 0]), torch.tensor([1, 3, 1, 0]), torch.tensor([2, 0, 0, 3]))
    sum(model.loss_terms(batch).values()).backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    users, items = model.representations()
    u, p, n = users[batch.users], items[batch.pos_items], items[batch.neg_items]
    reg = sum(
        t.pow(2).sum()
        for t in (
            model.user_embedding(batch.users),
            model.item_embedding(batch.pos_items),
            model.item_embedding(batch.neg_items),
        )
    ) / (2 * 4)
    loss = torch.nn.functional.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean() + model.config.reg_weight * reg
    loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, msg=name)


def test_config_and_input_errors_are_clear():
    with pytest.raises(ValueError, match="fusion"):
        LUDPConfig(fusion="max")
    with pytest.raises(ValueError, match="knn_k"):
        LUDPConfig(knn_k=0)
    with pytest.raises(ValueError, match="layer_combination"):
        LUDPConfig(layer_combination="max")
    for bad in (0.0, -0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="user_graph_scale"):
            LUDPConfig(user_graph_scale=bad)
        with pytest.raises(ValueError, match="item_graph_scale"):
            LUDPConfig(item_graph_scale=bad)
    with pytest.raises(ModelInputError, match="audio"):
        LUDP(tiny_inputs(), LUDPConfig(modalities=["audio"]))
    with pytest.raises(ModelInputError, match="at least one"):
        LUDP(tiny_inputs({}), LUDPConfig())


# ----- cold start -------------------------------------------------------------------------------------------


def test_cold_start_encoder_is_the_similarity_weighted_mean_of_neighbour_embeddings():
    torch.manual_seed(0)
    config = LUDPConfig(embedding_dim=4, cold_start_neighbours=2, cold_start_encoder="neighbour_mean")
    model = LUDP(tiny_inputs({"text": FEATURES}), config).eval()
    encoder = model.item_encoder()
    with torch.no_grad():
        items = model.representations()[1]
        # a new item between x0 and x1: its two nearest existing items, weighted by cosine
        new = torch.tensor([[1.0, 0.3, 0.0]])
        cos = (new / new.norm()) @ (FEATURES / FEATURES.norm(dim=1, keepdim=True)).T
        top_values, top_items = torch.topk(cos[0], 2)
        expected = (top_values[:, None] * items[top_items]).sum(0) / top_values.sum()
        torch.testing.assert_close(encoder(new)[0], expected)
        # an existing item's own features with k = 1 give back its final embedding
        model.config.cold_start_neighbours = 1
        torch.testing.assert_close(model.item_encoder()(FEATURES), items)


@pytest.mark.parametrize("fusion", ["attention", "sum", "concat"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("weights", ["similarity", "mean"])
def test_item_graph_cold_start_encoder_is_the_models_item_graph_part_for_a_node_without_interactions(
    fusion, layers, weights
):
    torch.manual_seed(0)
    scale = 1.0 if weights == "similarity" else 0.3
    config = LUDPConfig(
        embedding_dim=4, knn_k=2, fusion=fusion, item_graph_layers=layers, cold_start_encoder="item_graph",
        item_graph_weights=weights, item_graph_scale=scale,
    )  # fmt: skip
    model = LUDP(tiny_inputs(), config).eval()
    with torch.no_grad():
        for param in model.parameters():  # non-trivial fusion parameters (bias starts at zero)
            param.add_(0.1 * torch.randn_like(param))
        encoder = model.item_encoder()
        new = {"image": torch.tensor([[0.2, 0.9, 1.1]]), "text": torch.tensor([[1.0, 0.3, 0.0]])}
        if layers == 1:
            tables = [model.item_embedding.weight] * 2
        else:
            tables = [graph @ model.item_embedding.weight for graph in model.item_graphs]  # layer 1, per modality
        per_modality = []
        for m, name in enumerate(model.modalities):  # sorted: image, text
            unit = model.unit_features[m]
            x = new[name] / new[name].norm()
            values, neighbours = torch.topk((x @ unit.T)[0], 2)
            edge = values / math.sqrt(2) if weights == "similarity" else scale * values / values.sum()
            per_modality.append((edge[:, None] * tables[m][neighbours]).sum(0))
        expected = model.item_fusion(torch.stack(per_modality)[:, None, :])[0]  # the model's own fusion
        torch.testing.assert_close(encoder(new["image"], new["text"])[0], expected)


def test_item_graph_cold_start_encoder_needs_the_item_graph():
    with pytest.raises(ValueError, match="needs item_graph"):
        LUDPConfig(item_graph=False, cold_start_encoder="item_graph")
    with pytest.raises(ValueError, match="cold_start_encoder"):
        LUDPConfig(cold_start_encoder="nearest")
    assert LUDPConfig().cold_start_encoder == "neighbour_mean"  # chosen on validation items in session 10
    assert LUDPConfig(item_graph=False).cold_start_encoder == "neighbour_mean"
    with pytest.raises(ValueError, match="cold_start_neighbours must be >= 1"):
        LUDPConfig(cold_start_neighbours=0)


def test_cold_start_encoder_exports_to_onnx(tmp_path):
    from trainer.export import export_item_encoder

    torch.manual_seed(0)
    features = {"image": (FEATURES.flip(1) + 0.1).numpy(), "text": FEATURES.numpy()}
    dataset = InteractionDataset(
        name="tiny",
        user_ids=["u0", "u1", "u2"],
        item_ids=["i0", "i1", "i2", "i3"],
        train=TRAIN,
        valid=sp.csr_matrix((3, 4), dtype=np.float32),
        test=sp.csr_matrix((3, 4), dtype=np.float32),
        features=features,
    )
    for encoder_kind, weights in (("neighbour_mean", "similarity"), ("item_graph", "similarity"), ("item_graph", "mean")):
        config = LUDPConfig(
            embedding_dim=4, knn_k=2, cold_start_neighbours=2, cold_start_encoder=encoder_kind,
            item_graph_weights=weights, item_graph_scale=0.2 if weights == "mean" else 1.0,
        )  # fmt: skip
        model = LUDP(ModelInputs.from_dataset(dataset, torch.device("cpu")), config)
        info = export_item_encoder(model.eval(), dataset, tmp_path / f"{encoder_kind}_{weights}.onnx")
        assert info is not None and info["inputs"] == {"image": 3, "text": 3}
        assert info["max_abs_error_vs_torch"] < 1e-5


@pytest.mark.parametrize("encoder_kind", ["neighbour_mean", "item_graph"])
def test_encoder_of_a_model_on_a_subset_of_the_modalities_still_takes_every_modality(tmp_path, encoder_kind):
    """The ONNX exporter dropped inputs the encoder never reads: LUDP with ``modalities: [text]`` on a text + image
    dataset failed its export check ("Invalid input name: image"), and the service requires every modality."""
    from service.encoder import ItemEncoder
    from trainer.export import export_item_encoder

    torch.manual_seed(0)
    features = {"image": (FEATURES.flip(1) + 0.1).numpy(), "text": FEATURES.numpy()}
    dataset = InteractionDataset(
        name="tiny", user_ids=["u0", "u1", "u2"], item_ids=["i0", "i1", "i2", "i3"], train=TRAIN,
        valid=sp.csr_matrix((3, 4), dtype=np.float32), test=sp.csr_matrix((3, 4), dtype=np.float32), features=features,
    )  # fmt: skip
    config = LUDPConfig(
        embedding_dim=4, knn_k=2, cold_start_neighbours=2, cold_start_encoder=encoder_kind, modalities=["text"]
    )
    model = LUDP(ModelInputs.from_dataset(dataset, torch.device("cpu")), config).eval()
    path = tmp_path / "item_encoder.onnx"
    info = export_item_encoder(model, dataset, path)
    assert info["inputs"] == {"image": 3, "text": 3} and info["max_abs_error_vs_torch"] < 1e-5
    served = ItemEncoder(path, info["inputs"], dim=4)
    assert [i.name for i in served.session.get_inputs()] == ["image", "text"]
    new_text = [1.0, 0.3, 0.0]
    with torch.no_grad():
        expected = model.item_encoder()(torch.zeros(1, 3), torch.tensor([new_text]))[0].numpy()
    for image in ([0.0, 0.0, 0.0], [5.0, -1.0, 2.0]):  # the unused modality's values change nothing
        got = served.encode({"image": image, "text": new_text})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    inputs = tiny_inputs()
    device = torch.device("cuda")
    inputs.features = {k: v.to(device) for k, v in inputs.features.items()}
    inputs.train_users, inputs.train_items = inputs.train_users.to(device), inputs.train_items.to(device)
    inputs.device = device
    model = LUDP(inputs, LUDPConfig(embedding_dim=4, knn_k=2)).to(device)
    batch = BPRBatch(*(torch.tensor(v, device=device) for v in ([0, 2], [1, 3], [2, 0])))
    sum(model.loss_terms(batch).values()).backward()
    users, items = model.representations()
    assert users.device.type == "cuda" and items.device.type == "cuda"
    features = [inputs.features[m][:2] for m in sorted(inputs.features)]
    assert model.item_encoder()(*features).device.type == "cuda"


def test_sparse_matmul_with_precomputed_transpose_matches_torch_gradients():
    from trainer.graphs import csr_transpose, sparse_matmul

    neighbours, similarities = knn_graph(FEATURES, k=2)
    graph = knn_to_torch_sparse_csr(neighbours, similarities, 4)  # not symmetric
    dense = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    (sparse_matmul(graph, dense, csr_transpose(graph)) * upstream).sum().backward()
    ours = dense.grad.clone()
    dense.grad = None
    (graph.to_dense() @ dense * upstream).sum().backward()
    torch.testing.assert_close(ours, dense.grad)


def test_attention_weights_are_differentiable_when_grad_is_enabled():
    torch.manual_seed(0)
    fusion = ModalityFusion("attention", n_modalities=2, dim=4)
    stacked = torch.randn(2, 5, 4, requires_grad=True)
    (fusion.weights(stacked)[:, 0] * torch.arange(5.0)).sum().backward()
    assert stacked.grad is not None and float(fusion.query.grad.abs().sum()) > 0
