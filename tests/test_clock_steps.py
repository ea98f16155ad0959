"""Wall-clock steps (NTP at boot, an operator's `date`) on real nodes, through libfaketime.

Only the wall clock moves, as a step does on Linux: CLOCK_MONOTONIC, which the
failure detector, tombstones and hints run on, is left alone
(FAKETIME_DONT_FAKE_MONOTONIC). The request log, which keeps a PUT's request id
for a minute across restarts, is what a step could break: it once stamped and
aged its records by the wall clock, so a step forward of a minute or more
expired every record on disk, and after a restart a retried PUT applied a
second time, over a later acknowledged write.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvwire import Client
from kvwire.testing import LocalCluster

# Debian's package faketime (the README's test command installs it), under the
# machine's multiarch directory.
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))),
                   Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"))


def faked_clock(offset_file: Path) -> dict[str, str]:
    """Environment that makes a node's wall clock the offset written in ``offset_file``
    (``+0``, ``+2d``...), read again at every call, so a test can step it mid-run."""
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset_file),
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.mark.parametrize("step", ["at-restart", "while-running"])
def test_a_wall_clock_step_does_not_make_a_retried_put_apply_twice(tmp_path, step):
    """PUT A with a request id, then PUT B; the clock steps two days forward, at the
    restart of every node or for one write while they run (then back, and a restart).
    The retry of the first PUT must answer its version and leave B in place."""
    assert LIBFAKETIME.exists(), "libfaketime is missing: apt-get install faketime"
    offset = tmp_path / "clock"
    offset.write_text("+0\n")
    cluster = LocalCluster(3, data_dir=tmp_path / "data", heartbeat_interval=0.05, failure_timeout=0.5)
    for node in cluster:
        node.env = faked_clock(offset)
    with cluster:
        cluster.wait_ready()
        with Client(cluster.endpoints, **cluster.client_options) as client:
            first = client.put_with_result("k", "A", request_id="req-1")
            client.put("k", "B")
            if step == "while-running":
                offset.write_text("+2d\n")
                client.put("other", 1)  # a commit on every node, which expires records
                offset.write_text("+0\n")
        if step == "at-restart":
            offset.write_text("+2d\n")
        for node_id in cluster.node_ids:
            cluster.restart(node_id)
        cluster.wait_ready()
        with Client(cluster.endpoints, **cluster.client_options) as client:
            retried = client.put_with_result("k", "A", request_id="req-1")
            assert retried.version == first.version
            assert client.get("k") == "B"
