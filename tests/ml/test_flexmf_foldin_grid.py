"""The calibration's fold-in over a grid of strengths against `implicit_fold_in` per strength."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from service.ml.flexmf.foldin import implicit_fold_in
from service.ml.flexmf.foldin_grid import implicit_fold_in_grid

GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
SEED = 11


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: extra intra-op threads only add synchronization."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _items(n_items: int = 300, k: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Item factors and biases of a trained-looking model, and popularity weights."""
    generator = torch.Generator().manual_seed(3)
    factors = torch.randn(n_items, k, generator=generator) * 0.8
    bias = torch.randn(n_items, generator=generator) * 0.5
    popularity = torch.rand(n_items, generator=generator) ** 4 + 0.01
    return factors, bias, popularity


@pytest.mark.parametrize(
    ("loss", "fit_bias", "popular", "max_negatives", "steps"),
    [
        ("logistic", True, False, 64, 20),
        ("logistic", True, True, None, 20),
        ("logistic", False, False, 64, 20),
        ("logistic", True, False, 64, 2),  # stopped by the step limit, not by convergence
        ("pairwise", False, False, 64, 20),
    ],
)
def test_grid_fold_in_matches_one_fold_in_per_strength(
    loss: str, fit_bias: bool, popular: bool, max_negatives: int | None, steps: int
) -> None:
    factors, bias, popularity = _items()
    weights = popularity if popular else torch.ones(len(factors))
    positives = torch.tensor([1, 4, 9, 17, 40, 41, 77, 150, 151, 299])
    options = {
        "loss": loss,
        "fit_bias": fit_bias,
        "positive_weight": 2.0,
        "negative_count": 3,
        "steps": steps,
        "max_negatives": max_negatives,
    }
    xs, bs = implicit_fold_in_grid(
        factors, bias, positives, weights, regularizations=GRID, seed=SEED, **options
    )
    assert xs.shape == (len(GRID), factors.shape[1])
    assert bs.shape == (len(GRID),)
    for g, reg in enumerate(GRID):
        generator = torch.Generator().manual_seed(SEED)
        x, b = implicit_fold_in(
            factors, bias, positives, weights, regularization=reg, generator=generator, **options
        )
        torch.testing.assert_close(xs[g], x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bs[g], b, rtol=1e-5, atol=1e-6)
        if not fit_bias:
            assert float(bs[g]) == 0.0
    # the strengths give different vectors: every one of them was solved, not one copied
    assert float((xs[0] - xs[-1]).abs().max()) > 1e-3
