"""Which ``Host`` a plain-HTTP bridge answers for: its guard against DNS rebinding.

A web page on ``attacker.example`` can point its own name at 127.0.0.1 once
the browser has loaded it (DNS rebinding). The browser then sends the page's
requests to a bridge listening there, judges them same-origin, and lets the
page read the answers: the keys of a cluster without ``--auth-file``. Such a
request still says ``Host: attacker.example``. So a bridge answers only
requests whose Host is an IP address, ``localhost``, or a name it was given
(``--allowed-hosts``), as geth's ``--http.vhosts`` and Django's
``ALLOWED_HOSTS`` do; a page served from an IP address cannot rebind it.
Over HTTPS the certificate does this already (the browser refuses a
certificate that does not name ``attacker.example``), so the check is for
plain HTTP only. A request without Host, or with an empty one (HTTP/1.0, a
load balancer's check), is answered: browsers always send a name.
"""

from __future__ import annotations

import ipaddress
import logging
import re

log = logging.getLogger("kvwire.http")

ANY_HOST = "*"
# Names every bridge answers for besides IP addresses: no page can be served
# from them but by this machine (RFC 6761 6.3).
ALWAYS_ALLOWED = frozenset({"localhost"})
# A host name as --allowed-hosts takes it: letters, digits, '-', '_' and dots.
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")
_PORT = re.compile(r"[0-9]*")
# What a Host header may name (RFC 3986 reg-name, lower-cased); anything else is malformed.
_REG_NAME = re.compile(r"[a-z0-9\-._~!$&'()*+,;=%]+")
# Host header values judged before are remembered, up to this many, so that a
# connection's requests are judged once; beyond it the memory starts afresh.
MAX_REMEMBERED = 256
# Refused names are logged once each, the first this many (a flood of made-up
# names logs no more than this).
MAX_LOGGED_REFUSALS = 64


def normalize_allowed_host(name: str) -> str:
    """``name`` as --allowed-hosts keeps it (lower case, no final dot); ValueError if it is no host name."""
    if not isinstance(name, str):
        raise ValueError(f"allowed hosts must be strings, got {name!r}")
    if name == ANY_HOST:
        return name
    normalized = name.strip().lower().rstrip(".")
    if normalized.startswith("[") and normalized.endswith("]"):
        normalized = normalized[1:-1]  # an IPv6 address as a URL writes it
    if ":" in normalized and not _is_ip(normalized):
        raise ValueError(f"allowed host {name!r} has a port: give the name alone (every port is allowed)")
    if not (_NAME.fullmatch(normalized) or _is_ip(normalized)):
        raise ValueError(f"allowed host {name!r} is not a host name (letters, digits, '-', '_' and dots), an IP address or '*'")
    return normalized


def host_of(header: str) -> str | None:
    """The host of a ``Host`` header's value, in lower case without port or final dot; None when malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        address, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _PORT.fullmatch(port[1:]))):
            return None
        return address if _is_ip(address) else None
    name, colon, port = value.partition(":")
    if (colon and not _PORT.fullmatch(port)) or not _REG_NAME.fullmatch(name):
        return None
    return name.rstrip(".") or None


class HostCheck:
    """Answers whether a request's Host may be served (module docstring)."""

    def __init__(self, allowed_hosts: tuple[str, ...]) -> None:
        self._any = ANY_HOST in allowed_hosts
        self._names = ALWAYS_ALLOWED | frozenset(allowed_hosts)
        self._judged: dict[str, bool] = {}
        self._logged: set[str] = set()

    def allows(self, header: str | None) -> bool:
        if self._any or header is None or not header.strip():
            return True  # no Host, or an empty one (RFC 9112 3.2: a target without authority)
        verdict = self._judged.get(header)
        if verdict is None:
            if len(self._judged) >= MAX_REMEMBERED:
                self._judged.clear()
            host = host_of(header)
            verdict = self._judged[header] = host is not None and (host in self._names or _is_ip(host))
        return verdict

    def refusal(self, header: str) -> tuple[int, str]:
        """The status and message refusing a request with ``Host: header``: 400 for a malformed
        one (RFC 9112 3.2), 421 Misdirected Request for a name not allowed, logged the first time."""
        host = host_of(header)
        if host is None:
            return 400, f"malformed Host header {header!r}"
        if host not in self._logged and len(self._logged) < MAX_LOGGED_REFUSALS:
            self._logged.add(host)
            # Advice only for a name --allowed-hosts would take: not '*' (which turns the check
            # off), nor "a)b", which a Host header may hold and the option refuses.
            # The option is kvwire bridge's --allowed-hosts, or a node's --http-allowed-hosts.
            advice = (f"or the bridge needs --allowed-hosts {host} (kvwire serve: --http-allowed-hosts {host})"
                      if host != ANY_HOST and _NAME.fullmatch(host) else "and no allowed host name is it")
            log.warning("refusing requests for host %r (421): not an IP address, localhost or one of the allowed "
                        "hosts; a web page may be trying DNS rebinding, %s", host, advice)
        return 421, (f"this bridge does not answer for host {host!r}: only for IP addresses, localhost and its "
                f"allowed hosts (kvwire bridge --allowed-hosts, kvwire serve --http-allowed-hosts), "
                f"which keeps web pages from reaching it through DNS rebinding")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
