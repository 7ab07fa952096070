"""Training losses of the implicit FlexMF model over positive (B,) and negative (B, c) scores."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def logistic_loss(
    positive: torch.Tensor, negative: torch.Tensor, positive_weight: float = 1.0
) -> torch.Tensor:
    """Pointwise log loss: positives labelled 1 (weighted), negatives 0, averaged over scores."""
    total = positive_weight * F.softplus(-positive).sum() + F.softplus(negative).sum()
    return total / (positive.numel() + negative.numel())


def pairwise_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """BPR: mean of -log sigmoid(positive - negative) over all pairs."""
    return F.softplus(negative - positive.unsqueeze(1)).mean()


def warp_loss(
    positive: torch.Tensor, negative: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Pairwise log loss of each pair weighted by its estimated-rank weight (B, c)."""
    return (F.softplus(negative - positive.unsqueeze(1)) * weights).mean()
