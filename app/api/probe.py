"""Cheap duration probes: headers and frame indexes only, no decoding of the audio itself.

libsndfile (soundfile) reads WAV, FLAC, Ogg and MP3 headers; MP4/M4A is read from its `mvhd`
box, ADTS AAC by walking the frame headers. torch is not available in the API install.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import soundfile

from app.api.sniff import AudioType, is_adts
from app.errors import StemfleetError

_ADTS_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts"}


class UndecodableAudio(StemfleetError):
    """The bytes look like a known audio type but cannot be read as one."""


def probe_duration(path: Path, audio_type: AudioType) -> float:
    """Seconds of audio in `path`; raises UndecodableAudio with the reason."""
    if path.stat().st_size == 0:
        raise UndecodableAudio("the file is empty")
    if audio_type == "mp4":
        return _mp4_duration(path)
    if audio_type == "aac":
        return _adts_duration(path)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile's reason without its "Error opening '<temp path>'" prefix
        reason = getattr(exc, "error_string", None) or type(exc).__name__
        raise UndecodableAudio(f"the {audio_type} data cannot be decoded ({reason})") from None
    if info.samplerate <= 0 or info.frames <= 0:
        raise UndecodableAudio(f"the {audio_type} data holds no audio frames")
    return float(info.frames) / float(info.samplerate)


def _boxes(data: bytes | mmap.mmap, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISO-BMFF boxes in data[start:end]."""
    found = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                break
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise UndecodableAudio("the MP4 data is truncated or its boxes are corrupt")
        found.append((kind, pos + header, pos + size))
        pos += size
    return found


def _find(
    data: bytes | mmap.mmap, start: int, end: int, kind: bytes
) -> list[tuple[bytes, int, int]]:
    out = []
    for box in _boxes(data, start, end):
        if box[0] == kind:
            out.append(box)
        if box[0] in _CONTAINERS:
            out.extend(_find(data, box[1], box[2], kind))
    return out


def _mp4_duration(path: Path) -> float:
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size = len(data)
        moov = [b for b in _boxes(data, 0, size) if b[0] == b"moov"]
        if not moov:
            raise UndecodableAudio("the MP4 data has no 'moov' box (truncated upload?)")
        _, start, end = moov[0]
        handlers = [bytes(data[s + 8 : s + 12]) for _, s, e in _find(data, start, end, b"hdlr")]
        if b"soun" not in handlers:
            raise UndecodableAudio("the MP4 data has no audio track")
        mvhd = _find(data, start, end, b"mvhd")
        if not mvhd:
            raise UndecodableAudio("the MP4 data has no 'mvhd' header")
        _, s, e = mvhd[0]
        version = data[s]
        if version == 1 and e - s >= 32:
            timescale, duration = struct.unpack(">IQ", data[s + 20 : s + 32])
        elif e - s >= 20:
            timescale, duration = struct.unpack(">II", data[s + 12 : s + 20])
        else:
            raise UndecodableAudio("the MP4 'mvhd' header is truncated")
    if timescale == 0:
        raise UndecodableAudio("the MP4 header has a zero timescale")
    return float(duration) / float(timescale)


def _adts_duration(path: Path) -> float:
    samples = 0
    rate = 0
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = 0
        size = len(data)
        if data[:3] == b"ID3" and size >= 10:
            tag = 0
            for b in data[6:10]:
                tag = (tag << 7) | (b & 0x7F)
            pos = 10 + tag
        while pos + 7 <= size:
            header = bytes(data[pos : pos + 7])
            if not is_adts(header):
                break
            rate = _ADTS_RATES[(header[2] >> 2) & 0x0F]
            frame_length = ((header[3] & 0x03) << 11) | (header[4] << 3) | (header[5] >> 5)
            samples += 1024 * ((header[6] & 0x03) + 1)
            pos += frame_length
    if samples == 0 or rate == 0:
        raise UndecodableAudio("the AAC data has no valid ADTS frames")
    return samples / rate
