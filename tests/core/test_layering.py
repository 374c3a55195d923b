"""The pure layers stay pure: the gateway core, the sans-IO CoAP and DTLS layers and the
settings do no I/O, and import nothing above them, transitively.

Read from the source (no import needed). Every import of a module under ``bridge/core/``,
``bridge/coap/``, ``bridge/dtls/`` or ``bridge/settings/`` is followed through the bridge's
own modules (those imported only for type checking and inside functions too); a module
reached that imports Twisted, paho, a database driver, sockets, pyOpenSSL, a subprocess,
or a bridge module outside the layer's allowed set (the edges, the glue, the service...)
fails here, as does one that imports txThings (whose codec imports Twisted's reactor).
The settings may read their YAML file, nothing else: no module of theirs opens a file but
the loader. Within ``bridge/coap/``, the exchange layer (shared by every transport)
imports nothing of the datagram message layer, transitively, and the codec nothing of
either layer. And in a fresh interpreter, importing every module of these packages loads
no Twisted module at all.

The DTLS layer alone may import pyOpenSSL and cryptography: they are computation there,
as aioquic's connection imports cryptography. pyOpenSSL's memory BIOs do no I/O (the
sans-IO server writes ciphertext into them and reads it back; the driver at the edge
moves it to and from the socket), so the whole handshake, the records and the session
state live in ``bridge/dtls`` and are tested against a real OpenSSL client without
sockets or a reactor. OpenSSL reads the certificate files only when the edge builds the
server at start (the edge reads the private key). The core, CoAP and settings layers may
not import them: nothing there needs OpenSSL.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "bridge")
FORBIDDEN = ("twisted", "txthings", "six", "paho", "sqlite3", "socket", "psycopg", "psycopg_pool", "OpenSSL",
             "cryptography", "select", "selectors", "asyncio", "threading", "subprocess",
             "multiprocessing", "http", "urllib.request", "ssl", "prometheus_client")
# libraries a layer may import although FORBIDDEN names them (see the module)
ALLOWED_LIBRARIES = {"settings": (), "core": (), "coap": (), "dtls": ("OpenSSL", "cryptography")}
# the bridge's own modules each layer may reach: itself and the pure layers below it
# (registry_url: REGISTRY_URL parsed, a pure leaf)
ALLOWED_OWN = {
    "settings": ("bridge.settings", "bridge.registry_url"),
    "core": ("bridge.core", "bridge.settings", "bridge.registry_url"),
    "coap": ("bridge.coap", "bridge.core", "bridge.settings", "bridge.registry_url"),
    "dtls": ("bridge.dtls", "bridge.core", "bridge.settings", "bridge.registry_url"),
}
# bridge/coap/ by layer: the message layer of datagram transports, the exchange layer that
# every transport shares, and the codec under both (its modules: every other one)
MESSAGE_LAYER = ("datagram.py", "dedup.py")
EXCHANGE_LAYER = ("exchange.py", "blocks.py")
# RFC 8323 connections: over the exchange layer, beside the datagram message layer
RELIABLE_LAYER = ("framing.py", "signalling.py", "reliable.py", "reliable_requests.py")


def modules(layer):
    """Every module of the layer, its subpackages too (``formats/json.py``)."""
    folder = os.path.join(ROOT, layer)
    found = []
    for here, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(here, name), folder).replace(os.sep, "/")
                  for name in names if name.endswith(".py")]
    return sorted(found)


def source_of(dotted):
    """The file of bridge module ``dotted`` (a package's ``__init__.py``), or None."""
    parts = dotted.split(".")[1:]
    base = os.path.join(ROOT, *parts)
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def imports_of(path, dotted):
    """Every module the file of module ``dotted`` imports, as absolute dotted names."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    package = dotted.split(".") if path.endswith("__init__.py") else dotted.split(".")[:-1]
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


def dotted_name(layer, name):
    parts = ["bridge", layer] + name[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def under(module, prefixes):
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(layer, name):
    """(module reached, what it imports that it must not), following bridge imports."""
    start = dotted_name(layer, name)
    seen, todo, bad = set(), [start], []
    while todo:
        module = todo.pop()
        path = source_of(module)
        if path is None or module in seen:
            continue
        seen.add(module)
        for imported in imports_of(path, module):
            top = imported.split(".")[0]
            if top in ALLOWED_LIBRARIES[layer]:
                continue
            if top in FORBIDDEN or under(imported, [f for f in FORBIDDEN if "." in f]):
                bad.append((module, imported))
            elif top == "bridge" and imported != "bridge":
                if not under(imported, ALLOWED_OWN[layer]):
                    bad.append((module, imported))
                elif source_of(imported) is not None:  # else a name from a module
                    todo.append(imported)
    return sorted(set(bad))


@pytest.mark.parametrize("layer,name", [(layer, name) for layer in ALLOWED_OWN
                                        for name in modules(layer)])
def test_pure_layers_import_no_io_transitively(layer, name):
    assert violations(layer, name) == []


def test_the_check_sees_relative_absolute_and_transitive_imports(tmp_path, monkeypatch):
    # the checker itself: each kind of forbidden import is caught, also one module away
    (tmp_path / "core").mkdir()
    (tmp_path / "settings").mkdir()
    (tmp_path / "core" / "bad.py").write_text(
        "import socket\nfrom twisted.internet import reactor\nfrom ..edge import mqtt\n"
        "import txthings.coap\nfrom ..settings import fine\n")
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "mqtt.py").write_text("")
    (tmp_path / "settings" / "fine.py").write_text("if False:\n    import subprocess\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    found = {imported for _, imported in violations("core", "bad.py")}
    assert found >= {"socket", "twisted.internet", "bridge.edge", "bridge.edge.mqtt",
                     "txthings.coap", "subprocess"}
    assert ("bridge.settings.fine", "subprocess") in violations("core", "bad.py")


def test_the_core_and_the_settings_share_no_import_circle():
    # the settings never reach the core (the core reads their dataclasses, not the reverse)
    for name in modules("settings"):
        reached = set()
        todo = [dotted_name("settings", name)]
        while todo:
            module = todo.pop()
            path = source_of(module)
            if path is None or module in reached:
                continue
            reached.add(module)
            todo += [m for m in imports_of(path, module) if m.startswith("bridge.")]
        assert not [m for m in reached if under(m, ("bridge.core",))], name


def test_only_the_settings_loader_opens_a_file():
    for name in modules("settings"):
        with open(os.path.join(ROOT, "settings", name), encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        calls = {node.func.id if isinstance(node.func, ast.Name) else
                 getattr(node.func, "attr", "") for node in ast.walk(tree)
                 if isinstance(node, ast.Call)}
        touching = calls & {"open", "isfile", "isdir", "exists", "access", "stat", "listdir",
                            "scandir"}
        if name == "loader.py":
            touching -= {"open", "isfile"}  # the configuration file, and whether there is one
        assert not touching, (name, touching)


def coap_closure(name):
    """The modules of bridge/coap/ that ``bridge/coap/<name>`` imports, transitively."""
    seen, todo = set(), [dotted_name("coap", name)]
    while todo:
        module = todo.pop()
        path = source_of(module)
        if path is None:
            continue
        for imported in imports_of(path, module):
            parts = imported.split(".")
            if parts[:2] == ["bridge", "coap"] and len(parts) > 2 \
                    and source_of(".".join(parts[:3])) is not None \
                    and parts[2] + ".py" not in seen:
                seen.add(parts[2] + ".py")
                todo.append(".".join(parts[:3]))
    return seen


@pytest.mark.parametrize("name", EXCHANGE_LAYER)
def test_the_exchange_layer_imports_nothing_of_the_message_layer(name):
    assert coap_closure(name) & set(MESSAGE_LAYER) == set()


@pytest.mark.parametrize("name", RELIABLE_LAYER)
def test_the_reliable_transports_import_nothing_of_the_message_layer(name):
    assert coap_closure(name) & set(MESSAGE_LAYER) == set()


@pytest.mark.parametrize("name", [n for n in modules("coap")
                                  if n not in MESSAGE_LAYER + EXCHANGE_LAYER + RELIABLE_LAYER])
def test_the_codec_imports_neither_layer(name):
    assert coap_closure(name) & set(MESSAGE_LAYER + EXCHANGE_LAYER) == set()


def test_the_layer_closure_sees_transitive_imports(tmp_path, monkeypatch):
    (tmp_path / "coap").mkdir()
    (tmp_path / "coap" / "exchange.py").write_text("from .blocks import Uploads\n")
    (tmp_path / "coap" / "blocks.py").write_text("from . import dedup\n")
    (tmp_path / "coap" / "dedup.py").write_text("import collections\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    assert coap_closure("exchange.py") == {"blocks.py", "dedup.py"}


def test_the_layer_table_names_modules_that_exist():
    assert set(MESSAGE_LAYER + EXCHANGE_LAYER + RELIABLE_LAYER) <= set(modules("coap"))


def test_importing_the_pure_packages_loads_no_twisted_and_no_txthings():
    # a fresh interpreter: what importing the sans-IO packages (every module) pulls in;
    # the DTLS layer last, as it alone may load pyOpenSSL
    first = [dotted_name(layer, name) for layer in ALLOWED_OWN if layer != "dtls"
             for name in modules(layer)]
    dtls = [dotted_name("dtls", name) for name in modules("dtls")]
    code = ("import importlib, sys\n"
            "def loaded(tops):\n"
            "    return sorted(m for m in sys.modules if m.split('.')[0] in tops)\n"
            "for name in %r:\n"
            "    importlib.import_module(name)\n"
            "print(loaded(('twisted', 'txthings', 'six', 'OpenSSL', 'paho')))\n"
            "for name in %r:\n"
            "    importlib.import_module(name)\n"
            "print(loaded(('twisted', 'txthings', 'six', 'paho')))" % (first, dtls))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.join(ROOT, "..")).stdout
    assert out.split() == ["[]", "[]"]



def test_only_the_dtls_layer_may_use_openssl(tmp_path, monkeypatch):
    for layer in ("core", "coap", "dtls"):
        folder = tmp_path / layer
        folder.mkdir()
        (folder / "tls.py").write_text("from OpenSSL import SSL\nimport cryptography.x509\n"
                                       "import socket\nfrom ..logs import logger\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    for layer in ("core", "coap"):
        found = {imported for _, imported in violations(layer, "tls.py")}
        assert {"OpenSSL", "cryptography.x509"} <= found
    # in the DTLS layer OpenSSL passes; sockets and the bridge's logging still do not
    assert {imported for _, imported in violations("dtls", "tls.py")} == {
        "socket", "bridge.logs", "bridge.logs.logger"}
