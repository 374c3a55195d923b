"""Schemas compiled by ``protoc``, once at start.

``compile_schema`` runs ``protoc --descriptor_set_out`` on one schema text and returns the
compiled file; the rules ThingsBoard adds are checked on it by
``bridge.core.formats.protoschema``. A text is compiled once however often it is asked for
(the configuration check and the building of the core share the result).

Which protoc: the one ``grpcio-tools`` ships (a dependency on CPython, so ``pip install``
alone gives a working PROTOBUF profile; run as ``python -m grpc_tools.protoc``), else the
system's ``protoc`` on PATH (Debian's ``protobuf-compiler``), which is what PyPy has:
grpcio-tools has no PyPy wheel. The two differ in the well-known types (grpcio-tools ships
them, Debian's are in libprotobuf-dev), which no schema here can use: ThingsBoard's rules
refuse imports (``protoschema``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, List, Optional

from google.protobuf import descriptor_pb2

from ..core.formats import efento_proto, fixed, protoschema

INSTALL_HINT = ("protoc is not available: install grpcio-tools (pip install grpcio-tools; "
                "coapbridge depends on it on CPython, which has its wheels) or the system "
                "protoc (Debian/Ubuntu: apt-get install protobuf-compiler; the way on PyPy)")
_ERROR = re.compile(r"^[^:\n]*\.proto:(\d+):(\d+):\s*(.*)$")


def bundled_protoc() -> Optional[List[str]]:
    """grpcio-tools' protoc as a command, or None where it is not installed."""
    try:
        import grpc_tools  # noqa: F401 (only looked for: protoc runs in a child process)
    except ImportError:
        return None
    return [sys.executable, "-m", "grpc_tools.protoc"]


def system_protoc() -> Optional[List[str]]:
    path = shutil.which("protoc")
    return [path] if path else None


def protoc_command() -> Optional[List[str]]:
    """The protoc to run: grpcio-tools' first, the system's as the fallback; None: neither."""
    return bundled_protoc() or system_protoc()


class ProtocMissing(Exception):
    pass


class SchemaError(Exception):
    """The schema does not compile, or breaks a rule: its problems, with positions."""

    def __init__(self, problems: List[protoschema.Problem]):
        self.problems = problems
        super().__init__("; ".join(protoschema.describe(p) for p in problems))


def _errors(stderr: str) -> List[protoschema.Problem]:
    problems = []
    for line in stderr.splitlines():
        match = _ERROR.match(line.strip())
        if match:
            problems.append((int(match.group(1)), int(match.group(2)), match.group(3)))
    return problems or [(0, 0, stderr.strip() or "protoc failed")]


@functools.lru_cache(maxsize=128)
def compile_schema(text: str, kind: str) -> descriptor_pb2.FileDescriptorProto:
    """The compiled, checked file of schema ``text`` of ``kind`` (raises SchemaError)."""
    protoc = protoc_command()
    if protoc is None:
        raise ProtocMissing(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="coapbridge-proto-") as tmp:
        source = os.path.join(tmp, "schema.proto")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write(text)
        out = os.path.join(tmp, "schema.pb")
        result = subprocess.run(
            protoc + ["--include_source_info", "--descriptor_set_out=" + out,
                      "--proto_path=" + tmp, source],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SchemaError(_errors(result.stderr))
        with open(out, "rb") as handle:
            file = protoschema.file_of(handle.read())
    problems = protoschema.check(file, kind)
    if problems:
        raise SchemaError(problems)
    return file


def message_class(text: str, kind: str):
    """The message class of a schema (compiled once): raises SchemaError, ProtocMissing."""
    return protoschema.message_class(compile_schema(text, kind))


def protobuf_startup(profile: Any, where: str, problems: List[str]) -> Any:
    """A PROTOBUF profile (``formats.protobuf.FORMAT``'s start-up check; its keys typed by
    then, ``formats.protobuf.ProtobufKeys``): its schemas read from their files,
    ThingsBoard's defaults for those left out, each compiled once and checked; ``where`` is
    ``device_profiles.<type>.``, every problem names the schema, its line and column."""
    keys = profile.format_keys
    texts = {kind: _schema_text(keys, kind, where, problems) for kind in protoschema.KINDS}
    keys = dataclasses.replace(keys, **texts)
    profile = dataclasses.replace(profile, format_keys=keys)
    for kind in protoschema.KINDS:
        at = where + kind
        if getattr(keys, kind + "File"):
            at += " (%s)" % getattr(keys, kind + "File")
        elif profile.thingsboardProfile:
            at += " (in %s)" % profile.thingsboardProfile
        try:
            compile_schema(getattr(keys, kind), kind)
        except ProtocMissing as exc:
            problems.append("%s: transportPayloadType PROTOBUF: %s" % (where[:-1], exc))
            break
        except SchemaError as exc:
            problems.extend("%s: %s" % (at, protoschema.describe(p)) for p in exc.problems)
    return profile


def _schema_text(keys: Any, kind: str, where: str, problems: List[str]) -> str:
    text, path = getattr(keys, kind), getattr(keys, kind + "File")
    if path and not text:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            problems.append("%sFile: cannot read %s: %s" % (where + kind, path, exc.strerror))
    return text or protoschema.DEFAULTS[kind]


def efento_startup(profile: Any, where: str, problems: List[str]) -> Any:
    """An EFENTO profile (``formats.efento.FORMAT``'s start-up check): Efento's messages
    compiled."""
    try:
        efento_messages()
    except ProtocMissing as exc:
        problems.append("%s: coapDeviceType EFENTO: %s" % (where[:-1], exc))
    return profile


@functools.lru_cache(maxsize=1)
def fixed_messages() -> fixed.FixedMessages:
    """ThingsBoard's fixed messages (``bridge.core.formats.fixed``), compiled once."""
    return fixed.FixedMessages([compile_schema(text, fixed.KIND) for _, text in fixed.FILES])


@functools.lru_cache(maxsize=1)
def efento_messages() -> efento_proto.EfentoMessages:
    """Efento's sensor messages (``bridge.core.formats.efento_proto``), compiled once."""
    return efento_proto.EfentoMessages(compile_schema(efento_proto.PROTO, efento_proto.KIND))
