"""TLS on every link (kvwire/tls.py, ``kvwire certs``): real node processes, real handshakes on 127.0.0.1.

Certificates come from ``kvwire.testing.DevCerts`` (what ``kvwire certs``
writes); "other" certificates are a second, unrelated CA and its leaves, the
wrong CA of every refusal test.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from rest_helpers import PREFIX, http, read_response

from kvwire import Client, KeyNotFoundError, KvwireConnectionError, RetryPolicy
from kvwire.secret_file import write_secret_file
from kvwire.protocol import CLOSED, NEED_DATA, Connection, ErrorCode, ErrorReply, Get, Ping, Put, Side, encode
from kvwire.testing import DevCerts, LocalCluster, NodeProcess, RawConnection, free_port, wait_for
from kvwire.testing.bridge import BridgeProcess
from kvwire.testing.wire import connect_socket
from kvwire.tls import (HANDSHAKE_LIMIT_HINT, TlsConfigError, TlsFiles, client_context, like_tcp,
                        optional_client_context, server_context)


def run_kvwire(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**clean, **(env or {})},
                          stdin=subprocess.DEVNULL)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_kvwire(sys.executable, "-m", "kvwire.cli.client", *args, env=env)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def wait_for_log(process, text: str, timeout: float = 5.0) -> str:
    """The first line of ``process``'s log holding ``text``, once there is one."""
    def found() -> str | None:
        return next((line for line in process.log().splitlines() if text in line), None)

    try:
        return wait_for(found, timeout=timeout, what=f"{text!r} in the log of {process.name}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; log:\n{process.log()[-3000:]}") from None


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> DevCerts:
    return DevCerts.create(tmp_path_factory.mktemp("tls") / "certs")


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> DevCerts:
    return DevCerts.create(tmp_path_factory.mktemp("tls") / "other")


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory, certs):
    with NodeProcess("n1", data_dir=tmp_path_factory.mktemp("tls-node") / "n1", tls=certs,
                     extra_args=["--sync", "off"]) as node:
        yield node


# --- the files and the contexts -------------------------------------------------------------


def test_files_are_checked_when_given(tmp_path, certs):
    with pytest.raises(TlsConfigError, match=r"--tls-ca .*missing\.pem: no such file"):
        TlsFiles(ca=tmp_path / "missing.pem")
    with pytest.raises(TlsConfigError, match="--tls-cert needs --tls-key"):
        TlsFiles(cert=certs.node.cert)
    with pytest.raises(TlsConfigError, match="--tls-key needs --tls-cert"):
        TlsFiles(key=certs.node.key)
    assert TlsFiles(ca=str(certs.ca)).ca == certs.ca  # paths as str are taken too
    # Not "no such file" for what exists but is not a file.
    with pytest.raises(TlsConfigError, match=rf"--tls-ca {tmp_path}: a directory, not a file"):
        TlsFiles(ca=tmp_path)
    with pytest.raises(TlsConfigError, match="--tls-cert /dev/null: not a regular file; give a file"):
        TlsFiles(cert="/dev/null", key=certs.node.key)
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)
    with pytest.raises(TlsConfigError, match=rf"--tls-ca {fifo}: not a regular file"):
        TlsFiles(ca=fifo)


