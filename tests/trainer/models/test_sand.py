"""SAND and LightGCN+SAND models: input validation, variants, structure, cold-start encoder."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.models.base import BPRBatch, ModelInputError, ModelInputs
from trainer.models.registry import build_model
from trainer.models.sand import SAND, mixed_knn_adjacency


def _inputs(dims: dict[str, int], n_users: int = 6, n_items: int = 8, seed: int = 0) -> ModelInputs:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.4).astype(np.float32)
    dense[np.arange(n_users), np.arange(n_users) % n_items] = 1.0
    train = sp.csr_matrix(dense)
    return ModelInputs.from_train_matrix(
        train,
        features={
            name: torch.as_tensor(rng.normal(size=(n_items, d)).astype(np.float32))
            for name, d in dims.items()
        },
    )


BATCH = BPRBatch(
    users=torch.tensor([0, 1, 2]), pos_items=torch.tensor([0, 1, 1]), neg_items=torch.tensor([5, 6, 7])
)


def test_declared_feature_dimension_mismatch_is_a_clear_error():
    inputs = _inputs({"image": 12, "text": 5})
    with pytest.raises(ModelInputError, match=r"'image'.*declares feature dimension 4096.*\[8, 12\]"):
        build_model("sand", inputs, {"embedding_dim": 8, "feature_dims": {"image": 4096, "text": 5}})
    model = build_model("sand", inputs, {"embedding_dim": 8, "feature_dims": {"image": 12, "text": 5}})
    assert model.modalities == ["image", "text"]


@pytest.mark.parametrize(
    ("dims", "params", "message"),
    [
        ({"text": 5}, {"embedding_dim": 8}, "at least 2 modalities"),
        ({"image": 3, "text": 5}, {"embedding_dim": 6}, "multiple of 2 x 2 modalities"),
        ({"image": 3, "text": 5}, {"embedding_dim": 8, "modalities": ["image", "audio"]}, "'audio'"),
        (
            {"image": 3, "text": 5},
            {"embedding_dim": 8, "knn_modality_weights": [1.0]},
            "knn_modality_weights",
        ),
        ({"image": 3, "text": 5}, {"embedding_dim": 8, "distance": "kl"}, "distance must be one of"),
        ({"image": 3, "text": 5}, {"embedding_dim": 8, "user_attention": "max"}, "user_attention must be one of"),
        ({"image": 3, "text": 5}, {"embedding_dim": 8, "layer_combination": "max"}, "layer_combination must be one"),
        ({"image": 3, "text": 5}, {"embedding_dim": 8, "modal_scale": 0.0}, "set item_id_in_graph: true"),
        ({"image": 3, "text": 5}, {"embedding_dim": 8, "knn_scale": -1.0}, "knn_scale must be a finite number ≥ 0"),
        ({"image": 3, "text": 5}, {"embedding_dim": 8, "modal_scale": float("inf")}, "modal_scale must be a finite"),
    ],
)
def test_bad_inputs_raise_model_input_error(dims, params, message):
    with pytest.raises(ModelInputError, match=message):
        build_model("sand", _inputs(dims), params)
    if not {"knn_modality_weights", "user_attention", "layer_combination", "modal_scale", "knn_scale"} & set(params):
        with pytest.raises(ModelInputError, match=message):
            build_model("lightgcn_sand", _inputs(dims), params)


def test_three_modalities_any_dims_give_final_dimension_and_all_terms():
    torch.manual_seed(0)
    model = build_model(
        "sand", _inputs({"audio": 3, "image": 11, "text": 7}), {"embedding_dim": 12, "knn_k": 3}
    )
    assert model.part_dim == 2
    users, items = model.representations()
    assert users.shape == (6, 12) and items.shape == (8, 12)
    terms = model.loss_terms(BATCH)
    assert set(terms) == {"bpr", "reg", "align", "distance"}
    aux = model.auxiliary_loss_terms(BATCH)
    assert set(aux) == {"club_nll"} and set(model.objective.distancing.estimators) == {
        "audio",
        "image",
        "text",
    }


@pytest.mark.parametrize("name", ["sand", "lightgcn_sand"])
@pytest.mark.parametrize(
    ("align", "distance", "expected"),
    [
        ("solosim", "mi", {"align", "distance"}),
        ("infonce", "l2", {"align", "distance"}),
        ("none", "mi", {"distance"}),
        ("solosim", "none", {"align"}),
        ("none", "none", set()),
    ],
)
def test_variants_and_ablations_select_loss_terms(name, align, distance, expected):
    torch.manual_seed(0)
    model = build_model(
        name, _inputs({"image": 9, "text": 4}), {"embedding_dim": 8, "align": align, "distance": distance}
    )
    assert set(model.loss_terms(BATCH)) == {"bpr", "reg"} | expected
    has_estimator = distance == "mi"
    assert bool(model.auxiliary_parameters()) == has_estimator
    assert bool(model.auxiliary_loss_terms(BATCH)) == has_estimator


def test_auxiliary_step_trains_only_the_estimator_on_this_batch_pairs():
    torch.manual_seed(0)
    model = build_model("sand", _inputs({"image": 9, "text": 4}), {"embedding_dim": 8})
    aux_ids = {id(p) for p in model.auxiliary_parameters()}
    aux = model.auxiliary_loss_terms(BATCH)
    aux["club_nll"].backward()
    for parameter in model.parameters():
        has_grad = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        assert has_grad == (id(parameter) in aux_ids)
    items = torch.tensor([0, 1])  # the distinct positives (objective_on_negatives is off by default)
    torch.testing.assert_close(model._objective_items(BATCH), items)
    with torch.no_grad():
        parts = model.projection(
            {m: model._features()[m][items] for m in model.modalities}, standardized=True
        )
        expected = model.objective.distancing.estimator_loss(
            {m: parts[m][0] for m in parts}, {m: parts[m][1] for m in parts}
        )
    torch.testing.assert_close(aux["club_nll"].detach(), expected)


def test_main_loss_does_not_touch_estimator_gradients():
    torch.manual_seed(0)
    model = build_model("sand", _inputs({"image": 9, "text": 4}), {"embedding_dim": 8})
    sum(model.loss_terms(BATCH).values()).backward()
    assert all(p.grad is None for p in model.auxiliary_parameters())
    assert model.projection.splitters["image"].linear.weight.grad is not None


def test_representations_are_recomputed_from_current_parameters():
    torch.manual_seed(0)
    model = build_model("sand", _inputs({"image": 9, "text": 4}), {"embedding_dim": 8})
    with torch.no_grad():
        before = model.representations()[1].clone()
        model.projection.splitters["text"].linear.bias.add_(1.0)
        after = model.representations()[1]
    assert not torch.allclose(before, after)


def test_item_encoder_gives_layer_zero_projection_for_cold_items():
    torch.manual_seed(0)
    inputs = _inputs({"image": 9, "text": 4})
    model: SAND = build_model("sand", inputs, {"embedding_dim": 8})
    encoder = model.item_encoder()
    encoded = encoder(inputs.features["image"][:3], inputs.features["text"][:3])
    parts = model.projection({m: inputs.features[m][:3] for m in ("image", "text")})
    expected = torch.cat([parts["image"][0], parts["image"][1], parts["text"][0], parts["text"][1]], dim=1)
    torch.testing.assert_close(encoded, expected)
    assert encoded.shape == (3, model.representations()[1].shape[1])
    lightgcn_sand = build_model("lightgcn_sand", inputs, {"embedding_dim": 8})
    cold = lightgcn_sand.item_encoder()(inputs.features["image"][:2], inputs.features["text"][:2])
    assert cold.shape == (2, 16) and torch.all(cold[:, :8] == 0)


@pytest.mark.parametrize(("layer_combination", "modal_scale"), [("sum", 1.0), ("mean", 0.5), ("sum", 0.2)])
def test_item_encoder_equals_the_model_for_an_item_without_interactions(layer_combination, modal_scale):
    """With the ID table zeroed, an item nobody interacted with is represented by its features alone; the
    encoder must give exactly that row, whatever the layer combination and modal scale."""
    torch.manual_seed(0)
    inputs = _inputs({"image": 9, "text": 4}, n_items=9)
    train = inputs.train_matrix.tolil()
    train[:, 8] = 0
    inputs = ModelInputs.from_train_matrix(train.tocsr(), features=inputs.features)
    params = {"embedding_dim": 8, "layer_combination": layer_combination, "modal_scale": modal_scale}
    model = build_model("sand", inputs, {**params, "item_id_in_graph": True})
    with torch.no_grad():
        model.item_id_embedding.weight.zero_()
        items = model.representations()[1]
        encoded = model.item_encoder()(inputs.features["image"][8:], inputs.features["text"][8:])
    torch.testing.assert_close(encoded, items[8:])
    assert encoded.abs().sum() > 0


def test_knn_scale_and_layer_mean_act_on_their_own_terms_only():
    """item = combine(GCN layers) + knn_scale · H: the layer mean divides the GCN sum by L + 1, knn_scale multiplies
    H, and neither touches the other term."""
    torch.manual_seed(0)
    inputs = _inputs({"image": 9, "text": 4})
    paper = build_model("sand", inputs, {"embedding_dim": 8, "n_layers": 2})
    variant = build_model(
        "sand", inputs, {"embedding_dim": 8, "n_layers": 2, "knn_scale": 0.3, "layer_combination": "mean"}
    )
    variant.load_state_dict(paper.state_dict())
    with torch.no_grad():
        summed, h, _ = paper._propagate()
        torch.testing.assert_close(variant.representations()[1], summed[inputs.n_users :] / 3 + 0.3 * h)
        torch.testing.assert_close(paper.representations()[1], summed[inputs.n_users :] + h)


def test_without_content_sand_lgs_is_lightgcn_with_the_user_halved():
    """modal_scale 0 and knn_scale 0 take the features and H out of the scores: with the item ID in the graph, layer
    mean and uniform user weights over M = 2 modality chunks, SAND is LightGCN with user_scale 1/2 on the same ID
    tables: the same representations, BPR and reg terms, and the same gradients on the ID tables from SAND's whole
    loss (its alignment and distancing terms reach only the projections)."""
    torch.manual_seed(0)
    inputs = _inputs({"image": 9, "text": 4})
    params = {"embedding_dim": 8, "n_layers": 2, "item_id_in_graph": True, "layer_combination": "mean",
              "user_attention": "uniform", "modal_scale": 0.0, "knn_scale": 0.0}
    sand = build_model("sand", inputs, params)
    lightgcn = build_model("lightgcn", inputs, {"embedding_dim": 8, "n_layers": 2, "user_scale": 0.5})
    with torch.no_grad():
        lightgcn.user_embedding.weight.copy_(sand.user_embedding.weight)
        lightgcn.item_embedding.weight.copy_(sand.item_id_embedding.weight)
        for sand_side, lightgcn_side in zip(sand.representations(), lightgcn.representations(), strict=True):
            torch.testing.assert_close(sand_side, lightgcn_side)
    sand_terms, lightgcn_terms = sand.loss_terms(BATCH), lightgcn.loss_terms(BATCH)
    assert {"bpr", "reg"} < set(sand_terms)  # and SAND's alignment / distancing terms
    for name in ("bpr", "reg"):
        torch.testing.assert_close(sand_terms[name], lightgcn_terms[name])
    sum(sand_terms.values()).backward()
    sum(lightgcn_terms.values()).backward()
    torch.testing.assert_close(sand.user_embedding.weight.grad, lightgcn.user_embedding.weight.grad)
    torch.testing.assert_close(sand.item_id_embedding.weight.grad, lightgcn.item_embedding.weight.grad)
    assert sand.user_embedding.weight.grad.abs().sum() > 0


def _angles(degrees: list[float]) -> torch.Tensor:
    radians = torch.tensor(degrees) * torch.pi / 180
    return torch.stack([torch.cos(radians), torch.sin(radians)], dim=1)


def test_mixed_knn_adjacency_hand_checked():
    # k=2 with each item among its own candidates. Modality a at 0°, 10°, 90°: rows keep {0,1}, {1,0}, {2,1}.
    # Modality b at 0°, 90°, 80°: rows keep {0,2}, {1,2}, {2,1}. Every row has degree 2, so the symmetric
    # normalisation divides each binary graph by 2; weights [3, 1] mix them as 0.75 / 0.25.
    a_binary = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32)
    b_binary = np.array([[1, 0, 1], [0, 1, 1], [0, 1, 1]], dtype=np.float32)
    graph = mixed_knn_adjacency(
        {"a": _angles([0, 10, 90]), "b": _angles([0, 90, 80])}, k=2, weights=[3.0, 1.0]
    )
    np.testing.assert_allclose(graph.toarray(), 0.75 * a_binary / 2 + 0.25 * b_binary / 2, rtol=1e-6)


def test_an_item_without_features_in_a_modality_has_only_itself_as_neighbour_there():
    # modality a at 0°, 10°, 90° and item 3 all zero (no facts): cosine 0 to every item, so top-2 was tie order
    # (items 0 and 1 for it, and for every other such item). Rows 0-2 keep {0,1}, {1,0}, {2,1} as above.
    features = torch.cat([_angles([0, 10, 90]), torch.zeros(1, 2)])
    graph = mixed_knn_adjacency({"a": features}, k=2, weights=None).toarray()
    expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=np.float32) / 2
    expected[3, 3] = 1.0  # degree 1: D^-1/2 A D^-1/2 keeps its weight 1
    np.testing.assert_allclose(graph, expected, rtol=1e-6)


def test_objective_on_negatives_adds_the_sampled_negatives():
    model = build_model(
        "sand", _inputs({"image": 9, "text": 4}), {"embedding_dim": 8, "objective_on_negatives": True}
    )
    assert model._objective_items(BATCH).tolist() == [0, 1, 5, 6, 7]


def test_sparse_propagation_gradient_matches_torch_sparse_mm():
    from trainer.modules.sand_sparse import SparsePropagation

    dense_matrix = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
    propagation = SparsePropagation(dense_matrix.to_sparse_csr(), symmetric=False)
    x = torch.randn(3, 4, requires_grad=True)
    weights = torch.randn(2, 4)
    (propagation(x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, dense_matrix.T @ weights)
    torch.testing.assert_close(propagation(x.detach()), dense_matrix @ x.detach())


@pytest.mark.parametrize("item_id_in_graph", [False, True])
def test_batch_rows_equal_the_full_forward_rows(item_id_in_graph):
    torch.manual_seed(0)
    model = build_model(
        "sand", _inputs({"image": 9, "text": 4}), {"embedding_dim": 8, "item_id_in_graph": item_id_in_graph}
    )
    users, items, _ = model._forward()
    u, p, n, _ = model._batch_forward(BATCH)
    torch.testing.assert_close(u, users[BATCH.users])
    torch.testing.assert_close(p, items[BATCH.pos_items])
    torch.testing.assert_close(n, items[BATCH.neg_items])
    # and the same gradients: a score of the batch rows differentiated through both paths
    weights = torch.randn(3, *u.shape)
    parameters = [q for q in model.parameters() if q.requires_grad]

    def grads(rows):
        score = sum((w * r).sum() for w, r in zip(weights, rows, strict=True))
        return torch.autograd.grad(score, parameters, allow_unused=True)

    full = grads((users[BATCH.users], items[BATCH.pos_items], items[BATCH.neg_items]))
    batched = grads(model._batch_forward(BATCH)[:3])
    for got, want in zip(batched, full, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want)


def test_uniform_user_attention_weights_every_modality_chunk_by_one_over_m():
    torch.manual_seed(0)
    inputs = _inputs({"audio": 3, "image": 9, "text": 4})
    paper = build_model("sand", inputs, {"embedding_dim": 12})
    assert paper.config.user_attention == "softmax"  # the paper's attention by default
    uniform = build_model("sand", inputs, {"embedding_dim": 12, "user_attention": "uniform"})
    assert not any("attention" in name for name, _ in uniform.named_parameters())
    uniform.load_state_dict({k: v for k, v in paper.state_dict().items() if "attention" not in k})
    with torch.no_grad():
        summed, h, _ = paper._propagate()
        users, items = uniform.representations()
        torch.testing.assert_close(users, summed[: inputs.n_users] / 3)
        torch.testing.assert_close(items, paper.representations()[1])
        # the paper's weights differ per user; uniform ones do not
        paper_users = paper.representations()[0].reshape(inputs.n_users, 3, 4)
        weights = paper_users.norm(dim=-1) / summed[: inputs.n_users].reshape(inputs.n_users, 3, 4).norm(dim=-1)
        torch.testing.assert_close(weights.sum(-1), torch.ones(inputs.n_users))
        assert not torch.allclose(weights, torch.full_like(weights, 1 / 3))
    u, p, n, _ = uniform._batch_forward(BATCH)
    torch.testing.assert_close(u, users[BATCH.users])


def test_item_id_in_graph_extension_adds_the_id_table_to_the_graph_input():
    torch.manual_seed(0)
    inputs = _inputs({"image": 9, "text": 4})
    paper = build_model("sand", inputs, {"embedding_dim": 8})
    assert paper.config.item_id_in_graph is False  # the paper's model by default
    extended = build_model("sand", inputs, {"embedding_dim": 8, "item_id_in_graph": True})
    extended.load_state_dict(paper.state_dict())
    with torch.no_grad():
        paper.item_id_embedding.weight.zero_()
        extended.item_id_embedding.weight.zero_()
        torch.testing.assert_close(paper.representations()[1], extended.representations()[1])
        extended.item_id_embedding.weight.fill_(1.0)
        paper.item_id_embedding.weight.fill_(1.0)
        assert not torch.allclose(paper.representations()[1], extended.representations()[1])


def test_auxiliary_propagation_is_reused_only_for_the_same_batch_and_parameters():
    torch.manual_seed(0)
    model = build_model("sand", _inputs({"image": 9, "text": 4}), {"embedding_dim": 8})
    reference = {k: v.detach() for k, v in model.loss_terms(BATCH).items()}
    model.auxiliary_loss_terms(BATCH)
    stashed = model._stash[3]
    calls = []
    original = model._project_all
    model._project_all = lambda: calls.append(1) or original()
    reused = model.loss_terms(BATCH)
    assert calls == [] and model._stash is None  # consumed, not recomputed
    for key, value in reference.items():
        torch.testing.assert_close(reused[key].detach(), value)
    assert stashed["image"][0].requires_grad
    model.auxiliary_loss_terms(BATCH)
    with torch.no_grad():
        model.user_embedding.weight.add_(1.0)  # a main parameter changed: the stash must not be used
    model.loss_terms(BATCH)
    assert calls == [1, 1]  # auxiliary call + main recomputation
    model.auxiliary_loss_terms(BATCH)
    other = BPRBatch(users=BATCH.users, pos_items=BATCH.pos_items, neg_items=BATCH.neg_items)
    model.loss_terms(other)
    assert calls == [1, 1, 1, 1]


@pytest.mark.parametrize("name", ["sand", "lightgcn_sand"])
def test_bfloat16_feature_storage_projects_close_to_float32_and_trains_float32_parameters(name):
    inputs = _inputs({"image": 64, "text": 16})
    torch.manual_seed(0)
    full = build_model(name, inputs, {"embedding_dim": 8})
    torch.manual_seed(0)
    half = build_model(name, inputs, {"embedding_dim": 8, "feature_dtype": "bfloat16"})
    half.load_state_dict(full.state_dict())
    assert half.features_image.dtype == torch.bfloat16 and full.features_image.dtype == torch.float32
    assert half.features_image.element_size() * 2 == full.features_image.element_size()
    with torch.no_grad():
        full_users, full_items = full.representations()
        half_users, half_items = half.representations()
    assert half_items.dtype == torch.float32 and half_users.dtype == torch.float32
    # bfloat16 keeps 8 significant bits: the projected rows differ from float32 by a small relative amount only
    scale = full_items.abs().max()
    assert 0 < (half_items - full_items).abs().max() <= 2e-2 * scale
    assert (half_users - full_users).abs().max() <= 2e-2 * full_users.abs().max()
    half.loss_terms(BATCH)["bpr"].backward()
    weight = half.projection.splitters["image"].linear.weight
    assert weight.dtype == torch.float32 and weight.grad is not None and weight.grad.dtype == torch.float32
    assert weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("capability", "feature_dtype", "warns"), [
    ("AVX2", "bfloat16", True), ("DEFAULT", "bfloat16", True), ("AVX512", "bfloat16", False), ("AVX2", "float32", False),
])
def test_bfloat16_features_on_a_cpu_without_avx512_log_a_warning(monkeypatch, caplog, capability, feature_dtype, warns):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    with caplog.at_level("WARNING", logger="trainer.models.sand"):
        build_model("sand", _inputs({"image": 64, "text": 16}), {"embedding_dim": 8, "feature_dtype": feature_dtype})
    warned = [r for r in caplog.records if "bfloat16" in r.getMessage() and r.levelname == "WARNING"]
    assert bool(warned) == warns
    if warns:
        assert capability in warned[0].getMessage()


@pytest.mark.parametrize("name", ["sand", "lightgcn_sand"])
@pytest.mark.parametrize("feature_dtype", ["float32", "bfloat16"])
def test_transposed_feature_copy_gives_the_same_loss_and_gradients(name, feature_dtype):
    inputs = _inputs({"image": 64, "text": 16})
    params = {"embedding_dim": 8, "feature_dtype": feature_dtype, "distance": "l2"}
    torch.manual_seed(0)
    plain = build_model(name, inputs, {**params, "transposed_feature_copy": False})
    default = build_model(name, inputs, params)  # on the CPU the copy is kept by default
    default.load_state_dict(plain.state_dict())
    assert not plain.transposed_feature_copy and not hasattr(plain, "features_t_image")
    assert default.transposed_feature_copy
    assert torch.equal(default.features_t_image, default.features_image.t())
    assert default.features_t_image.is_contiguous()
    losses = {}
    for label, model in (("plain", plain), ("copy", default)):
        losses[label] = sum(model.loss_terms(BATCH).values())
        losses[label].backward()
    torch.testing.assert_close(losses["copy"], losses["plain"])
    plain_grads = dict(plain.named_parameters())
    compared = 0
    for key, parameter in default.named_parameters():
        if parameter.grad is None:
            assert plain_grads[key].grad is None
            continue
        # the same sums in another order: equal up to float rounding (bfloat16 GEMM output rounding included)
        tolerance = 1e-5 if feature_dtype == "float32" else 1e-2
        scale = plain_grads[key].grad.abs().max().clamp_min(1e-12)
        assert (parameter.grad - plain_grads[key].grad).abs().max() <= tolerance * scale, key
        compared += 1
    weight = default.projection.splitters["image"].linear.weight
    assert weight.grad.dtype == torch.float32 and weight.grad.shape == weight.shape and compared > 5


def test_transposed_feature_copy_refuses_a_wrong_shape():
    model = build_model("sand", _inputs({"image": 6, "text": 4}), {"embedding_dim": 8})
    splitter = model.projection.splitters["image"]
    with pytest.raises(ValueError, match="features_t must be the"):
        splitter(model.features_image, standardized=True, features_t=model.features_image)


def test_unknown_feature_dtype_is_a_clear_error():
    with pytest.raises(ModelInputError, match=r"feature_dtype must be one of \['bfloat16', 'float32'\], got 'int8'"):
        build_model("sand", _inputs({"image": 3, "text": 5}), {"embedding_dim": 8, "feature_dtype": "int8"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bfloat16_feature_storage_on_cuda_matches_the_cpu_model():
    cpu_inputs = _inputs({"image": 64, "text": 16})
    device = torch.device("cuda")
    cuda_inputs = ModelInputs.from_train_matrix(
        cpu_inputs.train_matrix, {k: v.to(device) for k, v in cpu_inputs.features.items()}, device=device
    )
    params = {"embedding_dim": 8, "feature_dtype": "bfloat16"}
    torch.manual_seed(0)
    on_cpu = build_model("sand", cpu_inputs, params)
    on_cuda = build_model("sand", cuda_inputs, params).to(device)
    on_cuda.load_state_dict(on_cpu.state_dict())
    assert on_cuda.features_image.dtype == torch.bfloat16 and on_cuda.features_image.device.type == "cuda"
    batch = BPRBatch(*(getattr(BATCH, f).to(device) for f in ("users", "pos_items", "neg_items")))
    sum(on_cuda.loss_terms(batch).values()).backward()
    assert on_cuda.projection.splitters["image"].linear.weight.grad.dtype == torch.float32
    with torch.no_grad():
        cpu_items = on_cpu.representations()[1]
        cuda_items = on_cuda.representations()[1].cpu()
    assert (cuda_items - cpu_items).abs().max() <= 2e-2 * cpu_items.abs().max()


@pytest.mark.parametrize("align", ["solosim", "infonce"])
@pytest.mark.parametrize("name", ["sand", "lightgcn_sand"])
def test_items_without_features_in_a_modality_are_left_out_of_its_alignment_and_distancing(name, align):
    # Item 1 has no text features (like ML-100K's 84 movies without KG facts): its text parts are the projection of
    # an empty row, the same constant for every such item. Aligning that constant with the item's image part would
    # pull all such items' image parts towards one point, so the image-text pair and the text distancing (and the
    # CLUB fit on text) use the batch items with text features only; the image distancing keeps every item.
    inputs = _inputs({"image": 9, "text": 4})
    inputs.features["text"][1] = 0.0
    torch.manual_seed(0)
    model = build_model(name, inputs, {"embedding_dim": 8, "align": align, "alpha": 0.5, "beta": 0.3})
    batch = BPRBatch(
        users=torch.tensor([0, 1, 2, 3]), pos_items=torch.tensor([0, 1, 2, 4]), neg_items=torch.tensor([5, 6, 7, 7])
    )
    aux = model.auxiliary_loss_terms(batch)
    terms = model.loss_terms(batch)
    with torch.no_grad():
        parts = model._project_all()
    everything, with_text = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 2, 4])
    objective = model.objective
    generic = {"image": parts["image"][0][with_text], "text": parts["text"][0][with_text]}
    expected_align = 0.5 * objective.alignment(generic)
    estimators = objective.distancing.estimators
    expected_distance = 0.3 * (
        estimators["image"].mi_upper_bound(parts["image"][1][everything], parts["image"][0][everything])
        + estimators["text"].mi_upper_bound(parts["text"][1][with_text], parts["text"][0][with_text])
    )
    expected_nll = -(
        estimators["image"].log_likelihood(parts["image"][1][everything], parts["image"][0][everything])
        + estimators["text"].log_likelihood(parts["text"][1][with_text], parts["text"][0][with_text])
    )
    torch.testing.assert_close(terms["align"].detach(), expected_align)
    torch.testing.assert_close(terms["distance"].detach(), expected_distance.detach())
    torch.testing.assert_close(aux["club_nll"].detach(), expected_nll.detach())


def test_objective_uses_every_item_when_all_have_features():
    model = build_model("sand", _inputs({"image": 9, "text": 4}), {"embedding_dim": 8})
    assert not model.objective.masks_features and model.objective.present(torch.tensor([0, 1])) is None
