"""One user's implicit fold-in at several regularization strengths at once (the calibration of
`flexmf-implicit`): the same damped Newton iterations as `implicit_fold_in`, each strength
stepping and stopping on its own, batched over the strengths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from service.ml.device import seeded_generator
from service.ml.flexmf.foldin import fold_in_features, implicit_fold_in

BACKTRACKING_ROUNDS = 20
"""Halvings of a Newton step before a strength stops (as in `implicit_fold_in`)."""


class _LogisticGrid:
    """The regularized expected logistic loss of one user (`_ExpectedLoss` with the item biases
    as a frozen last coordinate, as `_OffsetLoss` adds them) for a batch of strengths."""

    def __init__(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        q: torch.Tensor,
        *,
        positive_weight: float,
        negative_count: int,
    ) -> None:
        self.pos, self.neg, self.q = pos, neg, q
        self.w_pos = positive_weight
        self.w_neg = negative_count * float(len(pos))

    @staticmethod
    def _full(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], dim=1)

    def value(self, z: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
        """Losses (G,) at the rows of z (G, n), strengths reg (G,)."""
        full = self._full(z)
        s_pos, s_neg = full @ self.pos.T, full @ self.neg.T
        loss = self.w_pos * F.softplus(-s_pos).sum(1)
        loss = loss + self.w_neg * (self.q * F.softplus(s_neg)).sum(1)
        return loss + 0.5 * reg * (full * full).sum(1) - 0.5 * reg

    def derivatives(self, z: torch.Tensor, reg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients (G, n) and Hessians (G, n, n) over the free coordinates."""
        n = z.shape[1]
        full = self._full(z)
        p_pos, p_neg = torch.sigmoid(full @ self.pos.T), torch.sigmoid(full @ self.neg.T)
        grad = (self.w_neg * self.q * p_neg) @ self.neg
        grad = grad - (self.w_pos * (1 - p_pos)) @ self.pos
        c_pos = self.w_pos * p_pos * (1 - p_pos)
        c_neg = self.w_neg * self.q * p_neg * (1 - p_neg)
        pos, neg = self.pos[:, :n], self.neg[:, :n]
        hess = (c_pos.unsqueeze(2) * pos).transpose(1, 2) @ pos
        hess = hess + (c_neg.unsqueeze(2) * neg).transpose(1, 2) @ neg
        eye = torch.eye(n, dtype=z.dtype, device=z.device)
        return grad[:, :n] + reg.unsqueeze(1) * z, hess + reg.view(-1, 1, 1) * eye


def _newton(objective: _LogisticGrid, reg: torch.Tensor, n: int, steps: int) -> torch.Tensor:
    """`implicit_fold_in`'s damped Newton iterations from zero, for every strength at once."""
    z = torch.zeros(len(reg), n, dtype=torch.float64, device=reg.device)
    current = objective.value(z, reg)
    active = torch.arange(len(reg), device=reg.device)
    for _ in range(steps):
        if len(active) == 0:
            break
        grad, hess = objective.derivatives(z[active], reg[active])
        step = torch.linalg.solve(hess, grad)
        scale = torch.ones(len(active), 1, dtype=torch.float64, device=reg.device)
        pending = torch.ones(len(active), dtype=torch.bool, device=reg.device)
        accepted = z[active].clone()
        values = current[active].clone()
        for _ in range(BACKTRACKING_ROUNDS):
            candidate = z[active] - scale * step
            value = objective.value(candidate, reg[active])
            taken = pending & (value <= current[active])
            accepted[taken], values[taken] = candidate[taken], value[taken]
            pending &= ~taken
            if not bool(pending.any()):
                break
            scale[pending] *= 0.5
        moved = ~pending  # a strength whose step found no decrease stops where it is
        improvement = current[active] - values
        z[active], current[active] = accepted, values
        done = ~moved | (improvement < 1e-10 * (1.0 + values.abs()))
        active = active[~done]
    return z


def implicit_fold_in_grid(
    item_factors: torch.Tensor,
    item_bias: torch.Tensor,
    positives: torch.Tensor,
    negative_weights: torch.Tensor,
    *,
    loss: str,
    fit_bias: bool,
    positive_weight: float,
    negative_count: int,
    regularizations: Sequence[float],
    steps: int,
    seed: int,
    max_negatives: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`implicit_fold_in` of one user's positives at each strength, the negatives' subsample
    drawn from a generator seeded with `seed` (as each of those calls would); returns x (G, k)
    and b (G,)."""
    device = item_factors.device
    k = item_factors.shape[1]
    if loss != "logistic":  # the pairwise loss's positive-negative pairs: one strength at a time
        rows = [
            implicit_fold_in(
                item_factors,
                item_bias,
                positives,
                negative_weights,
                loss=loss,
                fit_bias=fit_bias,
                positive_weight=positive_weight,
                negative_count=negative_count,
                regularization=reg,
                steps=steps,
                generator=seeded_generator(seed, device),
                max_negatives=max_negatives,
            )
            for reg in regularizations
        ]
        return torch.stack([x for x, _ in rows]), torch.stack([b for _, b in rows])
    pos_f, neg_f, q, pos_off, neg_off = fold_in_features(
        item_factors,
        item_bias,
        positives,
        negative_weights,
        pairwise=False,
        with_bias=fit_bias,
        generator=seeded_generator(seed, device),
        max_negatives=max_negatives,
    )
    objective = _LogisticGrid(
        torch.cat([pos_f, pos_off.unsqueeze(1)], dim=1),
        torch.cat([neg_f, neg_off.unsqueeze(1)], dim=1),
        q,
        positive_weight=positive_weight,
        negative_count=negative_count,
    )
    reg = torch.tensor(list(regularizations), dtype=torch.float64, device=device)
    z = _newton(objective, reg, pos_f.shape[1], steps)
    bias = z[:, k] if fit_bias else torch.zeros(len(reg), dtype=torch.float64, device=device)
    return z[:, :k].to(item_factors.dtype), bias.to(item_factors.dtype)
