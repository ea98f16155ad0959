"""Network partitions on one machine: iptables DROP rules in a chain of our own.

Every peer link leaves from 127.0.0.1 whatever address its node listens on,
so rules on source addresses would cut the clients too. Instead each node runs
under a group id of its own, and a cut "node A cannot reach node B" is one rule
in OUTPUT: packets owned by A's gid, to B's address and port. Clients (this
process, another gid) are never matched.

The rules live in one chain, ``KVWIRE-CHAOS-<pid>``, jumped to from OUTPUT;
:meth:`Firewall.remove` deletes the jump and the chain and is safe to call
twice (from ``finally``, a signal handler and ``atexit``). Chains left behind
by a run that was killed (its pid is gone) are removed by the next run.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

CHAIN_PREFIX = "KVWIRE-CHAOS-"
# iptables takes the xtables lock; -w waits for it rather than failing when
# another iptables runs at the same moment.
_IPTABLES = ("iptables", "-w", "5")
_STALE_CHAIN = re.compile(rf"^-N ({re.escape(CHAIN_PREFIX)}(\d+))$", re.MULTILINE)


class FirewallUnavailable(RuntimeError):
    """iptables cannot be used here (not root, not installed, no netfilter or no owner match)."""


@dataclass(frozen=True, slots=True)
class DropRule:
    """Drop TCP packets sent by processes of group ``gid`` to ``host:port``."""

    gid: int
    host: str
    port: int

    def arguments(self) -> list[str]:
        return ["-p", "tcp", "-d", self.host, "--dport", str(self.port), "-m", "owner", "--gid-owner", str(self.gid), "-j", "DROP"]


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run([*_IPTABLES, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise FirewallUnavailable(
            "iptables is not installed (apt-get install -y iptables); partitions need it, or leave them out with --faults"
        ) from None
    if check and result.returncode != 0:
        raise FirewallUnavailable(f"iptables {' '.join(args)} failed: {result.stderr.strip() or result.returncode}")
    return result


def chain_name(pid: int | None = None) -> str:
    return f"{CHAIN_PREFIX}{os.getpid() if pid is None else pid}"


def existing_chains() -> list[str]:
    """Every chain of a chaos run, ours included, that the filter table holds."""
    return [match.group(1) for match in _STALE_CHAIN.finditer(iptables("-S").stdout)]


def delete_chain(chain: str) -> None:
    """Remove every jump to ``chain`` from OUTPUT, then the chain; nothing if it is gone."""
    while iptables("-D", "OUTPUT", "-j", chain, check=False).returncode == 0:
        pass
    if iptables("-F", chain, check=False).returncode == 0:
        iptables("-X", chain, check=False)


def remove_stale_chains() -> list[str]:
    """Remove the chains of chaos runs whose process is gone (killed before it could clean up)."""
    removed = []
    for chain in existing_chains():
        pid = int(chain[len(CHAIN_PREFIX):])
        if not _process_exists(pid):
            delete_chain(chain)
            removed.append(chain)
    return removed


def remove_stale_chains_if_root() -> list[str]:
    """remove_stale_chains for a run without partitions: as root, where iptables is
    installed and works, and nothing otherwise (such a run needs neither). A chain a
    killed run left was removed only by a later run with partitions, where the README
    says the next run removes it (a tools probe's finding)."""
    if os.geteuid() != 0:
        return []
    try:
        return remove_stale_chains()
    except FirewallUnavailable:
        return []


class Firewall:
    """The chain of this run: created by :meth:`install`, emptied by :meth:`heal`, deleted by :meth:`remove`."""

    def __init__(self, chain: str | None = None) -> None:
        self.chain = chain or chain_name()
        self.installed = False

    def install(self) -> Firewall:
        if os.geteuid() != 0:
            raise FirewallUnavailable("partitions need root (iptables); run as root or leave them out with --faults")
        remove_stale_chains()
        delete_chain(self.chain)  # a previous run that had our pid
        iptables("-N", self.chain)
        self.installed = True
        try:
            # Check now that the owner match works, rather than mid-run.
            probe = DropRule(gid=os.getgid(), host="127.0.0.1", port=9)
            iptables("-A", self.chain, *probe.arguments())
            iptables("-F", self.chain)
            iptables("-I", "OUTPUT", "1", "-j", self.chain)
        except BaseException:
            self.remove()
            raise
        return self

    def drop(self, rules: list[DropRule]) -> None:
        for rule in rules:
            iptables("-A", self.chain, *rule.arguments())

    def heal(self) -> None:
        """Remove every drop rule; the chain and its jump stay."""
        if self.installed:
            iptables("-F", self.chain, check=False)

    def rules(self) -> list[str]:
        """The chain's rules as ``iptables -S`` prints them (without the ``-N`` line)."""
        result = iptables("-S", self.chain, check=False)
        return [line for line in result.stdout.splitlines() if line.startswith("-A ")]

    def remove(self) -> None:
        if self.installed:
            self.installed = False
            delete_chain(self.chain)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
