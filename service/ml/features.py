"""User and item side features: plain data the service fills, and their encoding into sparse
feature rows (index, value) for feature-aware models.

Strings and booleans are categories (`name=value`), tags are categories (`#tag`), numbers are
standardized (one feature whose value is the z-score) or bucketed into quantile categories. The
encoder's vocabularies are plain JSON (`to_json` / `from_json`), so a model saves them with its
artifact without pickle.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.ml.data import IndexArray, ValueArray

Scalar = str | int | float | bool
"""An attribute value: strings and booleans are categories, numbers are numeric."""

Attributes = Mapping[str, Scalar]
"""One user's or item's attributes by name."""

TAG_PREFIX = "#"
NumericEncoding = Literal["standardize", "bucket"]


class FeatureConfigError(ValueError):
    """A feature selection names an attribute or tag that the data does not have."""


@dataclass(frozen=True)
class FeatureData:
    """What is known about users and items besides their interactions, by external id.

    Any id may be missing (it then has no features); items may be listed that have no
    interactions yet (cold items).
    """

    user_attributes: Mapping[str, Attributes] = field(default_factory=dict)
    """User id -> attributes (age, country, …)."""
    item_tags: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Item id -> tags."""
    item_attributes: Mapping[str, Attributes] = field(default_factory=dict)
    """Item id -> attributes (year, language, …)."""

    @classmethod
    def of(
        cls,
        user_attributes: Mapping[str, Mapping[str, object]],
        item_tags: Mapping[str, Sequence[str]],
        item_attributes: Mapping[str, Mapping[str, object]],
    ) -> FeatureData:
        """From stored JSON: attribute values that are not strings, numbers or booleans (null,
        lists, objects) are left out."""
        return cls(
            user_attributes={k: scalar_attributes(v) for k, v in user_attributes.items()},
            item_tags=item_tags,
            item_attributes={k: scalar_attributes(v) for k, v in item_attributes.items()},
        )


def scalar_attributes(attributes: Mapping[str, object]) -> dict[str, Scalar]:
    """The attributes whose values are strings, numbers or booleans."""
    return {k: v for k, v in attributes.items() if isinstance(v, str | int | float | bool)}


class FeatureSelection(BaseModel):
    """Which side features a model uses and how numbers are encoded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_attributes: list[str] | None = None
    """User attribute names to use; None: every attribute present in the data; []: none."""

    item_attributes: list[str] | None = None
    """Item attribute names to use; None: every attribute present in the data; []: none."""

    item_tags: list[str] | None = None
    """Item tags to use; None: every tag present in the data; []: none."""

    numeric: NumericEncoding = "standardize"
    """Numbers: "standardize" (one feature valued (x - mean) / std over the data) or "bucket"
    (one category per quantile bucket)."""

    buckets: int = Field(default=5, ge=2, le=100)
    """Number of quantile buckets with numeric "bucket"."""

    min_count: int = Field(default=1, ge=1)
    """Categories (attribute values, tags) seen on fewer users/items than this are dropped."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _category(name: str, value: Scalar) -> str:
    if isinstance(value, bool):
        return f"{name}={'true' if value else 'false'}"
    return f"{name}={value}"


