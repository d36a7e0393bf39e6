"""Typed errors for sam-serve, each with the HTTP status it maps to.

This is the one place where an error kind meets its status code; the HTTP layer reads `http_status`,
`field` and `reason` and never guesses from a message. Nothing here imports anything of ours.
"""

from __future__ import annotations


class SamServeError(Exception):
    """Base of every error sam-serve raises on purpose."""

    http_status: int = 500
    # Seconds a client should wait before it retries (the Retry-After header), for errors that pass.
    retry_after_s: int | None = None

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


def error_name(exc: BaseException) -> str:
    """The class of a sam-serve error, also when Ray re-raises a replica's as a subclass of it (RayTaskError)."""
    return next((c.__name__ for c in type(exc).__mro__ if c.__module__ == __name__), type(exc).__name__)


def error_reason(exc: BaseException) -> str:
    """`field: reason` of a sam-serve error (a re-raised one too), else the exception's last line."""
    reason = getattr(exc, "reason", None)
    field_name = getattr(exc, "field", None)
    if isinstance(reason, str):
        return f"{field_name}: {reason}" if field_name else reason
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


# ---- client errors (4xx) ------------------------------------------------------------------------------


class InvalidInput(SamServeError):
    """A request field has the wrong shape, type or value."""

    http_status = 422


class ImageDecodeError(InvalidInput):
    """The bytes are not a readable image (not an image, truncated, corrupt)."""

    http_status = 400


class UnsupportedImageFormat(InvalidInput):
    """The image decodes but its format is not one we accept."""

    http_status = 415


class ImageTooLarge(InvalidInput):
    """Too many bytes or too many pixels (decompression bombs included)."""

    http_status = 413


class URLInputRefused(InvalidInput):
    """URL input is disabled, or the URL points somewhere we refuse to fetch."""

    http_status = 403


class URLFetchError(InvalidInput):
    """The URL could not be fetched (HTTP error, timeout, too large)."""

    http_status = 400


class CacheMiss(SamServeError):
    """No cached embedding for this image id: the client must send the image."""

    http_status = 404


class UnknownModel(InvalidInput):
    """A model type or version id that this service does not serve."""

    http_status = 404


class NotFound(SamServeError):
    """A path the service does not serve (a page file, or the page itself when it is not installed)."""

    http_status = 404


# ---- server-side errors --------------------------------------------------------------------------------


class CacheUnavailable(SamServeError):
    """The shared cache could not be reached in time; requests carrying the image can still succeed."""

    http_status = 503


class Overloaded(SamServeError):
    """A deployment's queue is full: shed at once (retry shortly) rather than queued without bound."""

    http_status = 503
    retry_after_s = 1


class EncoderUnavailable(SamServeError):
    """No encoder replica runs (its node lost, none schedulable) or the one serving the request died: an image
    not cached cannot be embedded now; cached images are still answered."""

    http_status = 503
    retry_after_s = 5


class ModelUnavailable(SamServeError):
    """A served model that a replica could not load (its checkpoint missing, corrupt or not downloadable): the
    other models keep serving, and the next request for it tries again."""

    http_status = 503


class CheckpointError(SamServeError):
    """A checkpoint is missing, fails its checksum, or does not fit the model type."""

    http_status = 500


class ChecksumMismatch(CheckpointError):
    """A checkpoint file's sha256 (or size) differs from the expected value: the file is never used."""


class DownloadError(CheckpointError):
    """A checkpoint download failed (network, HTTP status, truncated transfer)."""


class ConfigurationError(SamServeError):
    """Settings that cannot work (unknown device, bad Redis URL, ...), reported at start-up."""

    http_status = 500


def describe(exc: BaseException) -> str:
    """An exception as it reads inside an error's reason: `TypeName: message` (or the type name alone)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
