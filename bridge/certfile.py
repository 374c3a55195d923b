"""Device certificates read from PEM text: the leaf, its ThingsBoard id and its subject CN.

The CLI (``devices add --cert``, ``devices import``) and X.509 auto-registration use it;
the id itself is ``core.auth.certificate_id`` (pure), shared with the DTLS transport.
Parsing is the ``cryptography`` package's (already a dependency through pyOpenSSL): a
file that is not a PEM certificate is one ``CertificateError`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .core.auth import certificate_id


class CertificateError(ValueError):
    """Not a usable certificate, with a message for the operator."""


@dataclass(frozen=True)
class LeafCertificate:
    sha3: str  # ThingsBoard's credentials id (core.auth.certificate_id)
    pem: str  # the leaf alone, as PEM text
    cn: Optional[str]  # the subject's common name, if it has one


def subject_cn(certificate: x509.Certificate) -> Optional[str]:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def from_der(der: bytes) -> LeafCertificate:
    """The leaf of a DER certificate (the DTLS transport's peer certificate, say)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError("not a DER certificate (%s)" % exc)
    return LeafCertificate(certificate_id(der), certificate.public_bytes(Encoding.PEM)
                           .decode("ascii"), subject_cn(certificate))


def read_pem(data: bytes, source: str = "the file") -> LeafCertificate:
    """The first certificate of PEM ``data`` (a chain starts with its leaf)."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError("%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                               % source)
    try:
        certificate = x509.load_pem_x509_certificates(data)[0]
    except ValueError as exc:
        raise CertificateError("%s: the certificate cannot be read (%s)" % (source, exc))
    der = certificate.public_bytes(Encoding.DER)
    return LeafCertificate(certificate_id(der), certificate.public_bytes(Encoding.PEM)
                           .decode("ascii"), subject_cn(certificate))


def read_file(path: str) -> LeafCertificate:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CertificateError("cannot read %s: %s" % (path, exc.strerror or exc))
    return read_pem(data, path)
