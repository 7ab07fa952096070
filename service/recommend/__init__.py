"""Per-request serving policy: a user's vector (stored, fold-in or popular), profile reads
through the readers handed in, and the batcher; the ranking itself is `service.ml.ranking`."""

from service.recommend.calls import (
    fold_in_history,
    rank_history,
    rank_users,
    score_items,
    similar_items,
)
from service.recommend.context import ServingContext
from service.recommend.results import (
    FoldIn,
    History,
    Recommendation,
    RecommendOptions,
    Scores,
    Similar,
    check_n,
    read_history,
)
from service.recommend.runtime import Serving, serving

__all__ = [
    "FoldIn",
    "History",
    "RecommendOptions",
    "Recommendation",
    "Scores",
    "Serving",
    "ServingContext",
    "Similar",
    "check_n",
    "fold_in_history",
    "rank_history",
    "rank_users",
    "read_history",
    "score_items",
    "serving",
    "similar_items",
]
