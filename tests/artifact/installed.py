"""The install under test: the wheel in a fresh virtualenv (``make test`` builds it with
``scripts/install.sh artifact``), or the Docker image (``make test-image``).

Either way the bridge and the ``coapbridge`` command run with no YAML file (an empty
working directory: ``conf/coapbridge.yaml`` is looked for there) and are configured by
environment variables alone. Only the harness (mosquitto, the platform, the CoAP clients,
the certificates) runs from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional

# not COAPBRIDGE_*: the integration tests' bridges inherit the environment, and refuse a
# variable that looks like one of their settings and is none
VENV_ENV = "TEST_ARTIFACT_VENV"
IMAGE_ENV = "TEST_ARTIFACT_IMAGE"
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKER = shutil.which("docker") or "docker"
TMP = "/run/coapbridge-tmp"  # in the container (the test's files are under /tmp)


class Installed:
    """How to run the installed bridge, its command line tool and its interpreter."""

    name = "install"

    def __init__(self) -> None:
        self.empty = tempfile.mkdtemp(prefix="coapbridge-cwd-")  # stays empty: no conf/

    def command(self, argv: List[str], env: Dict[str, str]) -> List[str]:
        raise NotImplementedError

    def base_env(self) -> Dict[str, str]:
        return {"LANG": "C.UTF-8", "HOME": self.empty}

    def popen(self, argv: List[str], env: Dict[str, str], log: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv, env), cwd=self.empty,
                                env=self.process_env(env), stdin=subprocess.DEVNULL,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT)

    def run(self, argv: List[str], env: Dict[str, str],
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv, env), cwd=self.empty,
                              env=self.process_env(env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def process_env(self, env: Dict[str, str]) -> Dict[str, str]:
        raise NotImplementedError

    def prepare_dir(self, path: str) -> None:
        """A directory the bridge writes (DATA_DIR)."""
        os.makedirs(path, exist_ok=True)


class Virtualenv(Installed):
    """The wheel installed by pip into its own virtualenv. PATH holds that virtualenv's
    bin/ and nothing else where grpcio-tools is installed, so a PROTOBUF profile that works
    proves the pip-installed protoc (no system protoc can be found); on PyPy, which has no
    grpcio-tools, the system's PATH follows (its protoc is the documented way there)."""

    def __init__(self, venv: str) -> None:
        super().__init__()
        self.venv = os.path.abspath(venv)
        self.name = "virtualenv %s" % self.venv
        self.bin = os.path.join(self.venv, "bin")
        self.has_grpc_tools = False  # the probe itself runs with the system's PATH
        self.has_grpc_tools = bool(self.module_path("grpc_tools"))

    def module_path(self, module: str) -> Optional[str]:
        done = subprocess.run(
            [os.path.join(self.bin, "python"), "-c",
             "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]); "
             "print(s.origin if s else '')", module],
            cwd=self.empty, env=self.process_env({}), capture_output=True, text=True,
            check=True)
        return done.stdout.strip() or None

    def command(self, argv: List[str], env: Dict[str, str]) -> List[str]:
        return [os.path.join(self.bin, argv[0])] + argv[1:]

    def process_env(self, env: Dict[str, str]) -> Dict[str, str]:
        path = self.bin if self.has_grpc_tools else self.bin + ":/usr/local/bin:/usr/bin:/bin"
        return dict(self.base_env(), PATH=path, **env)


class Image(Installed):
    """The Docker image: each command a ``docker run`` on the host's network (the ports are
    the host's), with the test's files mounted at the same paths."""

    def __init__(self, image: str) -> None:
        super().__init__()
        self.image = image
        self.name = "image %s" % image
        self.mounts: List[str] = []

    def share(self, path: str) -> None:
        """Make ``path`` (a directory of the test's) visible in the containers, where the
        image's user may read it (pytest makes its directories 0700)."""
        os.chmod(path, 0o755)
        self.mounts.append(path)

    def prepare_dir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)  # the image's user is 999:999

    def module_path(self, module: str) -> Optional[str]:
        done = self.run(["python", "-c", "import importlib.util, sys; "
                         "s = importlib.util.find_spec(sys.argv[1]); "
                         "print(s.origin if s else '')", module], {})
        return done.stdout.strip() or None

    def command(self, argv: List[str], env: Dict[str, str]) -> List[str]:
        # a read-only root: the bridge may write only DATA_DIR (mounted) and its temporary
        # directory, here an empty one that is also the working directory (no conf/)
        args = [DOCKER, "run", "--rm", "-i", "--network", "host", "--read-only",
                "--tmpfs", TMP, "-e", "TMPDIR=" + TMP, "-w", TMP]
        for path in self.mounts:
            args += ["-v", "%s:%s" % (path, path)]
        for key in env:
            args += ["-e", key]  # the value comes from docker's own environment
        return args + [self.image] + argv

    def process_env(self, env: Dict[str, str]) -> Dict[str, str]:
        return dict(os.environ, **env)


def from_environment() -> Optional[Installed]:
    if os.environ.get(IMAGE_ENV):
        return Image(os.environ[IMAGE_ENV])
    if os.environ.get(VENV_ENV):
        return Virtualenv(os.environ[VENV_ENV])
    return None
