"""The name a node mints version tags under: its node id, or its id and an incarnation.

A tag names one write only while no node mints it twice, and a node knows the
tags it minted from its own disk. A start that may have lost one cannot know
which counters it used: a new or emptied data directory started with --join,
a restored backup, or any start after an unclean stop (a write commits here
while its REPLICATEs are already out, docs/design.md 1.2 step 3). Catching up
from every peer before voting (1.9) gives back every tag some peer holds, but
not one that something else still names: a peer's record of the PUT's request
id kept though its disk refused the tag (applied.py), a commit still under way
on a slow disk (a join copies committed rows), a REPLICATE still on its way.
The simulator found the first (docs/design.md 1.1): the node minted the tag
again for another value, and a retry of the first PUT then finished it by that
record, so two acknowledged values shared one tag.

So such a start takes a fresh *incarnation* from its shell (random in
production, ``kvwire.server.storage``; in the simulator, the node's count of
its own starts and crashes), and the node mints as ``node_id@incarnation`` from then on: no
tag it mints now can equal one it minted before. Riak did the same after its
bug kv679 (Riak 2.1): a vnode that cannot read its own last counter takes a
new actor id. Tags stay ordered as before (counter first); the name only
breaks ties, and every incarnation of a node is still that node
(``member_of``). A clean restart keeps the name (the
data directory's ``meta`` table holds it): every tag it sent is on its disk.

A one-round-trip PUT's first tag is *proposed*: one above its coordinator's own
copy, not above anything a majority answered (one_trip.py). It is minted under
the name with ``PROPOSED`` before it, which ranks below every node id, so it
sorts below every other tag of its counter. A PUT's retry that does not find
that first attempt mints one above its majority's newest, which, when the
coordinator's copy was on a majority, is at least the proposal's counter: at a
tie the retry now wins. Level on the name, the proposal could win instead, and
a later one-round-trip PUT, proposed at the same counter under a name between
the two, went in above the acknowledged retry and below the first attempt,
which then surfaced above it (``python -m kvwire.sim --seed 101489 --seeds 1``,
docs/design.md 1.2 step 6; ``proposals-rank-level`` is caught there).
"""

from __future__ import annotations

# Not a character a node id may contain (ServerConfig: letters, digits, '_', '.', '-').
SEPARATOR = "@"
# Nor is this, and it sorts below every one that may (as bytes too: SQLite
# compares the node field with memcmp), so a proposed tag ranks below every other
# tag of its counter.
PROPOSED = "!"


def minter_name(node_id: str, incarnation: str) -> str:
    """The node field of the tags ``node_id`` mints: the bare id while it has no incarnation."""
    return f"{node_id}{SEPARATOR}{incarnation}" if incarnation else node_id


def proposed_name(minter: str) -> str:
    """The node field of a proposed tag (a one-round-trip PUT's first) minted as ``minter``."""
    return f"{PROPOSED}{minter}"


def member_of(tag_node: str) -> str:
    """The node id that minted a tag whose node field is ``tag_node``, whatever its
    incarnation, proposed or not."""
    return tag_node.removeprefix(PROPOSED).partition(SEPARATOR)[0]
