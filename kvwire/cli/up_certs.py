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
import shlex
import ssl
from pathlib import Path
from typing import Any

import click

from ..testing import DevCerts
from ..testing.certs import DEFAULT_HOSTS, canonical_host
from ..tls import FileNames, TlsConfigError, client_context, describe_tls_error, server_context

# What every --tls run reads: the nodes their certificate and the CA, up's own probes the client's.
NEEDED = ("ca.pem", "node.pem", "node.key", "client.pem", "client.key")
# The node certificate and key in one file, for HAProxy.
NEEDED_BY_HAPROXY = ("haproxy.pem",)
# How the check's messages name the files: by their paths alone, as up was given no option for them.
_FILES = FileNames("certificate", "key", "CA", quoted=False)
# OpenSSL's verify codes for a certificate that does not name the host dialled,
# and for one it cannot chain to the CA given.
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
# (unable to get the issuer, a bad signature, self-signed, self-signed in the chain,
# no local issuer, cannot verify the leaf, an issuer that is no CA)
_UNKNOWN_ISSUER = (2, 7, 18, 19, 20, 21, 24)


def prepare_dev_certs(certs: DevCerts, host: str, *, with_haproxy: bool, peers: bool) -> bool:
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
        except ValueError as exc:  # a --host no certificate can name, as kvwire certs --host says
            raise click.ClickException(f"cannot make development certificates for --host {host}: {exc}") from None
        return True
    fix = f"`{shlex.join(['kvwire', 'certs', str(directory), *_host_option(host), '--force'])}` makes a new set"
    needed = NEEDED + (NEEDED_BY_HAPROXY if with_haproxy else ())
    missing = [name for name in needed if not (directory / name).exists()]
    if missing:
        raise click.ClickException(f"{directory} holds part of a certificate set, without {', '.join(missing)}, "
                                   f"which {'--haproxy' if set(missing) <= set(NEEDED_BY_HAPROXY) else '--tls'} needs; {fix}")
    problem = _first_problem(directory, host, needed, peers=peers)
    if problem is not None:
        raise click.ClickException(f"{problem}; {fix}")
    return False


def _host_option(host: str) -> list[str]:
    """``--host HOST`` unless every set names it already."""
    return [] if canonical_host(host) in DEFAULT_HOSTS else ["--host", host]


def _first_problem(directory: Path, host: str, needed: tuple[str, ...], *, peers: bool = True) -> str | None:
    """What is wrong with the certificates of ``needed``, naming the file; None if nothing is.

    The dates are read here, to name them; the rest is asked of OpenSSL itself, in
    handshakes made in memory with the contexts the nodes and ``up``'s probes build:
    chains through intermediates, CA bundles, host names, wildcards and purposes are
    then judged exactly as the real handshakes will judge them."""
    now = datetime.datetime.now(datetime.timezone.utc)
    for name in needed:
        if name.endswith(".key"):
            continue  # a key that is not its certificate's is refused, naming it, when its context is built
        if name == "ca.pem":
            continue  # may be a bundle, of which the dates that matter are the signing CA's: the handshakes judge them
        path = directory / name
        try:
            certificate = _load_certificate(path)
        except (OSError, ValueError) as exc:
            return f"{path} is not a readable PEM certificate ({getattr(exc, 'strerror', None) or exc})"
        if now < certificate.not_valid_before_utc:
            return f"{path} is not valid until {_when(certificate.not_valid_before_utc)} (is this machine's clock right?)"
        if now > certificate.not_valid_after_utc:
            return f"{path} expired on {_when(certificate.not_valid_after_utc)}"
    ca = directory / "ca.pem"
    node_cert, node_key = directory / "node.pem", directory / "node.key"
    try:
        node = server_context(node_cert, node_key, client_ca=ca, names=_FILES)
        # (served, dialling, the file served, the file presented): a node serves node.pem and
        # asks for a client certificate; up's probes present client.pem, peers node.pem,
        # HAProxy's checks haproxy.pem, which it also serves to the clients that dial it.
        pairs = [(node, client_context(ca=ca, cert=directory / "client.pem", key=directory / "client.key",
                                       names=_FILES), "node.pem", "client.pem")]
        if peers:
            pairs.append((node, client_context(ca=ca, cert=node_cert, key=node_key, names=_FILES),
                          "node.pem", "node.pem"))
        if "haproxy.pem" in needed:
            proxy = directory / "haproxy.pem"
            pairs.append((server_context(proxy, proxy, names=_FILES), client_context(ca=ca, names=_FILES),
                          "haproxy.pem", None))
            pairs.append((node, client_context(ca=ca, cert=proxy, key=proxy, names=_FILES), "node.pem", "haproxy.pem"))
    except TlsConfigError as exc:
        return str(exc)
    for served, dialling, served_name, presented_name in pairs:
        refused = _handshake(served, dialling, host.strip("[]"))
        if refused is None:
            continue
        side, error = refused
        path = directory / (served_name if side == "client" or presented_name is None else presented_name)
        if getattr(error, "verify_code", None) in _NAME_MISMATCH:
            names = _alt_names(_load_certificate(path))
            return (f"{path} does not name {host}, the host the nodes serve and are dialled at "
                    f"(it names {', '.join(names) or 'nothing'})")
        if getattr(error, "verify_code", None) in _UNKNOWN_ISSUER:
            return f"{path} is not signed by the CA in {ca} ({describe_tls_error(error)})"
        return f"{path} is refused in a TLS handshake as the nodes make it ({describe_tls_error(error)})"
    return None


