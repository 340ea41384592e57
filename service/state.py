"""One loaded bundle ready to serve: its index, encoder, id maps and the recommendation logic.

A :class:`ServingState` is built and warmed on the side, then swapped in by one assignment
(:mod:`service.runtime`). Only online items mutate it, under the runtime's mutation lock.

Unknown users with online events get a *folded-in* query vector: the mean of the embeddings of the
items they interacted with, ``q = (1/|S|) * sum_{i in S} e_i``. Every model here scores by the inner
product ``u . e_j``, so ``q . e_j`` is the average inner-product similarity between candidate ``j``
and the user's items (item-based CF in the model's own space). It is also, up to a per-user scale that
does not change the ranking, one LightGCN propagation step from the items to the user
(``e_u = sum_i e_i / sqrt(|N_u| |N_i|)``) with the item-degree normalisation dropped, which is what the
graph models (LightGCN, LUDP, SAND) do to build user representations from item representations.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.bundle import TEXT_ENCODER, TOKENIZER, Bundle, BundleError
from service.encoder import EncoderError, FeatureError, ItemEncoder, TextEncoder
from service.index import (
    INDEX_FILE,
    IndexMismatchError,
    ItemIndex,
    build_index,
    load_index_file,
    pin_omp_threads,
)
from service.settings import Settings

logger = logging.getLogger(__name__)

FALLBACK_POPULARITY = "popularity"
FALLBACK_FOLDED_IN = "folded_in"


@dataclass
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    fallback: str | None
    reserved_new_items: int = 0  # online items that entered the list through the reserved places
    dropped_nonfinite: int = 0  # candidates left out because their score was NaN or infinite


@dataclass
class ServingState:
    """A bundle plus everything derived from it. ``item_ids``/``item_rows`` include online items."""

    bundle: Bundle
    index: ItemIndex
    encoder: ItemEncoder | None
    user_rows: dict[str, int]
    item_ids: list[str]
    item_rows: dict[str, int]
    popularity_order: np.ndarray
    online_features: dict[str, Mapping[str, Sequence[float]]] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    text_encoder: TextEncoder | None = None
    # largest norm an encoded online item may have: online_item_max_norm_factor x the largest item-embedding norm of
    # the bundle (inf for a bundle without items or with all-zero items)
    max_online_item_norm: float = math.inf

    @property
    def version(self) -> str:
        return self.bundle.version

    @classmethod
    def build(cls, bundle: Bundle, settings: Settings) -> ServingState:
        """Index (loaded from ``item_index.faiss`` when the bundle has one) + encoder + id maps.

        Raises:
            BundleError: the index file or the encoder does not match the bundle.
        """
        pin_omp_threads(settings.threads_per_worker)  # reloads run in the watcher or a pool thread
        index_file = bundle.file(INDEX_FILE)
        try:
            if index_file is not None:
                main = load_index_file(index_file, len(bundle.item_ids), bundle.dim)
            else:
                if len(bundle.item_ids) > settings.flat_max_items:
                    logger.warning(
                        "bundle %s has %d items and no %s: building the %s index at start-up (slow); "
                        "export it with service.index.build_index_file",
                        bundle.version,
                        len(bundle.item_ids),
                        INDEX_FILE,
                        settings.large_index,
                    )
                main = build_index(
                    bundle.item_embeddings,
                    flat_max_items=settings.flat_max_items,
                    hnsw_m=settings.hnsw_m,
                    ef_construction=settings.hnsw_ef_construction,
                    large_kind=settings.large_index,
                )
            index = ItemIndex(
                main,
                bundle.item_embeddings,
                ef_search=settings.hnsw_ef_search,
                nprobe=settings.ivf_nprobe,
                threads=settings.threads_per_worker,
            )
        except IndexMismatchError as exc:
            raise BundleError(str(exc)) from exc
        encoder = None
        encoder_file = bundle.file("item_encoder.onnx")
        if encoder_file is not None:
            try:
                encoder = ItemEncoder(
                    encoder_file, bundle.modalities, bundle.dim, settings.threads_per_worker
                )
            except EncoderError as exc:
                raise BundleError(str(exc)) from exc
        return cls(
            bundle=bundle,
            index=index,
            encoder=encoder,
            text_encoder=_load_text_encoder(bundle, settings) if encoder is not None else None,
            user_rows={u: r for r, u in enumerate(bundle.user_ids)},
            item_ids=list(bundle.item_ids),
            item_rows={i: r for r, i in enumerate(bundle.item_ids)},
            popularity_order=np.argsort(-bundle.popularity, kind="stable"),
            max_online_item_norm=_max_online_item_norm(bundle.item_embeddings, settings.online_item_max_norm_factor),
        )

    def warm(self, n_queries: int = 8) -> None:
        """Touch every code path once (search, popularity, encoders) before taking traffic.

        Raises:
            BundleError: an encoder of the bundle loads but fails when run.
        """
        n_users = len(self.bundle.user_ids)
        for row in range(min(n_users, n_queries)):
            self.index.search(self.bundle.user_embeddings[row], 20, self.bundle.seen_items(row))
        if len(self.item_ids):
            self.index.search(self.index.vector(0), 20)
        self.popular(20, [])
        try:
            if self.encoder is not None:
                self.encoder.warm()
            if self.text_encoder is not None:
                self.text_encoder.warm()
        except EncoderError as exc:  # loads, but fails when run: the bundle is refused
            raise BundleError(f"bundle {self.version}: {exc}") from exc

    # -- online items ---------------------------------------------------------------------------
    def is_bundle_item(self, item_id: str) -> bool:
        row = self.item_rows.get(item_id)
        return row is not None and row < self.index.n_main

    def resolve_features(self, features: Mapping[str, Sequence[float] | str]) -> dict[str, list[float]]:
        """A new item's features with raw text replaced by the text encoder's vector: {modality: [floats]}, what
        the item encoder takes and what the store keeps (so replicas and the retrain job need no text model).

        Every cheap check (text for a modality without a text encoder, unknown or missing modalities, the float
        vectors, empty/oversized/invalid text) comes before the text is encoded, the costly part of a request.

        Raises:
            FeatureError: text for a modality the bundle has no text encoder for, text it cannot encode, or
                features the item encoder would refuse.
        """
        texts = {name: values for name, values in features.items() if isinstance(values, str)}
        for name in texts:
            if self.text_encoder is None or name != self.text_encoder.modality:
                expected = self.bundle.modalities.get(name)
                which = (
                    f"this bundle's text encoder serves modality {self.text_encoder.modality!r}"
                    if self.text_encoder is not None
                    else "this bundle has no text encoder"
                )
                raise FeatureError(
                    f"modality {name!r} was given as raw text; {which}, send "
                    f"{expected if expected is not None else 'its'} floats"
                )
        if not texts:
            return dict(features)  # type: ignore[arg-type]  # checked by the item encoder
        text_encoder = self.text_encoder
        assert text_encoder is not None  # texts were refused above otherwise
        if self.encoder is not None:
            self.encoder.check_modalities(features)
            for name, values in features.items():
                if name not in texts:
                    self.encoder.feed(name, values)
        for values in texts.values():
            text_encoder.check(values)
        resolved: dict[str, list[float]] = {}
        for name, values in features.items():
            resolved[name] = text_encoder.encode(values) if isinstance(values, str) else values  # type: ignore[assignment]
        return resolved

    def encode(self, features: Mapping[str, Sequence[float]]) -> np.ndarray:
        """The item encoder's vector for ``features``.

        Raises:
            FeatureError: no item encoder, features it refuses, or a vector that is not finite or whose norm exceeds
                ``max_online_item_norm`` (features far outside the catalogue's scale: its scores would dwarf, or
                overflow, every trained item's).
        """
        if self.encoder is None:
            raise FeatureError(
                f"bundle {self.version} has no item encoder (item_encoder.onnx), so new items cannot be added"
            )
        vector = self.encoder.encode(features)
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        if not norm <= self.max_online_item_norm:  # NaN and inf included
            raise FeatureError(
                f"the features encode to an item vector of norm {norm:.3g}; bundle {self.version} accepts at most "
                f"{self.max_online_item_norm:.3g} (online_item_max_norm_factor x its largest item norm): the "
                "feature values are far outside the scale of the catalogue's features"
            )
        return vector

    def upsert_online_item(
        self, item_id: str, features: Mapping[str, Sequence[float]], vector: np.ndarray
    ) -> bool:
        """Add or replace an online item (caller holds the mutation lock). Returns True if replaced."""
        row = self.item_rows.get(item_id)
        replaced = row is not None
        if row is None:
            # Readers do not lock, so publish in this order: row -> id before the index can return the row,
            # id -> row only once the index holds the vector.
            row = len(self.item_ids)
            self.item_ids.append(item_id)
            try:
                self.index.upsert(row, vector)
            except Exception:
                self.item_ids.pop()
                raise
            self.item_rows[item_id] = row
        else:
            self.index.upsert(row, vector)
        self.online_features[item_id] = features
        return replaced

    def apply_online_items(self, items: Mapping[str, Mapping[str, Sequence[float]]]) -> int:
        """Apply stored online items to this state in one batch (caller holds the mutation lock, or the state is not
        published yet); items now in the bundle and items already held with the same features are skipped.

        The same result as upserting them one by one in ``items`` order (new ids get the next rows in that order,
        known online ids are replaced), at the cost of one index update for the whole batch.
        """
        applied: list[tuple[str, Mapping[str, Sequence[float]], np.ndarray]] = []
        for item_id, features in items.items():
            if self.is_bundle_item(item_id):
                continue
            if self.online_features.get(item_id) == features:
                continue
            try:
                vector = self.encode(features)
            except (FeatureError, TypeError, ValueError) as exc:  # a malformed stored item is skipped, not fatal
                logger.warning(
                    "online item %r cannot be re-applied to bundle %s: %s", item_id, self.version, exc
                )
                continue
            applied.append((item_id, features, vector))
        if not applied:
            return 0
        first_new_row = len(self.item_ids)
        fresh = [item_id for item_id, _, _ in applied if item_id not in self.item_rows]
        new_rows = {item_id: first_new_row + offset for offset, item_id in enumerate(fresh)}
        rows = [self.item_rows.get(item_id, new_rows.get(item_id)) for item_id, _, _ in applied]
        # Readers do not lock, so publish as upsert_online_item does: row -> id before the index can return the rows,
        # id -> row only once the index holds the vectors.
        self.item_ids.extend(fresh)
        try:
            self.index.upsert_many(rows, np.stack([vector for _, _, vector in applied]))
        except Exception:
            del self.item_ids[first_new_row:]
            raise
        self.item_rows.update(new_rows)
        for item_id, features, _ in applied:
            self.online_features[item_id] = features
        return len(applied)

    # -- queries --------------------------------------------------------------------------------
    def rows_of(self, item_ids: Iterable[str]) -> list[int]:
        rows = self.item_rows
        return [rows[i] for i in item_ids if i in rows]

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude_seen: bool,
        exclude: Sequence[str],
        online_seen: Iterable[str],
        new_item_slots: int = 0,
    ) -> Recommendation:
        """Top-k items for ``user_id``; see the module docstring for unknown users.

        ``new_item_slots``: up to this many of the k places go to the user's best-scoring ONLINE items (added with
        ``POST /items``) when fewer of them made the plain top k. An encoded new item lacks the collaborative part
        of a trained item's embedding and almost never outranks trained items (docs/results/coldstart.md), so
        without reserved places new items are never shown. Not applied to the popularity fallback (no query).
        """
        exclude_rows = self.rows_of(exclude)
        online_rows = self.rows_of(online_seen)
        user_row = self.user_rows.get(user_id)
        parts: list[Any] = [np.asarray(exclude_rows, dtype=np.int64)]
        if user_row is not None:
            query = self.bundle.user_embeddings[user_row]
            fallback = None
            if exclude_seen:
                parts += [self.bundle.seen_items(user_row), np.asarray(online_rows, dtype=np.int64)]
        elif online_rows:
            query = np.mean(np.stack([self.index.vector(r) for r in online_rows]), axis=0)
            fallback = FALLBACK_FOLDED_IN
            if exclude_seen:
                parts.append(np.asarray(online_rows, dtype=np.int64))
        else:
            rows, scores = self.popular(k, exclude_rows)
            kept = [(r, s) for r, s in zip(rows, scores, strict=True) if math.isfinite(s)]
            return Recommendation(
                [self.item_ids[r] for r, _ in kept],
                [s for _, s in kept],
                FALLBACK_POPULARITY,
                dropped_nonfinite=len(rows) - len(kept),
            )
        excluded = np.concatenate(parts) if len(parts) > 1 else parts[0]
        rows, scores_arr = self.index.search(query, k, excluded)
        reserved = 0
        if new_item_slots > 0 and self.index.n_online:
            rows, scores_arr, reserved = self._reserve_online(
                query, rows, scores_arr, k, min(new_item_slots, k), excluded
            )
        rows, scores_arr, dropped = _finite_only(rows, scores_arr)
        item_ids = self.item_ids
        return Recommendation(
            [item_ids[r] for r in rows.tolist()], scores_arr.tolist(), fallback, reserved, dropped_nonfinite=dropped
        )

    def _reserve_online(
        self, query: np.ndarray, rows: np.ndarray, scores: np.ndarray, k: int, slots: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The top-k list with at least ``slots`` online items (as many as exist): the best remaining online items
        replace the lowest-ranked bundle items. Online items that did not make the top k score no higher than
        anything in it, so appending them keeps the list in descending score order. Also returns how many
        online items were added."""
        n_main = self.index.n_main
        online_present = int((rows >= n_main).sum())
        if online_present >= slots:
            return rows, scores, 0
        extra_rows, extra_scores = self.index.search_online(
            query, slots - online_present, np.concatenate([excluded, rows])
        )
        if not len(extra_rows):
            return rows, scores, 0
        keep_bundle = min(k, len(rows) + len(extra_rows)) - online_present - len(extra_rows)
        keep = np.flatnonzero((rows >= n_main) | (np.cumsum(rows < n_main) <= keep_bundle))
        rows, scores = np.concatenate([rows[keep], extra_rows]), np.concatenate([scores[keep], extra_scores])
        return rows, scores, len(extra_rows)

    def popular(self, k: int, exclude_rows: Sequence[int]) -> tuple[list[int], list[float]]:
        """Most popular training items (then online items, popularity 0) not in ``exclude_rows``."""
        excluded = set(exclude_rows)
        rows: list[int] = []
        popularity = self.bundle.popularity
        for row in self.popularity_order[: k + len(excluded)].tolist():
            if row not in excluded:
                rows.append(row)
                if len(rows) == k:
                    return rows, [float(popularity[r]) for r in rows]
        scores = [float(popularity[r]) for r in rows]
        for row in range(self.index.n_main, len(self.item_ids)):
            if len(rows) == k:
                break
            if row not in excluded:
                rows.append(row)
                scores.append(0.0)
        return rows, scores

    def similar(self, item_id: str, k: int) -> tuple[list[str], list[float], int]:
        """(item ids, scores, how many candidates were dropped for a NaN or infinite score)."""
        row = self.item_rows[item_id]
        rows, scores = self.index.search(self.index.vector(row), k, np.asarray([row], dtype=np.int64))
        rows, scores, dropped = _finite_only(rows, scores)
        return [self.item_ids[r] for r in rows.tolist()], scores.tolist(), dropped