def test_a_file_that_will_not_load_is_named(tmp_path, certs, other):
    with pytest.raises(TlsConfigError, match=rf"--tls-ca {certs.node.key}: not a PEM CA certificate"):
        client_context(ca=certs.node.key)
    with pytest.raises(TlsConfigError, match=rf"--tls-cert {certs.node.key}: not a PEM certificate"):
        server_context(certs.node.key, certs.node.key)
    with pytest.raises(TlsConfigError, match=rf"--tls-key {other.node.key} is not the key of --tls-cert {certs.node.cert}"):
        server_context(certs.node.cert, other.node.key)
    key = serialization.load_pem_private_key(certs.node.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    # Refused, never prompted for: a node under systemd has no terminal to prompt on.
    with pytest.raises(TlsConfigError, match="the key is encrypted"):
        server_context(certs.node.cert, encrypted)


def test_the_python_client_names_a_bad_file_by_its_keyword_argument(tmp_path, certs, other):
    # The CLI's flags mean nothing to a program that passed ca=...
    with pytest.raises(TlsConfigError, match=re.escape(f"ca={str(tmp_path / 'none.pem')!r}: no such file")):
        Client("127.0.0.1:1", ca=tmp_path / "none.pem")
    with pytest.raises(TlsConfigError, match=re.escape(f"ca={str(certs.node.key)!r}: not a PEM CA certificate")):
        Client("127.0.0.1:1", ca=certs.node.key)
    with pytest.raises(TlsConfigError, match="^cert= needs key=: a certificate and its private key go together$"):
        Client("127.0.0.1:1", cert=certs.client.cert)
    with pytest.raises(TlsConfigError, match=re.escape(
            f"key={str(other.client.key)!r} is not the key of cert={str(certs.client.cert)!r}")):
        Client("127.0.0.1:1", cert=certs.client.cert, key=other.client.key)


def test_contexts_have_modern_defaults(certs):
    for context in (server_context(certs.node.cert, certs.node.key), client_context(ca=certs.ca)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
    assert server_context(certs.node.cert, certs.node.key).verify_mode == ssl.CERT_NONE
    assert server_context(certs.node.cert, certs.node.key, client_ca=certs.ca).verify_mode == ssl.CERT_REQUIRED
    client = client_context(ca=certs.ca)
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED


def test_a_clients_options_say_whether_it_speaks_tls(certs):
    assert optional_client_context(False) is None and optional_client_context(None) is None
    assert optional_client_context(True).check_hostname  # the system's CAs
    assert isinstance(optional_client_context(ca=certs.ca), ssl.SSLContext)  # a file turns TLS on
    ready = client_context(ca=certs.ca)
    assert optional_client_context(ready) is ready
    with pytest.raises(TlsConfigError, match="not both"):
        optional_client_context(ready, ca=certs.ca)
    with pytest.raises(ValueError, match="tls must be True, False or an ssl.SSLContext"):
        Client("127.0.0.1:1", tls="yes")


# --- kvwire certs ---------------------------------------------------------------------------


def test_kvwire_certs_writes_a_ca_with_node_and_client_certificates(tmp_path):
    directory = tmp_path / "certs"
    umask = os.umask(0)  # the child inherits it: the directory must not take 0777 from it
    try:
        result = run_kvwire(sys.executable, "-m", "kvwire", "certs", str(directory), "--host", "10.1.2.3", "--host", "kv.example")
    finally:
        os.umask(umask)
    assert result.returncode == 0, result.stderr
    assert directory.stat().st_mode & 0o777 == 0o700
    assert "--tls-cert" in result.stdout and "KVWIRE_TLS_CA=" in result.stdout
    for name in ("ca.key", "node.key", "client.key", "haproxy.pem"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600, name
    load = lambda name: x509.load_pem_x509_certificate((directory / name).read_bytes())  # noqa: E731
    ca, node, client = load("ca.pem"), load("node.pem"), load("client.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (node, client):
        leaf.verify_directly_issued_by(ca)
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.1.2.3"}
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "kv.example"}
    usages = lambda cert: set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)  # noqa: E731
    assert usages(node) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (directory / "haproxy.pem").read_bytes() == (directory / "node.pem").read_bytes() + (directory / "node.key").read_bytes()

    again = run_kvwire(sys.executable, "-m", "kvwire", "certs", str(directory))
    assert again.returncode == 1 and "--force" in one_line(again.stderr)
    assert load("ca.pem") == ca  # untouched
    forced = run_kvwire(sys.executable, "-m", "kvwire", "certs", str(directory), "--force")
    assert forced.returncode == 0, forced.stderr
    assert load("ca.pem") != ca


@pytest.mark.parametrize("host, fragment", [
    ("bücher.example", "is not a DNS name in ASCII"),
    # Written, then matched by no check (a probe, 2026-12-07).
    ("*.test", "is a wildcard that no check matches"),
    ("fe80::1%eth0", "has a zone (%eth0), which no certificate holds"),
    ("10.0.0.1:7379", "has a port"),
    ("kv example", "is not an IP address or DNS name"),
    # Names no certificate check could ever match, once taken silently.
    ("300.1.1.1", "is not an IP address, and a DNS name does not end in digits"),
    ("10.0.0.0/8", "is not a DNS name: dot-separated labels"),
    ("a..b", "is not a DNS name"),
    ("-bad.example", "is not a DNS name"),
    ("x" * 64 + ".example", "is not a DNS name"),
])
def test_kvwire_certs_refuses_a_bad_host_before_writing_anything(tmp_path, host, fragment):
    directory = tmp_path / "certs"
    result = run_kvwire(sys.executable, "-m", "kvwire", "certs", str(directory), "--host", host)
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr
    assert not directory.exists()


def test_kvwire_certs_names_each_host_once(tmp_path):
    result = run_kvwire(sys.executable, "-m", "kvwire", "certs", str(tmp_path / "certs"), "--host", "[::1]",
                        "--host", "kv1.example", "--host", "*.kv.example")
    assert result.returncode == 0, result.stderr
    assert "good for 127.0.0.1, ::1, localhost, kv1.example, *.kv.example\n" in result.stdout, result.stdout


def test_kvwire_certs_in_the_way_of_a_directory_changes_nothing(tmp_path):
    directory = tmp_path / "certs"
    assert run_kvwire(sys.executable, "-m", "kvwire", "certs", str(directory)).returncode == 0
    (directory / "node.key").unlink()
    (directory / "node.key").mkdir()
    before = {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}
    forced = run_kvwire(sys.executable, "-m", "kvwire", "certs", str(directory), "--force")
    assert forced.returncode == 1
    assert one_line(forced.stderr) == f"Error: cannot write to {directory / 'node.key'}: Is a directory; nothing was changed"
    assert {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()} == before
    assert sorted(path.name for path in directory.iterdir()) == sorted([*before, "node.key"])  # no staging left


# --- one node -------------------------------------------------------------------------------


def test_a_client_talks_to_a_tls_node_over_a_real_handshake(tls_node, certs):
    with Client([tls_node.address], timeout=3, **certs.client_options()) as kv:
        kv.put("greeting", {"hello": "tls"})
        assert kv.get("greeting") == {"hello": "tls"}
    with connect_socket(tls_node.host, tls_node.port, timeout=3, ssl_context=certs.client_context()) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert sock.compression() is None
        assert sock.getpeercert()["subject"][-1] == (("commonName", "kvwire node"),)


def _requests_then_close_notify(host: str, port: int, context: ssl.SSLContext, *requests) -> tuple[bool, list]:
    """A TLS connection whose requests and close_notify go out in one write, so
    that the node reads its end of stream with replies still pending: whether
    the node then closed its side, and the replies it sent before that."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    codec = Connection(Side.CLIENT)
    with socket.create_connection((host, port), timeout=5) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise EOFError("the node closed during the handshake")
                incoming.write(data)
        tls.write(b"".join(encode(request) for request in requests))
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the node's own close_notify is still to come
        sock.sendall(outgoing.read())  # the handshake's end, the requests and the close_notify
        closed = True
        try:
            while data := sock.recv(65536):
                incoming.write(data)
        except ConnectionResetError:
            pass
        except TimeoutError:
            closed = False
    while True:
        try:
            codec.receive_data(tls.read(65536))
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLError):
            break  # all that came, up to the node's close_notify (or a cut-off record)
    replies = []
    while (event := codec.next_event()) is not NEED_DATA and event is not CLOSED:
        replies.append(event)
    return closed, replies


def test_a_tls_client_that_closes_its_side_with_a_reply_pending_is_closed_without_a_warning(tmp_path, certs):
    """uvloop's TLS transport cannot stay open for writing after the client's
    close_notify (docs/protocol.md section 8), so a node must not ask it to:
    uvloop logged a warning for every such connection."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--cache-entries", "0"]) as node:
        with Client([node.address], timeout=3, **certs.client_options()) as kv:
            kv.put("large", "v" * 100_000)  # with the cache off, a GET of it waits on SQLite
        for attempt in range(3):
            closed, _ = _requests_then_close_notify(node.host, node.port, certs.client_context(), Get(attempt, "large"))
            assert closed
        with Client([node.address], timeout=3, **certs.client_options()) as kv:
            assert len(kv.get("large")) == 100_000
        log = node.log()
        assert "has no effect when using ssl" not in log and "Traceback" not in log


