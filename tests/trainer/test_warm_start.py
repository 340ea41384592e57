"""Warm start (trainer/warm_start.py): rows matched by external id, shared parameters copied whole, buffers rebuilt,
all-or-nothing refusals, every registered model either warm-starts exactly or is refused with its reason, fit and
retrain wiring (a second retrain starts from the first one's checkpoint)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests.trainer.real_redis import REDIS_URL, redis_client
from trainer.config import RunConfig, TrainConfig
from trainer.data.synthetic import planted_dataset
from trainer.loop import compute_representations, fit
from trainer.models.base import ModelInputs, RowIds
from trainer.models.registry import MODELS, build_model
from trainer.warm_start import WarmStartSource, apply_warm_start, load_previous_run

MODEL_NAMES = sorted(MODELS)
CHEAPER = {"multikg4rec": {"n_blocks": 1, "sequence_length": 4}}


def _params(name: str) -> dict:
    return {"embedding_dim": 32, **CHEAPER.get(name, {})}


def _inputs(n_users: int, n_items: int, seed: int = 0) -> ModelInputs:
    """A random interaction graph (every user and item has an interaction) without features."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate([np.arange(n_users), rng.integers(0, n_users, 3 * n_items)])
    cols = np.concatenate([rng.integers(0, n_items, n_users), np.repeat(np.arange(n_items), 3)])
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    train.data[:] = 1.0
    return ModelInputs.from_train_matrix(train)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _source(model, name: str, user_ids, item_ids, **changes) -> WarmStartSource:
    fields = {"model": name, "model_params": dataclasses.asdict(model.config), "state_dict": _snapshot(model),
              "user_ids": list(user_ids), "item_ids": list(item_ids), "origin": "test"}
    return WarmStartSource(**{**fields, **changes})


def _source_on(model, name: str, dataset) -> WarmStartSource:
    """A source as fit's checkpoint records it: the dataset's user and item ids and the keys of the model's other
    kinds of rows (Multi-KG4Rec's nodes and relations)."""
    keys = model.row_keys(RowIds.of(dataset))
    other = {kind: rows for kind, rows in keys.items() if kind not in ("user", "item")}
    return _source(model, name, dataset.user_ids, dataset.item_ids, row_keys=other)


def _planted_pair(name: str, n_users: int, n_items: int):
    """(dataset, old model, new model): one model built twice (seeds 0 and 1) on a planted dataset without KG."""
    data = planted_dataset(n_users=n_users, n_items=n_items, interactions_per_user=8, with_kg=False, seed=0)
    inputs = ModelInputs.from_dataset(data, torch.device("cpu"))
    torch.manual_seed(0)
    old = build_model(name, inputs, {"embedding_dim": 32})
    torch.manual_seed(1)
    new = build_model(name, inputs, {"embedding_dim": 32})
    return data, old, new


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.layout != torch.strided:  # sparse graphs
        return a.layout == b.layout and torch.equal(a.to_dense(), b.to_dense())
    return torch.equal(a, b)


def _assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# ------------------------------------------------------------------------------------------ row mapping by id
def test_rows_are_matched_by_external_id_with_reordered_new_and_removed_ids():
    """Old users u0..u4, items i0..i5. New users [u3, n1, u0, u4] (u1 and u2 gone, n1 new, order changed); new
    items [i5, i2, x, i0]. Each kept row must be the old row of the same id; n1 and x keep their fresh rows."""
    old_users, old_items = [f"u{k}" for k in range(5)], [f"i{k}" for k in range(6)]
    torch.manual_seed(0)
    old = build_model("mf", _inputs(5, 6), {"embedding_dim": 4})
    new_users, new_items = ["u3", "n1", "u0", "u4"], ["i5", "i2", "x", "i0"]
    torch.manual_seed(1)
    new = build_model("mf", _inputs(4, 4, seed=1), {"embedding_dim": 4})
    fresh = _snapshot(new)
    report = apply_warm_start(new, "mf", _source(old, "mf", old_users, old_items), RowIds(new_users, new_items))
    assert report.applied, report.reason
    users, items = new.user_embedding.weight.detach(), new.item_embedding.weight.detach()
    old_u, old_i = old.user_embedding.weight.detach(), old.item_embedding.weight.detach()
    for new_row, old_row in ((0, 3), (2, 0), (3, 4)):
        assert torch.equal(users[new_row], old_u[old_row])
    assert torch.equal(users[1], fresh["user_embedding.weight"][1])  # n1: fresh initialisation
    for new_row, old_row in ((0, 5), (1, 2), (3, 0)):
        assert torch.equal(items[new_row], old_i[old_row])
    assert torch.equal(items[2], fresh["item_embedding.weight"][2])  # x: fresh
    assert report.row_mapped == {
        "user_embedding.weight": {"kind": "user", "kept": 3, "new": 1, "dropped": 2},
        "item_embedding.weight": {"kind": "item", "kept": 3, "new": 1, "dropped": 3},
    }
    assert report.copied == []


