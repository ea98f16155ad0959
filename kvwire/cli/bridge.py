"""``kvwire bridge``: the REST API alone, and the same bridge inside ``kvwire serve``.

The bridge package is imported only when a bridge runs, so a node without
``--http-listen`` never loads aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

import click

from ..client.arguments import format_endpoint, parse_endpoints
from ..protocol.address import parse_host_port
from ..protocol.limits import DEFAULT_LIMITS, FRAME_OVERHEAD_BYTES, Limits

if TYPE_CHECKING:
    from http_bridge import BridgeConfig

    from ..server.config import ServerConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_LISTEN = "127.0.0.1:8000"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # http_bridge.config.DEFAULT_MAX_BODY_BYTES, without importing aiohttp

log = logging.getLogger("kvwire.http")


def _env(name: str) -> dict:
    return {"envvar": f"KVWIRE_{name}", "show_envvar": True}


@click.command()
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT", help="Address the REST API listens on.", **_env("BRIDGE_LISTEN"))
@click.option("--endpoints", default="127.0.0.1:7379", show_default=True, metavar="HOST:PORT[,...]", help="Nodes to forward to; after a connection failure, a hung node or an UNAVAILABLE reply the next is tried.", **_env("ENDPOINTS"))
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=86400), default=5.0, show_default=True, help="Seconds one REST request may spend on the cluster, failing over included (504 beyond).", **_env("TIMEOUT"))
@click.option("--cluster-id", default=None, help="Refuse nodes of another cluster.", **_env("CLUSTER_ID"))
@click.option("--max-body-bytes", type=click.IntRange(min=64), default=DEFAULT_MAX_BODY_BYTES, show_default=True, help="Largest request body (413 beyond).", **_env("MAX_BODY_BYTES"))
@click.option("--max-key-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_key_bytes, show_default=True, help="Longest key, in UTF-8 bytes; as the nodes' option.", **_env("MAX_KEY_BYTES"))
@click.option("--max-value-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_value_bytes, show_default=True, help="Largest value, as encoded in msgpack; as the nodes' option (413 beyond).", **_env("MAX_VALUE_BYTES"))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True, help="Logs go to stderr; debug adds one line per request.", **_env("LOG_LEVEL"))
def bridge(listen, endpoints, timeout, cluster_id, max_body_bytes, max_key_bytes, max_value_bytes, log_level) -> None:
    """Serve the REST API (/kv-store/v1/...) in front of the nodes, until SIGTERM or SIGINT."""
    from http_bridge import BridgeConfig

    try:
        host, port = parse_host_port(listen)
        nodes = tuple(format_endpoint(*endpoint) for endpoint in parse_endpoints(endpoints))
        limits = Limits(
            max_frame_bytes=max(DEFAULT_LIMITS.max_frame_bytes, max_key_bytes + max_value_bytes + FRAME_OVERHEAD_BYTES),
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
        )
        config = BridgeConfig(
            host=host, port=port, endpoints=nodes, timeout=timeout, cluster_id=cluster_id or None,
            limits=limits, max_body_bytes=max_body_bytes, access_log=log_level == "debug",
        )
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    sys.exit(run_bridge(config))


def run_bridge(config: BridgeConfig) -> int:
    """Serve on uvloop; the exit status, with a failure to listen reported in one line."""
    import uvloop

    from http_bridge import serve_bridge
    from http_bridge.server import describe_os_error

    try:
        uvloop.run(serve_bridge(config))
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.listen, describe_os_error(exc))
        return 1
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 130
    return 0


async def serve_with_bridge(config: ServerConfig, http_listen: tuple[str, int]) -> int:
    """A node and its own bridge in one event loop; SIGTERM or SIGINT stops both, the bridge first.

    The bridge's client asks this node first and then its peers, so it fails
    over as any client would. The bridge binds before the node opens its
    storage, so a busy HTTP port fails fast; stopping, it finishes its
    requests in flight while the node still serves them.
    """
    from http_bridge import start_bridge
    from http_bridge.server import describe_os_error

    from ..server.app import serve as serve_node

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum, stop)
    bridge_config = node_bridge_config(config, http_listen)
    try:
        running = await start_bridge(bridge_config)
    except OSError as exc:
        logging.getLogger("kvwire.server").error(
            "cannot start the HTTP bridge of node %s on %s: %s", config.node_id, bridge_config.listen, describe_os_error(exc)
        )
        return 1
    node_stop = asyncio.Event()
    node = asyncio.create_task(serve_node(config, stop=node_stop), name=f"kvwire-node-{config.node_id}")
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({node, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await running.close()
        node_stop.set()
    await node  # re-raises what stopped a node that could not start
    return 0


def node_bridge_config(config: ServerConfig, http_listen: tuple[str, int]) -> BridgeConfig:
    """The bridge of a node: this node first, then its peers; the node's limits and cluster id."""
    from http_bridge import BridgeConfig

    # A node listening on every address is reached through loopback.
    own_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
    endpoints = (format_endpoint(own_host, config.port), *(member.address for member in config.peers))
    host, port = http_listen
    return BridgeConfig(
        host=host,
        port=port,
        endpoints=endpoints,
        cluster_id=config.cluster_id,
        limits=config.limits,
        access_log=logging.getLogger().isEnabledFor(logging.DEBUG),
    )


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    logging.getLogger("kvwire.server").info(
        "received %s; stopping the HTTP bridge, then finishing requests in flight", signal.Signals(signum).name
    )
    stop.set()