def test_requests_held_back_past_max_inflight_are_refused_when_a_tls_client_closes_its_side(tmp_path, certs):
    """Two PUTs wait on storage, the cap, and three PINGs are held back; the
    close_notify comes in the same read. The node closes at once (TLS cannot
    stay open), so it must not start the PINGs' turn with no one to answer:
    each held-back request is refused UNAVAILABLE, applied nowhere. Before,
    they were neither answered nor started."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--max-inflight", "2"]) as node:
        requests = [Put(1, "a", "x", "r-a"), Put(2, "b", "x", "r-b"), Ping(3), Ping(4), Ping(5)]
        closed, replies = _requests_then_close_notify(node.host, node.port, certs.client_context(), *requests)
        assert closed
        refused = {reply.id: reply for reply in replies if reply.id in (3, 4, 5)}
        assert sorted(refused) == [3, 4, 5], replies
        for reply in refused.values():
            assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.UNAVAILABLE, reply
            assert reply.maybe_applied is False and "request not started" in reply.message
        assert "Traceback" not in node.log()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_node_refuses_clients_below_tls_1_2(tls_node, certs):
    legacy = certs.client_context()
    legacy.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    legacy.maximum_version = ssl.TLSVersion.TLSv1_1
    legacy.set_ciphers("ALL:@SECLEVEL=0")  # let this side offer 1.1 at all; the node must still refuse it
    with pytest.raises(ssl.SSLError):
        connect_socket(tls_node.host, tls_node.port, timeout=3, ssl_context=legacy).close()
    wait_for_log(tls_node, "failed: the other side offers only TLS versions below 1.2")


def test_the_wrong_ca_in_kvwire_cli_is_one_line_naming_the_ca(tls_node, certs, other):
    result = cli("--endpoints", tls_node.address, "--timeout", "3", "--tls-ca", str(other.ca),
                 "--tls-cert", str(certs.client.cert), "--tls-key", str(certs.client.key), "get", "greeting")
    line = one_line(result.stderr)
    assert result.returncode == 3, result.stderr
    assert f"TLS handshake with {tls_node.address} failed: certificate verify failed" in line
    assert "--tls-ca" in line


def test_a_client_certificate_of_another_ca_is_refused_and_logged_by_the_node(tls_node, certs, other):
    with pytest.raises(KvwireConnectionError, match="refused our client certificate"):
        with Client([tls_node.address], timeout=2, ca=certs.ca, cert=other.client.cert, key=other.client.key) as kv:
            kv.get("greeting")
    line = wait_for_log(tls_node, "failed: certificate verify failed: unable to get local issuer certificate")
    assert "WARNING kvwire.server: TLS handshake with 127.0.0.1:" in line and "event=tls_handshake_failed" in line


def test_a_client_without_a_certificate_is_refused_and_logged_by_the_node(tls_node, certs):
    with pytest.raises(KvwireConnectionError, match=r"--tls-cert/--tls-key"):
        with Client([tls_node.address], timeout=2, ca=certs.ca) as kv:
            kv.get("greeting")
    wait_for_log(tls_node, "the other side sent no client certificate, and one is required")


def test_plain_and_tls_mixed_up_are_each_told_what_to_do(tls_node, shared_node, certs):
    told = r"the node reported: this node serves TLS on this port, and the connection is plaintext: connect with TLS"
    with pytest.raises(KvwireConnectionError, match=told):
        with Client([tls_node.address], timeout=2) as kv:
            kv.get("greeting")
    wait_for_log(tls_node, "sent plaintext, not a TLS handshake (first byte 0x00): answered that this port serves TLS")
    # On the wire: one ERROR frame that answers no request, then the node's close.
    with connect_socket(tls_node.host, tls_node.port, timeout=10) as raw:
        raw.sendall(encode(Ping(7)))
        reader = Connection(Side.CLIENT)
        while (data := raw.recv(4096)):
            reader.receive_data(data)
        reader.receive_data(b"")
        events = []
        while (event := reader.next_event()) not in (NEED_DATA, CLOSED):
            events.append(event)
    assert [(type(e), e.id, e.code) for e in events] == [(ErrorReply, None, ErrorCode.BAD_REQUEST)], events
    with pytest.raises(KvwireConnectionError, match=r"is the node serving TLS \(kvwire serve --tls-cert\)\?"):
        with Client([shared_node.address], timeout=2, **certs.client_options()) as kv:
            kv.get("greeting")


def test_the_nodes_certificate_must_name_the_host_dialled(tmp_path, certs):
    # certs name 127.0.0.1, ::1 and localhost; this node listens on 127.0.0.5.
    node = NodeProcess("n1", data_dir=tmp_path / "n1", host="127.0.0.5", tls=certs, extra_args=["--sync", "off"])
    node.start()
    try:
        wait_for_log(node, "listening on 127.0.0.5", timeout=15)
        with pytest.raises(KvwireConnectionError, match=r"IP address mismatch.*kvwire certs --host HOST"):
            with Client([node.address], timeout=2, **certs.client_options()) as kv:
                kv.get("k")
    finally:
        node.stop()


def test_a_node_with_bad_tls_files_does_not_start_and_says_why(tmp_path, certs):
    serve = [sys.executable, "-m", "kvwire", "serve", "--data-dir", str(tmp_path / "n1"), "--listen", f"127.0.0.1:{free_port()}"]
    missing = run_kvwire(*serve, "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(certs.node.key))
    assert missing.returncode == 2 and "none.pem: no such file" in missing.stderr
    ca_only = run_kvwire(*serve, "--tls-ca", str(certs.ca))
    assert ca_only.returncode == 2 and "needs --tls-cert and --tls-key" in ca_only.stderr
    unloadable = run_kvwire(*serve, "--tls-cert", str(certs.node.key), "--tls-key", str(certs.node.key))
    assert unloadable.returncode == 78
    assert f"--tls-cert {certs.node.key}: not a PEM certificate" in one_line(unloadable.stderr)


def test_a_private_key_or_secret_readable_by_others_is_named_at_start(tmp_path):
    """As ssh and PostgreSQL say of such a key; a warning, since orchestrators
    often mount secrets mode 644."""
    certs = DevCerts.create(tmp_path / "certs")
    key = certs.node.key
    key.chmod(0o640)
    secret = tmp_path / "cluster.secret"
    write_secret_file(secret)
    secret.chmod(0o644)
    warning = "is readable by others than its owner; chmod 600 it"
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs,
                     extra_args=["--cluster-secret-file", str(secret)]) as node:
        wait_for_log(node, f"--tls-key file {key} {warning}")
        wait_for_log(node, f"cluster secret file {secret} {warning}")
        with BridgeProcess([node.address], log_path=tmp_path / "bridge.log", tls=certs) as bridge:
            bridge.wait_ready()
            assert f"--tls-key file {key} {warning}" in bridge.log()
    key.chmod(0o600)
    secret.chmod(0o600)
    with NodeProcess("n1", data_dir=tmp_path / "n1b", tls=certs) as quiet:
        assert warning not in quiet.log()


def test_kvwire_cli_and_the_bench_speak_tls_with_the_environment_or_options(tls_node, certs):
    env = {"KVWIRE_ENDPOINTS": tls_node.address, "KVWIRE_TLS_CA": str(certs.ca),
           "KVWIRE_TLS_CERT": str(certs.client.cert), "KVWIRE_TLS_KEY": str(certs.client.key)}
    put = cli("put", "from-cli", "over tls", env=env)
    assert put.returncode == 0, put.stderr
    got = cli("get", "from-cli", env=env)
    assert got.returncode == 0 and got.stdout.strip() == "over tls", got.stderr
    bench = run_kvwire(sys.executable, "-m", "kvwire", "bench", "--endpoints", tls_node.address, "--mix", "get=50,put=50",
                       "--connections", "2", "--duration", "1", "--warmup", "0", "--keys", "100", "-o", "json",
                       *certs.client_args(), timeout=60)
    assert bench.returncode == 0, bench.stderr
    result = json.loads(bench.stdout)
    assert result["ops"] > 0 and result["errors"] == 0 and result["connections_lost"] == 0, result
    # Without TLS, or with another CA: one line naming the node and why, as kvwire-cli says it.
    for args, why in (((), "this node serves TLS on this port, and the connection is plaintext: connect with TLS"),
                      (("--tls-ca", str(certs.client.cert)), "TLS handshake failed: CERTIFICATE_VERIFY_FAILED")):
        failed = run_kvwire(sys.executable, "-m", "kvwire", "bench", "--endpoints", tls_node.address,
                            "--duration", "1", "--warmup", "0", "--keys", "10", *args, timeout=60)
        assert failed.returncode == 1, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr  # no "Future exception was never retrieved"
        assert f"{tls_node.address}: " in failed.stderr and why in failed.stderr, failed.stderr


# --- a three-node TLS cluster -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    with LocalCluster(3, data_dir=tmp_path_factory.mktemp("tls-cluster"), tls=True, sync="normal") as cluster:
        yield cluster


def test_peers_link_over_mutual_tls_and_replicate(tls_cluster):
    # wait_ready saw every peer UP: each link is a TLS connection whose both ends proved their certificate.
    options = tls_cluster.client_options
    with Client(tls_cluster.endpoints_of("n1"), timeout=3, **options) as n1:
        version = n1.put("replicated", [1, "two"])
    for node_id in ("n2", "n3"):
        with Client(tls_cluster.endpoints_of(node_id), timeout=3, **options) as other:
            assert other.get_with_version("replicated") == ([1, "two"], version)  # a quorum read
            wait_for(lambda: other.get("replicated", consistency="one") == [1, "two"], timeout=3,
                     what=f"{node_id} holding the write itself")
    for node in tls_cluster:
        assert "TLS handshake" not in node.log(), node.log()


def test_a_peer_whose_certificate_does_not_name_its_cluster_host_is_refused_when_it_dials_in(tmp_path):
    """A probe (2026-12-07): n3 ran with a certificate the CA signed that named no host of
    it (the client certificate). Its peers refused it when they dialled it, but took its
    own links, whatever the certificate named: n3 coordinated quorum writes while its peers
    listed it DOWN. A peer dialling in is now held to its --cluster host, as one dialled."""
    cluster = LocalCluster(3, data_dir=tmp_path, tls=True, sync="off")
    client_cert = cluster.tls.client_options()
    cluster["n3"].extra_args += ["--tls-cert", str(client_cert["cert"]), "--tls-key", str(client_cert["key"])]
    try:
        cluster.start().wait_ready("n1", "n2", peers=False)
        for node_id in ("n1", "n2"):
            wait_for(lambda: "event=peer_certificate_refused" in cluster[node_id].log(), timeout=10,
                     what=f"{node_id} refusing n3's HELLO")
            assert "its TLS certificate does not name 127.0.0.3, n3's --cluster host" in cluster[node_id].log()
        # n3's certificate is no server's: reached as the probe reached it (curl -k), with
        # the client certificate it asks for but nothing of its own checked.
        unchecked = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        unchecked.check_hostname = False
        unchecked.verify_mode = ssl.CERT_NONE
        unchecked.load_cert_chain(client_cert["cert"], client_cert["key"])
        with RawConnection(cluster["n3"].address, ssl_context=unchecked) as n3:
            refused = n3.request(Put(1, "through-n3", "refused"))
            assert refused.code == ErrorCode.NO_QUORUM, refused
        with Client(cluster.endpoints_of("n1"), timeout=3, **cluster.client_options) as n1:
            n1.put("through-n1", "kept")  # n1 and n2 keep their quorum
            with pytest.raises(KeyNotFoundError):
                n1.get("through-n3")
    finally:
        cluster.stop()


def test_a_certificate_names_a_host_as_a_client_checks_it():
    from kvwire.tls import certificate_names

    cert = {"subjectAltName": (("DNS", "kv.example.test"), ("DNS", "*.nodes.example.test"),
                               ("IP Address", "10.0.0.5"), ("IP Address", "2001:DB8:0:0:0:0:0:1\n"))}
    for host in ("kv.example.test", "KV.example.test", "n3.nodes.example.test", "10.0.0.5", "2001:db8::1"):
        assert certificate_names(cert, host), host
    for host in ("example.test", "a.b.nodes.example.test", "nodes.example.test", "10.0.0.6", "::1", "10.0.0.5.test"):
        assert not certificate_names(cert, host), host
    assert not certificate_names({}, "10.0.0.5")  # no certificate presented
    assert not certificate_names({"subjectAltName": (("DNS", "*.test"),)}, "a.test")  # a wildcard needs two labels more


def test_the_bridge_serves_https_in_front_of_tls_nodes(tls_cluster, tmp_path):
    with BridgeProcess(tls_cluster.endpoints, log_path=tmp_path / "bridge.log", tls=tls_cluster.tls) as bridge:
        bridge.wait_ready()
        assert bridge.url.startswith("https://")
        base = f"{bridge.url}{PREFIX}"
        created = http("PUT", f"{base}/kv/over-https/", {"value": "yes"}, ssl_context=bridge.ssl_context)
        assert created.status == 201, created.text
        assert http("GET", f"{base}/kv/over-https/", ssl_context=bridge.ssl_context).json["value"] == "yes"
        # Plain HTTP on the HTTPS port is told so, as nginx does, rather than dropped unanswered.
        plain = http("GET", f"http://127.0.0.1:{bridge.port}{PREFIX}/health/", timeout=3)
        assert plain.status == 400, plain.text
        assert "came in plain HTTP: send it to https://" in plain.json["error"]
        assert plain.headers["Connection"] == "close"
        wait_for_log(bridge, "sent plaintext, not a TLS handshake (first byte 0x47)")
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):  # nor trusted without the CA
            http("GET", f"{base}/health/", ssl_context=ssl.create_default_context(), timeout=3)
        assert "failed" in wait_for_log(bridge, "TLS handshake with 127.0.0.1:")  # the refusal is logged, as a node's
        # The fast path over TLS: a raw request answered, and the connection closed when the
        # client ends TLS (close_notify) without the TLS transport's warning about a half-close.
        with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as raw:
            tls = bridge.ssl_context.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(f"GET {PREFIX}/kv/over-https/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert read_response(tls.makefile("rb")).status == 200
            plain = tls.unwrap()  # close_notify, and the bridge's in return
            with plain:
                assert plain.recv(4096) == b""  # then the bridge closes the connection
    assert "has no effect when using ssl" not in bridge.log()


def test_a_413_over_https_reaches_a_client_still_sending_its_body(tmp_path, certs):
    """TLS has no half-close: a bridge that closes the connection right after its 413
    can break it under a client still sending its body, which then sees an EOF, not
    the answer (a review saw it through HAProxy's TLS mode, 3 times in 4). The bridge
    reads and drops the body until LINGER_SECONDS instead. (This client, on a bridge
    under uvloop, read the 413 either way: uvloop's TLS shutdown drops what it reads.)"""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--sync", "off"]) as node:
        with BridgeProcess([node.address], log_path=tmp_path / "bridge.log", tls=certs,
                           args=["--max-body-bytes", "1000"]) as bridge:
            bridge.wait_ready()
            for attempt in range(3):
                with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as raw:
                    tls = bridge.ssl_context.wrap_socket(raw, server_hostname="127.0.0.1")
                    body = b"x" * 5_000_000
                    tls.sendall(f"PUT {PREFIX}/kv/too-big/ HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                                f"\r\n\r\n".encode() + body)
                    answer = read_response(tls.makefile("rb"))
                    assert answer.status == 413 and answer.headers.get("connection") == "close", (attempt, answer)


def test_a_bridge_in_front_of_a_stopped_tls_node_stops_at_once(tmp_path, certs):
    """Its node client aborts the connection to the stopped node, rather than close it
    gracefully: asyncio would wait 30 s for a close_notify that never comes."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--sync", "off"]) as node:
        with BridgeProcess([node.address], log_path=tmp_path / "bridge.log", tls=certs) as bridge:
            created = http("PUT", f"{bridge.url}{PREFIX}/kv/before-the-stop/", {"value": 1},
                           ssl_context=bridge.ssl_context)
            assert created.status == 201, created.text
            node.pause()
            try:
                # No request is in flight, so nothing is owed a wait for --shutdown-timeout.
                assert bridge.signal(signal.SIGTERM, timeout=5) == 0
            finally:
                node.resume()
        assert "Traceback" not in bridge.log()


def test_failover_in_a_tls_cluster(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, tls=True, sync="normal", heartbeat_interval=0.05,
                      failure_timeout=0.3) as cluster:
        with Client(cluster.endpoints, timeout=5, **cluster.client_options) as kv:
            kv.put("before", 1)
            assert kv.health()["node_id"] == "n1"
            cluster.kill("n1")  # the node the client is connected to
            for i in range(20):
                kv.put(f"after:{i}", i)  # two of three: still a majority
            assert kv.health()["node_id"] in ("n2", "n3")
        with Client(cluster.endpoints_of("n3"), timeout=3, **cluster.client_options) as n3:
            assert n3.get("before") == 1 and n3.get("after:19") == 19
        cluster.start("n1")
        cluster.wait_ready("n1")  # it links up with its peers over TLS again
        with Client(cluster.endpoints_of("n1"), timeout=3, **cluster.client_options) as n1:
            assert n1.get("after:7") == 7


def test_a_peer_with_a_certificate_of_another_ca_is_refused_and_the_others_keep_quorum(tmp_path, other):
    cluster = LocalCluster(3, data_dir=tmp_path, tls=True, sync="normal")
    intruder = cluster["n3"]
    intruder.extra_args += other.node_args()  # given last, these win: n3 serves and dials with the other CA's
    cluster.start()
    try:
        cluster.wait_ready("n1", "n2", peers=False)
        wait_for_log(intruder, "listening on", timeout=15)
        cluster.wait_peers("n1", up=["n2"], down=["n3"])
        # n1 refuses n3's certificate when n3 dials it, and n3's when it dials n3.
        wait_for_log(cluster["n1"], "TLS handshake with 127.0.0.3:")
        wait_for_log(cluster["n1"], "peer n3: TLS handshake with 127.0.0.3:")
        with Client(cluster.endpoints_of("n1", "n2"), timeout=3, **cluster.client_options) as kv:
            kv.put("without n3", True)
            assert kv.get("without n3") is True
        # Polled: on a loaded machine one late heartbeat can show n1 DOWN for a moment.
        cluster.wait_peers("n2", up=["n1"], down=["n3"], timeout=10)
    finally:
        cluster.stop()


def test_a_peer_whose_client_certificate_is_refused_says_so(tmp_path):
    """n3's certificate serves but cannot be a client's: n1 and n2 refuse it when n3
    dials them. Under TLS 1.3 that refusal comes after n3's side of the handshake, as
    a close before HELLO, which n3 logged at DEBUG only: its log said nothing while
    it stayed cut off (found by a security probe)."""
    from kvwire.testing.certs import reissue

    certs = DevCerts.create(tmp_path / "tls", hosts=["127.0.0.2", "127.0.0.3"])
    serving_only = DevCerts.create(tmp_path / "serving-only", hosts=["127.0.0.2", "127.0.0.3"])
    for name in ("ca.pem", "ca.key"):  # the same CA: only the purpose differs
        (serving_only.directory / name).write_bytes((certs.directory / name).read_bytes())
    (serving_only.directory / "node.key").write_bytes((certs.directory / "node.key").read_bytes())
    (serving_only.directory / "node.pem").write_bytes((certs.directory / "node.pem").read_bytes())
    reissue(serving_only, "node.pem", purposes=[ExtendedKeyUsageOID.SERVER_AUTH])
    cluster = LocalCluster(3, data_dir=tmp_path / "data", tls=certs, sync="off")
    cluster["n3"].extra_args += serving_only.node_args()  # given last, these win
    cluster.start()
    try:
        cluster.wait_ready("n1", "n2", peers=False)
        line = wait_for_log(cluster["n3"], "peer n1: ", timeout=15)
        assert "ERROR" in line and "event=peer_handshake_failed" in line, line
        assert "refused our client certificate" in line, line
    finally:
        cluster.stop()


def test_a_tls_node_serves_its_rest_api_over_https(tmp_path, certs):
    port = free_port()
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs,
                     extra_args=["--sync", "off", "--http-listen", f"127.0.0.1:{port}"]) as node:
        context = ssl.create_default_context(cafile=certs.ca)
        base = f"https://127.0.0.1:{port}{PREFIX}"
        wait_for(lambda: _answers(f"{base}/health/", context), timeout=10, what="the node's HTTPS bridge")
        assert http("PUT", f"{base}/kv/k/", {"value": 42}, ssl_context=context).status == 201
        with Client([node.address], timeout=3, **certs.client_options()) as kv:
            assert kv.get("k") == 42
        assert http("GET", f"http://127.0.0.1:{port}{PREFIX}/health/", timeout=3).status == 400  # plain HTTP, told so


def _answers(url: str, context: ssl.SSLContext) -> bool:
    try:
        return http("GET", url, ssl_context=context, timeout=1).status == 200
    except OSError:
        return False


# --- kvwire up --tls --------------------------------------------------------------------------


def test_up_with_tls_runs_a_tls_cluster_and_prints_how_to_reach_it(tmp_path):
    from test_up import Up, free_port_runs

    nodes, bridges = free_port_runs(3)
    up = Up(tmp_path, "--tls", "--base-port", str(nodes), "--http-base-port", str(bridges),
            "--data-dir", str(tmp_path / "data"), "--sync", "off")
    try:
        up.wait_printed("every node answers", timeout=30)
        [exports] = [line for line in up.stdout.splitlines() if "export KVWIRE_ENDPOINTS=" in line]
        env = dict(word.split("=", 1) for word in shlex.split(exports)[1:])
        assert env["KVWIRE_TLS_CA"] == str(tmp_path / "data" / "tls" / "ca.pem")
        put = cli("put", "greeting", "hello over tls", env=env)  # the printed settings are all it takes
        assert put.returncode == 0, put.stderr
        context = ssl.create_default_context(cafile=env["KVWIRE_TLS_CA"])
        reply = http("GET", f"https://127.0.0.1:{bridges}{PREFIX}/kv/greeting/", ssl_context=context)
        assert reply.status == 200 and reply.json["value"] == "hello over tls", reply.text
        plain = cli("--endpoints", env["KVWIRE_ENDPOINTS"], "--timeout", "2", "get", "greeting")
        assert plain.returncode == 3 and "connect with TLS (--tls in kvwire-cli" in one_line(plain.stderr)
        up.process.send_signal(signal.SIGINT)
        assert up.wait_exit() == 0, up.stderr
        assert "Traceback" not in up.stderr
    finally:
        up.cleanup()


def test_stalled_handshakes_are_bounded_in_number_and_time(tmp_path, certs):
    # --hello-timeout bounds the handshake too, and --max-connections the handshakes at once.
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs,
                     extra_args=["--sync", "off", "--max-connections", "2", "--hello-timeout", "1.5"]) as node:
        stalled = [RawConnection(node.address, timeout=3) for _ in range(2)]  # TCP, and not a byte of TLS
        try:
            with RawConnection(node.address, timeout=3) as third:
                assert third.closed_by_peer(timeout=0.5)  # closed at once, not at the deadline: two handshakes wait
            for connection in stalled:
                assert connection.closed_by_peer(timeout=5)  # closed at the deadline
        finally:
            for connection in stalled:
                connection.close()
        # Both are an operator's business: logged (a few at a time), not at debug level only.
        wait_for_log(node, "event=tls_handshakes_at_limit")
        assert "did not finish within 1.5 s; closing the connection" in wait_for_log(node, "event=tls_handshake_timeout")
        with Client([node.address], timeout=3, **node.client_options) as kv:
            kv.put("still", "serving")


def test_a_client_refused_at_the_handshake_limit_is_told_why_it_may_be(tmp_path, certs):
    """Closed at once for the handshakes in progress, a client said only
    "cannot connect to ...: ConnectionResetError" (the error had no errno to say more)."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--sync", "off", "--max-connections", "1"]) as node:
        with RawConnection(node.address, timeout=3):  # TCP, and not a byte of TLS: the one handshake allowed
            with pytest.raises(KvwireConnectionError) as refused:
                with Client([node.address], timeout=2, retry=RetryPolicy(attempts=1), **node.client_options) as kv:
                    kv.ping()
    # A reset when the client's hello reached the socket before the node closed it, else an EOF.
    said = str(refused.value)
    assert ("the node reset the connection during the TLS handshake; " in said
            or "the connection closed during the TLS handshake; " in said), said
    assert said.endswith(f"; {HANDSHAKE_LIMIT_HINT}"), said


def test_an_https_bridge_bounds_its_handshakes_in_number_as_a_node_does(tmp_path, certs):
    """Silent handshakes once took a bridge's open files without bound (asyncio's
    listener counts none); now at most --max-connections of them wait at once."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--sync", "off"]) as node:
        with BridgeProcess([node.address], log_path=tmp_path / "bridge.log", tls=certs,
                           args=["--max-connections", "2", "--request-timeout", "5"]) as bridge:
            bridge.wait_ready()
            address = f"127.0.0.1:{bridge.port}"
            stalled = [RawConnection(address, timeout=3) for _ in range(2)]  # TCP, and not a byte of TLS
            try:
                with RawConnection(address, timeout=3) as third:
                    assert third.closed_by_peer(timeout=1)  # closed at once, not at the 5 s deadline
            finally:
                for connection in stalled:
                    connection.close()
            assert "closing the connection from 127.0.0.1:" in wait_for_log(bridge, "TLS handshakes already running")
            # The two stalled ones gone, HTTPS is served again.
            wait_for(lambda: _answers(f"{bridge.url}{PREFIX}/health/", bridge.ssl_context), timeout=10,
                     what="the bridge answering over HTTPS")


@pytest.mark.parametrize("new_loop", [asyncio.SelectorEventLoop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_reply_written_in_chunks_stops_once_the_transport_is_closed(certs, caplog, new_loop):
    """Over TLS a large reply is written a chunk at a time (kvwire.tls.like_tcp). A
    chunk's write may pause the protocol, and the pause close the transport (the
    budget's eviction): each chunk written after that drew asyncio's and uvloop's
    "SSL connection is closed" warning, unlimited (a review found it)."""
    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.write = transport, like_tcp(transport)

        def data_received(self, data):
            self.transport.write(b"z" * 4_000_000)  # the kernel's buffers and the TLS layer's full: paused
            self.write(b"y" * 2_000_000)
            written.set_result(self.transport.is_closing())

        def pause_writing(self):
            self.transport.abort()  # as an eviction does

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Server, "127.0.0.1", 0, ssl=server_context(certs.node.cert, certs.node.key))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing, holds little
        raw.setblocking(False)
        await loop.sock_connect(raw, server.sockets[0].getsockname())
        _, writer = await asyncio.open_connection(sock=raw, ssl=certs.client_context(), server_hostname="127.0.0.1")
        writer.write(b"go")
        closed = await asyncio.wait_for(written, 10)
        writer.transport.abort()
        server.close()
        return closed

    loop = new_loop()
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            written = loop.create_future()
            assert loop.run_until_complete(main()) is True  # the pause closed it: the case at hand
    finally:
        loop.close()
    assert not [record for record in caplog.records if "SSL connection is closed" in record.getMessage()]


def test_a_connection_the_node_closes_frees_its_slot_though_the_client_never_answers_the_close(tmp_path, certs):
    """A client that finishes its handshake, says nothing and never answers the node's
    close_notify: closed at --hello-timeout, it kept its --max-connections slot 30 s
    more (asyncio's TLS shutdown timeout; a probe, 2026-12-07). One second now."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs,
                     extra_args=["--sync", "off", "--max-connections", "2", "--hello-timeout", "1"]) as node:
        host, port = node.address.rsplit(":", 1)
        silent = [connect_socket(host, int(port), timeout=5, ssl_context=certs.client_context()) for _ in range(2)]
        try:
            def served() -> bool:
                try:
                    with Client([node.address], timeout=1, **node.client_options) as kv:
                        kv.ping()
                    return True
                except KvwireConnectionError:
                    return False

            # Past the hello timeout and the close_notify's second, with room for a loaded
            # machine, but far short of the 31 s the slots were held.
            wait_for(served, timeout=12, interval=0.2, what="a slot freed by the silent clients' close")
        finally:
            for sock in silent:
                sock.close()


def test_an_https_bridge_drops_a_handshake_that_does_not_finish_within_its_request_timeout(tmp_path, certs):
    """Handshakes are not counted in the bridge's --max-connections (a connection is
    counted once it is one): asyncio held a silent one 60 s, and 300 of them took every
    open file of the process (a probe, 2026-12-07). They now last --request-timeout."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--sync", "off"]) as node:
        with BridgeProcess([node.address], log_path=tmp_path / "bridge.log", tls=certs,
                           args=["--request-timeout", "1"]) as bridge:
            bridge.wait_ready()
            with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as raw:
                raw.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
                raw.settimeout(10)  # past the 1 s deadline with room; far short of asyncio's 60 s
                try:
                    assert raw.recv(100) == b""  # closed by the bridge
                except ConnectionResetError:
                    pass  # closed all the same


def test_bench_security_cost_compares_tls_and_auth_with_plain_end_to_end():
    result = run_kvwire(sys.executable, "-m", "kvwire", "bench", "security-cost", "--rounds", "1", "--duration", "1",
                        "--warmup", "0", "--connections", "4", "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for mix in ("put", "get"):
        figures = summary[mix]
        assert min(figures[f"{mode}_ops_per_s"] for mode in ("plain", "tls", "tls+auth")) > 0, summary
        assert all(figures[f"{mode}_errors"] == 0 for mode in ("plain", "tls", "tls+auth")), summary
        for mode in ("tls", "tls+auth"):
            assert figures[f"{mode}_over_plain"] == round(figures[f"{mode}_ops_per_s"] / figures["plain_ops_per_s"], 3)


@pytest.mark.parametrize("verify_code, hint", [
    (10, "check the certificate's dates"),  # X509_V_ERR_CERT_HAS_EXPIRED: the CA was right
    (9, "check the certificate's dates"),  # X509_V_ERR_CERT_NOT_YET_VALID
    (62, "must name the host dialled"),  # X509_V_ERR_HOSTNAME_MISMATCH
    (19, "is the CA given"),  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: another CA
    # X509_V_ERR_INVALID_PURPOSE: a node serving a client's certificate (a security probe's
    # finding: the hint blamed the CA, which was right).
    (26, "not one for a server"),
])
def test_a_refused_certificate_gets_the_hint_its_reason_calls_for(verify_code, hint):
    from kvwire.tls import dialler_hint

    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = verify_code
    assert hint in dialler_hint(error)


def test_failed_handshakes_are_logged_a_few_at_a_time(tmp_path, certs):
    """Anyone can fail a handshake: fifteen clients that send no real ClientHello make ten lines, and a count."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--sync", "off"]) as node:
        host, port = node.address.rsplit(":", 1)
        for _ in range(15):
            with socket.create_connection((host, int(port)), timeout=5) as plain:
                plain.sendall(b"\x16\x03\x01\x00\x05hello")  # a handshake record, but no ClientHello
                try:
                    plain.recv(100)  # until the node closes it, its handshake failed
                except ConnectionResetError:
                    pass  # closed all the same
        wait_for(lambda: node.log().count("TLS handshake with") >= 10, timeout=10, what="the first ten lines")
        wait_for(lambda: "and 5 more failed TLS handshakes in" in node.log(), timeout=15,
                 what="the count of the lines held back")
        assert node.log().count("TLS handshake with") == 10


