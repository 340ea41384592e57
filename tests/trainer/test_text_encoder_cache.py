"""The text encoder cache (trainer/text_encoder.py, ``$MODALREC_CACHE_DIR/text_encoders``): concurrent exports, damaged
entries, unexpected export failures, and bundles on another file system than the cache. The ONNX export itself is
replaced by a fake that writes small files (tests/trainer/test_text_encoder.py exports the real model)."""

from __future__ import annotations

import errno
import json
import os
import threading

import numpy as np
import pytest

import trainer.text_encoder as text_encoder
from trainer.text_encoder import TextEncoderError, exported_text_encoder

SHA = "ab" * 32


class FakeExport:
    """Stands in for ``_export``: writes ``text_encoder.onnx`` and ``tokenizer.json`` (with ``pause`` between them)
    and counts its calls."""

    def __init__(self, pause=None):
        self.calls = 0
        self.pause = pause
        self.lock = threading.Lock()

    def __call__(self, model_dir, out_dir, model_sha256):
        with self.lock:
            self.calls += 1
        (out_dir / "text_encoder.onnx").write_bytes(b"onnx-model-bytes" * 1000)
        if self.pause is not None:
            self.pause()
        (out_dir / "tokenizer.json").write_text('{"tokenizer": true}')
        return {"modality": "text", "dim": 384, "max_tokens": 256, "model_sha256": model_sha256}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODALREC_CACHE_DIR", str(tmp_path / "cache"))
    fake = FakeExport()
    monkeypatch.setattr(text_encoder, "_export", fake)
    return fake


def _leftovers(tmp_path):
    """Names in the cache directory other than published entries (temporary or discarded directories)."""
    root = tmp_path / "cache" / "text_encoders"
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_two_exports_at_once_do_not_clobber_each_other(tmp_path, monkeypatch):
    """Two processes with the same pid (two containers on one cache volume, both python = pid 7) used the same
    temporary directory, and each removed the other's half-written export. Threads share a pid: the same case."""
    monkeypatch.setenv("MODALREC_CACHE_DIR", str(tmp_path / "cache"))
    barrier = threading.Barrier(2, timeout=10)
    fake = FakeExport(pause=barrier.wait)
    monkeypatch.setattr(text_encoder, "_export", fake)
    results, errors = [], []

    def run():
        try:
            results.append(exported_text_encoder(tmp_path / "model", SHA))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert fake.calls == 2 and len(results) == 2
    for result in results:
        assert result.onnx.read_bytes() == b"onnx-model-bytes" * 1000
        assert json.loads(result.tokenizer.read_text()) == {"tokenizer": True}
    assert results[0].onnx == results[1].onnx
    assert _leftovers(tmp_path) == []


def test_a_cache_entry_without_its_info_is_exported_again(cache, tmp_path):
    """A damaged entry (a partial copy, an interrupted clean-up) has no info.json: publishing over it failed with
    OSError, so the dataset never got a text encoder again."""
    first = exported_text_encoder(tmp_path / "model", SHA)
    (first.onnx.parent / "info.json").unlink()
    again = exported_text_encoder(tmp_path / "model", SHA)
    assert cache.calls == 2
    assert again.onnx.is_file() and again.tokenizer.is_file()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["onnx-missing", "tokenizer-missing", "onnx-corrupted", "onnx-truncated"])
