"""The console scripts' entry points: ``kvwire`` and ``kvwire-cli`` (setup.py).

Importing the commands (asyncio, click, the protocol and the server) takes a
tenth of a second or more, and a Ctrl-C meanwhile used to end in a
KeyboardInterrupt traceback. These functions import nothing heavy before they
take over SIGINT: until a command installs its own handling, a Ctrl-C ends the
process quietly, with the status the README gives a Ctrl-C of that command.
Only the standard library (and early_sigint, which imports nothing) may be imported here.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator  # not typing's: importing typing took ~4 ms, Ctrl-C unhandled meanwhile
from contextlib import contextmanager

from . import early_sigint

# kvwire-cli, and any kvwire command interrupted before it did its work: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130
# These run until SIGTERM or SIGINT and then exit 0 (README "kvwire serve", "kvwire up",
# "kvwire bridge"); a Ctrl-C before they got going asks for the same, and nothing runs yet.
RUN_UNTIL_STOPPED = frozenset({"serve", "bridge", "up"})


def kvwire() -> None:
    """``kvwire``: serve, bridge and up keep the handler until they install their own; the other
    commands get KeyboardInterrupt back once imported (bench, stopped, writes what it measured)."""
    status = interrupted_status(sys.argv[1:])
    installed = _exit_on_sigint(status)
    if installed and status == 0:
        # serve, bridge and up exit 0 after SIGTERM and SIGHUP too (README), and were
        # killed by either in their first tenth of a second (a deploy probe's finding).
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, signal.getsignal(signal.SIGINT))
    closed = fill_closed_standard_fds()
    if 1 in closed:
        refuse_without_stdout(sys.argv[1:])
    with exit_quietly_once_interrupted(status), one_line_when_stdout_fails():
        from .main import main

        if installed and status != 0:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        main()


def kvwire_cli() -> None:
    """``kvwire-cli``: one get, put, delete or health; a Ctrl-C at any point exits 130."""
    _exit_on_sigint(EXIT_INTERRUPTED)
    with exit_quietly_once_interrupted(EXIT_INTERRUPTED):
        from .client import main

        main()


@contextmanager
def exit_quietly_once_interrupted(status: int) -> Iterator[None]:
    """The early handler's SystemExit, raised where Python wraps it in another error,
    is still the exit a Ctrl-C asked for. Seen in CI: SIGINT during a class definition
    of an import, and dataclasses' ``__set_name__`` turned the SystemExit into
    "RuntimeError: Error calling __set_name__", a traceback and exit 1."""
    try:
        yield
    except SystemExit:
        raise
    except BaseException:
        if early_sigint.received:
            raise SystemExit(status) from None
        raise


@contextmanager
def one_line_when_stdout_fails() -> Iterator[None]:
    """A command whose output could not be written (stdout a full disk, /dev/full) ended
    in a traceback, exit 1, though what it was run for was done (a secret, a backup
    written): one line and exit 1 instead. click already handles a reader gone (EPIPE)."""
    try:
        yield
    except OSError as exc:
        if not _raised_writing_stdout(exc):
            raise
        from .client_io import output_failed  # kvwire-cli's own: stdout silenced, the line to say

        message = str(output_failed(exc))
        if message:  # empty for a reader gone: nobody to tell
            sys.stderr.write(f"kvwire: {message}; what the command did before its output is done\n")
        raise SystemExit(1) from None


def _raised_writing_stdout(error: OSError) -> bool:
    """Whether ``error`` came from a write to stdout: the innermost frame was writing its
    ``file`` argument (click's echo), and that file is stdout."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    target = tb.tb_frame.f_locals.get("file")
    stdout = sys.stdout
    return target is not None and stdout is not None and target in (stdout, getattr(stdout, "buffer", None))


def fill_closed_standard_fds() -> list[int]:
    """Open /dev/null on any of fds 0-2 that is closed (``kvwire bench >&-``); which were.

    The next file opened would take that number: a node's socket, or kvload's pipe,
    as fd 1 or 2. uvloop aborts the process when it closes a handle numbered 2 or
    less (libuv's ``uv__close`` asserts ``fd > STDERR_FILENO``), and anything
    written to stdout or stderr would go to that socket. Python has set
    ``sys.stdout``/``sys.stderr`` to None already; they become writers to /dev/null,
    so that output is dropped and a flush is no error (``kvwire up 2>&-`` fell over
    on its first line to stderr, when a node died, and took the cluster down).
    """
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one, as the lower ones are open
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    return closed


def refuse_without_stdout(args: list[str]) -> None:
    """Exit 1 before doing anything when stdout was closed (``>&-``) for a command that
    reports on it and ends: it did its work and said nothing, exit 0 (a probe), as if
    the output had been written. serve, bridge and up run on, their output dropped."""
    if args[:1] and args[0] in RUN_UNTIL_STOPPED and args[1:2] != ["ctl"]:
        return
    sys.stderr.write("kvwire: stdout is closed; nothing was done, as there is nowhere to say how it went\n")
    raise SystemExit(1)


def interrupted_status(args: list[str]) -> int:
    """The exit status of ``kvwire ARGS`` stopped by SIGINT before its command installed a handler."""
    # `kvwire up ctl ...` is a one-off request to a running `up` (`up` refuses options before ctl).
    if args[:1] and args[0] in RUN_UNTIL_STOPPED and args[1:2] != ["ctl"]:
        return 0
    return EXIT_INTERRUPTED


def _exit_on_sigint(status: int) -> bool:
    """Make SIGINT raise SystemExit(status), which prints nothing; whether it was installed.

    Not when SIGINT is ignored: a job started in the background by a shell script
    inherits it ignored, and Python leaves it so; so do we.
    """
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False

    def interrupted(signum: int, frame: object) -> None:
        early_sigint.received = True  # in case the SystemExit is swallowed where it is raised
        early_sigint.signum = signum
        raise SystemExit(status)

    report_unraisable = sys.unraisablehook

    def quiet_about_our_exit(unraisable: object) -> None:
        # Raised inside a callback Python cannot leave by an exception (an import
        # lock's weakref callback, a finalizer), our SystemExit is only reported:
        # "Exception ignored in ...", a traceback. The process stops anyway
        # (early_sigint.received), so that report is noise; any other stays.
        if isinstance(getattr(unraisable, "exc_value", None), SystemExit) and early_sigint.received:
            return
        report_unraisable(unraisable)

    sys.unraisablehook = quiet_about_our_exit
    signal.signal(signal.SIGINT, interrupted)
    return True
