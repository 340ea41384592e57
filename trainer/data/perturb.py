"""A copy of a dataset directory with a few feature values moved by one ulp: a float-noise robustness check; or with
the items' feature rows shuffled: a content control (:func:`shuffle_feature_rows`).

Two builds of the same features can differ in the last bit of a few values (another BLAS kernel, another thread
count, another package version), and a model trained on each may follow a different trajectory: early stopping on
a noisy validation curve turns a one-ulp difference into different stopping epochs. Training the same seeds on the
dataset and on a perturbed copy measures how far such noise alone moves a result, next to the seed spread.

The copy keeps every file byte for byte except the chosen ``<modality>_feat.npy`` files; ``features.json`` (when
present) gets the new matrices' sha256, a ``perturbation`` record, and no ``build_key``, so that ``trainer
features`` never takes the copy for an up-to-date build. Give the copy the source's directory name (e.g.
``data/ulp15/ml-100k-mm``): ``fit``/``compare`` look up a dataset's presets by that name.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from trainer.data.dataset import DatasetError
from trainer.data.features import feature_sha256, write_directory_atomically
from trainer.data.loaders import load_dataset
from trainer.data.parsing import feature_files

logger = logging.getLogger(__name__)


def choose_ulp_moves(
    features: dict[str, np.ndarray], n_values: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pick ``n_values`` distinct nonzero entries over all modalities (uniformly, by ``seed``) and a direction each.

    Args:
        features: modality -> float32 [n_rows, dim].
    Returns:
        modality -> (flat indices into that matrix int64 [n_m], directions float32 [n_m] of ±inf), sorted by index;
        modalities without a chosen entry are left out.
    Raises:
        ValueError: ``n_values`` < 1 or more than the nonzero entries there are.
    """
    modalities = sorted(features)
    nonzero = [np.flatnonzero(features[m].ravel()) for m in modalities]
    total = sum(len(idx) for idx in nonzero)
    if n_values < 1 or n_values > total:
        raise ValueError(f"values to move must be between 1 and the {total} nonzero feature values, got {n_values}")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=n_values, replace=False))
    directions = np.where(rng.random(n_values) < 0.5, -np.inf, np.inf).astype(np.float32)
    moves = {}
    offset = 0
    for modality, idx in zip(modalities, nonzero):
        mine = (picks >= offset) & (picks < offset + len(idx))
        if mine.any():
            moves[modality] = (idx[picks[mine] - offset].astype(np.int64), directions[mine])
        offset += len(idx)
    return moves


def _read_features(source: Path, target: Path, need_float32: bool) -> dict[str, np.ndarray]:
    """The feature matrices of ``source`` by modality, after the checks every copy makes."""
    if target.exists():
        raise DatasetError(f"{target} exists; choose another --out")
    if target.name != source.name:
        logger.warning(
            "%s is named differently from %s: the dataset presets (trainer/configs/<name>/) will not apply to it",
            target, source,
        )
    files = feature_files(source)
    if not files:
        raise DatasetError(f"{source}: no <modality>_feat.npy files to perturb")
    raw = {}
    for modality, path in files.items():
        array = np.load(path, allow_pickle=False)
        if need_float32 and array.dtype != np.float32:
            raise DatasetError(f"{path}: feature '{modality}' is {array.dtype}; a one-ulp move needs float32 files")
        raw[modality] = array
    return raw


def _write_copy(source: Path, target: Path, raw: dict[str, np.ndarray], changed: dict[str, np.ndarray],
                record: dict) -> tuple[str, str]:
    """Copy ``source`` to ``target`` with the ``changed`` feature matrices and ``record`` as features.json's
    ``perturbation`` (plus the source and its fingerprint); returns (source fingerprint, copy fingerprint)."""
    files = feature_files(source)
    manifest_path = source / "features.json"
    rewritten = {files[m].name for m in changed} | {manifest_path.name}
    source_fingerprint = load_dataset(source).fingerprint()

    def fill(tmp_dir: Path) -> None:
        for entry in source.iterdir():
            if entry.name in rewritten:
                continue
            if entry.is_dir():
                shutil.copytree(entry, tmp_dir / entry.name)
            else:
                shutil.copy2(entry, tmp_dir / entry.name)
        for modality, matrix in changed.items():
            np.save(tmp_dir / files[modality].name, matrix)
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            manifest.pop("build_key", None)
            manifest["features_sha256"] = {m: feature_sha256(changed.get(m, raw[m])) for m in raw}
            manifest["perturbation"] = {"source": str(source), "source_fingerprint": source_fingerprint, **record}
            (tmp_dir / "features.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8")

    write_directory_atomically(target, fill)
    return source_fingerprint, load_dataset(target).fingerprint()


