"""Audio probe candidates: type from content and duration from headers, PyAV against mutagen.

Writes one file per format we accept (and broken ones) whose true length is known, gives each
a name without an extension (so only the bytes count), and asks each candidate for the type and
the duration: mutagen's `File()` as it comes, PyAV (`av.open` on a file object), the probe we
ship (`app.audio_probe`: mutagen plus the ADTS / MPEG-2.5 fallbacks) and, with `--old-ref REF`,
the API's old hand-written sniffer and parsers (`app/api/sniff.py`, `app/api/probe.py` at that
git ref). Also reports each library's size in site-packages.

    .venv/bin/python bench/bench_probe.py [--seconds 7.25] [--old-ref main] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from audio_fixtures import (  # noqa: E402
    tone,
    write_adts,
    write_corrupt,
    write_m4a,
    write_mp3_that_starts_at_320k,
    write_vbr_mp3_without_xing,
)

Answer = tuple[str | None, float | None]  # (type, seconds) or (None, None) with an error text


def _sf(path: Path, seconds: float, rate: int, fmt: str, subtype: str, **kw: object) -> None:
    sf.write(str(path), tone(seconds, rate).T, rate, format=fmt, subtype=subtype, **kw)


def write_fixtures(folder: Path, seconds: float) -> list[tuple[str, Path, str | None, float]]:
    """(case, path, expected type, expected seconds); the type None means: refuse it."""
    made: list[tuple[str, Path, str | None, float]] = []

    def add(case: str, expected: str | None, real: float, write: Callable[[Path], None]) -> Path:
        path = folder / case  # no extension: the name tells nothing
        write(path)
        made.append((case, path, expected, real))
        return path

    s = seconds
    add("wav", "wav", s, lambda p: _sf(p, s, 44100, "WAV", "PCM_16"))
    add("wav-float-48k", "wav", s, lambda p: _sf(p, s, 48000, "WAV", "FLOAT"))
    add("flac", "flac", s, lambda p: _sf(p, s, 44100, "FLAC", "PCM_24"))
    add("aiff", "aiff", s, lambda p: _sf(p, s, 44100, "AIFF", "PCM_16"))
    add("aiff-c-float", "aiff", s, lambda p: _sf(p, s, 44100, "AIFF", "FLOAT"))
    add("mp3-cbr", "mp3", s, lambda p: _sf(p, s, 44100, "MP3", "MPEG_LAYER_III"))
    add("mp3-8k-mpeg2.5", "mp3", s, lambda p: _sf(p, s, 8000, "MP3", "MPEG_LAYER_III"))
    vbr = {"bitrate_mode": "VARIABLE", "compression_level": 0.2}
    add("mp3-vbr-xing", "mp3", s, lambda p: _sf(p, s, 44100, "MP3", "MPEG_LAYER_III", **vbr))
    add("mp3-vbr-no-xing", "mp3", s, lambda p: write_vbr_mp3_without_xing(p, s))
    add("mp3-320k-then-32k-no-xing", "mp3", s, lambda p: write_mp3_that_starts_at_320k(p, s))
    add("m4a-aac", "m4a", s, lambda p: write_m4a(p, s))
    add("adts-aac", "aac", s, lambda p: write_adts(p, s))
    add("ogg-vorbis", "ogg", s, lambda p: _sf(p, s, 44100, "OGG", "VORBIS"))
    add("opus", "opus", s, lambda p: _sf(p, s, 48000, "OGG", "OPUS"))
    rng = np.random.default_rng(7)
    add("random-bytes", None, 0, lambda p: p.write_bytes(rng.bytes(50_000)))
    add("png", None, 0, lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40))
    add("text", None, 0, lambda p: p.write_text("notes, not audio\n" * 300))
    add("empty", None, 0, lambda p: p.write_bytes(b""))
    for case in ("wav", "flac", "mp3-cbr", "m4a-aac", "ogg-vorbis", "aiff"):
        whole = (folder / case).read_bytes()
        add(f"{case}-first-64-bytes", None, 0, lambda p, w=whole: p.write_bytes(w[:64]))
    add("flac-head-then-garbage", None, 0, write_corrupt)
    return made


def _mutagen(path: Path) -> Answer:
    import mutagen

    with path.open("rb") as handle:  # a file object: mutagen scores the name too otherwise
        found = mutagen.File(io.BufferedReader(io.BytesIO(handle.read())))
    if found is None:
        return None, None
    names = {
        "WAVE": "wav",
        "FLAC": "flac",
        "AIFF": "aiff",
        "MP3": "mp3",
        "MP4": "m4a",
        "AAC": "aac",
        "OggVorbis": "ogg",
        "OggOpus": "opus",
    }
    return names.get(type(found).__name__, type(found).__name__), float(found.info.length)


def _pyav(path: Path) -> Answer:
    import av

    with path.open("rb") as handle, av.open(handle) as container:  # a file object: no name
        if not container.streams.audio:
            return None, None
        stream = container.streams.audio[0]
        fmt, codec = container.format.name, stream.codec_context.name
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            seconds = None
    kind = {"wav": "wav", "flac": "flac", "aiff": "aiff", "mp3": "mp3", "aac": "aac"}.get(fmt)
    if fmt.startswith("mov,mp4"):
        kind = "m4a"
    elif fmt == "ogg":
        kind = {"vorbis": "ogg", "opus": "opus"}.get(codec, codec)
    return kind or fmt, seconds


def _shipped(path: Path) -> Answer:
    from app.audio_probe import probe

    found = probe(path)
    return found.format.name, found.duration_s


def _load_old(ref: str) -> Callable[[Path], Answer]:
    """The API's old sniffer and parsers, read from git at `ref` (they import each other)."""
    folder = Path(tempfile.mkdtemp(prefix="old-probe-"))
    modules = {}
    for name in ("sniff", "probe"):
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:app/api/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (folder / f"{name}.py").write_text(source)
        spec = importlib.util.spec_from_file_location(f"app.api.{name}", folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"app.api.{name}"] = module
        spec.loader.exec_module(module)
        modules[name] = module

    def old(path: Path) -> Answer:
        found = modules["sniff"].sniff_path(path)
        if found is None:
            return None, None
        renamed = {"mp4": "m4a"}.get(found, found)
        if found == "ogg" and b"OpusHead" in path.read_bytes()[:100]:
            renamed = "opus"
        return renamed, modules["probe"].probe_duration(path, found)

    return old


