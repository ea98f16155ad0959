"""The peer handshake: both ends of a peer link prove they hold the cluster secret.

Sans-I/O, like the codec: nonces in, proofs out. The exchange rides on HELLO
(docs/protocol.md section 6.1 has it step by step, with hex vectors):

1. the dialer sends ``HELLO{role: peer, cluster, node: D, nonce: Nd}``;
2. the acceptor answers ``HELLO_REPLY{node: A, nonce: Na, proof: Pa}`` with
   ``Pa = peer_proof(secret, ACCEPTOR, cluster, D, A, Nd, Na)``, and the
   connection is not yet a peer's;
3. the dialer checks ``Pa`` (so it never replicates to an impostor) and sends
   ``HELLO{role: peer, cluster, node: D, proof: Pd}`` with
   ``Pd = peer_proof(secret, DIALER, ...same...)``;
4. the acceptor checks ``Pd``: only then does the connection take the peer role.

Each proof covers both fresh nonces, both node ids and the cluster, and says
which side made it, so no proof can be replayed on another connection,
reflected back at its maker, or moved between nodes or clusters. The secret
never crosses the wire. Without TLS the link is authenticated, not private:
someone on the path can still read it, or hijack a TCP connection after its
handshake; docs/design.md's security section says what TLS adds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import msgpack

NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
PROOF_BYTES = 32  # HMAC-SHA256
# Shorter secrets are refused: 16 random bytes is 128 bits, as much as SHA-256's
# collision resistance gives anyway.
MIN_SECRET_BYTES = 16
# Which end made a proof; part of what it covers, so one end's proof is never the other's.
DIALER = "dialer"
ACCEPTOR = "acceptor"
_LABEL = "kvwire peer proof v1"


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def peer_proof(
    secret: bytes, side: str, cluster: str, dialer: str, acceptor: str, dialer_nonce: bytes, acceptor_nonce: bytes
) -> bytes:
    """HMAC-SHA256 under ``secret`` of the msgpack array
    ``[label, side, cluster, dialer, acceptor, dialer_nonce, acceptor_nonce]``:
    msgpack's lengths make the fields unambiguous, and any language can build it."""
    if side not in (DIALER, ACCEPTOR):
        raise ValueError(f"side must be {DIALER!r} or {ACCEPTOR!r}, got {side!r}")
    message = msgpack.packb([_LABEL, side, cluster, dialer, acceptor, dialer_nonce, acceptor_nonce])
    return hmac.new(secret, message, hashlib.sha256).digest()


def proof_matches(expected: bytes, given: bytes | None) -> bool:
    """Constant-time, so timing tells nothing about how much of a guess was right."""
    return given is not None and hmac.compare_digest(expected, given)


def parse_secret(data: bytes, source: str) -> bytes:
    """A cluster secret from a file's bytes (surrounding whitespace dropped);
    ValueError naming ``source`` when it is too short to be a secret."""
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{source} holds {len(secret)} bytes; a cluster secret needs at least {MIN_SECRET_BYTES} "
            f"(replace it with a new one: kvwire secret --force {source}, then give every node a copy)"
        )
    return secret


def new_secret() -> bytes:
    """A fresh secret as a file holds it: 32 random bytes, base64url, one line."""
    return secrets.token_urlsafe(32).encode("ascii") + b"\n"
