"""The bundle: the contract between the trainer and the service.

A bundle is a directory ``<root>/<version>/`` holding a ``manifest.json`` and the files it lists
with their sha256. It is written to ``<root>/<version>.tmp/``, renamed into place, and then the
``<root>/current`` symlink is replaced atomically, so a reader never sees a half-written bundle.

This module needs numpy only (no torch, no pydantic): both processes import it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CURRENT_LINK = "current"
MANIFEST = "manifest.json"
USER_IDS = "user_ids.json"
ITEM_IDS = "item_ids.json"
USER_EMBEDDINGS = "user_embeddings.npy"
ITEM_EMBEDDINGS = "item_embeddings.npy"
SEEN = "seen.npz"
POPULARITY = "popularity.npy"
ITEM_ENCODER = "item_encoder.onnx"
TEXT_ENCODER = "text_encoder.onnx"
TOKENIZER = "tokenizer.json"
REQUIRED_FILES = (USER_IDS, ITEM_IDS, USER_EMBEDDINGS, ITEM_EMBEDDINGS, SEEN, POPULARITY)


class BundleError(ValueError):
    """A bundle is missing, corrupt (checksum mismatch) or inconsistent (shapes, ids)."""


@dataclass
class Bundle:
    """A loaded, verified bundle.

    Attributes:
        path: the resolved bundle directory.
        manifest: the parsed ``manifest.json``.
        user_ids, item_ids: external ids; row ``i`` of the embedding matrices is id ``i``.
        user_embeddings: float32 [n_users, dim].
        item_embeddings: float32 [n_items, dim]; score(u, i) = user_embeddings[u] @ item_embeddings[i].
        seen_indptr, seen_indices: CSR of training interactions, rows = users, columns = items.
        popularity: float32 [n_items] training interaction counts.
    """

    path: Path
    manifest: dict[str, Any]
    user_ids: list[str]
    item_ids: list[str]
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    popularity: np.ndarray

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def modalities(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.manifest.get("modalities", {}).items()}

    def file(self, name: str) -> Path | None:
        """Path of an optional listed file (e.g. ``item_encoder.onnx``), or None if absent."""
        if name in self.manifest["files"]:
            return self.path / name
        return None

    def seen_items(self, user_row: int) -> np.ndarray:
        return self.seen_indices[self.seen_indptr[user_row] : self.seen_indptr[user_row + 1]]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, payload: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False)
        handle.flush()
        os.fsync(handle.fileno())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def make_version(item_embeddings: np.ndarray, now: _dt.datetime | None = None) -> str:
    """UTC timestamp + short content hash, e.g. ``20261124T101500Z-1a2b3c4d``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    short = hashlib.sha256(np.ascontiguousarray(item_embeddings).tobytes()).hexdigest()[:8]
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z-{short}"


