"""What ``kvwire-cli`` reads and writes: values and tokens read with a bound, JSON read
and written as ``kvwire.client.json_values`` does it, and a stdout that may be gone.

A mistake in what it reads is a usage error (click's BadParameter, exit 2)
naming where the input came from; output it cannot write or a value JSON cannot
carry is a :class:`CommandFailed` (exit 4).
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import IO, Any

import click

from ..client import token_file
from ..client.json_values import UnrepresentableJsonError, json_text, parse_json, shown_with_nan
from ..protocol import DEFAULT_LIMITS, Limits

# JSON may spell a value in more bytes than msgpack does: six for one (a control
# character in a string is "\u0001"), four for three (bytes, as base64).
JSON_BYTES_PER_VALUE_BYTE = 6

class CommandFailed(Exception):
    """A command could not finish for a reason of its own, not the cluster's (exit 4).

    ``str(exc)`` is its one line for stderr; empty when nobody is left to read it.
    """


# --- reading ---------------------------------------------------------------------------


def read_value(path: str, param: str, *, as_json: bool, limits: Limits = DEFAULT_LIMITS) -> tuple[str, bytes]:
    """The bytes of a value to put, from stdin (``path`` '-') or a file, and the name errors
    about them go by; a usage error if unreadable or larger than any value can be: a
    value travels in one frame, so more bytes than ``limits``' frame holds are no value
    kvwire-cli sends (--max-value-bytes raises it, with the nodes' own)."""
    frame = (f"{limits.max_frame_bytes} bytes, the largest frame kvwire-cli sends; raise --max-value-bytes "
             "with the nodes' own for larger values")
    limit = JSON_BYTES_PER_VALUE_BYTE * limits.max_frame_bytes if as_json else limits.max_frame_bytes
    what = (f"more than {limit} bytes of JSON, the most kvwire-cli reads (six times {frame})" if as_json
            else f"more than {limit} bytes, the most kvwire-cli reads ({frame})")
    if path == "-":
        source = f"{param} (stdin)"
        stdin = sys.stdin
        if stdin is None:  # the shell closed fd 0 (`<&-`)
            raise click.BadParameter("cannot read stdin: it is closed", param_hint=source)
        try:
            return source, _read_at_most(stdin.buffer, limit, f"stdin holds {what}", source)
        except OSError as exc:
            raise click.BadParameter(f"cannot read stdin: {exc.strerror or exc}", param_hint=source) from None
    try:
        with open(path, "rb") as file:
            return f"{param} {path!r}", _read_at_most(file, limit, f"{path!r} holds {what}", "'--value-file'")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path!r}: {exc.strerror or exc}", param_hint="'--value-file'") from None


def read_token_file(path: Path) -> str:
    """The token in the file at ``path`` (kvwire.client.token_file), for the callback of the
    option naming the file; a usage error of that option (click names it, and its environment
    variable if it came from there) if the file can't be read, is too large, is not UTF-8 or
    holds only whitespace."""
    try:
        return token_file.read_token_file(path)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def text_option(text: str, param_hint: str | None = None, *, what: str = "it") -> str:
    """``text`` if it is UTF-8 text; else a usage error: "``what`` holds a byte that is not UTF-8",
    naming ``param_hint``, or by default the option whose callback this is (with its
    environment variable, if the value came from there).

    Options and environment variables reach Python with bytes that are not
    UTF-8 as lone surrogates, which nothing can send."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise click.BadParameter(f"{what} holds a byte that is not UTF-8 text, at offset {exc.start}",
                                 param_hint=param_hint) from None
    return text


def _read_at_most(file: IO[bytes], limit: int, too_large: str, param_hint: str) -> bytes:
    data = file.read(limit + 1)
    if len(data) > limit:
        raise click.BadParameter(too_large, param_hint=param_hint)
    return data


def utf8(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"--json needs UTF-8 text, but byte 0x{raw[exc.start]:02x} at offset {exc.start} is not valid UTF-8",
            param_hint=source,
        ) from None


def parse_json_value(text: str, source: str = "'VALUE'") -> Any:
    """A --json value, read strictly (json_values.parse_json); a usage error naming ``source``."""
    try:
        return parse_json(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}): {_excerpt(text)}", param_hint=source) from None
    except ValueError as exc:  # NaN, a number out of range, a name twice, bad $bytes, too deep
        raise click.BadParameter(str(exc), param_hint=source) from None


def _excerpt(text: str, limit: int = 60) -> str:
    """``text`` quoted, cut short if long: a value read from a file may be megabytes."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


