"""The one error hierarchy: every failure a user can cause or see is a KinemaError."""

from __future__ import annotations

from typing import Any


class KinemaError(Exception):
    """Base error with a stable machine code and the HTTP status it maps to."""

    code = "internal_error"
    status = 500
    headers: dict[str, str] | None = None  # extra response headers (Content-Range, Retry-After, ...)

    def __init__(self, message: str, *, details: Any = None, public_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        # What a remote client may see when message names server internals (paths); logged in full.
        self.public_message = public_message or message

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: {"error": {"code", "message", "details"}}."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInput(KinemaError):
    """The request itself is wrong: a field, a value, an image."""

    code = "invalid_input"
    status = 422


class InvalidImage(InvalidInput):
    """The reference image cannot be fetched, decoded or accepted."""

    code = "invalid_image"


class ImageTooLarge(InvalidImage):
    """The image exceeds the byte or pixel limits."""

    code = "image_too_large"
    status = 413


class UnsafeURL(InvalidImage):
    """A URL points at a loopback, private, link-local or otherwise forbidden address."""

    code = "unsafe_url"


class AppNotFound(KinemaError):
    code = "app_not_found"
    status = 404


class ModelNotAvailable(KinemaError):
    """The model's weights are not on this machine (and downloading is not allowed)."""

    code = "model_not_available"
    status = 503


class InsufficientResources(KinemaError):
    """The device cannot hold the model; raised before loading, not halfway through."""

    code = "insufficient_resources"
    status = 503


class Cancelled(KinemaError):
    code = "cancelled"
    status = 409


class StorageError(KinemaError):
    """Storage cannot take the file now: read-only, full, or otherwise failing (507 Insufficient Storage)."""

    code = "storage_error"
    status = 507


class RangeNotSatisfiable(KinemaError):
    """No range of a Range request overlaps the file; the response says the file's length."""

    code = "range_not_satisfiable"
    status = 416

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the requested range is outside the file ({size} bytes)", details={"size_bytes": size}
        )
        self.headers = {"Content-Range": f"bytes */{size}"}


class BadRequest(KinemaError):
    """The request cannot be read at all: malformed JSON, a bad header or cursor."""

    code = "bad_request"
    status = 400


class Unauthorized(KinemaError):
    """No API key, or one that is not valid."""

    code = "unauthorized"
    status = 401


class Forbidden(KinemaError):
    """A signed URL that is invalid or expired."""

    code = "forbidden"
    status = 403


class NotFound(KinemaError):
    """No such task, file or route (also for things that exist but belong to someone else)."""

    code = "not_found"
    status = 404


class Conflict(KinemaError):
    """The request does not fit the resource's state, e.g. cancelling a finished task."""

    code = "conflict"
    status = 409


class PayloadTooLarge(KinemaError):
    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(KinemaError):
    code = "unsupported_media_type"
    status = 415


class InsufficientBalance(KinemaError):
    """The account cannot cover the most this run could cost."""

    code = "insufficient_balance"
    status = 402


class RateLimited(KinemaError):
    """Too many requests for this key; retry after `retry_after` seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int, details: object = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class AppUnavailable(KinemaError):
    """The app cannot run on this server as configured, e.g. a provider app without its API key."""

    code = "app_unavailable"
    status = 503


class ProviderError(KinemaError):
    """An outside provider (Google's Veo) failed the work; the subclass's code says how."""

    code = "provider_error"
    status = 502


class ProviderAuthFailed(ProviderError):
    """The provider refused the API key, or the key may not use the model."""

    code = "provider_auth_failed"


class ProviderQuotaExceeded(ProviderError):
    """The provider's quota or rate limit for this key is used up."""

    code = "provider_quota_exceeded"
    status = 429


class ProviderInvalidArgument(ProviderError):
    """The provider refused the request's arguments (kinema checks what it can before calling)."""

    code = "provider_invalid_argument"
    status = 422


class ProviderSafetyBlocked(ProviderError):
    """The provider's safety filters blocked the prompt, the image or the generated video."""

    code = "provider_safety_blocked"
    status = 422


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or failed on its side."""

    code = "provider_unavailable"
    status = 503


class ProviderTimeout(ProviderError):
    """The provider did not finish within the configured deadline."""

    code = "provider_timeout"
    status = 504


class ProviderOperationLost(ProviderError):
    """A provider operation saved by an earlier attempt is gone (expired or unknown); not submitted again."""

    code = "provider_operation_lost"
    status = 410


class ProviderBadOutput(ProviderError):
    """The provider's file is missing, unreadable, or lacks what was asked for (e.g. the audio track)."""

    code = "provider_bad_output"
