"""Validation of incoming ratings, shared by `POST /ratings` and `mfserve import`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from service.config import Settings
from service.db.tables import EXTERNAL_ID_LENGTH
from service.db.upsert import RatingBatch

ROW_FIELDS = frozenset({"user", "item", "rating", "timestamp"})
"""The fields a rating object may carry."""

MAX_FUTURE = timedelta(days=1)
"""How far past the current time an event timestamp may lie (clock skew)."""

# Control characters (Unicode category Cc) and lone surrogates, which no database can store.
_FORBIDDEN_ID_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem with one field of one row (`row` counts from 0 in the request or file)."""

    row: int
    field: str
    message: str


class InvalidRatingsError(ValueError):
    """A batch holds invalid rows; nothing of it may be stored."""

    def __init__(self, errors: list[RowError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(
            f"{len(errors)} invalid field(s); first: row {first.row} {first.field}: {first.message}"
        )


@dataclass(frozen=True, slots=True)
class RatingRules:
    """What a valid rating looks like: the scale and the latest acceptable event time."""

    rating_min: float
    rating_max: float
    latest: datetime

    @classmethod
    def from_settings(cls, settings: Settings, now: datetime) -> RatingRules:
        """Rules for ratings received at `now`."""
        return cls(settings.rating_min, settings.rating_max, now + MAX_FUTURE)


def check_external_id(value: object) -> str | None:
    """Why `value` is not a valid user or item id, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {_json_type(value)}"
    if not value:
        return "must not be empty"
    if len(value) > EXTERNAL_ID_LENGTH:
        return f"must be at most {EXTERNAL_ID_LENGTH} characters, got {len(value)}"
    if _FORBIDDEN_ID_CHARACTERS.search(value):
        return "must not contain control characters or lone surrogates"
    return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def parse_timestamp(value: object) -> datetime:
    """An event time from ISO 8601 text or epoch seconds, as an aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO 8601 string or epoch seconds, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("epoch seconds must be finite")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"epoch seconds out of range: {value}") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value[:64]!r}") from None
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"timestamp out of range: {value[:64]!r}") from None
    raise ValueError(f"must be an ISO 8601 string or epoch seconds, got {_json_type(value)}")


def _check_rating(value: object, low: float, high: float) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"must be a number or null, got {_json_type(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, "must be a finite number"
    if not low <= value <= high:  # exact for integers of any size (no float conversion)
        shown = f"{value}" if isinstance(value, float) or abs(value) < 10**32 else "a huge integer"
        return None, f"must be between {low} and {high}, got {shown}"
    return float(value), None


def _check_timestamp(value: object, now: datetime, latest: datetime) -> tuple[datetime, str | None]:
    if value is None:
        return now, None
    try:
        parsed = parse_timestamp(value)
    except ValueError as exc:
        return now, str(exc)
    if parsed > latest:
        return now, f"must not be more than a day in the future, got {parsed.isoformat()}"
    return parsed, None


_PLAIN_RATING_TYPES = frozenset({float, int, type(None)})


def _plain_batch(
    users: Sequence[object],
    items: Sequence[object],
    ratings: Sequence[object],
    timestamps: Sequence[object],
    rules: RatingRules,
    now: datetime,
) -> RatingBatch | None:
    """The batch of columns that hold only valid values, checked column by column; else None.

    None sends the caller to the row-by-row checks, which name every problem; this path only
    makes the common, valid batch cheap (each distinct id is checked once, not per row).
    """
    if not users:
        return RatingBatch()
    if not _plain_ids(users, items):
        return None
    values = _plain_ratings(ratings, rules)
    if values is None:
        return None
    times = _plain_times(timestamps, rules, now)
    if times is None:
        return None
    return RatingBatch(
        list(cast(Sequence[str], users)), list(cast(Sequence[str], items)), values, times
    )


