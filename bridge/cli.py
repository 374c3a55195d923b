"""``coapbridge``: the operator's command line (devices, configuration check and listing).

It reads the same configuration file and environment as the service, so
``DATA_DIR`` (or ``REGISTRY_URL``) points both at the same registry: a SQLite
file, or the PostgreSQL registry every bridge of a fleet shares (a change
reaches each of them within a second).
"""

from __future__ import annotations

import argparse
import secrets
import string
import sys
from typing import Any, List, Optional

from . import __version__, cli_config, registry_power, startup_checks
from .settings import Config, ConfigError, StartupError, default_path
from .certfile import CertificateError, read_file
from .core.actions import PowerSettings
from .core.names import printable
from .registry import Entry, Registry, RegistryError, mask, parse_key, read_csv

TOKEN_ALPHABET = string.ascii_letters + string.digits
TOKEN_LENGTH = 20


def new_token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


CONFIG_HELP = ("YAML configuration file (default: $COAPBRIDGE_CONFIG, else "
               "./conf/coapbridge.yaml when present); before or after the command")


def _config_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-c", "--config", default=default, help=CONFIG_HELP)


def _command(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that takes -c/--config too (set only when given there)."""
    parser = commands.add_parser(name, **kwargs)
    _config_option(parser, argparse.SUPPRESS)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coapbridge", description=__doc__.splitlines()[0])
    _config_option(parser, None)
    parser.add_argument("--version", action="version", version="coapbridge " + __version__)
    commands = parser.add_subparsers(dest="command", required=True)
    _command(commands, "check-config", help="check the configuration and summarise it")
    settings = _command(commands, "config", help="the settings: show (effective values and "
                        "where each came from), env (every variable), doc, example")
    settings.add_argument("action", choices=("show", "env", "doc", "example"))
    devices = _command(commands, "devices", help="manage the device registry")
    actions = devices.add_subparsers(dest="action", required=True)
    add = _command(actions, "add", help="register a device")
    add.add_argument("name")
    add.add_argument("--token", help="access token (default: a random 20-character token, "
                     "unless the device has a certificate or a PSK identity)")
    add.add_argument("--type", help="device profile (default: devices.default_type)")
    add.add_argument("--cert", metavar="PEM", help="the device's X.509 certificate (its leaf, "
                     "PEM): it authenticates over DTLS with it")
    key = add.add_mutually_exclusive_group()
    key.add_argument("--psk-key", metavar="TEXT", help="DTLS pre-shared key, as text (UTF-8)")
    key.add_argument("--psk-key-hex", metavar="HEX", help="DTLS pre-shared key, in hex")
    add.add_argument("--psk-identity", metavar="ID",
                     help="PSK identity (default: the device's access token)")
    add.add_argument("--pre-provision", action="store_true",
                     help="register the name only; the device gets its token by provisioning "
                          "(local mode, strategy pre_provisioned)")
    _power_options(add, clear=False)
    change = _command(actions, "set", help="change a device's own power saving (ThingsBoard's "
                      "device transport configuration; 'profile': its profile's)")
    change.add_argument("name")
    _power_options(change, clear=True)
    listing = _command(actions, "list", help="list devices and their credentials (tokens "
                                 "masked, keys hidden)")
    listing.add_argument("--show-tokens", action="store_true", help="print tokens in full")
    listing.add_argument("--show-secrets", action="store_true",
                         help="print tokens and PSK keys (hex) in full")
    show = _command(actions, "show", help="one device's credentials, with its certificate "
                              "(PEM)")
    show.add_argument("name")
    show.add_argument("--show-secrets", action="store_true",
                      help="print the token and the PSK key (hex) in full")
    remove = _command(actions, "remove", help="remove a device")
    remove.add_argument("name")
    imp = _command(actions, "import", help="add devices from a CSV file: name,token[,type], "
                             "or a header row naming columns among name, token, type, cert, "
                             "psk_identity, psk_key, psk_key_hex")
    imp.add_argument("file")
    return parser


POWER_OPTIONS = (("power_mode", "--power-mode"), ("psm_activity_timer", "--psm-activity-timer"),
                 ("edrx_cycle", "--edrx-cycle"),
                 ("paging_transmission_window", "--paging-transmission-window"))


def _power_options(parser: argparse.ArgumentParser, clear: bool) -> None:
    """The device's own power saving (None: its profile's), ThingsBoard's names."""
    back = " ('profile': its profile's)" if clear else " (default: its profile's)"
    parser.add_argument("--power-mode", metavar="MODE", help="PSM, DRX or E_DRX" + back)
    for _, flag in POWER_OPTIONS[1:]:
        parser.add_argument(flag, metavar="DURATION",
                            help="with a unit: 10s, 500ms, 2m, 1h" + back)


