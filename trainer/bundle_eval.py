"""Independent re-computation of test metrics from an exported bundle and a split file.

This path shares no code with :mod:`trainer.evaluate` or the models: it reads the bundle through the
service contract (numpy only), maps the split's external ids to bundle rows, ranks with numpy and
computes Recall/NDCG@K from scratch. It is what the README's result tables are computed with.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from service.bundle import load_bundle


def read_split_file(path: Path) -> dict[int, dict[str, set[str]]]:
    """MMRec split file (``userID itemID x_label``) -> {label: {user_id: {item_id, ...}}}."""
    by_label: dict[int, dict[str, set[str]]] = {0: defaultdict(set), 1: defaultdict(set), 2: defaultdict(set)}
    # Fields are raw text between tabs, as write_split writes them and the dataset readers split them: a '"' is
    # part of an id, not a CSV quote (QUOTE_MINIMAL merged fields up to the next quote or dropped the quotes).
    with open(path, encoding="utf-8-sig", newline="") as handle:  # -sig: a byte-order mark is not header text
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected a header userID, itemID, x_label (tab-separated)")
        columns = {name: position for position, name in enumerate(header)}
        for required in ("userID", "itemID", "x_label"):
            if required not in columns:
                raise ValueError(f"{path}: header lacks column {required!r}")
        for line_number, row in enumerate(reader, start=2):
            if not row or row == [""]:
                continue  # a blank line
            if len(row) < len(header):
                raise ValueError(f"{path}:{line_number}: expected {len(header)} tab-separated fields, got {len(row)}")
            text = row[columns["x_label"]]
            if text not in ("0", "1", "2"):
                raise ValueError(f"{path}:{line_number}: x_label must be 0, 1 or 2, got {text!r}")
            label = int(text)
            by_label[label][row[columns["userID"]]].add(row[columns["itemID"]])
    return by_label


def evaluate_bundle_on_split(
    bundle_path: Path,
    split_path: Path,
    label: int = 2,
    ks: tuple[int, ...] = (10, 20, 50),
    batch: int = 2048,
    score_by_popularity: bool = False,
) -> dict[str, float]:
    """Recall@K and NDCG@K of the bundle's embeddings on split ``label`` (2 = test).

    Items of the other splits that come before it (train, and valid when label = 2) are excluded from
    the ranking. Ties are broken by lower item row. ``score_by_popularity`` ranks every user's items by
    the bundle's training popularity instead (the sanity baseline a model must clearly beat).
    """
    bundle = load_bundle(bundle_path)
    split = read_split_file(split_path)
    user_row = {uid: row for row, uid in enumerate(bundle.user_ids)}
    item_row = {iid: row for row, iid in enumerate(bundle.item_ids)}
    masked_labels = [0] if label == 1 else [0, 1]
    target_users = sorted(split[label], key=lambda uid: user_row[uid])
    k_max = max(ks)
    recall_sums = dict.fromkeys(ks, 0.0)
    ndcg_sums = dict.fromkeys(ks, 0.0)
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
    user_embeddings = bundle.user_embeddings
    items_t = bundle.item_embeddings.astype(np.float64).T
    if score_by_popularity:
        user_embeddings = np.ones((len(bundle.user_ids), 1))
        items_t = bundle.popularity.astype(np.float64)[None, :]
    for start in range(0, len(target_users), batch):
        uids = target_users[start : start + batch]
        rows = np.array([user_row[uid] for uid in uids])
        scores = user_embeddings[rows].astype(np.float64) @ items_t
        for position, uid in enumerate(uids):
            for masked_label in masked_labels:
                seen = [item_row[iid] for iid in split[masked_label].get(uid, ())]
                scores[position, seen] = -np.inf
        # every item scoring at least the k_max-th best score is a candidate, so that a tie across the cut-off
        # is broken by lower item row (a catalogue no larger than the cut-off: every item)
        depth = min(k_max, scores.shape[1])
        kth_best = -np.partition(-scores, depth - 1, axis=1)[:, depth - 1]
        for position, uid in enumerate(uids):
            cand = np.flatnonzero(scores[position] >= kth_best[position])
            order = np.lexsort((cand, -scores[position, cand]))[:k_max]
            ranked = cand[order]
            truth = {item_row[iid] for iid in split[label][uid]}
            relevant = np.array([item in truth for item in ranked], dtype=np.float64)
            for k in ks:
                recall_sums[k] += relevant[:k].sum() / len(truth)
                ideal = discounts[: min(len(truth), k)].sum()
                ndcg_sums[k] += (relevant[:k] * discounts[: len(relevant[:k])]).sum() / ideal
    n = max(len(target_users), 1)
    result = {f"recall@{k}": recall_sums[k] / n for k in ks}
    result.update({f"ndcg@{k}": ndcg_sums[k] / n for k in ks})
    result["n_users"] = float(len(target_users))
    return result
