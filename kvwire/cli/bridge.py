"""``kvwire bridge``: the REST API alone, and the same bridge inside ``kvwire serve``.

``kvwire.http_bridge`` loads aiohttp only when a bridge is started (its
``__init__`` imports the server lazily), so a node without ``--http-listen``
never loads aiohttp, while the options here still read the bridge's defaults.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

import click

from kvwire.http_bridge import DEFAULT_MAX_BODY_BYTES, MIN_BODY_BYTES, BridgeConfig

from ..protocol import DEFAULT_LIMITS, Limits, format_endpoint, parse_endpoints, parse_host_port
from ..protocol.limits import FRAME_OVERHEAD_BYTES
from ..secret_file import warn_if_readable_by_others
from .options import (
    LOG_LEVELS,
    Address,
    allowed_hosts_option,
    configure_logging,
    env,
    log_format_option,
    tls_file_options,
    tls_files,
    usage_error,
)
from .open_files import ensure_open_files
from .signals import run_until_stop_signal

if TYPE_CHECKING:
    from ..server.config import ServerConfig

# Every option's default is the library's (BridgeConfig's), so the two cannot drift.
DEFAULTS = BridgeConfig()

log = logging.getLogger("kvwire.http")


@click.command()
@click.option("--listen", default=DEFAULTS.listen, type=Address(), show_default=True, metavar="HOST:PORT", help="Address the REST API listens on.", **env("BRIDGE_LISTEN"))
@click.option("--endpoints", default=",".join(DEFAULTS.endpoints), type=Address(many=True), show_default=True, metavar="HOST:PORT[,...]", help="Nodes to forward to; after a connection failure, a hung node or an UNAVAILABLE reply the next is tried.", **env("ENDPOINTS"))
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=86400), default=DEFAULTS.timeout, show_default=True, help="Seconds one REST request may spend on the cluster, failing over included (504 beyond).", **env("TIMEOUT"))
@click.option("--cluster-id", default=None, help="Refuse nodes of another cluster.", **env("CLUSTER_ID"))
@click.option("--max-body-bytes", type=click.IntRange(min=MIN_BODY_BYTES), default=DEFAULT_MAX_BODY_BYTES, show_default=True, help="Largest request body (413 beyond).", **env("MAX_BODY_BYTES"))
@click.option("--max-key-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_key_bytes, show_default=True, help="Longest key, in UTF-8 bytes; as the nodes' option.", **env("MAX_KEY_BYTES"))
@click.option("--max-value-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_value_bytes, show_default=True, help="Largest value, as encoded in msgpack; as the nodes' option (413 beyond).", **env("MAX_VALUE_BYTES"))
@click.option("--tls", is_flag=True, default=False, help="Dial the nodes over TLS (implied by --tls-ca), checking their certificates and host names.", **env("TLS"))
@tls_file_options(
    cert="Serve HTTPS with this certificate (PEM); it is also the client certificate presented to the nodes over TLS.",
    ca="CA (PEM) that signed the nodes' certificates; implies --tls.  [default with --tls: the system's CAs]",
)
@click.option("--max-connections", type=click.IntRange(min=1), default=DEFAULTS.max_connections, show_default=True, help="Open connections beyond this are answered 503 and closed.", **env("BRIDGE_MAX_CONNECTIONS"))
@click.option("--max-buffered-bytes", type=click.IntRange(min=1), default=DEFAULTS.max_buffered_bytes, show_default=True, help="Bytes all connections together may hold of requests still arriving, and of answers left unread; past it the one holding the most is answered 503 and closed (dropped, if it reads nothing or is owed an answer). At least twice --max-body-bytes.", **env("BRIDGE_MAX_BUFFERED_BYTES"))
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True, max=86400), default=DEFAULTS.idle_timeout, show_default=True, help="Seconds a connection may go without a request, or its client without reading an answer, before it is closed.", **env("BRIDGE_IDLE_TIMEOUT"))
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True, max=86400), default=DEFAULTS.request_timeout, show_default=True, help="Seconds a request may take to send its head, and its body may go silent (408 and the connection closed beyond).", **env("BRIDGE_REQUEST_TIMEOUT"))
@allowed_hosts_option("--allowed-hosts", "BRIDGE_ALLOWED_HOSTS")
@click.option("--fast-path/--no-fast-path", default=DEFAULTS.fast_path, show_default=True, help="Read and answer GET, PUT and DELETE of a key without aiohttp's request handling (everything else, and every request at --log-level debug, goes to aiohttp).", **env("FAST_PATH"))
@click.option("--log-level", type=LOG_LEVELS, default="info", show_default=True, help="Logs go to stderr; debug adds one line per request.", **env("LOG_LEVEL"))
@log_format_option()
def bridge(listen, endpoints, timeout, cluster_id, max_body_bytes, max_key_bytes, max_value_bytes, max_connections,
           max_buffered_bytes, idle_timeout, request_timeout, allowed_hosts, fast_path, log_level, log_format, tls, tls_cert, tls_key, tls_ca) -> None:
    """Serve the REST API (/kv-store/v1/...) in front of the nodes, until SIGTERM, SIGINT or SIGHUP."""
    try:
        host, port = parse_host_port(listen)
        nodes = tuple(format_endpoint(*endpoint) for endpoint in parse_endpoints(endpoints))
        limits = Limits(
            max_frame_bytes=max(DEFAULT_LIMITS.max_frame_bytes, max_key_bytes + max_value_bytes + FRAME_OVERHEAD_BYTES),
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
        )
        files = tls_files({"tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca})
        config = BridgeConfig(
            host=host, port=port, endpoints=nodes, timeout=timeout, cluster_id=cluster_id or None,
            limits=limits, max_body_bytes=max_body_bytes, access_log=log_level == "debug", fast_path=fast_path,
            tls=files, nodes_tls=tls or tls_ca is not None, max_connections=max_connections,
            max_buffered_bytes=max_buffered_bytes,
            idle_timeout=idle_timeout, request_timeout=request_timeout, allowed_hosts=allowed_hosts,
        )
        # Loaded now, so that a file that will not load is refused like a missing one.
        config.https_context(), config.nodes_context()
    except (TypeError, ValueError) as exc:
        raise usage_error(str(exc)) from None
    configure_logging(log_level, log_format, context={"bridge": config.listen})  # bridge=HOST:PORT on every line
    if files is not None and files.cert is not None:
        warn_if_readable_by_others(log, "--tls-key file", files.key or files.cert)
    sys.exit(run_bridge(config))


def run_bridge(config: BridgeConfig) -> int:
    """Serve on uvloop until SIGTERM or SIGINT; the exit status, with a failure to listen reported in one line."""
    from kvwire.http_bridge import describe_os_error, serve_bridge
    from kvwire.http_bridge.linger import MAX_LINGERING

    # Its clients, those refused and lingering, and its links to the nodes.
    ensure_open_files(config.max_connections + MAX_LINGERING + len(config.endpoints), log)
    try:
        run_until_stop_signal(lambda stop: serve_bridge(config, stop=stop), log, "finishing requests in flight")
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.listen, describe_os_error(exc))
        return 1
    except KeyboardInterrupt:  # before the signal handlers were installed: a stop all the same (exit 0)
        pass
    return 0


async def serve_with_http(
    config: ServerConfig,
    http_listen: tuple[str, int] | None,
    metrics_listen: tuple[str, int] | None,
    *,
    stop: asyncio.Event,
    http_allowed_hosts: tuple[str, ...] = (),
) -> int:
    """A node with its HTTP listeners in one event loop until ``stop`` is set: its own bridge
    (REST and /metrics) on ``http_listen``, /metrics alone on ``metrics_listen``.

    The bridge hands its requests to this node in the process
    (kvwire.server.in_process), and to its peers what the node cannot answer,
    so it fails over as any client would. The listeners bind before the node opens its
    storage, so a busy port fails fast; stopping, they close first, the bridge
    finishing its requests in flight while the node still serves them.
    """
    from prometheus_client.registry import CollectorRegistry

    from kvwire.http_bridge import describe_os_error, start_bridge, start_metrics
    from kvwire.http_bridge.app import node_client

    from ..server.app import serve as serve_node
    from ..server.in_process import InProcessClient, NodeSlot

    registry = CollectorRegistry(auto_describe=True)
    slot = NodeSlot()  # the node, once it serves: the bridge hands it requests directly
    listeners = []
    try:
        if http_listen is not None:
            bridge_config = node_bridge_config(config, http_listen, http_allowed_hosts)
            what, address = "HTTP bridge", bridge_config.listen
            # What this node cannot answer goes to its peers: the endpoints after its own.
            peers = bridge_config.endpoints[1:] or bridge_config.endpoints

            def make_client(token: str | None) -> InProcessClient:
                return InProcessClient(slot, token, fallback=node_client(bridge_config, token, peers))

            bridge = await start_bridge(bridge_config, registry=registry, make_client=make_client)
            slot.drop_also.append(bridge.drop_connections)
            listeners.append(bridge)
        if metrics_listen is not None:
            what, address = "metrics listener", format_endpoint(*metrics_listen)
            listeners.append(await start_metrics(registry, *metrics_listen))
    except OSError as exc:
        logging.getLogger("kvwire.server").error(
            "cannot start the %s of node %s on %s: %s", what, config.node_id, address, describe_os_error(exc)
        )
        for listener in listeners:
            await listener.close()
        return 1
    node_stop = asyncio.Event()
    node = asyncio.create_task(serve_node(config, stop=node_stop, registry=registry, slot=slot), name=f"kvwire-node-{config.node_id}")
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({node, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for listener in listeners:
            await listener.close()
        node_stop.set()
    await node  # re-raises what stopped a node that could not start
    return 0


def node_bridge_config(config: ServerConfig, http_listen: tuple[str, int],
                       allowed_hosts: tuple[str, ...] = ()) -> BridgeConfig:
    """The bridge of a node: this node first, then its peers; the node's limits and cluster id."""
    # A node listening on every address is reached through loopback.
    own_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
    endpoints = (format_endpoint(own_host, config.port), *(member.address for member in config.peers))
    host, port = http_listen
    # The default body holds a default value's JSON four times over; a node given
    # larger values keeps that room (a fixed 4 MiB refused, 413, values the node took).
    body_bytes = max(DEFAULT_MAX_BODY_BYTES,
                     DEFAULT_MAX_BODY_BYTES // DEFAULT_LIMITS.max_value_bytes * config.limits.max_value_bytes)
    return BridgeConfig(
        host=host,
        port=port,
        endpoints=endpoints,
        cluster_id=config.cluster_id,
        limits=config.limits,
        max_body_bytes=body_bytes,
        # Its own budget, of the node's size: the node's counts the node's connections only.
        max_buffered_bytes=max(config.max_buffered_bytes, 2 * body_bytes),
        access_log=logging.getLogger().isEnabledFor(logging.DEBUG),
        # A TLS node serves its REST API over HTTPS with the same certificate,
        # which is also the bridge's client certificate towards the nodes.
        tls=config.tls,
        nodes_tls=config.tls is not None,
        allowed_hosts=allowed_hosts,
    )
