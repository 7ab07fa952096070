"""Fold-in for FlexMF: user vectors for unseen histories against fixed item parameters."""

from __future__ import annotations

import torch


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize the model's expected training loss for one user's positives over the user
    vector (and bias), negatives weighted by the sampling distribution; deterministic (L-BFGS
    from zero). Returns x (k,) and b."""
    k = item_factors.shape[1]
    factors = item_factors.double()
    bias = item_bias.double()
    mask = torch.zeros(len(factors), dtype=torch.bool, device=factors.device)
    mask[positives] = True
    negatives = torch.nonzero(~mask).squeeze(1)
    q = negative_weights.double()[negatives]
    q = q / q.sum().clamp(min=1e-12)
    n_pos = len(positives)
    if loss != "logistic" and n_pos * len(negatives) > MAX_PAIRS:
        keep = max(1, MAX_PAIRS // n_pos)
        pick = torch.randperm(len(negatives), generator=generator, device=factors.device)[:keep]
        negatives, q = negatives[pick], q[pick]
        q = q / q.sum()
    pos_f, pos_b = factors[positives], bias[positives]
    neg_f, neg_b = factors[negatives], bias[negatives]
    z = torch.zeros(k + 1, dtype=torch.float64, device=factors.device, requires_grad=True)

    def objective() -> torch.Tensor:
        x, b = z[:k], z[k] if fit_bias else z[k] * 0.0
        s_pos = pos_f @ x + pos_b + b
        s_neg = neg_f @ x + neg_b + b
        if loss == "logistic":
            value = positive_weight * torch.nn.functional.softplus(-s_pos).sum()
            value = value + negative_count * n_pos * (q * torch.nn.functional.softplus(s_neg)).sum()
        else:
            diff = s_neg.unsqueeze(0) - s_pos.unsqueeze(1)
            value = negative_count * (torch.nn.functional.softplus(diff) * q).sum()
        return value + 0.5 * regularization * (z * z).sum()

    optimizer = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = objective()
        value.backward()  # type: ignore[no-untyped-call]
        return value

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    result = z.detach()
    b_out = result[k] if fit_bias else torch.zeros((), dtype=torch.float64, device=result.device)
    return result[:k].to(item_factors.dtype), b_out.to(item_factors.dtype)
