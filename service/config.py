"""Service settings, read once from `MFSERVE_*` environment variables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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

    access_log: bool = False
    """Log one line per HTTP request (uvicorn's access log); off by default, a cost per request."""

    admin_token: SecretStr | None = None
    """Bootstrap admin credential (`Authorization: Bearer <token>`): carries every scope."""

    auth: Literal["keys", "off"] = "keys"
    """`keys`: every data and serving call needs an API key with its scope (`mfserve keys
    create`); `off`: only the admin API needs a credential (local trials; `make run` sets it)."""

    key_refresh_interval: float = Field(default=1.0, gt=0, le=3600)
    """Seconds between an API process's re-reads of the API keys (PostgreSQL also announces
    a revocation at once); created keys reach other processes within this long on SQLite."""

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins allowed to call the API from a browser, comma-separated (`*`: any); empty: none."""

    artifact_dir: Path = Path("./var/artifacts")
    """Directory where trained model artifacts are written and read."""

    cache_dir: Path = Path("./.cache")
    """Directory for downloaded datasets (MovieLens 100K)."""

    torch_threads: int = Field(default=1, ge=1, le=256)
    """Intra-op threads of torch/BLAS in the API process (the worker uses all cores)."""

    # ----- training worker and model registry ----------------------------------------------
    default_algorithm: str = "als-biased"
    """Model trained by scheduled retraining (and by `POST /admin/retrain` without a config);
    a name of `service.ml.catalog`, checked when the API and the worker start."""

    default_config: dict[str, Any] = Field(default_factory=dict)
    """JSON object of hyper-parameters for `DEFAULT_ALGORITHM` ({} keeps the model's defaults)."""

    retrain_interval: float = Field(default=3600.0, ge=0)
    """Seconds between scheduled retrains, when ratings changed since the last job (0: off)."""

    retrain_min_new_ratings: int = Field(default=10_000, ge=0)
    """Retrain as soon as this many ratings were stored since the last job's snapshot (0: off)."""

    heartbeat_interval: float = Field(default=5.0, gt=0)
    """Seconds between a training worker's heartbeats."""

    heartbeat_timeout: float = Field(default=60.0, gt=0)
    """A running job without a heartbeat for this many seconds is marked failed."""

    worker_poll_interval: float = Field(default=1.0, gt=0)
    """Seconds an idle worker waits before looking for queued jobs again."""

    worker_threads: int | None = Field(default=None, ge=1, le=1024)
    """Torch threads of the training worker (unset: one per available core)."""

    registry_poll_interval: float = Field(default=2.0, gt=0)
    """Seconds between an API process's checks of the active model version."""

    keep_versions: int = Field(default=5, ge=1, le=10_000)
    """Artifacts of this many newest model versions are kept for rollback (the active always)."""

    gate_margin: float = Field(default=0.05, ge=0, le=10)
    """Sanity gate: a new model may be worse than the popularity baseline's validation metric
    by at most this fraction of it (0.05: 5%), or the job fails and the active model stays."""

    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    """Share of the ratings (of each user's, for implicit models) held out to validate a retrain."""

    training_seed: int = 42
    """Seed of the validation holdout of every retrain."""

    refit_on_snapshot: bool = True
    """After a retrain passes the gate on the validation slice, refit the same config on every
    rating of the snapshot and publish that model (false: publish the model fitted on the
    training slice)."""

    # ----- serving -------------------------------------------------------------------------
    max_recommendations: int = Field(default=1000, ge=1, le=100_000)
    """Largest `n` of a recommendation or similar-items call; a larger `n` is refused (422)."""

    user_embeddings: Literal["auto", "foldin", "stored"] = "auto"
    """Which vector scores a user the model was trained on: `auto` uses the stored embedding
    while the user's ratings are unchanged since the model's snapshot and folds in their current
    history otherwise; `foldin` always folds in; `stored` always prefers the stored embedding."""

    max_history_items: int = Field(default=10_000, ge=1, le=1_000_000)
    """Most entries in a request's `history` (anonymous recommendations, scores, fold-in)."""

    max_score_items: int = Field(default=10_000, ge=1, le=1_000_000)
    """Most `items` in one `POST /scores` call."""

    max_batch_users: int = Field(default=1000, ge=1, le=10_000)
    """Most `users` in one `POST /recommend/batch` call."""

    item_refresh_interval: float = Field(default=2.0, gt=0)
    """Seconds between checks for changed item metadata (tags) in the serving catalog."""

    profile_cache_ratings: int = Field(default=1_000_000, ge=0)
    """Most ratings an API process keeps of users changed since the served model's snapshot
    (about 12 bytes each), so that an active user's next call reads only their marker."""

    serving_device: str = "cpu"
    """Device the API process scores on (`cpu`, `cuda`, `cuda:1` or `auto`)."""

    metrics_enabled: bool = True
    """Expose Prometheus metrics at `/metrics` and time every request."""

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be an sqlite:// or postgresql+psycopg:// URL")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("rating_min", "rating_max")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("serving_device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "auto" and not value.startswith(("cpu", "cuda", "mps")):
            raise ValueError("must be cpu, cuda, cuda:N, mps or auto")
        return value

    @model_validator(mode="after")
    def _heartbeat_ordered(self) -> Settings:
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise ValueError(
                f"{ENV_PREFIX}HEARTBEAT_TIMEOUT ({self.heartbeat_timeout}) must exceed twice "
                f"{ENV_PREFIX}HEARTBEAT_INTERVAL ({self.heartbeat_interval})"
            )
        return self

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
