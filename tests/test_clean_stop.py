"""A clean stop (SIGTERM), as a rolling restart does it, fails no request.

A stopping node answers every request it read, then tells each connection, clients'
and peers' alike, that it read nothing more (docs/protocol.md 8): what was on its way
goes to another node, a DELETE included. A client probe (2026-12-06) found DELETEs
failing as undecided under restarts of n1, the node that coordinates DELETEs: the
ones on their way as it closed, from clients and from the peers forwarding theirs.
The scripted halves of this are in test_shutdown.py and test_client_failover.py.
"""

import threading
import time

from kvwire import Client, KvwireError, RetryPolicy
from kvwire.testing import LocalCluster, wait_for

WORKERS = 6
RESTARTS = 4


def test_rolling_restarts_of_the_delete_coordinator_fail_no_put_or_delete(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, sync="normal") as cluster:
        failures: list[str] = []
        done = [0] * WORKERS
        stop = threading.Event()
        # Workers on every node, so that DELETEs reach n1 from clients and forwarded by peers.
        clients = [Client(cluster.endpoints[worker % 3:] + cluster.endpoints[:worker % 3], timeout=10,
                          retry=RetryPolicy(attempts=6, base_delay=0.05, attempt_timeout=3.0, cooldown=1.0))
                   for worker in range(WORKERS)]

        def work(worker: int) -> None:
            client = clients[worker]
            for i in range(1_000_000):  # bounded; stop ends it long before
                if stop.is_set():
                    return
                key = f"w{worker}/{i}"
                try:
                    client.put(key, i)
                    client.delete(key)
                except KvwireError as exc:
                    failures.append(f"{key}: {type(exc).__name__} maybe_applied={exc.maybe_applied}: {exc}")
                done[worker] += 1

        threads = [threading.Thread(target=work, args=(worker,), daemon=True) for worker in range(WORKERS)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(RESTARTS):
                target = sum(done) + 300
                wait_for(lambda: sum(done) >= target, timeout=30, what=f"{target} PUT and DELETE pairs done")
                assert cluster.terminate("n1") == 0
                cluster["n1"].start()
                cluster.wait_ready("n1", timeout=30)
            target = sum(done) + 300
            wait_for(lambda: sum(done) >= target, timeout=30, what="pairs done after the last restart")
        finally:
            stop.set()
            deadline = time.monotonic() + 30
            for thread in threads:
                thread.join(timeout=max(0.1, deadline - time.monotonic()))
            for client in clients:
                client.close()
        assert not any(thread.is_alive() for thread in threads)
        assert failures == []