def _up_tls_once(tmp_path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``kvwire up --tls`` of one node on DATA=tmp_path/data, run to its end: for the runs refused at once."""
    from test_up import run_up

    return run_up(tmp_path, "--tls", "--nodes", "1", "--no-http", "--base-port", str(free_port()),
                  "--data-dir", str(tmp_path / "data"), *args, timeout=timeout)


def _up_tls_serves_and_stops(tmp_path) -> None:
    """``kvwire up --tls`` of one node on DATA=tmp_path/data: every node answers, then a clean stop."""
    up = _up_tls_node(tmp_path)
    try:
        up.stop_cleanly()
    finally:
        up.cleanup()


def test_up_with_tls_needs_neither_the_ca_key_nor_haproxy_pem_without_haproxy(tmp_path):
    certs = DevCerts.create(tmp_path / "data" / "tls")
    (certs.directory / "ca.key").unlink()  # kept off the machine, as `kvwire certs` advises
    (certs.directory / "haproxy.pem").unlink()
    _up_tls_serves_and_stops(tmp_path)
    assert not (certs.directory / "ca.key").exists()  # the set was used as it was, not replaced


def test_up_with_tls_and_haproxy_refuses_a_set_without_haproxy_pem(tmp_path):
    certs = DevCerts.create(tmp_path / "data" / "tls")
    (certs.directory / "haproxy.pem").unlink()
    result = _up_tls_once(tmp_path, "--nodes", "3", "--haproxy")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"Error: {certs.directory} holds part of a certificate set, without haproxy.pem, which --haproxy needs; "
        f"`kvwire certs {certs.directory} --force` makes a new set")
    assert not (tmp_path / "data" / "n1").exists()  # refused before any node started


def _expired(certs: DevCerts, file_name: str) -> None:
    from kvwire.testing.certs import reissue

    now = datetime.datetime.now(datetime.timezone.utc)
    reissue(certs, file_name, not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1))


def _not_yet_valid(certs: DevCerts, file_name: str) -> None:
    from kvwire.testing.certs import reissue

    now = datetime.datetime.now(datetime.timezone.utc)
    reissue(certs, file_name, not_before=now + datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=30))


@pytest.mark.parametrize("case", ["host changed", "expired", "not yet valid", "another ca"])
def test_up_with_tls_refuses_reused_certificates_that_do_not_fit_before_any_node_starts(tmp_path, other, case):
    certs = DevCerts.create(tmp_path / "data" / "tls")
    tls_dir = certs.directory
    args: list[str] = []
    fix = f"`kvwire certs {tls_dir} --force` makes a new set"
    if case == "host changed":  # made for 127.0.0.1; now serving 127.0.0.2
        args = ["--host", "127.0.0.2"]
        fix = f"`kvwire certs {tls_dir} --host 127.0.0.2 --force` makes a new set"
        expected = (f"{tls_dir / 'node.pem'} does not name 127.0.0.2, the host the nodes serve and are dialled at "
                    "(it names 127.0.0.1, ::1, localhost)")
    elif case == "expired":
        _expired(certs, "node.pem")
        expected = f"{tls_dir / 'node.pem'} expired on "
    elif case == "not yet valid":
        _not_yet_valid(certs, "client.pem")
        expected = f"{tls_dir / 'client.pem'} is not valid until "
    else:
        for file_name in ("client.pem", "client.key"):
            (tls_dir / file_name).write_bytes((other.directory / file_name).read_bytes())
        expected = f"{tls_dir / 'client.pem'} is not signed by the CA in {tls_dir / 'ca.pem'}"
    started = time.monotonic()
    result = _up_tls_once(tmp_path, *args)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {expected}") and line.endswith(f"; {fix}"), line
    assert not (tmp_path / "data" / "n1").exists() and result.stdout == ""  # no node started
    assert time.monotonic() - started < 10


def _for_servers_only(certs: DevCerts, file_name: str) -> None:
    """``file_name`` signed again for serverAuth alone: a node refuses it from a client."""
    from kvwire.testing.certs import reissue

    reissue(certs, file_name, purposes=[ExtendedKeyUsageOID.SERVER_AUTH])


@pytest.mark.parametrize("file_name", ["client.pem", "node.pem"])
def test_up_with_tls_refuses_a_certificate_for_the_wrong_purpose_before_any_node_starts(tmp_path, file_name):
    """Signed again for serverAuth alone, client.pem is refused by every node; for
    clientAuth alone, node.pem by every dialler. up's check is a handshake in memory
    with the contexts the nodes build, so OpenSSL judges it as the nodes will."""
    from kvwire.testing.certs import reissue

    certs = DevCerts.create(tmp_path / "data" / "tls")
    if file_name == "client.pem":
        _for_servers_only(certs, file_name)
    else:
        reissue(certs, file_name, purposes=[ExtendedKeyUsageOID.CLIENT_AUTH])
    result = _up_tls_once(tmp_path)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {certs.directory / file_name} is refused in a TLS handshake as the nodes make it "
                           "(certificate verify failed: unsuitable certificate purpose)"), line
    assert not (tmp_path / "data" / "n1").exists()  # no node started


def test_up_with_tls_says_why_a_node_does_not_answer_when_it_gives_up(tmp_path):
    """Every node closes a connection that has not finished its handshake within
    --hello-timeout, here far less than one takes: up's probes never get a reply."""
    result = _up_tls_once(tmp_path, "--start-timeout", "3", "--", "--hello-timeout", "0.0001", timeout=60)
    assert result.returncode == 1, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("kvwire up: n1 not answering")]
    assert line.startswith("kvwire up: n1 not answering after 3 s (") and line.endswith("); giving up"), line


