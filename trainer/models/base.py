"""The model contract every recommender implements.

A model is built from :class:`ModelInputs` (tensors already on the target device) and a typed
config dataclass; its constructor does no file, argv or network I/O. The training loop only uses:

* :meth:`Recommender.representations` -> (users [n_users, d], items [n_items, d]); score = inner product,
  so the exported embeddings are exactly what FAISS inner-product search ranks by;
* :meth:`Recommender.loss_terms` -> named scalar loss terms for one BPR batch; the loop minimises their sum
  and logs each by name;
* optional hooks: :meth:`auxiliary_parameters` / :meth:`auxiliary_loss_terms` (a second optimiser
  step per batch, e.g. SAND's CLUB estimator), :meth:`on_epoch_start`, and :meth:`item_encoder`
  (the model's own cold-start encoder, exported to ONNX; models without one get a feature-neighbour encoder);
* warm start (``trainer.warm_start``): :meth:`row_tables` names the parameters with one row per user, per item
  or per another keyed thing (Multi-KG4Rec's graph nodes and relations), :meth:`row_keys` gives every row's
  external key, and the warm start copies those tables row by row by key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from trainer.data.dataset import InteractionDataset

# How a LightGCN-style backbone combines its layers 0..L (LUDP and SAND offer both; LightGCN itself takes the mean).
LAYER_COMBINATIONS = ("sum", "mean")


@dataclass
class ModelConfig:
    """Fields shared by every model config; models subclass this with their own fields."""

    embedding_dim: int = 64
    reg_weight: float = 1e-4

    def require_finite_scale(self, *names: str, prefix: str = "", allow_zero: bool = False) -> None:
        """Raise ModelInputError unless each named field (a scale factor) is a finite number above zero, or at least
        zero with ``allow_zero`` (a factor that may switch its term off)."""
        for name in names:
            value = getattr(self, name)
            if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
                bound = "a finite number ≥ 0" if allow_zero else "a positive finite number"
                raise ModelInputError(f"{prefix}{name} must be {bound}, got {value!r}")


@dataclass
class KGTensors:
    """Knowledge graph as tensors on the model's device.

    Attributes:
        triples: int64 [n_triples, 3] (head entity, relation, tail entity), without inverse relations.
        n_entities, n_relations: sizes of the entity and relation tables.
        item_entity: int64 [n_items]; entity index of each item or -1 when unlinked.
    """

    triples: Tensor
    n_entities: int
    n_relations: int
    item_entity: Tensor


@dataclass
class ModelInputs:
    """Everything a model may be built from.

    Attributes:
        n_users, n_items: sizes.
        train_matrix: scipy CSR [n_users, n_items] of training interactions (CPU; for graph building).
        train_users, train_items: int64 [n_train] tensors on ``device`` (the same interactions, COO).
        features: modality -> float32 [n_items, dim_m] tensor on ``device``.
        kg: optional knowledge graph tensors.
        device: where the model lives.
    """

    n_users: int
    n_items: int
    train_matrix: sp.csr_matrix
    train_users: Tensor
    train_items: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    kg: KGTensors | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_train_matrix(
        cls,
        train: sp.spmatrix,
        features: dict[str, Tensor] | None = None,
        kg: KGTensors | None = None,
        device: torch.device | None = None,
    ) -> ModelInputs:
        """Sizes and the COO interaction tensors derived from ``train`` [n_users, n_items] (any scipy format)."""
        device = device if device is not None else torch.device("cpu")
        csr = sp.csr_matrix(train)
        coo = csr.tocoo()
        return cls(
            n_users=csr.shape[0],
            n_items=csr.shape[1],
            train_matrix=csr,
            train_users=torch.as_tensor(coo.row.astype(np.int64), device=device),
            train_items=torch.as_tensor(coo.col.astype(np.int64), device=device),
            features=features if features is not None else {},
            kg=kg,
            device=device,
        )

    @classmethod
    def from_dataset(cls, dataset, device: torch.device) -> ModelInputs:  # dataset: InteractionDataset
        kg = None
        if dataset.kg is not None:
            kg = KGTensors(
                triples=torch.as_tensor(dataset.kg.triples, dtype=torch.long, device=device),
                n_entities=dataset.kg.n_entities,
                n_relations=dataset.kg.n_relations,
                item_entity=torch.as_tensor(dataset.kg.item_entity, dtype=torch.long, device=device),
            )
        return cls.from_train_matrix(
            dataset.train,
            features={
                name: torch.as_tensor(matrix, dtype=torch.float32, device=device)
                for name, matrix in dataset.features.items()
            },
            kg=kg,
            device=device,
        )


@dataclass
class BPRBatch:
    """One training batch: int64 [B] tensors of users, a positive and a sampled negative item each."""

    users: Tensor
    pos_items: Tensor
    neg_items: Tensor


RowKind = Literal["user", "item", "node", "relation"]
"""Axis-0 meaning of a per-row parameter table: one row per user or per item (in dataset row order), or per node or
relation of a model's own graph (in the model's layout, keyed by :meth:`Recommender.row_keys`)."""


@dataclass(frozen=True)
class RowIds:
    """External ids of a dataset's rows, from which a model derives the keys of its table rows (``row_keys``).

    Attributes:
        user_ids, item_ids: the dataset's user and item ids, in row order.
        entity_ids, relation_ids: its knowledge graph's entity and relation ids, in index order (empty without a KG).
    """

    user_ids: Sequence[str]
    item_ids: Sequence[str]
    entity_ids: Sequence[str] = ()
    relation_ids: Sequence[str] = ()

    @classmethod
    def of(cls, dataset: InteractionDataset) -> RowIds:
        kg = dataset.kg
        return cls(
            user_ids=list(dataset.user_ids),
            item_ids=list(dataset.item_ids),
            entity_ids=list(kg.entity_ids) if kg is not None else [],
            relation_ids=list(kg.relation_ids) if kg is not None else [],
        )


class ModelInputError(ValueError):
    """The inputs do not fit the model (missing modality, wrong feature dimension, no KG...)."""


class Recommender(nn.Module):
    """Base class of every model. Subclasses set ``config_class`` and implement the abstract methods."""

    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, inputs: ModelInputs, config: ModelConfig) -> None:
        super().__init__()
        self.n_users = inputs.n_users
        self.n_items = inputs.n_items
        self.config = config

    def representations(self) -> tuple[Tensor, Tensor]:
        """Return (users [n_users, d], items [n_items, d]) such that scores are their inner products."""
        raise NotImplementedError

    def loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        """Named scalar loss terms for one batch; the optimiser minimises their sum."""
        raise NotImplementedError

    def scores(self, users: Tensor, representations: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Scores float [len(users), n_items] by inner product of the final representations."""
        user_repr, item_repr = representations if representations is not None else self.representations()
        return user_repr[users] @ item_repr.T

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by their own optimiser step (excluded from the main optimiser)."""
        return []

    def auxiliary_loss_terms(self, batch: BPRBatch) -> dict[str, Tensor]:
        """Loss terms for the auxiliary optimiser step, run before the main step of each batch."""
        return {}

    def on_epoch_start(self, epoch: int) -> None:
        """Hook called before each training epoch (e.g. to resample cached structures)."""

    def row_tables(self) -> dict[str, RowKind]:
        """Parameters (``named_parameters()`` names) whose axis 0 has one row per user (``"user"``) or per item
        (``"item"``), row ``i`` being dataset row ``i``, or one row per node or relation of the model's own graph
        (``"node"``, ``"relation"``). A warm start copies these row by row, matching the keys of :meth:`row_keys`;
        every other parameter is copied whole, so a per-row table missing here would be copied by position.
        Default: none (a model without such tables)."""
        return {}

    def row_keys(self, ids: RowIds) -> dict[str, list[str]]:
        """The external key of every row of each row kind :meth:`row_tables` uses, in row order, for a model built on
        the dataset whose ids are ``ids``. Default: ``user`` rows are the user ids, ``item`` rows the item ids; a
        model with ``node`` or ``relation`` tables returns their keys too (unique within a kind)."""
        return {"user": [str(x) for x in ids.user_ids], "item": [str(x) for x in ids.item_ids]}

    def item_encoder(self) -> nn.Module | None:
        """The model's own cold-start encoder: a module mapping {modality: float [B, dim_m]} to item embeddings
        [B, d], or None.

        Its forward takes the modality tensors as positional arguments in ``sorted(modalities)`` order.
        Exported as ``item_encoder.onnx`` for new items. None: the export gives the model the feature-neighbour
        mean over its final item embeddings instead (``trainer.export.cold_start_encoder``) when the dataset has
        item features.
        """
        return None

