"""Explain a trained model's recommendations for one user (``python -m trainer explain``).

For LUDP the report is exact, not a heuristic: the score of user u for item i decomposes as

    e_u* . e_i* = E_u . E_i  (collaborative)  +  P_u . E_i  (user preference graph)  +  e_u* . H_i  (item graphs)

and, since the item-graph propagation is linear, e_u* . H_i splits further into one contribution per
item j reached on the kNN graphs: sum over modalities m of e_u* . C_m ([A_m^L]_ij e_j), where A_m is the
normalised kNN graph of modality m, L the number of item-graph layers, e_j item j's ID embedding and C_m
the fusion's linear map for modality m (alpha_i^m for attention, 1 for sum, the m-th block of the linear
layer for concat; the concat layer's bias is not attributed to any neighbour). The report lists the user's
modality weights, the top-k items (training items excluded) and, for each, its score parts, its modality
weights, the neighbours that contributed most to its item-graph score, and the user's training items
most similar to it in each modality's feature space.

Other models get the model-agnostic part: top-k items and the user's training items whose final
embeddings are most similar to each recommended item.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from trainer.data.dataset import InteractionDataset
from trainer.models.base import ModelInputs
from trainer.models.ludp import LUDP

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class ExplainError(ValueError):
    """The run, checkpoint or user to explain is missing or unusable."""


def load_run(
    run_dir_or_checkpoint: str | Path,
    dataset_path: str | Path | None = None,
    dataset: InteractionDataset | None = None,
):
    """(model in eval mode on CPU, dataset, checkpoint payload) from a run directory or a checkpoint file.

    The dataset is ``dataset`` when given, else read from ``dataset_path`` or the path the checkpoint records.
    """
    from trainer.models.registry import build_model
    from trainer.pipeline import load_dataset_dir

    path = Path(run_dir_or_checkpoint)
    checkpoint = path / CHECKPOINT_NAME if path.is_dir() else path
    if not checkpoint.is_file():
        raise ExplainError(
            f"no checkpoint at {checkpoint} (expected a run directory holding {CHECKPOINT_NAME})"
        )
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in ("model", "model_params", "state_dict"):
        if key not in payload:
            raise ExplainError(f"checkpoint {checkpoint} has no {key!r} entry")
    if dataset is None:
        dataset_dir = dataset_path or payload.get("dataset_path")
        if dataset_dir is None:
            raise ExplainError(f"checkpoint {checkpoint} does not name its dataset; pass dataset_path")
        dataset = load_dataset_dir(Path(dataset_dir))
    inputs = ModelInputs.from_dataset(dataset, torch.device("cpu"))
    model = build_model(payload["model"], inputs, payload["model_params"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, dataset, payload


def _sparse_rows(graph: torch.Tensor) -> sp.csr_matrix:
    """torch sparse CSR -> scipy CSR (CPU)."""
    graph = graph.cpu()
    return sp.csr_matrix(
        (graph.values().numpy(), graph.col_indices().numpy(), graph.crow_indices().numpy()),
        shape=tuple(graph.shape),
    )


def _path_weights(graph: sp.csr_matrix, item: int, n_layers: int) -> np.ndarray:
    """Row ``item`` of graph^n_layers as a dense float64 [n_items] vector."""
    row = graph[item].toarray().ravel().astype(np.float64)
    for _ in range(n_layers - 1):
        row = graph.T @ row
    return row


@torch.no_grad()
def _ludp_details(
    model: LUDP, user: int, items: list[int], history: np.ndarray, dataset, n_reasons: int
) -> list[dict]:
    config = model.config
    collab_users, collab_items = model.collaborative()
    user_part = model.user_graph_part(torch.tensor([user]))
    user_final = collab_users[user] + (user_part[0] if user_part is not None else 0.0)
    item_parts = model.item_graph_part()
    item_weights = model.modality_weights()[1]
    graphs = [_sparse_rows(g) for g in model.item_graphs]
    ego_items = model.item_embedding.weight
    history_set = set(history.tolist())
    dim = config.embedding_dim
    details = []
    for item in items:
        parts = {"collaborative": float(collab_users[user] @ collab_items[item])}
        if user_part is not None:
            parts["user_preference"] = float(user_part[0] @ collab_items[item])
        neighbours: list[dict[str, Any]] = []
        if item_parts is not None:
            graph_part = item_parts[item]
            if config.fusion == "concat":
                graph_part = graph_part - model.item_fusion.linear.bias
                parts["item_graph_bias"] = float(user_final @ model.item_fusion.linear.bias)
            parts["item_graph"] = float(user_final @ graph_part)
            contributions = np.zeros(model.n_items)
            for m, graph in enumerate(graphs):
                paths = _path_weights(graph, item, config.item_graph_layers)
                reached = np.flatnonzero(paths)
                if config.fusion == "attention":
                    direction = float(item_weights[item, m]) * user_final
                elif config.fusion == "sum":
                    direction = user_final
                else:
                    block = model.item_fusion.linear.weight[:, m * dim : (m + 1) * dim]
                    direction = block.T @ user_final
                per_item = (ego_items[torch.as_tensor(reached)] @ direction).double().numpy()
                contributions[reached] += paths[reached] * per_item
            top = np.argsort(-np.abs(contributions))[:n_reasons]
            neighbours = [
                {
                    "item_id": dataset.item_ids[j],
                    "contribution": float(contributions[j]),
                    "in_user_history": int(j) in history_set,
                }
                for j in top
                if contributions[j] != 0.0
            ]
        similar = []
        for m, name in enumerate(model.modalities):
            if len(history) == 0:
                break
            cosines = (
                model.unit_features[m][torch.as_tensor(history)] @ model.unit_features[m][item]
            ).numpy()
            for position in np.argsort(-cosines)[:n_reasons]:
                similar.append(
                    {
                        "item_id": dataset.item_ids[history[position]],
                        "modality": name,
                        "cosine": float(cosines[position]),
                    }
                )
        detail: dict[str, Any] = {
            "score_parts": parts,
            "graph_neighbours": neighbours,
            "similar_history_items": similar,
        }
        if item_weights is not None:
            detail["item_modality_weights"] = {
                name: float(item_weights[item, m]) for m, name in enumerate(model.modalities)
            }
        details.append(detail)
    return details


@torch.no_grad()
def explain(
    run_dir_or_checkpoint: str | Path,
    user_id: str,
    k: int = 10,
    dataset_path: str | Path | None = None,
    n_reasons: int = 3,
    dataset: InteractionDataset | None = None,
) -> dict[str, Any]:
    """Explain the top-``k`` recommendations of ``user_id`` (external id) from a trained run.

    Args:
        run_dir_or_checkpoint: a run directory holding ``checkpoint.pt`` (as written by ``fit``) or the file.
        user_id: external user id as in the dataset.
        k: number of recommended items (training items are excluded).
        dataset_path: dataset directory; defaults to the one recorded in the checkpoint.
        n_reasons: neighbours / similar history items listed per recommended item.
        dataset: the loaded dataset, instead of reading it from disk.

    Returns:
        A JSON-serialisable report; :func:`format_explanation` renders it as text.
    """
    if k < 1:
        raise ExplainError(f"k must be >= 1, got {k}")
    model, dataset, payload = load_run(run_dir_or_checkpoint, dataset_path, dataset)
    try:
        user = dataset.user_ids.index(str(user_id))
    except ValueError:
        raise ExplainError(f"user {user_id!r} is not in dataset {dataset.name!r}") from None
    users, items = model.representations()
    scores = (users[user] @ items.T).clone()
    history = dataset.train[user].indices.astype(np.int64)
    scores[torch.as_tensor(history)] = float("-inf")
    k = min(k, int(torch.isfinite(scores).sum()))
    top_scores, top_items = torch.topk(scores, k)
    top = top_items.tolist()
    report: dict[str, Any] = {
        "model": payload["model"],
        "dataset": dataset.name,
        "user_id": str(user_id),
        "n_history_items": int(len(history)),
        "user_modality_weights": None,
        "recommendations": [],
    }
    if isinstance(model, LUDP):
        user_weights = model.modality_weights()[0]
        report["modalities"] = list(model.modalities)
        report["fusion"] = model.config.fusion
        if user_weights is not None:
            report["user_modality_weights"] = {
                name: float(user_weights[user, m]) for m, name in enumerate(model.modalities)
            }
        details = _ludp_details(model, user, top, history, dataset, n_reasons)
    else:
        details = []
        for item in top:
            similarity = (
                (items[torch.as_tensor(history)] @ items[item]).numpy() if len(history) else np.zeros(0)
            )
            details.append(
                {
                    "similar_history_items": [
                        {
                            "item_id": dataset.item_ids[history[p]],
                            "embedding_inner_product": float(similarity[p]),
                        }
                        for p in np.argsort(-similarity)[:n_reasons]
                    ]
                }
            )
    for rank, (item, score, detail) in enumerate(
        zip(top, top_scores.tolist(), details, strict=True), start=1
    ):
        report["recommendations"].append(
            {"rank": rank, "item_id": dataset.item_ids[item], "score": score, **detail}
        )
    return report


def format_explanation(report: dict[str, Any]) -> str:
    """Human-readable text of an :func:`explain` report."""
    lines = [
        f"user {report['user_id']} ({report['n_history_items']} training items), model {report['model']}"
    ]
    weights = report.get("user_modality_weights")
    if weights:
        lines.append("user modality weights: " + ", ".join(f"{m}={w:.3f}" for m, w in weights.items()))
    for rec in report["recommendations"]:
        lines.append(f"{rec['rank']:>3}. item {rec['item_id']}  score {rec['score']:.4f}")
        if "score_parts" in rec:
            lines.append("     parts: " + ", ".join(f"{n}={v:+.4f}" for n, v in rec["score_parts"].items()))
        if rec.get("item_modality_weights"):
            lines.append(
                "     item modality weights: "
                + ", ".join(f"{m}={w:.3f}" for m, w in rec["item_modality_weights"].items())
            )
        for neighbour in rec.get("graph_neighbours", []):
            mark = " (in history)" if neighbour["in_user_history"] else ""
            lines.append(
                f"     graph neighbour {neighbour['item_id']}: {neighbour['contribution']:+.4f}{mark}"
            )
        for similar in rec.get("similar_history_items", []):
            if "cosine" in similar:
                lines.append(
                    f"     like history item {similar['item_id']} ({similar['modality']} cos {similar['cosine']:.3f})"
                )
            else:
                lines.append(
                    f"     like history item {similar['item_id']} (embedding dot {similar['embedding_inner_product']:.3f})"
                )
    return "\n".join(lines)
