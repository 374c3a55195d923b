"""CoAP response codes (RFC 7252 §12.1.2, RFC 8516) and errors that render as them."""

from __future__ import annotations

from typing import Optional


def code(cls: int, detail: int) -> int:
    """Encode a ``c.dd`` code as the 8-bit wire value."""
    return (cls << 5) | detail


def dotted(value: int) -> str:
    """Render a wire code as ``c.dd`` for logs and messages."""
    return "%d.%02d" % (value >> 5, value & 0x1F)


# Methods
GET = code(0, 1)
POST = code(0, 2)
PUT = code(0, 3)
DELETE = code(0, 4)

# Success
CREATED = code(2, 1)
DELETED = code(2, 2)
VALID = code(2, 3)
CHANGED = code(2, 4)
CONTENT = code(2, 5)

# Client errors
BAD_REQUEST = code(4, 0)
UNAUTHORIZED = code(4, 1)
BAD_OPTION = code(4, 2)
FORBIDDEN = code(4, 3)
NOT_FOUND = code(4, 4)
METHOD_NOT_ALLOWED = code(4, 5)
NOT_ACCEPTABLE = code(4, 6)
REQUEST_ENTITY_TOO_LARGE = code(4, 13)
UNSUPPORTED_CONTENT_FORMAT = code(4, 15)
TOO_MANY_REQUESTS = code(4, 29)

# Server errors
INTERNAL_SERVER_ERROR = code(5, 0)
NOT_IMPLEMENTED = code(5, 1)
BAD_GATEWAY = code(5, 2)
SERVICE_UNAVAILABLE = code(5, 3)
GATEWAY_TIMEOUT = code(5, 4)
PROXYING_NOT_SUPPORTED = code(5, 5)

# Content-Format numbers (IANA CoAP registry)
TEXT_PLAIN = 0
OCTET_STREAM = 42
APPLICATION_JSON = 50

# RFC 7959: the largest block the bridge sends (SZX 6); a longer answer or notification
# goes block by block
BLOCK_SIZE = 1024


class CoapError(Exception):
    """An error that is the client's answer: it carries its CoAP code.

    ``reason`` becomes the diagnostic payload (RFC 7252 §5.5.2), so it
    must never contain secrets.
    """

    code = INTERNAL_SERVER_ERROR

    def __init__(self, reason: str, *, max_age: Optional[int] = None, size1: Optional[int] = None):
        super().__init__(reason)
        self.reason = reason
        self.max_age = max_age
        self.size1 = size1


class BadRequest(CoapError):
    code = BAD_REQUEST


class Unauthorized(CoapError):
    code = UNAUTHORIZED


class NotFound(CoapError):
    code = NOT_FOUND


class MethodNotAllowed(CoapError):
    code = METHOD_NOT_ALLOWED


class EntityTooLarge(CoapError):
    code = REQUEST_ENTITY_TOO_LARGE


class ServiceUnavailable(CoapError):
    code = SERVICE_UNAVAILABLE


class TooManyRequests(CoapError):
    code = TOO_MANY_REQUESTS


class InternalServerError(CoapError):
    """5.00 that the request caused (ThingsBoard's answer to what it cannot parse)."""

    code = INTERNAL_SERVER_ERROR
