"""Object storage: one small interface, two backends.

- `S3Storage`: any S3-compatible endpoint through boto3 (R2, Supabase Storage's S3 endpoint, AWS,
  MinIO), configured by STEMFLEET_S3_*; presigned GET/PUT URLs.
- `LocalStorage`: a directory (the embedded default); "presigned" URLs are served paths on the API
  (`/v1/files/{key}`) carrying an expiry and an HMAC signature.

Layout: inputs under `inputs/{user}/…`, outputs under `outputs/{job_id}/{stem}.{ext}`. Writes are
whole-object replacements, so repeating one (a job run twice after a lease loss) is safe.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from app.errors import ObjectNotFound, StorageError, StorageKeyError
from app.log import get_logger
from app.settings import Settings, reveal

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_KEY_LENGTH = 1024


class StorageFailed(StorageError):
    """The object store answered with an error (a 5xx, an access denied...)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StorageUnreachable(StorageError):
    """The object store could not be reached (connection refused, timed out, DNS)."""


def validate_key(key: str) -> str:
    """Reject keys that could escape a prefix or a local root."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise StorageKeyError(f"invalid object key {key!r}: empty or longer than {MAX_KEY_LENGTH}")
    if key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]:", key):
        raise StorageKeyError(f"invalid object key {key!r}: must be relative")
    if any(ord(ch) < 32 for ch in key):
        raise StorageKeyError(f"invalid object key {key!r}: control characters")
    for segment in key.split("/"):
        if segment == "":
            raise StorageKeyError(f"invalid object key {key!r}: empty path segment")
        if segment in (".", ".."):
            raise StorageKeyError(f"invalid object key {key!r}: '.' or '..' segment")
    return key


def safe_filename(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")) or "input"
    cleaned = _SAFE_NAME.sub("_", base).strip("._") or "input"
    return cleaned[:120]


def input_key(user_id: uuid.UUID | str, filename: str) -> str:
    return validate_key(f"inputs/{user_id}/{uuid.uuid4().hex}/{safe_filename(filename)}")


def output_key(job_id: uuid.UUID | str, stem: str, ext: str) -> str:
    return validate_key(f"outputs/{job_id}/{stem}.{ext}")


class Storage(Protocol):
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def presign_get(self, key: str, expires: float) -> str: ...
    def presign_put(self, key: str, expires: float, content_type: str | None = None) -> str: ...


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint = endpoint_url
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                signature_version="s3v4",
                s3={"addressing_style": "path"},
            ),
        )

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Storage failures as errors a user may read: what happened to which object, never the
        bucket, the endpoint or a local path (those go to the log)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        validate_key(key)
        try:
            yield
        except (ClientError, S3UploadFailedError, BotoCoreError) as exc:
            cause = exc.__context__ if isinstance(exc, S3UploadFailedError) else exc
            get_logger().warning(
                "storage_error", key=key, bucket=self.bucket, endpoint=self.endpoint, error=str(exc)
            )
            if isinstance(cause, ClientError):
                code = str(cause.response.get("Error", {}).get("Code", ""))
                status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in ("404", "NoSuchKey", "NotFound"):
                    raise ObjectNotFound(f"no object {key!r} in storage") from exc
                raise StorageFailed(
                    f"storage answered with an error (HTTP {status or '?'} {code}) for {key!r}",
                    status=status,
                ) from exc
            raise StorageUnreachable(
                f"storage could not be reached for {key!r} ({type(cause).__name__})"
            ) from exc

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        with self._errors(key):
            self._client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(key):
            self._client.download_file(self.bucket, key, str(dest))

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key):
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def size(self, key: str) -> int:
        with self._errors(key):
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except ObjectNotFound:
            return False

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def presign_get(self, key: str, expires: float) -> str:
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": validate_key(key)},
            ExpiresIn=int(expires),
        )
        return url

    def presign_put(self, key: str, expires: float, content_type: str | None = None) -> str:
        params: dict[str, str] = {"Bucket": self.bucket, "Key": validate_key(key)}
        if content_type:
            params["ContentType"] = content_type
        url: str = self._client.generate_presigned_url(
            "put_object", Params=params, ExpiresIn=int(expires)
        )
        return url


class LocalStorage:
    """Objects as files under `root`. Writes go to a temporary file then rename, so a reader
    never sees half an object and a repeated write simply replaces it."""

    def __init__(self, root: Path, *, base_url: str, signing_key: bytes) -> None:
        self.root = root
        self.base_url = base_url.rstrip("/")
        self._key = signing_key
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write(self, key: str, writer: Any) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as handle:
                writer(handle)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        with path.open("rb") as source:
            self._write(key, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._write(key, lambda handle: handle.write(data))

    def _existing(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r} in storage")
        return path

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._existing(key), dest)

    def get_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    # --- served, signed URLs --------------------------------------------------------------
    def sign(self, method: str, key: str, expires_at: int) -> str:
        message = f"{method}\n{validate_key(key)}\n{expires_at}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, method: str, key: str, expires_at: int, signature: str, now: float) -> bool:
        if expires_at < now:
            return False
        return hmac.compare_digest(self.sign(method, key, expires_at), signature)

    def _url(self, method: str, key: str, expires: float) -> str:
        expires_at = int(time.time() + expires)
        query = urlencode({"expires": expires_at, "signature": self.sign(method, key, expires_at)})
        return f"{self.base_url}/v1/files/{quote(validate_key(key))}?{query}"

    def presign_get(self, key: str, expires: float) -> str:
        return self._url("GET", key, expires)

    def presign_put(self, key: str, expires: float, content_type: str | None = None) -> str:
        return self._url("PUT", key, expires)


def local_signing_key(settings: Settings) -> bytes:
    """A per-installation secret for local served URLs, kept next to the storage root."""
    path = settings.local_storage_root.parent / "storage-signing.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
    return path.read_bytes()


def storage_from_settings(settings: Settings) -> Storage:
    if settings.storage == "s3":
        return S3Storage(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=reveal(settings.s3_access_key_id),
            secret_access_key=reveal(settings.s3_secret_access_key),
        )
    base_url = settings.public_url or f"http://{settings.api_host}:{settings.api_port}"
    return LocalStorage(
        settings.local_storage_root, base_url=base_url, signing_key=local_signing_key(settings)
    )
