"""SAND's reusable pieces: generic/unique split projection, cross-modal alignment, unique-part distancing.

Any backbone that has per-modality item features can use them (see ``trainer/models/sand.py`` for SAND
itself and ``trainer/models/lightgcn_sand.py`` for LightGCN + projected features):

* :class:`ModalSplitProjection` maps each modality's raw features [n, d_m] to a generic part E_g^m and a
  unique part E_q^m, both [n, part_dim];
* :class:`GenericAlignment` aligns the generic parts of every pair of modalities over the items of a batch
  (SoloSim: one-directional in-batch softmax; InfoNCE: the symmetric version);
* :class:`UniqueDistancing` pushes each modality's unique part away from its own generic part, either by
  minimising the CLUB mutual-information upper bound (with one Gaussian q-network per modality, fitted in
  its own optimiser step on the same (generic, unique) pairs) or by the bounded negative squared ℓ2
  distance between the L2-normalised parts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.models.base import ModelInputError

ALIGN_KINDS = ("solosim", "infonce", "none")
DISTANCE_KINDS = ("mi", "l2", "none")


# ---------------------------------------------------------------------------------------------- losses


def solosim_loss(anchor: Tensor, positive: Tensor, temperature: float) -> Tensor:
    """SoloSim: -mean_i log softmax_j(cos(a_i, p_j) / τ) at j = i, over the rows of a batch.

    Args:
        anchor, positive: float [B, d]; row i of both describes the same item.
        temperature: τ > 0.

    Returns:
        scalar; log(B) for uninformative (constant) similarities, → 0 when each row is closest to its pair.
    """
    return _DiagonalSoftmaxLoss.apply(F.normalize(anchor, dim=1) / temperature, F.normalize(positive, dim=1))


class _DiagonalSoftmaxLoss(torch.autograd.Function):
    """-mean_i log softmax_j(a_i · p_j) at j = i for a, p float [B, d]: ``F.cross_entropy(a @ pᵀ, arange(B))``.

    The same function with one [B, B] buffer instead of four (logits, log-softmax, the one-hot gradient and
    the log-softmax gradient): the softmax is formed in place in the logits and reused as the gradient
    (softmax - I) / B. SAND takes it over ~1,500 distinct batch items every step, where the allocations and
    passes over the B² entries cost more than the d = 16 products. Backward may run only once (the saved
    softmax becomes the gradient; a second backward raises autograd's in-place modification error).
    """

    @staticmethod
    def forward(ctx, anchor: Tensor, positive: Tensor) -> Tensor:  # type: ignore[override]
        logits = anchor @ positive.T  # [B, B]
        matched = logits.diagonal().clone()
        row_max = logits.amax(dim=1, keepdim=True)
        softmax = logits.sub_(row_max).exp_()
        row_sum = softmax.sum(dim=1, keepdim=True)
        softmax.div_(row_sum)
        ctx.save_for_backward(anchor, positive, softmax)
        return (row_max + row_sum.log()).squeeze(1).sub_(matched).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        anchor, positive, softmax = ctx.saved_tensors
        softmax.diagonal().sub_(1)
        softmax.mul_(grad / softmax.shape[0])  # d loss / d logits
        return softmax @ positive, softmax.T @ anchor


def infonce_loss(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE: the mean of SoloSim in both directions. Inputs float [B, d]; returns a scalar."""
    return 0.5 * (solosim_loss(first, second, temperature) + solosim_loss(second, first, temperature))


def neg_l2_distance(generic: Tensor, unique: Tensor) -> Tensor:
    """-mean_i ||ĝ_i - q̂_i||² of the L2-normalised rows; bounded in [-4, 0].

    The raw -||q - g||² has no lower bound: the model would minimise it by inflating the norm of the
    unique part without limit (its gradient grows with the distance). On the unit sphere the term is
    2·cos(g, q) - 2, so distancing can only rotate the unique part away from the generic one.

    Args:
        generic, unique: float [B, d].
    """
    return -(F.normalize(generic, dim=1) - F.normalize(unique, dim=1)).pow(2).sum(dim=1).mean()


class CLUBEstimator(nn.Module):
    """Variational Gaussian q_φ(y | x) = N(μ(x), diag σ²(x)) for the CLUB MI upper bound (Cheng et al. 2020).

    ``x`` is a modality's unique part, ``y`` its generic part. Fit it by maximising
    :meth:`log_likelihood` (with x, y detached) in its own optimiser step; minimise
    :meth:`mi_upper_bound` (with the estimator frozen) in the model's step, on the same pairs.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim))
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim), nn.Tanh()
        )

    def _gaussian(self, x: Tensor, frozen: bool) -> tuple[Tensor, Tensor]:
        if not frozen:
            return self.mu(x), self.logvar(x)
        params = {name: p.detach() for name, p in self.named_parameters()}
        mu = torch.func.functional_call(
            self.mu, {k[3:]: v for k, v in params.items() if k.startswith("mu.")}, (x,)
        )
        logvar = torch.func.functional_call(
            self.logvar, {k[7:]: v for k, v in params.items() if k.startswith("logvar.")}, (x,)
        )
        return mu, logvar

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean over rows of log q(y_i | x_i) up to constants: Σ_d -(y - μ)²/σ² - log σ². x, y float [B, *]."""
        mu, logvar = self._gaussian(x, frozen=False)
        return (-((y - mu) ** 2) / logvar.exp() - logvar).sum(dim=1).mean()

    def mi_upper_bound(self, x: Tensor, y: Tensor, frozen: bool = True) -> Tensor:
        """CLUB: mean_i log q(y_i|x_i) - mean_{i,j} log q(y_j|x_i), the inner mean over all B rows.

        The all-pairs mean is computed in closed form, mean_j (y_j - μ_i)² = (μ_i - ȳ)² + var(y),
        so the cost is O(B·d), not O(B²·d). With ``frozen`` gradients reach x and y but not the estimator.
        """
        mu, logvar = self._gaussian(x, frozen=frozen)
        precision = 0.5 / logvar.exp()
        positive = -((mu - y) ** 2) * precision
        y_mean = y.mean(dim=0, keepdim=True)
        y_var = y.var(dim=0, unbiased=False, keepdim=True)
        negative = -((mu - y_mean) ** 2 + y_var) * precision
        return (positive - negative).sum(dim=1).mean()


# --------------------------------------------------------------------------------------------- modules


def select_modalities(
    features: Mapping[str, Tensor], modalities: Sequence[str] | None, feature_dims: Mapping[str, int] | None
) -> dict[str, int]:
    """The modalities a model uses, sorted by name, with their feature dimensions.

    Args:
        features: available modality -> float [n_items, d_m].
        modalities: names to use (None: all available).
        feature_dims: dimensions declared in the config (None: accept the actual ones).

    Raises:
        ModelInputError: fewer than two modalities, a missing modality, or a declared dimension that
            differs from the actual feature matrix.
    """
    names = sorted(features) if modalities is None else sorted(modalities)
    missing = [name for name in names if name not in features]
    if missing:
        raise ModelInputError(f"modalities {missing} requested but the dataset has only {sorted(features)}")
    if len(names) < 2:
        raise ModelInputError(
            f"SAND needs at least 2 modalities, got {names} (dataset has {sorted(features)})"
        )
    dims = {name: int(features[name].shape[1]) for name in names}
    for name, declared in (feature_dims or {}).items():
        if name not in dims:
            raise ModelInputError(
                f"feature_dims declares modality {name!r} which is not used; used: {sorted(dims)}"
            )
        if int(declared) != dims[name]:
            raise ModelInputError(
                f"modality {name!r}: config declares feature dimension {declared} but the features are "
                f"[{features[name].shape[0]}, {dims[name]}]"
            )
    return dims


class _ConstantFeatureLinear(torch.autograd.Function):
    """x Wᵀ + b for CONSTANT features x [N, d] (no gradient) of which a transposed copy x_t [d, N] is kept.

    Same function as ``F.linear`` (in x's precision, output float32 + float32 bias); the weight gradient is
    computed as (x_t · G)ᵀ instead of Gᵀ · x: the same sums (equal up to float rounding), in a layout that
    the CPU GEMM library runs markedly faster when N ≫ out_features (every item's 4096-d feature row against
    a 2p-column projection). ``tests/benchmarks/bench_sand.py --models ... sand_l2_no_tcopy`` times SAND with
    and without it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, x_t: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x_t)
        if x.dtype == weight.dtype:
            return torch.addmm(bias, x, weight.t())
        return (x @ weight.to(x.dtype).t()).float() + bias

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x_t,) = ctx.saved_tensors
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_weight = (x_t @ grad.to(x_t.dtype)).t().float().contiguous()
        if ctx.needs_input_grad[3]:
            grad_bias = grad.sum(dim=0)
        return None, None, grad_weight, grad_bias


class _FeatureSplitter(nn.Module):
    """One modality: standardise with fixed item statistics (÷√d), project linearly, split into (generic, unique)."""

    def __init__(self, features: Tensor, part_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", features.mean(dim=0, keepdim=True).detach().clone())
        # Standardised rows have squared norm ≈ d; dividing by √d makes them ≈ unit norm, so with Xavier
        # weights the projected parts start at the scale of Xavier-initialised ID embeddings.
        scale = features.shape[1] ** -0.5
        self.register_buffer("inv_std", scale / features.std(dim=0, keepdim=True).clamp_min(1e-6).detach())
        self.linear = nn.Linear(features.shape[1], 2 * part_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.part_dim = part_dim

    def standardize(self, features: Tensor) -> Tensor:
        return (features - self.mean) * self.inv_std

    def forward(
        self, features: Tensor, standardized: bool = False, features_t: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """features [B, d] (float32, or reduced precision if already standardised) -> two float32 [B, p].

        Standardised features stored in a reduced precision (``feature_dtype: bfloat16``) are projected by a
        GEMM in that precision (weight cast to it, gradient cast back to float32), then the output returns to
        float32 and the float32 bias is added. ``features_t``: a contiguous transposed copy [d, B] of already
        standardised constant ``features``; with it the weight gradient uses the faster layout of
        :class:`_ConstantFeatureLinear`.
        """
        x = features if standardized else self.standardize(features)
        if features_t is not None:
            if not standardized or x.requires_grad or features_t.shape != x.shape[::-1]:
                raise ValueError(
                    "features_t must be the [d, B] transpose of standardised constant features "
                    f"(got features {tuple(x.shape)}, features_t {tuple(features_t.shape)})"
                )
            projected = _ConstantFeatureLinear.apply(x, features_t, self.linear.weight, self.linear.bias)
        elif x.dtype == self.linear.weight.dtype:
            projected = self.linear(x)
        else:
            projected = F.linear(x, self.linear.weight.to(x.dtype)).float() + self.linear.bias
        return projected[:, : self.part_dim], projected[:, self.part_dim :]


class ModalSplitProjection(nn.Module):
    """Per modality m: raw features [B, d_m] -> (E_g^m [B, p], E_q^m [B, p]).

    Features are standardised with per-column statistics of the training item features (stored as
    buffers, so cold-start items get exactly the same preprocessing), then projected by a learned linear
    map to 2p columns, the first p being the generic part and the last p the unique part.
    """

    def __init__(self, features: Mapping[str, Tensor], part_dim: int) -> None:
        super().__init__()
        self.modalities = sorted(features)
        self.part_dim = part_dim
        self.splitters = nn.ModuleDict(
            {name: _FeatureSplitter(features[name], part_dim) for name in self.modalities}
        )

    def forward(
        self,
        features: Mapping[str, Tensor],
        standardized: bool = False,
        features_t: Mapping[str, Tensor] | None = None,
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """{modality: float [B, d_m]} -> {modality: (generic [B, p], unique [B, p])}.

        With ``standardized`` the inputs already went through :meth:`standardize` (models precompute it
        once for their constant training features instead of every batch). ``features_t``: optional
        {modality: contiguous transpose [d_m, B]} of those constant standardised features (faster weight
        gradient, see :class:`_ConstantFeatureLinear`).
        """
        return {
            name: self.splitters[name](
                features[name], standardized, None if features_t is None else features_t[name]
            )
            for name in self.modalities
        }

    def standardize(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The fixed per-column standardisation applied before the projection; {m: [B, d_m]}."""
        return {name: self.splitters[name].standardize(features[name]) for name in self.modalities}

    @staticmethod
    def concatenate(parts: Mapping[str, tuple[Tensor, Tensor]]) -> Tensor:
        """[g_1 ‖ q_1 ‖ g_2 ‖ q_2 ‖ ...] in sorted modality order: float [B, 2·M·p]."""
        return torch.cat([torch.cat(parts[name], dim=1) for name in sorted(parts)], dim=1)


class GenericAlignment(nn.Module):
    """Mean alignment loss over all unordered modality pairs (a < b in sorted order) of generic parts."""

    def __init__(self, kind: str, temperature: float) -> None:
        super().__init__()
        if kind not in ALIGN_KINDS:
            raise ModelInputError(f"align must be one of {ALIGN_KINDS}, got {kind!r}")
        if temperature <= 0:
            raise ModelInputError(f"temperature must be > 0, got {temperature}")
        self.kind = kind
        self.temperature = temperature

    def forward(self, generic: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None) -> Tensor:
        """{modality: generic part [B, p] of the batch's items} -> scalar (0 when ``kind`` is none).

        ``present``: optional {modality: bool [B]}, whether each row's item has features in that modality; a pair
        of modalities is aligned on the rows present in both (an item without features in a modality has only the
        projection of an empty feature row there, the same for every such item, which is nothing to align with).
        A pair with no such row contributes 0.
        """
        names = sorted(generic)
        first = generic[names[0]]
        if self.kind == "none":
            return first.new_zeros(())
        loss_fn = solosim_loss if self.kind == "solosim" else infonce_loss
        pairs = list(itertools.combinations(names, 2))
        total = first.new_zeros(())
        for a, b in pairs:
            x, y = generic[a], generic[b]
            if present is not None:
                keep = present[a] & present[b]
                x, y = x[keep], y[keep]
                if x.shape[0] == 0:
                    continue
            total = total + loss_fn(x, y, self.temperature)
        return total / len(pairs)


class UniqueDistancing(nn.Module):
    """Σ_m distance term between E_q^m and E_g^m of the batch's items (CLUB MI bound or -ℓ2)."""

    def __init__(self, kind: str, modalities: Sequence[str], part_dim: int, hidden_dim: int) -> None:
        super().__init__()
        if kind not in DISTANCE_KINDS:
            raise ModelInputError(f"distance must be one of {DISTANCE_KINDS}, got {kind!r}")
        self.kind = kind
        self.estimators = nn.ModuleDict(
            {name: CLUBEstimator(part_dim, part_dim, hidden_dim) for name in modalities}
            if kind == "mi"
            else {}
        )

    def forward(self, generic: Mapping[str, Tensor], unique: Mapping[str, Tensor]) -> Tensor:
        """Sum over modalities; inputs {modality: [B_m, p]} (generic and unique of a modality on the same rows; a
        modality with no rows contributes 0); estimators frozen (their step is separate)."""
        names = sorted(generic)
        total = generic[names[0]].new_zeros(())
        if self.kind == "none":
            return total
        for name in names:
            if generic[name].shape[0] == 0:
                continue
            if self.kind == "l2":
                total = total + neg_l2_distance(generic[name], unique[name])
            else:
                total = total + self.estimators[name].mi_upper_bound(unique[name], generic[name], frozen=True)
        return total

    def estimator_loss(self, generic: Mapping[str, Tensor], unique: Mapping[str, Tensor]) -> Tensor | None:
        """Negative log-likelihood of q_φ(E_g^m | E_q^m) summed over modalities (inputs detached; a modality with
        no rows contributes 0), or None."""
        if self.kind != "mi":
            return None
        names = sorted(generic)
        total = generic[names[0]].new_zeros(())
        for name in names:
            if generic[name].shape[0] > 0:
                estimator = self.estimators[name]
                total = total - estimator.log_likelihood(unique[name].detach(), generic[name].detach())
        return total


class SeparateAlignmentDistancing(nn.Module):
    """SAND's plug-in objective for any backbone with a :class:`ModalSplitProjection`.

    ``loss_terms`` gives {"align": α·align, "distance": β·Σ_m distance} on the distinct batch items;
    ``estimator_loss_terms`` gives the CLUB q-networks' loss for the auxiliary optimiser step (empty
    unless ``distance`` is mi); ``estimator_parameters`` are the parameters that step trains.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        part_dim: int,
        align: str,
        distance: str,
        alpha: float,
        beta: float,
        temperature: float,
        club_hidden_dim: int | None = None,
        has_features: Mapping[str, Tensor] | None = None,
    ) -> None:
        """``has_features``: optional {modality: bool [n_items]}, whether an item's feature row in that
        modality is not all zero (e.g. a movie without KG facts). Such an item enters neither the alignment
        of a pair with that modality nor that modality's distancing (nor the CLUB fit): its generic and unique
        parts there are the projection of an empty row, one constant for all such items, so aligning them
        would pull all those items' other generic parts towards one shared point. None, or every item with
        features: all batch items are used."""
        super().__init__()
        self.alignment = GenericAlignment(align, temperature)
        self.distancing = UniqueDistancing(distance, modalities, part_dim, club_hidden_dim or 2 * part_dim)
        self.alpha = alpha
        self.beta = beta
        self.modalities = sorted(modalities)
        self.masks_features = has_features is not None and not all(
            bool(has_features[name].all()) for name in self.modalities
        )
        if self.masks_features:
            for name in self.modalities:
                self.register_buffer(f"has_features_{name}", has_features[name].bool().clone(), persistent=False)

    @staticmethod
    def batch_items(pos_items: Tensor, neg_items: Tensor | None = None) -> Tensor:
        """Distinct positive items of a BPR batch (and its negatives when given), int64 [B']."""
        return torch.unique(pos_items if neg_items is None else torch.cat([pos_items, neg_items]))

    def present(self, items: Tensor | None) -> dict[str, Tensor] | None:
        """{modality: bool [B']} whether each of ``items`` (all items if None) has features there; None when every
        item has them."""
        if not self.masks_features:
            return None
        masks = {name: getattr(self, f"has_features_{name}") for name in self.modalities}
        return masks if items is None else {name: mask[items] for name, mask in masks.items()}

    @staticmethod
    def _rows_with_features(
        parts: Mapping[str, Tensor], present: Mapping[str, Tensor] | None
    ) -> dict[str, Tensor]:
        return dict(parts) if present is None else {name: rows[present[name]] for name, rows in parts.items()}

    def loss_terms(self, parts: Mapping[str, tuple[Tensor, Tensor]], items: Tensor) -> dict[str, Tensor]:
        """parts: {modality: (E_g, E_q) [n_items, p]} of all items; items: int64 [B'] rows to use (of modality m,
        only those with features in m, see ``has_features``)."""
        generic = {name: pair[0][items] for name, pair in parts.items()}
        unique = {name: pair[1][items] for name, pair in parts.items()}
        present = self.present(items)
        terms: dict[str, Tensor] = {}
        if self.alignment.kind != "none" and self.alpha > 0:
            terms["align"] = self.alpha * self.alignment(generic, present)
        if self.distancing.kind != "none" and self.beta > 0:
            terms["distance"] = self.beta * self.distancing(
                self._rows_with_features(generic, present), self._rows_with_features(unique, present)
            )
        return terms

    def estimator_parameters(self) -> list[nn.Parameter]:
        return list(self.distancing.estimators.parameters())

    @property
    def has_estimator_step(self) -> bool:
        """Whether :meth:`estimator_loss_terms` returns anything (CLUB distancing with β > 0)."""
        return self.distancing.kind == "mi" and self.beta > 0

    def estimator_loss_terms(
        self,
        projection: ModalSplitProjection,
        batch_features: Mapping[str, Tensor],
        standardized: bool = False,
        items: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One CLUB fitting loss on the (E_g^m, E_q^m) pairs of the batch items' features {m: [B', d_m]};
        ``items`` int64 [B']: which items those rows are (needed to leave out items without features, see
        ``has_features``; the main step's :meth:`loss_terms` uses the same rows)."""
        if not self.has_estimator_step:
            return {}
        if self.masks_features and items is None:
            raise ValueError("this objective leaves out items without features: pass the batch's items")
        with torch.no_grad():
            parts = projection(batch_features, standardized=standardized)
        return self._estimator_terms(parts, None if items is None else self.present(items))

    def estimator_loss_terms_from_parts(
        self, parts: Mapping[str, tuple[Tensor, Tensor]], items: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The same loss from already projected parts {m: (E_g, E_q) [n, p]} (rows ``items`` if given; detached)."""
        if not self.has_estimator_step:
            return {}
        if items is not None:
            parts = {name: (pair[0][items], pair[1][items]) for name, pair in parts.items()}
        return self._estimator_terms(parts, self.present(items))

    def _estimator_terms(
        self, parts: Mapping[str, tuple[Tensor, Tensor]], present: Mapping[str, Tensor] | None
    ) -> dict[str, Tensor]:
        generic = self._rows_with_features({name: pair[0].detach() for name, pair in parts.items()}, present)
        unique = self._rows_with_features({name: pair[1].detach() for name, pair in parts.items()}, present)
        return {"club_nll": self.distancing.estimator_loss(generic, unique)}
