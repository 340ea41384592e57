"""Shared pieces of the on-disk readers: line-numbered table parsing, id ordering, CSR building, features."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from trainer.data.dataset import DatasetError

logger = logging.getLogger(__name__)

FEATURE_SUFFIX = "_feat.npy"
_INT_RE = re.compile(r"-?\d+")


class Row(NamedTuple):
    """One data line of a text table: its 1-based line number in the file and its fields."""

    line_no: int
    fields: list[str]


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"missing required file {path} ({what})")
    return path


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without the newline) for every non-blank line.

    A UTF-8 byte-order mark at the start of the file (as Windows tools write) is not part of the first line.
    """
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line_no, raw in enumerate(handle, start=1):
                line = raw.rstrip("\r\n")
                if line.strip():
                    yield line_no, line
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc


def read_header_table(path: Path, sep: str = "\t") -> tuple[list[str], list[Row]]:
    """Read a separator-delimited table whose first non-blank line is the header.

    Every data line must have exactly as many fields as the header; otherwise :class:`DatasetError`
    names the file, the line number and the expected field count.
    """
    lines = iter_lines(path)
    try:
        _, header_line = next(lines)
    except StopIteration:
        raise DatasetError(f"{path}: empty file, expected a header line") from None
    header = header_line.split(sep)
    rows = []
    for line_no, line in lines:
        fields = line.split(sep)
        if len(fields) != len(header):
            raise DatasetError(
                f"{path}:{line_no}: expected {len(header)} {sep!r}-separated fields "
                f"({', '.join(header)}), got {len(fields)}: {line[:80]!r}"
            )
        rows.append(Row(line_no, fields))
    return header, rows


def column_index(path: Path, header: Sequence[str], name: str) -> int:
    try:
        return list(header).index(name)
    except ValueError:
        raise DatasetError(f"{path}: header has no column '{name}' (header: {', '.join(header)})") from None


def parse_int(path: Path, line_no: int, text: str, what: str, *, minimum: int | None = 0) -> int:
    """Parse one integer field; :class:`DatasetError` with file:line and what was expected otherwise."""
    text = text.strip()
    if not _INT_RE.fullmatch(text):
        raise DatasetError(f"{path}:{line_no}: expected an integer {what}, got {text!r}")
    value = int(text)
    if minimum is not None and value < minimum:
        raise DatasetError(f"{path}:{line_no}: expected {what} >= {minimum}, got {value}")
    return value


def sorted_ids(ids: set[str] | Sequence[str]) -> list[str]:
    """External ids in a stable order: numerically when all are integers, else lexicographically.

    Ids of equal value (``"7"``, ``"07"``) are ordered by their text, so the order never depends on set order.
    """
    unique = set(ids)
    if all(_INT_RE.fullmatch(i) for i in unique):
        return sorted(unique, key=lambda i: (int(i), i))
    return sorted(unique)


def index_of(ids: Sequence[str]) -> dict[str, int]:
    return {external: internal for internal, external in enumerate(ids)}


def binary_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary float32 CSR from (row, col) pairs; duplicate pairs collapse to one."""
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
        shape=shape,
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    matrix.sort_indices()
    return matrix


def check_disjoint(splits: dict[str, sp.csr_matrix], source: Path) -> None:
    """Raise when a (user, item) pair is in two splits."""
    names = list(splits)
    for a_pos, a in enumerate(names):
        for b in names[a_pos + 1 :]:
            overlap = splits[a].multiply(splits[b])
            if overlap.nnz:
                user, item = (int(x[0]) for x in overlap.nonzero())
                raise DatasetError(
                    f"{source}: {overlap.nnz} (user, item) pairs are in both '{a}' and '{b}' "
                    f"(first: internal user {user}, item {item}); splits must be disjoint"
                )


def feature_files(directory: Path) -> dict[str, Path]:
    """``<modality>_feat.npy`` files in ``directory`` keyed by modality, sorted by name."""
    found = {}
    for path in sorted(directory.glob(f"*{FEATURE_SUFFIX}")):
        modality = path.name[: -len(FEATURE_SUFFIX)]
        if modality:
            found[modality] = path
    return found


def load_feature(path: Path, modality: str) -> np.ndarray:
    """Load one feature matrix as finite float32 [n_rows, dim].

    Raises:
        DatasetError: not a .npy array, not 2-d, no columns, not floating point, or NaN/inf (names the first
            bad row).
    """
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read feature '{modality}' as a .npy array ({exc})") from exc
    if array.ndim != 2:
        raise DatasetError(
            f"{path}: feature '{modality}' must be 2-d [n_items, dim], got shape {array.shape}"
        )
    if array.shape[1] == 0:
        raise DatasetError(
            f"{path}: feature '{modality}' has no columns (shape {array.shape}); expected dim >= 1, "
            f"or remove the file if the modality is absent"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise DatasetError(f"{path}: feature '{modality}' must be floating point, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        array = np.ascontiguousarray(array, dtype=np.float32)
    finite_rows = np.isfinite(array).all(axis=1)
    if not finite_rows.all():
        bad_row = int(np.flatnonzero(~finite_rows)[0])
        raise DatasetError(
            f"{path}: feature '{modality}' contains NaN or inf (after float32 cast), first at row {bad_row}"
        )
    return array


def load_features(directory: Path, n_items: int | None) -> dict[str, np.ndarray]:
    """All ``<modality>_feat.npy`` of ``directory``; each must have ``n_items`` rows (when given)."""
    features = {}
    for modality, path in feature_files(directory).items():
        matrix = load_feature(path, modality)
        if n_items is not None and matrix.shape[0] != n_items:
            raise DatasetError(
                f"{path}: feature '{modality}' has {matrix.shape[0]} rows, expected {n_items} (one per item)"
            )
        features[modality] = matrix
    if features:
        logger.info("features from %s: %s", directory, {m: f.shape[1] for m, f in features.items()})
    return features
