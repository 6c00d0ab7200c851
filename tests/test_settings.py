from __future__ import annotations

import pytest

from app.errors import ConfigError
from app.settings import load_settings, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("30s", 30.0), ("10m", 600.0), ("1.5h", 5400.0), (2, 2.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STEMFLEET_MAX_MACHINES", "many"),
        ("STEMFLEET_WORKER_IDLE_EXIT", "ten minutes"),
        ("STEMFLEET_DATABASE_URL", "mysql://x"),
        ("STEMFLEET_SCALE_RULES", "10-1"),
        ("STEMFLEET_PRECISION", "fp8"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_cross_field_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEMFLEET_MIN_MACHINES", "5")
    monkeypatch.setenv("STEMFLEET_MAX_MACHINES", "2")
    with pytest.raises(ConfigError, match="STEMFLEET_MIN_MACHINES"):
        load_settings()


def test_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEMFLEET_SCALE_RULES", "50:5, 10:1")
    monkeypatch.setenv("STEMFLEET_SCALE_DOWN_IDLE", "15m")
    monkeypatch.setenv("STEMFLEET_CALLBACK_ALLOWLIST", "localhost, hooks.internal")
    settings = load_settings()
    assert settings.rules == [(10, 1), (50, 5)]
    assert settings.scale_down_idle == 900.0
    assert settings.callback_allowlist == ["localhost", "hooks.internal"]


def test_missing_database_url_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"STEMFLEET_DATABASE_URL.*stemfleet up"):
        load_settings(database_url="").require_database_url()
