"""One implicit-feedback minibatch step with hand-derived gradients: the logistic, BPR and
WARP losses (plus the "L2" row penalty) have closed-form derivatives, so the step skips
autograd and hands per-row gradients straight to the row-sparse Adam."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from service.ml.flexmf.config import ImplicitLoss


def score_gradients(
    loss: ImplicitLoss,
    scores: torch.Tensor,
    positive_weight: float = 1.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of scores (B, 1 + c) (positive first, then c negatives) and its gradient with
    respect to each score, matching `losses.logistic_loss`, `pairwise_loss` and `warp_loss`."""
    positive, negative = scores[:, :1], scores[:, 1:]
    grad = torch.empty_like(scores)
    if loss == "logistic":
        total = scores.numel()
        value = positive_weight * F.softplus(-positive).sum() + F.softplus(negative).sum()
        torch.sigmoid(negative, out=grad[:, 1:])
        torch.sigmoid(-positive, out=grad[:, :1])
        grad[:, :1] *= -positive_weight
        return value / total, grad.div_(total)
    margin = negative - positive
    pairs = margin.numel()
    if loss == "pairwise":
        value = F.softplus(margin).sum() / pairs
        pair_grad = torch.sigmoid(margin).div_(pairs)
    else:
        assert weights is not None
        value = (F.softplus(margin) * weights).sum() / pairs
        pair_grad = torch.sigmoid(margin).mul_(weights).div_(pairs)
    grad[:, 1:] = pair_grad
    grad[:, :1] = -pair_grad.sum(1, keepdim=True)
    return value, grad


def with_ones(rows: torch.Tensor, width: int, ones: bool) -> torch.Tensor:
    """The first `width` columns of rows (..., w), then a column of ones when `ones`."""
    if not ones:
        return rows[..., :width].contiguous()
    if rows.shape[-1] == width + 1:
        out = rows.clone()  # a contiguous copy, then one column: cheaper than a strided copy
        out[..., width] = 1.0
        return out
    return F.pad(rows[..., :width], (0, 1), value=1.0)


def row_gradients(
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    score_grad: torch.Tensor,
    embedding_size: int,
    user_bias: bool,
    item_bias: bool,
    regularization: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the user rows (B, w_u) and item rows (B, 1 + c, w_i) of a batch, given
    the gradient of each score (B, 1 + c) and the "L2" penalty's strength (the mean squared
    row norm of the users, of the positives and of the negatives, each times `regularization`)."""
    k = embedding_size
    batch, width = score_grad.shape
    count = width - 1
    # a score is user·item over the embeddings plus each side's bias: against the other side's
    # embedding with a 1 in its bias column, each side's whole row gradient is one product
    user_side = with_ones(user_rows, k, item_bias)  # (B, w_i)
    item_side = with_ones(item_rows, k, user_bias)  # (B, 1 + c, w_u)
    # (batched matrix products of this shape are slower on CPU than a product and a sum)
    products = score_grad.unsqueeze(2) * item_side
    user_grad = products[:, 0].clone()
    for column in range(1, width):  # a few column adds beat a sum over the middle dimension
        user_grad.add_(products[:, column])
    user_grad.add_(user_rows, alpha=2.0 * regularization / batch)
    penalty = item_rows.new_full((1, width, 1), 2.0 * regularization / (batch * count))
    penalty[0, 0, 0] = 2.0 * regularization / batch
    item_grad = (item_rows * penalty).addcmul_(score_grad.unsqueeze(2), user_side.unsqueeze(1))
    return user_grad, item_grad


def batch_scores(
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    embedding_size: int,
    user_bias: bool,
    item_bias: bool,
) -> torch.Tensor:
    """Scores (B, 1 + c) of each user row (B, w_u) against its item rows (B, 1 + c, w_i)."""
    scores = (item_rows * with_ones(user_rows, embedding_size, item_bias).unsqueeze(1)).sum(-1)
    if user_bias:
        scores = scores + user_rows[:, embedding_size : embedding_size + 1]
    return scores
