"""Authentication: the one step that turns a request's credential into a device.

A credential is a small value naming how the device proved who it is: the access token
in the Uri-Path (``AccessToken``), or what a DTLS session verified, its client certificate
(``Certificate``, named by ThingsBoard's certificate id, ``certificate_id``) or its PSK
identity (``PresharedKey``). An unknown credential is 4.01, counted, and summed up in
one warning a minute per scan (see tokenscan.py), never logged per request.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Union

from . import codes
from .actions import Device, Log
from .parts import Action, Part, address
from .tokenscan import UnknownTokens

TokenLookup = Callable[[str], Optional[Device]]  # access token -> its device, or None


@dataclass(frozen=True)
class AccessToken:
    """ThingsBoard's access token credential (``/api/v1/{token}/...``)."""

    __slots__ = ("token",)
    token: str


@dataclass(frozen=True)
class Certificate:
    """A client certificate a DTLS handshake verified: its leaf's ``certificate_id``, and
    its subject CN (for auto-registration; not part of equality)."""

    sha3: str
    cn: Optional[str] = field(default=None, compare=False)


@dataclass(frozen=True)
class PresharedKey:
    """The PSK identity a DTLS handshake used (the key stays with the transport)."""

    identity: str


Credential = Union[AccessToken, Certificate, PresharedKey]


def certificate_id(der: bytes) -> str:
    """ThingsBoard's id of an X.509 credential: hex SHA3-256 of the base64 of the DER,
    without newlines (the PEM body joined on one line)."""
    return hashlib.sha3_256(base64.b64encode(der)).hexdigest()


class Authenticator(Part):
    def __init__(self, lookup: TokenLookup):
        super().__init__()
        self.lookup = lookup
        self.unknown_tokens = UnknownTokens()  # a warning at most once a minute
        self.stats = {"unknown_token": 0}

    def authenticate(self, credential: Credential, remote: Any, now: float) -> Device:
        """The device ``credential`` belongs to, or 4.01."""
        return self.by_token(credential.token, remote, now)

    def by_token(self, token: str, remote: Any, now: float) -> Device:
        """The device of access ``token``, or 4.01 (the bulk uplink path calls this one
        directly, with the token it was handed)."""
        device = self.lookup(token)
        if device is None:
            self.stats["unknown_token"] += 1
            self.unknown_tokens.record(address(remote), now)
            raise codes.Unauthorized("unknown access token")
        return device

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        scan = self.unknown_tokens.warning(now) if self.unknown_tokens.count else None
        return [Log("warn", *scan)] if scan is not None else []