def test_shared_parameters_are_copied_whole_and_buffers_stay_those_of_the_new_data():
    """LightGCN+SAND on a grown dataset: projections and CLUB estimators are copied as they are; the normalised
    adjacency and the feature statistics (buffers, one persistent) are the new model's own, built from the new data."""
    old_data = planted_dataset(n_users=30, n_items=40, interactions_per_user=8, with_kg=False, seed=0)
    new_data = planted_dataset(n_users=36, n_items=45, interactions_per_user=8, with_kg=False, seed=1)
    new_data.user_ids = [*old_data.user_ids[::-1], *[f"new-user-{k}" for k in range(6)]]
    new_data.item_ids = [*old_data.item_ids[5:], *[f"new-item-{k}" for k in range(10)]]
    torch.manual_seed(0)
    old = build_model("lightgcn_sand", ModelInputs.from_dataset(old_data, torch.device("cpu")), {"embedding_dim": 32})
    with torch.no_grad():
        for parameter in old.parameters():
            parameter.add_(0.1)
    torch.manual_seed(1)
    new = build_model("lightgcn_sand", ModelInputs.from_dataset(new_data, torch.device("cpu")), {"embedding_dim": 32})
    fresh_buffers = {k: v.clone() for k, v in new.named_buffers()}
    report = apply_warm_start(new, "lightgcn_sand", _source(old, "lightgcn_sand", old_data.user_ids, old_data.item_ids),
                              RowIds.of(new_data))
    assert report.applied, report.reason
    tables = set(new.row_tables())
    old_parameters = dict(old.named_parameters())
    shared = [name for name, _ in new.named_parameters() if name not in tables]
    assert sorted(report.copied) == sorted(shared) and shared
    for name, parameter in new.named_parameters():
        if name not in tables:
            assert torch.equal(parameter, old_parameters[name]), name
    for name, value in new.named_buffers():
        assert value is not None and _same(value, fresh_buffers[name]), name
    assert set(report.skipped) == set(fresh_buffers)
    # the statistics of the new features differ from the old ones: they were not copied
    assert not torch.equal(new.projection.splitters["text"].mean, old.projection.splitters["text"].mean)
    users = report.row_mapped["user_embedding.weight"]
    assert (users["kept"], users["new"], users["dropped"]) == (30, 6, 0)
    items = report.row_mapped["item_embedding.weight"]
    assert (items["kept"], items["new"], items["dropped"]) == (35, 10, 5)
    # user 29 of the old model is row 0 of the new one (the reversed order)
    assert torch.equal(new.user_feature_preference.weight[0], old.user_feature_preference.weight[29])


def test_shrink_blends_copied_values_with_the_fresh_initialisation_and_new_rows_stay_fresh():
    """λ = 0.25 on LightGCN+SAND: a whole parameter becomes 0.25·old + 0.75·fresh, a kept row likewise; a new row and
    the buffers stay the fresh model's; λ = 0 leaves every parameter at its fresh value."""
    old_data = planted_dataset(n_users=30, n_items=40, interactions_per_user=8, with_kg=False, seed=0)
    new_data = dataclasses.replace(old_data, user_ids=[*old_data.user_ids[:-1], "new-user"])
    inputs = ModelInputs.from_dataset(new_data, torch.device("cpu"))
    torch.manual_seed(0)
    old = build_model("lightgcn_sand", inputs, {"embedding_dim": 32})
    with torch.no_grad():
        for parameter in old.parameters():
            parameter.add_(1.0)
    source = _source(old, "lightgcn_sand", old_data.user_ids, old_data.item_ids)
    for shrink in (0.25, 0.0):
        torch.manual_seed(1)
        new = build_model("lightgcn_sand", inputs, {"embedding_dim": 32})
        fresh = _snapshot(new)
        report = apply_warm_start(new, "lightgcn_sand", source, RowIds.of(new_data), shrink=shrink)
        assert report.applied and report.shrink == shrink, report.reason
        assert f"blended {shrink:g}·previous" in report.summary()
        old_parameters = dict(old.named_parameters())
        for name in report.copied:
            expected = shrink * old_parameters[name].detach() + (1 - shrink) * fresh[name]
            torch.testing.assert_close(dict(new.named_parameters())[name].detach(), expected, rtol=1e-6, atol=1e-6)
        users, old_users = new.user_embedding.weight.detach(), old.user_embedding.weight.detach()
        torch.testing.assert_close(users[:29], shrink * old_users[:29] + (1 - shrink) * fresh["user_embedding.weight"][:29])
        assert torch.equal(users[29], fresh["user_embedding.weight"][29])  # "new-user": no previous row
        for name, value in new.named_buffers():
            assert _same(value, fresh[name]) if name in fresh else True, name
        if shrink == 0.0:
            for name, parameter in new.named_parameters():
                assert torch.equal(parameter.detach(), fresh[name]), name


