"""The learned parameters of a FlexMF model: embeddings and optional biases."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Gather = Callable[[nn.Parameter, torch.Tensor], torch.Tensor]
"""Differentiable row lookup: the rows of a parameter at an index tensor of any shape."""


def dense_gather(param: nn.Parameter, index: torch.Tensor) -> torch.Tensor:
    """Row lookup whose gradient is a dense tensor of the parameter's shape."""
    return take_rows(param, index)


def take_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of `table` at an index tensor of any shape (index_select: a fast index_add backward)."""
    rows = table.index_select(0, index.reshape(-1))
    return rows.view(*index.shape, *table.shape[1:])


class FlexMFParameters(nn.Module):
    """User/item embeddings and biases; `forward` gathers rows and returns raw scores."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int,
        *,
        user_bias: bool,
        item_bias: bool,
        init_scale: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.user_factors = nn.Parameter(
            torch.randn(n_users, embedding_size, generator=generator) * init_scale
        )
        self.item_factors = nn.Parameter(
            torch.randn(n_items, embedding_size, generator=generator) * init_scale
        )
        self.user_bias = nn.Parameter(torch.zeros(n_users, 1)) if user_bias else None
        self.item_bias = nn.Parameter(torch.zeros(n_items, 1)) if item_bias else None

    @property
    def n_users(self) -> int:
        """Number of user rows."""
        return int(self.user_factors.shape[0])

    @property
    def n_items(self) -> int:
        """Number of item rows."""
        return int(self.item_factors.shape[0])

    def users(
        self, users: torch.Tensor, gather: Gather = dense_gather
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings and biases (or None) of user indices, differentiable."""
        emb = gather(self.user_factors, users)
        bias = None if self.user_bias is None else gather(self.user_bias, users).squeeze(-1)
        return emb, bias

    def items(
        self, items: torch.Tensor, gather: Gather = dense_gather
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings and biases (or None) of item indices, differentiable."""
        emb = gather(self.item_factors, items)
        bias = None if self.item_bias is None else gather(self.item_bias, items).squeeze(-1)
        return emb, bias

    def user_bias_vector(self) -> torch.Tensor:
        """All user biases (n_users,), zeros when the model has none."""
        if self.user_bias is None:
            return torch.zeros(self.n_users, device=self.user_factors.device)
        return self.user_bias.detach().squeeze(-1)

    def item_bias_vector(self) -> torch.Tensor:
        """All item biases (n_items,), zeros when the model has none."""
        if self.item_bias is None:
            return torch.zeros(self.n_items, device=self.item_factors.device)
        return self.item_bias.detach().squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Raw scores (without global bias) of aligned user and item index tensors."""
        u_emb, u_bias = self.users(users)
        i_emb, i_bias = self.items(items)
        score = (u_emb * i_emb).sum(-1)
        if u_bias is not None:
            score = score + u_bias
        if i_bias is not None:
            score = score + i_bias
        return score

    def zero_unseen(self, user_counts: torch.Tensor, item_counts: torch.Tensor) -> None:
        """Zero the embeddings of users and items without training interactions."""
        with torch.no_grad():
            self.user_factors[user_counts == 0] = 0.0
            self.item_factors[item_counts == 0] = 0.0
