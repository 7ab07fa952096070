"""What is known about users and items besides their ratings, read with a ratings snapshot:
items' tags and attributes, users' attributes (plain dicts by external id; no model types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from service.db.tables import items
from service.db.user_attributes import read_all_user_attributes

ID_CHUNK = 500
"""External ids per `IN (...)` query."""


@dataclass(frozen=True)
class SnapshotFeatures:
    """Side information by external id; ids without any are left out."""

    user_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_tags: dict[str, list[str]] = field(default_factory=dict)
    item_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        """How many users and items have side information (for the job's snapshot record)."""
        return {
            "users_with_attributes": len(self.user_attributes),
            "items_with_features": len(set(self.item_tags) | set(self.item_attributes)),
        }


def read_item_attributes(connection: Connection, external_ids: list[str]) -> dict[str, Any]:
    """The attributes of the given items (those that have any), by external id."""
    found: dict[str, Any] = {}
    for start in range(0, len(external_ids), ID_CHUNK):
        chunk = external_ids[start : start + ID_CHUNK]
        query = select(items.c.external_id, items.c.attributes).where(
            items.c.external_id.in_(chunk)
        )
        for external_id, attributes in connection.execute(query):
            if attributes:
                found[str(external_id)] = dict(attributes)
    return found


def read_snapshot_features(connection: Connection) -> SnapshotFeatures:
    """Every item's tags and attributes and every user's attributes, in the caller's
    transaction (so that they match the ratings read beside them)."""
    item_tags: dict[str, list[str]] = {}
    item_attributes: dict[str, dict[str, Any]] = {}
    for external_id, tags, attributes in connection.execute(
        select(items.c.external_id, items.c.tags, items.c.attributes)
    ):
        if tags:
            item_tags[str(external_id)] = [str(tag) for tag in tags]
        if attributes:
            item_attributes[str(external_id)] = dict(attributes)
    return SnapshotFeatures(
        user_attributes=read_all_user_attributes(connection),
        item_tags=item_tags,
        item_attributes=item_attributes,
    )
