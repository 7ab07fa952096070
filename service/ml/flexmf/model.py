"""The learned parameters of a FlexMF model: embeddings and optional biases."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Gather = Callable[[nn.Parameter, torch.Tensor], torch.Tensor]
"""Differentiable row lookup: the rows of a parameter at an index tensor of any shape."""


def take_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of `table` at an index tensor of any shape (index_select: a fast index_add backward)."""
    rows = table.index_select(0, index.reshape(-1))
    return rows.view(*index.shape, *table.shape[1:])


def dense_gather(param: nn.Parameter, index: torch.Tensor) -> torch.Tensor:
    """Row lookup whose gradient is a dense tensor of the parameter's shape."""
    return take_rows(param, index)


class FlexMFParameters(nn.Module):
    """User and item tables: each row holds the embedding, then the bias when there is one.

    Keeping a row's bias beside its embedding makes one lookup (and one sparse update) per
    table and batch instead of two.
    """

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
        self.embedding_size = embedding_size
        self.has_user_bias = user_bias
        self.has_item_bias = item_bias
        user = torch.randn(n_users, embedding_size, generator=generator) * init_scale
        item = torch.randn(n_items, embedding_size, generator=generator) * init_scale
        if user_bias:
            user = torch.cat([user, torch.zeros(n_users, 1)], dim=1)
        if item_bias:
            item = torch.cat([item, torch.zeros(n_items, 1)], dim=1)
        self.user_table = nn.Parameter(user)
        self.item_table = nn.Parameter(item)

    @property
    def n_users(self) -> int:
        """Number of user rows."""
        return int(self.user_table.shape[0])

    @property
    def n_items(self) -> int:
        """Number of item rows."""
        return int(self.item_table.shape[0])

    @property
    def item_factors(self) -> torch.Tensor:
        """All item embeddings (n_items, k), a view without gradient."""
        return self.item_table.detach()[:, : self.embedding_size]

    def _split(self, rows: torch.Tensor, biased: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.embedding_size
        return rows[..., :k], (rows[..., k] if biased else None)

    def users(
        self, users: torch.Tensor, gather: Gather = dense_gather
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings and biases (or None) of user indices, differentiable."""
        return self._split(gather(self.user_table, users), self.has_user_bias)

    def items(
        self, items: torch.Tensor, gather: Gather = dense_gather
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings and biases (or None) of item indices, differentiable."""
        return self._split(gather(self.item_table, items), self.has_item_bias)

    def item_bias_or_none(self) -> torch.Tensor | None:
        """All item biases (n_items,) without gradient, or None."""
        return self.item_table.detach()[:, self.embedding_size] if self.has_item_bias else None

    def user_factors(self) -> torch.Tensor:
        """All user embeddings (n_users, k) without gradient."""
        return self.user_table.detach()[:, : self.embedding_size]

    def user_bias_vector(self) -> torch.Tensor:
        """All user biases (n_users,), zeros when the model has none."""
        if not self.has_user_bias:
            return torch.zeros(self.n_users, device=self.user_table.device)
        return self.user_table.detach()[:, self.embedding_size]

    def item_bias_vector(self) -> torch.Tensor:
        """All item biases (n_items,), zeros when the model has none."""
        bias = self.item_bias_or_none()
        return torch.zeros(self.n_items, device=self.item_table.device) if bias is None else bias

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
            self.user_table[user_counts == 0] = 0.0
            self.item_table[item_counts == 0] = 0.0
