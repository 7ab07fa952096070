"""Ratings, histories and ids as callers give them, turned into what the service reads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mfserve_client import HistoryEntry, Rating
from mfserve_client.calls import segment
from mfserve_client.inputs import chunks, history_rows, rating_row, rating_rows


def test_ratings_from_dicts_tuples_and_ratings() -> None:
    when = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert rating_rows(
        [
            {"user": "a", "item": "x", "rating": 4.5, "timestamp": when},
            ("a", "y"),
            ("a", "z", 3),
            ["a", "w", None, 1714564800],
            Rating("b", "x", timestamp="2024-05-01T12:00:00Z"),
        ]
    ) == [
        {"user": "a", "item": "x", "rating": 4.5, "timestamp": "2024-05-01T12:00:00+00:00"},
        {"user": "a", "item": "y"},
        {"user": "a", "item": "z", "rating": 3},
        {"user": "a", "item": "w", "timestamp": 1714564800},
        {"user": "b", "item": "x", "timestamp": "2024-05-01T12:00:00Z"},
    ]


@pytest.mark.parametrize("bad", [("a",), ("a", "b", 1, 2, 3), "ab", 7, None])
def test_other_shapes_are_not_ratings(bad: object) -> None:
    with pytest.raises(TypeError):
        rating_row(bad)  # type: ignore[arg-type]


def test_histories_in_every_accepted_form() -> None:
    expected = [{"item": "x", "rating": 5.0}, {"item": "y"}]
    assert history_rows({"x": 5.0, "y": None}) == expected
    assert history_rows([("x", 5.0), ("y",)]) == expected
    assert history_rows([HistoryEntry("x", 5.0), "y"]) == expected
    assert history_rows([{"item": "x", "rating": 5.0}, {"item": "y"}]) == expected
    assert history_rows(iter(["x"])) == [{"item": "x"}]
    with pytest.raises(TypeError, match="not one string"):
        history_rows("xy")
    with pytest.raises(TypeError, match="history entry"):
        history_rows([3])  # type: ignore[list-item]


def test_chunks_keep_order_and_offsets() -> None:
    rows = [{"k": k} for k in range(7)]
    assert [(offset, len(part)) for offset, part in chunks(rows, 3)] == [(0, 3), (3, 3), (6, 1)]
    assert [row for _, part in chunks(rows, 3) for row in part] == rows
    assert list(chunks([], 3)) == []


def test_ids_become_one_path_segment() -> None:
    assert segment("Zoë #1?", "user") == "Zo%C3%AB%20%231%3F"
    with pytest.raises(ValueError, match="'/'"):
        segment("a/b", "user")
    with pytest.raises(ValueError, match="non-empty"):
        segment("", "item")
