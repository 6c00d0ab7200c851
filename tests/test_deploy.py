"""The deployment files hold together: fly.toml, the worker machine template (against the
published Machines API spec), the Dockerfile and .dockerignore, supabase/config.toml, the
alert rules, and scripts/fetch_model.py (run for real on the tiny model)."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from app.clock import FakeClock
from app.settings import ENV_PREFIX, Settings, load_settings, parse_duration
from tests.deploy_support import (
    ROOT,
    assert_cli_command,
    assert_known_settings,
    dockerfile_env,
    dockerfile_stages,
    load_script,
)
from tests.fake_fly import FakeFly

FLY_SPEC = ROOT / "tests/data/fly-machines-openapi.yaml"
TEMPLATE = ROOT / "deploy/worker-machine.json"


def fly_toml() -> dict[str, Any]:
    return tomllib.loads((ROOT / "fly.toml").read_text())


def template() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(TEMPLATE.read_text())
    return data


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, value)
    return load_settings()


# --- fly.toml -------------------------------------------------------------------------------------


def test_fly_toml_runs_the_api_and_the_scaler_as_process_groups() -> None:
    config = fly_toml()
    assert config["app"] and config["primary_region"]
    processes = config["processes"]
    assert set(processes) == {"app", "scaler"}
    assert_cli_command(processes["app"])
    assert processes["scaler"] == "stemfleet scaler run"
    assert_cli_command(processes["scaler"])

    assert config["deploy"]["release_command"] == "stemfleet db migrate"
    assert_cli_command(config["deploy"]["release_command"])

    assert config["kill_signal"] == "SIGTERM"
    assert 5 <= config["kill_timeout"] <= 300

    assert config["build"]["build-target"] in dockerfile_stages()


def test_fly_toml_serves_the_api_with_a_readiness_check_and_metrics() -> None:
    config = fly_toml()
    port = int(config["env"]["STEMFLEET_API_PORT"])
    http = config["http_service"]
    assert http["processes"] == ["app"]
    assert http["internal_port"] == port
    assert http["force_https"] is True
    assert http["min_machines_running"] >= 1
    checks = http["checks"]
    assert [(c["method"], c["path"]) for c in checks] == [("GET", "/readyz")]
    for check in checks:
        assert parse_duration(check["timeout"]) < parse_duration(check["interval"])

    metrics = config["metrics"]
    assert (metrics["port"], metrics["path"], metrics["processes"]) == (port, "/metrics", ["app"])

    sizes = {group: vm for vm in config["vm"] for group in vm["processes"]}
    assert set(sizes) == set(config["processes"]), "one [[vm]] per process group"
    for vm in config["vm"]:
        assert vm["size"] and vm["memory"].endswith("mb")


def test_fly_toml_env_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = fly_toml()["env"]
    assert_known_settings(env, "fly.toml [env]")
    settings = settings_from(env, monkeypatch)
    assert settings.provider == "fly" and settings.storage == "s3"
    assert settings.machine_size in settings.machine_prices
    # the template path is where the api image copies deploy/
    assert env["STEMFLEET_MACHINE_TEMPLATE"] == "/app/deploy/worker-machine.json"
    assert "/app/deploy/worker-machine.json" in dockerfile_env("api").values()
    # the API writes the fleet's model into jobs: it must be the one the workers serve
    assert env["STEMFLEET_MODEL"] == template()["env"]["STEMFLEET_MODEL"]
    # no secret is ever written in fly.toml
    for secret in ("DATABASE_URL", "JWT_SECRET", "SERVICE_TOKEN", "SECRET_ACCESS_KEY", "API_TOKEN"):
        assert not [k for k in env if k.endswith(secret)], secret


# --- the worker machine template ------------------------------------------------------------------


def strict(schemas: dict[str, Any]) -> dict[str, Any]:
    """The spec's schemas with unknown properties refused (the published spec allows them), so
    a misspelt field in the template fails here instead of being ignored by Fly."""
    schemas = copy.deepcopy(schemas)
    for schema in schemas.values():
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    return schemas


def machine_config_validator(schemas: dict[str, Any]) -> OAS30Validator:
    root = {"$ref": "#/components/schemas/api.MachineConfig", "components": {"schemas": schemas}}
    return OAS30Validator(root)


def test_the_worker_template_is_a_valid_machine_config() -> None:
    spec = yaml.safe_load(FLY_SPEC.read_text())
    schemas = spec["components"]["schemas"]
    config = template()
    for validator in (machine_config_validator(schemas), machine_config_validator(strict(schemas))):
        errors = sorted(validator.iter_errors(config), key=str)
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]

    # the validator does see mistakes
    broken = copy.deepcopy(config)
    broken["restart"]["policy"] = "sometimes"
    broken["guest"]["cpus"] = "eight"
    assert len(list(machine_config_validator(schemas).iter_errors(broken))) == 2
    typo = copy.deepcopy(config)
    typo["stop_confg"] = typo.pop("stop_config")
    assert list(machine_config_validator(strict(schemas)).iter_errors(typo))


def test_the_worker_template_stops_for_good_and_drains_on_sigterm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = template()
    assert config["restart"] == {"policy": "no"}, "an idle-exited worker must stay stopped"
    assert config["metadata"]["stemfleet_role"] == "worker"
    assert config.get("auto_destroy") is False
    assert config["image"].startswith("registry.fly.io/")
    assert_cli_command(config["init"]["cmd"])
    assert config["init"]["cmd"][:2] == ["stemfleet", "worker"]

    env = config["env"]
    assert_known_settings(env, "deploy/worker-machine.json env")
    worker = settings_from(env, monkeypatch)
    assert worker.model_repo == Path("/models")
    assert dockerfile_env("worker")["STEMFLEET_MODEL_REPO"] == "/models"
    assert worker.worker_idle_exit > 0, "idle workers exit, so their machines stop"

    # SIGTERM; the worker releases a job it cannot finish before Fly kills it, and the scaler's
    # stop request (STEMFLEET_SHUTDOWN_GRACE in fly.toml) gives at least as long.
    stop = config["stop_config"]
    assert stop["signal"] == "SIGTERM"
    kill_after = parse_duration(stop["timeout"])
    assert worker.shutdown_grace + 10 <= kill_after
    assert parse_duration(fly_toml()["env"]["STEMFLEET_SHUTDOWN_GRACE"]) >= kill_after


def test_the_worker_template_size_is_the_size_the_scaler_prices() -> None:
    guest = template()["guest"]
    env = fly_toml()["env"]
    kind = "shared-cpu" if guest["cpu_kind"] == "shared" else guest["cpu_kind"]
    assert f"{kind}-{guest['cpus']}x" == env["STEMFLEET_MACHINE_SIZE"]
    assert "gpu_kind" not in guest, "Fly rents no GPU machines since 2026-08-01"
    # Fly's performance machines come with 2 GiB per CPU at least
    assert guest["memory_mb"] >= 2048 * guest["cpus"]
    assert guest["memory_mb"] % 256 == 0


def test_the_scaler_creates_a_worker_from_the_template_on_a_spec_checked_fly_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Fly provider reads deploy/worker-machine.json (STEMFLEET_MACHINE_TEMPLATE, as fly.toml
    sets it in the image) and the fake Machines API, which checks every request against the
    spec, accepts the machine it creates."""
    from scaler.providers.fly import FlyProvider

    clock = FakeClock()
    fake = FakeFly(clock)
    fake.start()
    try:
        env = dict(fly_toml()["env"])
        env |= {
            "STEMFLEET_MACHINE_TEMPLATE": str(TEMPLATE),
            "STEMFLEET_FLY_API_URL": fake.url,
            "STEMFLEET_FLY_API_TOKEN": fake.token,
            "STEMFLEET_FLY_APP": fake.app,
            "STEMFLEET_FLY_REGION": "iad",
        }
        provider = FlyProvider(settings_from(env, monkeypatch), clock=clock, sleep=clock.advance)
        created = provider.create("stemfleet-worker-deploy", 10.0)
        fake.tick(3)
        listed = provider.list()
        provider.close()
    finally:
        fake.stop()
    assert fake.violations == []
    assert [(m.id, m.state, m.size) for m in listed] == [(created.id, "started", "performance-8x")]
    sent = next(c.body for c in fake.calls if c.operation == "Machines_create")
    assert sent["region"] == "iad"
    config = sent["config"]
    assert config["image"] == template()["image"]
    assert config["restart"] == {"policy": "no"}
    assert config["stop_config"] == template()["stop_config"]
    assert config["metadata"]["stemfleet_role"] == "worker"
    assert config["env"]["STEMFLEET_MODEL_REPO"] == "/models"


