"""Factorization machines over user and item features, served in the shared factor form."""

from service.ml.fm.config import FMExplicitConfig, FMImplicitConfig
from service.ml.fm.explicit import FMExplicit
from service.ml.fm.implicit import FMImplicit
from service.ml.fm.scorer import FMScorer

__all__ = ["FMExplicit", "FMExplicitConfig", "FMImplicit", "FMImplicitConfig", "FMScorer"]
