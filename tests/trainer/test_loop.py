"""Training loop: negatives, early stopping on valid, the test split read exactly once."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import trainer.loop as loop
from trainer.config import RunConfig, TrainConfig
from trainer.data.synthetic import planted_dataset


def test_negative_sampler_never_returns_a_training_item():
    data = planted_dataset(n_users=50, n_items=60, interactions_per_user=30, seed=3)
    sampler = loop.NegativeSampler(data.train, np.random.default_rng(0))
    users = np.repeat(np.arange(50), 200)
    negatives = sampler.sample(users)
    train = data.train.tocsr()
    assert not np.asarray(train[users, negatives]).any()
    assert len(np.unique(negatives)) > 50  # uniform over the non-interacted items, not a few


def test_negative_sampler_rejects_a_user_with_every_item():
    import scipy.sparse as sp

    full = sp.csr_matrix(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="every item"):
        loop.NegativeSampler(full, np.random.default_rng(0))


def test_test_split_is_read_once_after_selection_on_valid(monkeypatch):
    data = planted_dataset(n_users=60, n_items=80, seed=1)
    calls = []
    real = loop.evaluate_full_ranking

    def spy(users, items, ground_truth, mask, **kwargs):
        calls.append("test" if ground_truth is data.test else "valid" if ground_truth is data.valid else "?")
        return real(users, items, ground_truth, mask, **kwargs)

    monkeypatch.setattr(loop, "evaluate_full_ranking", spy)
    run = RunConfig(model="mf", train=TrainConfig(lr=0.01, batch_size=256, max_epochs=6, patience=2, device="cpu"))
    result = loop.fit(data, run, progress=False)
    assert calls[-1] == "test" and calls.count("test") == 1
    assert set(calls[:-1]) == {"valid"}
    assert 1 <= result.best_epoch <= 6
    assert result.history[result.best_epoch - 1]["valid"]["recall@20"] == result.valid["recall@20"]


def test_early_stopping_stops_after_patience_without_gain():
    data = planted_dataset(n_users=60, n_items=80, seed=1)
    run = RunConfig(model="mf", train=TrainConfig(lr=0.0, batch_size=256, max_epochs=50, patience=3, device="cpu"))
    result = loop.fit(data, run, progress=False)  # lr 0: valid never improves after epoch 1
    assert result.best_epoch == 1
    assert len(result.history) == 4


def test_select_device():
    assert loop.select_device("cpu") == torch.device("cpu")
    assert loop.select_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            loop.select_device("cuda")
    with pytest.raises(ValueError):
        loop.select_device("tpu")


def test_time_budget_stops_training_after_the_epoch_that_crosses_it(monkeypatch):
    data = planted_dataset(n_users=60, n_items=80, seed=1)
    clock = iter(range(0, 10_000, 10))  # every perf_counter() call advances 10 s
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    run = RunConfig(model="mf", train=TrainConfig(lr=0.01, batch_size=256, max_epochs=50, patience=50, eval_every=5,
                                                  max_seconds=25, device="cpu"))
    result = loop.fit(data, run, progress=False)
    assert len(result.history) == 1  # epoch 1 already took 20 s; by the check 30 s have passed
    assert "valid" in result.history[0]  # evaluated although eval_every is 5
    assert result.best_epoch == 1 and result.test


def test_non_finite_loss_stops_training_with_the_epoch_and_terms(monkeypatch):
    data = planted_dataset(n_users=60, n_items=80, seed=1)
    from trainer.models.mf import MFBPR as MF

    real = MF.loss_terms

    def broken(self, batch):
        terms = real(self, batch)
        terms["bpr"] = terms["bpr"] * float("nan")
        return terms

    monkeypatch.setattr(MF, "loss_terms", broken)
    run = RunConfig(model="mf", train=TrainConfig(lr=0.01, batch_size=256, max_epochs=3, device="cpu"))
    with pytest.raises(FloatingPointError, match="epoch 1.*bpr"):
        loop.fit(data, run, progress=False)


@pytest.mark.parametrize("model_name", ["ludp", "sand"])
def test_trainer_adam_matches_the_single_tensor_adam_bit_for_bit(model_name):
    from trainer.models.base import ModelInputs
    from trainer.models.registry import build_model

    data = planted_dataset(n_users=60, n_items=80, seed=2)
    inputs = ModelInputs.from_dataset(data, torch.device("cpu"))
    trained = []
    for make in (loop.make_adam, lambda params, **kw: torch.optim.Adam(params, foreach=False, **kw)):
        torch.manual_seed(0)
        model = build_model(model_name, inputs, {"embedding_dim": 16})
        aux_ids = {id(p) for p in model.auxiliary_parameters()}
        params = [p for p in model.parameters() if id(p) not in aux_ids]
        initial = [p.detach().clone() for p in params]
        optimizer = make(params, lr=0.01, weight_decay=1e-4)
        sampler = loop.NegativeSampler(data.train, np.random.default_rng(0))
        for batch in sampler.epoch_batches(128, torch.device("cpu")):
            loss = sum(model.loss_terms(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        assert all(not torch.equal(p, start) for p, start in zip(params, initial, strict=True))  # all trained
        trained.append(params)
    assert len(trained[0]) > 2
    for fast, reference in zip(*trained, strict=True):
        assert torch.equal(fast, reference)


@pytest.mark.parametrize(("emptied", "evaluate_test"), [("valid", True), ("valid", False), ("test", True)])
def test_fit_refuses_an_empty_valid_or_test_split(emptied, evaluate_test):
    data = planted_dataset(n_users=20, n_items=30, seed=1)
    data = dataclasses.replace(data, **{emptied: sp.csr_matrix(getattr(data, emptied).shape, dtype=np.float32)})
    run = RunConfig(model="mf", train=TrainConfig(max_epochs=1, device="cpu"))
    with pytest.raises(loop.DatasetError, match=f"empty {emptied} split"):
        loop.fit(data, run, progress=False, evaluate_test=evaluate_test)


def test_hyperparameter_search_needs_no_test_split():
    data = planted_dataset(n_users=20, n_items=30, seed=1)
    data = dataclasses.replace(data, test=sp.csr_matrix(data.test.shape, dtype=np.float32))
    result = loop.fit(data, RunConfig(model="mf", train=TrainConfig(max_epochs=1, device="cpu")), progress=False,
                 evaluate_test=False)
    assert result.best_epoch == 1


def _denormal_product() -> float:
    """1e-30 * 1e-10 in float32: 1e-40 is a denormal (float32's smallest normal is ~1.2e-38)."""
    return float(torch.tensor([1e-30], dtype=torch.float32) * torch.tensor([1e-10], dtype=torch.float32))


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero flags")
def test_denormals_are_flushed_inside_the_block_and_restored_after():
    assert not loop.denormals_are_flushed() and _denormal_product() > 0
    with loop.denormals_flushed(torch.device("cpu")):
        assert loop.denormals_are_flushed() and _denormal_product() == 0.0
    assert not loop.denormals_are_flushed() and _denormal_product() > 0
    with loop.denormals_flushed(torch.device("cpu"), enabled=False):
        assert not loop.denormals_are_flushed()
    with loop.denormals_flushed(torch.device("cuda")):  # not a CPU: the CPU's mode is left alone
        assert not loop.denormals_are_flushed()


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero flags")
def test_denormals_flushed_leaves_a_mode_set_by_the_caller_on():
    torch.set_flush_denormal(True)
    try:
        with loop.denormals_flushed(torch.device("cpu")):
            assert loop.denormals_are_flushed()
        assert loop.denormals_are_flushed()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero flags")
@pytest.mark.parametrize("flush_denormals", [True, False])
def test_fit_trains_and_evaluates_with_train_flush_denormals(monkeypatch, flush_denormals):
    data = planted_dataset(n_users=60, n_items=80, seed=1)
    modes = []
    real = loop.evaluate_full_ranking

    def spy(*args, **kwargs):
        modes.append(loop.denormals_are_flushed())
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_full_ranking", spy)
    run = RunConfig(model="mf", train=TrainConfig(lr=0.01, batch_size=256, max_epochs=2, device="cpu",
                                                  flush_denormals=flush_denormals))
    loop.fit(data, run, progress=False)
    assert modes == [flush_denormals] * 3  # two valid epochs and the test read
    assert not loop.denormals_are_flushed()  # restored when fit returns