def _up_tls_node(tmp_path, *args: str):
    from test_up import Up

    up = Up(tmp_path, "--tls", "--nodes", "1", "--no-http", "--base-port", str(free_port()),
            "--data-dir", str(tmp_path / "data"), "--sync", "off", *args)
    up.wait_printed("every node answers", timeout=30)
    return up


def _restart_n1(tmp_path) -> subprocess.CompletedProcess:
    from test_up import ctl

    assert ctl(tmp_path, "stop", "n1").returncode == 0
    return ctl(tmp_path, "start", "n1")


def test_a_node_restarted_after_certs_force_during_up_is_probed_with_the_new_set(tmp_path):
    up = _up_tls_node(tmp_path)
    try:
        replaced = run_kvwire(sys.executable, "-m", "kvwire", "certs", str(tmp_path / "data" / "tls"), "--force")
        assert replaced.returncode == 0, replaced.stderr
        started = _restart_n1(tmp_path)  # n1 now serves the new set: up's PING must present the new client certificate
        assert started.returncode == 0, started.stderr
        assert re.fullmatch(r"n1 started, pid \d+\n", started.stdout), started.stdout
        with Client([up.nodes()["n1"][0]], timeout=3, **DevCerts(tmp_path / "data" / "tls").client_options()) as kv:
            kv.put("after", "certs --force")
        up.stop_cleanly()
    finally:
        up.cleanup()