# --- writing ---------------------------------------------------------------------------


def json_output(document: Any, *, for_people: bool) -> str:
    """``document`` (holding stored values) as JSON: strict for ``-o json``, and with NaN and
    Infinity as Python and JavaScript print them for people (the text output).

    CommandFailed for a value JSON cannot carry, saying what can show it."""
    try:
        return json_text(document, compact=False, allow_nan=for_people)
    except UnrepresentableJsonError as exc:
        shown_as_text = not for_people and shown_with_nan(document)
        hint = "the text output (-o text) shows it" if shown_as_text else "read it with the Python client"
        raise CommandFailed(f"cannot show the value as JSON: {exc}; {hint}") from None


def check_stdout() -> None:
    """CommandFailed, before the command does anything, if stdout is closed (`>&-`)."""
    if sys.stdout is None:
        raise CommandFailed("stdout is closed; nothing was done, as there is nowhere to say how it went")


# What moves a terminal's cursor, clears it or starts an escape sequence: the C0
# controls but tab and newline, DEL, and C1 (0x9b alone is CSI to some terminals).
_TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def echo(text: str, *, as_json: bool = False) -> None:
    """``text`` and a newline on stdout, flushed; CommandFailed if stdout can't take it.

    Written as it is to a pipe or a file. On a terminal, control characters are
    shown escaped (``\\x1b``; ``\\u001b`` in JSON, where it means the same), so that a
    stored value cannot clear the screen, move the cursor or retitle the window. (In
    the text output a backslash is not escaped: ``\\x1b`` there may be those four
    characters; -o json, or a pipe, tells them apart.)"""
    stream = sys.stdout
    try:
        # Not click.echo: it removes ANSI sequences from text written anywhere but to a terminal.
        _write_all(stream, for_terminal(stream, text, as_json=as_json) + "\n")
    except OSError as exc:
        raise output_failed(exc) from None


def _write_all(stream: IO[str], text: str) -> None:
    """``text`` on ``stream``, flushed: every byte of it, or an OSError.

    Under PYTHONUNBUFFERED (``-u``) sys.stdout writes straight through to the file, and
    TextIOWrapper drops what a short write leaves over: a reader gone partway through a
    large value (``| head -c 10``) got a short write, no error, and kvwire-cli exited 0.
    Written to the bytes beneath in a loop instead, the write after a short one fails (EPIPE)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # not a text layer over bytes (a test's replacement): it is all there is
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    data = memoryview(text.encode(stream.encoding, stream.errors))
    while data:
        written = buffer.write(data)
        if written is None:  # a non-blocking stdout that is full, as a BufferedWriter says it
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        data = data[written:]
    buffer.flush()


def echo_error(text: str) -> None:
    """``text`` on stderr, a line: control characters escaped on a terminal, as
    :func:`echo` does (a node's message may quote a key, and a key may hold them)."""
    try:
        sys.stderr.write(for_terminal(sys.stderr, text) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # no stderr to speak of: nothing to do
        pass


def for_terminal(stream: IO[str], text: str, *, as_json: bool = False) -> str:
    """``text`` with control characters escaped if ``stream`` is a terminal; else as it is."""
    if not stream.isatty():
        return text
    return _TERMINAL_CONTROLS.sub(_json_escape if as_json else _text_escape, text)


def _text_escape(control: re.Match[str]) -> str:
    return f"\\x{ord(control[0]):02x}"


def _json_escape(control: re.Match[str]) -> str:
    return f"\\u{ord(control[0]):04x}"


def flush_stdout() -> None:
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as exc:
        raise output_failed(exc) from None


def output_failed(error: OSError) -> CommandFailed:
    """CommandFailed for stdout refusing a write, with stdout silenced: the interpreter's final
    flush of what is still buffered would fail again, with a message of its own."""
    if sys.stdout is not None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
    if error.errno == errno.EPIPE:
        return CommandFailed("")  # the reader went away (`| head`): nobody to tell
    return CommandFailed(f"cannot write to stdout: {error.strerror or error}")