# --- supabase/config.toml -------------------------------------------------------------------------


def test_supabase_config_is_what_the_cli_needs() -> None:
    config = tomllib.loads((ROOT / "supabase/config.toml").read_text())
    assert config["project_id"] == "stemfleet"
    assert config["db"]["major_version"] >= 15
    assert config["db"]["migrations"]["enabled"] is True
    assert config["api"]["schemas"][0] == "public"
    assert not {"queue", "admin", "scaler"} & set(config["api"]["schemas"])
    assert config["storage"]["enabled"] is True
    limit = config["storage"]["file_size_limit"]
    assert limit.endswith("MiB") and int(limit[:-3]) >= load_settings().max_upload_mb
    assert config["auth"]["enabled"] is True
    tests = sorted((ROOT / "supabase/tests").rglob("*.test.sql"))
    assert tests, "`supabase test db` runs supabase/tests/**/*.test.sql"
    for test in tests:
        text = test.read_text()
        planned = int(re.search(r"select plan\((\d+)\)", text).group(1))  # type: ignore[union-attr]
        assertions = re.findall(
            r"^select (ok|is|isnt|lives_ok|throws_ok|policies_are)\(", text, re.MULTILINE
        )
        assert planned == len(assertions), test.name
        assert text.strip().endswith("rollback;")


