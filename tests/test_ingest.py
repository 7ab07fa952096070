"""Rating validation shared by the API and the importer (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain.ingest import (
    InvalidRatingsError,
    PayloadShapeError,
    RatingRules,
    check_external_id,
    parse_payload,
    parse_timestamp,
    validate_columns,
)

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
RULES = RatingRules(0.5, 5.0, NOW + timedelta(days=1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01 12:00:00.250", datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1.5, datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)),
    ],
)
def test_timestamps(text: object, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("value", ["", "5/1/2024", True, None, float("nan"), 1e20, [1]])
def test_bad_timestamps(value: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - messages are checked in the API tests
        parse_timestamp(value)


def test_ids() -> None:
    assert check_external_id("ok ünïcödé 🙂") is None
    assert check_external_id("x" * 128) is None
    for bad in ("", "x" * 129, "tab\there", "\x7f", "\u0085", "\ud800", 3, None):
        assert check_external_id(bad) is not None


def test_default_timestamp_and_implicit_rating() -> None:
    batch = validate_columns(["u"], ["i"], [None], [None], RULES, now=NOW)
    assert batch.ratings == [None]
    assert batch.event_times == [NOW]


def test_every_error_is_named() -> None:
    with pytest.raises(InvalidRatingsError) as caught:
        validate_columns(["u", "", "u"], ["i", "i", "i"], [1, 9, None], [None, None, "x"],
                         RULES, now=NOW)  # fmt: skip
    assert [(e.row, e.field) for e in caught.value.errors] == [
        (1, "user"),
        (1, "rating"),
        (2, "timestamp"),
    ]


def test_payload_shapes() -> None:
    assert len(parse_payload({"user": "u", "item": "i"}, RULES, max_rows=2, now=NOW)) == 1
    rows = {"ratings": [{"user": "u", "item": "i"}] * 2}
    assert len(parse_payload(rows, RULES, max_rows=2, now=NOW)) == 2
    with pytest.raises(PayloadShapeError, match="at most 1"):
        parse_payload(rows, RULES, max_rows=1, now=NOW)


def test_a_valid_batch_keeps_every_value() -> None:
    rows: list[object] = [
        {"user": "u", "item": "a", "rating": 4, "timestamp": 0},
        {"user": "u", "item": "b", "rating": 2.5, "timestamp": 1.5},
        {"user": "v", "item": "a", "timestamp": "2024-05-01T14:00:00+02:00"},
        {"user": "v", "item": "b", "rating": None},
    ]
    batch = parse_payload({"ratings": rows}, RULES, max_rows=10, now=NOW)
    assert batch.users == ["u", "u", "v", "v"]
    assert batch.items == ["a", "b", "a", "b"]
    assert batch.ratings == [4.0, 2.5, None, None]
    assert [type(value) for value in batch.ratings[:2]] == [float, float]
    assert batch.event_times == [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC),
        datetime(2024, 5, 1, 12, tzinfo=UTC),
        NOW,
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", ""),
        ("user", 7),
        ("item", "x" * 129),
        ("item", "tab\there"),
        ("rating", 9),
        ("rating", True),
        ("rating", "4"),
        ("rating", 10**400),
        ("timestamp", -1.5e20),
        ("timestamp", int((NOW + timedelta(days=2)).timestamp())),
        ("timestamp", "soon"),
    ],
)
def test_one_bad_value_in_a_large_batch_is_named(field: str, value: object) -> None:
    rows = [
        {"user": f"u{n % 37}", "item": f"i{n}", "rating": 3.0, "timestamp": 1_700_000_000}
        for n in range(1_000)
    ]
    rows[537][field] = value
    with pytest.raises(InvalidRatingsError) as caught:
        parse_payload({"ratings": rows}, RULES, max_rows=1_000, now=NOW)
    assert [(error.row, error.field) for error in caught.value.errors] == [(537, field)]
