"""Service settings, read once from `MFSERVE_*` environment variables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MFSERVE_"

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class SettingsError(ValueError):
    """Raised when an environment variable holds an invalid setting; the message names it."""


class Settings(BaseSettings):
    """Every setting of the service; each field is read from `MFSERVE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = "sqlite:///./var/mfserve.db"
    """SQLAlchemy URL of the ratings database (SQLite file or `postgresql+psycopg://...`)."""

    rating_min: float = 0.5
    """Lowest accepted explicit rating."""

    rating_max: float = 5.0
    """Highest accepted explicit rating."""

    max_batch_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    """Most rows accepted in one `POST /ratings` batch."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest accepted request body, in bytes; larger bodies get 413."""

    host: str = "127.0.0.1"
    """Interface the API server binds to."""

    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port the API server listens on."""

    log_level: LogLevel = "info"
    """Logging level of the API and worker processes."""

    admin_token: SecretStr | None = None
    """Bearer token required by the admin API; unset turns the admin API off."""

    artifact_dir: Path = Path("./var/artifacts")
    """Directory where trained model artifacts are written and read."""

    cache_dir: Path = Path("./.cache")
    """Directory for downloaded datasets (MovieLens 100K)."""

    torch_threads: int = Field(default=1, ge=1, le=256)
    """Intra-op threads of torch/BLAS in the API process (the worker uses all cores)."""

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be an sqlite:// or postgresql+psycopg:// URL")
        return value

    @field_validator("rating_min", "rating_max")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _scale_ordered(self) -> Settings:
        if self.rating_min >= self.rating_max:
            raise ValueError(
                f"{ENV_PREFIX}RATING_MIN ({self.rating_min}) must be below "
                f"{ENV_PREFIX}RATING_MAX ({self.rating_max})"
            )
        return self


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and explicit overrides), naming any bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
