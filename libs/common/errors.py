"""The error tree of the fabric, and its wire codes.

    QnfError (code "internal")                       something the caller cannot act on
    ├── PermanentError                               retrying the same request gives the same answer
    │   ├── InvalidRequest      "invalid"            malformed or semantically wrong input
    │   ├── NotFound            "not_found"          the named object does not exist
    │   ├── Conflict            "conflict"           exists already, overlaps, or a stale revision
    │   ├── Exhausted           "exhausted"          a pool (addresses, ports) has nothing left
    │   ├── Unauthorized        "unauthorized"       the caller's identity could not be established
    │   ├── Forbidden           "forbidden"          the caller may not do this
    │   └── PolicyRejected      "invalid"            a policy fails validation
    ├── TemporaryError(delay)                        retry after `delay` seconds may succeed
    │   ├── Unavailable         "unavailable"        a peer, the bus or the kernel is not ready
    │   └── Busy                "unavailable"        contention (CAS lost too often, EBUSY)
    └── AdapterError            "internal"           a kernel or library failure that was not mapped

Every error reply on the bus carries the code in `Nats-Service-Error-Code`, a message meant for
the caller in `Nats-Service-Error`, and an `ErrorReply` body. Unexpected exceptions become
"internal" with an opaque message and a correlation id; their text never leaves the process.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal

ErrorCode = Literal[
    "invalid", "not_found", "conflict", "exhausted", "unauthorized", "forbidden", "unavailable", "internal"
]


class QnfError(Exception):
    """Root of every error the fabric reports; `code` is the stable wire code."""

    code: ClassVar[ErrorCode] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PermanentError(QnfError):
    """The same request will fail the same way."""


class InvalidRequest(PermanentError):
    code = "invalid"


class NotFound(PermanentError):
    code = "not_found"


class Conflict(PermanentError):
    code = "conflict"


class Exhausted(PermanentError):
    code = "exhausted"


class Unauthorized(PermanentError):
    code = "unauthorized"


class Forbidden(PermanentError):
    code = "forbidden"


class PolicyRejected(InvalidRequest):
    """A policy that fails validation."""


class TemporaryError(QnfError):
    """Retrying after `delay` seconds may succeed."""

    retryable = True

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class Unavailable(TemporaryError):
    code = "unavailable"


class Busy(TemporaryError):
    code = "unavailable"


class AdapterError(QnfError):
    """A kernel or library failure that no more specific error describes."""


_BY_CODE: Final[dict[str, type[QnfError]]] = {
    "invalid": InvalidRequest,
    "not_found": NotFound,
    "conflict": Conflict,
    "exhausted": Exhausted,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "unavailable": Unavailable,
    "internal": QnfError,
}


def from_code(code: str, message: str) -> QnfError:
    """Rebuild the error a remote peer reported; unknown codes become internal."""
    return _BY_CODE.get(code, QnfError)(message)