def test_ctl_start_of_a_node_that_does_not_answer_exits_1_saying_why(tmp_path):
    from test_up import status_of

    up = _up_tls_node(tmp_path, "--start-timeout", "10")  # ctl start then waits 10 s, not its most, 15
    try:
        _for_servers_only(DevCerts(tmp_path / "data" / "tls"), "client.pem")  # n1 will refuse up's PINGs
        started = _restart_n1(tmp_path)
        assert started.returncode == 1, started.stdout
        assert re.fullmatch(r"Error: n1 started, pid \d+, but it does not answer PING after 10 s \(it closed the connection "
                            r"without a reply, as a node does when it refuses the client certificate \S+client\.pem; its log "
                            r"says why\); it is left running, and its log is in kvwire up's output\n", started.stderr), started.stderr
        assert status_of(tmp_path)["n1"][0] == "running"
        up.stop_cleanly()
    finally:
        up.cleanup()


def test_up_with_tls_on_a_host_no_certificate_can_name_is_one_line(tmp_path):
    result = _up_tls_once(tmp_path, "--host", "127.1")
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: cannot make development certificates for --host 127.1: "), line


def test_up_with_tls_accepts_a_ca_bundle_whose_signing_ca_is_not_first(tmp_path, other):
    """ca.pem may hold several CAs (a bundle), the one that signed the set not first:
    the nodes accept it, and so must up's check (it compared against the first only)."""
    certs = DevCerts.create(tmp_path / "data" / "tls")
    ca = certs.directory / "ca.pem"
    ca.write_bytes(other.ca.read_bytes() + ca.read_bytes())
    _up_tls_serves_and_stops(tmp_path)


