"""The node's replication logic as a pure state machine (see ``node.NodeCore``)."""

from .effects import (
    CloseLink, DropConnections, DropHint, DropPeerHints, Effect, Joined, Load, Mend, Notice, PeerStateChanged, Persist, Purge, Respond, SaveFloor, SaveRequests, Send,
    StoreHint, Strand,
)
from .keydir import Copy, Entry, Keydir
from .node import MUTANTS, NodeCore

__all__ = [
    "CloseLink", "Copy", "DropConnections", "DropHint", "DropPeerHints", "Effect", "Entry", "Joined", "Keydir", "Load", "MUTANTS", "Mend", "NodeCore",
    "Notice", "PeerStateChanged", "Persist", "Purge", "Respond", "SaveFloor", "SaveRequests", "Send", "StoreHint", "Strand",
]
