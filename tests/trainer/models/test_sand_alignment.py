"""SAND's alignment and distancing losses on tiny hand-checked tensors."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.models.base import ModelInputError
from trainer.modules.alignment import (
    CLUBEstimator,
    GenericAlignment,
    ModalSplitProjection,
    SeparateAlignmentDistancing,
    UniqueDistancing,
    infonce_loss,
    neg_l2_distance,
    solosim_loss,
)


def test_solosim_matches_hand_computed_value():
    # Unit vectors: a = [e1, e2], p = [e1, (e1 + e2)/√2]; τ = 0.5.
    anchor = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # norms differ: the loss uses cosines
    positive = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    # row 0 logits: [1, c] / τ ; row 1 logits: [0, c] / τ ; targets on the diagonal.
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(2 * c)))
    row1 = -math.log(math.exp(2 * c) / (math.exp(0.0) + math.exp(2 * c)))
    assert solosim_loss(anchor, positive, 0.5).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_solosim_is_log_batch_size_for_identical_rows_and_small_for_matched_pairs():
    constant = torch.ones(4, 3)
    assert solosim_loss(constant, constant, 0.2).item() == pytest.approx(math.log(4), rel=1e-5)
    basis = torch.eye(4)
    assert solosim_loss(basis, basis, 0.05).item() < 1e-6


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_solosim_value_and_gradients_match_cross_entropy_in_float64(batch):
    torch.manual_seed(batch)
    anchor = torch.randn(batch, 5, dtype=torch.float64, requires_grad=True)
    positive = torch.randn(batch, 5, dtype=torch.float64, requires_grad=True)
    loss = solosim_loss(anchor, positive, 0.2)
    grads = torch.autograd.grad(loss, (anchor, positive))
    logits = (torch.nn.functional.normalize(anchor, dim=1) / 0.2) @ torch.nn.functional.normalize(positive, dim=1).T
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(batch))
    expected_grads = torch.autograd.grad(expected, (anchor, positive))
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_solosim_second_backward_is_refused_not_silently_wrong():
    anchor, positive = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    loss = solosim_loss(anchor, positive, 0.2)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_infonce_is_symmetric_mean_of_both_directions():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    expected = 0.5 * (solosim_loss(a, b, 0.3) + solosim_loss(b, a, 0.3))
    torch.testing.assert_close(infonce_loss(a, b, 0.3), expected)
    torch.testing.assert_close(infonce_loss(a, b, 0.3), infonce_loss(b, a, 0.3))
    assert not torch.allclose(solosim_loss(a, b, 0.3), solosim_loss(b, a, 0.3))


def test_neg_l2_distance_hand_values_and_bounds():
    generic = torch.tensor([[1.0, 0.0], [0.0, 5.0], [2.0, 0.0]])
    unique = torch.tensor([[1.0, 0.0], [3.0, 0.0], [-7.0, 0.0]])
    # per row on the unit sphere: 0 (same direction), 2 (orthogonal), 4 (opposite)
    assert neg_l2_distance(generic, unique).item() == pytest.approx(-(0 + 2 + 4) / 3)
    huge = neg_l2_distance(generic, unique * 1e6)
    assert -4.0 <= huge.item() <= 0.0


def _fit_club(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> CLUBEstimator:
    torch.manual_seed(0)
    estimator = CLUBEstimator(x.shape[1], y.shape[1], hidden_dim=32)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        (-estimator.log_likelihood(x, y)).backward()
        optimizer.step()
    return estimator


def test_club_is_near_zero_for_independent_and_large_for_identical_gaussians():
    # q is fitted on one sample and the bound evaluated on a fresh one (on the fitting sample itself a
    # flexible q overfits and the estimate of independent variables drifts above 0).
    torch.manual_seed(1)
    x, y = torch.randn(1024, 4), torch.randn(1024, 4)
    x_new, y_new = torch.randn(4096, 4), torch.randn(4096, 4)
    independent = _fit_club(x, y).mi_upper_bound(x_new, y_new).item()
    identical = _fit_club(x, x.clone()).mi_upper_bound(x_new, x_new.clone()).item()
    assert abs(independent) < 0.1
    assert identical > 5.0


def test_club_closed_form_negative_term_equals_all_pairs_mean():
    torch.manual_seed(2)
    estimator = CLUBEstimator(3, 2, hidden_dim=8)
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    mu, logvar = estimator.mu(x), estimator.logvar(x)
    log_q = -((mu[:, None, :] - y[None, :, :]) ** 2) / 2 / logvar.exp()[:, None, :]  # [i, j, d]
    expected = (log_q.diagonal(dim1=0, dim2=1).T.sum(-1) - log_q.sum(-1).mean(dim=1)).mean()
    torch.testing.assert_close(estimator.mi_upper_bound(x, y), expected, rtol=1e-5, atol=1e-6)


def test_frozen_club_bound_sends_gradient_to_inputs_only():
    estimator = CLUBEstimator(2, 2, hidden_dim=4)
    x = torch.randn(8, 2, requires_grad=True)
    y = torch.randn(8, 2, requires_grad=True)
    estimator.mi_upper_bound(x, y, frozen=True).backward()
    assert x.grad is not None and y.grad is not None
    assert all(p.grad is None for p in estimator.parameters())


def test_alignment_averages_over_all_modality_pairs():
    torch.manual_seed(3)
    generic = {name: torch.randn(6, 4) for name in ("a", "b", "c")}
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    expected = sum(solosim_loss(generic[x], generic[y], 0.2) for x, y in pairs) / 3
    torch.testing.assert_close(GenericAlignment("solosim", 0.2)(generic), expected)
    assert GenericAlignment("none", 0.2)(generic).item() == 0.0
    with pytest.raises(ModelInputError, match="align must be one of"):
        GenericAlignment("cosine", 0.2)


def test_distancing_sums_modalities_and_estimator_loss_only_for_mi():
    torch.manual_seed(4)
    generic = {name: torch.randn(5, 3) for name in ("a", "b")}
    unique = {name: torch.randn(5, 3) for name in ("a", "b")}
    l2 = UniqueDistancing("l2", ["a", "b"], 3, 8)
    expected = neg_l2_distance(generic["a"], unique["a"]) + neg_l2_distance(generic["b"], unique["b"])
    torch.testing.assert_close(l2(generic, unique), expected)
    assert l2.estimator_loss(generic, unique) is None and not list(l2.parameters())
    mi = UniqueDistancing("mi", ["a", "b"], 3, 8)
    assert set(mi.estimators) == {"a", "b"} and mi.estimator_loss(generic, unique).dim() == 0
    with pytest.raises(ModelInputError, match="distance must be one of"):
        UniqueDistancing("kl", ["a"], 3, 8)


def test_objective_uses_distinct_batch_items_and_weights():
    torch.manual_seed(5)
    features = {"a": torch.randn(10, 7), "b": torch.randn(10, 5)}
    projection = ModalSplitProjection(features, part_dim=2)
    parts = projection(features)
    assert parts["a"][0].shape == (10, 2) and parts["b"][1].shape == (10, 2)
    assert ModalSplitProjection.concatenate(parts).shape == (10, 8)
    objective = SeparateAlignmentDistancing(
        ["a", "b"], 2, "infonce", "l2", alpha=0.5, beta=2.0, temperature=0.2
    )
    items = SeparateAlignmentDistancing.batch_items(torch.tensor([3, 1, 3]), torch.tensor([1, 7]))
    assert items.tolist() == [1, 3, 7]
    terms = objective.loss_terms(parts, items)
    generic = {m: parts[m][0][items] for m in parts}
    unique = {m: parts[m][1][items] for m in parts}
    torch.testing.assert_close(terms["align"], 0.5 * infonce_loss(generic["a"], generic["b"], 0.2))
    expected_distance = 2.0 * sum(neg_l2_distance(generic[m], unique[m]) for m in parts)
    torch.testing.assert_close(terms["distance"], expected_distance)
    assert objective.estimator_loss_terms(projection, features) == {}
    ablated = SeparateAlignmentDistancing(["a", "b"], 2, "none", "none", 0.5, 2.0, 0.2)
    assert ablated.loss_terms(parts, items) == {}


def test_objective_leaves_items_without_features_out_of_their_modality_terms():
    torch.manual_seed(6)
    parts = {m: (torch.randn(6, 3), torch.randn(6, 3)) for m in ("a", "b", "c")}
    has_features = {
        "a": torch.tensor([True, True, False, True, True, True]),
        "b": torch.tensor([True, True, True, True, False, True]),
        "c": torch.ones(6, dtype=torch.bool),
    }
    objective = SeparateAlignmentDistancing(
        ["a", "b", "c"], 3, "solosim", "mi", alpha=1.0, beta=1.0, temperature=0.2, has_features=has_features
    )
    items = torch.tensor([0, 2, 4, 5])  # 2 has no a, 4 has no b
    terms = objective.loss_terms(parts, items)

    def rows(m, kept, part=0):
        return parts[m][part][torch.tensor(kept)]

    expected_align = (
        solosim_loss(rows("a", [0, 5]), rows("b", [0, 5]), 0.2)
        + solosim_loss(rows("a", [0, 4, 5]), rows("c", [0, 4, 5]), 0.2)
        + solosim_loss(rows("b", [0, 2, 5]), rows("c", [0, 2, 5]), 0.2)
    ) / 3
    torch.testing.assert_close(terms["align"], expected_align)
    kept = {"a": [0, 4, 5], "b": [0, 2, 5], "c": [0, 2, 4, 5]}
    estimators = objective.distancing.estimators
    expected_distance = sum(estimators[m].mi_upper_bound(rows(m, k, 1), rows(m, k)) for m, k in kept.items())
    torch.testing.assert_close(terms["distance"], expected_distance)
    expected_nll = -sum(estimators[m].log_likelihood(rows(m, k, 1), rows(m, k)) for m, k in kept.items())
    torch.testing.assert_close(objective.estimator_loss_terms_from_parts(parts, items)["club_nll"], expected_nll)
    # a pair (or a modality) without any row contributes 0 instead of a NaN
    lonely = objective.loss_terms(parts, torch.tensor([2, 4]))
    assert torch.isfinite(lonely["align"]) and torch.isfinite(lonely["distance"])