# --- scripts/fetch_model.py -----------------------------------------------------------------------


def test_fetch_model_writes_a_local_model_folder_the_worker_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from demucs.pretrained import get_model
    from demucs.repo import ModelLoadingError

    from worker.models import load_model

    fetch_model = load_script("fetch_model")
    dest = tmp_path / "models"
    argv = ["--model", "demucs_unittest", "--name", "tiny", "--random-weights", "--seed", "7"]
    assert fetch_model.main([*argv, "--dest", str(dest)]) == 0
    assert "verified" in capsys.readouterr().out
    weights = sorted(dest.glob("*.th"))
    assert [p.name for p in dest.glob("*.yaml")] == ["tiny.yaml"]
    assert len(weights) == 1 and re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{8}\.th", weights[0].name)
    bag = yaml.safe_load((dest / "tiny.yaml").read_text())
    assert bag["models"] == [weights[0].name.split("-")[0]]

    torch.manual_seed(7)
    original = get_model("demucs_unittest")
    loaded = load_model("tiny", dest)  # the worker's own loader, as with STEMFLEET_MODEL_REPO
    loaded_state = loaded.models[0].state_dict()
    for key, value in original.state_dict().items():
        assert torch.equal(loaded_state[key], value.half().to(value.dtype)), key

    # the checksum in the file name guards against a damaged download or copy
    blob = bytearray(weights[0].read_bytes())
    blob[-1] ^= 0xFF
    weights[0].write_bytes(bytes(blob))
    with pytest.raises(ModelLoadingError, match="checksum"):
        get_model("tiny", repo=dest)

    with pytest.raises(SystemExit, match="another --name"):
        fetch_model.main(["--model", "demucs_unittest", "--random-weights", "--dest", str(dest)])


def test_random_weights_htdemucs_is_the_released_architecture() -> None:
    """The released htdemucs (955717e8) is a run of Demucs' own `mmi` grid (grids/mmi_ft.py
    fine-tunes it), which sets `dconv_mode: 3`, `depth: 4`, `t_layers: 5`, and its
    `bottom_channels=512` branch: 41,984,456 parameters, whose half-precision file matches the
    released one's size (84,141,911 bytes, Demucs' `training_args` included)."""
    from pathlib import Path

    import demucs.grids

    grid = (Path(demucs.grids.__file__).parent / "mmi.py").read_text()
    assert '"htdemucs.dconv_mode": 3' in grid and '"htdemucs.t_layers": 5' in grid
    assert "'955717e8'" in (Path(demucs.grids.__file__).parent / "mmi_ft.py").read_text()

    fetch_model = load_script("fetch_model")
    model = fetch_model.random_weights_model("htdemucs").models[0]
    assert sum(p.numel() for p in model.parameters()) == 41_984_456
    # dilated-conv branches in the decoder as well as the encoder (dconv_mode 3)
    assert model.decoder[0].dconv is not None and model.encoder[0].dconv is not None
    assert abs(len(fetch_model.serialize(model)) - 84_141_911) < 20_000