def _power_from(args: argparse.Namespace, base: Optional[PowerSettings]) -> PowerSettings:
    """``base`` with the power-saving options given on the command line."""
    values = dict(zip(("mode", "psm_activity_timer", "edrx_cycle",
                       "paging_transmission_window"), registry_power.row_values(base)))
    for (field, flag), key in zip(POWER_OPTIONS, values):
        text = getattr(args, field)
        if text is None:
            continue
        try:
            if text == "profile":
                values[key] = None
            elif key == "mode":
                values[key] = text.upper().replace("EDRX", "E_DRX")
            else:
                values[key] = registry_power.parse_duration(text)
        except registry_power.BadPower as exc:
            raise RegistryError("%s: %s" % (flag, exc))
    return PowerSettings(**values)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    path = args.config or default_path()
    if args.command == "config":
        return cli_config.config_command(args.action, path)
    try:
        config = startup_checks.load(path)
    except ConfigError as exc:
        print("coapbridge: " + exc.render(), file=sys.stderr)
        return 2
    if args.command == "check-config":
        return cli_config.check_config(path, config)
    try:
        registry = open_registry(config)
    except StartupError as exc:  # DATA_DIR not writable, a damaged file
        print("coapbridge: %s" % exc, file=sys.stderr)
        return 2
    try:
        return _devices(args, config, registry)
    except RegistryError as exc:
        print("coapbridge: %s" % exc, file=sys.stderr)
        return 1
    finally:
        registry.close()


def open_registry(config: Config) -> Any:
    """The registry ``registry.url`` names (raises ``StartupError`` when it cannot be used)."""
    target = config.registry_target
    if target.shared:
        from .registry_pg import PgRegistry  # psycopg: only for a PostgreSQL registry
        return PgRegistry(target.conninfo, target.display)
    return Registry(target.path)


def _devices(args: argparse.Namespace, config: Config, registry: Any) -> int:
    if args.action == "add":
        return _add(args, config, registry)
    if args.action == "list":
        entries = registry.entries()
        for entry in entries:
            print(_listing(entry, args.show_tokens or args.show_secrets, args.show_secrets))
        print("%d device%s" % (len(entries), "" if len(entries) == 1 else "s"))
        return 0
    if args.action == "show":
        return _show(args, registry)
    if args.action == "set":
        return _set(args, registry)
    if args.action == "remove":
        if not registry.remove(args.name):
            print("coapbridge: no device named %r" % args.name, file=sys.stderr)
            return 1
        print("removed %s" % args.name)
        return 0
    rows = read_csv(args.file, config.devices.default_type)
    count = registry.import_rows(rows)
    print("imported %d device%s" % (count, "" if count == 1 else "s"))
    return 0


def _add(args: argparse.Namespace, config: Config, registry: Registry) -> int:
    cert = None
    if args.cert:
        try:
            cert = read_file(args.cert)
        except CertificateError as exc:
            raise RegistryError(str(exc))
    key = None
    if args.psk_key is not None or args.psk_key_hex is not None:
        key = parse_key(args.psk_key, args.psk_key_hex)
    elif args.psk_identity is not None:
        raise RegistryError("--psk-identity needs --psk-key or --psk-key-hex")
    # a token by default, unless the device has another credential of its own
    token = args.token or (None if cert is not None or args.psk_identity else new_token())
    entry = registry.add(args.name, token, args.type or config.devices.default_type,
                         pending=args.pre_provision,
                         cert_sha3=cert.sha3 if cert else None, cert_pem=cert.pem if cert else None,
                         psk_identity=args.psk_identity, psk_key=key,
                         power=_power_from(args, None))
    if args.pre_provision:
        print("added %s (type %s), waiting for provisioning" % (entry.name, entry.type))
        return 0
    print("added %s (type %s)" % (entry.name, entry.type))
    if entry.power is not None:
        print("power saving: %s" % registry_power.describe(entry.power))
    if token is not None and not args.token:
        print("token: %s" % token)
    if cert is not None:
        print("certificate: %s%s" % (cert.sha3, " (CN %s)" % cert.cn if cert.cn else ""))
    if entry.psk_identity is not None:
        print("PSK identity: %s%s" % (entry.psk_identity, " (the token)"
                                      if entry.psk_identity == token else ""))
        if entry.psk_identity == token:
            # DTLS sends the PSK identity in the clear: whoever sees the handshake learns
            # the token, which works over plain CoAP too
            print("note: DTLS sends the PSK identity unencrypted, so this token can be read "
                  "off the handshake; give the device an identity of its own "
                  "(--psk-identity) if it also has plain-CoAP access", file=sys.stderr)
    return 0


