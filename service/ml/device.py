"""Training/inference device choice, thread counts and seeded generators."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str) -> torch.device:
    """`"auto"` picks CUDA when available, otherwise CPU; any other value is used as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (None: one per available core); returns the count.

    The one thread configuration of every process: an API process passes
    `MFSERVE_TORCH_THREADS`, so that BLAS does not oversubscribe cores; a worker uses all.
    """
    count = threads if threads is not None else max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(count)
    return count


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator on `device` seeded with `seed`, for reproducible sampling."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
