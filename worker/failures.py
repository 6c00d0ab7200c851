"""What a job's row says when it fails: a message the user can act on, its kind, and whether a
retry can help. Internals (worker paths, bucket names, storage endpoints, exception texts of
libraries) stay out of it: the worker logs them (`detail`) under the job's id."""

from __future__ import annotations

import re

from app.errors import JobError, ObjectNotFound, StorageError, StorageKeyError

# A directory part of an absolute path ("/tmp/stemfleet-worker-…/input/"), ending in a slash.
_DIRECTORY = re.compile(r"(?<![\w.:])(?:/[^\s'\"/:]+)+/")

_AWS_CODE = re.compile(r"An error occurred \((\w+)\)")


def scrub_paths(text: str) -> str:
    """`text` with the directories of absolute paths removed: file names stay."""
    return _DIRECTORY.sub("", text)


def classify(exc: Exception, input_key: str) -> tuple[str, str, bool]:
    """(message, error_kind, retryable) for a job that raised `exc`."""
    if isinstance(exc, ObjectNotFound):
        message = (
            f"the input file {input_key!r} is not in storage: upload it again and submit a new job"
        )
        return message, "input_missing", False
    if isinstance(exc, StorageKeyError):
        message = (
            f"the input key {input_key!r} is not a valid object key: upload the file again "
            "(POST /v1/uploads, or under inputs/<your user id>/) and submit a new job"
        )
        return message, "invalid_input_key", False
    if isinstance(exc, StorageError):
        return _storage_message(exc), exc.kind, exc.retryable
    if isinstance(exc, JobError):
        return scrub_paths(str(exc)), exc.kind, exc.retryable
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"network error on the worker ({type(exc).__name__}); retrying", "network", True
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return f"I/O error on the worker ({reason}); retrying", "io", True
    return (
        f"internal error on the worker ({type(exc).__name__}); retrying. The operator finds the "
        "details in the worker's log under this job's id",
        "internal",
        True,
    )


def _storage_message(exc: StorageError) -> str:
    """The storage's own error code when it answered (NoSuchBucket, InternalError…), else that
    it could not be reached; never the endpoint or the bucket."""
    response = getattr(exc.__cause__, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    if not code:  # boto3's S3UploadFailedError carries the answer in its text only
        found = _AWS_CODE.search(str(exc.__cause__ or ""))
        code = found.group(1) if found else None
    if code:
        return f"the file storage failed ({code}); retrying"
    return "the file storage could not be reached; retrying"