@dataclass
class SideEncoder:
    """The feature vocabulary of one side (users or items)."""

    categories: dict[str, int] = field(default_factory=dict)
    """Category key (`name=value` or `#tag`) -> feature index."""
    numeric: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    """Standardized attribute -> (feature index, mean, std)."""
    buckets: dict[str, list[float]] = field(default_factory=dict)
    """Bucketed attribute -> inner quantile edges (its categories are `name#<bucket>`)."""
    names: list[str] = field(default_factory=list)
    """Feature names in index order."""

    @property
    def size(self) -> int:
        """Number of features of this side."""
        return len(self.names)

    def _add(self, name: str) -> int:
        self.names.append(name)
        return len(self.names) - 1

    def encode(
        self, attributes: Attributes | None, tags: Iterable[str] = ()
    ) -> tuple[list[int], list[float]]:
        """Feature indices and values of one entity; unknown names and values are ignored."""
        indices: list[int] = []
        values: list[float] = []
        for tag in dict.fromkeys(tags):
            index = self.categories.get(TAG_PREFIX + tag)
            if index is not None:
                indices.append(index)
                values.append(1.0)
        for name, value in (attributes or {}).items():
            if name in self.numeric:
                if _is_number(value) and math.isfinite(float(value)):
                    index, mean, std = self.numeric[name]
                    indices.append(index)
                    values.append((float(value) - mean) / std)
                continue
            if name in self.buckets:
                if _is_number(value) and math.isfinite(float(value)):
                    bucket = int(np.searchsorted(self.buckets[name], float(value), side="right"))
                    key = f"{name}#{bucket}"
                else:
                    continue
            else:
                key = _category(name, value)
            index = self.categories.get(key)
            if index is not None:
                indices.append(index)
                values.append(1.0)
        return indices, values

    def to_json(self) -> dict[str, Any]:
        """The vocabulary as JSON-ready values."""
        return {
            "names": self.names,
            "categories": self.categories,
            "numeric": {k: list(v) for k, v in self.numeric.items()},
            "buckets": self.buckets,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SideEncoder:
        """Read what `to_json` wrote."""
        return cls(
            categories={str(k): int(v) for k, v in raw["categories"].items()},
            numeric={
                str(k): (int(v[0]), float(v[1]), float(v[2])) for k, v in raw["numeric"].items()
            },
            buckets={str(k): [float(x) for x in v] for k, v in raw["buckets"].items()},
            names=[str(n) for n in raw["names"]],
        )


def _selected(kind: str, wanted: list[str] | None, present: Iterable[str]) -> list[str]:
    """The names to use: all present ones, or the wanted ones (which must all be present)."""
    known = sorted(set(present))
    if wanted is None:
        return known
    unknown = [name for name in wanted if name not in set(known)]
    if unknown:
        shown = ", ".join(known[:20]) + (", …" if len(known) > 20 else "") or "(none)"
        raise FeatureConfigError(
            f"unknown {kind} {', '.join(repr(n) for n in unknown)}; the data has: {shown}"
        )
    return list(dict.fromkeys(wanted))


def _fit_side(
    attribute_maps: Iterable[Attributes],
    tag_lists: Iterable[Sequence[str]],
    attribute_kind: str,
    wanted_attributes: list[str] | None,
    wanted_tags: list[str] | None,
    selection: FeatureSelection,
) -> SideEncoder:
    rows = list(attribute_maps)
    tag_rows = [list(dict.fromkeys(tags)) for tags in tag_lists]
    encoder = SideEncoder()
    tag_counts = Counter(tag for tags in tag_rows for tag in tags)
    for tag in _selected("item tag", wanted_tags, tag_counts):
        if tag_counts[tag] >= selection.min_count:
            encoder.categories[TAG_PREFIX + tag] = encoder._add(TAG_PREFIX + tag)
    names = _selected(attribute_kind, wanted_attributes, (n for row in rows for n in row))
    for name in names:
        values = [row[name] for row in rows if name in row]
        numbers = [float(v) for v in values if _is_number(v) and math.isfinite(float(v))]
        if values and len(numbers) == len(values):
            array = np.asarray(numbers, dtype=np.float64)
            if selection.numeric == "standardize":
                std = float(array.std()) or 1.0
                encoder.numeric[name] = (encoder._add(name), float(array.mean()), std)
                continue
            quantiles = np.linspace(0, 1, selection.buckets + 1)[1:-1]
            edges = sorted(set(np.quantile(array, quantiles).tolist()))
            encoder.buckets[name] = edges
            buckets = np.searchsorted(edges, array, side="right")
            keys = Counter(f"{name}#{int(b)}" for b in buckets)
        else:
            keys = Counter(_category(name, v) for v in values)
        for key in sorted(keys):
            if keys[key] >= selection.min_count:
                encoder.categories[key] = encoder._add(key)
    return encoder


@dataclass(frozen=True)
class SparseRows:
    """Feature rows of many entities in CSR form: row r's entries lie at indptr[r]:indptr[r+1]."""

    indptr: IndexArray
    indices: IndexArray
    values: ValueArray

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(self.indptr.shape[0] - 1)


def sparse_rows(rows: Sequence[tuple[Sequence[int], Sequence[float]]]) -> SparseRows:
    """CSR arrays of (indices, values) rows."""
    lengths = np.fromiter((len(i) for i, _ in rows), dtype=np.int64, count=len(rows))
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.fromiter((j for i, _ in rows for j in i), dtype=np.int64, count=int(indptr[-1]))
    values = np.fromiter((x for _, v in rows for x in v), dtype=np.float32, count=int(indptr[-1]))
    return SparseRows(indptr=indptr, indices=indices, values=values)


@dataclass
class FeatureEncoder:
    """Encodes user attributes and item tags/attributes into per-side feature indices."""

    user: SideEncoder
    item: SideEncoder

    @classmethod
    def fit(cls, data: FeatureData | None, selection: FeatureSelection) -> FeatureEncoder:
        """Vocabularies of every selected feature present in the data; raises
        `FeatureConfigError` for a selected name the data does not have."""
        data = data if data is not None else FeatureData()
        user = _fit_side(
            data.user_attributes.values(),
            (),
            "user attribute",
            selection.user_attributes,
            [],
            selection,
        )
        item_ids = set(data.item_tags) | set(data.item_attributes)
        empty: dict[str, Scalar] = {}
        item = _fit_side(
            (data.item_attributes.get(i, empty) for i in item_ids),
            (data.item_tags.get(i, ()) for i in item_ids),
            "item attribute",
            selection.item_attributes,
            selection.item_tags,
            selection,
        )
        return cls(user=user, item=item)

    @classmethod
    def empty(cls) -> FeatureEncoder:
        """An encoder without any feature."""
        return cls(user=SideEncoder(), item=SideEncoder())

    def encode_user(self, attributes: Attributes | None) -> tuple[list[int], list[float]]:
        """Feature indices and values of one user's attributes."""
        return self.user.encode(attributes)

    def encode_item(
        self, tags: Iterable[str] = (), attributes: Attributes | None = None
    ) -> tuple[list[int], list[float]]:
        """Feature indices and values of one item's tags and attributes."""
        return self.item.encode(attributes, tags)

    def user_rows(self, data: FeatureData | None, ids: Sequence[str]) -> SparseRows:
        """Feature rows of users by external id (ids without data get empty rows)."""
        attributes = data.user_attributes if data is not None else {}
        return sparse_rows([self.encode_user(attributes.get(i)) for i in ids])

    def item_rows(self, data: FeatureData | None, ids: Sequence[str]) -> SparseRows:
        """Feature rows of items by external id (ids without data get empty rows)."""
        if data is None:
            return sparse_rows([([], [])] * len(ids))
        return sparse_rows(
            [self.encode_item(data.item_tags.get(i, ()), data.item_attributes.get(i)) for i in ids]
        )

    def to_json(self) -> dict[str, Any]:
        """Both vocabularies as JSON-ready values."""
        return {"user": self.user.to_json(), "item": self.item.to_json()}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FeatureEncoder:
        """Read what `to_json` wrote."""
        return cls(user=SideEncoder.from_json(raw["user"]), item=SideEncoder.from_json(raw["item"]))
