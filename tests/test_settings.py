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


# Every secret setting, each with a value no message or repr may show.
SECRETS = {
    "STEMFLEET_DATABASE_URL": "postgresql://stem:pw-database-7f3a@db.example:5432/postgres",
    "STEMFLEET_S3_ACCESS_KEY_ID": "s3-key-id-7f3a",
    "STEMFLEET_S3_SECRET_ACCESS_KEY": "s3-secret-7f3a",
    "STEMFLEET_FLY_API_TOKEN": "fly-token-7f3a",
    "STEMFLEET_JWT_SECRET": "jwt-secret-7f3a",
    "STEMFLEET_SERVICE_TOKEN": "service-token-7f3a",
    "STEMFLEET_DEV_TOKEN": "dev-token-7f3a",
    "STEMFLEET_WEBHOOK_SECRET": "whsec_d2ViaG9vay1zZWNyZXQtN2YzYQ==",
    "STEMFLEET_API_TOKEN": "api-token-7f3a",
}


def test_no_repr_or_dump_of_the_settings_shows_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in SECRETS.items():
        monkeypatch.setenv(variable, value)
    settings = load_settings()
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    for text in shown:
        leaked = [v for v in SECRETS.values() if v in text or "7f3a" in text]
        assert not leaked, f"{leaked} in {text[:200]}…"
    # each is still there for the code that uses it
    assert settings.require_database_url() == SECRETS["STEMFLEET_DATABASE_URL"]
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == SECRETS["STEMFLEET_WEBHOOK_SECRET"]


def test_a_malformed_database_url_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEMFLEET_DATABASE_URL", "mysql://stem:pw-database-7f3a@db.example/x")
    with pytest.raises(ConfigError, match="STEMFLEET_DATABASE_URL") as raised:
        load_settings()
    assert "7f3a" not in str(raised.value)


def test_a_secret_of_the_wrong_type_is_named_without_its_value() -> None:
    with pytest.raises(ConfigError, match="STEMFLEET_JWT_SECRET") as raised:
        load_settings(jwt_secret=["jwt-secret-7f3a"])
    assert "7f3a" not in str(raised.value)


def test_settings_are_grouped_by_part_and_each_part_reads_its_own_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.settings import (
        ApiSettings,
        ClientSettings,
        CoreSettings,
        ScalerSettings,
        Settings,
        StorageSettings,
        WorkerSettings,
    )

    parts = [CoreSettings, StorageSettings, WorkerSettings, ScalerSettings, ApiSettings]
    parts.append(ClientSettings)
    names = [set(part.model_fields) for part in parts]
    assert set().union(*names) == set(Settings.model_fields)
    assert sum(map(len, names)) == len(Settings.model_fields)  # each setting in one part
    monkeypatch.setenv("STEMFLEET_THREADS", "3")
    monkeypatch.setenv("STEMFLEET_MAX_MACHINES", "7")
    assert WorkerSettings().threads == 3 and "max_machines" not in WorkerSettings.model_fields
    assert ScalerSettings().max_machines == 7
