"""What the pages stand on, over HTTP: the pages and every module they import come from the
package and name no outside host; /docs works offline; the stems archive; the page's config;
the operator's cost-per-job and scaler decisions; `stemfleet up`'s banner."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.commands.up import sign_in_link, webhook_secret_note
from app.db import connect
from app.queue import Queue
from tests.api_support import (
    ADMIN,
    USER_A,
    USER_B,
    api_client,
    api_settings,
    audio_bytes,
    bearer,
    token,
)

URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")
IMPORT = re.compile(r"""from\s+["'](\.[^"']+)["']""")
# the SVG namespace is a name, not a place anything is fetched from
OUTSIDE = re.compile(r"https?://(?!www\.w3\.org/2000/svg)[A-Za-z0-9.-]+")


@pytest.fixture
def app_client(db_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, FastAPI]]:
    with api_client(api_settings(db_url, tmp_path)) as pair:
        yield pair


def test_docs_reference_no_outside_host_and_their_assets_load(
    app_client: tuple[TestClient, FastAPI],
) -> None:
    client, _ = app_client
    page = client.get("/docs")
    assert page.status_code == 200
    links = [a or b for a, b in URL.findall(page.text)]
    assert {urlsplit(link).netloc for link in links} == {""}, links
    assert not OUTSIDE.search(page.text), OUTSIDE.findall(page.text)
    assets = [link for link in links if not link.endswith("openapi.json")]
    assert any(link.endswith("swagger-ui-bundle.js") for link in assets)
    for link in assets:
        asset = client.get(link)
        assert asset.status_code == 200 and len(asset.content) > 100, link
    assert client.get("/openapi.json").json()["info"]["title"] == "stemfleet"
    assert client.get("/redoc").status_code == 404  # its script would come from a CDN


def _module_files(client: TestClient, page: str) -> dict[str, str]:
    """The page's own files and every module they import, transitively."""
    html = client.get(page).text
    pending = [a or b for a, b in URL.findall(html) if (a or b).startswith("/static/")]
    seen: dict[str, str] = {}
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        answer = client.get(path)
        assert answer.status_code == 200, path
        seen[path] = answer.text
        if path.endswith(".js"):
            base = path.rsplit("/", 1)[0]
            pending += [f"{base}/{name.removeprefix('./')}" for name in IMPORT.findall(answer.text)]
    return seen


def test_the_pages_and_their_modules_come_from_the_package(
    app_client: tuple[TestClient, FastAPI],
) -> None:
    client, _ = app_client
    for page, entry in (("/", "/static/js/main.js"), ("/admin", "/static/js/admin.js")):
        answer = client.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        files = _module_files(client, page)
        assert entry in files and "/static/js/api.js" in files and "/static/css/app.css" in files
        for path, text in files.items():
            assert not OUTSIDE.search(text), (path, OUTSIDE.findall(text))
            if path.endswith(".js"):
                assert len(text.splitlines()) < 400, path


def test_the_page_config_says_how_to_sign_in(db_url: str, tmp_path: Path) -> None:
    settings = api_settings(
        db_url,
        tmp_path,
        supabase_url="https://project.supabase.co",
        supabase_anon_key="anon-key",
        web_presign_above_mb=2,
    )
    with api_client(settings) as (client, _):
        config = client.get("/v1/web/config").json()
    assert config["supabase_url"] == "https://project.supabase.co"
    assert config["supabase_anon_key"] == "anon-key"
    assert config["dev_auth"] is False
    assert config["presign_above_bytes"] == 2 * 1024 * 1024
    assert config["models"][0] == config["default_model"] == settings.model


def _succeed_with_stems(db_url: str, app: FastAPI, job_id: str) -> dict[str, bytes]:
    """Run the job through the queue's own functions, with two stems in storage."""
    storage = app.state.ctx.storage
    stems = {}
    for name, freq in (("vocals", 440.0), ("no_vocals", 110.0)):
        buffer = io.BytesIO()
        t = np.arange(8000) / 8000
        sf.write(buffer, 0.2 * np.sin(2 * np.pi * freq * t), 8000, format="WAV")
        stems[name] = buffer.getvalue()
        storage.put_bytes(f"outputs/{job_id}/{name}.wav", stems[name])
    queue = Queue()
    with connect(db_url) as conn:
        worker = queue.register_worker(conn, machine_id="zip-test")
        (job,) = queue.claim(conn, worker.id, lease=60)
        queue.complete(
            conn,
            job,
            output={"stems": {name: f"outputs/{job_id}/{name}.wav" for name in stems}},
        )
    return stems


