"""What this process serves: verify an artifact, load it, build its serving tables in the
loader thread, swap one reference; poll and LISTEN wake-up; the item catalog, rejoined and
swapped the same way."""

from service.db.profiles import UserProfile
from service.registry._features import FeatureState, feature_model
from service.registry._lifespan import (
    NoModelError,
    fetch_active_version,
    freeze_long_lived_objects,
    model_registry,
    registry_readiness,
    table_builder,
)
from service.registry._loader import ModelRegistry, ServedModel, TableBuilder, VersionRecord
from service.registry._tables import ItemIndex, ModelView, ServingTables, UserStates, build_tables

__all__ = [
    "FeatureState",
    "ItemIndex",
    "ModelRegistry",
    "ModelView",
    "NoModelError",
    "ServedModel",
    "ServingTables",
    "TableBuilder",
    "UserProfile",
    "UserStates",
    "VersionRecord",
    "build_tables",
    "feature_model",
    "fetch_active_version",
    "freeze_long_lived_objects",
    "model_registry",
    "registry_readiness",
    "table_builder",
]
