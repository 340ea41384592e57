"""Bundle export: embeddings, seen items, popularity, and the ONNX cold-start item encoder."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.bundle import ITEM_ENCODER, TEXT_ENCODER, TOKENIZER, write_bundle
from trainer.data.dataset import InteractionDataset
from trainer.loop import compute_representations
from trainer.models.base import Recommender
from trainer.modules.cold_start import DEFAULT_NEIGHBOURS, neighbour_mean_encoder
from trainer.text_encoder import ExportedTextEncoder

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


class _CPUCopy(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.encoder(*features)


def cold_start_encoder(
    model: Recommender,
    dataset: InteractionDataset,
    item_embeddings: torch.Tensor | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> tuple[torch.nn.Module, str] | None:
    """(encoder, source) for new items, or None when the dataset has no item features.

    ``source`` is ``model`` for the model's own ``item_encoder()``. A model without one (MF, LightGCN, KGAT...)
    gets the feature-neighbour mean over its final item embeddings (``trainer.modules.cold_start``, ``neighbours``
    nearest items per modality, every modality; the run config's ``export.cold_start_neighbours``):
    ``feature_neighbour_mean``. ``item_embeddings`` float [n_items, d] saves recomputing them.
    """
    if neighbours < 1:
        raise ValueError(f"the neighbour-mean encoder needs neighbours >= 1, got {neighbours}")
    if not dataset.features:
        return None
    encoder = model.item_encoder()
    if encoder is not None:
        return encoder, "model"
    if item_embeddings is None:
        item_embeddings = compute_representations(model)[1]
    features = {name: torch.as_tensor(matrix) for name, matrix in dataset.features.items()}
    return neighbour_mean_encoder(item_embeddings, features, k=neighbours), "feature_neighbour_mean"


def export_item_encoder(
    model: Recommender,
    dataset: InteractionDataset,
    path: Path,
    check_rows: int = 64,
    item_embeddings: torch.Tensor | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> dict[str, Any] | None:
    """Export the cold-start encoder (``cold_start_encoder``) to ONNX; verify onnxruntime against torch on real
    item rows.

    Inputs are named after the modalities (sorted), float32 [B, dim_m]; the output is ``embedding``
    float32 [B, dim]. Returns a manifest description, or None when the dataset has no item features.
    """
    found = cold_start_encoder(model, dataset, item_embeddings, neighbours)
    if found is None:
        return None
    encoder, source = found
    modalities = sorted(dataset.features)
    encoder = encoder.eval()
    device = next(iter(model.parameters())).device
    sample = tuple(
        torch.as_tensor(dataset.features[name][:check_rows], device=device) for name in modalities
    )
    with torch.no_grad():
        expected = encoder(*sample).float().cpu().numpy()
    cpu_sample = tuple(t.cpu() for t in sample)
    dynamic_axes = {name: {0: "batch"} for name in modalities}
    dynamic_axes["embedding"] = {0: "batch"}
    try:  # .to() moves the encoder's modules, which may be the model's own: they go back even if export fails
        cpu_encoder = _CPUCopy(encoder).to("cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                cpu_encoder,
                cpu_sample,
                str(path),
                input_names=modalities,
                output_names=["embedding"],
                dynamic_axes=dynamic_axes,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    finally:
        encoder.to(device)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if [value.name for value in session.get_inputs()] != modalities:
        _declare_every_modality(path, {name: int(dataset.features[name].shape[1]) for name in modalities})
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {name: t.numpy() for name, t in zip(modalities, cpu_sample)})[0]
    max_error = float(np.abs(got - expected).max()) if got.size else 0.0
    if max_error > 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(f"ONNX item encoder disagrees with torch: max abs error {max_error:.3g}")
    return {
        "source": source,
        "kind": type(encoder).__name__,
        **({"neighbours": int(encoder.k)} if source == "feature_neighbour_mean" else {}),
        "inputs": {name: int(dataset.features[name].shape[1]) for name in modalities},
        "output": "embedding",
        "opset": ONNX_OPSET,
        "max_abs_error_vs_torch": max_error,
    }


def _declare_every_modality(path: Path, dims: dict[str, int]) -> None:
    """Make the ONNX file at ``path`` declare one float32 [batch, dim] input per modality, in ``dims`` order.

    The exporter drops graph inputs the computation never reads: an encoder of a model trained on a subset of the
    dataset's modalities (e.g. LUDP with ``modalities: [text]``) came out without the others, and the bundle contract
    (and the service, which feeds every modality by name) expects them all. A declared input that no node reads is
    valid ONNX; onnxruntime accepts and ignores its values.
    """
    import onnx

    graph_model = onnx.load(str(path))
    declared = {value.name: value for value in graph_model.graph.input}
    inputs = [
        declared.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", dim])
        for name, dim in dims.items()
    ]
    extra = [value for name, value in declared.items() if name not in dims]  # none expected; kept, not lost
    del graph_model.graph.input[:]
    graph_model.graph.input.extend(inputs + extra)
    onnx.checker.check_model(graph_model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(graph_model, str(tmp))
    os.replace(tmp, path)


def export_bundle(
    model: Recommender,
    dataset: InteractionDataset,
    bundle_root: Path,
    model_name: str,
    metrics: dict[str, Any] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    cold_start_neighbours: int = DEFAULT_NEIGHBOURS,
    text_encoder: ExportedTextEncoder | None = None,
) -> Path:
    """Write ``bundle_root/<version>/`` and point ``bundle_root/current`` at it; return the bundle path.

    ``cold_start_neighbours``: k of the feature-neighbour-mean item encoder, for models without an encoder of their
    own. ``text_encoder``: the raw-text encoder of the dataset's ``text`` modality (``text_encoder.onnx`` +
    ``tokenizer.json``, hard-linked from the cache when possible), or None.
    """
    users, items = compute_representations(model)
    user_embeddings = users.float().cpu().numpy()
    item_embeddings = items.float().cpu().numpy()
    train = dataset.train.tocsr()
    train.sort_indices()
    popularity = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)
    manifest_extra = dict(extra_manifest or {})
    with tempfile.TemporaryDirectory(prefix="modalrec-export-") as tmp:
        extra_files: dict[str, Path] = {}
        encoder_path = Path(tmp) / ITEM_ENCODER
        encoder_info = export_item_encoder(
            model, dataset, encoder_path, item_embeddings=items, neighbours=cold_start_neighbours
        )
        if encoder_info is not None:
            extra_files[ITEM_ENCODER] = encoder_path
            manifest_extra["item_encoder"] = encoder_info
        link_files: list[str] = []
        if text_encoder is not None:
            text_modality = text_encoder.info.get("modality")
            if text_encoder.info.get("dim") != dataset.modality_dims.get(text_modality):
                raise ValueError(
                    f"the text encoder gives {text_encoder.info.get('dim')}-d vectors but the dataset's "
                    f"{text_modality!r} modality is {dataset.modality_dims.get(text_modality)}-d"
                )
            extra_files[TEXT_ENCODER] = text_encoder.onnx
            extra_files[TOKENIZER] = text_encoder.tokenizer
            link_files += [TEXT_ENCODER, TOKENIZER]
            manifest_extra["text_encoder"] = dict(text_encoder.info)
        index_file = _maybe_build_index(item_embeddings, Path(tmp))
        if index_file is not None:
            extra_files[index_file[0]] = index_file[1]
            manifest_extra["index"] = index_file[2]
        bundle = write_bundle(
            bundle_root,
            model=model_name,
            dataset=dataset.name,
            user_ids=dataset.user_ids,
            item_ids=dataset.item_ids,
            user_embeddings=user_embeddings,
            item_embeddings=item_embeddings,
            seen_indptr=train.indptr,
            seen_indices=train.indices,
            popularity=popularity,
            modalities=dataset.modality_dims,
            metrics=metrics,
            extra_files=extra_files,
            extra_manifest=manifest_extra,
            link_files=link_files,
        )
    logger.info("exported bundle %s", bundle)
    return bundle


def _maybe_build_index(item_embeddings: np.ndarray, tmp: Path) -> tuple[str, Path, dict[str, Any]] | None:
    """For catalogues above the service's exact-search limit, build the approximate (IVF) index file at export time.

    Needs faiss (the ``serve`` extra); without it the service builds its index at start-up instead.
    """
    try:
        from service.index import DEFAULT_FLAT_MAX_ITEMS, INDEX_FILE, build_index_file
    except ImportError:
        logger.info("faiss not importable: no index file in the bundle; the service will build one")
        return None
    if len(item_embeddings) <= DEFAULT_FLAT_MAX_ITEMS:
        return None
    path = tmp / INDEX_FILE
    return INDEX_FILE, path, dict(build_index_file(item_embeddings, path))
