"""The development certificates of ``kvwire up --tls``, in DATA_DIR/tls: made on first use, checked when reused.

A reused set may no longer fit the run: ``--host`` changed since it was made, it
expired, a file was replaced by one from another CA. The nodes would then only
fail their handshakes, so ``up`` checks, before any node starts, what the run
will rely on: the files it needs are there (``ca.key`` only signs, and
``haproxy.pem`` serves only ``--haproxy``), every certificate is within its
dates, the leaves are signed by ``ca.pem``, and the node's names the host served.
Each refusal is one line naming the file, and the command that makes a set that fits.
"""

from __future__ import annotations

import datetime
import ipaddress
import shlex
from pathlib import Path
from typing import Any

import click

from ..testing import DevCerts
from ..testing.certs import DEFAULT_HOSTS, canonical_host

# What every --tls run reads: the nodes their certificate and the CA, up's own probes the client's.
NEEDED = ("ca.pem", "node.pem", "node.key", "client.pem", "client.key")
# The node certificate and key in one file, for HAProxy.
NEEDED_BY_HAPROXY = ("haproxy.pem",)


def prepare_dev_certs(certs: DevCerts, host: str, *, with_haproxy: bool) -> bool:
    """Write a new set to ``certs.directory`` if it holds none (True), else check the one
    there (False); click.ClickException (exit 1) saying what is wrong and how to fix it."""
    directory = certs.directory
    if directory.exists() and not directory.is_dir():
        raise click.ClickException(f"{directory} is a file; --tls keeps its certificates in that directory")
    if not certs.existing():
        try:
            DevCerts.create(directory, hosts=[host])
        except OSError as exc:
            raise click.ClickException(f"cannot write development certificates to {exc.filename or directory}: "
                                       f"{exc.strerror or exc}") from None
        return True
    fix = f"`{shlex.join(['kvwire', 'certs', str(directory), *_host_option(host), '--force'])}` makes a new set"
    needed = NEEDED + (NEEDED_BY_HAPROXY if with_haproxy else ())
    missing = [name for name in needed if not (directory / name).exists()]
    if missing:
        raise click.ClickException(f"{directory} holds part of a certificate set, without {', '.join(missing)}, "
                                   f"which {'--haproxy' if set(missing) <= set(NEEDED_BY_HAPROXY) else '--tls'} needs; {fix}")
    problem = _first_problem(directory, host, needed)
    if problem is not None:
        raise click.ClickException(f"{problem}; {fix}")
    return False


def _host_option(host: str) -> list[str]:
    """``--host HOST`` unless every set names it already."""
    return [] if canonical_host(host) in DEFAULT_HOSTS else ["--host", host]


def _first_problem(directory: Path, host: str, needed: tuple[str, ...]) -> str | None:
    """What is wrong with the certificates of ``needed``, naming the file; None if nothing is."""
    from cryptography.exceptions import InvalidSignature

    now = datetime.datetime.now(datetime.timezone.utc)
    loaded = {}
    for name in needed:
        if name.endswith(".key"):
            continue  # a key that is not its certificate's is refused, naming it, by whoever loads it
        path = directory / name
        try:
            loaded[name] = certificate = _load_certificate(path)
        except (OSError, ValueError) as exc:
            return f"{path} is not a readable PEM certificate ({getattr(exc, 'strerror', None) or exc})"
        if now < certificate.not_valid_before_utc:
            return f"{path} is not valid until {_when(certificate.not_valid_before_utc)} (is this machine's clock right?)"
        if now > certificate.not_valid_after_utc:
            return f"{path} expired on {_when(certificate.not_valid_after_utc)}"
    ca = loaded.pop("ca.pem")
    for name, certificate in loaded.items():
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return f"{directory / name} is not signed by the CA in {directory / 'ca.pem'}"
        # HAProxy serves with the node's certificate: clients dial the host it binds as they do a node.
        if name != "client.pem":
            names = _alt_names(certificate)
            if not _names_host(names, host):
                return (f"{directory / name} does not name {host}, the host the nodes serve and are dialled at "
                        f"(it names {', '.join(names) or 'nothing'})")
    return None


def _load_certificate(path: Path) -> Any:
    from cryptography import x509

    # haproxy.pem holds the key after the certificate; the certificate is the first block.
    return x509.load_pem_x509_certificate(path.read_bytes())


def _alt_names(certificate: Any) -> list[str]:
    from cryptography import x509

    try:
        alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []  # the subject's common name is never checked (Python's ssl sets NEVER_CHECK_SUBJECT)
    return [str(name) for name in alt_names.get_values_for_type(x509.IPAddress)] + alt_names.get_values_for_type(x509.DNSName)


def _names_host(names: list[str], host: str) -> bool:
    """Whether a certificate naming ``names`` passes the host name check of a client dialling ``host``."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        return any(_same_address(name, address) for name in names)
    host = host.lower().rstrip(".")
    for name in (name.lower() for name in names):
        if name == host:
            return True
        # RFC 6125 6.4.3, as OpenSSL checks: "*." stands for exactly one whole leftmost label.
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _same_address(name: str, address: Any) -> bool:
    try:
        return ipaddress.ip_address(name) == address
    except ValueError:
        return False


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
