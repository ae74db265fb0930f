"""Error hierarchy with stable codes (torch-free).

Every error a user can cause carries a stable ``code`` and the HTTP status the server maps it to; the server
(``server/errors.py``) is the only place that turns them into responses.
"""

from __future__ import annotations


class VpetlError(Exception):
    """Base class: ``code`` is stable across releases, ``message`` is for humans."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidRequest(VpetlError):
    code = "invalid_request"
    http_status = 422


class InvalidVideo(VpetlError):
    """A clip that cannot be decoded or sampled (corrupt, truncated, empty, audio-only, too large...)."""

    code = "invalid_video"
    http_status = 400


class TooLarge(VpetlError):
    code = "too_large"
    http_status = 413


class UnsupportedMediaType(VpetlError):
    code = "unsupported_media_type"
    http_status = 415


class UnknownTask(VpetlError):
    code = "unknown_task"
    http_status = 404


class UnknownVersion(VpetlError):
    code = "unknown_version"
    http_status = 404


class InvalidAdapter(VpetlError):
    """An adapter file that is malformed (not safetensors, bad header, NaN, wrong dtype...)."""

    code = "invalid_adapter"
    http_status = 400


class IncompatibleAdapter(VpetlError):
    """A well-formed adapter that does not fit the loaded backbone (hash, shapes, unknown method)."""

    code = "incompatible_adapter"
    http_status = 409


class UnsupportedMethod(VpetlError):
    """A PETL method asked for on a backbone where it is not meaningful (e.g. VPT on Swin)."""

    code = "unsupported_method"
    http_status = 422


class UnknownBackbone(VpetlError):
    code = "unknown_backbone"
    http_status = 422


class CheckpointError(VpetlError):
    """A checkpoint that cannot be converted or loaded strictly (names the missing/unexpected keys)."""

    code = "checkpoint_error"
    http_status = 422


class UnsupportedConversion(VpetlError):
    """A conversion to or from another format (HF transformers, PEFT) that cannot represent this thing, e.g. a
    BAPAT adapter as PEFT LoRA: it stays in vpetl's own format."""

    code = "unsupported_conversion"
    http_status = 422


class InvalidInput(VpetlError):
    """A tensor the backbone cannot take (wrong channels, too few frames for the tubelet...)."""

    code = "invalid_input"
    http_status = 422


class Unauthorized(VpetlError):
    code = "unauthorized"
    http_status = 401


class Forbidden(VpetlError):
    code = "forbidden"
    http_status = 403


class Overloaded(VpetlError):
    code = "overloaded"
    http_status = 503


class DeadlineExceeded(VpetlError):
    """A request that did not finish within the server's per-request deadline (upload, decode, queue, model)."""

    code = "deadline_exceeded"
    http_status = 504


class DatasetError(VpetlError):
    """A dataset that cannot be trained on (empty, a single class, labels that do not match)."""

    code = "invalid_dataset"
    http_status = 422


class InsufficientScope(VpetlError):
    """A valid API key whose scopes do not include what the route needs."""

    code = "insufficient_scope"
    http_status = 403


class KeyRevoked(VpetlError):
    code = "key_revoked"
    http_status = 403


class KeyExpired(VpetlError):
    code = "key_expired"
    http_status = 403


class RateLimited(VpetlError):
    """Over a per-key limit; ``retry_after_s`` is sent as ``Retry-After`` (whole seconds, at least 1)."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class QuotaExceeded(RateLimited):
    """Over a per-key quota (upload bytes per day, training jobs per hour)."""

    code = "quota_exceeded"