def test_a_shrink_outside_0_1_refuses_and_leaves_the_model_untouched():
    old, new, ids_u, ids_i = _lightgcn_pair()
    before = _snapshot(new)
    report = apply_warm_start(new, "lightgcn", _source(old, "lightgcn", ids_u, ids_i), RowIds(ids_u, ids_i), shrink=1.5)
    assert not report.applied and "shrink must be in [0, 1]" in report.reason
    _assert_unchanged(new, before)


@pytest.mark.parametrize("field, value, message", [("warm_start_shrink", -0.1, "warm_start_shrink must be in [0, 1]"),
                                                   ("warm_start_shrink", 1.01, "warm_start_shrink must be in [0, 1]"),
                                                   ("warm_start_lr", -1e-3, "warm_start_lr must be >= 0")])
def test_warm_start_train_settings_are_checked(field, value, message):
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig(**{field: value})


# ------------------------------------------------------------------------------------------ refusals
def _lightgcn_pair():
    ids_u, ids_i = [f"u{k}" for k in range(8)], [f"i{k}" for k in range(9)]
    torch.manual_seed(0)
    old = build_model("lightgcn", _inputs(8, 9), {"embedding_dim": 4})
    torch.manual_seed(1)
    new = build_model("lightgcn", _inputs(8, 9), {"embedding_dim": 4})
    return old, new, ids_u, ids_i


def _tampered(source: WarmStartSource, key: str, value) -> WarmStartSource:
    state = dict(source.state_dict)
    if value is None:
        del state[key]
    else:
        state[key] = value
    return dataclasses.replace(source, state_dict=state)


