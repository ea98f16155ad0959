"""``kvwire``: run a node (`serve`) or a local cluster (`up`)."""

from __future__ import annotations

import faulthandler
import ipaddress
import logging
import socket
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from ..protocol import DEFAULT_LIMITS, Limits, format_endpoint, parse_host_port
from ..server.access import AuthTable
from ..server.config import ServerConfig, SyncMode, parse_cluster
from ..secret_file import read_secret_file, warn_if_readable_by_others, write_secret_file
from ..tls import TlsConfigError
from .exit_status import CONFIG_REFUSED_STATUS
from .lazy import LazyGroup
from .options import (LOG_LEVELS, Address, DirectoryPath, FilePath, allowed_hosts_option, configure_logging, env, log_format_option,
                      tls_file_options, tls_files, usage_error)
from .open_files import ensure_open_files
from .signals import run_until_stop_signal


@click.group(
    cls=LazyGroup,
    lazy_commands={name: f"kvwire.cli.{name}:{name}" for name in ("up", "bridge", "bench", "chaos", "certs", "backup")},
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="kvwire")
def main() -> None:
    """kvwire: a replicated key-value store over length-prefixed msgpack."""


@main.command()
@click.option("--node-id", default="n1", show_default=True, help="This node's id; it tags every version it writes.", **env("NODE_ID"))
@click.option("--listen", default="127.0.0.1:7379", type=Address(), show_default=True, metavar="HOST:PORT", help="Address for clients and peers.", **env("LISTEN"))
@click.option("--data-dir", type=DirectoryPath(), default=None, help="Where the SQLite files live.  [default: ./.kvwire/NODE_ID]", **env("DATA_DIR"))
@click.option("--cluster-id", default="kvwire", show_default=True, help="Clients and peers naming another cluster are refused.", **env("CLUSTER_ID"))
@click.option("--sync", type=click.Choice([mode.value for mode in SyncMode]), default="full", show_default=True, help="Durability of each commit: full fsyncs the WAL; normal and off survive a crash of the node but not of the machine.", **env("SYNC"))
@click.option("--max-key-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_key_bytes, show_default=True, help="Longest key, in UTF-8 bytes.", **env("MAX_KEY_BYTES"))
@click.option("--max-value-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_value_bytes, show_default=True, help="Largest value, as encoded in msgpack.", **env("MAX_VALUE_BYTES"))
@click.option("--max-frame-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_frame_bytes, show_default=True, help="Largest frame accepted; must hold the largest key and value.", **env("MAX_FRAME_BYTES"))
@click.option("--max-connections", type=click.IntRange(min=1), default=ServerConfig.max_connections, show_default=True, help="Open connections beyond this are refused with UNAVAILABLE.", **env("MAX_CONNECTIONS"))
@click.option("--max-inflight", type=click.IntRange(min=1), default=ServerConfig.max_inflight_per_connection, show_default=True, help="Requests one connection may have waiting (on storage or on peers); at the cap the node starts no more of its requests, read or not, until fewer than half wait.", **env("MAX_INFLIGHT"))
@click.option("--max-inflight-bytes", type=click.IntRange(min=1), default=ServerConfig.max_inflight_bytes_per_connection, show_default=True, help="The same cap in bytes: the frames of one connection's waiting requests, a GET or DELETE counting --max-value-bytes more; one request always starts when none waits.", **env("MAX_INFLIGHT_BYTES"))
@click.option("--max-buffered-bytes", type=click.IntRange(min=1), default=ServerConfig.max_buffered_bytes, show_default=True, help="Bytes all client connections together may hold of requests not yet read whole or handled, and of replies left unread; past it the connection holding the most is closed with UNAVAILABLE. At least the largest request's frame.", **env("MAX_BUFFERED_BYTES"))
@click.option("--cache-entries", type=click.IntRange(min=0), default=ServerConfig.cache_entries, show_default=True, help="Values kept in memory (0 turns the cache off); version tags of all keys are always in memory.", **env("CACHE_ENTRIES"))
@click.option("--cache-bytes", type=click.IntRange(min=0), default=ServerConfig.cache_bytes, show_default=True, help="Bytes of values (as packed) kept in memory at most; the least recently used go first, and a value larger than this is not kept.", **env("CACHE_BYTES"))
@click.option("--cluster", "cluster", default=None, metavar="ID=HOST:PORT,...", help="Every member, this node included, e.g. n1=127.0.0.1:7379,n2=127.0.0.1:7380,n3=127.0.0.1:7381. Without it the node runs alone.", **env("CLUSTER"))
@click.option("--heartbeat-interval", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.heartbeat_interval, show_default=True, help="Seconds between PINGs to each peer.", **env("HEARTBEAT_INTERVAL"))
@click.option("--failure-timeout", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.failure_timeout, show_default=True, help="Seconds of silence after which a peer is DOWN; must exceed twice the heartbeat interval.", **env("FAILURE_TIMEOUT"))
@click.option("--write-timeout", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.write_timeout, show_default=True, help="Seconds a write or quorum read waits for a majority before failing with NO_QUORUM.", **env("WRITE_TIMEOUT"))
@click.option("--retry-attempts", type=click.IntRange(min=0), default=ServerConfig.retry_attempts, show_default=True, help="Background re-sends to a live replica that missed a write, before it waits as a hint.", **env("RETRY_ATTEMPTS"))
@click.option("--retry-delay", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.retry_delay, show_default=True, help="Seconds before the first background re-send; it doubles each time.", **env("RETRY_DELAY"))
@click.option("--cluster-secret-file", type=FilePath(), default=None, help="The secret every member holds; peers prove it before replicating (make one: kvwire secret FILE). Needed with --cluster.", **env("CLUSTER_SECRET_FILE"))
@click.option("--insecure", is_flag=True, default=False, help="Run --cluster without a secret: any connection saying it is a peer may replicate. For trusted networks only.", **env("INSECURE"))
@click.option("--auth-file", type=FilePath(), default=None, help="Client tokens and their roles (read, write, admin); without it anyone may read and write.", **env("AUTH_FILE"))
@click.option("--hello-timeout", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.hello_timeout, show_default=True, help="Seconds a new connection has for its first request (with --auth-file: an accepted HELLO) before it is closed.", **env("HELLO_TIMEOUT"))
@click.option("--frame-timeout", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.frame_timeout, show_default=True, help="Seconds a frame, once begun, has to arrive whole before the connection is closed; and the replies sent to a connection may wait unread.", **env("FRAME_TIMEOUT"))
@click.option("--repair-interval", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.repair_interval, show_default=True, help="Seconds between anti-entropy rounds, each comparing this node with the next peer in turn.", **env("REPAIR_INTERVAL"))
@click.option("--repair-rate", type=click.IntRange(min=1), default=ServerConfig.repair_rate, show_default=True, help="Keys per second anti-entropy may pull from peers.", **env("REPAIR_RATE"))
@click.option("--hint-limit", type=click.IntRange(min=1), default=ServerConfig.hint_limit, show_default=True, help="Hints kept for one peer; past it the node stops hinting that peer and leaves it to anti-entropy.", **env("HINT_LIMIT"))
@click.option("--hint-max-age", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.hint_max_age, show_default=True, help="Seconds a peer's oldest hint may wait; past it the node stops hinting that peer and leaves it to anti-entropy.", **env("HINT_MAX_AGE"))
@click.option("--tombstone-grace", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.tombstone_grace, show_default=True, help="Seconds every replica must have held no live version of a deleted key before its tombstone is removed; at least 4 write timeouts.", **env("TOMBSTONE_GRACE"))
@click.option("--disk-stall-timeout", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.disk_stall_timeout, show_default=True, help="Seconds a group commit may run (a disk not completing writes) before the node refuses writes and reports itself unable to take them, until it returns.", **env("DISK_STALL_TIMEOUT"))
@click.option("--scrub-rate", type=click.IntRange(min=0), default=ServerConfig.scrub_rate, show_default=True, help="Values a second the background scrub reads and checks for damage on disk, mending each damaged one from a peer's copy; 0 turns it off.", **env("SCRUB_RATE"))
@click.option("--join", is_flag=True, default=False, help="This node's data directory is new and the cluster already holds data (a lost disk, or a replacement): take no part in majorities until caught up from every peer. Honoured on a directory used before but never joined with (a warning); ignored on one that has joined.", **env("JOIN"))
@click.option("--max-version-jump", type=click.IntRange(min=1, max=2**62), default=ServerConfig.max_version_jump, show_default=True, help="A peer's version tag more than this far above this node's highest counter is refused.", **env("MAX_VERSION_JUMP"))
@tls_file_options(
    cert="Serve TLS with this certificate (PEM), to clients and peers; it is also this node's client certificate towards its peers, so it needs both serverAuth and clientAuth (kvwire certs makes such).",
    ca="CA (PEM) that signed the peers' certificates; with it every connection, client or peer, must present a certificate it signed (mutual TLS). Without it peers are checked against the system's CAs.",
)
@click.option("--http-listen", default=None, type=Address(), metavar="HOST:PORT", help="Also serve the REST API (the HTTP bridge) and /metrics on this address, in this process; over HTTPS with --tls-cert.", **env("HTTP_LISTEN"))
@allowed_hosts_option("--http-allowed-hosts", "HTTP_ALLOWED_HOSTS")
@click.option("--metrics-listen", default=None, type=Address(), metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics (without a bridge).", **env("METRICS_LISTEN"))
@click.option("--log-level", type=LOG_LEVELS, default="info", show_default=True, help="Logs go to stderr, one line per event.", **env("LOG_LEVEL"))
@log_format_option()
def serve(**options) -> None:
    """Run one node in the foreground until SIGTERM, SIGINT or SIGHUP."""
    try:
        config, http_address, metrics_address = checked_settings(options)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    node_id = config.node_id
    configure_logging(options["log_level"], options["log_format"], context={"node": node_id})  # node=ID on every line
    warn_about_security(config, options["cluster_secret_file"], options["auth_file"])
    warn_if_peers_dial_elsewhere(config)
    sys.exit(run_node(config, http_listen=http_address, metrics_listen=metrics_address,
                      http_allowed_hosts=options["allowed_hosts"]))


# What checked_settings leaves out when it may not read files: they may not exist yet
# (kvwire up makes the cluster secret and the certificates once its check has passed).
_FILES_LEFT_TO_THE_NODE = {"cluster_secret_file": None, "auth_file": None, "tls_cert": None, "tls_key": None,
                           "tls_ca": None, "insecure": True}


def checked_settings(options: dict, *, read_files: bool = True) -> tuple[ServerConfig, tuple | None, tuple | None]:
    """``serve``'s options checked as a whole: the config, and the --http-listen and
    --metrics-listen addresses; ValueError names what is wrong. Without ``read_files``,
    the files named are left for the node to read (``kvwire up`` checks a node's options
    before it makes them): the options' relations are what is checked then."""
    if not read_files:
        options = {**options, **_FILES_LEFT_TO_THE_NODE}
    config = server_config(options)
    http_address = parse_host_port(options["http_listen"]) if options["http_listen"] else None
    metrics_address = parse_host_port(options["metrics_listen"]) if options["metrics_listen"] else None
    check_listeners_differ({"--listen": (config.host, config.port), "--http-listen": http_address,
                            "--metrics-listen": metrics_address})
    if http_address is not None:
        # Checked now, so that a bad name is a usage error before anything starts.
        from .bridge import node_bridge_config

        node_bridge_config(config, http_address, options["allowed_hosts"])
    elif options["allowed_hosts"] and \
            click.get_current_context().get_parameter_source("allowed_hosts") is ParameterSource.COMMANDLINE:
        # Given on the command line, a mistake; from KVWIRE_HTTP_ALLOWED_HOSTS, an environment
        # shared with nodes that serve REST (kvwire up, an env file), and moot here.
        raise ValueError("--http-allowed-hosts is for the REST API of --http-listen; give that too")
    return config, http_address, metrics_address


def server_config(options: dict) -> ServerConfig:
    """The node's configuration from ``serve``'s options; ValueError names what is wrong."""
    host, port = parse_host_port(options["listen"])
    node_id = options["node_id"]
    data_dir = options["data_dir"]
    cluster = options["cluster"]
    return ServerConfig(
        node_id=node_id,
        host=host,
        port=port,
        data_dir=data_dir if data_dir is not None else Path(".kvwire") / node_id,
        cluster_id=options["cluster_id"],
        sync=SyncMode(options["sync"]),
        limits=Limits(max_frame_bytes=options["max_frame_bytes"], max_key_bytes=options["max_key_bytes"],
                      max_value_bytes=options["max_value_bytes"]),
        max_connections=options["max_connections"],
        max_inflight_per_connection=options["max_inflight"],
        max_inflight_bytes_per_connection=options["max_inflight_bytes"],
        max_buffered_bytes=options["max_buffered_bytes"],
        cache_entries=options["cache_entries"],
        cache_bytes=options["cache_bytes"],
        members=parse_cluster(cluster) if cluster else (),
        heartbeat_interval=options["heartbeat_interval"],
        failure_timeout=options["failure_timeout"],
        write_timeout=options["write_timeout"],
        retry_attempts=options["retry_attempts"],
        retry_delay=options["retry_delay"],
        cluster_secret=read_secret_file(options["cluster_secret_file"]) if options["cluster_secret_file"] else None,
        insecure=options["insecure"],
        auth=AuthTable.load(options["auth_file"]) if options["auth_file"] else None,
        hello_timeout=options["hello_timeout"],
        frame_timeout=options["frame_timeout"],
        max_version_jump=options["max_version_jump"],
        repair_interval=options["repair_interval"],
        repair_rate=options["repair_rate"],
        hint_limit=options["hint_limit"],
        hint_max_age=options["hint_max_age"],
        tombstone_grace=options["tombstone_grace"],
        disk_stall_timeout=options["disk_stall_timeout"],
        scrub_rate=options["scrub_rate"],
        join=options["join"],
        tls=tls_files(options),
    )


# Hosts that bind a port on every address of their family.
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


def check_listeners_differ(addresses: dict[str, tuple[str, int] | None]) -> None:
    """ValueError when two of the listeners (option -> address, None if not given) would take
    the same port: the second bind would fail, reported as "address already in use". Hosts
    are compared as the addresses they bind (``localhost`` and ``127.0.0.1``, ``127.1`` and
    ``127.0.0.1``, two spellings of ``::1`` are one), not as they are spelled."""
    given = [(option, address, _bound_addresses(*address)) for option, address in addresses.items()
             if address is not None]
    for index, (option, (host, port), bound) in enumerate(given):
        for earlier, (earlier_host, earlier_port), earlier_bound in given[:index]:
            if port != earlier_port:
                continue
            if host == earlier_host:
                raise ValueError(f"{earlier} and {option} must differ: both are {format_endpoint(host, port)}")
            if bound & earlier_bound:
                shared = "are the same address" if bound == earlier_bound else \
                    f"share the address {format_endpoint(min(bound & earlier_bound)[1], port)}"
                raise ValueError(f"{earlier} and {option} must differ: {format_endpoint(earlier_host, port)} and "
                                 f"{format_endpoint(host, port)} {shared}")
            if _overlap(bound, earlier_bound):
                raise ValueError(f"{earlier} and {option} must differ: {format_endpoint(earlier_host, port)} and "
                                 f"{format_endpoint(host, port)} overlap, a wildcard address taking the port on every address")


def _bound_addresses(host: str, port: int) -> frozenset[tuple[int, str]]:
    """(family, address) of every socket binding ``host`` makes, as the listeners resolve it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return frozenset()  # the bind will say what is wrong with it
    return frozenset((family, sockaddr[0]) for family, _, _, _, sockaddr in infos)


def _overlap(bound: frozenset[tuple[int, str]], other: frozenset[tuple[int, str]]) -> bool:
    """A wildcard address of one family takes the port on every address of that family."""
    def wildcard_families(addresses):
        return {family for family, address in addresses if address in _WILDCARD_HOSTS}

    def families(addresses):
        return {family for family, _ in addresses}

    return bool(wildcard_families(bound) & families(other) or wildcard_families(other) & families(bound))


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def warn_if_peers_dial_elsewhere(config: ServerConfig) -> None:
    """This node's own --cluster entry is where its peers dial it: a WARNING when it
    listens on a specific address that is not that one (a copied --cluster without
    --listen, whose default is 127.0.0.1:7379). A wildcard listener, or a port mapped
    in between (containers), may be right, and is not judged."""
    own = next((member for member in config.members if member.node_id == config.node_id), None)
    # IP addresses only: a host name would be looked up here, and a resolver down at
    # boot would hold the start for its timeout over a warning.
    if own is None or not (_is_ip_address(config.host) and _is_ip_address(own.host)):
        return
    listening, dialled = _bound_addresses(config.host, config.port), _bound_addresses(own.host, own.port)
    if any(address in _WILDCARD_HOSTS for _, address in listening):
        return
    if own.port == config.port and (not listening or not dialled or listening & dialled):
        return
    logging.getLogger("kvwire.server").warning(
        "this node listens on %s, but its own --cluster entry says its peers reach it at %s: they dial that; "
        "give --listen that address (or a wildcard such as 0.0.0.0:%d)",
        format_endpoint(config.host, config.port), own.address, own.port, extra={"event": "listen_not_in_cluster"})


def warn_about_security(config: ServerConfig, secret_file: Path | None, auth_file: Path | None) -> None:
    log = logging.getLogger("kvwire.server")
    if config.cluster_secret is None and config.members and config.insecure:
        log.warning("--insecure: peers are not authenticated; anyone who can reach %s can rewrite any key",
                    format_endpoint(config.host, config.port))
    warn_if_readable_by_others(log, "cluster secret file", secret_file)
    warn_if_readable_by_others(log, "auth file", auth_file)
    if config.tls is not None:
        warn_if_readable_by_others(log, "--tls-key file", config.tls.key or config.tls.cert)
        from .up_certs import served_certificate_problem

        # kvwire up refuses such a set; a node started alone says so, and clients' and
        # peers' handshakes said only "certificate verify failed" (a security probe's finding).
        problem = served_certificate_problem(config.tls.cert, config.tls.key, config.tls.ca,
                                             presented=bool(config.peers))
        if problem is not None:
            log.warning("--tls-cert: %s; clients and peers that check it will refuse this node", problem,
                        extra={"event": "tls_certificate_unfit"})


@main.command()
@click.argument("path", type=FilePath())
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
def secret(path: Path, force: bool) -> None:
    """Write a new cluster secret to PATH (mode 600): give each node a copy, with --cluster-secret-file."""
    try:
        write_secret_file(path, replace=force)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; --force replaces it (every node then needs the new one)") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    click.echo(f"wrote a new cluster secret to {path}")


def run_node(
    config: ServerConfig, *, http_listen: tuple[str, int] | None = None, metrics_listen: tuple[str, int] | None = None,
    http_allowed_hosts: tuple[str, ...] = (),
) -> int:
    """Serve on uvloop until SIGTERM or SIGINT (with the HTTP bridge beside the node when
    ``http_listen`` is given, /metrics alone on ``metrics_listen``); the exit status,
    with startup failures reported in one line."""
    from ..server.app import serve as serve_node
    from ..server.datadir import DataDirInUseError
    from ..server.storage import DataDirError, DataDirUnavailableError

    log = logging.getLogger("kvwire.server")
    # A fatal signal (SIGSEGV, SIGBUS: a file SQLite maps, such as the -shm, made
    # unwritable under it) would end the process with no line at all: leave the
    # Python stacks on stderr, where the log goes.
    try:
        faulthandler.enable()
    except (RuntimeError, ValueError, OSError):
        pass  # no stderr to write to (started with 2>&-): nothing to leave the stacks on
    # Its clients, a link each way with each peer, and its bridge's own clients, the
    # refused ones lingering, and its links.
    connections = config.max_connections + 2 * len(config.peers)
    if http_listen is not None:
        from ..http_bridge.config import BridgeConfig
        from ..http_bridge.linger import MAX_LINGERING

        connections += BridgeConfig().max_connections + MAX_LINGERING + len(config.members) + 1
    ensure_open_files(connections, log)
    try:
        if http_listen is not None or metrics_listen is not None:
            from .bridge import serve_with_http

            return run_until_stop_signal(
                lambda stop: serve_with_http(config, http_listen, metrics_listen, stop=stop,
                                             http_allowed_hosts=http_allowed_hosts),
                log,
                # --metrics-listen alone serves /metrics, no bridge (a probe saw "stopping the HTTP bridge").
                "stopping the HTTP bridge, then finishing requests in flight" if http_listen is not None
                else "finishing requests in flight",
            )
        run_until_stop_signal(lambda stop: serve_node(config, stop=stop), log, "finishing requests in flight")
    # May clear by itself: the other process can exit, the disk be freed.
    except (DataDirInUseError, DataDirUnavailableError) as exc:
        log.error("%s", exc)
        return 1
    except (DataDirError, TlsConfigError) as exc:
        log.error("%s", exc)
        return CONFIG_REFUSED_STATUS
    except OSError as exc:
        log.error("cannot start node %s on %s: %s", config.node_id, format_endpoint(config.host, config.port),
                  exc.strerror or exc)
        return 1
    except KeyboardInterrupt:  # before the signal handlers were installed: a stop all the same (exit 0)
        pass
    return 0


if __name__ == "__main__":
    main()
