"""Endpoint strings, parsed the same way by nodes, clients and the CLI."""

from __future__ import annotations


def parse_host_port(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT`` to a pair; errors quote the input.

    Anything almost right (an IPv6 address without brackets, a stray bracket)
    is refused rather than guessed at.
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{text!r}: unbalanced brackets around the host")
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{text!r}: write an IPv6 host in brackets, as [::1]:7379")
    port = int(port_text)
    if not 0 < port <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 1-65535")
    return host or default_host, port
