"""The CLI end to end, as a user runs it: `stemfleet separate` / `process` with no server
configured bring up the embedded system (a real Postgres from the machine's binaries, the API,
the scaler starting real `stemfleet worker` processes running Demucs' tiny model) and take it all
down again; `stemfleet up` runs until SIGINT, and the other commands find it by themselves.

Every command runs as a subprocess with STEMFLEET_DATA_DIR in a throwaway folder. A test that
brings a system up ends by looking for any process still carrying that folder in its environment
or command line (the API, scaler, workers, Postgres): there must be none. The tests against `up`
share one (module-scoped) `up` in a second data folder; the last of them stops it with SIGINT.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.pgserver import free_port
from tests.audio_fixtures import write_clip, write_corrupt, write_random_htdemucs_repo

ROOT = Path(__file__).resolve().parent.parent
STEMS = {"drums", "bass", "other", "vocals"}
COMMAND_TIMEOUT = 240

pytestmark = pytest.mark.slow


def _data_folder() -> Path:
    """Not under pytest's tmp_path: that is private (mode 700), and the `postgres` OS user, which
    runs the server when we are root, must reach the cluster."""
    base = Path(tempfile.mkdtemp(prefix="stemfleet-cli-"))
    os.chmod(base, 0o755)
    return base / "data"


def _environment(data_dir: Path, tmp: Path, **extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
    environment.update(
        {
            "STEMFLEET_DATA_DIR": str(data_dir),
            "STEMFLEET_MODEL": "demucs_unittest",
            "STEMFLEET_DEVICE": "cpu",
            "STEMFLEET_THREADS": "1",
            "TMPDIR": str(tmp),
            "PYTHONPATH": str(ROOT),
            **extra,
        }
    )
    return environment


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """The data folder of the tests with no server: its cluster is initialised once and reused
    across commands, as it is for a user."""
    folder = _data_folder()
    yield folder
    shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture
def env(data_dir: Path, tmp_path: Path) -> dict[str, str]:
    return _environment(data_dir, tmp_path)


def stemfleet(
    args: list[str | Path], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def processes_marked(marker: str) -> list[str]:
    """Live processes whose environment or command line mentions `marker`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline or marker.encode() in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command}")
    return found


def assert_nothing_left(data_dir: Path) -> None:
    assert processes_marked(str(data_dir)) == []
    assert not (data_dir / "pg" / "data" / "postmaster.pid").exists()


def assert_stems(folder: Path, seconds: float, ext: str = "wav") -> None:
    assert {p.stem for p in folder.iterdir()} == STEMS
    for stem in STEMS:
        info = sf.info(str(folder / f"{stem}.{ext}"))
        assert info.samplerate == 44100
        assert info.channels == 2
        assert info.frames == round(seconds * 44100)


def decoded(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: sf.read(str(p), dtype="int16")[0] for p in sorted(folder.iterdir())}


