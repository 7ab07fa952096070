"""Profile reads of the serving calls: a user's history marker first, their ratings only when
the served version's snapshot state and the cache of changed users cannot answer.

An unchanged user costs one indexed row (the marker); a user changed since the snapshot costs a
read of their ratings once, after which their (user, marker) entry in a bounded cache answers
until they change again (with their fold-in into the served model, computed once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.registry import ServedModel, UserProfile

MarkerFetch = Callable[[Sequence[str]], Awaitable[dict[str, int]]]
"""Reads the history markers of users in one query (absent users are left out)."""
ProfileFetch = Callable[[Sequence[str]], Awaitable[dict[str, UserProfile]]]
"""Reads the profiles of users in one query (absent users are left out)."""


@dataclass
class _Entry:
    profile: UserProfile
    folded: tuple[object, Any] | None = None
    """The model the profile was last folded into, and that fold-in's result."""


class ChangedUsers:
    """Profiles of users changed since the snapshot, by (user, marker), with their newest
    fold-in; least recently used first out, holding at most `max_ratings` ratings in all."""

    def __init__(self, max_ratings: int) -> None:
        self.max_ratings = max_ratings
        self.ratings = 0
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()

    def get(self, user: str, marker: int) -> UserProfile | None:
        """The user's profile at this marker, if kept."""
        entry = self._entries.get((user, marker))
        if entry is None:
            return None
        self._entries.move_to_end((user, marker))
        return entry.profile

    def put(self, user: str, profile: UserProfile) -> None:
        """Keep a profile (at its own marker), dropping the least recently used ones."""
        size = len(profile.item_ids)
        key = (user, profile.history_version)
        if size > self.max_ratings or key in self._entries:
            return
        self._entries[key] = _Entry(profile)
        self.ratings += size
        while self.ratings > self.max_ratings:
            _key, dropped = self._entries.popitem(last=False)
            self.ratings -= len(dropped.profile.item_ids)

    def folded(self, user: str, marker: int, model: object) -> Any:
        """The kept fold-in of the user's profile at this marker into `model` (None: none)."""
        entry = self._entries.get((user, marker))
        if entry is None or entry.folded is None or entry.folded[0] is not model:
            return None
        return entry.folded[1]

    def keep_folded(self, user: str, marker: int, model: object, vector: Any) -> None:
        """Keep the fold-in of a kept profile (a profile not kept is folded in each time)."""
        entry = self._entries.get((user, marker))
        if entry is not None:
            entry.folded = (model, vector)


class ProfileSource:
    """Profiles of users for the served version: its snapshot state, the cache of changed
    users, and the database's ratings, in that order."""

    def __init__(self, markers: MarkerFetch, profiles: ProfileFetch, cache_ratings: int) -> None:
        self._markers = markers
        self._profiles = profiles
        self.changed = ChangedUsers(cache_ratings)

    async def read(self, users: Sequence[str], served: ServedModel) -> dict[str, UserProfile]:
        """The profiles of the users that exist: two queries at most (markers, then the
        ratings of users neither the snapshot state nor the cache can answer for)."""
        markers = await self._markers(users)
        if not markers:
            return {}
        found: dict[str, UserProfile] = {}
        missing: list[str] = []
        tables = served.tables
        vocabulary = served.model.user_ids
        for user, marker in markers.items():
            profile: UserProfile | None = None
            if tables is not None:
                row = vocabulary.index(user)
                if row is not None:
                    profile = tables.users.profile(row, marker)
            if profile is None:
                profile = self.changed.get(user, marker)
            if profile is None:
                missing.append(user)
            else:
                found[user] = profile
        if missing:
            fresh = await self._profiles(missing)
            for user, read in fresh.items():
                self.changed.put(user, read)
                found[user] = read
        return found
