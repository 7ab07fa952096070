"""Every model the service offers, by name: create one from a config dict, load a saved one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from service.ml.als import BiasedALS, ImplicitALS
from service.ml.base import Recommender, read_model_name
from service.ml.flexmf import FlexMFExplicit, FlexMFImplicit
from service.ml.fm import FMExplicit, FMImplicit
from service.ml.popular import Popular


class CatalogError(ValueError):
    """Base of the errors raised for a bad model name or config."""


class UnknownModelError(CatalogError):
    """Raised for a model name that is not in the catalog."""


class ModelConfigError(CatalogError):
    """Raised for a config that the named model does not accept; the message names the fields."""

    def __init__(self, model: str, errors: list[dict[str, Any]]) -> None:
        self.model = model
        self.errors = errors
        details = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ())) or '(config)'}: {error.get('msg')}"
            for error in errors
        )
        super().__init__(f"invalid config for {model}: {details}")


@dataclass(frozen=True)
class ModelEntry:
    """One catalog entry: the model class, its config type and whether it predicts ratings."""

    name: str
    model_type: type[Recommender[Any]]
    config_type: type[BaseModel]
    explicit: bool


MODEL_TYPES: tuple[type[Recommender[Any]], ...] = (
    Popular,
    BiasedALS,
    ImplicitALS,
    FlexMFExplicit,
    FlexMFImplicit,
    FMExplicit,
    FMImplicit,
)

CATALOG: Mapping[str, ModelEntry] = {
    model_type.name: ModelEntry(
        name=model_type.name,
        model_type=model_type,
        config_type=model_type.config_type,
        explicit=model_type.explicit,
    )
    for model_type in MODEL_TYPES
}

MODEL_NAMES: tuple[str, ...] = tuple(CATALOG)
"""Every model name, in catalog order."""


def model_entry(name: str) -> ModelEntry:
    """The catalog entry of a model name; raises `UnknownModelError` naming the known ones."""
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}"
        ) from None


def parse_config(name: str, config: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
    """Validate a config for a model name; raises `ModelConfigError` naming the bad fields."""
    entry = model_entry(name)
    if isinstance(config, BaseModel):
        if not isinstance(config, entry.config_type):
            raise ModelConfigError(
                name, [{"loc": (), "msg": f"expected {entry.config_type.__name__}"}]
            )
        return config
    try:
        return entry.config_type.model_validate(dict(config or {}))
    except ValidationError as exc:
        errors = [dict(error) for error in exc.errors(include_url=False)]
        raise ModelConfigError(name, errors) from exc


def create_model(
    name: str, config: Mapping[str, Any] | BaseModel | None = None
) -> Recommender[Any]:
    """An unfitted model of the named kind with a validated config."""
    entry = model_entry(name)
    return entry.model_type(parse_config(name, config))


def load_model(directory: Path) -> Recommender[Any]:
    """Load a model saved by `Recommender.save`, dispatching on the name recorded in it."""
    return model_entry(read_model_name(directory)).model_type.load(directory)
