"""Certificates for tests, made with ``cryptography``: a CA, and leaves it signs."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def key(kind: str = "ec"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def certificate(cn, signer_key=None, issuer=None, public_key=None, ca=False, days=30):
    """A certificate for subject ``cn`` (self-signed without ``issuer``/``signer_key``);
    returns (certificate, the subject's private key or None if ``public_key`` was given)."""
    own = None
    if public_key is None:
        own = key()
        public_key = own.public_key()
    if signer_key is None:
        signer_key = own
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) if cn else x509.Name([])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer is not None else subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(signer_key, hashes.SHA256()), own


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def write_pem(path, *certs) -> str:
    with open(path, "wb") as handle:
        for cert in certs:
            handle.write(pem(cert))
    return str(path)