def perturb_features(dataset_dir: str | Path, out_dir: str | Path, n_values: int, seed: int = 0) -> dict:
    """Write ``out_dir``: ``dataset_dir`` with ``n_values`` nonzero feature values moved one ulp up or down.

    Returns a report: the source and copy fingerprints (:meth:`InteractionDataset.fingerprint`), the count moved per
    modality, the largest absolute change. ``out_dir`` must not exist; nothing is left behind on failure.

    Raises:
        DatasetError: no feature files, a feature file that is not float32 (a one-ulp move would not survive the
            float32 load), ``out_dir`` exists, or ``n_values`` out of range.
    """
    source, target = Path(dataset_dir), Path(out_dir)
    raw = _read_features(source, target, need_float32=True)
    try:
        moves = choose_ulp_moves(raw, n_values, seed)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc

    moved = {}
    largest = 0.0
    for modality, (flat, directions) in moves.items():
        matrix = raw[modality].copy()
        values = matrix.ravel()  # a view: matrix is a fresh contiguous copy
        before = values[flat].copy()
        values[flat] = np.nextafter(before, directions)
        largest = max(largest, float(np.abs(values[flat] - before).max()))
        moved[modality] = matrix
    counts = {m: int(len(moves[m][0])) for m in moves}
    source_fingerprint, fingerprint = _write_copy(
        source, target, raw, moved, {"values_moved_one_ulp": counts, "seed": seed}
    )
    return {
        "source": str(source),
        "out": str(target),
        "source_fingerprint": source_fingerprint,
        "fingerprint": fingerprint,
        "values_moved_one_ulp": counts,
        "largest_absolute_change": largest,
        "seed": seed,
    }


def shuffle_feature_rows(dataset_dir: str | Path, out_dir: str | Path, seed: int = 0) -> dict:
    """Write ``out_dir``: ``dataset_dir`` with the item rows of every feature matrix permuted, one permutation (drawn
    from ``seed``) for all modalities: item i gets the features of item perm[i] in every modality.

    A content control: the features keep their distribution, their cross-modal agreement within an item and their
    kNN structure, but no longer belong to their items. A model that gains as much from the shuffled features as from
    the real ones gains from something other than the items' content. Interactions, split and KG are unchanged.
    Returns the report of :func:`perturb_features` with ``permutation_seed`` and ``items_moved`` instead of the ulps.
    """
    source, target = Path(dataset_dir), Path(out_dir)
    raw = _read_features(source, target, need_float32=False)
    rows = {matrix.shape[0] for matrix in raw.values()}
    if len(rows) != 1:
        raise DatasetError(f"{source}: the feature matrices have different row counts {sorted(rows)}")
    n_rows = rows.pop()
    if n_rows < 2:
        raise DatasetError(f"{source}: {n_rows} feature row(s); nothing to shuffle")
    permutation = np.random.default_rng(seed).permutation(n_rows)
    shuffled = {modality: np.ascontiguousarray(matrix[permutation]) for modality, matrix in raw.items()}
    moved = int((permutation != np.arange(n_rows)).sum())
    source_fingerprint, fingerprint = _write_copy(
        source, target, raw, shuffled, {"item_rows_shuffled": True, "permutation_seed": seed, "items_moved": moved}
    )
    return {
        "source": str(source),
        "out": str(target),
        "source_fingerprint": source_fingerprint,
        "fingerprint": fingerprint,
        "items_moved": moved,
        "permutation_seed": seed,
    }
