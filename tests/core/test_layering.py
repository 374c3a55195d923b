"""The pure layers stay pure: the gateway core, the sans-IO CoAP layers and the DTLS
helpers do no I/O, and the two CoAP layers keep apart.

Read from the source (no import needed): a module under ``bridge/core/``,
``bridge/coap/`` or ``bridge/dtls/`` that imports Twisted, txThings, paho, a database
driver, sockets, pyOpenSSL, or the bridge's own edge and runtime modules fails here.
Within ``bridge/coap/``, the exchange layer (shared by every transport) imports nothing
of the datagram message layer, transitively, and the codec nothing of either layer.
And in a fresh interpreter, importing the three packages loads no Twisted at all.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "bridge")
FORBIDDEN = ("twisted", "txthings", "six", "paho", "sqlite3", "socket", "psycopg", "OpenSSL",
             "cryptography", "select", "selectors", "asyncio", "threading", "subprocess")
# bridge's own modules that are I/O or runtime (the edges, the service, the process)
FORBIDDEN_OWN = ("bridge.edge", "bridge.glue", "bridge.service", "bridge.tap", "bridge.cli",
                 "bridge.registry", "bridge.sqlite", "bridge.logs", "bridge.runtime")
# bridge/coap/ by layer: the message layer of datagram transports, the exchange layer that
# every transport shares, and the codec under both (its modules: every other one)
MESSAGE_LAYER = ("datagram.py", "dedup.py")
EXCHANGE_LAYER = ("exchange.py", "blocks.py")


def modules(layer):
    """Every module of the layer, its subpackages too (``formats/json.py``)."""
    folder = os.path.join(ROOT, layer)
    found = []
    for here, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(here, name), folder).replace(os.sep, "/")
                  for name in names if name.endswith(".py")]
    return sorted(found)


def imports(layer, name):
    """Every module ``bridge/<layer>/<name>`` imports, as absolute dotted names."""
    with open(os.path.join(ROOT, layer, name), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    package = ["bridge", layer] + name.split("/")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append(module)
            found += [module + "." + alias.name for alias in node.names]
    return found


def violations(layer, name):
    bad = []
    for module in imports(layer, name):
        top = module.split(".")[0]
        if top in FORBIDDEN:
            bad.append(module)
        elif any(module == own or module.startswith(own + ".") for own in FORBIDDEN_OWN):
            bad.append(module)
    return bad


@pytest.mark.parametrize("layer,name", [(layer, name) for layer in ("core", "coap", "dtls")
                                        for name in modules(layer)])
def test_pure_layers_import_no_io(layer, name):
    assert violations(layer, name) == []


def test_the_check_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    # the checker itself: a module with each kind of forbidden import is caught
    layer = tmp_path / "core"
    layer.mkdir()
    (layer / "bad.py").write_text("import socket\nfrom twisted.internet import reactor\n"
                                  "from ..edge import mqtt\nimport txthings.coap\n"
                                  "from ..coap.datagram import MessageLayer\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    assert set(violations("core", "bad.py")) >= {"socket", "twisted.internet",
                                                 "bridge.edge", "txthings.coap"}
    coap = tmp_path / "coap"
    coap.mkdir()
    (coap / "datagram.py").write_text("from .dedup import Deduplicator\n")
    (coap / "dedup.py").write_text("import collections\n")
    assert coap_closure("core", "bad.py") == {"datagram.py", "dedup.py"}  # transitively


def coap_closure(layer, name, seen=None):
    """The modules of bridge/coap/ that ``bridge/<layer>/<name>`` imports, transitively."""
    seen = set() if seen is None else seen
    for module in imports(layer, name):
        parts = module.split(".")
        if parts[:2] != ["bridge", "coap"] or len(parts) < 3:
            continue
        found = parts[2] + ".py"
        if found not in seen and os.path.exists(os.path.join(ROOT, "coap", found)):
            seen.add(found)
            coap_closure("coap", found, seen)
    return seen


@pytest.mark.parametrize("name", EXCHANGE_LAYER)
def test_the_exchange_layer_imports_nothing_of_the_message_layer(name):
    assert coap_closure("coap", name) & set(MESSAGE_LAYER) == set()


@pytest.mark.parametrize("name", [n for n in modules("coap")
                                  if n not in MESSAGE_LAYER + EXCHANGE_LAYER])
def test_the_codec_imports_neither_layer(name):
    assert coap_closure("coap", name) & set(MESSAGE_LAYER + EXCHANGE_LAYER) == set()


def test_the_layer_table_names_modules_that_exist():
    assert set(MESSAGE_LAYER + EXCHANGE_LAYER) <= set(modules("coap"))
    assert "datagram.py" in MESSAGE_LAYER and "exchange.py" in EXCHANGE_LAYER


def test_importing_the_pure_packages_loads_no_twisted_and_no_txthings():
    # a fresh interpreter: what importing the sans-IO packages (every module) pulls in
    names = ["bridge.%s.%s" % (layer, name[:-3].replace("/", "."))
             for layer in ("coap", "dtls", "core") for name in modules(layer)]
    code = ("import importlib, sys\n"
            "for name in %r:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('twisted', 'txthings', 'six', 'OpenSSL', 'paho')))" % (names,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.join(ROOT, "..")).stdout
    assert out.strip() == "[]"
    assert "twisted.internet.reactor" not in out