def write_bundle(
    root: str | os.PathLike[str],
    *,
    model: str,
    dataset: str,
    user_ids: list[str],
    item_ids: list[str],
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    seen_indptr: np.ndarray,
    seen_indices: np.ndarray,
    popularity: np.ndarray,
    modalities: Mapping[str, int] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    version: str | None = None,
    update_current: bool = True,
    link_files: Collection[str] = (),
) -> Path:
    """Validate, write and atomically publish a bundle; return its final directory.

    Args:
        root: the bundle root (``RUN/bundles``); created if needed.
        user_embeddings: float32 [n_users, dim]; item_embeddings: float32 [n_items, dim].
        seen_indptr: int64 [n_users + 1]; seen_indices: int64 [nnz] item rows (CSR of training data).
        popularity: [n_items] training interaction counts.
        extra_files: bundle file name -> existing file to copy in (e.g. ``item_encoder.onnx``).
        link_files: names of ``extra_files`` to hard-link instead of copy (files that are never modified in place,
            e.g. a cached text encoder); copied when a link is impossible (another file system).
        extra_manifest: additional manifest keys (e.g. ``item_encoder`` input description).
    """
    user_embeddings = np.ascontiguousarray(user_embeddings, dtype=np.float32)
    item_embeddings = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    seen_indptr = np.ascontiguousarray(seen_indptr, dtype=np.int64)
    seen_indices = np.ascontiguousarray(seen_indices, dtype=np.int64)
    popularity = np.ascontiguousarray(popularity, dtype=np.float32)
    _check_arrays(
        user_ids, item_ids, user_embeddings, item_embeddings, seen_indptr, seen_indices, popularity
    )
    root_path = Path(root)
    root_path.mkdir(parents=True, exist_ok=True)
    version = version or make_version(item_embeddings)
    final_dir = root_path / version
    if final_dir.exists():
        raise BundleError(f"bundle version {version} already exists under {root_path}")
    tmp_dir = root_path / f"{version}.tmp"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir()
    try:
        _write_json(tmp_dir / USER_IDS, [str(x) for x in user_ids])
        _write_json(tmp_dir / ITEM_IDS, [str(x) for x in item_ids])
        _save_npy(tmp_dir / USER_EMBEDDINGS, user_embeddings)
        _save_npy(tmp_dir / ITEM_EMBEDDINGS, item_embeddings)
        with open(tmp_dir / SEEN, "wb") as handle:
            np.savez(handle, indptr=seen_indptr, indices=seen_indices)
            handle.flush()
            os.fsync(handle.fileno())
        _save_npy(tmp_dir / POPULARITY, popularity)
        for name, source in (extra_files or {}).items():
            if "/" in name or name in (MANIFEST, *REQUIRED_FILES):
                raise BundleError(f"invalid extra bundle file name: {name!r}")
            if name in link_files:
                try:
                    os.link(source, tmp_dir / name)
                    continue
                except OSError:
                    pass
            shutil.copyfile(source, tmp_dir / name)
        files = {
            path.name: sha256_file(path) for path in sorted(tmp_dir.iterdir()) if path.name != MANIFEST
        }
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "model": model,
            "dataset": dataset,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "dim": int(item_embeddings.shape[1]),
            "n_users": len(user_ids),
            "n_items": len(item_ids),
            "modalities": {str(k): int(v) for k, v in (modalities or {}).items()},
            "metrics": dict(metrics or {}),
            "files": files,
        }
        for key, value in (extra_manifest or {}).items():
            if key in manifest:
                raise BundleError(f"extra manifest key {key!r} would overwrite a contract key")
            manifest[key] = value
        _write_json(tmp_dir / MANIFEST, manifest)
        _fsync_dir(tmp_dir)
        os.rename(tmp_dir, final_dir)
        _fsync_dir(root_path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if update_current:
        publish_current(root_path, version)
    logger.info("bundle written", extra={"bundle": str(final_dir), "version": version})
    return final_dir


def publish_current(root: str | os.PathLike[str], version: str) -> None:
    """Atomically point ``<root>/current`` at ``<root>/<version>`` (symlink swap by rename)."""
    root_path = Path(root)
    if not (root_path / version / MANIFEST).is_file():
        raise BundleError(f"cannot publish {version}: {root_path / version / MANIFEST} does not exist")
    tmp_link = root_path / f".{CURRENT_LINK}.{os.getpid()}.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(version, tmp_link)
    os.replace(tmp_link, root_path / CURRENT_LINK)
    _fsync_dir(root_path)


def prune_bundles(root: str | os.PathLike[str], keep: int) -> list[str]:
    """Delete all but the ``keep`` newest bundle versions under ``root`` (by the manifest's ``created_at``, then
    name); the one ``current`` points at is never deleted. Returns the deleted version names.

    A version is first renamed to a hidden ``.<version>.deleting`` and then removed, so an interrupted prune
    never leaves a half-deleted directory that still looks like a bundle.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root_path = Path(root)
    link = root_path / CURRENT_LINK
    current = link.resolve().name if link.is_symlink() else None
    versions: list[tuple[str, str]] = []
    for child in root_path.iterdir():
        if child.name.startswith(".") or child.is_symlink() or not (child / MANIFEST).is_file():
            continue
        try:
            created = str(json.loads((child / MANIFEST).read_text(encoding="utf-8")).get("created_at", ""))
        except (OSError, ValueError, AttributeError):
            created = ""  # unreadable: oldest
        versions.append((created, child.name))
    versions.sort(reverse=True)
    deleted = []
    for _, name in versions[keep:]:
        if name == current:
            continue
        doomed = root_path / f".{name}.deleting"
        os.rename(root_path / name, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(name)
    if deleted:
        _fsync_dir(root_path)
        logger.info("pruned bundles", extra={"root": str(root_path), "deleted": deleted})
    return deleted


def resolve_bundle_dir(path: str | os.PathLike[str]) -> Path:
    """Accept a bundle directory, or a root holding ``current``; return the resolved bundle dir."""
    candidate = Path(path)
    if (candidate / MANIFEST).is_file():
        return candidate.resolve()
    current = candidate / CURRENT_LINK
    if (current / MANIFEST).is_file():
        return current.resolve()
    raise BundleError(f"no bundle at {candidate}: neither {MANIFEST} nor {CURRENT_LINK}/{MANIFEST} exists")


def _check_arrays(
    user_ids: list[str],
    item_ids: list[str],
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    seen_indptr: np.ndarray,
    seen_indices: np.ndarray,
    popularity: np.ndarray,
) -> None:
    n_users, n_items = len(user_ids), len(item_ids)
    if user_embeddings.ndim != 2 or user_embeddings.shape[0] != n_users:
        raise BundleError(f"user_embeddings shape {user_embeddings.shape} does not match {n_users} user ids")
    if item_embeddings.ndim != 2 or item_embeddings.shape[0] != n_items:
        raise BundleError(f"item_embeddings shape {item_embeddings.shape} does not match {n_items} item ids")
    if user_embeddings.shape[1] != item_embeddings.shape[1]:
        raise BundleError(
            f"user dim {user_embeddings.shape[1]} != item dim {item_embeddings.shape[1]}"
        )
    if not (np.isfinite(user_embeddings).all() and np.isfinite(item_embeddings).all()):
        raise BundleError("embeddings contain NaN or inf")
    if len(set(user_ids)) != n_users or len(set(item_ids)) != n_items:
        raise BundleError("user or item ids are not unique")
    if seen_indptr.shape != (n_users + 1,) or seen_indptr[0] != 0 or seen_indptr[-1] != len(seen_indices):
        raise BundleError("seen CSR indptr is inconsistent with the number of users / indices")
    if np.any(np.diff(seen_indptr) < 0):
        raise BundleError("seen CSR indptr is not non-decreasing")
    if len(seen_indices) and (seen_indices.min() < 0 or seen_indices.max() >= n_items):
        raise BundleError("seen CSR indices reference an item row out of range")
    if popularity.shape != (n_items,):
        raise BundleError(f"popularity shape {popularity.shape} != ({n_items},)")


def _check_manifest(manifest: Any) -> None:
    """The manifest keys the service reads, with their types: the manifest is not covered by the checksums, and a
    bundle accepted without them broke every request after the swap (``version``) or failed outside the refusal
    path (``dim``, ``modalities``)."""
    if not isinstance(manifest, dict):
        raise BundleError(f"manifest must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"unsupported bundle format_version {manifest.get('format_version')!r}; expected {FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("files"), dict):
        raise BundleError("manifest has no 'files' table")
    for name in manifest["files"]:
        _check_file_name(name)
    version = manifest.get("version")
    if not isinstance(version, str) or not version:
        raise BundleError(f"manifest 'version' must be a non-empty string, got {version!r}")
    for key in ("dim", "n_users", "n_items"):
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BundleError(f"manifest {key!r} must be a non-negative integer, got {value!r}")
    modalities = manifest.get("modalities", {})
    if not isinstance(modalities, dict) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 for dim in modalities.values()
    ):
        raise BundleError(f"manifest 'modalities' must map names to positive dimensions, got {modalities!r}")


def _check_file_name(name: object) -> None:
    """A manifest file name must name a file directly inside the bundle directory: the names are joined to the
    bundle path (checksummed, loaded), so an absolute name or one with a separator or ``..`` would read files
    elsewhere on the machine."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.isabs(name)
    ):
        raise BundleError(
            f"manifest file name {name!r} is not a plain file name inside the bundle (absolute paths, '/', '\\', "
            "'.' and '..' are refused)"
        )


