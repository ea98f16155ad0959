"""A development CA with node and client certificates: ``kvwire certs DIR``, and TLS in tests.

    certs = DevCerts.create(tmp_path / "tls", hosts=["127.0.0.2"])
    node_files = certs.node          # TlsFiles(cert=node.pem, key=node.key, ca=ca.pem)
    Client(endpoints, **certs.client_options())

The node certificate is shared by every node and is good for both ends of a
link (serverAuth and clientAuth), since a node presents it to the peers it
dials; it names 127.0.0.1, ::1 and localhost plus the hosts given. Keys are
ECDSA P-256: a handshake costs a fraction of an RSA-2048 one, which is what
every new connection pays. Not for production: the CA key sits next to
the certificates it signs.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import re
import os
import shutil
import tempfile
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..tls import TlsFiles, client_context

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
DEFAULT_DAYS = 365
FILE_NAMES = ("ca.pem", "ca.key", "node.pem", "node.key", "client.pem", "client.key", "haproxy.pem")


@dataclass(frozen=True)
class DevCerts:
    """The files of a development certificate set in ``directory``."""

    directory: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def node(self) -> TlsFiles:
        """What a node serves and dials with (``--tls-cert/--tls-key/--tls-ca``), checked to exist."""
        return TlsFiles(*self._leaf("node"), ca=self.ca)

    @property
    def client(self) -> TlsFiles:
        """What a client presents and trusts, checked to exist."""
        return TlsFiles(*self._leaf("client"), ca=self.ca)

    @property
    def haproxy(self) -> Path:
        """The node certificate and its key in one file, as HAProxy's ``crt`` wants them."""
        return self.directory / "haproxy.pem"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Client``/``AsyncClient`` for a cluster of these nodes."""
        cert, key = self._leaf("client")
        return {"tls": True, "ca": self.ca, "cert": cert, "key": key}

    def client_context(self) -> ssl.SSLContext:
        """A client's ``ssl`` context for these nodes, for blocking sockets (``RawConnection``)."""
        cert, key = self._leaf("client")
        return client_context(ca=self.ca, cert=cert, key=key)

    def node_context(self) -> ssl.SSLContext:
        """The context a node dials its peers with, presenting node.pem, which names every
        node's host: a raw connection that plays a peer is refused with the client's
        certificate, which names none (a peer dialling in must present its host)."""
        cert, key = self._leaf("node")
        return client_context(ca=self.ca, cert=cert, key=key)

    # The options below name the files whether or not they exist yet (kvwire up
    # builds its command lines first, and writes the files once its checks pass).

    def node_args(self) -> list[str]:
        """``kvwire serve`` options for a node with these certificates."""
        cert, key = self._leaf("node")
        return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca)]

    def client_args(self) -> list[str]:
        """``kvwire-cli`` (and ``kvwire bench``) options for a client of those nodes."""
        cert, key = self._leaf("client")
        return ["--tls-ca", str(self.ca), "--tls-cert", str(cert), "--tls-key", str(key)]

    def client_env(self) -> dict[str, str]:
        """The client's files as the ``KVWIRE_TLS_*`` variables that kvwire-cli reads."""
        cert, key = self._leaf("client")
        return {"KVWIRE_TLS_CA": str(self.ca), "KVWIRE_TLS_CERT": str(cert), "KVWIRE_TLS_KEY": str(key)}

    def _leaf(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.pem", self.directory / f"{name}.key"

    def existing(self) -> list[Path]:
        return [self.directory / name for name in FILE_NAMES if (self.directory / name).exists()]

    @classmethod
    def create(cls, directory: str | os.PathLike, *, hosts: Iterable[str] = (), days: int = DEFAULT_DAYS) -> DevCerts:
        """Write a new CA and the node and client certificates it signs, replacing any there."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        if type(days) is not int or days < 1:
            raise ValueError(f"days must be a positive integer, got {days!r}")
        names = list(dict.fromkeys(canonical_host(host) for host in [*DEFAULT_HOSTS, *hosts]))
        # Every name is judged before anything is written, so a bad one leaves no half a set.
        alt_names = [_general_name(host) for host in names]
        certs = cls(directory)
        # Owner-only when made here, as a data directory is: it holds the CA's key. It was
        # made with the umask (0777 under umask 000). One that exists keeps its mode.
        certs.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for file_name in FILE_NAMES:  # renamed over, a directory would fail half way through the set
            if (certs.directory / file_name).is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(certs.directory / file_name))
        # The set is written into a directory of its own beside the files it replaces, then
        # renamed over them: a failure while writing (a full disk) leaves the old set or none.
        staging = Path(tempfile.mkdtemp(prefix=".kvwire-certs-", dir=certs.directory))
        now = datetime.datetime.now(datetime.timezone.utc)
        # Valid from an hour ago, so a clock slightly behind ours accepts them.
        not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

        def name(common_name: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvwire development"),
                              x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

        def sign(subject: x509.Name, public_key: Any, issuer: x509.Name, issuer_key: Any,
                 extensions: list[tuple[Any, bool]]) -> x509.Certificate:
            builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                       .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
                       .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
            if issuer_key.public_key() != public_key:
                builder = builder.add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            for extension, critical in extensions:
                builder = builder.add_extension(extension, critical=critical)
            return builder.sign(issuer_key, hashes.SHA256())

        def usage(**allowed: bool) -> x509.KeyUsage:
            flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                                   "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
            return x509.KeyUsage(**(flags | allowed))

        written: dict[str, bytes] = {}

        def write(file_name: str, data: bytes, private: bool = False) -> None:
            descriptor = os.open(staging / file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            written[file_name] = data

        def write_key(file_name: str, key: Any) -> None:
            write(file_name, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), private=True)

        try:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_name = name("kvwire development CA")
            ca_cert = sign(ca_name, ca_key.public_key(), ca_name, ca_key, [
                (x509.BasicConstraints(ca=True, path_length=0), True),
                (usage(key_cert_sign=True, crl_sign=True), True),
            ])
            write("ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
            write_key("ca.key", ca_key)
            leaves = {
                "node": ([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], alt_names),
                "client": ([ExtendedKeyUsageOID.CLIENT_AUTH], []),
            }
            for leaf, (purposes, leaf_names) in leaves.items():
                key = ec.generate_private_key(ec.SECP256R1())
                extensions = [
                    (x509.BasicConstraints(ca=False, path_length=None), True),
                    (usage(digital_signature=True), True),
                    (x509.ExtendedKeyUsage(purposes), False),
                ]
                if leaf_names:
                    extensions.append((x509.SubjectAlternativeName(leaf_names), False))
                cert = sign(name(f"kvwire {leaf}"), key.public_key(), ca_name, ca_key, extensions)
                write(f"{leaf}.pem", cert.public_bytes(serialization.Encoding.PEM))
                write_key(f"{leaf}.key", key)
            write("haproxy.pem", written["node.pem"] + written["node.key"], private=True)
            for file_name in FILE_NAMES:
                os.replace(staging / file_name, certs.directory / file_name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return certs


def reissue(certs: DevCerts, file_name: str, *, not_before: datetime.datetime | None = None,
            not_after: datetime.datetime | None = None, purposes: Iterable[Any] | None = None) -> None:
    """Sign ``file_name`` (``node.pem``, ``client.pem``) of ``certs`` again with its CA and the same key and
    names, valid from ``not_before`` to ``not_after`` and for the extended key usages ``purposes`` (each
    default: as it was): an expired certificate, or one for the wrong purpose, for a test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    path = certs.directory / file_name
    old = x509.load_pem_x509_certificate(path.read_bytes())
    ca_key = serialization.load_pem_private_key((certs.directory / "ca.key").read_bytes(), password=None)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.issuer).public_key(old.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or old.not_valid_before_utc).not_valid_after(not_after or old.not_valid_after_utc))
    for extension in old.extensions:
        value = extension.value
        if purposes is not None and isinstance(value, x509.ExtendedKeyUsage):
            value = x509.ExtendedKeyUsage(list(purposes))
        builder = builder.add_extension(value, critical=extension.critical)
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def canonical_host(host: str) -> str:
    """An IP address written one way (``[::1]`` is ``::1``), a name as given: the list of
    names a certificate is good for names each once."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host


def unmatchable_host(host: str) -> str | None:
    """Why a certificate naming ``host`` would be written and matched by no check, or
    None. ``kvwire certs`` refuses such a host; DevCerts.create writes it (tests make
    such sets on purpose, to see them refused where they are used). A probe
    (2026-12-07) had ``--host '*.test'`` and ``fe80::1%eth0`` written as good for them."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None and getattr(address, "scope_id", None):
        return (f"host {host!r} has a zone (%{address.scope_id}), which no certificate holds; "
                "give the address alone")
    if host.startswith("*.") and host.count(".") < 2:
        # OpenSSL matches a wildcard only with two labels or more after it.
        return (f"host {host!r} is a wildcard that no check matches: it needs two labels or more after "
                "'*.' ('*.example.test', not '*.test')")
    return None


def _general_name(host: str) -> Any:
    """``host`` as a subjectAltName entry; ValueError if it is neither an IP address nor a DNS name."""
    from cryptography import x509

    if not isinstance(host, str) or not host or any(c.isspace() for c in host):
        raise ValueError(f"host {host!r} is not an IP address or DNS name")
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if ":" in host:
        raise ValueError(f"host {host!r} has a port, or is not an IP address; give the address or name alone")
    if not host.isascii():
        raise ValueError(f"host {host!r} is not a DNS name in ASCII; give its A-label (xn--...)")
    labels = host.removeprefix("*.").split(".")
    if labels[-1].isdigit():
        raise ValueError(f"host {host!r} is not an IP address, and a DNS name does not end in digits")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"host {host!r} is not a DNS name: dot-separated labels of 1 to 63 letters, digits "
                         "or hyphens, none at either end of a label")
    try:
        return x509.DNSName(host)
    except ValueError as exc:  # cryptography's: a name not in ASCII (an A-label) ...
        raise ValueError(f"host {host!r} is not a DNS name in ASCII ({exc})") from None