def _set(args: argparse.Namespace, registry: Registry) -> int:
    found = [entry for entry in registry.entries() if entry.name == args.name]
    if not found:
        print("coapbridge: no device named %r" % args.name, file=sys.stderr)
        return 1
    if all(getattr(args, field) is None for field, _ in POWER_OPTIONS):
        raise RegistryError("nothing to set: give --power-mode, --psm-activity-timer, "
                            "--edrx-cycle or --paging-transmission-window")
    power = _power_from(args, found[0].power)
    if not registry.set_power(args.name, power):
        print("coapbridge: no device named %r" % args.name, file=sys.stderr)
        return 1
    print("%s: power saving %s" % (printable(args.name), registry_power.describe(
        power if power.given() else None) or "of its profile"))
    return 0


def _show(args: argparse.Namespace, registry: Registry) -> int:
    found = [entry for entry in registry.entries() if entry.name == args.name]
    if not found:
        print("coapbridge: no device named %r" % args.name, file=sys.stderr)
        return 1
    entry = found[0]
    token = entry.token if args.show_secrets or entry.token is None else mask(entry.token)
    print("name: %s\ntype: %s\ntoken: %s" % (printable(entry.name), printable(entry.type),
                                              token or "-"))
    if entry.deleted or entry.pending:
        print("state: %s" % ("deleted on the platform" if entry.deleted
                             else "waiting for provisioning"))
    if entry.power is not None:
        print("power saving: %s" % registry_power.describe(entry.power))
    if entry.psk_identity is not None:
        identity = entry.psk_identity
        if identity == entry.token and not args.show_secrets:
            identity = "(the token)"
        print("psk identity: %s" % identity)
        print("psk key: %s" % (entry.psk_key.hex() if args.show_secrets and entry.psk_key
                               else "(hidden: --show-secrets)"))
    if entry.cert_sha3 is not None:
        print("x509: %s" % entry.cert_sha3)
        print((entry.cert_pem or "(no PEM stored: registered by its id)\n").rstrip("\n"))
    return 0


def _listing(entry: Entry, tokens: bool, secrets: bool) -> str:
    """One device: name, token (masked), type, credential kinds, certificate id, PSK
    identity (and key, with ``secrets``), and its state."""
    token = entry.token if tokens or entry.token is None else mask(entry.token)
    # names stored before they were checked may hold control characters: shown escaped
    parts = ["%-32s %-24s %s" % (printable(entry.name), token if token is not None else "-",
                                 printable(entry.type))]
    extra = []
    if entry.cert_sha3 or entry.psk_identity:
        extra.append("[%s]" % ",".join(entry.kinds))
    if entry.cert_sha3:
        extra.append("x509 %s" % entry.cert_sha3)
    if entry.psk_identity:
        identity = entry.psk_identity
        if entry.psk_identity == entry.token and not tokens:
            identity = "(the token)"
        extra.append("psk %s" % identity)
        if secrets and entry.psk_key is not None:
            extra.append("key %s" % entry.psk_key.hex())
    if entry.power is not None:
        extra.append("power %s" % registry_power.describe(entry.power))
    if entry.deleted:
        extra.append("(deleted on the platform)")
    elif entry.pending:
        extra.append("(waiting for provisioning)")
    return "  ".join(parts + extra)


if __name__ == "__main__":
    sys.exit(main())
