"""Endpoint strings, parsed and written the same way by nodes, clients, the bridge and the CLI."""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

# ASCII digits only: str.isdigit() and int() also take other scripts' digits ("٢٣") and "²".
_PORT = re.compile(r"[0-9]+")


def parse_host_port(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT`` to a pair; errors quote the input.

    Anything almost right (an IPv6 address without brackets, a stray bracket)
    is refused rather than guessed at.
    """
    host, sep, port_text = text.strip().rpartition(":")
    if "://" in text:
        raise ValueError(f"{text!r}: give HOST:PORT without a scheme")
    if not sep or not _PORT.fullmatch(port_text):
        raise ValueError(f"{text!r} is not HOST:PORT (the port in ASCII digits)")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3 or "[" in host[1:-1] or "]" in host[1:-1]:
            raise ValueError(f"{text!r}: unbalanced brackets around the host")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: brackets hold an IPv6 address, and {host!r} is not one") from None
    elif host.count(":") == 1 and _PORT.fullmatch(host.partition(":")[2]):
        raise ValueError(f"{text!r}: give one port")  # 127.0.0.1:7379:5
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{text!r}: write an IPv6 host in brackets, as [::1]:7379")
    else:
        try:
            # What the resolver does to a name first; its UnicodeError is no OSError,
            # so a name it cannot encode escaped every "cannot connect" path.
            host.encode("idna")
        except UnicodeError:
            raise ValueError(f"{text!r}: {host!r} is not a host name (an empty label, as in 'a..b', "
                             "or a label over 63 characters)") from None
    digits = port_text.lstrip("0")
    port = int(digits or "0") if len(digits) <= 5 else 0  # int() of thousands of digits is slow
    if not 0 < port <= 65535:
        raise ValueError(f"{text!r}: port {port_text} is outside 1-65535")
    return host or default_host, port


def parse_endpoints(endpoints: str | Iterable[str]) -> list[tuple[str, int]]:
    """``"h:p,h:p"`` or ``["h:p", ...]`` as ``[(host, port), ...]``; ValueError names a bad one."""
    if isinstance(endpoints, str):
        items = endpoints.split(",")
    elif isinstance(endpoints, (bytes, bytearray)):
        raise TypeError("endpoints must be a str or a list of str, not bytes")
    elif isinstance(endpoints, (list, tuple)):
        items = list(endpoints)
    elif isinstance(endpoints, (set, frozenset, dict)) or not hasattr(endpoints, "__iter__"):
        # A dict or a set would give its keys in an order of its own; an int, nothing at all.
        raise TypeError(f"endpoints must be a 'host:port,...' str or a list of 'host:port' str, "
                        f"not {type(endpoints).__name__}")
    else:  # a generator, or another iterable with an order of its own making: tried in that order
        items = list(endpoints)
    parsed = []
    nodes = set()  # each endpoint's _same_node form
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"each endpoint must be a 'host:port' string, got {item!r}")
        if "," in item and not isinstance(endpoints, str):
            raise ValueError(f"endpoint {item!r} holds a comma: give each 'host:port' as its own list item")
        endpoint = parse_endpoint(item)
        node = _same_node(endpoint)
        if node in nodes:
            # Each is its own connection and failover attempt: a call would try the same node twice.
            raise ValueError(f"endpoint {item.strip()!r} is given twice")
        nodes.add(node)
        parsed.append(endpoint)
    if not parsed:
        raise ValueError("endpoints must name at least one 'host:port'")
    return parsed


def _same_node(endpoint: tuple[str, int]) -> tuple[str, int]:
    """What two spellings of one address share: an IP address in its one written form
    ([::1] and [0::1], [FE80::1] and [fe80::1] were two endpoints), a host name in lower case."""
    host, port = endpoint
    try:
        return ipaddress.ip_address(host).compressed, port
    except ValueError:
        return host.lower(), port


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[ipv6]:port"`` as ``(host, port)``, parsed as the node parses ``--listen``."""
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise ValueError(f"invalid endpoint: {exc} (expected HOST:PORT, IPv6 as [ADDR]:PORT)") from None


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets: what :func:`parse_endpoint` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
