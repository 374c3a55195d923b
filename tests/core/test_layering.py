"""The pure layers stay pure: the gateway core, the sans-IO CoAP and DTLS layers and the
settings do no I/O, and import nothing above them, transitively.

Read from the source (no import needed). Every import of a module under ``bridge/core/``,
``bridge/coap/``, ``bridge/dtls/`` or ``bridge/settings/`` is followed through the bridge's
own modules (those imported only for type checking and inside functions too); a module
reached that imports Twisted, paho, a database driver, sockets, pyOpenSSL, a subprocess,
or a bridge module outside the layer's allowed set (the edges, the glue, the service...)
fails here. The CoAP layer may import txThings' codec (``txthings.coap``), nothing else of
txThings; the others not even that. The settings may read their YAML file, nothing else:
no module of theirs opens a file but the loader.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "bridge")
FORBIDDEN = ("twisted", "paho", "sqlite3", "socket", "psycopg", "psycopg_pool", "OpenSSL",
             "cryptography", "select", "selectors", "asyncio", "threading", "subprocess",
             "multiprocessing", "http", "urllib.request", "ssl", "prometheus_client")
# the bridge's own modules each layer may reach: itself and the pure layers below it
# (registry_url: REGISTRY_URL parsed, a pure leaf)
ALLOWED_OWN = {
    "settings": ("bridge.settings", "bridge.registry_url"),
    "core": ("bridge.core", "bridge.settings", "bridge.registry_url"),
    "coap": ("bridge.coap", "bridge.core", "bridge.settings", "bridge.registry_url"),
    "dtls": ("bridge.dtls", "bridge.core", "bridge.settings", "bridge.registry_url"),
}
ALLOWED_TXTHINGS = {"core": (), "coap": ("txthings.coap",), "dtls": (), "settings": ()}


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
            if top in FORBIDDEN or under(imported, [f for f in FORBIDDEN if "." in f]):
                bad.append((module, imported))
            elif top == "txthings" and not under(imported, ALLOWED_TXTHINGS[layer]):
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
