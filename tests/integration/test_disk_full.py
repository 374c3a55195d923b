"""A full disk under DATA_DIR: the log names it for as long as it lasts, and nothing is lost.

DATA_DIR is a small tmpfs of its own, filled up with a file while the bridge runs. A write that
fails inside a statement (a group commit larger than SQLite's page cache) used to log
"cannot rollback - no transaction is active" in place of "database or disk is full"
(tests/edge/test_outbox.py reproduces that one); and every refused turn logged a line of
its own, with nothing said when writes worked again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conftest import BridgeProcess, Mosquitto, Platform, wait_until

pytestmark = pytest.mark.integration

LIBCOAP = shutil.which("coap-client-notls")
FULL = "database or disk is full"


def post(url, body):
    done = subprocess.run([LIBCOAP, "-v", "6", "-m", "post", "-e", body, url],
                          capture_output=True, timeout=30)
    codes = re.findall(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)",
                       done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace"))
    return codes[-1] if codes else None


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs as the bridge's data directory (the tests run as root, as CI does)."""
    data = tmp_path / "data"
    data.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                           str(data)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs for DATA_DIR here: %s"
                    % done.stderr.decode(errors="replace").strip())
    yield str(data)
    subprocess.run(["umount", "-l", str(data)], check=False)


def fill(directory):
    """Write a file until the file system is full; its path."""
    path = os.path.join(directory, "filler")
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass  # ENOSPC: full, which is what this is for
    return path


def test_a_full_disk_is_named_in_the_log_while_it_lasts_and_uplinks_resume(tmp_path,
                                                                          small_disk):
    assert LIBCOAP, "coap-client-notls is missing: make test installs libcoap3-bin"
    broker = Mosquitto(str(tmp_path)).start()
    platform = Platform(broker.port)
    bridge = BridgeProcess(str(tmp_path), broker.port)
    assert bridge.data_dir == small_disk
    bridge.add_device("Dev A", "tokenA")
    bridge.start()
    url = bridge.url + "/api/v1/tokenA/telemetry"
    try:
        assert post(url, '{"before": 1}') == "2.01"
        platform.wait_for("v1/gateway/telemetry", lambda p: "Dev A" in p)
        filler = fill(small_disk)
        answers = [post(url, '{"during": %d, "pad": "%s"}' % (n, "x" * 2000))
                   for n in range(6)]
        assert set(answers) == {"5.03"}, answers
        log = bridge.read_log()
        assert "cannot rollback" not in log
        assert FULL in log
        os.unlink(filler)
        assert post(url, '{"after": 1}') == "2.01"
        platform.wait_for("v1/gateway/telemetry",
                          lambda p: any("after" in e["values"] for e in p.get("Dev A", [])))
        wait_until(lambda: "written again" in bridge.read_log(), 10, "the recovery line")
        log = bridge.read_log()
        assert "cannot rollback" not in log
        # said when it began and when it ended, not once per refused uplink
        assert log.count(FULL) == 2, [line for line in log.splitlines() if FULL in line]
    finally:
        bridge.stop()
        platform.close()
        broker.kill()
