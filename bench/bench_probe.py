"""Audio probe candidates: type from content and duration from headers, PyAV against mutagen.

Writes one file per format we accept (and broken ones) whose true length is known, gives each
a name without an extension (so only the bytes count), and asks each candidate for the type and
the duration. Also reports the install size of each candidate (its wheel and what it puts in
site-packages). The old hand-written sniffer + parsers of the API (`app/api/sniff.py`,
`app/api/probe.py`) are measured too when `--old-src DIR` names a checkout that still has them.

    .venv/bin/python bench/bench_probe.py [--seconds 7.25] [--old-src DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from audio_fixtures import tone  # noqa: E402

Answer = tuple[str | None, float | None]  # (type, seconds) or (None, None) with an error text


def _sf(path: Path, seconds: float, rate: int, fmt: str, subtype: str, **kw: object) -> None:
    sf.write(str(path), tone(seconds, rate).T, rate, format=fmt, subtype=subtype, **kw)


def _av(path: Path, seconds: float, rate: int, fmt: str, codec: str) -> None:
    import av

    data = np.ascontiguousarray(tone(seconds, rate, 2), dtype=np.float32)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="stereo")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def _strip_xing(data: bytes) -> bytes:
    """Drop the first MPEG frame when it carries a Xing/Info/VBRI header (VBR without an index)."""
    start = 0
    if data[:3] == b"ID3":
        start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    while not (data[start] == 0xFF and data[start + 1] & 0xE0 == 0xE0):
        start += 1
    head = data[start : start + 4]
    bitrates = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    assert (head[1] >> 1) & 0x0F == 0x0D, "MPEG-1 Layer III only"
    kbps = bitrates[head[2] >> 4]
    size = 144000 * kbps // (44100, 48000, 32000)[(head[2] >> 2) & 3] + ((head[2] >> 1) & 1)
    frame = data[start : start + size]
    assert b"Xing" in frame or b"Info" in frame, "no Xing/Info frame to strip"
    return data[:start] + data[start + size :]


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
    vbr = add(
        "mp3-vbr-xing",
        "mp3",
        s,
        lambda p: _sf(
            p, s, 44100, "MP3", "MPEG_LAYER_III", bitrate_mode="VARIABLE", compression_level=0.2
        ),
    )
    add("mp3-vbr-no-xing", "mp3", s, lambda p: p.write_bytes(_strip_xing(vbr.read_bytes())))
    add("m4a-aac", "m4a", s, lambda p: _av(p, s, 44100, "mp4", "aac"))
    add("adts-aac", "aac", s, lambda p: _av(p, s, 44100, "adts", "aac"))
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
    buffer = io.BytesIO()
    sf.write(buffer, tone(1.0).T, 44100, format="FLAC")
    garbage = np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    add("flac-head-then-garbage", None, 0, lambda p: p.write_bytes(buffer.getvalue()[:200] + garbage))
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


def _old(path: Path) -> Answer:
    from app.api.probe import probe_duration  # type: ignore[import-not-found]
    from app.api.sniff import sniff_path  # type: ignore[import-not-found]

    found = sniff_path(path)
    if found is None:
        return None, None
    renamed = {"mp4": "m4a"}.get(found, found)
    if found == "ogg":
        renamed = "opus" if b"OpusHead" in path.read_bytes()[:100] else "ogg"
    return renamed, probe_duration(path, found)


def run(name: str, probe: Callable[[Path], Answer], cases: list) -> list[dict]:
    rows = []
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
        if expected is None:
            ok_type = refused
        else:
            ok_type = kind == expected
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
    parser.add_argument("--old-src", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/probe_raw.md")
    args = parser.parse_args()
    candidates: list[tuple[str, Callable[[Path], Answer]]] = [
        ("mutagen", _mutagen),
        ("PyAV", _pyav),
    ]
    if args.old_src:
        sys.path.insert(0, str(args.old_src))
        candidates.append(("old sniff+probe", _old))
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
        lines.append(
            f"\n{name}: {wrong} of {len(mine)} wrong; worst duration error of the typed ones "
            f"{max(deltas, default=0):.3f} s; median probe {statistics.median(r['ms'] for r in mine):.2f} ms"
        )
    for dist in ("mutagen", "av"):
        mb, count = _size(dist)
        lines.append(f"{dist} {importlib.metadata.version(dist)}: {mb:.1f} MB in {count} files")
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
