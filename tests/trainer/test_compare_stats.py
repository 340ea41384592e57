"""Paired and Welch intervals, the difference table of ``trainer compare`` and ``trainer table``, on hand-checked
numbers."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from trainer.pipeline import difference_interval, difference_table, paired_interval, welch_interval


def test_welch_interval_hand_checked():
    # a = [1, 2, 3]: mean 2, variance 1; b = [0, 0, 0]: no spread. se = sqrt(1/3); Welch dof = 2;
    # t(0.975, 2) = 4.302653; half-width 4.302653 * 0.577350 = 2.484138.
    difference, low, high = welch_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert difference == pytest.approx(2.0)
    assert low == pytest.approx(2.0 - 2.484138, abs=1e-6)
    assert high == pytest.approx(2.0 + 2.484138, abs=1e-6)


def test_welch_interval_matches_scipys_welch_test():
    a, b = [0.381, 0.386, 0.379, 0.390], [0.3867, 0.3841, 0.3892]
    difference, low, high = welch_interval(a, b, confidence=0.9)
    reference = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=0.9)
    assert difference == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert (low, high) == pytest.approx((reference.low, reference.high), rel=1e-9)


def test_welch_interval_edge_cases():
    difference, low, high = welch_interval([0.5], [0.25, 0.35])
    assert difference == pytest.approx(0.2) and math.isnan(low) and math.isnan(high)
    assert welch_interval([0.3, 0.3], [0.1, 0.1]) == pytest.approx((0.2, 0.2, 0.2))


def _rows(label: str, valid: list[float], test: list[float]) -> list[dict]:
    return [
        {"label": label, "seed": seed, "valid_recall@20": v, "test_recall@20": t}
        for seed, (v, t) in enumerate(zip(valid, test, strict=True), start=1)
    ]


def test_difference_table_says_which_differences_exclude_zero():
    rows = (
        _rows("base", [0.30, 0.31, 0.32], [0.40, 0.41, 0.42])
        + _rows("better", [0.40, 0.41, 0.42], [0.50, 0.51, 0.52])
        + _rows("same", [0.30, 0.32, 0.31], [0.39, 0.42, 0.42])
        + _rows("worse", [0.20, 0.21, 0.22], [0.30, 0.31, 0.32])
    )
    lines = difference_table(rows).splitlines()
    assert "− base (95% CI)" in lines[0]
    body = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert set(body) == {"better", "same", "worse"}  # the baseline has no row of its own
    assert body["better"].endswith("| higher | paired |") and "+0.1000 [" in body["better"]
    assert body["same"].endswith("| no | paired |")
    assert body["worse"].endswith("| lower | paired |") and "-0.1000 [" in body["worse"]


def test_difference_table_other_baseline_and_errors():
    rows = _rows("a", [0.3, 0.31], [0.4, 0.41]) + _rows("b", [0.2], [0.3])
    lines = difference_table(rows, baseline="b").splitlines()
    assert "− b (95% CI)" in lines[0] and lines[2].startswith("| a |") and lines[2].endswith("| n/a (one seed) | – |")
    with pytest.raises(ValueError, match="baseline 'c' is not one of the variants"):
        difference_table(rows, baseline="c")


def test_difference_table_adds_ndcg_columns_when_every_row_has_them():
    rows = _rows("base", [0.3, 0.3], [0.4, 0.4]) + _rows("up", [0.3, 0.3], [0.4, 0.4])
    for row, ndcg in zip(rows, [0.25, 0.5, 0.5, 0.75], strict=True):
        row["test_ndcg@20"] = ndcg
    lines = difference_table(rows).splitlines()
    assert lines[0].endswith("| interval | test N@20 − base (95% CI) |") and lines[1].count("---") == 6
    assert lines[2].endswith("| no | paired | +0.2500 [+0.2500, +0.2500] |")  # per-seed +0.25, +0.25
    for row, ndcg in zip(rows, [0.5, 0.25, 0.25, 0.0], strict=True):
        row["valid_ndcg@20"] = ndcg
    lines = difference_table(rows).splitlines()
    assert lines[0].endswith("| test N@20 − base (95% CI) | valid N@20 − base (95% CI) |")
    assert lines[2].endswith("| +0.2500 [+0.2500, +0.2500] | -0.2500 [-0.2500, -0.2500] |")
    del rows[0]["test_ndcg@20"]
    assert "test N@20" not in difference_table(rows) and "valid N@20" in difference_table(rows)


def test_compare_refuses_repeated_seeds(tmp_path):
    # a repeated seed would train twice into one run directory and count twice in mean ± std
    from trainer.pipeline import compare

    with pytest.raises(ValueError, match=r"seeds must be distinct, got \[1, 2, 1\]"):
        compare(tmp_path / "no-dataset", tmp_path / "out", ["a=mf"], [1, 2, 1])
    assert not (tmp_path / "out").exists()


def _run_row(label, seed, test, epoch):
    """A compare row with only what perturbation_table reads."""
    return {"label": label, "seed": seed, "test_recall@20": test, "best_epoch": epoch}


def _cells(line):
    """The stripped cells of one markdown table row."""
    return [c.strip() for c in line.strip("|").split("|")]


def test_perturbation_table_pairs_seeds_hand_checked():
    from trainer.pipeline import perturbation_table

    row = _run_row
    base = [row("A", 1, 0.30, 10), row("A", 2, 0.32, 12), row("A", 3, 0.34, 14), row("B", 1, 0.5, 5),
            row("only-base", 1, 0.1, 1)]
    perturbed = [row("A", 1, 0.31, 10), row("A", 2, 0.30, 15), row("A", 3, 0.36, 14), row("B", 1, 0.5, 5),
                 row("A", 9, 0.9, 9)]
    lines = perturbation_table(base, perturbed).splitlines()
    assert len(lines) == 4  # header, rule, A, B; "only-base" and A's seed 9 have no pair
    cells = _cells(lines[2])
    # changes +0.01, -0.02, +0.02: mean abs 0.0167, mean +0.00333, sd 0.020817, t(0.975, 2) = 4.302653
    # -> half-width 4.302653 * 0.020817 / sqrt(3) = 0.051713
    assert cells[:5] == ["A", "1,2,3", "0.3200", "0.3233", "0.0167"]
    assert cells[5] == "+0.0033 [-0.0484, +0.0550]"
    assert cells[6] == "0.0200" and cells[7] == "1 of 3"
    b_cells = _cells(lines[3])
    assert b_cells[4:] == ["0.0000", "+0.0000", "0.0000", "0 of 1"]


def test_perturbation_table_averages_several_copies_per_seed_hand_checked():
    from trainer.pipeline import perturbation_table

    row = _run_row
    base = [row("A", 1, 0.30, 10), row("A", 2, 0.32, 12), row("A", 3, 0.34, 14), row("A", 4, 0.5, 1),
            row("B", 1, 0.5, 5)]
    first = [row("A", 1, 0.31, 10), row("A", 2, 0.30, 15), row("A", 3, 0.36, 14), row("A", 4, 0.6, 1),
             row("B", 1, 0.5, 5)]
    second = [row("A", 1, 0.33, 11), row("A", 2, 0.32, 12), row("A", 3, 0.34, 14)]
    lines = perturbation_table(base, first, second).splitlines()
    assert len(lines) == 3  # B and A's seed 4 are not in the second copy
    cells = _cells(lines[2])
    # run changes (+0.01, +0.03), (-0.02, 0), (+0.02, 0); per-seed means +0.02, -0.01, +0.01: mean +0.006667,
    # sd 0.015275, t(0.975, 2) = 4.302653 -> half-width 0.037946; perturbed mean (0.32 + 0.31 + 0.35) / 3;
    # mean abs. change of one run 0.08 / 6; other best epoch: seed 2 of the first copy, seed 1 of the second
    assert cells == ["A", "1,2,3", "0.3200", "0.3267", "0.0133", "+0.0067 [-0.0313, +0.0446]", "0.0200", "2 of 6"]
    assert perturbation_table(base, first).splitlines()[3].startswith("| B | 1 |")
    # a variant that reads nothing perturbed (a control) shows exactly no change, also where the mean of the
    # copies' equal values would round (fmean([0.1] * 3) != 0.1)
    control = [row("C", seed, 0.1 * seed, 5) for seed in (1, 2)]
    lines = perturbation_table(control, control, control, control).splitlines()
    assert _cells(lines[2])[4:6] == ["0.0000", "+0.0000"]
    with pytest.raises(ValueError, match="at least one set"):
        perturbation_table(base)


def test_paired_interval_hand_checked():
    # differences a - b = [0.01, 0.03, 0.02]: mean 0.02, sd 0.01, se 0.01 / sqrt(3) = 0.0057735;
    # t(0.975, 2) = 4.302653 -> half-width 0.0248414.
    difference, low, high = paired_interval([0.41, 0.43, 0.42], [0.40, 0.40, 0.40])
    assert difference == pytest.approx(0.02)
    assert (low, high) == pytest.approx((0.02 - 0.0248414, 0.02 + 0.0248414), abs=1e-7)
    reference = stats.ttest_rel([0.41, 0.43, 0.42], [0.40, 0.40, 0.40]).confidence_interval(0.95)
    assert (low, high) == pytest.approx((reference.low, reference.high), rel=1e-9)
    assert math.isnan(paired_interval([0.5], [0.4])[1])
    assert paired_interval([0.3, 0.4], [0.1, 0.2]) == pytest.approx((0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_interval([0.1, 0.2], [0.1])


def test_runs_that_share_seeds_are_compared_paired_and_others_by_welch():
    """Seed-correlated values: each seed moves both variants alike (+0.00, +0.02, -0.02) and 'shifted' is 0.005 above
    the base in every seed. Paired by seed the difference is exactly 0.005 (no spread), so it is separable; Welch, which
    treats the seeds as independent, sees the seed spread on both sides and is not. A variant with other seeds than the
    baseline is compared by Welch."""
    seed_effect = {1: 0.0, 2: 0.02, 3: -0.02}
    rows = [{"label": "base", "seed": s, "valid_recall@20": 0.3 + e, "test_recall@20": 0.4 + e}
            for s, e in seed_effect.items()]
    rows += [{"label": "shifted", "seed": s, "valid_recall@20": 0.3 + e, "test_recall@20": 0.405 + e}
             for s, e in seed_effect.items()]
    rows += [{"label": "other-seeds", "seed": s + 10, "valid_recall@20": 0.3 + e, "test_recall@20": 0.405 + e}
             for s, e in seed_effect.items()]
    difference, low, high, method = difference_interval(rows, "shifted", "base", "test_recall@20")
    assert method == "paired" and difference == pytest.approx(0.005) and low == pytest.approx(0.005)
    welch = welch_interval([0.405 + e for e in seed_effect.values()], [0.4 + e for e in seed_effect.values()])
    assert welch[1] < 0 < welch[2]
    *other, method = difference_interval(rows, "other-seeds", "base", "test_recall@20")
    assert method == "Welch" and other == pytest.approx(list(welch))
    body = {line.split(" | ")[0].strip("| "): line for line in difference_table(rows).splitlines()[2:]}
    assert body["shifted"].endswith("| higher | paired |")
    assert body["other-seeds"].endswith("| no | Welch |")


def test_table_command_reprints_compare_tables_from_stored_rows(tmp_path, capsys):
    from trainer.cli import main

    rows = _rows("base", [0.30, 0.31, 0.32], [0.40, 0.41, 0.42]) + _rows("better", [0.40, 0.41, 0.42],
                                                                         [0.50, 0.51, 0.52])
    for row in rows:
        row.update({"model": "mf", "test_ndcg@20": 0.3, "best_epoch": 5, "seconds_per_epoch": 0.1})
    (tmp_path / "compare.json").write_text(json.dumps(rows))
    (tmp_path / "families.json").write_text(json.dumps({"one": rows}))
    assert main(["table", "--rows", str(tmp_path / "compare.json")]) == 0
    printed = capsys.readouterr().out
    assert "| better | mf | 1,2,3 |" in printed and "| higher | paired |" in printed
    assert main(["table", "--rows", str(tmp_path / "families.json"), "--family", "one", "--baseline", "better"]) == 0
    assert "| base |" in capsys.readouterr().out
    assert main(["table", "--rows", str(tmp_path / "families.json")]) == 2
    assert "name one with --family" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps([{"label": "x"}]))
    assert main(["table", "--rows", str(tmp_path / "bad.json")]) == 2
    assert "expected a non-empty list of compare rows" in capsys.readouterr().err


def test_table_command_with_perturbed_rows_prints_each_metrics_change(tmp_path, capsys):
    from trainer.cli import main

    def row(label, seed, recall, ndcg):
        return {"label": label, "seed": seed, "valid_recall@20": 0.3, "test_recall@20": recall,
                "test_ndcg@20": ndcg, "best_epoch": 5}

    base = [row("A", 1, 0.5, 0.25), row("A", 2, 0.75, 0.5)]
    perturbed = [row("A", 1, 0.25, 0.25), row("A", 2, 0.5, 0.5)]
    (tmp_path / "stored.json").write_text(json.dumps({"main": base, "shuffled": perturbed}))
    stored = str(tmp_path / "stored.json")
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", stored,
                 "--perturbed-family", "shuffled"]) == 0
    printed = capsys.readouterr().out
    assert "| test R@20, perturbed |" in printed and "| test N@20, perturbed |" in printed
    assert "| A | 1,2 | 0.6250 | 0.3750 | 0.2500 | -0.2500 |" in printed  # R@20; equal changes: no interval
    assert "| A | 1,2 | 0.3750 | 0.3750 | 0.0000 | +0.0000 |" in printed  # N@20
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", stored, "--perturbed-family",
                 "shuffled", "--metric", "valid_recall@20"]) == 0
    assert "valid R@20, perturbed" in (out := capsys.readouterr().out) and "test N@20" not in out
    assert main(["table", "--rows", stored, "--family", "main", "--metric", "test_ndcg@20"]) == 2
    assert "--metric applies only with --perturbed" in capsys.readouterr().err
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", stored, "--baseline", "A"]) == 2
    assert "--baseline does not apply with --perturbed" in capsys.readouterr().err
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", stored]) == 2
    assert "name one with --perturbed-family" in capsys.readouterr().err
    (tmp_path / "second.json").write_text(json.dumps([row("A", 1, 0.75, 0.25), row("A", 2, 0.5, 0.5)]))
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", stored, "--perturbed-family",
                 "shuffled", "--perturbed", str(tmp_path / "second.json"), "--metric", "test_recall@20"]) == 2
    assert "name one with --perturbed-family" not in (err := capsys.readouterr().err) and "second.json" in err
    (tmp_path / "second.json").write_text(json.dumps({"shuffled": [row("A", 1, 0.75, 0.25), row("A", 2, 0.5, 0.5)]}))
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", stored, "--perturbed-family",
                 "shuffled", "--perturbed", str(tmp_path / "second.json"), "--metric", "test_recall@20"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("2 perturbed copies: each seed's change is the mean over the copies")
    # one file holding both copies as families, one --perturbed-family per --perturbed
    (tmp_path / "both.json").write_text(json.dumps({"a": perturbed, "b": json.loads((tmp_path / "second.json")
                                                                                    .read_text())["shuffled"]}))
    both = str(tmp_path / "both.json")
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", both, "--perturbed-family", "a",
                 "--perturbed", both, "--perturbed-family", "b", "--metric", "test_recall@20"]) == 0
    assert capsys.readouterr().out == printed
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", both, "--perturbed", both,
                 "--perturbed", both, "--perturbed-family", "a", "--perturbed-family", "b"]) == 2
    assert "--perturbed-family given 2 times for 3 --perturbed files" in capsys.readouterr().err
    # seed 1: (0.25 + 0.75) / 2 - 0.5 = 0; seed 2: (0.5 + 0.5) / 2 - 0.75 = -0.25
    assert "| A | 1,2 | 0.6250 | 0.5000 | 0.2500 | -0.1250 [" in printed
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main(["table", "--rows", stored, "--perturbed", stored, "--metric", "test_mrr"])
    assert "invalid choice: 'test_mrr'" in capsys.readouterr().err
    assert main(["table", "--rows", stored, "--family", "main", "--perturbed", stored, "--perturbed-family",
                 "shuffled", "--metric", "valid_ndcg@20"]) == 2
    assert "some rows have no valid_ndcg@20" in capsys.readouterr().err


def test_table_metrics_of_the_cli_are_the_pipelines():
    from trainer.cli import TABLE_METRICS
    from trainer.pipeline import METRIC_NAMES

    assert set(TABLE_METRICS) == set(METRIC_NAMES)
