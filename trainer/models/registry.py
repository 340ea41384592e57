"""The explicit model registry: one dict, one line per model name.

Each entry is a :class:`ModelSpec`: the model class, and config defaults that make a named variant
(e.g. ``kgat`` is ``multikg4rec`` with the multimodal fusion switched off).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from trainer.config import typed_values
from trainer.models.base import ModelConfig, ModelInputs, Recommender
from trainer.models.lightgcn import LightGCN
from trainer.models.lightgcn_sand import LightGCNSAND
from trainer.models.ludp import LUDP
from trainer.models.mf import MFBPR
from trainer.models.multikg4rec import MultiKG4Rec
from trainer.models.sand import SAND


@dataclass(frozen=True)
class ModelSpec:
    model_class: type[Recommender]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "mf": ModelSpec(MFBPR, description="MF-BPR (Rendle et al. 2009)"),
    "lightgcn": ModelSpec(LightGCN, description="LightGCN (He et al. 2020)"),
    "multikg4rec": ModelSpec(MultiKG4Rec, description="Multi-KG4Rec: CKG + cross-modal Bi-Transformer + knowledge-aware attention (Wang et al. 2025)"),
    "kgat": ModelSpec(MultiKG4Rec, {"fusion": "none"}, description="KGAT: Multi-KG4Rec without multimodal fusion (the paper's w/o t&v)"),
    "ludp": ModelSpec(LUDP, description="LUDP: item modal kNN graphs + user preference graph on LightGCN (Lei et al. 2023)"),
    "ludp_item": ModelSpec(
        LUDP,
        {"user_graph": False, "item_graph_weights": "mean", "layer_combination": "mean"},
        description="LUDP's item modal kNN graphs on LightGCN, neighbours averaged (our variant; no user graph)",
    ),
    "sand": ModelSpec(SAND, description="SAND: separate alignment and distancing of modal-generic/unique parts (2024)"),
    "lightgcn_sand": ModelSpec(LightGCNSAND, description="LightGCN + projected features with SAND's alignment and distancing"),
}


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}; registered: {', '.join(sorted(MODELS))}"


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(name) from None


def build_config(name: str, params: dict[str, Any] | None = None) -> ModelConfig:
    """The model's config dataclass from the variant defaults overlaid with ``params``.

    Raises:
        ValueError: a parameter the config does not have, or a value of the wrong type (ConfigError).
    """
    spec = get_spec(name)
    config_class = spec.model_class.config_class
    merged = {**spec.defaults, **(params or {})}
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) for model {name!r}: {unknown}; known: {sorted(known)}")
    return config_class(**typed_values(config_class, merged, f"model {name!r}"))


def build_model(name: str, inputs: ModelInputs, params: dict[str, Any] | None = None) -> Recommender:
    model = get_spec(name).model_class(inputs, build_config(name, params))
    return model.to(inputs.device)
