"""Endpoint strings, parsed the same way by nodes, clients and the CLI."""

from __future__ import annotations


def parse_host_port(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[v6]:PORT`` to a pair; errors quote the input."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 < port <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 1-65535")
    return host.strip("[]") or default_host, port
