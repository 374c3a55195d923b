"""The bridge's DTLS private key, read by cryptography (``dtls.key_file``, or the key after
the certificates in ``dtls.cert_file``, opened with ``dtls.key_password``).

Not OpenSSL's own PEM reader: without a password callback it asks for one on the
terminal, and pyOpenSSL deprecates its callback; cryptography says plainly whether the
key is encrypted, and the configuration line says which setting to give.
"""

from __future__ import annotations

import re
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..settings import DtlsConfig

__all__ = ["KeyProblem", "load_key"]  # the key goes in with dtls.context.use_key


class KeyProblem(ValueError):
    """The bridge's private key cannot be read: why, for the configuration line."""


_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.*?-----END \1-----", re.S)


def load_key(cfg: DtlsConfig) -> Any:
    """The private key of ``dtls.key_file`` (empty: the one in ``dtls.cert_file``, after
    its certificates), opened with ``dtls.key_password`` when it is encrypted; raises
    ``OSError`` or ``KeyProblem``. Read by cryptography, not by OpenSSL's own PEM reader,
    which would ask for a missing password on the terminal."""
    path = cfg.key_file or cfg.cert_file
    with open(path, "rb") as handle:
        match = _PEM_KEY.search(handle.read())
    if match is None:
        raise KeyProblem("%s holds no PEM private key" % path)
    password = cfg.key_password.encode("utf-8") or None
    try:
        key = serialization.load_pem_private_key(match.group(0), password)
    except TypeError:  # encrypted without a password, or a password for a plain key
        raise KeyProblem("%s is %s" % (path, "encrypted and dtls.key_password "
                                       "(COAP_DTLS_PEM_KEY_PASSWORD) is empty" if password is None
                                       else "not encrypted: leave dtls.key_password empty"))
    except ValueError as exc:
        raise KeyProblem("%s is not a private key dtls.key_password opens (%s)" % (path, exc))
    except UnsupportedAlgorithm as exc:
        raise KeyProblem("%s: %s" % (path, exc))
    return key  # pyOpenSSL takes cryptography's keys (its own PKey is deprecated)
