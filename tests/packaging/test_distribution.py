"""What the wheel and sdist hold, and the dependencies setup.cfg declares, against the tree.

The wheel is the one ``make test`` built (``TEST_ARTIFACT_DIST``), or one built here
from the checkout when the run has none.
"""

from __future__ import annotations

import ast
import configparser
import glob
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from typing import Dict, Set

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIST_ENV = "TEST_ARTIFACT_DIST"
# Import names that are not their distribution's name (otherwise they are the same).
DISTRIBUTION_OF = {
    "OpenSSL": "pyOpenSSL",
    "yaml": "PyYAML",
    "google.protobuf": "protobuf",
    "grpc_tools": "grpcio-tools",
    "paho": "paho-mqtt",
    "psycopg_pool": "psycopg-pool",
}
NAMESPACES = ("google", "zope")  # namespace packages: the distribution is the subpackage's


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> str:
    given = os.environ.get(DIST_ENV)
    if given:
        return given
    out = str(tmp_path_factory.mktemp("dist"))
    subprocess.run([sys.executable, "-m", "build", "--outdir", out, ROOT], check=True,
                   capture_output=True)
    return out


def only(pattern: str) -> str:
    found = glob.glob(pattern)
    assert len(found) == 1, found
    return found[0]


def packages_in_tree() -> Set[str]:
    found = set()
    for directory, _, files in os.walk(os.path.join(ROOT, "bridge")):
        if "__init__.py" in files:
            found.add(os.path.relpath(os.path.join(directory, "__init__.py"), ROOT))
    return found


def test_the_wheel_holds_every_package_the_plugin_and_nothing_of_twisted_itself(dist):
    names = set(zipfile.ZipFile(only(os.path.join(dist, "*.whl"))).namelist())
    packages = packages_in_tree()
    assert "bridge/dtls/__init__.py" in packages and len(packages) >= 7
    assert packages - names == set(), "packages missing from the wheel"
    modules = {os.path.relpath(path, ROOT) for path in
               glob.glob(os.path.join(ROOT, "bridge", "**", "*.py"), recursive=True)}
    assert modules - names == set(), "modules missing from the wheel"
    assert "twisted/plugins/coapbridge_plugin.py" in names
    # an __init__.py here would replace Twisted's own twisted/plugins package
    assert not {"twisted/__init__.py", "twisted/plugins/__init__.py"} & names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]
    assert "coapbridge-0.1.0.data/data/share/coapbridge/coapbridge.yaml" in names
    assert "coapbridge-0.1.0.dist-info/licenses/LICENSE" in names or \
        "coapbridge-0.1.0.dist-info/LICENSE" in names


def test_the_sdist_holds_the_sources_the_docs_and_the_tests(dist):
    with tarfile.open(only(os.path.join(dist, "*.tar.gz"))) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for path in packages_in_tree() | {"twisted/plugins/coapbridge_plugin.py", "LICENSE",
                                      "README.md", "conf/coapbridge.yaml", "setup.cfg",
                                      "pyproject.toml", "Dockerfile", "docs/deployment.md",
                                      "tests/artifact/test_installed_artifact.py"}:
        assert path in names, path
    assert not [n for n in names if "__pycache__" in n or n.endswith("dropin.cache")]


def test_the_metadata_a_packager_reads(dist):
    wheel = zipfile.ZipFile(only(os.path.join(dist, "*.whl")))
    metadata = wheel.read("coapbridge-0.1.0.dist-info/METADATA").decode()
    assert "\nLicense: Apache-2.0\n" in metadata or "\nLicense-Expression: Apache-2.0\n" \
        in metadata
    assert "\nRequires-Python: >=3.9\n" in metadata
    assert "Classifier: Programming Language :: Python :: Implementation :: PyPy" in metadata
    assert "Project-URL: Deployment, docs/deployment.md" in metadata
    with open(os.path.join(ROOT, "LICENSE")) as handle:
        assert "Apache License\n                           Version 2.0" in handle.read()


