"""Interaction data for training: id vocabularies and user/item index arrays with CSR views."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

if TYPE_CHECKING:
    from service.ml.features import FeatureData

IndexArray = npt.NDArray[np.int64]
ValueArray = npt.NDArray[np.float32]


class Vocabulary:
    """A bijection between external string ids and dense indices 0..n-1."""

    def __init__(self, ids: Iterable[str]) -> None:
        self._ids: list[str] = [str(value) for value in ids]
        self._index: dict[str, int] = {value: i for i, value in enumerate(self._ids)}
        if len(self._index) != len(self._ids):
            raise ValueError("vocabulary ids must be unique")

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, value: object) -> bool:
        return value in self._index

    @property
    def ids(self) -> list[str]:
        """The external ids in index order."""
        return list(self._ids)

    def index(self, value: str) -> int | None:
        """Index of one external id, or None when unknown."""
        return self._index.get(value)

    def indices(self, values: Sequence[str]) -> IndexArray:
        """Indices of many external ids; unknown ids map to -1."""
        lookup = self._index.get
        return np.fromiter((lookup(v, -1) for v in values), dtype=np.int64, count=len(values))

    def id_of(self, index: int) -> str:
        """External id at an index."""
        return self._ids[index]

    def ids_of(self, indices: Iterable[int]) -> list[str]:
        """External ids at many indices."""
        return [self._ids[int(i)] for i in indices]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._ids == other._ids

    def __hash__(self) -> int:
        return hash(tuple(self._ids))


@dataclass(frozen=True)
class CSR:
    """Compressed rows: row r's columns are `indices[indptr[r]:indptr[r+1]]`."""

    indptr: IndexArray
    indices: IndexArray
    values: ValueArray | None

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(self.indptr.shape[0] - 1)

    def row(self, r: int) -> tuple[IndexArray, ValueArray | None]:
        """Columns (and values) of one row."""
        start, end = int(self.indptr[r]), int(self.indptr[r + 1])
        vals = None if self.values is None else self.values[start:end]
        return self.indices[start:end], vals

    def counts(self) -> IndexArray:
        """Entries per row."""
        return np.diff(self.indptr)


@dataclass(frozen=True)
class Interactions:
    """User-item interactions as index arrays over fixed vocabularies (values None: implicit)."""

    users: IndexArray
    items: IndexArray
    values: ValueArray | None
    user_ids: Vocabulary
    item_ids: Vocabulary
    timestamps: IndexArray | None = None
    features: FeatureData | None = field(default=None, repr=False, compare=False)
    """User and item side features by external id (used by feature-aware models only)."""
    _cache: dict[str, CSR] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.users.shape[0]
        if self.items.shape[0] != n or (self.values is not None and self.values.shape[0] != n):
            raise ValueError("users, items and values must have the same length")
        if n and (self.users.min() < 0 or self.users.max() >= len(self.user_ids)):
            raise ValueError("user index out of vocabulary range")
        if n and (self.items.min() < 0 or self.items.max() >= len(self.item_ids)):
            raise ValueError("item index out of vocabulary range")

    @classmethod
    def from_ids(
        cls,
        users: Sequence[str] | npt.NDArray[np.str_],
        items: Sequence[str] | npt.NDArray[np.str_],
        values: Sequence[float] | npt.NDArray[np.floating] | None = None,
        timestamps: Sequence[int] | npt.NDArray[np.integer] | None = None,
    ) -> Interactions:
        """Build interactions and sorted vocabularies from parallel arrays of external ids."""
        user_vocab, user_codes = np.unique(np.asarray(users, dtype=np.str_), return_inverse=True)
        item_vocab, item_codes = np.unique(np.asarray(items, dtype=np.str_), return_inverse=True)
        return cls(
            users=user_codes.astype(np.int64).ravel(),
            items=item_codes.astype(np.int64).ravel(),
            values=None if values is None else np.asarray(values, dtype=np.float32),
            user_ids=Vocabulary(user_vocab.tolist()),
            item_ids=Vocabulary(item_vocab.tolist()),
            timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def n_users(self) -> int:
        """Size of the user vocabulary."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Size of the item vocabulary."""
        return len(self.item_ids)

    @property
    def is_explicit(self) -> bool:
        """Whether the interactions carry rating values."""
        return self.values is not None

    def subset(self, mask_or_index: npt.NDArray[np.bool_] | IndexArray) -> Interactions:
        """The interactions picked by a boolean mask or index array, over the same vocabularies."""
        return Interactions(
            users=self.users[mask_or_index],
            items=self.items[mask_or_index],
            values=None if self.values is None else self.values[mask_or_index],
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            timestamps=None if self.timestamps is None else self.timestamps[mask_or_index],
            features=self.features,
        )

    def user_csr(self) -> CSR:
        """Rows are users, columns items (cached)."""
        if "user" not in self._cache:
            self._cache["user"] = build_csr(
                self.users, self.items, self.values, self.n_users, self.n_items
            )
        return self._cache["user"]

    def item_csr(self) -> CSR:
        """Rows are items, columns users (cached)."""
        if "item" not in self._cache:
            self._cache["item"] = build_csr(
                self.items, self.users, self.values, self.n_items, self.n_users
            )
        return self._cache["item"]


def build_csr(
    rows: npt.ArrayLike, cols: npt.ArrayLike, values: npt.ArrayLike | None, n_rows: int, n_cols: int
) -> CSR:
    """The (row, col, value) triples as a CSR, columns ascending within each row (entries of
    one (row, col) in their given order)."""
    row_index = np.asarray(rows, dtype=np.int64)
    col_index = np.asarray(cols, dtype=np.int64)
    # one stable sort of the combined key row·n_cols + col (torch sorts in parallel): cheaper
    # than a two-key lexsort, with the same order
    key = torch.from_numpy(row_index) * max(n_cols, 1) + torch.from_numpy(col_index)
    order = torch.sort(key, stable=True).indices.numpy()
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_index, minlength=n_rows), out=indptr[1:])
    return CSR(
        indptr=indptr,
        indices=col_index[order],
        values=None if values is None else np.asarray(values, dtype=np.float32)[order],
    )