def load_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Load a bundle directory (or a root with ``current``), verifying checksums and shapes.

    Raises:
        BundleError: missing files, checksum mismatch, unsupported format or inconsistent shapes.
    """
    bundle_dir = resolve_bundle_dir(path)
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable manifest in {bundle_dir}: {exc}") from exc
    _check_manifest(manifest)
    files = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"manifest does not list required file {name}")
    for name, expected in files.items():
        file_path = bundle_dir / name
        if not file_path.is_file():
            raise BundleError(f"bundle file {name} is missing")
        if verify and sha256_file(file_path) != expected:
            raise BundleError(f"checksum mismatch for {name} in {bundle_dir}")
    try:
        user_ids = json.loads((bundle_dir / USER_IDS).read_text(encoding="utf-8"))
        item_ids = json.loads((bundle_dir / ITEM_IDS).read_text(encoding="utf-8"))
        user_embeddings = np.load(bundle_dir / USER_EMBEDDINGS, allow_pickle=False)
        item_embeddings = np.load(bundle_dir / ITEM_EMBEDDINGS, allow_pickle=False)
        with np.load(bundle_dir / SEEN, allow_pickle=False) as seen:
            seen_indptr = seen["indptr"].astype(np.int64)
            seen_indices = seen["indices"].astype(np.int64)
        popularity = np.load(bundle_dir / POPULARITY, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"unreadable bundle file in {bundle_dir}: {exc}") from exc
    if user_embeddings.dtype != np.float32 or item_embeddings.dtype != np.float32:
        raise BundleError("embeddings must be float32")
    user_ids = [str(x) for x in user_ids]
    item_ids = [str(x) for x in item_ids]
    _check_arrays(user_ids, item_ids, user_embeddings, item_embeddings, seen_indptr, seen_indices, popularity)
    if manifest["dim"] != item_embeddings.shape[1]:
        raise BundleError(f"manifest dim {manifest['dim']} != embedding dim {item_embeddings.shape[1]}")
    if manifest["n_users"] != len(user_ids) or manifest["n_items"] != len(item_ids):
        raise BundleError("manifest n_users/n_items do not match the id files")
    return Bundle(
        path=bundle_dir,
        manifest=manifest,
        user_ids=user_ids,
        item_ids=item_ids,
        user_embeddings=user_embeddings,
        item_embeddings=item_embeddings,
        seen_indptr=seen_indptr,
        seen_indices=seen_indices,
        popularity=popularity,
    )
