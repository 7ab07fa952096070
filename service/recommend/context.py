"""What one request scores with, read once at its start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.config import Settings
from service.registry import ServedModel, ServingTables

if TYPE_CHECKING:
    from service.recommend.runtime import Serving


@dataclass(frozen=True)
class ServingContext:
    """The served model version and its tables, as one request read them."""

    served: ServedModel
    tables: ServingTables
    settings: Settings
    serving: Serving
