"""The DTLS transport's view of the registry: PSK keys for handshakes, and the sessions
whose credential left the registry (or whose key changed) ended when it changes.

The registry keeps ``psk`` (identity -> (device, key)) and ``certificates`` (id ->
device) as live dicts beside ``devices`` (see ../shared/spec: the DTLS contract);
until a registry has them, no PSK identity or certificate is known.
"""

from __future__ import annotations

from typing import Any, Optional

from ..core.auth import Certificate, PresharedKey
from .lookup import RegistryView


class DtlsCredentials:
    def __init__(self, view: RegistryView):
        self.view = view
        self.transport: Optional[Any] = None  # the DtlsTransport while it listens
        view.on_change.append(self.registry_changed)

    def _table(self, name: str) -> Any:
        return getattr(self.view.registry, name, None) or {}

    def psk_key(self, identity: str) -> Optional[bytes]:
        """The key of PSK ``identity`` (the handshake's synchronous lookup), or None."""
        entry = self._table("psk").get(identity)
        return bytes(entry[1]) if entry is not None else None

    def gone(self, credential: Any) -> bool:
        """``credential`` no longer names a device."""
        if isinstance(credential, PresharedKey):
            return credential.identity not in self._table("psk")
        if isinstance(credential, Certificate):
            return credential.sha3 not in self._table("certificates")
        return False

    def registry_changed(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.end_sessions(self.gone)
            transport.end_changed_keys(self.psk_key)
