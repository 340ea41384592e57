"""trainer.bundle_eval reads the split file trainer.loop.write_split writes, whatever characters the ids hold."""

import dataclasses

import numpy as np
import pytest
import torch

from service.bundle import write_bundle
from trainer.bundle_eval import (
    evaluate_bundle_by_popularity,
    evaluate_bundle_on_split,
    grouped_recall,
    popularity_groups,
    read_split_file,
)
from trainer.data.synthetic import planted_dataset
from trainer.evaluate import evaluate_full_ranking
from trainer.loop import write_split


def test_ids_with_quotes_round_trip_and_metrics_match_the_trainer(tmp_path):
    # the MMRec / RecBole readers split lines on tabs and keep quote characters as part of an id (a .inter
    # file written with CSV quoting gives ids like "B00X"); the split file is written the same raw way, so the
    # reader must not treat '"' as a CSV quote (it merged fields up to the next quote, or dropped the quotes)
    data = planted_dataset(n_users=30, n_items=40, seed=5)
    data = dataclasses.replace(
        data,
        user_ids=[f'"u{i}' if i % 3 == 0 else f"u{i}" for i in range(data.n_users)],
        item_ids=[f'"{i}"' if i % 2 else f'i"{i}' for i in range(data.n_items)],
    )
    rng = np.random.default_rng(0)
    users = rng.normal(size=(data.n_users, 4)).astype(np.float32)
    items = rng.normal(size=(data.n_items, 4)).astype(np.float32)
    train = data.train.tocsr()
    write_bundle(tmp_path / "bundles", version="v1", model="mf", dataset="toy", user_ids=data.user_ids,
                 item_ids=data.item_ids, user_embeddings=users, item_embeddings=items, seen_indptr=train.indptr,
                 seen_indices=train.indices, popularity=np.asarray(train.sum(axis=0)).ravel().astype(np.float32))
    split = tmp_path / "split.inter"
    write_split(split, data)

    by_label = read_split_file(split)
    for label, matrix in enumerate((data.train, data.valid, data.test)):
        expected = {data.user_ids[u]: {data.item_ids[i] for i in matrix[u].indices} for u in range(data.n_users)}
        assert by_label[label] == {u: items for u, items in expected.items() if items}

    got = evaluate_bundle_on_split(tmp_path / "bundles", split)
    want = evaluate_full_ranking(torch.from_numpy(users), torch.from_numpy(items), data.test,
                                 (data.train + data.valid).tocsr())
    assert got["n_users"] == want["n_users"] > 0
    for key in ("recall@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50"):
        assert got[key] == pytest.approx(want[key], abs=1e-9)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("userID\titemID\n", "header lacks column 'x_label'"),
        ("userID\titemID\tx_label\nu1\ti1\n", ":2: expected 3 tab-separated fields, got 2"),
        ("userID\titemID\tx_label\nu1\ti1\ttest\n", ":2: x_label must be 0, 1 or 2, got 'test'"),
        ("userID\titemID\tx_label\nu1\ti1\t3\n", ":2: x_label must be 0, 1 or 2, got '3'"),
    ],
)
def test_a_malformed_split_file_is_a_clear_error_with_the_line(tmp_path, content, message):
    path = tmp_path / "split.inter"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_split_file(path)


def test_a_byte_order_mark_and_blank_lines_are_not_data(tmp_path):
    path = tmp_path / "split.inter"
    path.write_text("\ufeffuserID\titemID\tx_label\nu1\ti1\t0\n\nu1\ti2\t2\n\n", encoding="utf-8")
    by_label = read_split_file(path)
    assert by_label[0] == {"u1": {"i1"}} and by_label[2] == {"u1": {"i2"}} and not by_label[1]


