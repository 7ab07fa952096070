"""Fold-in for FlexMF: user vectors for unseen histories against fixed item parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn import functional as F


def ridge_solve(
    factors: torch.Tensor,
    targets: torch.Tensor,
    regularization: torch.Tensor | float,
    weights: torch.Tensor | None = None,
    fit_bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize Σ w (t - x·y - b)² + λ(|x|² + b²) in closed form; returns x (k,) and b."""
    k = factors.shape[1]
    design = torch.cat([factors, torch.ones_like(factors[:, :1])], dim=1) if fit_bias else factors
    design = design.double()
    weighted = design if weights is None else design * weights.double().unsqueeze(1)
    gram = weighted.T @ design
    rhs = weighted.T @ targets.double()
    reg = torch.as_tensor(regularization, dtype=torch.float64, device=gram.device)
    gram = gram + reg * torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    solution = torch.linalg.solve(gram, rhs)
    bias = solution[k] if fit_bias else torch.zeros((), dtype=torch.float64, device=gram.device)
    return solution[:k].to(factors.dtype), bias.to(factors.dtype)


def ridge_solve_grid(
    factors: torch.Tensor, targets: torch.Tensor, regularizations: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ridge_solve` (with bias) for several λ at once; returns x (L, k) and b (L,)."""
    k = factors.shape[1]
    design = torch.cat([factors, torch.ones_like(factors[:, :1])], dim=1).double()
    gram = design.T @ design
    rhs = design.T @ targets.double()
    eye = torch.eye(k + 1, dtype=torch.float64, device=gram.device)
    systems = gram.unsqueeze(0) + regularizations.double().view(-1, 1, 1) * eye
    solution = torch.linalg.solve(systems, rhs.expand(len(regularizations), -1))
    return solution[:, :k].to(factors.dtype), solution[:, k].to(factors.dtype)


def sigmoid_range_solve(
    factors: torch.Tensor,
    offsets: torch.Tensor,
    ratings: torch.Tensor,
    low: float,
    high: float,
    regularization: torch.Tensor | float,
    iterations: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares of ratings against low + (high-low)·sigmoid(offset + x·y + b), by Gauss-Newton
    (ridge solves of the linearized model, started from the solve in logit space)."""
    span = high - low
    unit = ((ratings - low) / span).clamp(1e-3, 1 - 1e-3)
    x, b = ridge_solve(factors, torch.logit(unit) - offsets, regularization)
    for _ in range(iterations):
        raw = offsets + factors @ x + b
        prob = torch.sigmoid(raw)
        slope = span * prob * (1 - prob)
        residual = ratings - (low + span * prob)
        # linearize around the current point: Δpred ≈ slope·(Δx·y + Δb)
        dx, db = ridge_delta(factors, residual, slope, regularization, x, b)
        x, b = x + dx, b + db
    return x, b


def ridge_delta(
    factors: torch.Tensor,
    residual: torch.Tensor,
    slope: torch.Tensor,
    regularization: torch.Tensor | float,
    x: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Gauss-Newton step of the regularized sigmoid least squares."""
    k = factors.shape[1]
    design = torch.cat([factors, torch.ones_like(factors[:, :1])], dim=1).double()
    jac = design * slope.double().unsqueeze(1)
    reg = torch.as_tensor(regularization, dtype=torch.float64, device=design.device)
    current = torch.cat([x, b.reshape(1)]).double()
    gram = jac.T @ jac + reg * torch.eye(k + 1, dtype=torch.float64, device=design.device)
    rhs = jac.T @ residual.double() - reg * current
    step = torch.linalg.solve(gram, rhs)
    return step[:k].to(factors.dtype), step[k].to(factors.dtype)


MAX_PAIRS = 1 << 22
"""Largest positives-by-negatives matrix a pairwise fold-in builds; beyond it negatives are a
seeded subsample."""


class _ExpectedLoss:
    """The implicit training loss of one user in expectation over the negative distribution,
    with its gradient and Hessian in closed form (a convex function of the user vector)."""

    def __init__(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        q: torch.Tensor,
        *,
        pairwise: bool,
        positive_weight: float,
        negative_count: int,
        regularization: float,
    ) -> None:
        self.pos, self.neg, self.q = pos, neg, q
        self.pairwise = pairwise
        self.w_pos = positive_weight
        self.w_neg = negative_count * (1.0 if pairwise else float(len(pos)))
        self.reg = regularization

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """The regularized loss at z (user vector with bias as the last entry)."""
        s_pos, s_neg = self.pos @ z, self.neg @ z
        if self.pairwise:
            diff = s_neg.unsqueeze(0) - s_pos.unsqueeze(1)
            loss = self.w_neg * (F.softplus(diff) * self.q).sum()
        else:
            loss = self.w_pos * F.softplus(-s_pos).sum()
            loss = loss + self.w_neg * (self.q * F.softplus(s_neg)).sum()
        return loss + 0.5 * self.reg * (z * z).sum()

    def derivatives(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient and Hessian at z."""
        s_pos, s_neg = self.pos @ z, self.neg @ z
        eye = torch.eye(len(z), dtype=z.dtype, device=z.device)
        if self.pairwise:
            prob = torch.sigmoid(s_neg.unsqueeze(0) - s_pos.unsqueeze(1))
            g = self.w_neg * prob * self.q
            a = self.w_neg * prob * (1 - prob) * self.q
            grad = self.neg.T @ g.sum(0) - self.pos.T @ g.sum(1)
            cross = self.pos.T @ (a @ self.neg)
            hess = (self.neg.T * a.sum(0)) @ self.neg + (self.pos.T * a.sum(1)) @ self.pos
            hess = hess - cross - cross.T
        else:
            p_pos, p_neg = torch.sigmoid(s_pos), torch.sigmoid(s_neg)
            grad = self.neg.T @ (self.w_neg * self.q * p_neg)
            grad = grad - self.pos.T @ (self.w_pos * (1 - p_pos))
            c_pos = self.w_pos * p_pos * (1 - p_pos)
            c_neg = self.w_neg * self.q * p_neg * (1 - p_neg)
            hess = (self.pos.T * c_pos) @ self.pos + (self.neg.T * c_neg) @ self.neg
        return grad + self.reg * z, hess + self.reg * eye


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restoring the count after): for
    loops of small products, where a second thread buys nothing and each product would pay
    a thread barrier (long waits on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fold_in_features(
    item_factors: torch.Tensor,
    item_bias: torch.Tensor,
    positives: torch.Tensor,
    negative_weights: torch.Tensor,
    *,
    pairwise: bool,
    with_bias: bool,
    generator: torch.Generator,
    max_negatives: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An `implicit_fold_in` problem: the positives' and negatives' features [y (, 1)] in
    float64, the negatives' normalized sampling weights (a seeded subsample beyond
    `max_negatives`) and the positives' and negatives' item biases."""
    device = item_factors.device
    mask = torch.zeros(len(item_factors), dtype=torch.bool, device=device)
    mask[positives] = True
    negatives = torch.nonzero(~mask).squeeze(1)
    q = negative_weights.double()[negatives]
    keep = len(negatives) if max_negatives is None else max_negatives
    if pairwise:
        keep = min(keep, max(1, MAX_PAIRS // len(positives)))
    if keep < len(negatives):
        pick = torch.randperm(len(negatives), generator=generator, device=device)[:keep]
        negatives, q = negatives[pick], q[pick]
    q = q / q.sum().clamp(min=1e-12)

    # features [y, 1] and offsets folded in as a fixed extra coordinate: score = f·[x, b, 1]
    def features(index: torch.Tensor) -> torch.Tensor:
        parts = [item_factors[index].double()]
        if with_bias:
            parts.append(torch.ones(len(index), 1, dtype=torch.float64, device=device))
        return torch.cat(parts, dim=1)

    pos_off, neg_off = item_bias[positives].double(), item_bias[negatives].double()
    return features(positives), features(negatives), q, pos_off, neg_off


def implicit_fold_in(
    item_factors: torch.Tensor,
    item_bias: torch.Tensor,
    positives: torch.Tensor,
    negative_weights: torch.Tensor,
    *,
    loss: str,
    fit_bias: bool,
    positive_weight: float,
    negative_count: int,
    regularization: float,
    steps: int,
    generator: torch.Generator,
    max_negatives: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize the model's expected training loss for one user's positives over the user
    vector (and bias), negatives weighted by the sampling distribution: damped Newton steps
    from zero, deterministic. More than `max_negatives` negatives are a seeded subsample.
    Returns x (k,) and b."""
    k = item_factors.shape[1]
    device = item_factors.device
    pairwise = loss != "logistic"
    with_bias = fit_bias and not pairwise
    pos_f, neg_f, q, pos_off, neg_off = fold_in_features(
        item_factors,
        item_bias,
        positives,
        negative_weights,
        pairwise=pairwise,
        with_bias=with_bias,
        generator=generator,
        max_negatives=max_negatives,
    )
    objective = _OffsetLoss(
        _ExpectedLoss(
            pos_f,
            neg_f,
            q,
            pairwise=pairwise,
            positive_weight=positive_weight,
            negative_count=negative_count,
            regularization=regularization,
        ),
        pos_off,
        neg_off,
    )
    z = torch.zeros(pos_f.shape[1], dtype=torch.float64, device=device)
    current = objective.value(z)
    for _ in range(steps):
        grad, hess = objective.derivatives(z)
        step = torch.linalg.solve(hess, grad)
        scale = 1.0
        for _ in range(20):  # backtracking: the Newton step of a convex loss may overshoot
            candidate = z - scale * step
            value = objective.value(candidate)
            if value <= current:
                break
            scale *= 0.5
        else:
            break
        z, improvement, current = candidate, float(current - value), value
        if improvement < 1e-10 * (1.0 + abs(float(current))):
            break
    bias = z[k] if with_bias else torch.zeros((), dtype=torch.float64, device=device)
    return z[:k].to(item_factors.dtype), bias.to(item_factors.dtype)


class _OffsetLoss:
    """`_ExpectedLoss` with fixed per-item offsets (item biases) added to every score."""

    def __init__(self, inner: _ExpectedLoss, pos_off: torch.Tensor, neg_off: torch.Tensor) -> None:
        self.inner = inner
        self.pos_off, self.neg_off = pos_off, neg_off
        # an extra coordinate of value 1 whose weight is frozen at 1 carries the offsets
        n = inner.pos.shape[1]
        inner.pos = torch.cat([inner.pos, pos_off.unsqueeze(1)], dim=1)
        inner.neg = torch.cat([inner.neg, neg_off.unsqueeze(1)], dim=1)
        self.n = n

    def _full(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, torch.ones(1, dtype=z.dtype, device=z.device)])

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """Loss at z (regularization excludes the frozen coordinate)."""
        return self.inner.value(self._full(z)) - 0.5 * self.inner.reg

    def derivatives(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient and Hessian over the free coordinates."""
        grad, hess = self.inner.derivatives(self._full(z))
        return grad[: self.n], hess[: self.n, : self.n]
