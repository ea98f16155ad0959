"""Which peer links a partition cuts, as directed cuts "A cannot send to B".

Each node dials each peer itself, and a node hears a peer only through the
link it dialled (a reply to its PING, or to any request), so cutting "A to B"
means dropping what A sends to B's listening address. Replies travel back
to the dialler's ephemeral port and are not matched, which is what makes
one-way cuts possible.

- ``isolate``: one node cut from both peers, both ways; the majority goes on.
- ``bridge``: two nodes cut from each other, both still talking to the third
  (Jepsen's bridge): every node is in some majority, no two majorities agree.
- ``one-way``: one node's own links to its peers cut, theirs to it intact:
  the peers hear it and replicate to it, it hears neither of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .firewall import DropRule

PARTITION_KINDS = ("isolate", "bridge", "one-way")


@dataclass(frozen=True, slots=True)
class Partition:
    kind: str
    cuts: frozenset[tuple[str, str]]  # (sender, receiver): sender's packets to receiver are dropped
    label: str

    def rules(self, groups: Mapping[str, int], addresses: Mapping[str, tuple[str, int]]) -> list[DropRule]:
        return [DropRule(groups[sender], *addresses[receiver]) for sender, receiver in sorted(self.cuts)]

    def pairs(self) -> list[tuple[str, str]]:
        """Every pair of nodes that must see each other UP again once it is healed."""
        return sorted({tuple(sorted(cut)) for cut in self.cuts})


def make_partition(kind: str, node_ids: Sequence[str], target: str) -> Partition:
    """A partition of ``kind`` around ``target`` (for ``bridge``, the node both sides still reach)."""
    others = [node for node in node_ids if node != target]
    if kind == "isolate":
        cuts = {(target, other) for other in others} | {(other, target) for other in others}
        label = f"{target} | {','.join(others)}"
    elif kind == "bridge":
        if len(others) != 2:
            raise ValueError("a bridge partition needs exactly three nodes")
        left, right = others
        cuts = {(left, right), (right, left)}
        label = f"{left} | {right}, both reach {target}"
    elif kind == "one-way":
        cuts = {(target, other) for other in others}
        label = f"{target} -/-> {','.join(others)}"
    else:
        raise ValueError(f"unknown partition kind {kind!r}; known: {', '.join(PARTITION_KINDS)}")
    return Partition(kind, frozenset(cuts), label)
