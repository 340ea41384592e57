"""The feature-neighbour cold-start encoder (trainer.modules.cold_start) and its use as the export's fallback."""

import json
import math

import numpy as np
import pytest
import torch

from trainer.modules.cold_start import neighbour_mean_encoder

# 4 existing items, two modalities, 2-d final embeddings
TEXT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
IMAGE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
EMBEDDINGS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [5.0, 5.0]])


def test_similarity_weighted_mean_of_the_top_k_neighbours_then_mean_over_modalities():
    encoder = neighbour_mean_encoder(EMBEDDINGS, {"text": TEXT, "image": IMAGE}, k=2)
    # text [2, 0]: cosines 1, 0, 1/sqrt(2), -1 -> items 0 and 2, weights 1 and 1/sqrt(2)
    text_part = (1.0 * EMBEDDINGS[0] + (1 / math.sqrt(2)) * EMBEDDINGS[2]) / (1 + 1 / math.sqrt(2))
    # image [0, 0.1, 1]: cosines 0, 0.1/n, 1/n, 0.1/(n sqrt(2)) with n = |[0, 0.1, 1]| -> items 2 and 1
    n = math.sqrt(1.01)
    image_part = ((1 / n) * EMBEDDINGS[2] + (0.1 / n) * EMBEDDINGS[1]) / (1.1 / n)
    image, text = torch.tensor([[0.0, 0.1, 1.0]]), torch.tensor([[2.0, 0.0]])  # inputs in sorted order
    with torch.no_grad():
        got = encoder(image, text)
    torch.testing.assert_close(got[0], (text_part + image_part) / 2)


def test_neighbours_with_no_positive_similarity_count_equally():
    encoder = neighbour_mean_encoder(EMBEDDINGS, {"text": TEXT}, k=2)
    # text [0, -1]: cosines 0, -1, -1/sqrt(2), 0 -> items 0 and 3, both weight 0: the plain mean
    with torch.no_grad():
        got = encoder(torch.tensor([[0.0, -1.0]]))
    torch.testing.assert_close(got[0], (EMBEDDINGS[0] + EMBEDDINGS[3]) / 2)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        neighbour_mean_encoder(EMBEDDINGS, {})
    with pytest.raises(ValueError, match="n_items=4"):
        neighbour_mean_encoder(EMBEDDINGS, {"text": TEXT[:3]})
    encoder = neighbour_mean_encoder(EMBEDDINGS, {"text": TEXT, "image": IMAGE})
    with pytest.raises(ValueError, match="expected 2 modality tensors"):
        encoder(TEXT)


def test_a_lightgcn_bundle_gets_a_neighbour_encoder_that_the_service_runs(tmp_path):
    from service.bundle import ITEM_ENCODER, load_bundle
    from service.encoder import ItemEncoder
    from trainer.data.synthetic import planted_dataset
    from trainer.export import export_bundle
    from trainer.models.base import ModelInputs
    from trainer.models.registry import build_model

    data = planted_dataset(n_users=40, n_items=60, seed=2)
    torch.manual_seed(0)
    model = build_model("lightgcn", ModelInputs.from_dataset(data, torch.device("cpu")), {"embedding_dim": 8}).eval()
    path = export_bundle(model, data, tmp_path / "bundles", "lightgcn")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["item_encoder"]["source"] == "feature_neighbour_mean"
    assert manifest["item_encoder"]["kind"] == "NeighbourMeanEncoder"
    bundle = load_bundle(tmp_path / "bundles")
    service_encoder = ItemEncoder(bundle.file(ITEM_ENCODER), bundle.modalities, bundle.dim)
    row = 5
    got = service_encoder.encode({name: data.features[name][row].tolist() for name in bundle.modalities})
    # what the trainer computes for the same features: its top-k neighbours per modality in the exported items
    with torch.no_grad():
        items = model.representations()[1]
        features = {name: torch.as_tensor(matrix) for name, matrix in data.features.items()}
        expected = neighbour_mean_encoder(items, features)(
            *[features[name][row : row + 1] for name in sorted(features)]
        )[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_modality_with_an_all_zero_row_is_left_out_and_no_features_give_the_mean_item():
    encoder = neighbour_mean_encoder(EMBEDDINGS, {"text": TEXT, "image": IMAGE}, k=2)
    text_part = (1.0 * EMBEDDINGS[0] + (1 / math.sqrt(2)) * EMBEDDINGS[2]) / (1 + 1 / math.sqrt(2))
    with torch.no_grad():  # no image features: cosine 0 to every item, so its "neighbours" would be tie order
        only_text = encoder(torch.zeros(1, 3), torch.tensor([[2.0, 0.0]]))
        nothing = encoder(torch.zeros(1, 3), torch.zeros(1, 2))
    torch.testing.assert_close(only_text[0], text_part)
    torch.testing.assert_close(nothing[0], EMBEDDINGS.mean(dim=0))


def test_tied_neighbours_go_to_the_lower_item_index():
    table = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # items 1, 2, 3 tie for [1, 0]
    encoder = neighbour_mean_encoder(EMBEDDINGS, {"text": table}, k=2)
    with torch.no_grad():
        got = encoder(torch.tensor([[5.0, 0.0]]))
    torch.testing.assert_close(got[0], (EMBEDDINGS[1] + EMBEDDINGS[2]) / 2)


def test_export_agrees_with_torch_on_duplicate_and_all_zero_feature_rows(tmp_path):
    """Real catalogues have both (ML-100K: 84 items without KG features, 32 in groups of identical texts); the
    export checks onnxruntime against torch on the first rows, and tied top-k picks used to differ."""
    import onnxruntime

    from trainer.data.synthetic import planted_dataset
    from trainer.export import export_item_encoder
    from trainer.models.base import ModelInputs
    from trainer.models.registry import build_model

    data = planted_dataset(n_users=40, n_items=200, seed=2)
    rng = np.random.default_rng(0)
    for matrix in data.features.values():
        matrix[1:120:7] = matrix[0]  # many identical rows
    first = sorted(data.features)[0]
    data.features[first][[3, 50, 90]] = 0.0  # items without this modality
    torch.manual_seed(0)
    model = build_model("lightgcn", ModelInputs.from_dataset(data, torch.device("cpu")), {"embedding_dim": 8}).eval()
    info = export_item_encoder(model, data, tmp_path / "encoder.onnx", check_rows=200)
    assert info is not None and info["source"] == "feature_neighbour_mean"
    with torch.no_grad():
        items = model.representations()[1]
        features = {name: torch.as_tensor(matrix) for name, matrix in data.features.items()}
        encoder = neighbour_mean_encoder(items, features)
        queries = {name: np.concatenate([matrix, rng.permutation(matrix)]).astype(np.float32)
                   for name, matrix in data.features.items()}
        expected = encoder(*[torch.from_numpy(queries[name]) for name in sorted(queries)]).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], queries)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
