"""The pure layers stay pure: the gateway core and the sans-IO CoAP layer do no I/O.

Read from the source (no import needed): a module under ``bridge/core/`` or
``bridge/coap/`` that imports Twisted, paho, a database driver, sockets,
pyOpenSSL, or the bridge's own edge and runtime modules fails here. The CoAP
layer may import txThings' codec (``txthings.coap``), nothing else of txThings;
the core not even that.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "bridge")
FORBIDDEN = ("twisted", "paho", "sqlite3", "socket", "psycopg", "OpenSSL", "cryptography",
             "select", "selectors", "asyncio", "threading", "subprocess")
# bridge's own modules that are I/O or runtime (the edges, the service, the process)
FORBIDDEN_OWN = ("bridge.edge", "bridge.glue", "bridge.service", "bridge.tap", "bridge.cli",
                 "bridge.registry", "bridge.sqlite", "bridge.logs", "bridge.runtime")
ALLOWED_TXTHINGS = {"core": (), "coap": ("txthings.coap",), "dtls": ()}


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
        elif top == "txthings" and not any(module == allowed or module.startswith(allowed + ".")
                                           for allowed in ALLOWED_TXTHINGS[layer]):
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
                                  "from ..edge import mqtt\nimport txthings.coap\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    assert set(violations("core", "bad.py")) >= {"socket", "twisted.internet",
                                                 "bridge.edge", "txthings.coap"}
