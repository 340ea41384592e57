"""Independent re-computation of test metrics from an exported bundle and a split file.

This path shares no code with :mod:`trainer.evaluate` or the models: it reads the bundle through the
service contract (numpy only), maps the split's external ids to bundle rows, ranks with numpy and
computes Recall/NDCG@K from scratch. It is what the README's result tables are computed with.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from service.bundle import Bundle, load_bundle


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


def ranked_split_lists(
    bundle: Bundle,
    split: dict[int, dict[str, set[str]]],
    label: int = 2,
    depth: int = 50,
    batch: int = 2048,
    score_by_popularity: bool = False,
) -> Iterator[tuple[np.ndarray, set[int]]]:
    """For every user with items in split ``label`` of ``split`` (:func:`read_split_file`): (the bundle rows of its
    top ``depth`` items, int64 [depth]; the bundle rows of its ``label`` items, a set).

    Items of the other splits that come before it (train, and valid when label = 2) are excluded from the ranking.
    Ties are broken by lower item row. ``score_by_popularity`` ranks every user's items by the bundle's training
    popularity instead. Users come in bundle-row order.
    """
    user_row = {uid: row for row, uid in enumerate(bundle.user_ids)}
    item_row = {iid: row for row, iid in enumerate(bundle.item_ids)}
    masked_labels = [0] if label == 1 else [0, 1]
    target_users = sorted(split[label], key=lambda uid: user_row[uid])
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
        # every item scoring at least the depth-th best score is a candidate, so that a tie across the cut-off
        # is broken by lower item row (a catalogue no larger than the cut-off: every item)
        cut = min(depth, scores.shape[1])
        kth_best = -np.partition(-scores, cut - 1, axis=1)[:, cut - 1]
        for position, uid in enumerate(uids):
            cand = np.flatnonzero(scores[position] >= kth_best[position])
            order = np.lexsort((cand, -scores[position, cand]))[:depth]
            yield cand[order], {item_row[iid] for iid in split[label][uid]}


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
    k_max = max(ks)
    recall_sums = dict.fromkeys(ks, 0.0)
    ndcg_sums = dict.fromkeys(ks, 0.0)
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
    n_users = 0
    lists = ranked_split_lists(load_bundle(bundle_path), read_split_file(split_path), label, k_max, batch,
                               score_by_popularity)
    for ranked, truth in lists:
        n_users += 1
        relevant = np.array([item in truth for item in ranked], dtype=np.float64)
        for k in ks:
            recall_sums[k] += relevant[:k].sum() / len(truth)
            ideal = discounts[: min(len(truth), k)].sum()
            ndcg_sums[k] += (relevant[:k] * discounts[: len(relevant[:k])]).sum() / ideal
    n = max(n_users, 1)
    result = {f"recall@{k}": recall_sums[k] / n for k in ks}
    result.update({f"ndcg@{k}": ndcg_sums[k] / n for k in ks})
    result["n_users"] = float(n_users)
    return result


GROUPINGS = ("interactions", "items")


def popularity_groups(train_counts: np.ndarray, n_groups: int, by: str = "interactions") -> np.ndarray:
    """Group of each item by training popularity: int64 [n_items], 0 = the most popular.

    Items are ordered by ``train_counts`` [n_items] descending (ties: lower item row first) and cut into ``n_groups``
    runs of consecutive items. ``by="items"``: runs whose sizes differ by at most one (the first groups get the extra
    item). ``by="interactions"``: an item goes to group floor(n_groups · c / total), c being the training interactions
    of the items before it, so every group holds about 1 / n_groups of the interactions (fewer, popular items in the
    first groups; an item bigger than a share can leave the next group empty).
    """
    counts = np.asarray(train_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_counts must be one-dimensional, got shape {counts.shape}")
    if not 1 <= n_groups <= len(counts):
        raise ValueError(f"n_groups must be between 1 and the number of items ({len(counts)}), got {n_groups}")
    if by not in GROUPINGS:
        raise ValueError(f"popularity groups are cut by one of {GROUPINGS}, got {by!r}")
    if np.any(counts < 0) or not np.all(np.equal(np.mod(counts, 1), 0)):
        raise ValueError("train_counts must be non-negative whole numbers")
    order = np.lexsort((np.arange(len(counts)), -counts))
    groups = np.empty(len(counts), dtype=np.int64)
    if by == "items":
        for group, members in enumerate(np.array_split(order, n_groups)):
            groups[members] = group
        return groups
    sorted_counts = counts[order].astype(np.int64)
    total = int(sorted_counts.sum())
    before = np.cumsum(sorted_counts) - sorted_counts
    groups[order] = np.minimum(n_groups * before // max(total, 1), n_groups - 1)
    return groups


def grouped_recall(
    ranked_lists: Iterable[tuple[np.ndarray, set[int]]], groups: np.ndarray, n_groups: int, k: int
) -> dict[str, list[float]]:
    """Recall@k and top-k exposure per item group.

    ``ranked_lists``: per user (its ranked item rows, at least k of them or the whole catalogue; its held-out item
    rows). ``groups`` [n_items]: each item's group in 0..n_groups-1.
    Returns lists indexed by group:

    * ``recall``: mean over the users with held-out items in group g of |top-k ∩ held-out ∩ g| / |held-out ∩ g|;
      nan for a group no user has held-out items in;
    * ``exposure``: mean over all users of the share of their top-k slots that hold items of group g (sums to one);
    * ``users``: how many users have held-out items in group g; ``held_out``: held-out (user, item) pairs in g.
    """
    hits = np.zeros(n_groups)
    users = np.zeros(n_groups)
    held_out = np.zeros(n_groups)
    slots = np.zeros(n_groups)
    n_users = 0
    for ranked, truth in ranked_lists:
        n_users += 1
        top = np.asarray(ranked[:k], dtype=np.int64)
        if len(top):
            slots += np.bincount(groups[top], minlength=n_groups) / len(top)
        truth_groups = np.bincount(groups[np.fromiter(truth, dtype=np.int64, count=len(truth))], minlength=n_groups)
        hit_rows = np.array([item for item in top if item in truth], dtype=np.int64)
        hit_groups = np.bincount(groups[hit_rows], minlength=n_groups)
        present = truth_groups > 0
        hits[present] += hit_groups[present] / truth_groups[present]
        users += present
        held_out += truth_groups
    recall = np.where(users > 0, hits / np.maximum(users, 1), np.nan)
    return {
        "recall": recall.tolist(),
        "exposure": (slots / max(n_users, 1)).tolist(),
        "users": users.tolist(),
        "held_out": held_out.tolist(),
    }


def evaluate_bundle_by_popularity(
    bundle_path: Path, split_path: Path, n_groups: int = 5, k: int = 20, label: int = 2, by: str = "interactions"
) -> dict[str, object]:
    """Recall@k and exposure per item-popularity group (:func:`grouped_recall`) of the bundle on split ``label``.

    The groups come from the split file's training interactions (:func:`popularity_groups` cut ``by`` interactions
    or items; 0 = most popular), so that every model evaluated on one split is cut the same way. Returns those lists,
    ``items`` and ``train_interactions`` per group, and ``recall_all``: the ungrouped Recall@k, as
    :func:`evaluate_bundle_on_split` computes it.
    """
    bundle = load_bundle(bundle_path)
    split = read_split_file(split_path)
    item_row = {iid: row for row, iid in enumerate(bundle.item_ids)}
    counts = np.zeros(len(bundle.item_ids), dtype=np.int64)
    for items in split[0].values():
        for iid in items:
            counts[item_row[iid]] += 1
    groups = popularity_groups(counts, n_groups, by)
    ungrouped: list[float] = []

    def lists() -> Iterator[tuple[np.ndarray, set[int]]]:
        for ranked, truth in ranked_split_lists(bundle, split, label, k):
            ungrouped.append(sum(item in truth for item in ranked[:k]) / len(truth))
            yield ranked, truth

    result: dict[str, object] = dict(grouped_recall(lists(), groups, n_groups, k))
    result["items"] = np.bincount(groups, minlength=n_groups).tolist()
    result["train_interactions"] = np.bincount(groups, weights=counts, minlength=n_groups).astype(int).tolist()
    result["recall_all"] = float(np.mean(ungrouped)) if ungrouped else float("nan")
    result["k"] = k
    result["by"] = by
    return result
