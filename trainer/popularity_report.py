"""Test Recall@K by item popularity for the runs of one ``compare``: where in the catalogue a model's hits come from.

Every run's bundle is evaluated again on its own split file (:func:`trainer.bundle_eval.evaluate_bundle_by_popularity`);
nothing is trained and nothing is chosen from these figures: they describe runs whose test split ``compare`` has
already read once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainer.bundle_eval import evaluate_bundle_by_popularity
from trainer.pipeline import mean_std, paired_interval, read_compare_rows, read_stored_rows

SPLIT_FILE = "split.inter"
ROW_KEYS = ("label", "seed", "recall", "exposure", "users", "held_out", "items", "train_interactions", "k", "by")


def popularity_rows(compare_dir: Path, n_groups: int = 5, k: int = 20, by: str = "interactions") -> list[dict[str, Any]]:
    """One row per variant × seed of ``compare_dir/compare.json``: its label, model and seed and the per-group figures
    of its bundle (:func:`~trainer.bundle_eval.evaluate_bundle_by_popularity`). The run directories are
    ``compare_dir/LABEL/seedN``, as ``compare`` lays them out."""
    rows = read_compare_rows(compare_dir / "compare.json")
    result = []
    for row in rows:
        run_dir = compare_dir / row["label"] / f"seed{row['seed']}"
        for needed in (run_dir / "bundles", run_dir / SPLIT_FILE):
            if not needed.exists():
                raise FileNotFoundError(f"{needed} is missing: the run of {row['label']!r} seed {row['seed']} "
                                        f"is not where compare writes it")
        groups = evaluate_bundle_by_popularity(run_dir / "bundles", run_dir / SPLIT_FILE, n_groups, k, by=by)
        result.append({"label": row["label"], "model": row["model"], "seed": int(row["seed"]), **groups})
    return result


def read_popularity_rows(path: Path, family: str | None = None) -> list[dict[str, Any]]:
    """Per-run figures that ``trainer popularity --json`` wrote (a list of rows), or one family's rows of a
    ``{family: rows}`` file. Raises ValueError naming the file when it holds neither."""
    return read_stored_rows(path, family, set(ROW_KEYS), "popularity rows")


def _by_label(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["label"], []).append(row)
    return grouped


def _paired(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str, group: int) -> str:
    mine = {row["seed"]: row[key][group] for row in ours}
    base = {row["seed"]: row[key][group] for row in theirs}
    seeds = sorted(set(mine) & set(base))
    if len(seeds) < 2:
        return "n/a"
    difference, low, high = paired_interval([mine[s] for s in seeds], [base[s] for s in seeds])
    if math.isnan(difference):
        return "n/a"
    sign = " ↑" if low > 0 else " ↓" if high < 0 else ""
    return f"{difference:+.4f} [{low:+.4f}, {high:+.4f}]{sign}"


def popularity_report(rows: list[dict[str, Any]], baseline: str | None = None) -> str:
    """Markdown: the groups (items, training interactions, held-out pairs), Recall@K and exposure per group
    (mean ± std over seeds), and each variant's Recall@K and exposure minus ``baseline``'s (default: the first
    variant) per group with 95% intervals paired by seed, over the seeds both ran (↑ / ↓: the interval excludes zero;
    n/a: fewer than two seeds in common)."""
    by_label = _by_label(rows)
    labels = list(by_label)
    baseline = labels[0] if baseline is None else baseline
    if baseline not in by_label:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {labels}")
    first = rows[0]
    for row in rows[1:]:
        if any(row[key] != first[key] for key in ("items", "train_interactions", "held_out", "k", "by")):
            raise ValueError(f"{row['label']!r} seed {row['seed']} was evaluated on another split or cut-off than "
                             f"{first['label']!r} seed {first['seed']}: their item groups differ")
    n_groups, k = len(first["items"]), first["k"]
    cut = "equal item counts" if first["by"] == "items" else "about equal shares of the training interactions"
    header_groups = " | ".join(f"G{g}" for g in range(n_groups))
    total_train = sum(first["train_interactions"])
    lines = [
        f"Item groups by training popularity (G0 = most popular; {cut}; K = {k}):",
        "",
        f"| | {header_groups} |",
        "|---" * (n_groups + 1) + "|",
        "| items | " + " | ".join(str(n) for n in first["items"]) + " |",
        "| share of training interactions | "
        + " | ".join(f"{n / max(total_train, 1):.1%}" for n in first["train_interactions"]) + " |",
        "| held-out pairs | " + " | ".join(f"{n:.0f}" for n in first["held_out"]) + " |",
        "",
    ]
    for key, title in (("recall", f"Recall@{k} per group"), ("exposure", f"share of top-{k} slots per group")):
        lines += [f"{title} (mean ± std over seeds):", "", f"| variant | seeds | {header_groups} |",
                  "|---|---" + "|---" * n_groups + "|"]
        for label, group_rows in by_label.items():
            cells = []
            for g in range(n_groups):
                mean, std = mean_std([row[key][g] for row in group_rows])
                cells.append(f"{mean:.4f} ± {std:.4f}")
            seeds = ",".join(str(row["seed"]) for row in group_rows)
            lines.append(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
        if len(by_label) > 1:
            lines += [f"{title} − {baseline} (95% CI, paired by seed over the seeds both ran):", "",
                      f"| variant | {header_groups} |",
                      "|---" * (n_groups + 1) + "|"]
            for label, group_rows in by_label.items():
                if label != baseline:
                    cells = [_paired(group_rows, by_label[baseline], key, g) for g in range(n_groups)]
                    lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
