"""app/storage.py against a real S3 HTTP endpoint (moto's server, through boto3) and a real
directory: keys, round trips, presigned URLs used over HTTP, and a storage outage."""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from app.errors import ObjectNotFound, StorageError, StorageKeyError
from app.pgserver import free_port
from app.settings import load_settings
from app.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    input_key,
    local_signing_key,
    output_key,
    safe_filename,
    storage_from_settings,
    validate_key,
)

USER = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "inputs/../../outside",
    "inputs//double",
    "inputs/./here",
    "trailing/",
    "back\\slash",
    "C:/windows",
    "ctrl\x00char",
    "x" * 1025,
]


def s3_storage(env: dict[str, str], *, endpoint: str | None = None) -> S3Storage:
    return S3Storage(
        bucket=env["STEMFLEET_S3_BUCKET"],
        endpoint_url=endpoint or env["STEMFLEET_S3_ENDPOINT_URL"],
        region=env["STEMFLEET_S3_REGION"],
        access_key_id=env["STEMFLEET_S3_ACCESS_KEY_ID"],
        secret_access_key=env["STEMFLEET_S3_SECRET_ACCESS_KEY"],
    )


@pytest.fixture(params=["s3", "local"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "s3":
        env: dict[str, str] = request.getfixturevalue("s3_env")
        return s3_storage(env)
    return LocalStorage(tmp_path / "root", base_url="http://api.test", signing_key=b"k" * 32)


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected_everywhere(storage: Storage, key: str, tmp_path: Path) -> None:
    with pytest.raises(StorageKeyError):
        validate_key(key)
    with pytest.raises(StorageKeyError):
        storage.put_bytes(key, b"x")
    with pytest.raises(StorageKeyError):
        storage.get_bytes(key)
    with pytest.raises(StorageKeyError):
        storage.presign_get(key, 60)


def test_key_helpers_build_the_documented_layout() -> None:
    key = input_key(USER, "../../My Song (live).mp3")
    prefix, user, token, name = key.split("/")
    assert (prefix, user, name) == ("inputs", str(USER), "My_Song_live_.mp3")
    assert len(token) == 32
    job = uuid.uuid4()
    assert output_key(job, "vocals", "flac") == f"outputs/{job}/vocals.flac"
    assert safe_filename("") == "input"
    assert safe_filename("C:\\music\\a.wav") == "a.wav"


# --- both backends ----------------------------------------------------------------------------


def test_bytes_and_files_round_trip(storage: Storage, tmp_path: Path) -> None:
    key = f"inputs/{USER}/a/song.wav"
    storage.put_bytes(key, b"first")
    storage.put_bytes(key, b"second version")  # a repeated write replaces the object
    assert storage.get_bytes(key) == b"second version"
    assert storage.size(key) == len(b"second version")
    assert storage.exists(key)

    source = tmp_path / "stem.flac"
    source.write_bytes(os.urandom(300_000))
    out_key = f"outputs/{uuid.uuid4()}/vocals.flac"
    storage.put_file(out_key, source, "audio/flac")
    dest = tmp_path / "down" / "deep" / "vocals.flac"
    storage.get_file(out_key, dest)
    assert dest.read_bytes() == source.read_bytes()

    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # deleting a missing object is not an error


def test_missing_objects_raise_object_not_found(storage: Storage, tmp_path: Path) -> None:
    key = f"inputs/{USER}/nothing-here.wav"
    with pytest.raises(ObjectNotFound, match="nothing-here"):
        storage.get_bytes(key)
    with pytest.raises(ObjectNotFound):
        storage.get_file(key, tmp_path / "x")
    with pytest.raises(ObjectNotFound):
        storage.size(key)
    assert not storage.exists(key)


# --- S3: presigned URLs over real HTTP, outages -----------------------------------------------


def test_s3_presigned_get_and_put_work_over_http(s3_env: dict[str, str]) -> None:
    storage = s3_storage(s3_env)
    key = f"inputs/{USER}/up/load.wav"

    put_url = storage.presign_put(key, 300, content_type="audio/wav")
    response = httpx.put(put_url, content=b"RIFF-bytes", headers={"Content-Type": "audio/wav"})
    assert response.status_code == 200, response.text
    assert storage.get_bytes(key) == b"RIFF-bytes"

    get_url = storage.presign_get(key, 300)
    response = httpx.get(get_url)
    assert response.status_code == 200
    assert response.content == b"RIFF-bytes"
    assert response.headers["content-type"] == "audio/wav"

    missing = httpx.get(storage.presign_get(f"inputs/{USER}/missing.wav", 300))
    assert missing.status_code == 404


def test_s3_unreachable_endpoint_is_a_retryable_storage_error(s3_env: dict[str, str]) -> None:
    dead = s3_storage(s3_env, endpoint=f"http://127.0.0.1:{free_port()}")
    key = f"outputs/{uuid.uuid4()}/vocals.wav"
    with pytest.raises(StorageError, match="could not be reached") as raised:
        dead.put_bytes(key, b"x")
    assert raised.value.retryable and raised.value.kind == "storage"
    # The same write succeeds once the endpoint answers again.
    s3_storage(s3_env).put_bytes(key, b"x")
    assert s3_storage(s3_env).get_bytes(key) == b"x"


def test_s3_missing_bucket_is_a_storage_error(s3_env: dict[str, str], tmp_path: Path) -> None:
    env = {**s3_env, "STEMFLEET_S3_BUCKET": f"gone-{uuid.uuid4().hex[:8]}"}
    storage = s3_storage(env)
    source = tmp_path / "s.wav"
    source.write_bytes(b"x")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        storage.put_file(f"outputs/{uuid.uuid4()}/s.wav", source)


def test_storage_from_settings_picks_the_backend(s3_env: dict[str, str], tmp_path: Path) -> None:
    s3 = storage_from_settings(load_settings())
    assert isinstance(s3, S3Storage)
    s3.put_bytes(f"inputs/{USER}/via-settings.wav", b"ok")
    assert s3_storage(s3_env).get_bytes(f"inputs/{USER}/via-settings.wav") == b"ok"

    local = storage_from_settings(load_settings(storage="local", data_dir=tmp_path))
    assert isinstance(local, LocalStorage)
    assert local.root == tmp_path / "storage"


# --- local: atomic writes, confinement, signed served URLs ------------------------------------


def test_local_writes_are_atomic_and_confined(tmp_path: Path) -> None:
    root = tmp_path / "root"
    storage = LocalStorage(root, base_url="http://api.test/", signing_key=b"k" * 32)
    key = f"outputs/{uuid.uuid4()}/bass.wav"
    storage.put_bytes(key, b"a" * 1000)
    storage.put_bytes(key, b"b" * 10)
    assert storage.get_bytes(key) == b"b" * 10
    leftovers = [p.name for p in root.rglob("*") if p.name.startswith(".part-")]
    assert leftovers == []
    assert storage.path(key).resolve().is_relative_to(root.resolve())
    (tmp_path / "secret").write_bytes(b"s")
    with pytest.raises(StorageKeyError):
        storage.get_bytes("../secret")


def test_local_failed_write_leaves_the_old_object(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root", base_url="http://api.test", signing_key=b"k" * 32)
    key = f"inputs/{USER}/keep.wav"
    storage.put_bytes(key, b"old")
    with pytest.raises(FileNotFoundError):
        storage.put_file(key, tmp_path / "does-not-exist.wav")
    assert storage.get_bytes(key) == b"old"


def test_local_presigned_urls_carry_a_verifiable_expiring_signature(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root", base_url="http://api.test/", signing_key=b"k" * 32)
    key = f"outputs/{uuid.uuid4()}/other.mp3"
    for method, url in (
        ("GET", storage.presign_get(key, 60)),
        ("PUT", storage.presign_put(key, 60)),
    ):
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == "http://api.test"
        assert unquote(parts.path) == f"/v1/files/{key}"
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        expires, signature = int(query["expires"]), query["signature"]
        now = time.time()
        assert storage.verify(method, key, expires, signature, now)
        assert not storage.verify(method, key, expires, signature, expires + 1)  # expired
        other = "PUT" if method == "GET" else "GET"
        assert not storage.verify(other, key, expires, signature, now)  # wrong method
        assert not storage.verify(method, key + "x", expires, signature, now)  # other key
        assert not storage.verify(method, key, expires + 60, signature, now)  # longer life


def test_local_signing_key_is_created_once_and_private(tmp_path: Path) -> None:
    settings = load_settings(storage="local", data_dir=tmp_path)
    first = local_signing_key(settings)
    assert len(first) == 32
    assert local_signing_key(settings) == first
    path = settings.local_storage_root.parent / "storage-signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
