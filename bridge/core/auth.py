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
# certificate id or PSK identity -> its device, or None; device name -> its token, or None
Lookup = Callable[[str], Optional[Device]]
TokenOf = Callable[[str], Optional[str]]


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


def _none(key: str) -> None:
    return None


@dataclass(frozen=True)
class CredentialLookups:
    """How the core resolves what a DTLS session verified: plain functions over the
    registry's live views (bridge/glue/lookup.py), never the registry itself."""

    certificate: Lookup = _none  # certificate id -> device
    psk: Lookup = _none  # PSK identity -> device
    token_of: TokenOf = _none  # device name -> its access token (OTA from upstream needs it)


class Authenticator(Part):
    def __init__(self, lookup: TokenLookup, credentials: Optional[CredentialLookups] = None):
        super().__init__()
        self.lookup = lookup
        self.credentials = credentials or CredentialLookups()
        self.unknown_tokens = UnknownTokens()  # a warning at most once a minute
        self.unknown_credentials = UnknownTokens(
            what="an unknown DTLS credential (certificate or PSK identity)",
            hint="removed devices still connecting, or a scan?")
        self.stats = {"unknown_token": 0, "unknown_credential": 0, "credential_mismatch": 0}

    def authenticate(self, credential: Credential, remote: Any, now: float) -> Device:
        """The device ``credential`` belongs to, or 4.01."""
        if type(credential) is AccessToken:
            return self.by_token(credential.token, remote, now)
        if type(credential) is Certificate:
            device = self.credentials.certificate(credential.sha3)
        elif type(credential) is PresharedKey:
            device = self.credentials.psk(credential.identity)
        else:
            raise TypeError("not a credential: %r" % (credential,))
        if device is None:
            self.stats["unknown_credential"] += 1
            self.unknown_credentials.record(address(remote), now)
            raise codes.Unauthorized("unknown %s" % ("certificate" if type(credential) is
                                                     Certificate else "PSK identity"))
        return device

    def session_device(self, credential: Credential, token: Optional[str], remote: Any,
                       now: float) -> Device:
        """The device of a request over a DTLS session that verified ``credential``; a
        ``token`` in its path must name the same device (else 4.01).

        A certificate the CA vouches for but the registry does not know (a device's
        factory certificate, say) does not stand in the way of the token in the path: the
        token authenticates, as with ThingsBoard, which falls back to the URL's token."""
        if token is not None and type(credential) is Certificate \
                and self.credentials.certificate(credential.sha3) is None:
            self.stats["unknown_credential"] += 1
            return self.by_token(token, remote, now)
        device = self.authenticate(credential, remote, now)
        if token is not None and self.by_token(token, remote, now).name != device.name:
            self.stats["credential_mismatch"] += 1
            raise codes.Unauthorized("the access token names another device than the "
                                     "session's credential")
        return device

    def by_token(self, token: str, remote: Any, now: float) -> Device:
        """The device of access ``token``, or 4.01 (the bulk uplink path calls this one
        directly, with the token it was handed)."""
        device = self.lookup(token)
        if device is None:
            self.stats["unknown_token"] += 1
            self.unknown_tokens.record(address(remote), now)
            raise codes.Unauthorized("unknown access token")
        return device

    def token_of(self, device: Device, credential: Credential) -> Optional[str]:
        """The device's access token: the credential's, else the registry's (or None)."""
        if type(credential) is AccessToken:
            return credential.token
        return self.credentials.token_of(device.name)

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        actions: List[Action] = []
        for scan in (self.unknown_tokens, self.unknown_credentials):
            warning = scan.warning(now) if scan.count else None
            if warning is not None:
                actions.append(Log("warn", *warning))
        return actions
