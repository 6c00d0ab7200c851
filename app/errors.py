"""One base exception for everything stemfleet raises on purpose."""

from __future__ import annotations


class StemfleetError(Exception):
    """Base class of every error stemfleet raises deliberately."""


class ConfigError(StemfleetError):
    """A setting is missing or invalid; the message names the environment variable."""


class QueueError(StemfleetError):
    """A queue function refused an operation."""


class LeaseLost(QueueError):
    """The job is no longer running under this worker and attempt (SQLSTATE SF001)."""


class JobNotFound(QueueError):
    """No such job, or not visible to the caller (SQLSTATE SF002)."""


class InvalidTransition(QueueError):
    """The job's status does not allow the operation, e.g. cancelling a finished job (SF003)."""


class ModelNotServed(QueueError):
    """A job names a model the fleet does not serve (SQLSTATE SF004, from queue.check_job)."""


class InvalidParams(QueueError):
    """A job's params break queue.params_problem's rules (SQLSTATE SF005)."""


class InputKeyRefused(QueueError):
    """A job names an input key that is malformed or not one of the user's uploads (SQLSTATE
    42501 from queue.check_job, as a Supabase client's insert gets it)."""


class JobError(StemfleetError):
    """A job could not be processed. `kind` is stored in jobs.error_kind."""

    kind: str = "error"
    retryable: bool = False

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class PermanentJobError(JobError):
    """Retrying cannot help (bad input, bad params): the job fails at once."""

    kind = "invalid_input"
    retryable = False


class RetryableJobError(JobError):
    """A passing fault (storage, network): the job is retried with backoff."""

    kind = "transient"
    retryable = True


class StorageError(RetryableJobError):
    """The object store failed or could not be reached."""

    kind = "storage"


class StorageKeyError(StemfleetError):
    """An object key is malformed (absolute, '..', empty segments)."""


class ObjectNotFound(StemfleetError):
    """The object does not exist in storage."""
