"""Folder profiles (the YAML config and what counts as already processed), and the CLI's
per-file progress lines and output folders, without starting any process."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import psycopg
import pytest

from app.audio_probe import EXTENSIONS
from app.commands.batch import output_folders
from app.commands.progress import ProgressBoard
from app.commands.separate import unreadable
from app.db import Connection, as_user
from app.errors import ConfigError
from app.profiles import file_sha256, find_config, load_profiles
from app.queue import Queue

SEED_STYLE = """
api_url: https://stems.example.com
profiles:
  - name: h4n
    source_folder: card/STEREO
    model: hdemucs_mmi
    remote: true
    output:
      format: opus
      bitrate: 192
    destination: ~/media/h4n
  - name: desk
    source_folder: /srv/desk
    glob: "*.flac"
    recursive: true
    two_stems: vocals
    destination: out
"""


def write_config(folder: Path, text: str) -> Path:
    path = folder / "stemfleet.yaml"
    path.write_text(text)
    return path


def test_profiles_read_the_seed_shape_and_resolve_folders(tmp_path: Path) -> None:
    config = load_profiles(write_config(tmp_path, SEED_STYLE))

    h4n = config.get("h4n")
    assert config.api_url == "https://stems.example.com"
    assert h4n.source_folder == tmp_path / "card/STEREO"  # relative to the YAML file
    assert h4n.destination == Path("~/media/h4n").expanduser()
    assert h4n.remote
    params = h4n.job_params()
    assert (params.model, params.format, params.effective_bitrate) == ("hdemucs_mmi", "opus", 192)
    desk = config.get("desk")
    assert desk.glob == ["*.flac"]
    assert desk.job_params().two_stems == "vocals"
    assert not desk.remote


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (
            "    format: wav\n    bitrate: 128\n",
            r"profiles\[x\]: .*bitrate applies to mp3 and opus",
        ),
        ("    stems: [vocals, kazoo]\n", r"profiles\[x\]: .*unknown stems \['kazoo'\]"),
        ("    strategy: fast\n", r"profiles\[x\]\.strategy: Extra inputs are not permitted"),
    ],
)
def test_a_bad_profile_names_itself_and_the_field(
    tmp_path: Path, profile: str, message: str
) -> None:
    text = f"profiles:\n  - name: x\n    source_folder: in\n    destination: out\n{profile}"

    with pytest.raises(ConfigError, match=message):
        load_profiles(write_config(tmp_path, text))


def test_unknown_profile_and_missing_config_say_what_exists(tmp_path: Path) -> None:
    config = load_profiles(write_config(tmp_path, SEED_STYLE))

    with pytest.raises(ConfigError, match=r"no profile named 'nope' .*profiles: h4n, desk"):
        config.get("nope")
    with pytest.raises(ConfigError, match="STEMFLEET_PROFILES_FILE"):
        find_config(tmp_path / "absent.yaml", None)


def test_source_files_match_names_case_insensitively(tmp_path: Path) -> None:
    card = tmp_path / "card"
    (card / "day2").mkdir(parents=True)
    for name in ("ZOOM0001.WAV", "zoom0002.wav", "notes.txt", "day2/ZOOM0003.wav"):
        (card / name).write_bytes(b"x")
    text = (
        "profiles:\n"
        "  - {name: flat, source_folder: card, glob: '*.wav', destination: out}\n"
        "  - {name: deep, source_folder: card, glob: '*.wav', recursive: true, destination: out}\n"
    )
    config = load_profiles(write_config(tmp_path, text))

    assert [p.name for p in config.get("flat").source_files()] == ["ZOOM0001.WAV", "zoom0002.wav"]
    assert [p.relative_to(card).as_posix() for p in config.get("deep").source_files()] == [
        "ZOOM0001.WAV",
        "day2/ZOOM0003.wav",
        "zoom0002.wav",
    ]
    missing = config.get("flat").model_copy(update={"source_folder": tmp_path / "unplugged"})
    with pytest.raises(ConfigError, match="is the card or drive mounted"):
        missing.source_files()


def test_by_default_a_profile_collects_every_accepted_format(tmp_path: Path) -> None:
    card = tmp_path / "card"
    card.mkdir()
    audio = [f"take.{ext}" for ext in EXTENSIONS] + ["LOUD.AIF", "radio.AAC"]
    for name in [*audio, "notes.txt", "cover.jpg", "session.mid"]:
        (card / name).write_bytes(b"x")
    text = "profiles:\n  - {name: all, source_folder: card, destination: out}\n"
    config = load_profiles(write_config(tmp_path, text))
    assert [p.name for p in config.get("all").source_files()] == sorted(audio)
    assert {"take.aiff", "take.aif", "take.aac", "take.m4a"} <= set(audio)


def test_processed_files_are_recorded_per_profile_by_hash(tx: Connection, queue: Queue) -> None:
    first, second, third = (hashlib.sha256(bytes([i])).hexdigest() for i in range(3))
    job = uuid.uuid4()
    queue.record_profile_file(
        tx, profile="h4n", sha256=first, source_path="/card/a.wav", job_id=job, outputs={}
    )
    queue.record_profile_file(
        tx, profile="desk", sha256=second, source_path="/desk/b.wav", job_id=None, outputs={}
    )

    assert queue.profile_files_processed(tx, "h4n", [first, second, third]) == {first}
    assert queue.profile_files_processed(tx, "desk", [first, second]) == {second}

    again = queue.record_profile_file(
        tx,
        profile="h4n",
        sha256=first,
        source_path="/card/renamed.wav",
        job_id=None,
        outputs={"vocals": "/media/a/vocals.wav"},
    )
    assert (again.source_path, again.job_id) == ("/card/renamed.wav", None)
    assert again.outputs == {"vocals": "/media/a/vocals.wav"}
    assert queue.profile_files_processed(tx, "h4n", [first]) == {first}


def test_end_users_cannot_read_the_processed_files(tx: Connection, queue: Queue) -> None:
    queue.record_profile_file(
        tx,
        profile="h4n",
        sha256=hashlib.sha256(b"x").hexdigest(),
        source_path="/card/a.wav",
        job_id=None,
        outputs={},
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(tx, str(uuid.uuid4())):
        tx.execute("select * from public.profile_files").fetchall()


def test_file_sha256_reads_the_content(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"stems" * 300_000)
    assert file_sha256(path) == hashlib.sha256(b"stems" * 300_000).hexdigest()


def test_output_folders_never_collide(tmp_path: Path) -> None:
    paths = [Path("a/song.wav"), Path("b/song.flac"), Path("take.mp3"), Path("c/song.wav")]

    folders = output_folders(paths, tmp_path)

    assert [f.name for f in folders] == ["song", "song-2", "take", "song-3"]


def test_unreadable_names_the_problem(tmp_path: Path) -> None:
    assert unreadable(tmp_path / "nope.wav") == f"no such file: {tmp_path / 'nope.wav'}"
    assert unreadable(tmp_path) == f"not a file: {tmp_path}"
    (tmp_path / "ok.wav").write_bytes(b"RIFF")
    assert unreadable(tmp_path / "ok.wav") is None


def test_progress_prints_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    board = ProgressBoard(["a.wav", "b.wav"], stream=out)
    board.update("a.wav", "queued")
    board.update("a.wav", "queued")  # unchanged: no new line
    for fraction in (0.0, 0.1, 0.3, 0.55, 0.6, 1.0):
        board.update("a.wav", "running", fraction)
    board.update("b.wav", "failed", note="no such file: b.wav")
    board.update("a.wav", "downloading", 1.0, note="stems 40%")
    board.update("a.wav", "downloading", 1.0, note="stems 80%")  # no line for each percent
    board.update("a.wav", "done", 1.0, note="4 stems in out/a")
    board.close()

    assert out.getvalue().splitlines() == [
        "a.wav: queued",
        "a.wav: running 0%",
        "a.wav: running 30%",
        "a.wav: running 55%",
        "a.wav: running 100%",
        "b.wav: failed  no such file: b.wav",
        "a.wav: downloading",
        "a.wav: done  4 stems in out/a",
    ]


def test_progress_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    board = ProgressBoard(["a.wav", "b.wav"], stream=out, tty=True)
    board.update("a.wav", "running", 0.5)
    board.update("b.wav", "queued")
    board.close()

    frames = out.getvalue().split("\x1b[2F")
    assert len(frames) == 3  # first draw, then two redraws from the top of the board
    last = frames[-1].replace("\x1b[2K", "").splitlines()
    assert last[0].startswith("a.wav  running     [############............]  50%")
    assert last[1].startswith("b.wav  queued")


def test_progress_bar_never_moves_back_within_an_attempt() -> None:
    out = io.StringIO()
    board = ProgressBoard(["a.wav"], stream=out, tty=True)
    board.update("a.wav", "running", 0.5)
    board.update("a.wav", "running", 0.25)  # an older row seen late: the bar stays at 50%
    assert board.fraction("a.wav") == 0.5
    board.update("a.wav", "running", 1.0)
    board.update("a.wav", "downloading", 0.0)  # the stems' download does not empty the bar
    assert board.fraction("a.wav") == 1.0
    board.update("a.wav", "downloading", 1.0, note="stems 50%")
    board.close()
    last = out.getvalue().split("\x1b[1F")[-1].replace("\x1b[2K", "")
    assert last.startswith("a.wav  downloading [########################] 100%  stems 50%")


def test_progress_bar_starts_again_with_a_new_attempt() -> None:
    board = ProgressBoard(["a.wav"], stream=io.StringIO())
    board.update("a.wav", "running", 0.75)
    board.update("a.wav", "queued", note="attempt 2 of 3")  # the worker went down: requeued
    board.update("a.wav", "running", 0.1)
    assert board.fraction("a.wav") == 0.1
