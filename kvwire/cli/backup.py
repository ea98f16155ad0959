"""``kvwire backup DATA_DIR DESTINATION``: a running node's data, copied into a data directory that rejoins."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ..server.backup import BackupError, back_up
from .options import DirectoryPath, GivenPath


class _Stopped(BaseException):
    """SIGTERM (systemd's stop, ``timeout``) while copying: unwinds as a Ctrl-C does."""


class _Interruptions:
    """SIGTERM and Ctrl-C unwind the backup until its copy is in place; after, the copy is
    whole and kept, so they let the backup end and say so, rather than report a failure."""

    def __init__(self) -> None:
        self.committed = False
        self.late: str | None = None

    def commit(self) -> None:
        self.committed = True

    def handle(self, signum: int, frame: object) -> None:
        if self.committed:
            self.late = signal.Signals(signum).name
        elif signum == signal.SIGTERM:
            raise _Stopped
        else:
            raise KeyboardInterrupt


@click.command()
@click.argument("data_dir", type=DirectoryPath())
@click.argument("destination", type=GivenPath())
def backup(data_dir: Path, destination: Path) -> None:
    """Copy the node data in DATA_DIR (a node's --data-dir) to DESTINATION, a new directory.

    The node may be running: the copy is of one committed moment (SQLite's
    online backup), not of files being written. DESTINATION is a data
    directory for the same node id, marked as joining: a node started on it
    takes no part in majorities until it has caught up from every peer, so
    the writes made since the backup come back from them.

    \b
    To restore a node: stop it, move its data directory aside, put
    DESTINATION in its place, start it as before.
    """
    interruptions = _Interruptions()
    previous = {signum: signal.signal(signum, interruptions.handle) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        summary = back_up(data_dir, destination, on_committed=interruptions.commit)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    except (_Stopped, KeyboardInterrupt) as exc:
        # back_up removed its partial copy on the way out. Ctrl-C too exits 128 + the
        # signal, as every kvwire command does (click's own "Aborted!" exits 1).
        stopped_by = signal.SIGTERM if isinstance(exc, _Stopped) else signal.SIGINT
        click.echo(f"backup stopped by {stopped_by.name}; nothing was left in {destination}", err=True)
        sys.exit(128 + stopped_by)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if interruptions.late:
        click.echo(f"{interruptions.late} came once the copy was in place: it is whole, and kept", err=True)
    click.echo(f"backed up node {summary.node_id}: {summary.keys} keys and {summary.tombstones} tombstones, "
               f"{summary.bytes} bytes, to {summary.path}")
    click.echo(f"to restore: stop node {summary.node_id}, put {summary.path} in place of its --data-dir, start it; "
               "it rejoins, catching up from every peer before it takes part in majorities")