def plain_epoch_columns(
    users: Sequence[object],
    items: Sequence[object],
    ratings: Sequence[object],
    timestamps: Sequence[object],
    rules: RatingRules,
) -> tuple[list[float | None], list[int]] | None:
    """Ratings and event times (Unix epoch microseconds) of non-empty columns that hold only
    valid values and epoch-second timestamps; else None (`validate_columns` names problems)."""
    if not users or not _plain_ids(users, items):
        return None
    values = _plain_ratings(ratings, rules)
    seconds = _plain_seconds(timestamps, rules)
    if values is None or seconds is None:
        return None
    return values, [stamp * 1_000_000 for stamp in seconds]


def _plain_ids(users: Sequence[object], items: Sequence[object]) -> bool:
    """Whether every user and item is a valid id, each distinct one checked once."""
    try:
        ids = set(users)
        ids.update(items)
    except TypeError:  # an unhashable value: certainly not an id
        return False
    if any(ident.__class__ is not str for ident in ids):
        return False
    names = cast(set[str], ids)
    if not all(names) or max(map(len, names)) > EXTERNAL_ID_LENGTH:
        return False
    return not _FORBIDDEN_ID_CHARACTERS.search("".join(names))


def _plain_ratings(ratings: Sequence[object], rules: RatingRules) -> list[float | None] | None:
    """Ratings (None: implicit) as floats when every one is a number on the scale, else None."""
    if not set(map(type, ratings)) <= _PLAIN_RATING_TYPES:
        return None
    numbers = cast(Sequence[float | None], ratings)
    try:
        values = [None if value is None else float(value) for value in numbers]
    except OverflowError:  # an integer beyond any float
        return None
    low, high = rules.rating_min, rules.rating_max
    if not all(low <= value <= high for value in values if value is not None):
        return None  # out of range, or not a number (NaN compares false)
    return values


def _plain_seconds(timestamps: Sequence[object], rules: RatingRules) -> Sequence[int] | None:
    """The timestamps when every one is epoch seconds no later than the rules allow, else None."""
    if set(map(type, timestamps)) != {int}:
        return None
    seconds = cast(Sequence[int], timestamps)
    if min(seconds) < 0 or max(seconds) > rules.latest.timestamp():
        return None
    return seconds


def _plain_times(
    timestamps: Sequence[object], rules: RatingRules, now: datetime
) -> list[datetime] | None:
    """Event times of valid timestamps (None: `now`), or None at the first invalid one."""
    seconds = _plain_seconds(timestamps, rules)
    if seconds is not None:
        return [datetime.fromtimestamp(stamp, UTC) for stamp in seconds]
    times = []
    for stamp in timestamps:
        event_time, problem = _check_timestamp(stamp, now, rules.latest)
        if problem is not None:
            return None
        times.append(event_time)
    return times


def validate_columns(
    users: Sequence[object],
    items: Sequence[object],
    ratings: Sequence[object],
    timestamps: Sequence[object],
    rules: RatingRules,
    *,
    now: datetime,
    first_row: int = 0,
    errors: list[RowError] | None = None,
) -> RatingBatch:
    """Check parallel columns of raw values; raise InvalidRatingsError naming every bad field.

    A missing rating (None) is an implicit interaction; a missing timestamp (None) means `now`.
    Errors already found by the caller (such as unknown fields) can be passed in `errors`.
    """
    if not errors:
        plain = _plain_batch(users, items, ratings, timestamps, rules, now)
        if plain is not None:
            return plain
    errors = [] if errors is None else errors
    batch = RatingBatch()
    good_ids: set[str] = set()
    low, high, latest = rules.rating_min, rules.rating_max, rules.latest
    latest_epoch = latest.timestamp()
    from_epoch = datetime.fromtimestamp
    for offset, (user, item, rating, timestamp) in enumerate(
        zip(users, items, ratings, timestamps, strict=True)
    ):
        row = first_row + offset
        for name, external_id in (("user", user), ("item", item)):
            if isinstance(external_id, str) and external_id in good_ids:
                continue
            problem = check_external_id(external_id)
            if problem is None:
                good_ids.add(external_id)  # type: ignore[arg-type]
            else:
                errors.append(RowError(row, name, problem))
        # Fast paths for the common types; anything else goes through the full checks.
        if rating.__class__ is float and low <= rating <= high:
            value: float | None = rating
        else:
            value, problem = _check_rating(rating, low, high)
            if problem is not None:
                errors.append(RowError(row, "rating", problem))
        if timestamp.__class__ is int and 0 <= timestamp <= latest_epoch:
            event_time = from_epoch(timestamp, UTC)
        else:
            event_time, problem = _check_timestamp(timestamp, now, latest)
            if problem is not None:
                errors.append(RowError(row, "timestamp", problem))
        if not errors:  # once a row is bad nothing is stored, so stop collecting
            batch.users.append(user)  # type: ignore[arg-type]
            batch.items.append(item)  # type: ignore[arg-type]
            batch.ratings.append(value)
            batch.event_times.append(event_time)
    if errors:
        errors.sort(key=lambda error: error.row)
        raise InvalidRatingsError(errors)
    return batch


