"""trainer.bundle_eval reads the split file trainer.loop.write_split writes, whatever characters the ids hold."""

import dataclasses

import numpy as np
import pytest
import torch

from service.bundle import write_bundle
from trainer.bundle_eval import evaluate_bundle_on_split, read_split_file
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
