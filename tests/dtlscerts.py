"""Certificates for the DTLS tests, made with ``cryptography``: a CA, an intermediate,
server and device certificates (ECDSA P-256 or RSA-2048), expired or from another CA."""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


class Issued:
    def __init__(self, cert: x509.Certificate, key, issuer: Optional["Issued"] = None):
        self.cert = cert
        self.key = key
        self.issuer = issuer

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory: str, name: str, chain: bool = False) -> Tuple[str, str]:
        """``name``.pem (the leaf, or the leaf and its intermediates) and ``name``.key."""
        cert_path = os.path.join(directory, name + ".pem")
        key_path = os.path.join(directory, name + ".key")
        body = self.pem()
        issuer = self.issuer
        while chain and issuer is not None and issuer.issuer is not None:
            body += issuer.pem()
            issuer = issuer.issuer
        with open(cert_path, "wb") as handle:
            handle.write(body)
        with open(key_path, "wb") as handle:
            handle.write(self.key_pem())
        return cert_path, key_path


def issue(cn: str, issuer: Optional[Issued] = None, kind: str = "ec", ca: bool = False,
          not_before: datetime.datetime = NOW - DAY,
          not_after: datetime.datetime = NOW + 30 * DAY, dns: Optional[str] = None,
          ip: Optional[str] = None) -> Issued:
    key = _key(kind)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.cert.subject if issuer else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before)
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    names = ([x509.DNSName(dns)] if dns else []) + \
        ([x509.IPAddress(ipaddress.ip_address(ip))] if ip else [])
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(cert, key, issuer)


def ca(cn: str = "coapbridge test CA") -> Issued:
    return issue(cn, ca=True, not_after=NOW + 365 * DAY)


def server_files(directory: str) -> Tuple[Issued, str, str, str]:
    """A CA, and the bridge's certificate from it, written to ``directory``: (the CA,
    the certificate file, its key file, the CA file), as ``DtlsConfig`` takes them."""
    authority = ca()
    cert, key = issue("bridge", authority).write(directory, "server")
    ca_path = os.path.join(directory, "ca.pem")
    with open(ca_path, "wb") as handle:
        handle.write(authority.pem())
    return authority, cert, key, ca_path
