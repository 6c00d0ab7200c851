"""Helpers shared by the API tests: settings, tokens, an app under TestClient, handmade audio."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import numpy as np
import soundfile as sf
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict

from app.api.main import create_app
from app.pgserver import free_port
from app.settings import Settings, load_settings

JWT_SECRET = "test-project-jwt-secret-with-at-least-32-characters"
SERVICE_TOKEN = "svc-test-token"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"stemfleet-test-webhook-key-32byt").decode()
USER_A = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
USER_B = uuid.UUID("00000000-0000-4000-8000-0000000000b2")


def token(
    sub: uuid.UUID | str,
    *,
    secret: str = JWT_SECRET,
    audience: str = "authenticated",
    expires_in: float = 3600,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload = {
        "sub": str(sub),
        "aud": audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + int(expires_in),
        **claims,
    }
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def bearer(user: uuid.UUID | str, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, **kwargs)}"}


ADMIN = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


def as_url(db_url: str) -> str:
    """A libpq URL for settings (the fixtures may hand out key=value conninfo strings)."""
    if db_url.startswith(("postgres://", "postgresql://")):
        return db_url
    info = conninfo_to_dict(db_url)
    user = info.get("user") or "postgres"
    password = f":{quote(str(info['password']))}" if info.get("password") else ""
    host = info.get("host") or "127.0.0.1"
    port = info.get("port") or 5432
    return f"postgresql://{quote(str(user))}{password}@{host}:{port}/{info['dbname']}"


def api_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": as_url(db_url),
        "data_dir": tmp_path / "data",
        "jwt_secret": JWT_SECRET,
        "service_token": SERVICE_TOKEN,
        "webhook_secret": WEBHOOK_SECRET,
        "db_pool_max": 4,
    }
    values.update(overrides)
    return load_settings(**values)


@contextmanager
def api_client(settings: Settings, **create: Any) -> Iterator[tuple[TestClient, FastAPI]]:
    create.setdefault("run_dispatcher", False)
    app = create_app(settings, **create)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port, lifespan and all; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    ready = threading.Event()
    for _ in range(500):  # bounded wait for the real startup
        if server.started or not thread.is_alive():
            break
        ready.wait(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --- audio made in memory ---------------------------------------------------------------------


def audio_bytes(fmt: str = "WAV", seconds: float = 1.0, samplerate: int = 8000) -> bytes:
    frames = int(seconds * samplerate)
    t = np.arange(frames) / samplerate
    data = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    subtype = {
        "WAV": "PCM_16",
        "FLAC": "PCM_16",
        "OGG": "VORBIS",
        "MP3": "MPEG_LAYER_III",
        "AIFF": "PCM_16",
    }[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, data, samplerate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def m4a_bytes(seconds: float, *, audio_track: bool = True) -> bytes:
    """The boxes a duration probe reads: ftyp, moov/mvhd and one trak (hdlr, mdhd with timescale
    1000, an AAC sample entry), and an empty mdat."""
    ftyp = _box(b"ftyp", b"M4A " + struct.pack(">I", 0) + b"M4A isom")
    mvhd = _box(
        b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 1000, int(seconds * 1000)) + bytes(80)
    )
    handler = b"soun" if audio_track else b"vide"
    hdlr = _box(b"hdlr", bytes(4) + bytes(4) + handler + bytes(12) + b"\x00")
    mdhd = _box(b"mdhd", bytes(12) + struct.pack(">II", 1000, int(seconds * 1000)) + bytes(4))
    # an AAC sample entry: stereo, 16 bit, 44.1 kHz (16.16 fixed point), then a child box
    entry = bytes(16) + struct.pack(">HHII", 2, 16, 0, 44100 << 16) + _box(b"free", b"")
    stsd = _box(b"stsd", bytes(4) + struct.pack(">I", 1) + _box(b"mp4a", entry))
    minf = _box(b"minf", _box(b"stbl", stsd))
    trak = _box(b"trak", _box(b"mdia", hdlr + mdhd + minf))
    return ftyp + _box(b"moov", mvhd + trak) + _box(b"mdat", bytes(64))


def adts_bytes(frames: int) -> bytes:
    """`frames` ADTS headers (AAC LC, 44.1 kHz, stereo, empty payloads): 1024 samples each."""
    header = bytes([0xFF, 0xF1, 0x50, 0x80, 0x00, 0xFF, 0xFC])
    return header * frames
