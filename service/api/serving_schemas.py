"""Bodies of the serving calls (`/recommend`, `/scores`, `/foldin`, `/items/{item}/similar`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.db.tables import EXTERNAL_ID_LENGTH

ExternalId = Annotated[str, Field(min_length=1, max_length=EXTERNAL_ID_LENGTH)]
Source = Literal["model", "foldin", "features", "popular"]


class HistoryEntry(BaseModel):
    """One item of a history; `rating` absent or null: an implicit interaction."""

    model_config = ConfigDict(extra="forbid")

    item: ExternalId
    rating: float | None = Field(default=None, allow_inf_nan=False, examples=[4.5])


class _Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=10, description="list length, 1 to MFSERVE_MAX_RECOMMENDATIONS")
    exclude_rated: bool = Field(
        default=True, description="leave out the items the user rated (or the history's items)"
    )
    exclude: list[ExternalId] = Field(default_factory=list, description="items to leave out")
    tags: list[ExternalId] = Field(
        default_factory=list, description="only items carrying every one of these tags"
    )


class AnonymousRecommendIn(_Filters):
    """Recommendations for a history that is not stored (an anonymous session)."""

    history: list[HistoryEntry] = Field(description="items seen, with optional ratings")


class BatchRecommendIn(_Filters):
    """Recommendations for many users at once; the options apply to every user."""

    users: list[ExternalId] = Field(min_length=1, description="up to MFSERVE_MAX_BATCH_USERS")


class ScoresIn(BaseModel):
    """Items to score for a user (by id) or for a history: exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    user: ExternalId | None = None
    history: list[HistoryEntry] | None = None
    items: list[ExternalId] = Field(min_length=1, description="up to MFSERVE_MAX_SCORE_ITEMS")


class FoldInIn(BaseModel):
    """A history to fold into the served model's factor space (nothing is stored)."""

    model_config = ConfigDict(extra="forbid")

    history: list[HistoryEntry]


class ScoredItem(BaseModel):
    """An item and its score."""

    item: str
    score: float


class RecommendationOut(BaseModel):
    """A ranked list and where the user's vector came from."""

    user: str | None = Field(description="null for an anonymous history")
    model_version: int
    source: Source = Field(
        description='"model" (stored embedding), "foldin" (current history folded in), '
        '"features" (a user without ratings, from their attributes, by a feature-aware model) '
        'or "popular" (fallback: no usable history)'
    )
    items: list[ScoredItem]


class BatchRecommendationOut(BaseModel):
    """One ranked list per requested user, in request order."""

    model_version: int
    results: list[RecommendationOut]


class ItemScore(BaseModel):
    """An item's score; null for an item the model does not know."""

    item: str
    score: float | None


class ScoresOut(BaseModel):
    """Scores in request order (predicted ratings for explicit models)."""

    model_version: int
    scores: list[ItemScore]
    unknown_items: list[str]


class FoldInOut(BaseModel):
    """The user vector of a history."""

    embedding: list[float]
    bias: float | None = Field(description="null for models without user biases")
    model_version: int
    unknown_items: list[str]


class SimilarOut(BaseModel):
    """The items most similar to one item, by cosine similarity of their factors."""

    item: str
    model_version: int
    items: list[ScoredItem]
