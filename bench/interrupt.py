"""How a benchmark ends when it is asked to stop: SIGTERM does what Ctrl-C does, then 128 + the signal.

A benchmark starts nodes, HAProxy, load workers, kvload and temporary
directories, and stops or removes them in ``with`` blocks and ``finally``
clauses. Ctrl-C (KeyboardInterrupt) unwinds through those; SIGTERM's default
action would end the process at once, leaving the nodes running under init and
their data in /tmp. So, while a command runs, SIGTERM does whatever SIGINT would
do at that moment: inside ``uvloop.run`` that is asyncio's handler, which
cancels the main task and then raises KeyboardInterrupt; elsewhere it raises
KeyboardInterrupt where the main thread is. Either way the same cleanup runs.

The command then prints one line and exits 128 + the signal (130 for Ctrl-C, 143
for SIGTERM), as ``kvwire chaos`` does, never 0: an interrupted run measured less
than it was asked to.
"""

from __future__ import annotations

import functools
import signal
import threading
from typing import Any, Callable, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# Signals received while a command ran; the first names the interruption.
_received: list[int] = []


def _on_sigterm(signum: int, frame: Any) -> None:
    if _received:  # already stopping: a second signal must not break off the cleanup
        return
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    # asyncio.Runner's handler (inside uvloop.run) cancels the main task, so that its
    # own cleanup runs on the loop, and raises KeyboardInterrupt once it has.
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
    else:  # the default handler, or SIGINT ignored (a background job): what Ctrl-C does by default
        raise KeyboardInterrupt


def interrupted_by() -> int:
    """The signal that stopped the command: SIGTERM if one came, else SIGINT (a KeyboardInterrupt)."""
    return _received[0] if _received else signal.SIGINT


def exit_interrupted(ctx: click.Context, what: str) -> None:
    """Print ``<command>: interrupted by SIG...; <what>`` and exit 128 + the signal."""
    signum = interrupted_by()
    click.echo(f"{ctx.command_path}: interrupted by {signal.Signals(signum).name}; {what}", err=True)
    ctx.exit(128 + signum)


def stops_cleanly(what: str = "everything it started was stopped") -> Callable[[F], F]:
    """Decorate a command's function (below its click decorators): SIGTERM acts as
    Ctrl-C while it runs, and either ends it with one line and 128 + the signal."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            _received.clear()
            in_main_thread = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
            try:
                result = function(*args, **kwargs)
            except KeyboardInterrupt:
                exit_interrupted(click.get_current_context(), what)
            finally:
                if in_main_thread:
                    signal.signal(signal.SIGTERM, previous)
            if _received:
                # The KeyboardInterrupt was raised where Python drops exceptions (a
                # fork's at-fork hook, e.g. logging's _releaseLock, as a node started):
                # the run went on to its end, but it was asked to stop, so not 0.
                exit_interrupted(click.get_current_context(), what)
            return result

        return run  # type: ignore[return-value]

    return decorate
