"""The one in-memory dataset every reader produces and every model trains from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


class DatasetError(ValueError):
    """A dataset on disk is malformed; the message names the file, the line and what was expected."""


@dataclass
class KnowledgeGraph:
    """Item-entity knowledge graph with internal integer ids.

    Attributes:
        triples: int64 [n_triples, 3] of (head entity, relation, tail entity) internal indices.
        entity_ids: external entity ids; row ``e`` of any entity table is ``entity_ids[e]``.
        relation_ids: external relation names; relation ``r`` is ``relation_ids[r]``.
        item_entity: int64 [n_items]; the entity index linked to each item, ``-1`` when unlinked.
    """

    triples: np.ndarray
    entity_ids: list[str]
    relation_ids: list[str]
    item_entity: np.ndarray

    @property
    def n_entities(self) -> int:
        return len(self.entity_ids)

    @property
    def n_relations(self) -> int:
        return len(self.relation_ids)

    def validate(self, n_items: int) -> None:
        if self.triples.ndim != 2 or self.triples.shape[1] != 3:
            raise DatasetError(f"KG triples must be [n, 3], got {self.triples.shape}")
        if self.item_entity.shape != (n_items,):
            raise DatasetError(f"item_entity must have one entry per item ({n_items}), got {self.item_entity.shape}")
        if len(self.triples):
            if self.triples[:, [0, 2]].min() < 0 or self.triples[:, [0, 2]].max() >= self.n_entities:
                raise DatasetError("KG triple references an entity index out of range")
            if self.triples[:, 1].min() < 0 or self.triples[:, 1].max() >= self.n_relations:
                raise DatasetError("KG triple references a relation index out of range")
        if (self.item_entity >= self.n_entities).any():
            raise DatasetError("item_entity references an entity index out of range")


def is_storable_id(external_id: str) -> bool:
    """Whether a dataset can hold ``external_id``: non-empty, no tab or line break (split and .inter files are
    tab-separated lines)."""
    return bool(external_id) and not any(c in external_id for c in "\t\r\n")


@dataclass
class InteractionDataset:
    """Users, items, a train/valid/test split and per-modality item features.

    Attributes:
        name: dataset name (used in bundle manifests).
        user_ids: external user ids (strings); internal user ``u`` is ``user_ids[u]``.
        item_ids: external item ids (strings); internal item ``i`` is ``item_ids[i]``.
        train, valid, test: binary CSR [n_users, n_items] interaction matrices (disjoint).
        features: modality name -> float32 [n_items, dim_m] item features, finite.
        kg: optional item-entity knowledge graph.
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    features: dict[str, np.ndarray] = field(default_factory=dict)
    kg: KnowledgeGraph | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def modality_dims(self) -> dict[str, int]:
        return {name: int(matrix.shape[1]) for name, matrix in self.features.items()}

    def validate(self) -> None:
        """Raise :class:`DatasetError` when shapes, ids or features are inconsistent."""
        shape = (self.n_users, self.n_items)
        for split_name in ("train", "valid", "test"):
            matrix = getattr(self, split_name)
            if matrix.shape != shape:
                raise DatasetError(f"{split_name} matrix has shape {matrix.shape}, expected {shape}")
        if len(set(self.user_ids)) != self.n_users:
            raise DatasetError("user ids are not unique")
        if len(set(self.item_ids)) != self.n_items:
            raise DatasetError("item ids are not unique")
        for kind, ids in (("user", self.user_ids), ("item", self.item_ids)):
            # split files and .inter files are tab-separated lines: such an id would shift or break their columns
            bad = next((i for i in ids if not is_storable_id(i)), None)
            if bad is not None:
                raise DatasetError(
                    f"{kind} id {bad!r} is empty or contains a tab or line break; ids must be non-empty, tab-free, "
                    "single-line text"
                )
        for modality, matrix in self.features.items():
            if matrix.ndim != 2 or matrix.shape[0] != self.n_items:
                raise DatasetError(
                    f"feature '{modality}' has shape {matrix.shape}; expected {self.n_items} rows (one per item)"
                )
            if matrix.dtype != np.float32:
                raise DatasetError(f"feature '{modality}' must be float32, got {matrix.dtype}")
            if not np.isfinite(matrix).all():
                bad_row = int(np.where(~np.isfinite(matrix).all(axis=1))[0][0])
                raise DatasetError(f"feature '{modality}' contains NaN or inf (first at item row {bad_row})")
        if self.kg is not None:
            self.kg.validate(self.n_items)

    def fingerprint(self) -> str:
        """sha256 (hex) of everything a model is built, trained and evaluated from: the ids, the three splits, the
        features and the KG, not the name. Two runs with the same fingerprint saw the same data; a dataset directory
        rebuilt with other features (another encoder version, say) gets another one."""
        digest = hashlib.sha256()

        def add(label: str, payload: bytes) -> None:
            digest.update(f"{label}:{len(payload)}:".encode())
            digest.update(payload)

        add("users", json.dumps(list(self.user_ids)).encode())
        add("items", json.dumps(list(self.item_ids)).encode())
        for split_name in ("train", "valid", "test"):
            matrix = sp.csr_matrix(getattr(self, split_name), dtype=np.float32, copy=True)
            matrix.sum_duplicates()
            matrix.sort_indices()
            for part in ("indptr", "indices"):
                add(f"{split_name}.{part}", np.ascontiguousarray(getattr(matrix, part), dtype=np.int64).tobytes())
            add(f"{split_name}.data", np.ascontiguousarray(matrix.data, dtype=np.float32).tobytes())
        for modality in sorted(self.features):
            matrix = np.ascontiguousarray(self.features[modality], dtype=np.float32)
            add(f"features.{modality}.shape", json.dumps(list(matrix.shape)).encode())
            add(f"features.{modality}", matrix.tobytes())
        if self.kg is not None:
            add("kg.triples", np.ascontiguousarray(self.kg.triples, dtype=np.int64).tobytes())
            add("kg.item_entity", np.ascontiguousarray(self.kg.item_entity, dtype=np.int64).tobytes())
            add("kg.entities", json.dumps(list(self.kg.entity_ids)).encode())
            add("kg.relations", json.dumps(list(self.kg.relation_ids)).encode())
        return digest.hexdigest()

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train": int(self.train.nnz),
            "n_valid": int(self.valid.nnz),
            "n_test": int(self.test.nnz),
            "modalities": self.modality_dims,
            "kg_triples": 0 if self.kg is None else int(len(self.kg.triples)),
        }
