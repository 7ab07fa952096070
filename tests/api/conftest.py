"""Fixtures of the serving tests (defined in `serving_setup`), shared by the API test modules."""

from tests.api.serving_setup import served, serving_client, serving_db

__all__ = ["served", "serving_client", "serving_db"]
