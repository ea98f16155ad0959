"""Configuration mistakes about who the members are: two processes running as one
member, nodes whose --cluster lists differ, a member listed at the wrong address.

Real node processes on 127.0.0.x. A probe found each one silent: the twin lost
every second acknowledged write, the lists that differed lost writes and served
stale reads, the wrong address left a peer DOWN with nothing above debug.
"""

from __future__ import annotations

import pytest

from kvwire import Client
from kvwire.protocol import NoQuorumError
from kvwire.testing import LocalCluster, NodeProcess, free_port, wait_for

TWIN_HOST = "127.0.0.9"


def _with_member(cluster: LocalCluster, node_id: str, address: str) -> list[str]:
    """The cluster's node arguments, with ``node_id`` listed at ``address``."""
    members = ",".join(entry if not entry.startswith(f"{node_id}=") else f"{node_id}={address}"
                       for entry in cluster.members.split(","))
    args = list(cluster["n1"].extra_args)
    args[args.index("--cluster") + 1] = members
    return args


def _twin(cluster: LocalCluster, tmp_path) -> NodeProcess:
    """A second n2, on a data directory and an address of its own, listing itself there:
    a forgotten copy of n2 on another machine, say."""
    port = free_port(TWIN_HOST)
    return NodeProcess("n2", data_dir=tmp_path / "twin", host=TWIN_HOST, port=port,
                       extra_args=_with_member(cluster, "n2", f"{TWIN_HOST}:{port}"))


def _put_fails_without_a_majority(node: NodeProcess, key: str) -> bool:
    with Client(node.address, timeout=2.0) as client:
        try:
            client.put(key, "from the twin")
        except NoQuorumError:
            return True
    return False


def test_a_second_process_as_a_running_member_gets_no_peer_link(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, sync="off", heartbeat_interval=0.05, failure_timeout=0.3) as cluster:
        twin = _twin(cluster, tmp_path)
        with twin:
            wait_for(lambda: "two processes run as node 'n2'" in cluster["n1"].log()
                     and "two processes run as node 'n2'" in cluster["n3"].log(), timeout=10,
                     what="n1 and n3 refusing the second n2")
            assert "event=peer_twin_refused" in cluster["n1"].log()
            # It minted the same tags as the real n2 for other values: with no peer, none is taken.
            assert _put_fails_without_a_majority(twin, "twin-key")
            assert "another process runs as node 'n2'" in twin.log()
        with Client(cluster.endpoints_of("n2"), timeout=5.0) as client:
            client.put("real-key", "kept")
        with Client(cluster.endpoints_of("n1", "n3"), timeout=5.0) as client:
            assert client.get("real-key") == "kept"
            with pytest.raises(KeyError):
                client.get("twin-key")


def test_a_twin_linked_before_the_real_member_is_dropped_once_it_is_reached(tmp_path):
    """The twin dials in while nothing answers at n2's address, so n1 and n3 have no
    link of their own to compare it with, and take it; once they reach the real n2
    there, they drop the twin's connections, and refuse it from then on."""
    cluster = LocalCluster(3, data_dir=tmp_path, sync="off", heartbeat_interval=0.05, failure_timeout=0.3)
    twin = _twin(cluster, tmp_path)
    try:
        cluster.start("n1", "n3")
        twin.start()
        twin.wait_ready()

        def twin_sees_both_up() -> bool:
            with Client(twin.address, timeout=2.0) as client:
                nodes = client.health()["cluster"]["nodes"]
            return all(entry["healthy"] for entry in nodes if entry["node_id"] != "n2")

        wait_for(twin_sees_both_up, timeout=15, what="the twin linked to n1 and n3")
        cluster.start("n2")
        cluster.wait_ready()
        wait_for(lambda: "event=peer_connection_superseded" in cluster["n1"].log(), timeout=10,
                 what="n1 dropping the twin's connection")
        wait_for(lambda: _put_fails_without_a_majority(twin, "twin-key"), timeout=10,
                 what="the twin left without a majority")
        with Client(cluster.endpoints_of("n2"), timeout=5.0) as client:
            client.put("real-key", "kept")
    finally:
        twin.stop()
        cluster.stop()


def test_nodes_whose_member_lists_differ_say_so(tmp_path):
    cluster = LocalCluster(3, data_dir=tmp_path, sync="off")
    # n3 lists a fourth member the others do not: a growth to more nodes half done.
    n3 = cluster["n3"]
    n3.extra_args = list(n3.extra_args)
    at = n3.extra_args.index("--cluster") + 1
    n3.extra_args[at] += f",n4=127.0.0.4:{free_port('127.0.0.4')}"
    with cluster:
        wait_for(lambda: "event=peer_members_differ" in cluster["n1"].log()
                 and "event=peer_members_differ" in n3.log(), timeout=10, what="both ends naming the difference")
        assert "peer n3's --cluster names other members than this node's" in cluster["n1"].log()
        assert "only there: n4; only here: none" in cluster["n1"].log()
        assert "only there: none; only here: n4" in n3.log()
        # Said once for each list, not at every redial.
        assert cluster["n1"].log().count("peer n3's --cluster names other members") == 1
    assert "peer n1's --cluster" not in cluster["n2"].log()


def test_a_member_listed_at_the_wrong_address_is_named_when_it_dials_in(tmp_path):
    cluster = LocalCluster(3, data_dir=tmp_path, sync="off")
    n3 = cluster["n3"]
    wrong = f"{cluster['n2'].host}:{free_port(cluster['n2'].host)}"  # nothing listens there
    n3.extra_args = _with_member(cluster, "n2", wrong)
    try:
        cluster.start()
        cluster.wait_ready(peers=False)
        wait_for(lambda: "event=peer_unreachable_at_address" in n3.log(), timeout=15,
                 what="n3 naming the address it cannot reach n2 at")
        assert f"peer n2 dialled in and was accepted as a peer, but this node cannot reach it at {wrong}" in n3.log()
        assert "event=peer_unreachable_at_address" not in cluster["n1"].log()
        # The other nodes see n3's --cluster give n2 another address: where an old copy of n2
        # still ran there, n3 and they would each back another process as n2 (a reviewer's finding).
        right = cluster["n2"].address
        assert f"peer n3's --cluster gives other addresses than this node's for n2 at {wrong} there, {right} here" \
            in cluster["n1"].log()
        assert f"peer n1's --cluster gives other addresses than this node's for n2 at {right} there, {wrong} here" \
            in n3.log()
        assert "event=peer_members_differ" not in cluster["n1"].log()
    finally:
        cluster.stop()
