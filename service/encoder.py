"""Cold-start encoders run with onnxruntime (no torch).

``ItemEncoder`` — the bundle's ``item_encoder.onnx``: one float32 input per modality, named after it, shape
[B, dim_m]; output ``embedding`` float32 [B, dim] in the item-embedding space (DESIGN.md).

``TextEncoder`` — the bundle's optional ``text_encoder.onnx`` + ``tokenizer.json``: raw text -> the ``text``
modality's feature vector, as the trainer built it (trainer/text_encoder.py): inputs ``input_ids`` and
``attention_mask`` int64 [B, T], output ``embedding`` float32 [B, dim_text].
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

OUTPUT_NAME = "embedding"
TEXT_INPUTS = ("input_ids", "attention_mask")
MAX_TEXT_CHARS = 20_000


class EncoderError(ValueError):
    """The encoder file does not follow the contract (bad inputs/outputs): the bundle is refused."""


class FeatureError(ValueError):
    """A client's item features cannot be encoded (unknown/missing modality, wrong dimension, NaN)."""


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise EncoderError(f"cannot load {path.name}: {exc}") from exc


class TextEncoder:
    """Raw text -> float32 [dim]: ``tokenizer.json`` (HF tokenizers, truncated at ``max_tokens``, no padding) and
    ``text_encoder.onnx``.

    Args:
        model_path, tokenizer_path: the bundle's files.
        modality: the modality whose features it produces (the manifest's ``text_encoder.modality``).
        dim: that modality's dimension in the manifest.
        max_tokens: the model's token limit; longer texts are truncated, as when the features were built.
        threads: intra-op threads.
    """

    def __init__(
        self, model_path: Path, tokenizer_path: Path, modality: str, dim: int, max_tokens: int, threads: int = 1
    ) -> None:
        from tokenizers import Tokenizer

        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 2:
            raise EncoderError(f"text encoder max_tokens must be an integer >= 2, got {max_tokens!r}")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises its own exception type for bad files
            raise EncoderError(f"cannot load {tokenizer_path.name}: {exc}") from exc
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.session = _session(model_path, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != set(TEXT_INPUTS) or any(i.type != "tensor(int64)" for i in inputs.values()):
            raise EncoderError(
                f"{model_path.name} inputs {sorted((n, i.type) for n, i in inputs.items())}; expected int64 "
                f"{list(TEXT_INPUTS)}"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        if OUTPUT_NAME not in outputs:
            raise EncoderError(f"{model_path.name} has no output named {OUTPUT_NAME!r}")
        width = outputs[OUTPUT_NAME].shape[-1] if outputs[OUTPUT_NAME].shape else None
        if isinstance(width, int) and width != dim:
            raise EncoderError(f"{model_path.name} gives {width}-d vectors; the {modality!r} modality is {dim}-d")
        self.modality = modality
        self.dim = dim
        self.max_tokens = max_tokens

    def check(self, text: str) -> None:
        """The cheap checks of ``encode`` (no tokenisation), so a request refused for another reason costs nothing.

        Raises:
            FeatureError: empty text, text over ``MAX_TEXT_CHARS`` characters, or text that is not valid Unicode (a
                lone UTF-16 surrogate, which JSON can escape as ``"\\ud800"``; the tokenizer refuses it).
        """
        if len(text) > MAX_TEXT_CHARS:
            raise FeatureError(
                f"modality {self.modality!r}: the text has {len(text)} characters; at most {MAX_TEXT_CHARS}"
            )
        if not text.strip():
            raise FeatureError(f"modality {self.modality!r}: the text is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FeatureError(
                f"modality {self.modality!r}: the text is not valid unicode (character {exc.start}: a lone "
                "surrogate)"
            ) from None
        stripped = text.strip()
        if stripped.startswith("[") and stripped.endswith("]"):  # a vector JSON-encoded twice is not text
            try:
                values = json.loads(stripped)
            except ValueError:
                values = None
            if isinstance(values, list) and all(isinstance(v, (int, float)) for v in values):
                raise FeatureError(
                    f"modality {self.modality!r} was given as a string holding a JSON list of {len(values)} "
                    f"numbers; send the list itself ({self.dim} numbers), not encoded as a string"
                )

    def encode(self, text: str) -> list[float]:
        """One text -> its ``dim`` feature values (float32 precision)."""
        self.check(text)
        encoding = self.tokenizer.encode(text)
        feeds = {
            "input_ids": np.asarray([encoding.ids], dtype=np.int64),
            "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
        }
        (embedding,) = self.session.run([OUTPUT_NAME], feeds)
        if embedding.shape != (1, self.dim) or not np.isfinite(embedding).all():
            raise FeatureError(
                f"the text encoder produced an invalid vector (shape {embedding.shape}, expected (1, {self.dim}))"
            )
        return [float(v) for v in embedding[0].astype(np.float32)]

    def warm(self) -> None:
        """Run a short text and one at the token limit (as long as a request can make it), so a model that loads but
        fails when run (a tokenizer of another model, a token limit past the model's position table) is refused
        with its bundle instead of failing requests.

        Raises:
            EncoderError: the text encoder fails on either text.
        """
        long_text = "warm " * min(self.max_tokens, MAX_TEXT_CHARS // len("warm "))  # >= 1 token a word
        for text in ("warm up", long_text):
            tokens = "?"
            try:
                tokens = str(len(self.tokenizer.encode(text).ids))
                self.encode(text)
            except Exception as exc:  # onnxruntime's errors are not RuntimeError: any failure refuses the bundle
                raise EncoderError(f"the text encoder fails on a {tokens}-token test text: {exc}") from exc


class ItemEncoder:
    """onnxruntime session for a bundle's item encoder.

    Args:
        path: ``item_encoder.onnx``.
        modalities: {modality: dim_m} from the manifest; must match the model's inputs exactly.
        dim: the item-embedding dimension the output must have.
        threads: intra-op threads (pinned per worker; inter-op is 1).
    """

    def __init__(self, path: Path, modalities: Mapping[str, int], dim: int, threads: int = 1) -> None:
        self.session = _session(path, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != set(modalities):
            raise EncoderError(
                f"{path.name} inputs {sorted(inputs)} do not match the manifest modalities {sorted(modalities)}"
            )
        for name, spec in inputs.items():
            if spec.type != "tensor(float)":
                raise EncoderError(f"{path.name} input {name!r} must be float32, is {spec.type}")
            if len(spec.shape) != 2 or (isinstance(spec.shape[1], int) and spec.shape[1] != modalities[name]):
                raise EncoderError(
                    f"{path.name} input {name!r} has shape {spec.shape}; expected [B, {modalities[name]}]"
                )
        if OUTPUT_NAME not in {o.name for o in self.session.get_outputs()}:
            raise EncoderError(f"{path.name} has no output named {OUTPUT_NAME!r}")
        self.modalities = dict(modalities)
        self.dim = dim

    def check_modalities(self, names: Collection[str]) -> None:
        """Raises FeatureError unless ``names`` are exactly this model's modalities."""
        unknown = sorted(set(names) - set(self.modalities))
        if unknown:
            raise FeatureError(f"unknown modality {unknown}; this model expects {sorted(self.modalities)}")
        missing = sorted(set(self.modalities) - set(names))
        if missing:
            raise FeatureError(
                f"missing modality {missing}; this model expects all of {sorted(self.modalities)}"
            )

    def feed(self, name: str, values: object) -> np.ndarray:
        """One modality's values as the model's float32 [1, dim_m] input.

        Raises:
            FeatureError: raw text, not a list of numbers, wrong length, NaN/inf, or beyond float32.
        """
        dim = self.modalities[name]
        if isinstance(values, str):
            raise FeatureError(
                f"modality {name!r} was given as raw text; this bundle has no text encoder, send {dim} floats"
            )
        if not isinstance(values, (Sequence, np.ndarray)):
            raise FeatureError(f"modality {name!r} must be a list of {dim} numbers")
        if len(values) != dim:
            raise FeatureError(f"modality {name!r} has {len(values)} values; expected {dim}")
        try:
            finite = all(math.isfinite(v) for v in values)
        except TypeError:
            raise FeatureError(f"modality {name!r} must be a list of {dim} numbers") from None
        if not finite:
            raise FeatureError(f"modality {name!r} contains NaN or infinity")
        array = np.asarray(values, dtype=np.float32).reshape(1, dim)
        if not np.isfinite(array).all():
            raise FeatureError(f"modality {name!r} overflows float32")
        return array

    def encode(self, features: Mapping[str, Sequence[float]]) -> np.ndarray:
        """Encode one item's features {modality: [dim_m] floats} -> float32 [dim]."""
        self.check_modalities(features)
        feeds = {name: self.feed(name, features[name]) for name in self.modalities}
        (embedding,) = self.session.run([OUTPUT_NAME], feeds)
        if embedding.shape != (1, self.dim) or not np.isfinite(embedding).all():
            raise FeatureError(
                f"the item encoder produced an invalid embedding (shape {embedding.shape}, expected (1, {self.dim}))"
            )
        return embedding[0].astype(np.float32)

    def warm(self) -> None:
        """One forward pass on zeros, so the first real request does not pay for lazy initialisation.

        Raises:
            EncoderError: the model loads but fails when run (the bundle is refused).
        """
        try:
            self.encode({name: [0.0] * dim for name, dim in self.modalities.items()})
        except Exception as exc:  # onnxruntime's errors are not RuntimeError
            raise EncoderError(f"the item encoder fails on a test input: {exc}") from exc
