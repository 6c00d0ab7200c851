"""Turning an upload into a job's input: size limit, sha256, type sniffed from the bytes,
duration probed from the headers. Every refusal is an ApiError with the status and a fix."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app.api.errors import ApiError
from app.audio_probe import ACCEPTED, AudioFormat, UndecodableAudio, UnsupportedAudio, probe

CHUNK = 1 << 20


@dataclass(frozen=True)
class Input:
    path: Path
    size: int
    sha256: str
    format: AudioFormat
    duration_s: float

    @property
    def content_type(self) -> str:
        return self.format.mime_types[0]


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the file is larger than this server's limit of {max_bytes / (1024 * 1024):.3g} MB "
        "(STEMFLEET_MAX_UPLOAD_MB); send a shorter or more compressed file",
    )


def copy_limited(source: BinaryIO, dest: Path, max_bytes: int) -> tuple[int, str]:
    """Copy `source` to `dest`; returns (size, sha256 hex). 413 past `max_bytes`."""
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


async def write_stream(stream: AsyncIterator[bytes], dest: Path, max_bytes: int) -> int:
    size = 0
    with dest.open("wb") as out:
        async for chunk in stream:
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            out.write(chunk)
    return size


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def inspect_audio(path: Path, size: int, sha256: str, max_duration: float) -> Input:
    """Probe the file at `path`: 415 for an unknown type, 422 for undecodable or
    too long audio."""
    if size == 0:
        raise ApiError(422, "empty_input", "the file is empty: send an audio file")
    try:
        found = probe(path)
    except UnsupportedAudio:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the file is not audio this service reads (judged by its content, not its name); "
            f"send {ACCEPTED}",
        ) from None
    except UndecodableAudio as exc:
        raise ApiError(
            422,
            "undecodable_audio",
            f"the file cannot be read: {exc}; re-export it and upload again",
        ) from None
    duration = found.duration_s
    if duration > max_duration:
        raise ApiError(
            422,
            "audio_too_long",
            f"the audio lasts {duration:.0f} s, longer than this server's limit of "
            f"{max_duration:.0f} s (STEMFLEET_MAX_DURATION); cut it into shorter parts",
        )
    return Input(path=path, size=size, sha256=sha256, format=found.format, duration_s=duration)