def _write_run(run_dir, data, seed):
    """A run directory as compare lays it out: RUN/bundles (random embeddings of ``seed``) and RUN/split.inter."""
    rng = np.random.default_rng(seed)
    train = data.train.tocsr()
    write_bundle(run_dir / "bundles", version=f"v{seed}", model="mf", dataset="toy", user_ids=data.user_ids,
                 item_ids=data.item_ids, user_embeddings=rng.normal(size=(data.n_users, 4)).astype(np.float32),
                 item_embeddings=rng.normal(size=(data.n_items, 4)).astype(np.float32), seen_indptr=train.indptr,
                 seen_indices=train.indices, popularity=np.asarray(train.sum(axis=0)).ravel().astype(np.float32))
    write_split(run_dir / "split.inter", data)


def test_popularity_groups_cut_items_by_training_count_with_ties_to_the_lower_row():
    counts = np.array([5, 0, 9, 5, 1])
    # order by count: item 2 (9), 0 (5), 3 (5: tie with 0, higher row), 4 (1), 1 (0)
    assert popularity_groups(counts, 2, by="items").tolist() == [0, 1, 0, 0, 1]  # three items, then two
    assert popularity_groups(counts, 5, by="items").tolist() == [1, 4, 0, 2, 3]
    # by interactions (total 20): the counts before each item in that order are 0, 9, 14, 19, 20, so with two
    # groups item 2 (0 < 10) and item 0 (9 < 10) form the first; with four, floor(4 * before / 20) = 0, 1, 2, 3, 3
    assert popularity_groups(counts, 2).tolist() == [0, 1, 0, 1, 1]
    assert popularity_groups(counts, 4).tolist() == [1, 3, 0, 2, 3]
    # one item holding most interactions leaves the middle group empty
    assert popularity_groups(np.array([100, 1, 1]), 3).tolist() == [0, 2, 2]
    assert popularity_groups(np.array([3, 3, 3]), 1).tolist() == [0, 0, 0]
    assert popularity_groups(np.zeros(4), 2).tolist() == [0, 0, 0, 0]
    for bad in (0, 6):
        with pytest.raises(ValueError, match="n_groups must be between 1 and the number of items"):
            popularity_groups(counts, bad)
    with pytest.raises(ValueError, match="cut by one of"):
        popularity_groups(counts, 2, by="users")
    with pytest.raises(ValueError, match="non-negative whole numbers"):
        popularity_groups(np.array([1.5, 2.0]), 2)


def test_grouped_recall_on_a_hand_checked_example():
    groups = np.array([0, 0, 1, 1])  # items 0, 1 in group 0; 2, 3 in group 1; group 2 has no items
    lists = [
        (np.array([0, 2, 1, 3]), {1, 2}),  # top 2 = [0, 2]: misses item 1 (group 0), hits item 2 (group 1)
        (np.array([3, 1, 0, 2]), {3}),  # top 2 = [3, 1]: hits item 3 (group 1)
    ]
    got = grouped_recall(iter(lists), groups, n_groups=3, k=2)
    assert got["recall"][:2] == [0.0, 1.0] and np.isnan(got["recall"][2])
    assert got["exposure"] == [0.5, 0.5, 0.0]  # each user's two slots: one item of each group
    assert got["users"] == [1.0, 2.0, 0.0]
    assert got["held_out"] == [1.0, 2.0, 0.0]


def test_recall_by_popularity_agrees_with_the_ungrouped_evaluation(tmp_path):
    data = planted_dataset(n_users=30, n_items=40, seed=5)
    _write_run(tmp_path, data, seed=1)
    got = evaluate_bundle_by_popularity(tmp_path / "bundles", tmp_path / "split.inter", n_groups=4, k=20, by="items")
    want = evaluate_bundle_on_split(tmp_path / "bundles", tmp_path / "split.inter")
    assert got["recall_all"] == pytest.approx(want["recall@20"], abs=1e-12)
    assert got["items"] == [10, 10, 10, 10]
    # by interactions (the default) each group holds about a quarter of the training pairs
    by_interactions = evaluate_bundle_by_popularity(tmp_path / "bundles", tmp_path / "split.inter", n_groups=4)
    assert sum(by_interactions["items"]) == 40 and by_interactions["items"][0] < by_interactions["items"][3]
    largest = np.asarray(data.train.sum(axis=0)).ravel().max()
    for share in by_interactions["train_interactions"]:
        assert abs(share - data.train.nnz / 4) <= largest
    assert by_interactions["recall_all"] == pytest.approx(want["recall@20"], abs=1e-12)
    assert sum(got["train_interactions"]) == data.train.nnz
    assert sum(got["held_out"]) == data.test.nnz
    assert sum(got["exposure"]) == pytest.approx(1.0)
    # the training counts decrease from group to group
    counts = np.asarray(data.train.sum(axis=0)).ravel()
    groups = popularity_groups(counts, 4, by="items")
    assert all(counts[groups == g].min() >= counts[groups == g + 1].max() for g in range(3))