@pytest.mark.parametrize("wildcard, host, fits", [
    ("*.example.test", "kv.example.test", True),
    ("*.localhost", "kv.localhost", False),  # OpenSSL wants two labels after the wildcard
    ("*.test", "kv.test", False),
])
def test_up_judges_a_wildcard_certificate_as_openssl_does(tmp_path, wildcard, host, fits):
    from kvwire.cli.up_certs import NEEDED, _first_problem

    certs = DevCerts.create(tmp_path / "tls", hosts=[wildcard])
    problem = _first_problem(certs.directory, host, NEEDED)
    if fits:
        assert problem is None
    else:
        assert problem is not None and f"does not name {host}" in problem, problem


@pytest.mark.parametrize("file_name, peers", [("node.pem", True), ("node.pem", False), ("haproxy.pem", True)])
def test_up_judges_the_certificates_peers_and_haproxy_present_as_clients(tmp_path, file_name, peers):
    """Peers present node.pem as their client certificate, HAProxy's checks haproxy.pem:
    signed again for serverAuth alone, each is refused by every node it dials. One node
    alone has no peer to present node.pem to."""
    from kvwire.cli.up_certs import NEEDED, NEEDED_BY_HAPROXY, _first_problem

    certs = DevCerts.create(tmp_path / "tls")
    _for_servers_only(certs, file_name)
    if file_name == "haproxy.pem":  # reissue writes the certificate alone; HAProxy's file holds its key after it
        with open(certs.directory / "haproxy.pem", "ab") as proxy:
            proxy.write((certs.directory / "node.key").read_bytes())
    problem = _first_problem(certs.directory, "127.0.0.1", NEEDED + NEEDED_BY_HAPROXY, peers=peers)
    if file_name == "node.pem" and not peers:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(f"{certs.directory / file_name} is refused"), problem
        assert "unsuitable certificate purpose" in problem, problem