def run(name: str, probe: Callable[[Path], Answer], cases: list) -> list[dict]:
    rows = []
    with contextlib.suppress(Exception):  # imports and first-call set-up are not a probe's cost
        probe(cases[0][1])
    for case, path, expected, real in cases:
        times = []
        error = ""
        answer: Answer = (None, None)
        for _ in range(5):
            t0 = time.perf_counter()
            try:
                answer = probe(path)
            except Exception as exc:
                answer, error = (None, None), f"{type(exc).__name__}"
            times.append(time.perf_counter() - t0)
        kind, seconds = answer
        refused = kind is None or seconds is None or seconds <= 0
        ok_type = refused if expected is None else kind == expected
        delta = None if (seconds is None or expected is None) else seconds - real
        rows.append(
            {
                "case": case,
                "candidate": name,
                "type": kind if kind else f"refused ({error or 'None'})",
                "ok_type": ok_type,
                "delta": delta,
                "ms": statistics.median(times) * 1000,
            }
        )
    return rows


def _size(dist: str) -> tuple[float, float]:
    """(MB in site-packages, files) of an installed distribution."""
    files = importlib.metadata.distribution(dist).files or []
    total = sum(f.locate().stat().st_size for f in files if f.locate().exists())
    return total / 1e6, len(files)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=7.25)
    parser.add_argument("--old-ref", help="git ref with app/api/sniff.py and probe.py")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    candidates: list[tuple[str, Callable[[Path], Answer]]] = [
        ("mutagen", _mutagen),
        ("PyAV", _pyav),
        ("app.audio_probe", _shipped),
    ]
    if args.old_ref:
        candidates.append((f"old sniff+probe ({args.old_ref})", _load_old(args.old_ref)))
    with tempfile.TemporaryDirectory() as tmp:
        cases = write_fixtures(Path(tmp), args.seconds)
        rows = [row for name, probe in candidates for row in run(name, probe, cases)]
    lines = ["| case | " + " | ".join(name for name, _ in candidates) + " |"]
    lines.append("|---" * (len(candidates) + 1) + "|")
    for case, *_ in cases:
        cells = []
        for name, _ in candidates:
            row = next(r for r in rows if r["case"] == case and r["candidate"] == name)
            delta = "" if row["delta"] is None else f", {row['delta']:+.3f} s"
            mark = "ok" if row["ok_type"] else "WRONG"
            cells.append(f"{mark}: {row['type']}{delta} ({row['ms']:.2f} ms)")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    for name, _ in candidates:
        mine = [r for r in rows if r["candidate"] == name]
        wrong = sum(not r["ok_type"] for r in mine)
        deltas = [abs(r["delta"]) for r in mine if r["delta"] is not None and r["ok_type"]]
        median = statistics.median(r["ms"] for r in mine)
        lines.append(
            f"\n{name}: {wrong} of {len(mine)} wrong; worst duration error of the typed ones "
            f"{max(deltas, default=0):.3f} s; median probe {median:.2f} ms"
        )
    for dist in ("mutagen", "av"):
        mb, count = _size(dist)
        lines.append(f"{dist} {importlib.metadata.version(dist)}: {mb:.1f} MB in {count} files")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
