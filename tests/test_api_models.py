"""A job naming a model the fleet does not serve is a 422 at submit, with the models to choose
from; the API adds the models of its own configuration (STEMFLEET_MODEL / _MODEL_REPO)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.api_support import USER_A, api_client, api_settings, audio_bytes, bearer
from tests.audio_fixtures import write_random_htdemucs_repo

A = bearer(USER_A)


def test_an_unserved_model_is_422_and_the_configured_ones_are_accepted(
    db_url: str, tmp_path: Path
) -> None:
    repo, name = write_random_htdemucs_repo(tmp_path / "models", name="house_model")
    settings = api_settings(db_url, tmp_path, model_repo=repo)
    with api_client(settings) as (client, _app):

        def submit(model: str) -> tuple[int, dict[str, object]]:
            response = client.post(
                "/v1/jobs",
                files={"file": ("song.wav", audio_bytes(), "application/octet-stream")},
                data={"params": json.dumps({"model": model})},
                headers=A,
            )
            return response.status_code, response.json()

        status, body = submit("no_such_model")
        assert status == 422, body
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "model_not_served"
        assert "'no_such_model' is not served" in error["message"]
        assert "htdemucs" in error["message"] and name in error["message"]

        assert submit(name)[0] == 202  # from the API's own model folder
        assert submit("htdemucs_6s")[0] == 202
