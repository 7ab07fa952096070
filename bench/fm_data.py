"""MovieLens 100K's user and item metadata (`service.tools.movielens_metadata`, the files
`mfserve import --dataset ml-100k` loads) as `FeatureData`, for the factorization-machine bench."""

from __future__ import annotations

from pathlib import Path

from service.ml.features import FeatureData, Scalar
from service.tools.movielens_metadata import fetch_metadata, read_metadata


def load_metadata(cache_dir: Path) -> FeatureData:
    """Items: genres as tags, release year as a number; users: age, gender, occupation."""
    metadata = read_metadata(fetch_metadata(cache_dir))
    item_attributes: dict[str, dict[str, Scalar]] = {
        movie.item: dict(movie.attributes()) for movie in metadata.movies
    }
    users: dict[str, dict[str, Scalar]] = {
        user: dict(attributes) for user, attributes in metadata.users.items()
    }
    return FeatureData(
        user_attributes=users,
        item_tags={movie.item: movie.genres for movie in metadata.movies},
        item_attributes=item_attributes,
    )
