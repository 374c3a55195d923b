"""The pure layers stay pure: the gateway core, the sans-IO CoAP layer and the sans-IO
DTLS server do no I/O.

Read from the source (no import needed): a module under ``bridge/core/``,
``bridge/coap/`` or ``bridge/dtls/`` that imports Twisted, paho, a database driver,
sockets, threads, or the bridge's own edge, glue, registry, logging and runtime modules
fails here. The CoAP layer may import txThings' codec (``txthings.coap``), nothing else
of txThings; the core and DTLS not even that.

The DTLS layer alone may import pyOpenSSL and cryptography: they are computation there,
as aioquic's connection imports cryptography. pyOpenSSL's memory BIOs do no I/O (the
server writes ciphertext into them and reads it back; the driver at the edge moves it
to and from the socket), so the whole handshake, the records and the session state can
live in ``bridge/dtls`` and be tested against a real OpenSSL client without sockets or
a reactor. Certificate files are read by OpenSSL only when the edge builds the server
at start. The core and CoAP layers may not import them: nothing there needs OpenSSL.
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
# libraries a layer may import although FORBIDDEN names them (see the module)
ALLOWED_LIBRARIES = {"core": (), "coap": (), "dtls": ("OpenSSL", "cryptography")}


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
        if top in FORBIDDEN and top not in ALLOWED_LIBRARIES[layer]:
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


def test_only_the_dtls_layer_may_use_openssl(tmp_path, monkeypatch):
    for layer, allowed in (("core", False), ("coap", False), ("dtls", True)):
        folder = tmp_path / layer
        folder.mkdir()
        (folder / "tls.py").write_text("from OpenSSL import SSL\nimport cryptography.x509\n"
                                       "import socket\nfrom ..logs import logger\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    for layer in ("core", "coap"):
        assert {"OpenSSL", "cryptography.x509"} <= set(violations(layer, "tls.py"))
    # in the DTLS layer OpenSSL passes; sockets and the bridge's logging still do not
    assert set(violations("dtls", "tls.py")) == {"socket", "bridge.logs", "bridge.logs.logger"}
