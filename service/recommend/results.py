"""What the serving calls take and give: options, histories, answers, and their input checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.errors import InvalidInputError


@dataclass(frozen=True)
class RecommendOptions:
    """What to leave out of a recommendation list, and how long it may be."""

    n: int = 10
    exclude_rated: bool = True
    exclude: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class History:
    """A history sent with a request: item ids and ratings (NaN where absent), no duplicates."""

    items: list[str]
    ratings: npt.NDArray[np.float32]

    @classmethod
    def of(cls, entries: Sequence[tuple[str, float | None]]) -> History:
        """Build from (item, rating) pairs; a later entry for an item replaces an earlier one."""
        latest: dict[str, float | None] = {}
        for item, rating in entries:
            latest.pop(item, None)
            latest[item] = rating
        return cls(
            items=list(latest),
            ratings=np.asarray(
                [np.nan if r is None else r for r in latest.values()], dtype=np.float32
            ),
        )


@dataclass(frozen=True)
class Recommendation:
    """A ranked list for one user (None: anonymous) and where its user vector came from."""

    user: str | None
    model_version: int
    source: str
    items: list[tuple[str, float]]


@dataclass(frozen=True)
class Scores:
    """Scores of requested items in request order (None: unknown item) and the unknown ids."""

    model_version: int
    source: str
    scores: list[tuple[str, float | None]]
    unknown_items: list[str]


@dataclass(frozen=True)
class FoldIn:
    """A history folded into the model's factor space."""

    model_version: int
    embedding: list[float]
    bias: float | None
    unknown_items: list[str]


@dataclass(frozen=True)
class Similar:
    """Items whose factors are closest in cosine to one item."""

    item: str
    model_version: int
    items: list[tuple[str, float]]


def check_n(n: int, limit: int, field_name: str) -> None:
    """Refuse an `n` outside 1..limit, naming the field."""
    if not 1 <= n <= limit:
        raise InvalidInputError(
            [
                {
                    "field": field_name,
                    "message": f"must be between 1 and {limit} (MFSERVE_MAX_RECOMMENDATIONS)",
                }
            ]
        )


def read_history(
    entries: Sequence[tuple[str, float | None]], low: float, high: float, field_name: str
) -> History:
    """A request's history, refusing ratings off the scale (naming each entry's field)."""
    bad = [
        {"field": f"{field_name}.{i}.rating", "message": f"must be between {low} and {high}"}
        for i, (_item, rating) in enumerate(entries)
        if rating is not None and not (math.isfinite(rating) and low <= rating <= high)
    ]
    if bad:
        raise InvalidInputError(bad)
    return History.of(entries)