def test_a_node_serving_a_client_certificate_gets_the_purpose_hint(tmp_path, certs):
    """The chain is good, the certificate was made for a client: the hint said to check the CA."""
    from kvwire.testing import accepts_connections

    client = certs.client
    port = free_port()
    with open(tmp_path / "n1.log", "w") as log_file:
        node = subprocess.Popen([sys.executable, "-m", "kvwire", "serve", "--node-id", "n1", "--listen", f"127.0.0.1:{port}",
                                 "--data-dir", str(tmp_path / "n1"), "--sync", "off",
                                 "--tls-cert", str(client.cert), "--tls-key", str(client.key), "--tls-ca", str(certs.ca)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        wait_for(lambda: node.poll() is not None or accepts_connections(f"127.0.0.1:{port}"), timeout=15,
                 what="the node listening")
        with pytest.raises(KvwireConnectionError, match="not one for a server") as refused:
            with Client([f"127.0.0.1:{port}"], timeout=3, ca=certs.ca) as kv:
                kv.get("k")
        assert "is the CA given" not in str(refused.value)
        # The node said so itself when it started (kvwire up refuses such a set).
        log = (tmp_path / "n1.log").read_text()
        assert "event=tls_certificate_unfit" in log and "unsuitable certificate purpose" in log, log
    finally:
        node.terminate()
        node.wait(15)


@pytest.mark.parametrize("alone", [False, True], ids=["with-peers", "alone"])
def test_a_node_with_peers_warns_of_a_certificate_it_cannot_present_to_them(tmp_path, alone):
    """A node's certificate is its client certificate towards its peers: one for servers
    only was refused by every peer it dialled, with no word of it at start, while its
    peers, dialling it, saw it UP (a probe, 2026-12-07). A lone node presents it to no one."""
    certs = DevCerts.create(tmp_path / "tls")
    _for_servers_only(certs, "node.pem")
    cluster = [] if alone else ["--cluster", f"n1=127.0.0.1:{free_port()},n2=127.0.0.1:{free_port()}", "--insecure"]
    node = NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs, extra_args=["--sync", "off", *cluster])
    node.start()
    try:
        wait_for(lambda: "listening on" in node.log(), timeout=15, what="n1 started")
        unfit = "is refused as the client certificate this node presents to its peers"
        if alone:
            assert unfit not in node.log() and "tls_certificate_unfit" not in node.log(), node.log()
        else:
            assert unfit in node.log() and "event=tls_certificate_unfit" in node.log(), node.log()
    finally:
        node.stop()


def test_a_node_serving_its_own_certificate_says_nothing_of_it(tls_node):
    assert "tls_certificate_unfit" not in tls_node.log()