def test_the_popularity_command_reports_every_variant_against_the_baseline(tmp_path, capsys):
    import json

    from trainer.cli import main

    data = planted_dataset(n_users=30, n_items=40, seed=5)
    rows = []
    for label, offset in (("Base", 0), ("Other", 10)):
        for seed in (1, 2, 3):
            _write_run(tmp_path / "cmp" / label / f"seed{seed}", data, seed + offset)
            rows.append({"label": label, "model": "mf", "seed": seed, "valid_recall@20": 0.1, "test_recall@20": 0.1})
    (tmp_path / "cmp" / "compare.json").write_text(json.dumps(rows), encoding="utf-8")
    out_json = tmp_path / "groups.json"
    assert main(["popularity", "--compare-dir", str(tmp_path / "cmp"), "--groups", "4", "--by", "items",
                 "--json", str(out_json)]) == 0
    report = capsys.readouterr().out
    assert "Recall@20 per group − Base (95% CI, paired by seed over the seeds both ran)" in report
    assert "| Other | 1,2,3 |" in report and "| items | 10 | 10 | 10 | 10 |" in report
    stored = json.loads(out_json.read_text(encoding="utf-8"))
    assert [(row["label"], row["seed"]) for row in stored] == [(r["label"], r["seed"]) for r in rows]
    # a variant with a seed fewer is paired over the seeds both ran; with one seed in common there is no interval
    from trainer.popularity_report import popularity_report

    fewer = [row for row in stored if not (row["label"] == "Other" and row["seed"] == 3)]
    differences = [line for line in popularity_report(fewer).splitlines() if line.startswith("| Other | ") and "±" not in line]
    assert len(differences) == 2 and all("n/a" not in line and "[" in line for line in differences)
    single = [row for row in stored if not (row["label"] == "Other" and row["seed"] > 1)]
    assert "| Other | n/a | n/a | n/a | n/a |" in popularity_report(single)
    # the stored figures print the same report again, without the runs
    assert main(["popularity", "--stored", str(out_json)]) == 0
    assert capsys.readouterr().out == report
    (tmp_path / "families.json").write_text(json.dumps({"a": stored}), encoding="utf-8")
    assert main(["popularity", "--stored", str(tmp_path / "families.json"), "--family", "a"]) == 0
    assert capsys.readouterr().out == report
    assert main(["popularity", "--stored", str(tmp_path / "families.json")]) == 2
    assert "name one with --family" in capsys.readouterr().err
    assert main(["popularity", "--compare-dir", str(tmp_path / "cmp"), "--family", "a"]) == 2
    assert "--family applies to a --stored file" in capsys.readouterr().err
    assert main(["popularity", "--stored", str(out_json), "--groups", "3"]) == 2
    assert "--groups applies to --compare-dir" in capsys.readouterr().err
    assert main(["popularity", "--compare-dir", str(tmp_path / "cmp"), "--k", "0"]) == 2
    assert "--k must be >= 1" in capsys.readouterr().err

    assert main(["popularity", "--compare-dir", str(tmp_path / "cmp"), "--baseline", "Nope"]) == 2
    assert "baseline 'Nope' is not one of the variants" in capsys.readouterr().err
    import shutil

    shutil.rmtree(tmp_path / "cmp" / "Other" / "seed2")
    assert main(["popularity", "--compare-dir", str(tmp_path / "cmp")]) == 2
    assert "Other" in capsys.readouterr().err
