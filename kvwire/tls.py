"""TLS for every link: the files a side is given, and the ``ssl`` contexts built from them.

Standard library only, so that the client, the server, the bridge and the
load generator can all share it (docs/design.md section 2). Modern defaults
everywhere: TLS 1.2 at least, no compression (CRIME), and a client always
checks the certificate chain and the host name it dialled.

A node given a CA asks every connection for a certificate signed by it, peers
and clients alike: mutual TLS, as etcd's ``--client-cert-auth``. Its own
certificate is also its client certificate on the links it opens to its peers.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# How long a connection a server closes waits for the other side's close_notify
# before its socket is closed anyway. asyncio's default, 30 s, kept a client that
# never answered it in one of a node's --max-connections slots for 30 s after
# --hello-timeout had closed it (a probe, 2026-12-07); one round trip is all a
# live client needs.
TLS_SHUTDOWN_TIMEOUT = 1.0

# A TLS transport's get_write_buffer_size() counts only what its TLS layer holds,
# and it pauses its protocol only past 512 KiB of that (uvloop), where a TCP
# transport pauses past 64 KiB. The TCP transport below takes all that a write
# encrypts until it pauses itself, and what it holds is counted nowhere: a
# review (2026-12-07) found megabytes of unread replies uncounted by
# --max-buffered-bytes, and a client reading none never dropped at
# --frame-timeout. With the limits of TCP, and written a chunk at a time, the
# layer below holds at most about two chunks; the rest waits in the TLS layer,
# counted, and pauses the protocol as over TCP.
TLS_WRITE_CHUNK_BYTES = 64 * 1024


def like_tcp(transport: Any) -> Callable[[bytes], None]:
    """Give ``transport`` TCP's write limits if it is a TLS one; the function to write
    with: its own ``write``, or over TLS one that writes a chunk at a time."""
    if transport.get_extra_info("ssl_object") is None:
        return transport.write
    transport.set_write_buffer_limits(high=TLS_WRITE_CHUNK_BYTES)

    def write(data: bytes) -> None:
        if len(data) <= TLS_WRITE_CHUNK_BYTES:
            transport.write(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), TLS_WRITE_CHUNK_BYTES):
            # A chunk's write may pause the protocol, which may close the transport (the
            # budget's eviction): uvloop then warns of every further write, unlimited.
            if transport.is_closing():
                return
            transport.write(view[start:start + TLS_WRITE_CHUNK_BYTES])

    return write


# OpenSSL's reason codes (``ssl.SSLError.reason``) that have a plainer name.
_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the other side requires a client certificate, and none was sent",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the other side sent no client certificate, and one is required",
    "TLSV1_ALERT_UNKNOWN_CA": "the other side does not trust our certificate (alert: unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the other side refused our certificate (alert: bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the other side refused our certificate (alert: certificate unknown)",
    "WRONG_VERSION_NUMBER": "the other side does not speak TLS",
    "HTTP_REQUEST": "the other side sent an HTTP request, not TLS",
    "RECORD_LAYER_FAILURE": "the other side does not speak TLS",
    "PACKET_LENGTH_TOO_LONG": "the other side does not speak TLS",
    "UNSUPPORTED_PROTOCOL": "the other side offers only TLS versions below 1.2",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the other side supports no TLS version we accept (1.2 or later)",
    "UNEXPECTED_EOF_WHILE_READING": "the connection closed during the TLS handshake",
}
# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code) for a
# certificate that does not name what was dialled, and for one outside its dates.
_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_X509_V_ERR_CERT_HAS_EXPIRED = 10
_X509_V_ERR_INVALID_PURPOSE = 26


class TlsConfigError(ValueError):
    """A certificate, key or CA file that is missing or will not load; the message names it,
    and ``files`` says which ("cert", "key", "ca"), for a caller to say where each came from."""

    def __init__(self, message: str, *, files: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.files = files


@dataclass(frozen=True)
class FileNames:
    """How messages name the three files: as the options that gave them (the CLI's,
    the node's), or as the Python client's keyword arguments."""

    cert: str
    key: str
    ca: str
    quoted: bool  # the path as a Python string (``ca='x.pem'``), not an option's value

    def of(self, which: str, path: str | os.PathLike) -> str:
        name = getattr(self, which)
        return f"{name}{os.fspath(path)!r}" if self.quoted else f"{name} {path}"

    def refused(self, which: str, path: str | os.PathLike, problem: str) -> TlsConfigError:
        """The error for the file ``which`` at ``path``: "--tls-ca ca.pem: ``problem``"."""
        return TlsConfigError(f"{self.of(which, path)}: {problem}", files=(which,))


OPTION_NAMES = FileNames("--tls-cert", "--tls-key", "--tls-ca", quoted=False)
ARGUMENT_NAMES = FileNames("cert=", "key=", "ca=", quoted=True)


@dataclass(frozen=True)
class TlsFiles:
    """A side's certificate and key (PEM), and the CA (PEM) it trusts; each may be None.

    Checked when built: the files must be readable, and a certificate comes
    with its key. What each side requires on top (a node needs its
    certificate) is checked by that side's configuration.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    names: FileNames = field(default=OPTION_NAMES, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = self.names
        for which in ("cert", "key", "ca"):
            value = getattr(self, which)
            if value is None:
                continue
            path = Path(value)
            object.__setattr__(self, which, path)
            if not path.exists():
                raise names.refused(which, path, "no such file")
            if path.is_dir():
                raise names.refused(which, path, "a directory, not a file")
            if not path.is_file():
                # A pipe (a shell's <(...)) could be read once, and a node reads these files
                # again (its peer links' context); a device such as /dev/zero never ends.
                raise names.refused(which, path, "not a regular file; give a file (a pipe or device is not read)")
            if not os.access(path, os.R_OK):
                raise names.refused(which, path, "not readable")
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise TlsConfigError(f"{getattr(names, given)} needs {getattr(names, missing)}: a certificate and its "
                                 "private key go together", files=(given,))


def server_context(cert: Path, key: Path, *, client_ca: Path | None = None,
                   names: FileNames = OPTION_NAMES) -> ssl.SSLContext:
    """The context a listening side serves with; given ``client_ca``, every client must
    present a certificate it signed. Raises TlsConfigError naming a file that will not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load_certificate(context, cert, key, names)
    if client_ca is not None:
        _load_ca(context, client_ca, names)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None, *,
                   names: FileNames = OPTION_NAMES) -> ssl.SSLContext:
    """The context a dialling side connects with: the server's certificate is checked
    against ``ca`` (None: the system's trusted CAs) and the host name dialled; ``cert``
    and ``key`` are presented when the server asks for a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname already
    _harden(context)
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, Path(ca), names)
    if (cert is None) != (key is None):
        raise TlsConfigError("a client certificate needs its key, and a key its certificate")
    if cert is not None and key is not None:
        _load_certificate(context, Path(cert), Path(key), names)
    return context


def optional_client_context(tls: bool | ssl.SSLContext | None = False, *, ca: str | os.PathLike | None = None,
                            cert: str | os.PathLike | None = None,
                            key: str | os.PathLike | None = None,
                            names: FileNames = OPTION_NAMES) -> ssl.SSLContext | None:
    """A client's context from its options: ``tls`` True (or any file given) builds one
    with :func:`client_context`, a ready ``ssl.SSLContext`` is used as it is, and
    False (or None) with no file means plain TCP (None). Errors name the files by ``names``."""
    if isinstance(tls, ssl.SSLContext):
        if ca is not None or cert is not None or key is not None:
            raise TlsConfigError("give either an ssl.SSLContext as tls or the ca, cert and key files, not both")
        return tls
    if tls is None:
        tls = False
    if type(tls) is not bool:
        raise TlsConfigError(f"tls must be True, False or an ssl.SSLContext, got {tls!r}")
    if not tls and ca is None and cert is None and key is None:
        return None
    files = TlsFiles(cert=cert, key=key, ca=ca, names=names)
    return client_context(ca=files.ca, cert=files.cert, key=files.key, names=names)


def describe_tls_error(error: BaseException) -> str:
    """One line saying why a handshake failed: the verifier's own words for a certificate
    it refused, a plain sentence for the usual alerts, else OpenSSL's reason."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        reason = getattr(error, "reason", None)
        if reason in _REASONS:
            return _REASONS[reason]
        return (reason or str(error)).lower().replace("_", " ")
    if isinstance(error, TimeoutError):
        return "no TLS handshake within the time allowed"
    return str(error) or type(error).__name__


def dialler_hint(error: BaseException) -> str:
    """What the dialling side should check after ``error``, as "; ..." to append, or ""."""
    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
            return "; the node's certificate must name the host dialled (kvwire certs --host HOST adds one)"
        if error.verify_code in (_X509_V_ERR_CERT_NOT_YET_VALID, _X509_V_ERR_CERT_HAS_EXPIRED):
            # The CA is right, or the chain would not have got as far as the dates.
            return "; check the certificate's dates and this machine's clock (kvwire certs makes new ones)"
        if error.verify_code == _X509_V_ERR_INVALID_PURPOSE:
            # The chain is good; the certificate was made for another use (a client's).
            return ("; the node's certificate is not one for a server (its extended key usage lacks "
                    "serverAuth): give the node a server certificate (kvwire certs makes node.pem)")
        return "; is the CA given (--tls-ca, ca=) the one that signed the node's certificate?"
    if getattr(error, "reason", None) in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return "; is the node serving TLS (kvwire serve --tls-cert)?"
    if getattr(error, "reason", None) == "UNEXPECTED_EOF_WHILE_READING":
        return f"; {HANDSHAKE_LIMIT_HINT}"
    return ""


# Why a node may close a connection as its TLS handshake begins: said with a reset, or an
# EOF, the dialler's error named no cause.
HANDSHAKE_LIMIT_HINT = ("a node with as many TLS handshakes in progress as its --max-connections closes new "
                        "connections at once, and its log says so")


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION  # already OpenSSL 3's default; stated, not assumed


def _load_ca(context: ssl.SSLContext, ca: Path, names: FileNames) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise names.refused("ca", ca, f"not a PEM CA certificate ({_reason(exc)})") from None


def _load_certificate(context: ssl.SSLContext, cert: Path, key: Path, names: FileNames) -> None:
    # load_cert_chain says "PEM lib" for a bad certificate and for a bad key
    # alike; loading the certificate alone first tells which file is at fault.
    _check_certificate(cert, names)
    try:
        context.load_cert_chain(cert, key, password=_refuse_password)
    except _EncryptedKey:
        raise names.refused(
            "key", key, "the key is encrypted; kvwire needs it unencrypted (openssl pkey -in KEY -out PLAIN)"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(f"{names.of('key', key)} is not the key of {names.of('cert', cert)}",
                                 files=("key", "cert")) from None
        raise names.refused("key", key, f"not a PEM private key ({_reason(exc)})") from None


def _check_certificate(cert: Path, names: FileNames) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError) as exc:
        raise names.refused("cert", cert, f"not a PEM certificate ({_reason(exc)})") from None


class _EncryptedKey(Exception):
    pass


def _refuse_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal, hanging a node
    # started by systemd; a key that needs a password is refused instead.
    raise _EncryptedKey


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def certificate_names(certificate: dict, host: str) -> bool:
    """Whether ``certificate`` (``SSLSocket.getpeercert()``'s dict) names ``host``
    in its subjectAltName, as a client checks the server it dialled: an IP address
    by its value, a DNS name exactly or by a wildcard standing for its first label."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for kind, value in certificate.get("subjectAltName", ()):
        if address is not None and kind == "IP Address":
            try:
                if ipaddress.ip_address(value.strip()) == address:
                    return True
            except ValueError:
                continue
        elif address is None and kind == "DNS" and _dns_name_matches(value, host):
            return True
    return False


def _dns_name_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:] and rest.count(".") >= 1
    return pattern == host
