"""The CLI says when the API reused an earlier job's stems instead of separating again."""

from __future__ import annotations

import io
from pathlib import Path

from app.api.main import create_app
from app.client import ApiClient
from app.commands.batch import Batch, Item
from app.commands.progress import ProgressBoard
from app.db import connect
from app.params import JobParams
from app.queue import Queue
from app.storage import storage_from_settings
from tests.api_support import USER_A, api_settings, audio_bytes, served, token


def test_the_cli_prints_which_job_s_stems_were_reused(
    s3_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    song = tmp_path / "song.wav"
    song.write_bytes(audio_bytes("WAV", 1.0))
    params = JobParams.model_validate({})
    settings = api_settings(db_url, tmp_path)
    with served(create_app(settings)) as url:
        client = ApiClient(url, token(USER_A))
        earlier = client.submit_file(song, params)
        queue = Queue()
        stem = f"outputs/{earlier['id']}/vocals.wav"
        storage_from_settings(settings).put_file(stem, song)
        with connect(db_url) as conn:  # as a worker would have run it
            worker = queue.register_worker(conn, machine_id="cli-reuse")
            (job,) = queue.claim(conn, worker.id, lease=60)
            queue.complete(conn, job, output={"stems": {"vocals": stem}})
        out = io.StringIO()
        board = ProgressBoard(["song.wav"], stream=out, tty=False)
        (result,) = Batch(client, params, board).run([Item("song.wav", song, tmp_path / "out")])
        board.close()
        client.close()
    assert result.ok and result.job_id == earlier["id"]
    assert f"reused the stems of job {earlier['id']}" in out.getvalue()
