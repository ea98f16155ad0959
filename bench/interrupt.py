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
import sys
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


def _redeliver_dropped_interrupt(unraisable: Any) -> None:
    """sys.unraisablehook while a command runs: a KeyboardInterrupt raised where Python
    drops exceptions (a fork's at-fork hook, such as logging's, as a node starts) is
    delivered again, at the next point that can raise it, as a Ctrl-C would be."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        # A real SIGINT to the main thread (it wakes a blocking call there), from another
        # thread a moment later: raised inside this hook, it would be dropped again.
        main = threading.main_thread().ident
        threading.Timer(0.01, signal.pthread_kill, (main, signal.SIGINT)).start()
    else:
        sys.__unraisablehook__(unraisable)


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
            previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver_dropped_interrupt
            try:
                result = function(*args, **kwargs)
            except KeyboardInterrupt:
                exit_interrupted(click.get_current_context(), what)
            finally:
                sys.unraisablehook = previous_hook
                if in_main_thread:
                    signal.signal(signal.SIGTERM, previous)
            if _received:
                # Its KeyboardInterrupt was dropped where not even the hook above saw it
                # (or came as the command returned): it was asked to stop, so not 0.
                exit_interrupted(click.get_current_context(), what)
            return result

        return run  # type: ignore[return-value]

    return decorate