REFUSALS = {
    "other model": (lambda s: dataclasses.replace(s, model="mf"), "is model 'mf'"),
    "other model_params": (lambda s: dataclasses.replace(s, model_params={**s.model_params, "n_layers": 3}),
                           "other model_params (n_layers: 3 -> 2)"),
    "shape of a row table off the row axis": (
        lambda s: _tampered(s, "item_embedding.weight", torch.zeros(9, 5)), "item table item_embedding.weight"),
    "row count not that of the ids": (
        lambda s: dataclasses.replace(s, user_ids=s.user_ids[:-1]), "does not fit 7 previous user keys"),
    "missing parameter": (lambda s: _tampered(s, "user_embedding.weight", None), "lacks parameters"),
    "unknown entry": (lambda s: _tampered(s, "extra.weight", torch.zeros(2)), "entries this model does not"),
    "non-finite value": (
        lambda s: _tampered(s, "user_embedding.weight", torch.full((8, 4), float("nan"))), "non-finite"),
    "repeated ids": (lambda s: dataclasses.replace(s, item_ids=["i0"] * 9), "keys repeat"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_leaves_the_fresh_model_untouched(case):
    old, new, ids_u, ids_i = _lightgcn_pair()
    change, message = REFUSALS[case]
    before = _snapshot(new)
    report = apply_warm_start(new, "lightgcn", change(_source(old, "lightgcn", ids_u, ids_i)), RowIds(ids_u, ids_i))
    assert not report.applied and message in report.reason
    assert report.copied == [] and report.row_mapped == {}
    _assert_unchanged(new, before)


def test_checkpoint_from_before_a_config_field_existed_warm_starts_as_export_rebuilds_it():
    """A checkpoint written before a config field was added (SAND's feature_dtype and transposed_feature_copy, say)
    lacks it in model_params; export and explain rebuild it with the field's default, and so must the warm start's
    comparison: the same model, not "other model_params". A field the config no longer has still refuses."""
    data, old, new = _planted_pair("sand", 20, 30)
    source = _source(old, "sand", data.user_ids, data.item_ids)
    older = {k: v for k, v in source.model_params.items() if k not in ("feature_dtype", "transposed_feature_copy")}
    report = apply_warm_start(new, "sand", dataclasses.replace(source, model_params=older), RowIds.of(data))
    assert report.applied, report.reason
    assert torch.equal(new.user_embedding.weight, old.user_embedding.weight)
    before = _snapshot(new)
    removed = {**source.model_params, "a_field_since_removed": 1}
    report = apply_warm_start(new, "sand", dataclasses.replace(source, model_params=removed), RowIds.of(data))
    assert not report.applied and "a_field_since_removed" in report.reason
    _assert_unchanged(new, before)


def test_shape_mismatch_of_a_shared_parameter_refuses_without_half_applying():
    """LUDP: the row tables come first in named_parameters(); a wrong shape of a later shared parameter must refuse
    the whole warm start, the tables included."""
    data, old, new = _planted_pair("ludp", 30, 40)
    before = _snapshot(new)
    source = _tampered(_source(old, "ludp", data.user_ids, data.item_ids), "feature_projections.0.bias", torch.zeros(7))
    report = apply_warm_start(new, "ludp", source, RowIds.of(data))
    assert not report.applied and "feature_projections.0.bias" in report.reason
    _assert_unchanged(new, before)


# ------------------------------------------------------------------------------------------ every registered model
@pytest.fixture(scope="module")
def planted():
    return planted_dataset(n_users=60, n_items=50, interactions_per_user=10, seed=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_warm_starts_exactly_from_its_own_checkpoint(name, planted):
    """On the SAME dataset, a model warm-started from another model's parameters gives exactly that model's
    representations before any training step."""
    inputs = ModelInputs.from_dataset(planted, torch.device("cpu"))
    torch.manual_seed(0)
    old = build_model(name, inputs, _params(name))
    with torch.no_grad():  # away from any initialisation
        for parameter in old.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    torch.manual_seed(1)
    new = build_model(name, inputs, _params(name))
    report = apply_warm_start(new, name, _source_on(old, name, planted), RowIds.of(planted))
    assert report.applied, report.reason
    old_users, old_items = compute_representations(old)
    new_users, new_items = compute_representations(new)
    assert torch.equal(old_users, new_users) and torch.equal(old_items, new_items)
    rows = {"user": planted.n_users, "item": planted.n_items, "node": getattr(new, "n_nodes", None),
            "relation": getattr(new, "n_relations", None)}
    assert all(info["kept"] == rows[info["kind"]] for info in report.row_mapped.values())
    assert all(info["new"] == 0 and info["dropped"] == 0 for info in report.row_mapped.values())


def _reordered(dataset, user_order: np.ndarray, item_order: np.ndarray, entity_order: np.ndarray,
               relation_order: np.ndarray):
    """The same dataset with its users, items, KG entities and KG relations in another order: new row (index) k is
    old row ``*_order[k]``; the KG's triples are listed in another order too."""
    kg = dataset.kg
    new_entity = np.argsort(entity_order)  # old entity index -> new
    new_relation = np.argsort(relation_order)
    old_links = kg.item_entity[item_order]
    triples = np.stack([new_entity[kg.triples[:, 0]], new_relation[kg.triples[:, 1]], new_entity[kg.triples[:, 2]]], 1)
    kg = dataclasses.replace(
        kg,
        triples=triples[::-1].copy(),
        entity_ids=[kg.entity_ids[k] for k in entity_order],
        relation_ids=[kg.relation_ids[k] for k in relation_order],
        item_entity=np.where(old_links >= 0, new_entity[np.maximum(old_links, 0)], -1),
    )
    return dataclasses.replace(
        dataset,
        user_ids=[dataset.user_ids[k] for k in user_order],
        item_ids=[dataset.item_ids[k] for k in item_order],
        **{split: getattr(dataset, split)[user_order][:, item_order].tocsr() for split in ("train", "valid", "test")},
        features={name: matrix[item_order] for name, matrix in dataset.features.items()},
        kg=kg,
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_warm_starts_by_id_when_the_new_dataset_orders_its_rows_differently(name, planted):
    """The same users, items, KG entities and KG relations in another order: the warm-started model must give every
    user and item the previous model's representation of the same id. A per-row parameter that row_tables() leaves
    out (whatever its shape: [n_users + n_items, d], a user axis that is not the first...), declares with the wrong
    kind, or whose row_keys() are wrong would be copied to the wrong rows and break this."""
    rng = np.random.default_rng(7)
    user_order, item_order = rng.permutation(planted.n_users), rng.permutation(planted.n_items)
    entity_order = rng.permutation(planted.kg.n_entities)
    relation_order = rng.permutation(planted.kg.n_relations)
    reordered = _reordered(planted, user_order, item_order, entity_order, relation_order)
    torch.manual_seed(0)
    old = build_model(name, ModelInputs.from_dataset(planted, torch.device("cpu")), _params(name))
    with torch.no_grad():
        for parameter in old.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    torch.manual_seed(1)
    new = build_model(name, ModelInputs.from_dataset(reordered, torch.device("cpu")), _params(name))
    report = apply_warm_start(new, name, _source_on(old, name, planted), RowIds.of(reordered))
    assert report.applied, report.reason
    assert all(info["new"] == 0 and info["dropped"] == 0 for info in report.row_mapped.values())
    old_keys, new_keys = old.row_keys(RowIds.of(planted)), new.row_keys(RowIds.of(reordered))
    old_parameters, new_parameters = dict(old.named_parameters()), dict(new.named_parameters())
    for table, kind in new.row_tables().items():  # every row holds the old row of its key
        old_row = {key: row for row, key in enumerate(old_keys[kind])}
        order = torch.as_tensor([old_row[key] for key in new_keys[kind]])
        assert torch.equal(new_parameters[table], old_parameters[table][order]), table
    if name == "multikg4rec":
        # its Bi-Transformer reads each item's BFS sequence of nearest nodes, whose ties are broken by node index:
        # renumbered nodes give some items other sequences, so its representations are not renumbering-invariant
        # (KGAT's, the same model without that part, are checked below)
        return
    old_users, old_items = compute_representations(old)
    new_users, new_items = compute_representations(new)
    torch.testing.assert_close(new_users, old_users[torch.as_tensor(user_order)], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new_items, old_items[torch.as_tensor(item_order)], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_per_row_parameter_is_declared_in_row_tables(name):
    """A per-row table left out of row_tables() would be copied by position; with 37 users and 53 items (sizes no
    other dimension has) every parameter of that many rows, or of as many rows as the model has graph nodes or
    relations, must be declared with its kind, and row_keys() must give one unique key per row."""
    data = planted_dataset(n_users=37, n_items=53, interactions_per_user=8, seed=0)
    model = build_model(name, ModelInputs.from_dataset(data, torch.device("cpu")), _params(name))
    tables = model.row_tables()
    keys = model.row_keys(RowIds.of(data))
    rows = {"user": 37, "item": 53, **{kind: len(values) for kind, values in keys.items()}}
    assert rows["user"] == 37 and rows["item"] == 53
    assert all(len(set(values)) == len(values) for values in keys.values())
    for parameter_name, parameter in model.named_parameters():
        if parameter_name in tables:
            assert parameter.shape[0] == rows[tables[parameter_name]], parameter_name
        else:
            assert parameter.dim() == 0 or parameter.shape[0] not in rows.values(), f"{parameter_name} is undeclared"
    assert tables and set(tables.values()) <= set(rows)


def _tiny_kg_model(item_entity: list[int], triples: list[tuple[int, int, int]], n_entities: int, n_relations: int,
                   n_users: int = 2):
    """KGAT (Multi-KG4Rec without fusion) on a tiny KG, no filtering; every user interacted with every item."""
    from trainer.models.base import KGTensors

    n_items = len(item_entity)
    kg = KGTensors(triples=torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3), n_entities=n_entities,
                   n_relations=n_relations, item_entity=torch.as_tensor(item_entity, dtype=torch.long))
    inputs = ModelInputs.from_train_matrix(sp.csr_matrix(np.ones((n_users, n_items), np.float32)), kg=kg)
    return build_model("kgat", inputs, {"embedding_dim": 8, "min_entity_triples": 0, "min_relation_triples": 0})


def test_multikg4rec_row_keys_name_what_each_node_and_relation_stands_for():
    """Entities e_a, e_b, e_c; item i0 holds e_a's node, i1 is linked to e_a too (own node, "same entity as" edge),
    i2 is unlinked (own node); e_b is in no triple and no link (filtered out). Nodes: the kept entities, then the
    items with their own node, then the users; relations: the two CF ones, the KG ones, "same entity as", inverses."""
    model = _tiny_kg_model(item_entity=[0, 0, -1], triples=[(0, 0, 2)], n_entities=3, n_relations=1)
    ids = RowIds(user_ids=["u0", "u1"], item_ids=["i0", "i1", "i2"], entity_ids=["e_a", "e_b", "e_c"],
                 relation_ids=["r1"])
    assert model.row_keys(ids) == {
        "user": ["u0", "u1"],
        "item": ["i0", "i1", "i2"],
        "node": ["entity:e_a", "entity:e_c", "item:i1", "item:i2", "user:u0", "user:u1"],
        "relation": ["interact", "interacted by", "kg:r1", "same entity as", "inverse kg:r1",
                     "inverse same entity as"],
    }


def test_multikg4rec_warm_start_keeps_known_nodes_and_relations_and_starts_new_ones_fresh():
    """A grown KG: a new entity e_d (its own relation r2 to e_c), a new item i3 linked to it, a new user, and the
    "same entity as" relation gone (i1 now links to e_c). Rows of keys seen before get their old rows wherever they
    now are; new keys keep their fresh rows; the report counts them."""
    torch.manual_seed(0)
    old = _tiny_kg_model(item_entity=[0, 0, -1], triples=[(0, 0, 2)], n_entities=3, n_relations=1)
    old_ids = RowIds(["u0", "u1"], ["i0", "i1", "i2"], ["e_a", "e_b", "e_c"], ["r1"])
    torch.manual_seed(1)
    new = _tiny_kg_model(item_entity=[0, 1, -1, 2], triples=[(2, 1, 0), (1, 0, 2)], n_entities=3, n_relations=2,
                         n_users=3)
    new_ids = RowIds(["u1", "u9", "u0"], ["i0", "i1", "i2", "i3"], ["e_a", "e_c", "e_d"], ["r2", "r1"])
    fresh = _snapshot(new)
    source = _source(old, "kgat", old_ids.user_ids, old_ids.item_ids, row_keys=old.row_keys(old_ids))
    report = apply_warm_start(new, "kgat", source, new_ids)
    assert report.applied, report.reason
    old_keys, new_keys = old.row_keys(old_ids), new.row_keys(new_ids)
    assert new_keys["node"] == ["entity:e_a", "entity:e_c", "entity:e_d", "item:i2", "user:u1", "user:u9", "user:u0"]
    old_nodes = {key: row for row, key in enumerate(old_keys["node"])}
    for row, key in enumerate(new_keys["node"]):
        expected = old.node_embedding.weight[old_nodes[key]] if key in old_nodes else fresh["node_embedding.weight"][row]
        assert torch.equal(new.node_embedding.weight[row], expected), key
    old_relations = {key: row for row, key in enumerate(old_keys["relation"])}
    for row, key in enumerate(new_keys["relation"]):
        for table in ("relation_embedding.weight", "relation_projection"):
            old_table, new_table = dict(old.named_parameters())[table], dict(new.named_parameters())[table]
            expected = old_table[old_relations[key]] if key in old_relations else fresh[table][row]
            assert torch.equal(new_table[row], expected), (table, key)
    # nodes: e_a, e_c, i2, u0, u1 kept; e_d, u9 new; i1's own node dropped (i1 now holds e_c's node)
    assert report.row_mapped["node_embedding.weight"] == {"kind": "node", "kept": 5, "new": 2, "dropped": 1}
    # relations: interact, interacted by, r1 and its inverse kept; r2 and its inverse new; same entity as (+inv) gone
    assert report.row_mapped["relation_projection"] == {"kind": "relation", "kept": 4, "new": 2, "dropped": 2}


def test_a_multikg4rec_checkpoint_without_its_node_keys_is_refused_with_the_reason():
    torch.manual_seed(0)
    old = _tiny_kg_model(item_entity=[0, 0, -1], triples=[(0, 0, 2)], n_entities=3, n_relations=1)
    new = _tiny_kg_model(item_entity=[0, 0, -1], triples=[(0, 0, 2)], n_entities=3, n_relations=1)
    ids = RowIds(["u0", "u1"], ["i0", "i1", "i2"], ["e_a", "e_b", "e_c"], ["r1"])
    before = _snapshot(new)
    report = apply_warm_start(new, "kgat", _source(old, "kgat", ids.user_ids, ids.item_ids), ids)
    assert not report.applied and "does not record the keys of its node rows" in report.reason
    _assert_unchanged(new, before)


# ------------------------------------------------------------------------------------------ fit and run directories
def _tiny_run(model: str = "lightgcn", max_epochs: int = 2, seed: int = 3) -> RunConfig:
    return RunConfig(model=model, model_params={"embedding_dim": 16},
                     train=TrainConfig(lr=1e-2, batch_size=256, max_epochs=max_epochs, patience=5, seed=seed,
                                       device="cpu"))


def test_fit_applies_the_warm_start_before_training_and_checkpoints_record_their_row_ids(tmp_path, planted):
    first = fit(planted, _tiny_run(), progress=False, checkpoint_path=tmp_path / "checkpoint.pt", evaluate_test=False)
    assert first.warm_start is None
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert payload["user_ids"] == planted.user_ids and payload["item_ids"] == planted.item_ids
    source, why = load_previous_run(tmp_path)
    assert source is not None, why
    # with no training step the warm-started model is the previous one: one epoch at lr 0 changes nothing
    frozen = _tiny_run(max_epochs=1)
    frozen.train.lr = 0.0
    second = fit(planted, frozen, progress=False, evaluate_test=False, warm_start=source)
    assert second.warm_start.applied and second.warm_start.row_mapped["user_embedding.weight"]["kept"] == 60
    first_model = build_model("lightgcn", ModelInputs.from_dataset(planted, torch.device("cpu")), {"embedding_dim": 16})
    first_model.load_state_dict(payload["state_dict"])
    torch.testing.assert_close(compute_representations(second.model)[0], compute_representations(first_model)[0])
    assert second.valid["recall@20"] == pytest.approx(first.history[payload["epoch"] - 1]["valid"]["recall@20"])
    refused = fit(planted, _tiny_run(model="mf", max_epochs=1), progress=False, evaluate_test=False, warm_start=source)
    assert not refused.warm_start.applied and "'lightgcn'" in refused.warm_start.reason


def test_fit_trains_a_warm_started_run_at_warm_start_lr_and_a_cold_one_at_lr(tmp_path, planted):
    """lr 0.01 and warm_start_lr 0: the warm-started run keeps the previous model exactly (no step moves it). lr 0 and
    warm_start_lr 0.01 with a refused warm start: the run ignores warm_start_lr and keeps its fresh initialisation."""
    from trainer.loop import seed_everything

    fit(planted, _tiny_run(), progress=False, checkpoint_path=tmp_path / "checkpoint.pt", evaluate_test=False)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    source, why = load_previous_run(tmp_path)
    assert source is not None, why
    run = _tiny_run(max_epochs=1)
    run.train.warm_start_lr = 0.0
    warm = fit(planted, run, progress=False, evaluate_test=False, warm_start=source)
    assert warm.warm_start.applied, warm.warm_start.reason
    for name, value in warm.model.named_parameters():
        assert torch.equal(value.detach(), payload["state_dict"][name]), name

    refused_run = _tiny_run(model="mf", max_epochs=1)
    refused_run.train.lr, refused_run.train.warm_start_lr = 0.0, 1e-2
    refused = fit(planted, refused_run, progress=False, evaluate_test=False, warm_start=source)
    assert not refused.warm_start.applied
    seed_everything(refused_run.train.seed)  # as fit seeds before building the model
    initial = build_model("mf", ModelInputs.from_dataset(planted, torch.device("cpu")), {"embedding_dim": 16})
    for name, value in refused.model.named_parameters():
        assert torch.equal(value.detach(), dict(initial.named_parameters())[name]), name


def test_a_kgat_checkpoint_records_its_node_and_relation_keys_and_a_second_fit_warm_starts_from_it(tmp_path, planted):
    run = RunConfig(model="kgat", model_params={"embedding_dim": 16},
                    train=TrainConfig(lr=1e-2, batch_size=256, max_epochs=1, seed=3, device="cpu"))
    first = fit(planted, run, progress=False, checkpoint_path=tmp_path / "checkpoint.pt", evaluate_test=False)
    source, why = load_previous_run(tmp_path)
    assert source is not None, why
    keys = first.model.row_keys(RowIds.of(planted))
    assert source.row_keys == {"node": keys["node"], "relation": keys["relation"]}  # user and item ids stored as such
    frozen = dataclasses.replace(run, train=dataclasses.replace(run.train, lr=0.0))
    second = fit(planted, frozen, progress=False, evaluate_test=False, warm_start=source)
    assert second.warm_start.applied, second.warm_start.reason
    assert second.warm_start.row_mapped["node_embedding.weight"]["kept"] == first.model.n_nodes
    torch.testing.assert_close(compute_representations(second.model)[1], compute_representations(first.model)[1])


def test_checkpoint_without_row_ids_falls_back_to_the_bundle_its_run_exported(tmp_path, planted):
    from trainer.pipeline import run_fit_config

    run_dir = tmp_path / "run"
    metrics = run_fit_config(_tiny_run(), planted, tmp_path / "planted", run_dir, progress=False)
    assert metrics["warm_start"] == {"requested": False, "applied": False,
                                     "reason": "not requested: trained from scratch"}
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    del payload["user_ids"], payload["item_ids"]  # a checkpoint written before they were recorded
    torch.save(payload, run_dir / "checkpoint.pt")
    source, why = load_previous_run(run_dir)
    assert source is not None, why
    assert source.user_ids == planted.user_ids and source.item_ids == planted.item_ids
    assert "row ids from its run's bundle" in source.origin
    saved = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**saved, "best_epoch": saved["best_epoch"] + 1}))
    source, why = load_previous_run(run_dir)  # metrics.json of another checkpoint: its bundle is not trusted
    assert source is None and "does not store the ids of its rows" in why and "another model or epoch" in why
    assert load_previous_run(tmp_path / "nothing")[1].startswith("no previous checkpoint")


# ------------------------------------------------------------------------------------------ retrain


@pytest.mark.redis
def test_second_retrain_is_warm_started_from_the_first_and_says_so(tmp_path):
    from trainer.data.features import write_mmrec_dir
    from trainer.retrain import retrain

    client = redis_client()
    data = planted_dataset(n_users=20, n_items=30, interactions_per_user=8, with_kg=False, seed=0)
    dataset_dir = write_mmrec_dir(data, tmp_path / "planted")
    config = tmp_path / "tiny.yaml"
    config.write_text("model_params: {embedding_dim: 16}\n"
                      "train: {max_epochs: 2, batch_size: 256, device: cpu}\n"
                      "export: {text_encoder: false}\n")
    prefix = f"test-warm-{uuid.uuid4().hex[:8]}:"
    stream = f"{prefix}events"
    out = tmp_path / "run"

    def run(**kwargs):
        return retrain(dataset_dir, out, redis_url=REDIS_URL, prefix=prefix, keep_bundles=0, config_path=config,
                       **kwargs)

    try:
        client.xadd(stream, {"user_id": "early", "item_id": "i1", "type": "click", "ts": "1.0"})
        first = run(warm_start=True)
        assert first["warm_start"]["requested"] and not first["warm_start"]["applied"]
        assert first["warm_start"]["reason"].startswith("no previous checkpoint")
        client.xadd(stream, {"user_id": "late", "item_id": "i2", "type": "click", "ts": "2.0"})
        client.hset(f"{prefix}items", "online-1",
                    json.dumps({"features": {"image": [0.5] * 48, "text": [0.1] * 32}, "ts": 2.0}))
        client.xadd(stream, {"user_id": "u3", "item_id": "online-1", "type": "click", "ts": "3.0"})
        second = run(warm_start=True)
        warm = second["warm_start"]
        assert warm["applied"] and warm["reason"] is None and str(out / "checkpoint.pt") in warm["source"]
        assert warm["row_mapped"]["user_embedding.weight"] == {"kind": "user", "kept": 21, "new": 1, "dropped": 0}
        assert warm["row_mapped"]["item_embedding.weight"] == {"kind": "item", "kept": 30, "new": 1, "dropped": 0}
        assert "adjacency" in warm["skipped"]
        assert json.loads((out / "metrics.json").read_text())["warm_start"] == warm
        # another model than the previous run's: refused, trained from scratch, and the report says why
        third = run(warm_start=True, model="mf")
        assert not third["warm_start"]["applied"] and "is model 'lightgcn'" in third["warm_start"]["reason"]
        assert run()["warm_start"]["requested"] is False  # the default: today's cold retrain
    finally:
        client.delete(stream, f"{prefix}items")


def test_cli_passes_the_warm_start_flag(monkeypatch, tmp_path):
    import trainer.retrain as retrain_module
    from trainer.cli import main

    calls = []
    monkeypatch.setattr(retrain_module, "retrain", lambda *args, **kwargs: calls.append(kwargs) or {})
    base = ["retrain", "--dataset", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main(base) == 0 and main([*base, "--warm-start"]) == 0 and main([*base, "--no-warm-start"]) == 0
    assert [call["warm_start"] for call in calls] == [False, True, False]


# ------------------------------------------------------------------------------------------ CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on the GPU machine, not in CI)")
@pytest.mark.parametrize("map_location", ["cpu", "cuda"])
def test_warm_start_on_cuda_from_a_checkpoint_loaded_on_either_device(map_location, tmp_path):
    data = planted_dataset(n_users=30, n_items=40, interactions_per_user=8, with_kg=False, seed=0)
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    old = build_model("lightgcn_sand", ModelInputs.from_dataset(data, cuda), {"embedding_dim": 32})
    torch.save({"state_dict": old.state_dict()}, tmp_path / "old.pt")
    state = torch.load(tmp_path / "old.pt", map_location=map_location, weights_only=False)["state_dict"]
    assert next(iter(state.values())).device.type == torch.device(map_location).type
    new_user_ids = [*data.user_ids[1:][::-1], "brand-new"]
    torch.manual_seed(1)
    new = build_model("lightgcn_sand", ModelInputs.from_dataset(data, cuda), {"embedding_dim": 32})
    fresh_new_row = new.user_embedding.weight[-1].detach().clone()
    source = _source(old, "lightgcn_sand", data.user_ids, data.item_ids, state_dict=state)
    report = apply_warm_start(new, "lightgcn_sand", source, RowIds(new_user_ids, data.item_ids))
    assert report.applied, report.reason
    assert all(p.device.type == "cuda" for p in new.parameters())
    assert torch.equal(new.user_embedding.weight[0], old.user_embedding.weight[29])
    assert torch.equal(new.user_embedding.weight[-1], fresh_new_row)
    assert torch.equal(new.item_embedding.weight, old.item_embedding.weight)
    # the same dataset and ids: exactly the previous model's representations, on the GPU
    same = build_model("lightgcn_sand", ModelInputs.from_dataset(data, cuda), {"embedding_dim": 32})
    assert apply_warm_start(same, "lightgcn_sand", source, RowIds.of(data)).applied
    for got, expected in zip(compute_representations(same), compute_representations(old), strict=True):
        assert got.device.type == "cuda" and torch.equal(got, expected)
    run = RunConfig(model="lightgcn_sand", model_params={"embedding_dim": 32},
                    train=TrainConfig(lr=1e-2, batch_size=256, max_epochs=1, patience=5, seed=3, device="cuda"))
    result = fit(data, run, progress=False, evaluate_test=False, warm_start=source)
    assert result.warm_start.applied and all(p.device.type == "cuda" for p in result.model.parameters())


def test_ids_that_do_not_fit_the_model_s_kg_refuse_instead_of_failing():
    old = _tiny_kg_model(item_entity=[0, 0, -1], triples=[(0, 0, 2)], n_entities=3, n_relations=1)
    new = _tiny_kg_model(item_entity=[0, 0, -1], triples=[(0, 0, 2)], n_entities=3, n_relations=1)
    ids = RowIds(["u0", "u1"], ["i0", "i1", "i2"], ["e_a", "e_b", "e_c"], ["r1"])
    source = _source(old, "kgat", ids.user_ids, ids.item_ids, row_keys=old.row_keys(ids))
    before = _snapshot(new)
    report = apply_warm_start(new, "kgat", source, RowIds(ids.user_ids, ids.item_ids, ids.entity_ids, []))
    assert not report.applied and "keys cannot be built" in report.reason and "relation ids" in report.reason
    _assert_unchanged(new, before)
