"""Domain errors of kws. Each maps once to an HTTP status and a gRPC status name.

The core raises these; the gRPC servicer, the REST gateway and the MQTT worker translate them (the
gRPC code is kept as a name so this module imports no transport).
"""

from __future__ import annotations

MAX_ECHO_CHARS = 200  # the most of one user value an error or a log line repeats
MAX_MESSAGE_CHARS = 1000  # the most of any error message a client is sent or a log line holds


def clip(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``value`` (a string as is, anything else as its repr) cut to ``limit`` characters, with the length
    it had, and any lone surrogate escaped: user input repeated in an error or a log line. A 1 MB model
    name must not become a 1 MB message (gRPC refuses trailers over 16 kB) or 1 MB of log."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} chars)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def quote(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """A user's value quoted and escaped as ``{value!r}`` would be, but at most ``limit`` characters of it."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
    return clip(repr(value), limit)


class KwsError(Exception):
    """Base class: a message a user can act on."""

    http_status = 500
    grpc_code = "INTERNAL"


class InvalidInput(KwsError):
    """The request is malformed: bad JSON, base64, WAV, proto, shape, dtype, sample rate, NaNs."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidInput):
    http_status = 413


class UnknownModel(InvalidInput):
    """The request names a model this server did not load."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelMismatch(InvalidInput):
    """Features that do not match the model card (config, shape or dtype)."""

    http_status = 422


class Unavailable(KwsError):
    """The backend (model not loaded, gRPC server down, queue closed) cannot serve now; retry."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class Overloaded(Unavailable):
    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class RateLimited(Overloaded):
    """This client sent more than its rate limit allows; ``retry_after_s`` says when a request would pass."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(KwsError):
    """No valid credentials. The message is fixed: it never says which part was wrong."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class RequestTimeout(KwsError):
    """The client was too slow: an HTTP body not sent in time, a stream with no request for too long."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class DeadlineExceeded(KwsError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class ModelIntegrityError(KwsError):
    """A model file does not match its card (sha256) or its card is incomplete."""


class DatasetError(KwsError):
    """The dataset is missing or incomplete; the message says how to get it."""
