"""What audio we accept, and what a file is: type from its content, duration from its headers.

One list, `FORMATS`, is what the API accepts (415 otherwise), what the worker decodes (each
format names its decoders), what `stemfleet process` collects by default (the extensions) and what
the README lists (a test compares them). The probe is mutagen's (pure Python, 1.6 MB; chosen over
PyAV by measurement, see bench/results/probe.md): it reads only headers and frame indexes, never
decodes audio, and judges by the bytes, never by the file's name or the client's Content-Type.

Limits of a header probe (measured): a file whose header is intact but whose audio is cut off or
garbage passes here and fails when the worker decodes it; an MP3 without a Xing/Info/VBRI header
and ADTS AAC have no length in their headers, so theirs is estimated from the bitrate
(`Probe.estimated`): the worker then reads them to the end and holds the duration limit on the
samples it decodes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import mutagen
from mutagen.aac import AAC
from mutagen.aiff import AIFF
from mutagen.flac import FLAC
from mutagen.mp3 import MP3, BitrateMode, MPEGFrame
from mutagen.mp4 import MP4, MP4NoTrackError
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from app.errors import StemfleetError

Decoder = Literal["soundfile", "av"]


@dataclass(frozen=True)
class AudioFormat:
    """One accepted format: its name, what it is called, files and MIME types, how to decode it."""

    name: str
    label: str  # how users know it, in messages and the docs
    extensions: tuple[str, ...]  # the first is the one given to a file stored without a name
    mime_types: tuple[str, ...]  # the first is the Content-Type the input is stored with
    decoders: tuple[Decoder, ...]  # the worker tries these in order
    readers: tuple[type[mutagen.FileType], ...]  # mutagen's classes that recognise it
    min_score: int = 1  # what a reader's content score must reach (WAV: "RIFF" and "WAVE")


# libsndfile (soundfile) is sample exact (it trims MP3 encoder delay and the Opus pre-skip);
# PyAV (FFmpeg's libraries in its wheel) reads the MP4 and ADTS AAC that libsndfile does not,
# and any file libsndfile refuses.
FORMATS: tuple[AudioFormat, ...] = (
    AudioFormat(
        "wav", "WAV", ("wav", "wave"), ("audio/wav", "audio/x-wav"), ("soundfile", "av"), (WAVE,), 2
    ),
    AudioFormat(
        "flac", "FLAC", ("flac",), ("audio/flac", "audio/x-flac"), ("soundfile", "av"), (FLAC,)
    ),
    AudioFormat("mp3", "MP3", ("mp3",), ("audio/mpeg",), ("soundfile", "av"), (MP3,)),
    AudioFormat(
        "ogg",
        "Ogg Vorbis",
        ("ogg", "oga"),
        ("audio/ogg",),
        ("soundfile", "av"),
        (OggVorbis,),
    ),
    AudioFormat(
        "opus", "Opus", ("opus",), ("audio/ogg", "audio/opus"), ("soundfile", "av"), (OggOpus,)
    ),
    AudioFormat("m4a", "M4A/MP4 (AAC)", ("m4a", "mp4"), ("audio/mp4",), ("av",), (MP4,)),
    AudioFormat("aac", "ADTS AAC", ("aac",), ("audio/aac",), ("av",), (AAC,)),
    AudioFormat(
        "aiff",
        "AIFF",
        ("aiff", "aif", "aifc"),
        ("audio/aiff", "audio/x-aiff"),
        ("soundfile", "av"),
        (AIFF,),
    ),
)
BY_NAME = {f.name: f for f in FORMATS}
ACCEPTED = ", ".join(f.label for f in FORMATS)  # "WAV, FLAC, MP3, ..." for messages and docs
EXTENSIONS = tuple(ext for f in FORMATS for ext in f.extensions)
_HEAD_BYTES = 128  # what mutagen's own `File()` reads to score a file


class UnsupportedAudio(StemfleetError):
    """The bytes are not any format in FORMATS."""


class UndecodableAudio(StemfleetError):
    """The bytes look like an accepted format but its headers cannot be read."""


class EmptyAudio(UndecodableAudio):
    """Well-formed headers that say there is no audio (0 frames)."""


@dataclass(frozen=True)
class Probe:
    format: AudioFormat
    duration_s: float  # from the headers
    samplerate: int
    channels: int
    estimated: bool  # the headers hold no length: it is guessed from the bitrate and file size

    @property
    def decoders(self) -> tuple[Decoder, ...]:
        """The decoders to try, in order. libsndfile (through mpg123) stops at an estimated
        length (it cut a 7.25 s VBR MP3 without a Xing header at 4.2 s); PyAV reads to the end."""
        return ("av",) if self.estimated else self.format.decoders


def probe(path: Path) -> Probe:
    """Type and duration of the audio in `path`, from its bytes. Raises UnsupportedAudio (not
    a format we accept) or UndecodableAudio (an accepted format, unreadable or without audio);
    their messages never name the path."""
    with path.open("rb") as handle:
        return probe_file(handle)


def probe_file(handle: BinaryIO) -> Probe:
    handle.seek(0)
    head = handle.read(_HEAD_BYTES)
    if not head:
        raise UndecodableAudio("the file is empty")
    found = _recognise(handle, head)
    if found is None:
        raise UnsupportedAudio(f"the file is not audio in a format we accept ({ACCEPTED})")
    fmt, reader = found
    handle.seek(0)
    try:
        info = reader(handle).info
    except MP4NoTrackError:
        raise UndecodableAudio(f"the {fmt.label} file has no audio track") from None
    except Exception as exc:  # mutagen reports broken headers with many exception types
        raise UndecodableAudio(
            f"the {fmt.label} data cannot be decoded ({error_reason(exc)}): the file is corrupt or "
            "truncated"
        ) from None
    seconds = float(getattr(info, "length", 0.0) or 0.0)
    channels = int(getattr(info, "channels", 0) or 0)
    if channels <= 0:  # e.g. an MP4 whose tracks are all video: mutagen reads the movie's length
        raise UndecodableAudio(f"the {fmt.label} file has no audio track")
    if getattr(info, "audio_format", None) == 0:  # WAV's format tag 0: WAVE_FORMAT_UNKNOWN
        raise UndecodableAudio(f"the {fmt.label} header names no audio encoding (format tag 0)")
    if seconds <= 0:
        raise EmptyAudio(f"the {fmt.label} data holds no audio frames")
    return Probe(
        format=fmt,
        duration_s=seconds,
        samplerate=int(getattr(info, "sample_rate", 0) or 0),
        channels=channels,
        estimated=reader is AAC or getattr(info, "bitrate_mode", None) == BitrateMode.UNKNOWN,
    )


def _recognise(handle: BinaryIO, head: bytes) -> tuple[AudioFormat, type[mutagen.FileType]] | None:
    """The accepted format whose reader scores the bytes highest (by content: no file name).

    Past a leading ID3v2 tag (MP3s, some FLAC and AAC files) the bytes after it decide; a tag
    before nothing else we know is an MP3 to try. ADTS AAC has no magic bytes and mutagen only
    scores it by name, so we ask its reader last."""
    tag = _id3_size(head)
    if tag is not None:
        handle.seek(tag)
        head = handle.read(_HEAD_BYTES)
    scored = [
        (reader.score("", handle, head), index, fmt, reader)
        for index, fmt in enumerate(FORMATS)
        for reader in fmt.readers
    ]
    score, _, fmt, reader = max(scored, key=lambda s: (s[0] >= s[2].min_score, s[0], -s[1]))
    if score >= fmt.min_score:
        return fmt, reader
    if _is_mpeg_frame(head):  # mutagen scores only MPEG-1/2 layer III syncs; it reads them all
        return BY_NAME["mp3"], MP3
    handle.seek(0)
    try:
        AAC(handle)
    except Exception:
        return (BY_NAME["mp3"], MP3) if tag is not None else None
    return BY_NAME["aac"], AAC


def _is_mpeg_frame(head: bytes) -> bool:
    try:
        MPEGFrame(io.BytesIO(head))
    except Exception:
        return False
    return True


def _id3_size(head: bytes) -> int | None:
    """Length of a leading ID3v2 tag (header, syncsafe size, optional footer), or None."""
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return None
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    return 10 + size + (10 if head[5] & 0x10 else 0)


def error_reason(exc: Exception) -> str:
    """An exception's text for a user: without file system paths, which decoders like to add
    (libsndfile's reason is kept apart from its "Error opening '<path>'" prefix)."""
    text = str(getattr(exc, "error_string", None) or exc).strip()
    return type(exc).__name__ if not text or "/" in text or "\\" in text else text


def format_for_extension(name: str) -> AudioFormat | None:
    """The accepted format a file name's extension says (for collecting files, never to judge
    what a file is)."""
    suffix = Path(name).suffix.lower().lstrip(".")
    return next((f for f in FORMATS if suffix in f.extensions), None)