def test_stems_archive_holds_every_stem_of_a_finished_job(
    app_client: tuple[TestClient, FastAPI], db_url: str
) -> None:
    client, app = app_client
    submitted = client.post(
        "/v1/jobs",
        files={"file": ("My Song.wav", audio_bytes(), "audio/wav")},
        headers=bearer(USER_A),
    ).json()
    job_id = submitted["id"]
    early = client.get(f"/v1/jobs/{job_id}/stems.zip", headers=bearer(USER_A))
    assert early.status_code == 409
    assert "once it has succeeded" in early.json()["error"]["message"]

    stems = _succeed_with_stems(db_url, app, job_id)
    # a download link cannot set headers: the token may ride in the query
    answer = client.get(f"/v1/jobs/{job_id}/stems.zip?access_token={token(USER_A)}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert 'filename="My_Song-stems.zip"' in answer.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zipped:
        assert sorted(zipped.namelist()) == ["no_vocals.wav", "vocals.wav"]
        for name, data in stems.items():
            assert zipped.read(f"{name}.wav") == data

    other = client.get(f"/v1/jobs/{job_id}/stems.zip", headers=bearer(USER_B))
    assert other.status_code == 404  # not theirs
    assert client.get(f"/v1/jobs/{job_id}/stems.zip").status_code == 401


def test_admin_activity_gives_cost_per_job_and_scaler_decisions(
    app_client: tuple[TestClient, FastAPI], db_url: str
) -> None:
    client, _ = app_client
    queue = Queue()
    started = datetime.now(UTC) - timedelta(minutes=30)
    with connect(db_url) as conn:
        conn.execute(
            "insert into scaler.machine_runs (provider, machine_id, size, hourly_usd, started_at)"
            " values ('fly', 'gpu-9', 'l40s', 3.6, %s)",
            (started,),
        )
        job, _ = queue.enqueue(conn, user_id=USER_A, input_key=f"inputs/{USER_A}/x/a.wav")
        worker = queue.register_worker(conn, machine_id="gpu-9")
        (claimed,) = queue.claim(conn, worker.id, lease=60)
        queue.complete(conn, claimed, output={"stems": {}})
        for actions in ([], [{"kind": "create", "reason": "3 jobs queued", "ok": True}]):
            queue.record_run(
                conn,
                provider="fly",
                started_at=datetime.now(UTC),
                inputs={"backlog": {"queued": 3}, "fleet": {"machines": 0}},
                plan={"target": 1, "notes": ["budget left: $90"]},
                actions=actions,
                errors=[],
            )

    body = client.get("/v1/admin/activity", headers=ADMIN).json()
    [cost] = body["job_costs"]
    assert cost["job_id"] == str(job.id) and cost["machine_id"] == "gpu-9"
    assert cost["hourly_usd"] == 3.6 and cost["cost_usd"] >= 0
    [decision] = body["decisions"]  # the idle run is left out
    assert decision["actions"][0]["reason"] == "3 jobs queued"
    assert decision["notes"] == ["budget left: $90"]
    assert decision["queued"] == 3 and decision["target"] == 1
    assert client.get("/v1/admin/activity", headers=bearer(USER_A)).status_code == 403


def test_up_prints_a_sign_in_link_and_where_the_webhook_secret_is(
    db_url: str, tmp_path: Path
) -> None:
    link = sign_in_link("http://127.0.0.1:8000/", "sfdev_abc")
    assert link == "http://127.0.0.1:8000/#token=sfdev_abc"  # a fragment: never sent anywhere
    generated = api_settings(db_url, tmp_path, webhook_secret=None, dev_auth=True)
    assert webhook_secret_note(generated) == (
        f"signed with the secret in {generated.data_dir / 'webhook-secret'}"
    )
    given = api_settings(db_url, tmp_path)
    assert webhook_secret_note(given) == "signed with STEMFLEET_WEBHOOK_SECRET"
