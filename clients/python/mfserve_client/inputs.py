"""Ratings and histories as callers give them (dicts, tuples, plain ids) turned into JSON rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeAlias

Timestamp: TypeAlias = datetime | float | int | str
"""A datetime (naive: UTC), epoch seconds, or an ISO 8601 string."""


class Rating(NamedTuple):
    """One rating to store; `rating` None records an implicit interaction, `timestamp` None now."""

    user: str
    item: str
    rating: float | None = None
    timestamp: Timestamp | None = None


class HistoryEntry(NamedTuple):
    """One item of a history; `rating` None: an implicit interaction (a view, a click)."""

    item: str
    rating: float | None = None


RatingInput: TypeAlias = Rating | Mapping[str, Any] | Sequence[Any]
"""`Rating(...)`, `{"user", "item", "rating"?, "timestamp"?}`, or a tuple
`(user, item)`, `(user, item, rating)` or `(user, item, rating, timestamp)`."""

HistoryInput: TypeAlias = (
    Mapping[str, float | None] | Iterable[HistoryEntry | Mapping[str, Any] | Sequence[Any] | str]
)
"""`{item: rating}`, or entries: item ids, `(item, rating)` tuples or `{"item", "rating"?}`."""

_RATING_FIELDS = ("user", "item", "rating", "timestamp")


def _json_timestamp(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def rating_row(rating: RatingInput) -> dict[str, Any]:
    """The JSON object of one rating."""
    if isinstance(rating, Mapping):
        row = dict(rating)
    elif isinstance(rating, Sequence) and not isinstance(rating, str | bytes):
        if not 2 <= len(rating) <= 4:
            raise TypeError(
                "a rating tuple is (user, item), (user, item, rating) or "
                f"(user, item, rating, timestamp); got {len(rating)} values"
            )
        row = {k: v for k, v in zip(_RATING_FIELDS, rating, strict=False) if v is not None}
    else:
        raise TypeError(f"a rating is a dict or a tuple, got {type(rating).__name__}")
    if row.get("timestamp") is not None:
        row["timestamp"] = _json_timestamp(row["timestamp"])
    return row


def rating_rows(ratings: Iterable[RatingInput]) -> list[dict[str, Any]]:
    """The JSON objects of many ratings."""
    return [rating_row(rating) for rating in ratings]


def history_rows(history: HistoryInput) -> list[dict[str, Any]]:
    """The JSON entries of a history."""
    if isinstance(history, Mapping):
        return [_history_entry((item, rating)) for item, rating in history.items()]
    if isinstance(history, str):
        raise TypeError("a history is a list of items, not one string")
    return [_history_entry(entry) for entry in history]


def _history_entry(entry: Any) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"item": entry}
    if isinstance(entry, Mapping):
        return dict(entry)
    if isinstance(entry, Sequence) and not isinstance(entry, bytes) and 1 <= len(entry) <= 2:
        item, rating = (entry[0], entry[1] if len(entry) == 2 else None)
        return {"item": item} if rating is None else {"item": item, "rating": rating}
    raise TypeError(f"a history entry is an item id, (item, rating) or a dict; got {entry!r}")


def chunks(rows: list[dict[str, Any]], size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """`(offset, rows)` pieces of at most `size` rows, in order."""
    for start in range(0, len(rows), size):
        yield start, rows[start : start + size]
