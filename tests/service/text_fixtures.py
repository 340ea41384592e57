"""Tiny raw-text encoder files for the service tests, built in tmp_path: a word-level tokenizer (``tokenizers``) and
an ONNX graph (``onnx.helper``) that averages word vectors over the attention mask and L2-normalises them, and a
bundle carrying them next to the conftest's linear item encoder."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from tests.service.conftest import MODALITIES, build_tiny_bundle, save_checked_onnx

VOCAB = ["[UNK]", "red", "blue", "shoe", "hat", "warm", "wool", "sock"]
MAX_TOKENS = 4
TEXT_DIM = MODALITIES["text"]


def word_vectors() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(len(VOCAB), TEXT_DIM)).astype(np.float32)


def expected_text_features(text: str) -> np.ndarray:
    """What the tiny text encoder computes: mean of the (lower-cased, truncated) words' vectors, L2-normalised."""
    ids = [VOCAB.index(w) if w in VOCAB else 0 for w in text.lower().split()][:MAX_TOKENS]
    mean = word_vectors()[ids].mean(axis=0)
    return mean / np.linalg.norm(mean)


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))


def write_text_encoder(path: Path, out_dim: int = TEXT_DIM, vectors: np.ndarray | None = None,
                       n_positions: int | None = None) -> None:
    """ONNX: embedding = normalize(sum_t mask[b, t] * (V[input_ids[b, t]] + P[t]) / sum_t mask[b, t]).

    ``vectors`` V (default ``word_vectors()`` cut to ``out_dim`` columns, or ones for a wider ``out_dim``); with
    ``n_positions``, a zero position table P of that many rows, which fails on longer inputs like a BERT model.
    """
    from onnx import TensorProto, helper, numpy_helper

    if vectors is None:
        vectors = word_vectors()[:, :out_dim] if out_dim <= TEXT_DIM else np.ones((len(VOCAB), out_dim), np.float32)
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "T"]) for n in ("input_ids", "attention_mask")]
    initializers = [
        numpy_helper.from_array(vectors, name="V"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), name="axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), name="axis1"),
    ]
    nodes = [helper.make_node("Gather", ["V", "input_ids"], ["words"])]
    if n_positions is None:
        nodes.append(helper.make_node("Identity", ["words"], ["tokens"]))
    else:
        initializers += [
            numpy_helper.from_array(np.zeros((n_positions, vectors.shape[1]), np.float32), name="P"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), name="one"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), name="zero"),
        ]
        nodes += [
            helper.make_node("Shape", ["input_ids"], ["shape"]),
            helper.make_node("Gather", ["shape", "one"], ["T"], axis=0),
            helper.make_node("Range", ["zero", "T", "one"], ["positions"]),
            helper.make_node("Gather", ["P", "positions"], ["pos"]),
            helper.make_node("Add", ["words", "pos"], ["tokens"]),
        ]
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("LpNormalization", ["mean"], ["embedding"], axis=1, p=2),
    ]
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", vectors.shape[1]])
    save_checked_onnx(path, helper.make_graph(nodes, "text_encoder", inputs, [output], initializers))


def build_text_bundle(root: Path, *, files=("text_encoder.onnx", "tokenizer.json"), info=None, out_dim=TEXT_DIM,
                      seed: int = 0) -> Path:
    """The conftest's tiny bundle (linear item encoder over image 4-d + text 5-d) plus a text encoder: ``files``
    of it, the manifest entry ``info`` (default: modality text, 5-d, ``MAX_TOKENS``), an ONNX output of ``out_dim``."""
    work = root.parent / f"text-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    write_text_encoder(work / "text_encoder.onnx", out_dim)
    write_tokenizer(work / "tokenizer.json")
    manifest = {"text_encoder": info if info is not None else {"modality": "text", "dim": TEXT_DIM,
                                                                "max_tokens": MAX_TOKENS}}
    return build_tiny_bundle(root, seed=seed, extra_files={name: work / name for name in files},
                             extra_manifest=manifest)


IMAGE = [0.5, -1.0, 0.25, 2.0]
