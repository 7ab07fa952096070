"""The output range of explicit models: an optional scaled sigmoid into the rating range."""

from __future__ import annotations

import math

import torch


def output_range(
    values: torch.Tensor,
    *,
    sigmoid_range: bool,
    rating_range: tuple[float, float] | None,
    range_margin: float,
) -> tuple[float | None, float | None, float]:
    """(low, high, global offset) for training ratings `values`: the sigmoid's range (None
    without `sigmoid_range`) and the raw score that maps to the mean rating."""
    mean = float(values.double().mean())
    if not sigmoid_range:
        return None, None, mean
    if rating_range is not None:
        low, high = rating_range
    else:
        low = float(values.min()) - range_margin
        high = float(values.max()) + range_margin
    if not low < mean < high:
        raise ValueError(f"rating_range ({low}, {high}) must contain the mean rating {mean}")
    unit = (mean - low) / (high - low)
    return low, high, math.log(unit / (1 - unit))


def into_range(raw: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    """Scaled sigmoid of raw scores into (low, high); identity when there is no range."""
    if low is None or high is None:
        return raw
    return low + (high - low) * torch.sigmoid(raw)