def test_a_cache_entry_with_a_missing_or_damaged_file_is_exported_again(cache, tmp_path, damage):
    """info.json alone marked an entry as good: a missing file failed the whole bundle export (the trained model was
    not exported), a damaged one was hard-linked into every bundle (checksummed as it was) and refused by the
    service, or worse, served."""
    first = exported_text_encoder(tmp_path / "model", SHA)
    good = first.onnx.read_bytes()
    if damage == "onnx-missing":
        first.onnx.unlink()
    elif damage == "tokenizer-missing":
        first.tokenizer.unlink()
    else:
        os.chmod(first.onnx, 0o644)
        data = bytearray(good)
        if damage == "onnx-corrupted":
            data[100] ^= 0xFF
        else:
            del data[len(data) // 2 :]
        first.onnx.write_bytes(bytes(data))
    again = exported_text_encoder(tmp_path / "model", SHA)
    assert cache.calls == 2
    assert again.onnx.read_bytes() == good and again.tokenizer.is_file()
    assert exported_text_encoder(tmp_path / "model", SHA).onnx == again.onnx and cache.calls == 2  # cached again
    assert _leftovers(tmp_path) == []


def test_cached_files_are_read_only(cache, tmp_path):
    """Bundles hard-link them: writing one in place would change every bundle's copy (and fail its checksum)."""
    exported = exported_text_encoder(tmp_path / "model", SHA)
    for path in (exported.onnx, exported.tokenizer):
        assert not os.stat(path).st_mode & 0o222


def test_an_unexpected_export_failure_is_a_text_encoder_error(tmp_path, monkeypatch):
    """pipeline.bundle_text_encoder exports the trained model without a text encoder on TextEncoderError, OSError or
    ImportError; anything else torch.onnx, transformers or onnxruntime raise failed the whole export."""
    monkeypatch.setenv("MODALREC_CACHE_DIR", str(tmp_path / "cache"))

    def broken(model_dir, out_dir, model_sha256):
        (out_dir / "text_encoder.onnx").write_bytes(b"half")
        raise RuntimeError("torch.onnx.export: unsupported operator")

    monkeypatch.setattr(text_encoder, "_export", broken)
    with pytest.raises(TextEncoderError, match="unsupported operator"):
        exported_text_encoder(tmp_path / "model", SHA)
    assert _leftovers(tmp_path) == []
    assert not list((tmp_path / "cache" / "text_encoders").iterdir())


def test_a_bundle_copies_the_text_encoder_when_it_cannot_be_hard_linked(cache, tmp_path, monkeypatch):
    """A cache on another file system than the bundles (EXDEV): the files are copied, and the bundle verifies."""
    from service.bundle import load_bundle, write_bundle

    exported = exported_text_encoder(tmp_path / "model", SHA)

    def cross_device(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    bundle = write_bundle(
        tmp_path / "bundles",
        model="m",
        dataset="d",
        user_ids=["u"],
        item_ids=["i"],
        user_embeddings=np.ones((1, 2), np.float32),
        item_embeddings=np.ones((1, 2), np.float32),
        seen_indptr=np.array([0, 0]),
        seen_indices=np.array([], np.int64),
        popularity=np.zeros(1),
        extra_files={"text_encoder.onnx": exported.onnx, "tokenizer.json": exported.tokenizer},
        link_files=("text_encoder.onnx", "tokenizer.json"),
    )
    loaded = load_bundle(bundle)
    assert not os.path.samefile(loaded.path / "text_encoder.onnx", exported.onnx)
    assert (loaded.path / "text_encoder.onnx").read_bytes() == exported.onnx.read_bytes()


def test_an_unreadable_text_model_leaves_the_dataset_without_a_text_encoder(tmp_path, monkeypatch):
    """dataset_text_model runs outside pipeline.bundle_text_encoder's try: an OSError while hashing the model
    directory failed the whole bundle export."""
    import trainer.data.features as features
    from trainer.text_encoder import dataset_text_model

    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "features.json").write_text(
        json.dumps({"modalities": {"text": {"dim": 384, "model_sha256": SHA, "model_path": str(model)}}})
    )

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(features, "_directory_sha256", unreadable)
    assert dataset_text_model(tmp_path / "data", 384) is None


def test_an_export_removes_older_format_entries_of_its_model_and_dead_exports(cache, tmp_path):
    """Entries of an older cache format (87 MiB each for MiniLM) were never removed, nor were the temporary
    directories of exports killed midway. Newer-format entries and other models' entries stay."""
    root = tmp_path / "cache" / "text_encoders"
    current = text_encoder.CACHE_FORMAT
    keep = [f"{SHA[:32]}-v{current + 1}", f"{'cd' * 16}-v{current - 1}", ".fresh.tmp-abc"]
    doomed = [f"{SHA[:32]}-v{current - 1}", ".dead.tmp-xyz"]
    for name in keep + doomed:
        (root / name).mkdir(parents=True)
        (root / name / "text_encoder.onnx").write_bytes(b"old")
    day_and_more = text_encoder.STALE_TEMPORARY_SECONDS + 60
    os.utime(root / ".dead.tmp-xyz", (os.path.getmtime(root / ".dead.tmp-xyz") - day_and_more,) * 2)
    exported = exported_text_encoder(tmp_path, SHA)
    names = {p.name for p in root.iterdir()}
    assert exported.onnx.parent.name in names
    assert set(keep) <= names and not set(doomed) & names