# -- dependencies as used -------------------------------------------------------------------

def imported_modules() -> Set[str]:
    """Every absolute import in bridge/ and the plugin, lazy ones inside functions too."""
    paths = glob.glob(os.path.join(ROOT, "bridge", "**", "*.py"), recursive=True)
    paths.append(os.path.join(ROOT, "twisted", "plugins", "coapbridge_plugin.py"))
    found = set()
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return found


def is_stdlib(top: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)  # 3.10+
    if names is not None:
        return top in names
    if top in sys.builtin_module_names:
        return True
    import importlib.util
    spec = importlib.util.find_spec(top)
    stdlib = sysconfig.get_paths()["stdlib"]
    return bool(spec and spec.origin and spec.origin.startswith(stdlib)
                and "site-packages" not in spec.origin)


def third_party(modules: Set[str]) -> Dict[str, str]:
    """import name -> distribution, for what is neither ours nor the standard library."""
    found = {}
    for module in modules:
        parts = module.split(".")
        name = ".".join(parts[:2]) if parts[0] in NAMESPACES else parts[0]
        if parts[0] in ("bridge", "__future__") or is_stdlib(parts[0]):
            continue
        found[name] = DISTRIBUTION_OF.get(name, name)
    return found


def declared() -> Dict[str, Requirement]:
    """What setup.cfg requires to run: install_requires and the extras but [test]."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    lines = config["options"]["install_requires"].splitlines()
    for extra, text in config["options.extras_require"].items():
        if extra != "test":
            lines += text.splitlines()
    requirements = [Requirement(line) for line in lines
                    if line.strip() and not line.strip().startswith("#")]
    return {normalize(r.name): r for r in requirements}


def test_every_third_party_import_is_declared_and_every_declared_one_imported():
    imported = {normalize(d) for d in third_party(imported_modules()).values()}
    assert {"pyopenssl", "cryptography", "twisted", "psycopg", "grpcio-tools"} <= imported
    assert imported - set(declared()) == set(), "imported but not declared in setup.cfg"
    assert set(declared()) - imported == set(), "declared in setup.cfg but never imported"


def test_the_import_names_are_those_the_distributions_install():
    from importlib import metadata
    for module, distribution in DISTRIBUTION_OF.items():
        try:
            files = metadata.distribution(distribution).files or []
        except metadata.PackageNotFoundError:
            continue  # not for this interpreter (grpcio-tools, psycopg on PyPy)
        prefix = module.replace(".", "/") + "/"
        assert any(str(f).startswith(prefix) for f in files), (module, distribution)


def test_each_requirement_has_the_bounds_the_code_needs():
    requirements = declared()
    for name, requirement in requirements.items():
        assert any(s.operator in (">=", "==") for s in requirement.specifier), \
            "%s has no minimum version" % name
    paho = requirements["paho-mqtt"].specifier
    assert "2.9" in paho and "3.0" not in paho  # private APIs of major 2 (setup.cfg)
    assert "tls" in requirements["twisted"].extras  # service-identity for Twisted's TLS
    for name in ("psycopg", "psycopg-pool", "grpcio-tools"):
        assert requirements[name].marker is not None  # CPython only
        assert not requirements[name].marker.evaluate(
            {"platform_python_implementation": "PyPy"})


# Modules that are the PostgreSQL registry: only they may need the [postgresql] extra.
POSTGRESQL_MODULES = {"bridge.registry_pg", "bridge.edge.shared_registry"}


def test_nothing_but_the_postgresql_registry_needs_the_extra():
    """Every other module imports with psycopg unavailable, as in an install without
    ``coapbridge[postgresql]`` (the smoke suite found the bridge dead there once)."""
    code = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "psycopg_pool"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import bridge
for found in pkgutil.walk_packages(bridge.__path__, "bridge."):
    if found.name not in %r:
        try:
            importlib.import_module(found.name)
        except ImportError as exc:
            print(found.name, exc)
""" % (POSTGRESQL_MODULES,)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", "these need psycopg:\n" + done.stdout