def _finite_only(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``rows``/``scores`` without the entries whose score is NaN or infinite, and how many were dropped: JSON has no
    such numbers (they were sent as null). With finite bundles and the online norm bound none arise; this is the
    last line of defence, counted in ``modalrec_nonfinite_scores_dropped_total``."""
    finite = np.isfinite(scores)
    if finite.all():
        return rows, scores, 0
    return rows[finite], scores[finite], int((~finite).sum())


def _max_online_item_norm(item_embeddings: np.ndarray, factor: float) -> float:
    """``factor`` x the largest row norm of ``item_embeddings`` (computed in float64); inf when there is no row or
    every row is zero (no scale to compare with)."""
    if not len(item_embeddings):
        return math.inf
    largest = 0.0
    for start in range(0, len(item_embeddings), 65_536):  # bounded temporary memory for large catalogues
        block = item_embeddings[start : start + 65_536].astype(np.float64)
        largest = max(largest, float(np.einsum("ij,ij->i", block, block).max()))
    return factor * math.sqrt(largest) if largest > 0 else math.inf


__all__ = [
    "ServingState",
    "Recommendation",
    "BundleError",
    "EncoderError",
    "FeatureError",
    "IndexMismatchError",
]


def _load_text_encoder(bundle: Bundle, settings: Settings) -> TextEncoder | None:
    """The bundle's raw-text encoder (``text_encoder.onnx`` + ``tokenizer.json`` + manifest ``text_encoder``), or
    None when it has none.

    Raises:
        BundleError: only part of it is there, or it does not fit the bundle's modalities.
    """
    model_file, tokenizer_file = bundle.file(TEXT_ENCODER), bundle.file(TOKENIZER)
    info = bundle.manifest.get("text_encoder")
    if model_file is None and tokenizer_file is None and info is None:
        return None
    if model_file is None or tokenizer_file is None or not isinstance(info, dict):
        raise BundleError(
            f"bundle {bundle.version} has part of a text encoder: it needs {TEXT_ENCODER}, {TOKENIZER} and a "
            "manifest 'text_encoder' entry"
        )
    modality = info.get("modality")
    if modality not in bundle.modalities:
        raise BundleError(
            f"the text encoder of bundle {bundle.version} is for modality {modality!r}, which the model does not "
            f"have ({sorted(bundle.modalities)})"
        )
    if info.get("dim") != bundle.modalities[modality]:
        raise BundleError(
            f"the text encoder of bundle {bundle.version} gives {info.get('dim')}-d vectors; modality "
            f"{modality!r} is {bundle.modalities[modality]}-d"
        )
    try:
        return TextEncoder(
            model_file,
            tokenizer_file,
            modality,
            bundle.modalities[modality],
            info.get("max_tokens"),  # type: ignore[arg-type]  # checked by TextEncoder
            settings.threads_per_worker,
        )
    except EncoderError as exc:
        raise BundleError(str(exc)) from exc
