"""Audio type from the file's first bytes, never from its name or the client's Content-Type.

Recognised: WAV (RIFF/RF64 ... WAVE), FLAC (fLaC), MP3 (ID3 tag or an MPEG audio frame sync),
Ogg (OggS: Vorbis, Opus, FLAC), MP4/M4A (ftyp box), AAC in ADTS frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Literal

AudioType = Literal["wav", "flac", "mp3", "ogg", "mp4", "aac"]

CONTENT_TYPES: dict[AudioType, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "mp4": "audio/mp4",
    "aac": "audio/aac",
}
EXTENSIONS: dict[AudioType, str] = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "ogg": "ogg",
    "mp4": "m4a",
    "aac": "aac",
}
SUPPORTED = "WAV, FLAC, MP3, Ogg (Vorbis/Opus), M4A/MP4 (AAC) or ADTS AAC"

HEAD_BYTES = 64
_ID3_HEADER = 10


def _id3_size(head: bytes) -> int | None:
    """Total length of a leading ID3v2 tag (header, body, footer), or None without one."""
    if len(head) < _ID3_HEADER or head[:3] != b"ID3":
        return None
    size_bytes = head[6:10]
    if any(b & 0x80 for b in size_bytes):
        return None
    size = 0
    for b in size_bytes:
        size = (size << 7) | b
    footer = 10 if head[5] & 0x10 else 0
    return _ID3_HEADER + size + footer


def is_adts(head: bytes) -> bool:
    """An ADTS (AAC) frame header: 12-bit sync, layer 00, a valid sample-rate index."""
    if len(head) < 7 or head[0] != 0xFF or head[1] & 0xF6 != 0xF0:
        return False
    sample_rate_index = (head[2] >> 2) & 0x0F
    frame_length = ((head[3] & 0x03) << 11) | (head[4] << 3) | (head[5] >> 5)
    return sample_rate_index < 13 and frame_length >= 7


def is_mpeg_audio(head: bytes) -> bool:
    """An MPEG-1/2/2.5 audio frame header with valid version, layer, bitrate and rate fields."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0x03
    layer = (head[1] >> 1) & 0x03
    bitrate_index = head[2] >> 4
    rate_index = (head[2] >> 2) & 0x03
    return version != 1 and layer != 0 and bitrate_index != 0x0F and rate_index != 3


def sniff_head(head: bytes) -> AudioType | None:
    """The type of audio whose file starts with `head` (after any ID3 tag), or None."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "mp4"
    if is_adts(head):
        return "aac"
    if is_mpeg_audio(head):
        return "mp3"
    return None


def sniff_file(handle: BinaryIO) -> AudioType | None:
    """Sniff an open binary file, looking past a leading ID3v2 tag (MP3s, some FLAC/AAC)."""
    handle.seek(0)
    head = handle.read(HEAD_BYTES)
    tag = _id3_size(head)
    if tag is not None:
        handle.seek(tag)
        after = handle.read(HEAD_BYTES)
        found = sniff_head(after)
        # A tag alone, or a tag before an unsynchronised first frame, is still an MP3 to try.
        return found or "mp3"
    return sniff_head(head)


def sniff_path(path: Path) -> AudioType | None:
    with path.open("rb") as handle:
        return sniff_file(handle)
