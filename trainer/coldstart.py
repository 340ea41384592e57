"""Cold-start evaluation: how good are the embeddings the exported item encoder gives brand-new items?

Protocol (item cold start, as in the cold-start literature, e.g. CLCRec):

1. A seeded ``fraction`` of the items that have interactions is held out entirely: every interaction of those
   items (train, valid and test) is removed, and the items are removed from the item table.
2. The model trains on the remaining *warm* dataset with the usual protocol (early stopping and every choice
   on the warm VALID split; the warm test split read once), and is exported as a bundle.
3. The held-out items are encoded from their features by the bundle's ``item_encoder.onnx`` through the
   service's own :class:`service.encoder.ItemEncoder` (the path a new item takes in production), and every
   user who interacted with a held-out item ranks all held-out items by ``user_embedding · item_embedding``.
   Recall/NDCG/Precision/MAP@K are computed over those users with the project's full-ranking metrics; all of a
   user's held-out interactions are the ground truth, nothing is masked (the items were never seen).

The held-out items are also served as the service serves new items (``served``): added online to a serving state
of the bundle and recommended among ALL items, the user's training items excluded, with 0 and with 2 of the 20
places reserved for new items (the service's ``new_items`` / ``new_item_slots``). This shows whether new items
surface at all next to trained ones, and how well the reserved places are used.

Encoder settings are chosen on a *validation* split (``validation=True``, CLI ``--validation``): the split's
held-out items are removed from everything and never read, and a second share of the remaining items is held out
the same way and evaluated instead. ``neighbour_ks`` also evaluates the feature-neighbour-mean encoder (the one the
export gives a model without an encoder of its own) with other neighbour counts on the same trained embeddings, so
its k can be chosen on validation and then confirmed once on the split's own held-out items.

Two references are computed on the same held-out items and users: the expected Recall@K of a random ranking
(K / n_cold for every user), and a content-only ranking that uses no model at all (per modality, the cosine
of the item's features to the mean unit feature of the user's warm training items, summed over modalities).
A model's encoder is worth serving only if it beats the random ranking; the content ranking shows how much of
that the raw features give by themselves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from trainer.data.dataset import InteractionDataset
from trainer.data.split import rows_of_users_with_train
from trainer.evaluate import evaluate_full_ranking

logger = logging.getLogger(__name__)

COLD_START_FILE = "coldstart.json"


class ColdStartError(ValueError):
    """The dataset or bundle cannot be evaluated for cold start (no features, no encoder, bad fraction)."""


@dataclass
class ColdStartSplit:
    """A dataset split into warm items (trained on) and held-out cold items.

    Attributes:
        warm: the dataset without the cold items (same users; items re-indexed, features and KG links sliced).
        cold_items: int64 [n_cold] indices of the cold items in the ORIGINAL dataset, ascending.
        cold_item_ids: their external ids.
        cold_features: modality -> float32 [n_cold, dim_m] features of the cold items.
        cold_truth: binary CSR [n_users, n_cold]: every interaction (train, valid, test) with a cold item, for the
            users who keep at least one warm training interaction.
        removed_item_ids: ids removed entirely before the cold items were drawn (a validation split's held-out
            items, see :func:`held_out_split`); empty otherwise.
    """

    warm: InteractionDataset
    cold_items: np.ndarray
    cold_item_ids: list[str]
    cold_features: dict[str, np.ndarray]
    cold_truth: sp.csr_matrix
    removed_item_ids: list[str] = dataclasses.field(default_factory=list)


def split_cold_items(dataset: InteractionDataset, fraction: float, seed: int) -> ColdStartSplit:
    """Hold out ``round(fraction * n)`` of the n items with at least one interaction (seeded, uniform)."""
    if not dataset.features:
        raise ColdStartError(
            f"dataset {dataset.name!r} has no item features: a cold item could not be encoded from anything"
        )
    if not 0.0 < fraction < 1.0:
        raise ColdStartError(f"cold fraction must be in (0, 1), got {fraction}")
    everything = (dataset.train + dataset.valid + dataset.test).tocsc()
    counts = np.diff(everything.indptr)
    candidates = np.flatnonzero(counts > 0)
    n_cold = int(round(fraction * len(candidates)))
    if n_cold < 1 or n_cold >= len(candidates):
        raise ColdStartError(
            f"cold fraction {fraction} of {len(candidates)} items with interactions leaves "
            f"{n_cold} cold and {len(candidates) - n_cold} warm items; both need at least one"
        )
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(candidates, size=n_cold, replace=False)).astype(np.int64)
    is_cold = np.zeros(dataset.n_items, dtype=bool)
    is_cold[cold] = True
    warm_items = np.flatnonzero(~is_cold)

    def warm_columns(matrix: sp.csr_matrix) -> sp.csr_matrix:
        return sp.csr_matrix(matrix.tocsc()[:, warm_items])

    kg = dataset.kg
    if kg is not None:
        kg = dataclasses.replace(kg, item_entity=kg.item_entity[warm_items].copy())
    warm_train = warm_columns(dataset.train)
    # a user whose training items were all held out has no trained representation: as in load_dataset, their
    # warm valid/test rows and their held-out interactions are not evaluated
    warm = InteractionDataset(
        name=dataset.name,
        user_ids=list(dataset.user_ids),
        item_ids=[dataset.item_ids[i] for i in warm_items],
        train=warm_train,
        valid=rows_of_users_with_train(warm_columns(dataset.valid), warm_train),
        test=rows_of_users_with_train(warm_columns(dataset.test), warm_train),
        features={name: np.ascontiguousarray(matrix[warm_items]) for name, matrix in dataset.features.items()},
        kg=kg,
    )
    truth = sp.csr_matrix(everything[:, cold])
    truth.data[:] = 1.0
    truth = rows_of_users_with_train(truth, warm_train)
    return ColdStartSplit(
        warm=warm,
        cold_items=cold,
        cold_item_ids=[dataset.item_ids[i] for i in cold],
        cold_features={name: np.ascontiguousarray(matrix[cold], dtype=np.float32)
                       for name, matrix in dataset.features.items()},
        cold_truth=truth.tocsr(),
    )


def held_out_split(dataset: InteractionDataset, fraction: float, seed: int, validation: bool = False) -> ColdStartSplit:
    """``split_cold_items(dataset, fraction, seed)``, or with ``validation`` its validation split: the same draw
    removed entirely, then ``fraction`` of the remaining items held out (same seed, drawn among those items). In
    the validation split ``cold_items`` index the items left after the first removal."""
    split = split_cold_items(dataset, fraction, seed)
    if not validation:
        return split
    return dataclasses.replace(split_cold_items(split.warm, fraction, seed), removed_item_ids=split.cold_item_ids)


def _metrics(users: np.ndarray, items: np.ndarray, truth: sp.csr_matrix, ks: tuple[int, ...]) -> dict[str, float]:
    """Full-ranking metrics of scores users @ items.T over the cold items, nothing masked."""
    empty = sp.csr_matrix(truth.shape, dtype=np.float32)
    return evaluate_full_ranking(
        torch.from_numpy(np.ascontiguousarray(users, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32)),
        truth,
        empty,
        ks=ks,
    )


def serving_state_with_new_items(bundle: Any, encoded: np.ndarray, item_ids: list[str]) -> Any:
    """A :class:`service.state.ServingState` of the bundle with ``item_ids`` (encoded float32 [n, d]) added online,
    as ``POST /items`` adds them."""
    from service.settings import Settings
    from service.state import ServingState

    state = ServingState.build(bundle, Settings(bundle_root=bundle.path))
    for row, item_id in enumerate(item_ids):
        state.upsert_online_item(item_id, {}, encoded[row])
    return state


def served_metrics(state: Any, split: ColdStartSplit, slots: int, k: int = 20) -> dict[str, float]:
    """The held-out items served as the service serves new items: recommended among ALL items of ``state`` (from
    :func:`serving_state_with_new_items`) by ``ServingState.recommend`` (training items excluded), with ``slots``
    of the k places reserved for online items.

    Returns, over the users with held-out interactions: ``recall@k`` of the held-out interactions,
    ``cold_share@k`` (mean share of held-out items in the k; ``cold_catalogue_share`` is their share of the
    catalogue), ``new_item_precision`` (of the held-out items a user is shown, the share the user interacted with;
    over users shown at least one) and ``new_item_precision_random`` (the same for held-out items picked at random).
    """
    truth = split.cold_truth
    n_cold = truth.shape[1]
    cold_ids = set(split.cold_item_ids)
    recalls, shares, precisions, random_precisions = [], [], [], []
    for user in np.flatnonzero(np.diff(truth.indptr) > 0):
        relevant = {split.cold_item_ids[j] for j in truth.indices[truth.indptr[user] : truth.indptr[user + 1]]}
        shown = state.recommend(split.warm.user_ids[user], k, True, [], [], slots).item_ids
        shown_cold = [item for item in shown if item in cold_ids]
        hits = sum(item in relevant for item in shown_cold)
        recalls.append(hits / len(relevant))
        shares.append(len(shown_cold) / k)
        if shown_cold:
            precisions.append(hits / len(shown_cold))
            random_precisions.append(len(relevant) / n_cold)
    return {
        f"recall@{k}": float(np.mean(recalls)),
        f"cold_share@{k}": float(np.mean(shares)),
        "cold_catalogue_share": n_cold / (n_cold + split.warm.n_items),
        "new_item_precision": float(np.mean(precisions)) if precisions else float("nan"),
        "new_item_precision_random": float(np.mean(random_precisions)) if random_precisions else float("nan"),
        "n_users_shown_new_items": len(precisions),
    }


def encode_with_bundle(bundle_path: Path, features: dict[str, np.ndarray]) -> tuple[Any, np.ndarray]:
    """(the loaded bundle, encoded items float32 [n, d]) via the bundle's ONNX encoder and the service's ItemEncoder.

    Raises ColdStartError when the bundle has no item encoder (exported without item features, or before session 9
    by a model without an encoder of its own).
    """
    from service.bundle import ITEM_ENCODER, load_bundle
    from service.encoder import ItemEncoder

    bundle = load_bundle(bundle_path)
    encoder_file = bundle.file(ITEM_ENCODER)
    if encoder_file is None:
        raise ColdStartError(
            f"bundle {bundle.path} has no {ITEM_ENCODER}: model {bundle.manifest.get('model')!r} cannot encode new items"
        )
    encoder = ItemEncoder(encoder_file, bundle.modalities, bundle.dim)
    n = next(iter(features.values())).shape[0]
    encoded = np.stack(
        [encoder.encode({name: features[name][row].tolist() for name in bundle.modalities}) for row in range(n)]
    ) if n else np.zeros((0, bundle.dim), dtype=np.float32)
    return bundle, encoded


def content_profile_scores(
    warm_train: sp.csr_matrix, warm_features: dict[str, np.ndarray], cold_features: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors [n_users, Σ d_m], item vectors [n_cold, Σ d_m]) whose dot product is
    Σ_m cos-profile_m(u, i): per modality, the unit item feature dotted with the unit mean of the unit features
    of the user's warm training items (zero for users without training items or all-zero features)."""

    def unit(matrix: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return np.divide(matrix, norms, out=np.zeros_like(matrix, dtype=np.float32), where=norms > 0)

    train = sp.csr_matrix(warm_train, dtype=np.float32)
    user_parts, item_parts = [], []
    for name in sorted(cold_features):
        profile = train @ unit(warm_features[name].astype(np.float32))
        user_parts.append(unit(np.asarray(profile, dtype=np.float32)))
        item_parts.append(unit(cold_features[name].astype(np.float32)))
    return np.concatenate(user_parts, axis=1), np.concatenate(item_parts, axis=1)


def _check_neighbour_ks(neighbour_ks: tuple[int, ...]) -> None:
    if any(k < 1 for k in neighbour_ks):
        raise ColdStartError(f"neighbour counts must be >= 1, got {list(neighbour_ks)}")


def neighbour_mean_encodings(
    item_embeddings: np.ndarray, warm_features: dict[str, np.ndarray], cold_features: dict[str, np.ndarray], k: int
) -> np.ndarray:
    """The held-out items as the export's feature-neighbour-mean encoder with ``k`` neighbours places them
    (``trainer.modules.cold_start.neighbour_mean_encoder`` over every modality, in torch): float32 [n_cold, d] from
    the trained ``item_embeddings`` float32 [n_warm, d] and the features {name: [n_warm | n_cold, d_m]}."""
    from trainer.modules.cold_start import neighbour_mean_encoder

    names = sorted(warm_features)
    encoder = neighbour_mean_encoder(
        torch.from_numpy(np.ascontiguousarray(item_embeddings, dtype=np.float32)),
        {name: torch.from_numpy(np.ascontiguousarray(warm_features[name], dtype=np.float32)) for name in names},
        k=k,
    )
    with torch.no_grad():
        encoded = encoder(*(torch.from_numpy(np.ascontiguousarray(cold_features[name], dtype=np.float32))
                            for name in names))
    return encoded.numpy()


def evaluate_cold_start(
    bundle_path: Path,
    split: ColdStartSplit,
    ks: tuple[int, ...] = (10, 20, 50),
    served_slots: tuple[int, ...] = (0, 2),
    neighbour_ks: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Metrics of the bundle's encoder on the held-out items, with the random and content references, and (for
    each k of ``neighbour_ks``) of the feature-neighbour-mean encoder with k neighbours over the bundle's item
    embeddings (``neighbour_mean_by_k``; the same for every model, whatever encoder its bundle carries)."""
    _check_neighbour_ks(neighbour_ks)
    bundle, encoded = encode_with_bundle(bundle_path, split.cold_features)
    if list(bundle.user_ids) != list(split.warm.user_ids) or list(bundle.item_ids) != list(split.warm.item_ids):
        raise ColdStartError("the bundle's users or items are not the warm dataset's (wrong bundle?)")
    user_embeddings = bundle.user_embeddings
    truth = split.cold_truth
    n_cold = truth.shape[1]
    if n_cold < 20:
        raise ColdStartError(f"only {n_cold} held-out items: at least 20 are needed (raise --cold-fraction)")
    ks = tuple(k for k in ks if k <= n_cold)
    n_users_evaluated = int((np.diff(truth.indptr) > 0).sum())
    model = _metrics(user_embeddings, encoded, truth, ks)  # the bundle's encoder
    state = serving_state_with_new_items(bundle, encoded, split.cold_item_ids)
    served = {f"new_item_slots={slots}": served_metrics(state, split, slots, k=20) for slots in served_slots}
    profile_users, profile_items = content_profile_scores(split.warm.train, split.warm.features, split.cold_features)
    content = _metrics(profile_users, profile_items, truth, ks)
    by_k = {
        str(k): _metrics(
            user_embeddings,
            neighbour_mean_encodings(bundle.item_embeddings, split.warm.features, split.cold_features, k),
            truth,
            ks,
        )
        for k in neighbour_ks
    }
    return {
        "n_cold_items": n_cold,
        "n_cold_interactions": int(truth.nnz),
        "n_users_evaluated": n_users_evaluated,
        "encoder_source": (bundle.manifest.get("item_encoder") or {}).get("source", "model"),
        "encoder": model,
        "content_profile": content,
        "served": served,
        **({"neighbour_mean_by_k": by_k} if by_k else {}),
        "random_expected": {f"recall@{k}": k / n_cold for k in ks},
        "protocol": (
            "held-out items removed from training entirely; encoded from their features by the bundle's "
            "item_encoder.onnx (service ItemEncoder); each user with a held-out interaction ranks all held-out "
            "items; every held-out interaction is ground truth; nothing masked"
        ),
    }


def run_cold_start(
    model: str,
    dataset_path: Path,
    out_dir: Path,
    fraction: float = 0.2,
    split_seed: int = 0,
    config_path: Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    dataset: InteractionDataset | None = None,
    progress: bool = True,
    served_slots: tuple[int, ...] = (0, 2),
    validation: bool = False,
    neighbour_ks: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Hold out items, train ``model`` on the rest (presets of ``dataset_path``), export, evaluate the encoder
    (``served_slots``: the reserved new-item places the serving evaluation tries; ``validation``: evaluate on the
    validation split of :func:`held_out_split` instead; ``neighbour_ks``: see :func:`evaluate_cold_start`).

    Writes the training run to ``out_dir/warm_run`` (metrics.json, split.inter, checkpoint, bundle) and the
    result to ``out_dir/coldstart.json``; returns that payload.
    """
    from trainer.config import resolve_run_config
    from trainer.loop import write_json_atomic
    from trainer.models.registry import build_config, get_spec
    from trainer.pipeline import dataset_preset_name, load_dataset_dir, run_fit_config

    get_spec(model)
    run_config = resolve_run_config(
        model, dataset_preset_name(dataset_path), config_path, train_overrides=train_overrides
    )
    build_config(run_config.model, run_config.model_params)  # a bad config fails before any work
    dataset = dataset if dataset is not None else load_dataset_dir(dataset_path)
    _check_neighbour_ks(neighbour_ks)
    split = held_out_split(dataset, fraction, split_seed, validation)
    if len(split.cold_items) < 20:
        raise ColdStartError(
            f"only {len(split.cold_items)} held-out items: at least 20 are needed (raise --cold-fraction)"
        )
    logger.info(
        "cold start: %d of %d items held out (%d interactions), %d warm items",
        len(split.cold_items), dataset.n_items, split.cold_truth.nnz, split.warm.n_items,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    derived = {
        "kind": "cold-start warm items",
        "held_out_items": len(split.cold_items),
        "cold_fraction": fraction,
        "split_seed": split_seed,
        "validation": validation,
        "note": f"the dataset at dataset_path minus the held-out items listed in {COLD_START_FILE}"
        + (" (cold_item_ids and removed_item_ids)" if validation else ""),
    }
    metrics = run_fit_config(
        run_config, split.warm, Path(dataset_path), out_dir / "warm_run", progress=progress, derived_dataset=derived
    )
    result = evaluate_cold_start(Path(metrics["bundle"]), split, served_slots=served_slots, neighbour_ks=neighbour_ks)
    payload = {
        "model": model,
        "dataset": dataset.name,
        "dataset_path": str(Path(dataset_path).resolve()),
        "cold_fraction": fraction,
        "split_seed": split_seed,
        "validation": validation,
        "train_seed": run_config.train.seed,
        "cold_item_ids": split.cold_item_ids,
        **({"removed_item_ids": split.removed_item_ids} if validation else {}),
        "warm_valid": metrics["valid"],
        "warm_test": metrics["test"],
        "best_epoch": metrics["best_epoch"],
        "bundle": metrics["bundle"],
        **result,
    }
    write_json_atomic(out_dir / COLD_START_FILE, payload)
    return payload


def summarize(results: list[dict[str, Any]], k: int = 20) -> dict[str, Any]:
    """Mean ± std over runs (e.g. training seeds on one held-out split) of Recall/NDCG@k of the encoder and the
    content reference, plus the random expectation; the runs must share the held-out items."""
    from trainer.pipeline import mean_std

    if not results:
        raise ColdStartError("no cold-start results to summarise")
    if any(r["cold_item_ids"] != results[0]["cold_item_ids"] for r in results):
        raise ColdStartError("the runs held out different items; summarise one held-out split at a time")
    summary: dict[str, Any] = {
        "model": results[0]["model"],
        "train_seeds": [r["train_seed"] for r in results],
        "n_cold_items": results[0]["n_cold_items"],
        "validation": results[0].get("validation", False),
        "random_expected": results[0]["random_expected"].get(f"recall@{k}"),
    }
    for key in ("encoder", "content_profile"):
        for metric in (f"recall@{k}", f"ndcg@{k}"):
            summary[f"{key}_{metric}"] = mean_std([r[key][metric] for r in results])
    summary[f"warm_valid_recall@{k}"] = mean_std([r["warm_valid"][f"recall@{k}"] for r in results])
    shared_ks = set.intersection(*(set(r.get("neighbour_mean_by_k", {})) for r in results))
    for neighbours in sorted(shared_ks, key=int):
        for metric in (f"recall@{k}", f"ndcg@{k}"):
            summary[f"neighbour_mean[k={neighbours}]_{metric}"] = mean_std(
                [r["neighbour_mean_by_k"][neighbours][metric] for r in results]
            )
    for setting in results[0].get("served", {}):
        if all(setting in r.get("served", {}) for r in results):
            for metric in (f"recall@{k}", f"cold_share@{k}", "new_item_precision", "new_item_precision_random"):
                defined = [r["served"][setting][metric] for r in results if not math.isnan(r["served"][setting][metric])]
                summary[f"served[{setting}]_{metric}"] = mean_std(defined)  # NaN where no run showed a new item
            summary[f"served[{setting}]_n_users_shown_new_items"] = [
                r["served"][setting]["n_users_shown_new_items"] for r in results
            ]
    return summary


def reevaluate_cold_start(
    out_dir: Path,
    dataset: InteractionDataset | None = None,
    model: str | None = None,
    served_slots: tuple[int, ...] = (0, 2),
    neighbour_ks: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Evaluate an existing ``coldstart`` directory again (no training): the same held-out items are drawn from
    the dataset with the recorded fraction, seed and validation flag, and the warm run's current bundle is encoded
    and ranked. Rewrites ``coldstart.json`` with the new evaluation and returns it."""
    from trainer.loop import write_json_atomic
    from trainer.pipeline import load_dataset_dir

    report_path = Path(out_dir) / COLD_START_FILE
    if not report_path.is_file():
        raise ColdStartError(f"{report_path} does not exist: run `trainer coldstart` without --evaluate-only first")
    previous = json.loads(report_path.read_text())
    if model is not None and model != previous["model"]:
        raise ColdStartError(f"{report_path} is a {previous['model']!r} run, not {model!r}")
    dataset = dataset if dataset is not None else load_dataset_dir(Path(previous["dataset_path"]))
    split = held_out_split(dataset, previous["cold_fraction"], previous["split_seed"], previous.get("validation", False))
    if split.cold_item_ids != previous["cold_item_ids"]:
        raise ColdStartError(f"the dataset now gives other held-out items than {report_path} records")
    result = evaluate_cold_start(
        Path(out_dir) / "warm_run" / "bundles" / "current", split, served_slots=served_slots, neighbour_ks=neighbour_ks
    )
    payload = {key: value for key, value in previous.items() if key != "neighbour_mean_by_k"}
    payload.update(result)
    write_json_atomic(report_path, payload)
    return payload
