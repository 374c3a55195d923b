"""``coapbridge``: the operator's command line (devices, configuration check).

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

from . import config as config_module
from .registry import Registry, RegistryError, mask, read_csv

TOKEN_ALPHABET = string.ascii_letters + string.digits
TOKEN_LENGTH = 20


def new_token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coapbridge", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="YAML configuration file (default: "
                        "$COAPBRIDGE_CONFIG, else ./conf/coapbridge.yaml when present)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-config", help="check the configuration and print the result")
    devices = commands.add_parser("devices", help="manage the device registry")
    actions = devices.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a device")
    add.add_argument("name")
    add.add_argument("--token", help="access token (default: a random 20-character token)")
    add.add_argument("--type", help="device profile (default: devices.default_type)")
    add.add_argument("--pre-provision", action="store_true",
                     help="register the name only; the device gets its token by provisioning "
                          "(local mode, strategy pre_provisioned)")
    listing = actions.add_parser("list", help="list devices (tokens masked)")
    listing.add_argument("--show-tokens", action="store_true", help="print tokens in full")
    remove = actions.add_parser("remove", help="remove a device")
    remove.add_argument("name")
    imp = actions.add_parser("import", help="add devices from a CSV file: name,token[,type]")
    imp.add_argument("file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    path = args.config or config_module.default_path()
    try:
        config = config_module.load(path)
    except config_module.ConfigError as exc:
        print("coapbridge: " + exc.render(), file=sys.stderr)
        return 2
    if args.command == "check-config":
        print("%s: OK (CoAP %s:%d -> MQTT %s:%d, MQTT %s, TLS %s, data in %s)"
              % (path or "built-in defaults", config.coap.bind_address, config.coap.bind_port,
                 config.mqtt.host, config.mqtt.port, config.mqtt.protocol,
                 "on" if config.mqtt.tls.enabled else "off", config.data_dir))
        return 0
    try:
        registry = open_registry(config)
    except config_module.StartupError as exc:  # DATA_DIR not writable, a damaged file
        print("coapbridge: %s" % exc, file=sys.stderr)
        return 2
    try:
        return _devices(args, config, registry)
    except RegistryError as exc:
        print("coapbridge: %s" % exc, file=sys.stderr)
        return 1
    finally:
        registry.close()


def open_registry(config: config_module.Config) -> Any:
    """The registry ``registry.url`` names (raises ``StartupError`` when it cannot be used)."""
    target = config.registry_target
    if target.shared:
        from .registry_pg import PgRegistry  # psycopg: only for a PostgreSQL registry
        return PgRegistry(target.conninfo, target.display)
    return Registry(target.path)


def _devices(args: argparse.Namespace, config: config_module.Config, registry: Any) -> int:
    if args.action == "add":
        token = args.token or new_token()
        entry = registry.add(args.name, token, args.type or config.devices.default_type,
                             pending=args.pre_provision)
        if args.pre_provision:
            print("added %s (type %s), waiting for provisioning" % (entry.name, entry.type))
            return 0
        print("added %s (type %s)" % (entry.name, entry.type))
        if not args.token:
            print("token: %s" % token)
        return 0
    if args.action == "list":
        entries = registry.entries()
        for entry in entries:
            note = ("  (deleted on the platform)" if entry.deleted
                    else "  (waiting for provisioning)" if entry.pending else "")
            print("%-32s %-24s %s%s" % (entry.name, entry.token if args.show_tokens
                                        else mask(entry.token), entry.type, note))
        print("%d device%s" % (len(entries), "" if len(entries) == 1 else "s"))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
