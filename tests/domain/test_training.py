"""The default model of scheduled retrains is checked at start-up, naming the bad variable."""

from __future__ import annotations

from service.config import load_settings
from service.domain.training import default_model_problem


def test_the_default_model_is_accepted() -> None:
    assert default_model_problem(load_settings(database_url="sqlite:///unused.db")) is None


def test_an_unknown_default_algorithm_names_the_variable() -> None:
    settings = load_settings(database_url="sqlite:///unused.db", default_algorithm="bogus")
    problem = default_model_problem(settings)
    assert problem is not None
    assert problem.startswith("MFSERVE_DEFAULT_ALGORITHM: unknown model 'bogus'")
    assert "als-biased" in problem


def test_a_bad_default_config_names_the_variable() -> None:
    settings = load_settings(database_url="sqlite:///unused.db", default_config={"epochs": 0})
    problem = default_model_problem(settings)
    assert problem is not None
    assert problem.startswith("MFSERVE_DEFAULT_CONFIG is not a valid config for als-biased")
