"""Row-sparse Adam: updates only the embedding rows a minibatch touched (SparseAdam's lazy
semantics) with a handful of fused tensor ops instead of sparse-tensor bookkeeping."""

from __future__ import annotations

import torch
from torch import nn

from service.ml.flexmf.model import take_rows


def distinct_rows(index: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values of a flat row index (ascending) and each entry's position among them,
    as `torch.unique(index, return_inverse=True)` gives them."""
    if index.device.type != "cpu":
        rows, inverse = torch.unique(index, return_inverse=True)
        return rows, inverse
    # on CPU a mark-and-count over the table's rows is cheaper than unique's sort
    mark = torch.zeros(n_rows, dtype=torch.bool)
    mark[index] = True
    rows = mark.nonzero().squeeze(1)
    slot = torch.empty(n_rows, dtype=torch.long)
    slot[rows] = torch.arange(len(rows))
    return rows, slot[index]


class RowSparseAdam:
    """Lazy Adam over row-indexed parameters; `gather` records the rows of a batch for autograd,
    `accumulate` takes per-entry gradients computed by hand."""

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
        self._gradients: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []

    def gather(self, param: nn.Parameter, index: torch.Tensor) -> torch.Tensor:
        """Rows of `param` at `index` (any shape), differentiable through a leaf of the
        distinct rows; gather each parameter at most once per step."""
        rows, inverse = distinct_rows(index.reshape(-1), int(param.shape[0]))
        leaf = param.detach().index_select(0, rows).requires_grad_()
        self._pending.append((param, rows, leaf))
        return take_rows(leaf, inverse.view(index.shape))

    @torch.no_grad()
    def accumulate(self, param: nn.Parameter, index: torch.Tensor, grads: torch.Tensor) -> None:
        """Record gradients (N, width) of the rows of `param` at a flat index (N,), summed per
        distinct row, for the next `step`; accumulate each parameter at most once per step."""
        rows, inverse = distinct_rows(index, int(param.shape[0]))
        summed = grads.new_zeros((len(rows), grads.shape[1])).index_add_(0, inverse, grads)
        self._gradients.append((param, rows, summed))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the rows gathered or accumulated for the previous step."""
        self._pending.clear()
        self._gradients.clear()

    @torch.no_grad()
    def step(self) -> None:
        """Apply one Adam update to the rows that received gradients."""
        self.steps += 1
        beta1, beta2 = self.betas
        step = torch.tensor(float(self.steps))
        updates = [(p, rows, leaf.grad) for p, rows, leaf in self._pending]
        for param, rows, grad in updates + self._gradients:
            if grad is None:
                continue
            exp_avg, exp_sq = self.moments[id(param)]
            values = param.detach().index_select(0, rows)
            m, v = exp_avg.index_select(0, rows), exp_sq.index_select(0, rows)
            # one fused pass over the gathered rows (Adam with bias correction at `steps`)
            torch._fused_adam_(
                [values],
                [grad.contiguous()],
                [m],
                [v],
                [],
                [step.to(values.device)],
                lr=self.lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            exp_avg.index_copy_(0, rows, m)
            exp_sq.index_copy_(0, rows, v)
            param.detach().index_copy_(0, rows, values)
        self._pending.clear()
        self._gradients.clear()