def served_certificate_problem(cert: Path, key: Path, ca: Path | None, *, presented: bool = False) -> str | None:
    """What makes ``cert`` unfit for a node to serve, as every client and peer will find
    at its handshake: its dates, or (with ``ca``, the CA it is checked against) its
    purpose or its chain. None if nothing, or if the file cannot be read here (the
    node's own context loading then names it). The names in it are not judged: a node
    listening on a wildcard address is dialled at names this cannot know."""
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        certificate = _load_certificate(cert)
    except (OSError, ValueError):
        return None
    if now < certificate.not_valid_before_utc:
        return f"{cert} is not valid until {_when(certificate.not_valid_before_utc)} (is this machine's clock right?)"
    if now > certificate.not_valid_after_utc:
        return f"{cert} expired on {_when(certificate.not_valid_after_utc)}"
    if ca is None:
        return None
    try:
        served = server_context(cert, key, names=_FILES)
        dialling = client_context(ca=ca, names=_FILES)
    except TlsConfigError:
        return None
    dialling.check_hostname = False
    refused = _handshake(served, dialling, "localhost")
    if refused is not None:
        return f"{cert} is refused in a TLS handshake checked against {ca} ({describe_tls_error(refused[1])})"
    if not presented:
        return None
    # A node with peers presents its certificate to them as a client's: one for servers
    # only was refused by every peer it dialled, with no word of it at start (a probe,
    # 2026-12-07), while the peers, dialling it, saw it UP.
    try:
        asking = server_context(cert, key, client_ca=ca, names=_FILES)
        presenting = client_context(ca=ca, cert=cert, key=key, names=_FILES)
    except TlsConfigError:
        return None
    presenting.check_hostname = False
    refused = _handshake(asking, presenting, "localhost")
    if refused is None:
        return None
    return (f"{cert} is refused as the client certificate this node presents to its peers, checked against {ca} "
            f"({describe_tls_error(refused[1])}); it needs the clientAuth purpose too")


def _handshake(served: ssl.SSLContext, dialling: ssl.SSLContext, host: str) -> tuple[str, ssl.SSLError] | None:
    """A TLS handshake between the two contexts, in memory: None when both sides accept,
    else which side refused ("client": the dialler refused the served certificate;
    "server": the server refused the client's) and its error."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = dialling.wrap_bio(to_client, from_client, server_hostname=host)
    server = served.wrap_bio(to_server, from_server, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):  # TLS 1.3 needs three flights; a few more cost nothing
        for side, end in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    return side, exc
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if all(done.values()):
            # In TLS 1.3 the client is done before the server has judged its certificate:
            # its refusal reaches the client as an alert, read here.
            try:
                client.read(1)
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLError as exc:
                return "server", exc
            return None
    return "client", ssl.SSLError("the handshake did not finish")


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


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
