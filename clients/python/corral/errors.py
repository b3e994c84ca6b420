"""The errors the client raises: one class per kind of refusal, each naming the problem."""

from __future__ import annotations

from typing import Dict, Optional, Type


class CorralError(Exception):
    """The host refused a call, or could not be reached.

    ``code`` is the API's error code (``not_found``, ``invalid_argument``, ...), ``message``
    the host's message, and ``status`` the HTTP status (None when the host was not reached).
    """

    def __init__(self, code: str, message: str, status: Optional[int]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFound(CorralError):
    """No such task, job or module (or another tenant's)."""


class InvalidArgument(CorralError):
    """The request was malformed, or a field out of bounds."""


class InvalidModule(InvalidArgument):
    """Admission refused the module: not a valid WASI command within the caps, or importing
    what the sandbox does not provide (``code`` is ``invalid_module`` or ``link_error``)."""


class FailedPrecondition(CorralError):
    """The request cannot be done now: a task that could never run, a job that ended, an
    idempotency key used for another request, a tenant's policy."""


class Unauthenticated(CorralError):
    """No token, or one the host does not take (malformed, unknown, revoked, expired)."""


class PermissionDenied(CorralError):
    """The token may not do this (another tenant, an admin's call)."""


class ResourceExhausted(CorralError):
    """The host cannot take this now (a queue cap, its disk's headroom, uploads at once, a
    tenant's storage for inputs)."""


class TlsError(CorralError):
    """TLS with the host failed: its certificate is not trusted (give ``ca_file`` or
    ``CORRAL_TLS_CA``), or the handshake did."""


class Unavailable(CorralError):
    """The host is unreachable, stopping, or recovering its store: trying again is safe."""


_BY_CODE: Dict[str, Type[CorralError]] = {
    "not_found": NotFound,
    "invalid_argument": InvalidArgument,
    "invalid_module": InvalidModule,
    "link_error": InvalidModule,
    "failed_precondition": FailedPrecondition,
    "already_exists": FailedPrecondition,
    "unauthenticated": Unauthenticated,
    "permission_denied": PermissionDenied,
    "resource_exhausted": ResourceExhausted,
    "unavailable": Unavailable,
    "tls": TlsError,
}


#: The class of an error whose code this client does not know, by its HTTP status.
_BY_STATUS: Dict[int, Type[CorralError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: FailedPrecondition,
    413: InvalidArgument,
    429: ResourceExhausted,
    503: Unavailable,
    507: ResourceExhausted,
}


def error_for(code: str, message: str, status: Optional[int]) -> CorralError:
    """The error of the API's ``code``; for a code this client does not know, the error of the
    HTTP ``status`` (``CorralError`` itself when neither says more)."""
    cls = _BY_CODE.get(code) or (_BY_STATUS.get(status) if status is not None else None)
    return (cls or CorralError)(code, message, status)