def test_separate_brings_up_the_embedded_system_and_takes_it_down(
    env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    first = write_clip(tmp_path / "first.wav", 2.0)
    second = write_clip(tmp_path / "second song.flac", 1.5)

    done = stemfleet(["separate", first, second, "--out", "out"], env, tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 file(s) separated" in done.stdout
    assert_stems(tmp_path / "out" / "first", 2.0)
    assert_stems(tmp_path / "out" / "second song", 1.5)
    assert_nothing_left(data_dir)


def test_process_twice_does_nothing_new_the_second_time(
    env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "card"
    source.mkdir()
    write_clip(source / "take1.WAV", 1.0)
    write_clip(source / "take2.wav", 1.5)
    (source / "notes.txt").write_text("not audio")
    (tmp_path / "stemfleet.yaml").write_text(
        "profiles:\n"
        "  - name: card\n"
        "    source_folder: card\n"
        "    glob: '*.wav'\n"
        "    model: demucs_unittest\n"
        "    output: {format: flac}\n"
        "    destination: media\n"
        "    remote: false\n"
    )

    first = stemfleet(["process", "card"], env, tmp_path)

    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 new, 0 already processed" in first.stdout
    assert_stems(tmp_path / "media" / "take1", 1.0, "flac")
    assert_stems(tmp_path / "media" / "take2", 1.5, "flac")
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "media").rglob("*.flac")}

    second = stemfleet(["process", "card"], env, tmp_path)

    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 new, 2 already processed" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "media").rglob("*.flac")} == written
    assert_nothing_left(data_dir)


def test_a_worker_that_cannot_load_its_model_fails_the_files_with_the_reason(
    env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    # The offline case without the network: a model folder that lacks the model asked for
    # makes the worker fail at boot the way a failed download does.
    repo, _ = write_random_htdemucs_repo(tmp_path / "models")
    env = {**env, "STEMFLEET_MODEL_REPO": str(repo)}
    clip = write_clip(tmp_path / "song.wav", 0.5)

    done = stemfleet(["separate", clip, "--model", "htdemucs_ft"], env, tmp_path)

    assert done.returncode == 1
    [failure] = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    assert "the worker could not start" in failure
    assert "unknown model 'htdemucs_ft'" in failure
    assert "STEMFLEET_MODEL_REPO" in failure
    assert_nothing_left(data_dir)


def _read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


def _wait_for_line(lines: queue.Queue[str], text: str, timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no line with {text!r} within {timeout}s; got:\n{''.join(seen)}")


def start_up(
    env: dict[str, str], cwd: Path, *args: str
) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """`stemfleet up ARGS` in its own session; its output arrives line by line in the queue."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    return process, lines


@dataclass
class Up:
    process: subprocess.Popen[str]
    lines: queue.Queue[str]
    data_dir: Path
    env: dict[str, str]
    model: str  # a model folder model with fixed weights, also in STEMFLEET_MODEL_REPO


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """`stemfleet up` in its own data folder, with one worker from the start (so SIGINT finds a
    worker process to take down too) that also knows a model folder with fixed weights."""
    folder = _data_folder()
    tmp = tmp_path_factory.mktemp("up")
    # demucs_unittest is re-initialised at random in every process: comparing two processes'
    # output needs a model whose weights are fixed.
    repo, model = write_random_htdemucs_repo(tmp / "models")
    env = _environment(folder, tmp, STEMFLEET_MODEL_REPO=str(repo))
    port = free_port()
    process, lines = start_up(
        {**env, "STEMFLEET_MIN_MACHINES": "1"},
        tmp,
        *("--logs", "--port", str(port), "--scaler-interval", "1"),
    )
    try:
        banner = "".join(_wait_for_line(lines, "Press Ctrl-C", 120))
        assert f"http://127.0.0.1:{port}" in banner
        assert "token     sfdev_" in banner
        # the scaler's log line (up's own output with --logs), before or after the banner
        if "local_worker_spawned" not in banner:
            _wait_for_line(lines, "local_worker_spawned", 120)
        yield Up(process, lines, folder, env, model)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
        shutil.rmtree(folder.parent, ignore_errors=True)


def test_separate_against_up_reports_each_bad_file_and_still_does_the_good_ones(
    up: Up, tmp_path: Path
) -> None:
    good = write_clip(tmp_path / "good.wav", 1.0)
    also_good = write_clip(tmp_path / "also good.flac", 0.5)
    corrupt = write_corrupt(tmp_path / "broken.flac")
    missing = tmp_path / "missing.wav"
    files = [missing, good, corrupt, also_good]

    done = stemfleet(["separate", *files, "--out", "out"], up.env, tmp_path)

    assert done.returncode == 1
    assert "starting the embedded system" not in done.stderr  # it found `up` by itself
    assert "2 of 4 file(s) separated" in done.stdout
    assert_stems(tmp_path / "out" / "good", 1.0)
    assert_stems(tmp_path / "out" / "also good", 0.5)
    failures = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 2, done.stderr
    assert f"failed: {missing}: no such file" in failures[0]
    assert failures[1].startswith(f"failed: {corrupt}: ")
    # the reason from whoever refused it (the API's intake, or the worker's decoder)
    assert re.search(r"cannot be read|could not decode", failures[1]), failures[1]
    assert not (tmp_path / "out" / "broken").exists()


def test_local_separation_equals_the_queued_one(up: Up, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "mix.wav", 2.0)
    options = ["--model", up.model, "--two-stems", "vocals", "--shifts", "0"]  # no random shift

    queued = stemfleet(["separate", clip, *options, "--out", "queued"], up.env, tmp_path)
    local = stemfleet(["separate", "--local", clip, *options, "--out", "local"], up.env, tmp_path)

    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert local.returncode == 0, local.stdout + local.stderr
    from_queue = decoded(tmp_path / "queued" / "mix")
    in_process = decoded(tmp_path / "local" / "mix")
    assert set(from_queue) == set(in_process) == {"vocals", "no_vocals"}
    for stem, samples in from_queue.items():
        assert samples.shape == (88200, 2)
        assert np.array_equal(samples, in_process[stem]), stem


def test_jobs_status_download_and_cancel_against_up(up: Up, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "song.wav", 1.25)  # a length no other test sends
    assert stemfleet(["separate", clip, "--out", "out"], up.env, tmp_path).returncode == 0

    listed = stemfleet(["jobs", "--json", "--limit", "1"], up.env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    [job] = json.loads(listed.stdout)
    assert (job["status"], Path(job["input_key"]).name) == ("succeeded", "song.wav")
    table = stemfleet(["jobs", "--status", "succeeded"], up.env, tmp_path).stdout
    assert table.splitlines()[0].split() == ["ID", "STATUS", "KIND", "INPUT", "CREATED"]
    assert job["id"] in table
    status = stemfleet(["status", job["id"]], up.env, tmp_path)
    assert "status    succeeded" in status.stdout
    fetched = stemfleet(["download", job["id"], "--out", "again"], up.env, tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert decoded(tmp_path / "again" / "song").keys() == STEMS
    refused = stemfleet(["cancel", job["id"]], up.env, tmp_path)
    assert refused.returncode == 2
    assert "already succeeded" in refused.stderr


def test_a_remote_profile_skips_what_the_api_already_separated(up: Up, tmp_path: Path) -> None:
    # `up` stands in for a deployed API: the CLI reaches it by URL and token only.
    state = json.loads((up.data_dir / "embedded.json").read_text())
    env = {**up.env, "STEMFLEET_DATA_DIR": str(tmp_path / "elsewhere")}
    env["STEMFLEET_API_TOKEN"] = state["token"]
    (tmp_path / "card").mkdir()
    write_clip(tmp_path / "card" / "take.wav", 0.75)
    (tmp_path / "stemfleet.yaml").write_text(
        f"api_url: {state['api_url']}\n"
        "profiles:\n"
        "  - name: studio\n"
        "    source_folder: card\n"
        "    model: demucs_unittest\n"
        "    two_stems: vocals\n"
        "    destination: media\n"
        "    remote: true\n"
    )

    first = stemfleet(["process", "studio"], env, tmp_path)
    second = stemfleet(["process", "studio"], env, tmp_path)

    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 new, 0 already processed" in first.stdout
    assert sorted(p.name for p in (tmp_path / "media" / "take").iterdir()) == [
        "no_vocals.wav",
        "vocals.wav",
    ]
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 new, 1 already processed" in second.stdout
    assert not (tmp_path / "elsewhere").exists()  # no local system was involved


def test_up_stops_everything_on_sigint(up: Up) -> None:
    up.process.send_signal(signal.SIGINT)

    assert up.process.wait(timeout=120) == 0
    assert_nothing_left(up.data_dir)
    assert not (up.data_dir / "embedded.json").exists()
