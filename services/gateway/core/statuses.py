"""Bus error codes → HTTP status and gRPC status code, in one table for both transports.

Choices beyond the obvious ones:
- `conflict` is 409, or 412 Precondition Failed when the request carried a precondition
  (If-Match / a revision): the caller's view is stale, not the request malformed.
- `invalid` is 422 (the body parsed but says something impossible); the REST layer uses 400
  itself for bodies that do not parse at all.
- `exhausted` is 409, not 507: an address pool or port range running dry is a conflict with the
  state of the fabric that the caller can resolve (free addresses, pick another port), not a
  storage failure of the server. gRPC: RESOURCE_EXHAUSTED.
- `unavailable` is 503 with Retry-After: the service behind did not answer in time.
"""

from __future__ import annotations

from typing import Final

from libs.common.errors import ErrorCode

_HTTP: Final[dict[str, int]] = {
    "invalid": 422,
    "not_found": 404,
    "conflict": 409,
    "exhausted": 409,
    "unauthorized": 401,
    "forbidden": 403,
    "unavailable": 503,
    "internal": 500,
}

# Names of grpc.StatusCode members (grpc.StatusCode[name]), so this module needs no grpc import.
_GRPC: Final[dict[str, str]] = {
    "invalid": "INVALID_ARGUMENT",
    "not_found": "NOT_FOUND",
    "conflict": "ALREADY_EXISTS",
    "exhausted": "RESOURCE_EXHAUSTED",
    "unauthorized": "UNAUTHENTICATED",
    "forbidden": "PERMISSION_DENIED",
    "unavailable": "UNAVAILABLE",
    "internal": "INTERNAL",
}

RETRY_AFTER_S: Final = 1


def http_status(code: ErrorCode | str, *, precondition: bool = False) -> int:
    """The HTTP status of a bus error code; unknown codes are 500."""
    if code == "conflict" and precondition:
        return 412
    return _HTTP.get(code, 500)


def grpc_status(code: ErrorCode | str, *, precondition: bool = False) -> str:
    """The gRPC status code name of a bus error code; unknown codes are INTERNAL."""
    if code == "conflict" and precondition:
        return "FAILED_PRECONDITION"
    return _GRPC.get(code, "INTERNAL")


def retry_after(code: ErrorCode | str) -> int | None:
    """Seconds a client should wait before retrying, for codes where retrying helps."""
    return RETRY_AFTER_S if code == "unavailable" else None


def title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
