"""Reads of the serving path: a user's history marker and rated items in one indexed query,
and the item catalog (database ids, external ids, tags) that the serving cache is built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, Connection, Select, func, select

from service.db.tables import items, ratings, users


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What serving needs of one user: the history version and their rated items.

    `item_ids` are database item ids; `ratings` is NaN where a rating is null (implicit).
    """

    history_version: int
    item_ids: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float32]


def _profile_query(condition: ColumnElement[bool]) -> Select[str, int, int, float]:
    return (
        select(users.c.external_id, users.c.history_version, ratings.c.item_id, ratings.c.rating)
        .select_from(users)
        .outerjoin(ratings, ratings.c.user_id == users.c.id)
        .where(condition)
    )


def read_profiles(connection: Connection, external_ids: Sequence[str]) -> dict[str, UserProfile]:
    """Profiles of the given users (absent ones are left out), read in one query.

    The query walks the unique index on `users.external_id` and the (user_id, item_id) key of
    `ratings`; a user without ratings comes back as one row with a null item.
    """
    if not external_ids:
        return {}
    if len(external_ids) == 1:
        condition = users.c.external_id == external_ids[0]
    else:
        condition = users.c.external_id.in_(list(dict.fromkeys(external_ids)))
    rows = connection.execute(_profile_query(condition)).all()
    grouped: dict[str, tuple[int, list[int], list[float]]] = {}
    for external_id, version, item_id, rating in rows:
        entry = grouped.get(external_id)
        if entry is None:
            entry = grouped[external_id] = (int(version), [], [])
        if item_id is not None:
            entry[1].append(item_id)
            entry[2].append(np.nan if rating is None else rating)
    return {
        user: UserProfile(
            history_version=version,
            item_ids=np.asarray(item_list, dtype=np.int64),
            ratings=np.asarray(rating_list, dtype=np.float32),
        )
        for user, (version, item_list, rating_list) in grouped.items()
    }


@dataclass(frozen=True)
class ItemRows:
    """Every item of the database: ids, external ids and tags, in database id order."""

    db_ids: npt.NDArray[np.int64]
    external_ids: list[str]
    tags: list[list[str]]
    fingerprint: tuple[int, int, datetime | None]


def items_fingerprint(connection: Connection) -> tuple[int, int, datetime | None]:
    """(count, largest id, newest update time) of the items: changes whenever any item does."""
    count, largest, newest = connection.execute(
        select(func.count(), func.max(items.c.id), func.max(items.c.updated_at))
    ).one()
    return int(count), int(largest or 0), newest


def read_item_rows(connection: Connection) -> ItemRows:
    """Every item's database id, external id and tags (with the fingerprint read alongside)."""
    fingerprint = items_fingerprint(connection)
    rows = connection.execute(
        select(items.c.id, items.c.external_id, items.c.tags).order_by(items.c.id)
    ).all()
    return ItemRows(
        db_ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
        external_ids=[str(r[1]) for r in rows],
        tags=[[str(tag) for tag in (r[2] or [])] for r in rows],
        fingerprint=fingerprint,
    )
