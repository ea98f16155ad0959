"""GET consistency on a real 3-node cluster: ``one`` and ``quorum`` must take different paths.

The consistency tests in test_client.py and test_cli.py run against a lone
node, where a quorum read is a local read (a majority of one), so they pass
even if ``consistency`` never leaves the client. Here n2 and n3 are hung
(SIGSTOP) and n1 knows them DOWN, so n1 alone can only answer a local read:

- ``consistency=one`` must return n1's copy (value and version tag);
- the default and an explicit ``consistency=quorum`` must fail with NO_QUORUM.

Why this catches a dropped consistency, through every interface below: a
client, CLI or bridge that does not put ``consistency: "one"`` on the wire
sends a GET whose consistency is absent, which the node treats as a quorum
read, so the ``one`` assertion gets NO_QUORUM (503, exit code 3) and fails.
A node that ignored the field would fail the same way, and a node that read
locally whatever the field said would fail the ``quorum`` assertion (it would
answer instead of NO_QUORUM). Checked on scratch copies of the tree, one
mutant at a time: the client's ``check_consistency`` returning None failed
the sync, async, CLI and REST tests (NoQuorumError, exit 3, 503); the CLI's
``get`` and the bridge's handler dropping ``consistency`` failed the CLI and
REST tests; node.py's ``_get`` always reading a quorum, or always locally,
failed all five.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from kvwire import AsyncClient, Client, NoQuorumError
from kvwire.client import RetryPolicy
from kvwire.protocol import Consistency, Delete, ErrorCode, ErrorReply, Get, GetReply, Put, PutReply
from kvwire.testing import LocalCluster, RawConnection
from kvwire.testing.bridge import REST_PREFIX, BridgeProcess

HUNG = ("n2", "n3")
# n1 is the only live node while the test runs; no other endpoint is ever given
# to a client, so no failover can send a read to a node that could form a majority.
LIVE = "n1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("consistency")
    # --sync normal: not a durability test; a shared disk's fsync stall must not fail a write.
    with LocalCluster(3, data_dir=root / "data", sync="normal") as started:
        # A standalone bridge that knows only n1, started while everything is up.
        with BridgeProcess(started.endpoints_of(LIVE), log_path=root / "bridge.log", args=["--timeout", "5"]) as bridge:
            started.bridge = bridge
            yield started
        assert "Traceback" not in bridge.log(), bridge.log()
    for node in started:
        assert "Traceback" not in node.log(), node.log()


@pytest.fixture
def stored(cluster, request):
    """A key written through n1 while all three nodes are UP: ``(key, value, version)``."""
    key = f"consistency/{request.node.name}"
    value = {"written by": request.node.name}
    with RawConnection(cluster[LIVE].address) as conn:
        reply = conn.request(Put(1, key, value))
    assert isinstance(reply, PutReply), reply
    return key, value, reply.version


@pytest.fixture
def majority_hung(cluster, stored):
    """n2 and n3 SIGSTOPped, and n1 seeing both DOWN; resumed (and seen UP again) afterwards."""
    try:
        for node_id in HUNG:
            cluster.pause(node_id)
        # Poll n1's HEALTH until it marks both DOWN (failure timeout 0.5 s).
        cluster.wait_peers(LIVE, down=HUNG, timeout=5.0)
        yield stored
    finally:
        for node_id in HUNG:
            cluster.resume(node_id)
        for node_id in cluster.node_ids:
            cluster.wait_peers(node_id, up=[other for other in cluster.node_ids if other != node_id], timeout=10.0)


def test_raw_wire_one_reads_locally_and_quorum_gets_no_quorum(cluster, majority_hung):
    key, value, version = majority_hung
    with RawConnection(cluster[LIVE].address) as conn:
        local = conn.request(Get(1, key, Consistency.ONE))
        assert isinstance(local, GetReply), local
        assert (local.value, local.version) == (value, version)
        for request in (Get(2, key), Get(3, key, Consistency.QUORUM)):
            refused = conn.request(request)
            assert isinstance(refused, ErrorReply), refused
            assert refused.code == ErrorCode.NO_QUORUM, refused
            assert "consistency 'one'" in refused.message
        # A DELETE reads the key on a majority first, and fails there; it has no 'one' to
        # offer (its error offered a GET's way out, a probe found).
        refused = conn.request(Delete(4, key))
        assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.NO_QUORUM, refused
        assert "could not read the key on a majority first (quorum read of" in refused.message
        assert "consistency 'one'" not in refused.message and "--consistency" not in refused.message, refused.message


# attempts=1: with one endpoint there is nowhere to fail over to anyway.
CLIENT_OPTIONS = {"timeout": 5.0, "retry": RetryPolicy(attempts=1)}


def test_sync_client_sends_consistency(cluster, majority_hung):
    key, value, version = majority_hung
    with Client(cluster.endpoints_of(LIVE), **CLIENT_OPTIONS) as kv:
        assert kv.get(key, consistency="one") == value
        assert tuple(kv.get_with_version(key, consistency=Consistency.ONE)) == (value, version)
        for consistency in (None, "quorum"):
            with pytest.raises(NoQuorumError, match="consistency 'one'"):
                kv.get(key, consistency=consistency)
            with pytest.raises(NoQuorumError):
                kv.get_with_version(key, consistency=consistency)


async def test_async_client_sends_consistency(cluster, majority_hung):
    key, value, version = majority_hung
    async with AsyncClient(cluster.endpoints_of(LIVE), **CLIENT_OPTIONS) as kv:
        assert await kv.get(key, consistency="one") == value
        assert tuple(await kv.get_with_version(key, consistency="one")) == (value, version)
        for consistency in (None, Consistency.QUORUM):
            with pytest.raises(NoQuorumError, match="consistency 'one'"):
                await kv.get(key, consistency=consistency)


def _cli_command() -> list[str]:
    """The installed ``kvwire-cli`` script next to this interpreter, else the same entry point via -m."""
    script = Path(sys.executable).parent / "kvwire-cli"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kvwire.cli.client"]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
    result = subprocess.run([*_cli_command(), *args], capture_output=True, text=True, timeout=30, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_cli_sends_consistency(cluster, majority_hung):
    key, value, version = majority_hung
    endpoint = ["--endpoints", cluster[LIVE].address, "--timeout", "5"]
    local = _run_cli(*endpoint, "get", key, "--consistency", "one", "-o", "json")
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout) == {
        "key": key, "value": value, "version": {"counter": version.counter, "node": version.node},
    }
    for extra in ([], ["--consistency", "quorum"]):
        refused = _run_cli(*endpoint, "get", key, *extra)
        assert refused.returncode == 3, (extra, refused.stdout, refused.stderr)  # 3: cluster unavailable / NO_QUORUM
        assert "consistency" in refused.stderr


def _http_get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_http_bridge_sends_consistency(cluster, majority_hung):
    key, value, version = majority_hung
    url = f"{cluster.bridge.url}{REST_PREFIX}/kv/{urllib.parse.quote(key, safe='')}/"
    status, body = _http_get(url + "?consistency=one")
    assert status == 200, body
    assert body == {"key": key, "value": value, "version": {"counter": version.counter, "node": version.node}}
    for query in ("", "?consistency=quorum"):
        status, body = _http_get(url + query)
        assert status == 503, (query, body)
        assert "consistency" in body["error"]