def validate_objects(rows: Sequence[object], rules: RatingRules, *, now: datetime) -> RatingBatch:
    """Check rating objects (`{"user", "item", "rating"?, "timestamp"?}`) of a JSON request."""
    if all(row.__class__ is dict and row.keys() <= ROW_FIELDS for row in rows):
        plain = _plain_batch(
            [row.get("user") for row in rows],  # type: ignore[attr-defined]
            [row.get("item") for row in rows],  # type: ignore[attr-defined]
            [row.get("rating") for row in rows],  # type: ignore[attr-defined]
            [row.get("timestamp") for row in rows],  # type: ignore[attr-defined]
            rules,
            now,
        )
        if plain is not None:
            return plain
    errors: list[RowError] = []
    columns: tuple[list[object], list[object], list[object], list[object]] = ([], [], [], [])
    for row, value in enumerate(rows):
        if not isinstance(value, Mapping):
            errors.append(RowError(row, "", f"must be an object, got {_json_type(value)}"))
            value = _PLACEHOLDER_ROW
        elif not ROW_FIELDS.issuperset(value.keys()):
            for name in sorted(str(key) for key in value.keys() - ROW_FIELDS):
                errors.append(RowError(row, name, "unknown field"))
        for name in ("user", "item"):
            if name not in value:
                errors.append(RowError(row, name, "field required"))
        # A placeholder keeps a missing id from being reported twice.
        columns[0].append(value.get("user", _PLACEHOLDER_ID))
        columns[1].append(value.get("item", _PLACEHOLDER_ID))
        columns[2].append(value.get("rating"))
        columns[3].append(value.get("timestamp"))
    return validate_columns(*columns, rules, now=now, errors=errors)


_PLACEHOLDER_ID = "-"
_PLACEHOLDER_ROW: Mapping[str, object] = {"user": _PLACEHOLDER_ID, "item": _PLACEHOLDER_ID}


class PayloadShapeError(ValueError):
    """The request body is neither one rating object nor `{"ratings": [...]}`."""


def parse_payload(
    payload: object, rules: RatingRules, *, max_rows: int, now: datetime
) -> RatingBatch:
    """Validate a `POST /ratings` body: one rating object or `{"ratings": [...]}`."""
    if isinstance(payload, Mapping) and "ratings" in payload:
        extra = sorted(str(key) for key in payload if key != "ratings")
        if extra:
            raise PayloadShapeError(f"unknown field(s) beside 'ratings': {', '.join(extra)}")
        rows = payload["ratings"]
        if not isinstance(rows, list):
            raise PayloadShapeError(f"'ratings' must be an array, got {_json_type(rows)}")
        if not rows:
            raise PayloadShapeError("'ratings' must hold at least one rating")
        if len(rows) > max_rows:
            raise PayloadShapeError(
                f"'ratings' holds {len(rows)} rows; at most {max_rows} are accepted per request"
            )
        return validate_objects(rows, rules, now=now)
    if isinstance(payload, Mapping):
        return validate_objects([payload], rules, now=now)
    raise PayloadShapeError(
        f'the body must be a rating object or {{"ratings": [...]}}, got {_json_type(payload)}'
    )
