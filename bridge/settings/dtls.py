"""``dtls:``: CoAPs, CoAP over DTLS 1.2 on its own UDP port.

ThingsBoard's own variable names are aliases here, since migrating users paste them:
``COAP_DTLS_PEM_CERT``, ``COAP_DTLS_PEM_KEY``, ``COAP_DTLS_PEM_KEY_PASSWORD`` and
``COAP_DTLS_CREDENTIALS_TYPE`` (PEM; its KEYSTORE, a Java key store, is refused with a
line saying how to convert it). OpenSSL reads the files in the start-up checks
(``bridge.startup_checks``), not here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Dict

from .schema import Problems, env_name, section, setting

# CoAP's mandatory suites (RFC 7252 §9.1.3: PSK and certificates with CCM_8), AES-GCM,
# and the ECDHE-PSK suite GnuTLS clients pick; OpenSSL 3 only offers CCM_8 at level 0.
DTLS_CIPHERS = ("ECDHE-ECDSA-AES128-CCM8:PSK-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256:"
                "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                "ECDHE-RSA-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:"
                "ECDHE-PSK-AES128-CBC-SHA256:ECDHE-ECDSA-AES128-CCM:PSK-AES128-CCM:@SECLEVEL=0")

_KEYSTORE_FIX = ("convert the store to PEM files (openssl pkcs12 -in STORE -nodes) and give "
                 "them as dtls.cert_file and dtls.key_file (COAP_DTLS_PEM_CERT, "
                 "COAP_DTLS_PEM_KEY)")
_KEYSTORE = "is ThingsBoard's Java key store setting, which coapbridge does not read: " + \
    _KEYSTORE_FIX
# ThingsBoard's names that have no setting here, and why (instead of "did you mean")
FOREIGN: Dict[str, str] = {name: _KEYSTORE for name in (
    "COAP_DTLS_KEY_STORE", "COAP_DTLS_KEY_STORE_TYPE", "COAP_DTLS_KEY_STORE_PASSWORD",
    "COAP_DTLS_KEY_ALIAS", "COAP_DTLS_KEY_PASSWORD")}


def _tb(key: str) -> tuple:
    """Today's documented name of ``dtls.KEY``: ThingsBoard's ``COAP_DTLS_KEY``."""
    return ("COAP_DTLS_" + key.upper(),)


@dataclass(frozen=True)
class X509Config:
    """X.509 auto-registration: an unknown client certificate that chains to dtls.ca_file
    (OpenSSL verified it in the handshake) registers its device on first use. A CN that
    does not match, or names a device that exists, registers nothing (4.01, logged once)."""
    auto_register: bool = setting(False, "Register an unknown verified client certificate's "
                                  "device on first use.", env=_tb("x509_auto_register"))
    cn_regex: str = setting("", "A Python regular expression searched in the certificate's "
                            "subject CN: group 1 (without a group, the whole match) names "
                            "the device. Empty: the whole CN.", env=_tb("x509_cn_regex"))
    device_type: str = setting("", "Type of the devices registered so. Empty: "
                               "devices.default_type.", env=_tb("x509_device_type"))


@dataclass(frozen=True)
class DtlsConfig:
    """CoAPs: CoAP over DTLS 1.2 on its own UDP port, every device API as over CoAP.
    Devices authenticate by a client certificate (`coapbridge devices add NAME --cert
    device.pem`), by a pre-shared key (`--psk-key`), or by the access token in the path over
    the encrypted channel."""
    enabled: bool = setting(False, "Serve CoAPs.", env=_tb("enabled"))
    bind_address: str = setting("", "Address for CoAPs devices. Empty: coap.bind_address.",
                                address=True, env=_tb("bind_address"))
    bind_port: int = setting(5684, "UDP port for CoAPs devices.", low=1, high=65535,
                             port=True, env=_tb("bind_port"))
    credentials_type: str = setting(
        "PEM", "How the bridge's certificate is given: PEM files (cert_file, key_file). "
        "ThingsBoard's KEYSTORE (a Java key store) is not read: convert it to PEM.",
        choices=("PEM",), refused=(("KEYSTORE", "KEYSTORE (a Java key store) is not "
                                    "supported: " + _KEYSTORE_FIX),),
        env=_tb("credentials_type"))
    cert_file: str = setting(
        "", "The bridge's certificate chain (PEM, leaf first), RSA or ECDSA (ECDSA P-256 is "
        "what constrained devices handle best). Needed for certificate devices and for "
        "token devices; PSK devices need none.", env=_tb("cert_file") + ("COAP_DTLS_PEM_CERT",))
    key_file: str = setting(
        "", "The private key of cert_file (PEM). Empty: the key is in cert_file too, after "
        "the certificates (as ThingsBoard allows).",
        env=_tb("key_file") + ("COAP_DTLS_PEM_KEY",))
    key_password: str = setting(
        "", "Password of an encrypted key_file. Empty: the key is not encrypted.",
        secret="hidden", env=("COAP_DTLS_PEM_KEY_PASSWORD",))
    ca_file: str = setting(
        "", "Trust anchors (PEM) for device certificates, with any intermediates the devices "
        "do not send themselves (libcoap's OpenSSL client sends only its leaf). A device "
        "certificate is asked for but not required; one that is presented must chain to "
        "these and be valid now, or the handshake fails. Empty: none asked for.",
        env=_tb("ca_file"))
    psk: bool = setting(True, "Devices may authenticate by a pre-shared key from the "
                        "registry (`devices add NAME --psk-key ...`).", env=_tb("psk"))
    psk_identity_hint: str = setting("", "The PSK identity hint sent to devices.",
                                     env=_tb("psk_identity_hint"))
    mtu: int = setting(1232, "Largest datagram sent: handshake flights are split to fit "
                       "(1232: IPv6's 1280 less its headers).", low=256, high=65507,
                       unit="bytes", env=_tb("mtu"))
    handshake_timeout: float = setting(
        30.0, "Seconds a handshake may take (a wrong PSK fails silently: the session is "
        "dropped at this deadline).", low=0, high=600, above=True, unit="s",
        env=_tb("handshake_timeout"))
    idle_timeout: float = setting(
        600.0, "Seconds an established session may go without a record from its device "
        "before it is closed; a session whose device observes something (/attributes, "
        "/rpc) is kept however long the device is silent.", low=0, high=7 * 86400,
        above=True, unit="s", env=_tb("idle_timeout"))
    max_sessions: int = setting(10000, "Established sessions at most; past that new "
                                "handshakes are refused and counted.",
                                low=1, high=1_000_000, env=_tb("max_sessions"))
    max_handshakes: int = setting(
        1000, "Half-open handshakes (cookie verified, not finished) at most, bounded apart "
        "from the sessions: past that the oldest is dropped for the new one, so a flood "
        "of ClientHellos cannot lock new devices out.", low=1, high=1_000_000,
        env=_tb("max_handshakes"))
    max_handshakes_per_address: int = setting(
        20, "Half-open handshakes from one IP address at most; past that its new "
        "handshakes are refused and counted.", low=1, high=1_000_000,
        env=_tb("max_handshakes_per_address"))
    handshake_rate: float = setting(10.0, "Handshakes per second per source address (after "
                                    "its cookie verified). 0: no limit.",
                                    low=0, high=100_000, env=_tb("handshake_rate"))
    handshake_burst: float = setting(20.0, "Handshakes in a burst per source address.",
                                     low=0, high=1_000_000, above=True,
                                     env=_tb("handshake_burst"))
    ciphers: str = setting(
        DTLS_CIPHERS, "OpenSSL cipher list, colon-separated, as `openssl ciphers` takes it: "
        "it replaces the whole list. The default offers CoAP's mandatory "
        "TLS_PSK_WITH_AES_128_CCM_8 and TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (OpenSSL 3 only "
        "allows them at @SECLEVEL=0), AES-GCM, and ECDHE-PSK-AES128-CBC-SHA256 (GnuTLS "
        "clients).", env=_tb("ciphers"))
    x509: X509Config = section(X509Config)


def check(config: Any, problems: Problems) -> None:
    """The DTLS settings that depend on each other (OpenSSL checks the files later)."""
    dtls = config.dtls
    if dtls.x509.cn_regex:
        import re
        try:
            re.compile(dtls.x509.cn_regex)
        except re.error as exc:
            problems.add("dtls.x509.cn_regex",
                         "dtls.x509.cn_regex: not a regular expression (%s)" % exc)
    if not dtls.enabled:
        return
    if dtls.key_file and not dtls.cert_file:
        problems.add("dtls.key_file", "dtls: cert_file and key_file must be given together")
    if dtls.ca_file and not dtls.cert_file:
        problems.add("dtls.ca_file", "dtls.ca_file: device certificates need the bridge's own "
                     "(dtls.cert_file and dtls.key_file)")
    if not dtls.cert_file and not dtls.psk:
        problems.add("dtls.psk", "dtls: enabled with no way to authenticate: give cert_file "
                     "and key_file (%s, %s) or turn psk on"
                     % (env_name("dtls.cert_file"), env_name("dtls.key_file")))
    _check_port(config, problems)


def warnings_of(config: Any) -> list:
    """What works but is likely not meant: CoAPs with no certificate (PSK only)."""
    if config.dtls.enabled and not config.dtls.cert_file:
        return ["CoAPs has no certificate (PSK only): devices with certificates, and tokens "
                "over DTLS, cannot connect; give dtls.cert_file and dtls.key_file (%s, %s)"
                % (env_name("dtls.cert_file"), env_name("dtls.key_file"))]
    return []


def _check_port(config: Any, problems: Problems) -> None:
    """CoAPs and CoAP on one UDP port of overlapping addresses: with coap.workers > 1 both
    bind it with SO_REUSEPORT and the kernel splits the datagrams between them."""
    if not problems.fine("coap.bind_address", "dtls.bind_address"):
        return
    coap_address, dtls_address = config.coap.bind_address, config.dtls.bind_address
    if config.dtls.bind_port == config.coap.bind_port and \
            overlap(coap_address, dtls_address or coap_address):
        problems.add("dtls.bind_port", "dtls.bind_port: %d is coap.bind_port too, on "
                     "overlapping addresses (%s, %s): give CoAPs a port of its own"
                     % (config.dtls.bind_port, env_name("dtls.bind_port"),
                        env_name("coap.bind_port")))


def overlap(one: str, other: str) -> bool:
    """Whether sockets bound to these two addresses can receive the same datagrams."""
    if one == other:
        return True
    try:
        a, b = ipaddress.ip_address(one or "0.0.0.0"), ipaddress.ip_address(other or "0.0.0.0")
    except ValueError:  # not an address: reported on its own
        return False
    if a.is_unspecified and b.is_unspecified:
        return True
    for wild, addr in ((a, b), (b, a)):
        if wild.is_unspecified and (wild.version == addr.version or wild.version == 6):
            return True  # "::" takes IPv4 too on a dual-stack socket
    return a == b
