"""Row-sparse Adam: updates only the embedding rows a minibatch touched (SparseAdam's lazy
semantics) with a handful of fused tensor ops instead of sparse-tensor bookkeeping."""

from __future__ import annotations

import math

import torch
from torch import nn

from service.ml.flexmf.model import take_rows


class RowSparseAdam:
    """Lazy Adam over row-indexed parameters; `gather` records the rows of a batch."""

    def __init__(
        self,
        params: list[nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.moments = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for p in params}
        self._pending: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []

    def gather(self, param: nn.Parameter, index: torch.Tensor) -> torch.Tensor:
        """Rows of `param` at `index` (any shape), differentiable through a leaf of the
        distinct rows; gather each parameter at most once per step."""
        rows, inverse = torch.unique(index, return_inverse=True)
        leaf = param.detach().index_select(0, rows).requires_grad_()
        self._pending.append((param, rows, leaf))
        return take_rows(leaf, inverse)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the rows gathered for the previous step."""
        self._pending.clear()

    @torch.no_grad()
    def step(self) -> None:
        """Apply one Adam update to the gathered rows that received gradients."""
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr * math.sqrt(1 - beta2**self.steps) / (1 - beta1**self.steps)
        for param, rows, leaf in self._pending:
            grad = leaf.grad
            if grad is None:
                continue
            exp_avg, exp_sq = self.moments[id(param)]
            m = exp_avg.index_select(0, rows).mul_(beta1).add_(grad, alpha=1 - beta1)
            v = exp_sq.index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            exp_avg.index_copy_(0, rows, m)
            exp_sq.index_copy_(0, rows, v)
            update = m.div_(v.sqrt_().add_(self.eps)).mul_(-step_size)
            # rows are distinct, so a copy of the updated rows is exact and cheaper than index_add
            param.index_copy_(0, rows, leaf.detach().add_(update))
        self._pending.clear()
