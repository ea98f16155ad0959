"""A steady REST load through a balancer's HTTP frontend, for failover tests.

    with RestLoad(lb.http_address) as load:
        load.wait_acknowledged(200)
        cluster.kill("n2")
    print(load.report.as_dict())   # failed requests, longest stall, ...

or ``kill_during(RestLoad(...), cluster, lambda: "n2")`` (:mod:`.balancer`).

For requests in flight when a node hangs, :func:`keep_alive_connections` and
:func:`get_on_each`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from typing import Any, Sequence

from .balancer import BackgroundLoad
from .bridge import REST_PREFIX


class RestLoad(BackgroundLoad):
    """One keep-alive HTTP/1.1 connection, PUT then GET of each of a run of distinct keys, in a thread.

    Every request counts (``report.requests``); a key counts as acknowledged
    once its PUT succeeded and its GET returned that value. A request fails
    if the connection breaks, the status is not the one expected, or the body
    is not JSON. In HTTP mode HAProxy balances each request on its own, so
    every node serves this load in turn.

    Nothing is repeated here: what fails is what the balancer let through.
    """

    def __init__(self, endpoint: str, *, prefix: str = "rest", max_requests: int = 20_000,
                 max_duration: float = 15.0, timeout: float = 2.0) -> None:
        super().__init__(endpoint, prefix=prefix, max_requests=max_requests, max_duration=max_duration, timeout=timeout)

    @contextlib.contextmanager
    def _connected(self):
        host, _, port = self.endpoint.rpartition(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            yield
        finally:
            self._connection.close()

    def _attempt(self, key: str, value: int) -> bool:
        return self._put(self._connection, key, value) and self._get(self._connection, key, value)

    def _put(self, connection: http.client.HTTPConnection, key: str, value: int) -> bool:
        _, _, problem = self._request(connection, "PUT", key, {"value": value})
        if problem is not None:
            self.report.failures.append(problem)
        return problem is None

    def _get(self, connection: http.client.HTTPConnection, key: str, value: int) -> bool:
        status, body, problem = self._request(connection, "GET", key)
        if problem is None and body.get("value") != value:
            problem = f"GET {key}: {body!r}, not the value just put"
        if problem is not None:
            self.report.failures.append(problem)
        return problem is None

    def _request(self, connection: http.client.HTTPConnection, method: str, key: str,
                 payload: Any = None) -> tuple[int, Any, str | None]:
        """(status, JSON body, None), or with a description of what went wrong:
        a broken connection (status 0), a body that is not JSON, or a status other than 200/201."""
        self.report.requests += 1
        data = None if payload is None else json.dumps(payload).encode()
        try:
            connection.request(method, f"{REST_PREFIX}/kv/{key}/", body=data, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()  # the next request opens a new connection
            return 0, None, f"{method}: {type(error).__name__}"
        try:
            body = json.loads(raw)
        except ValueError:
            return response.status, None, f"{method}: {response.status} with a body that is not JSON: {raw[:80]!r}"
        if response.status not in (200, 201) or not isinstance(body, dict):
            return response.status, body, f"{method}: {response.status} {body}"
        return response.status, body, None


def keep_alive_connections(endpoint: str, count: int, *, path: str, timeout: float) -> list[http.client.HTTPConnection]:
    """``count`` HTTP/1.1 connections to ``endpoint``, each with one GET of ``path`` answered: the next
    request on each is a keep-alive client's second, which a balancer may send on a server connection it kept."""
    host, _, port = endpoint.rpartition(":")
    connections = []
    for _ in range(count):
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        connection.request("GET", path)
        connection.getresponse().read()
        connections.append(connection)
    return connections


def get_on_each(connections: Sequence[http.client.HTTPConnection], path: str) -> list[tuple[int, Any] | str]:
    """GET ``path`` on every connection at once, a thread each; for each, (status, JSON body), or the
    name of the error if no response came (``RemoteDisconnected``: closed without a response)."""
    replies: list[tuple[int, Any] | str] = ["no reply"] * len(connections)

    def get(index: int, connection: http.client.HTTPConnection) -> None:
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            replies[index] = (response.status, json.loads(response.read()))
        except (OSError, http.client.HTTPException, ValueError) as error:
            replies[index] = type(error).__name__
        finally:
            connection.close()

    threads = [threading.Thread(target=get, args=item, daemon=True) for item in enumerate(connections)]
    for thread in threads:
        thread.start()
    for thread, connection in zip(threads, connections):
        thread.join((connection.timeout or 0) + 5)  # each connection's socket timeout bounds its thread
    return replies
