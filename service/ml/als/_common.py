"""What both ALS models share: config fields, fitted state, the sweep loop and fold-in input."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from service.ml.base import ProgressCallback, TrainingProgress
from service.ml.data import IndexArray, ValueArray


class ALSConfig(BaseModel):
    """Hyper-parameters common to the ALS models (LensKit names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_size: int = Field(default=50, ge=1, le=4096)
    """Number of latent factors per user and item."""

    epochs: int = Field(default=10, ge=1, le=10_000)
    """Number of ALS sweeps; each solves every item row, then every user row."""

    device: str = "auto"
    """Training device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", …"""

    seed: int = 42
    """Seed of the random factor initialization; one seed gives one model on CPU."""

    chunk_elements: int = Field(default=1 << 24, ge=1 << 12)
    """Most padded factor entries (rows·length·k) gathered at once; bounds solve memory."""


def initial_factors(rows: int, width: int, scale: float, seed: int) -> torch.Tensor:
    """Seeded normal factors (rows, width) on CPU, scaled, independent of the device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((rows, width), generator=generator) * scale


def history_tensors(
    items: IndexArray, ratings: ValueArray | None, n_items: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Known item indices of a history (negatives and out-of-range dropped) and their ratings."""
    index = np.asarray(items, dtype=np.int64)
    keep = (index >= 0) & (index < n_items)
    known = torch.as_tensor(index[keep], device=device)
    if ratings is None:
        return known, None
    values = np.asarray(ratings, dtype=np.float32)
    if values.shape != index.shape:
        raise ValueError("items and ratings must have the same length")
    return known, torch.as_tensor(values[keep], device=device)


def run_sweeps(
    epochs: int,
    sweep: Callable[[], float],
    progress: ProgressCallback | None,
) -> list[float]:
    """Call `sweep()` (returning the loss) `epochs` times, reporting progress after each."""
    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss = float(sweep())
        losses.append(loss)
        if progress is not None:
            progress(
                TrainingProgress(
                    epoch=epoch,
                    epochs=epochs,
                    loss=loss,
                    elapsed_s=time.perf_counter() - started,
                )
            )
    return losses


def use_native(device: torch.device) -> bool:
    """Whether row solves on `device` run in the compiled CPU kernels (else the torch path)."""
    return device.type == "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so timings and progress are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
