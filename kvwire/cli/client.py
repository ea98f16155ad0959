"""``kvwire-cli``: get, put and delete keys and read a node's health from the shell.

Every command runs one ``AsyncClient`` call. Errors end in a one-line message
on stderr and an exit code a script can branch on (see ``EXIT_CODES_HELP``);
never in a traceback.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, NoReturn

import click

from ..client import AsyncClient, RetryPolicy, check_key, check_value
from ..client.aio import DEFAULT_ENDPOINT
from ..client.json_values import BYTES_TAG
from ..client.json_values import version_json as _version_json
from ..protocol import (
    DEFAULT_LIMITS,
    KeyNotFoundError,
    KvwireError,
    Limits,
    ServerError,
    Version,
    format_endpoint,
    parse_endpoints,
)
from ..protocol.limits import FRAME_OVERHEAD_BYTES
from .client_io import (
    CommandFailed,
    check_stdout,
    echo,
    echo_error,
    flush_stdout,
    json_output,
    output_failed,
    parse_json_value,
    read_token_file,
    read_value,
    text_option,
    utf8,
)
from .options import FilePath, Seconds, client_ssl_context, client_tls_options, env, from_environment

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2  # click's own code for usage errors
EXIT_UNAVAILABLE = 3  # the error is transient: the cluster could not serve the request now
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

EPILOG = f"""\b
Exit codes:
  0  success
  1  key not found (get, delete)
  2  usage error: bad option, endpoint, key or --json value;
     put: VALUE and --value-file both or neither given, or the
     value file or stdin unreadable (or, with --json, not UTF-8)
  3  cluster unavailable, try again later: no node reachable or
     answering sensibly, timeout, UNAVAILABLE or NO_QUORUM reply
     (health: no quorum); also CONFLICT (delete raced with a write):
     like NO_QUORUM, the write may or may not have been applied;
     a put or delete sent and not answered says it may have been
  4  the node refused the request (bad request, too large,
     forbidden, unknown op) or failed internally: any other error,
     such as a value -o json cannot show (NaN: see -o text), or a
     stdout it cannot write (closed: nothing is done; its reader
     gone, as after | head -0 or partway through a value, as
     | head -c 10: no message, a put or delete done)
  130  interrupted (Ctrl-C)

\b
Output (-o/--output, before or after the command):
  text  get prints a str value as is and any other value as JSON;
        put/delete print the new version; health prints one
        "field: value" line per (dotted) field.
  On a terminal, control characters (an escape, a carriage return)
  are shown escaped (\\x1b, and \\u001b in JSON); to a pipe or a
  file, output is exact.
  json  one JSON document on stdout:
        get     {{"key": K, "value": V, "version": {{"counter": C, "node": N}}}}
        put     {{"key": K, "version": {{...}}}}      delete: the same
        health  the node's health map as it sent it
\b
Bytes values appear in JSON as {{"{BYTES_TAG}": "<base64>"}}, and bytes map
keys as "{BYTES_TAG}:<base64>"; put --json accepts the same object form to
store bytes. Errors always go to stderr as one line.
"""

PUT_EPILOG = """\b
Examples:
  kvwire-cli put k hello                   the string "hello"
  kvwire-cli put k '{"n": 1}' --json       a map
  kvwire-cli put k - < photo.jpg           the file's bytes (msgpack bin)
  kvwire-cli put k --value-file photo.jpg  the same
  kvwire-cli put k - --json < doc.json     a map read from stdin
  kvwire-cli put k '"-"' --json            the one-character string "-"
  kvwire-cli put k --json -- -5            the number -5: after '--', a
                                           KEY or VALUE may begin with '-'

\b
--value-file /dev/stdin is the same as VALUE '-'. A value over the node's
max value size is refused by the node (exit 4, "too large"); a file or
stdin larger than any value can be (a frame: 4 MiB, or a key and a value of
--max-value-bytes if larger; six times that as JSON) is a usage error.
"""

OUTPUT_CHOICE = click.Choice(["text", "json"])


class _Settings:
    """What the group's options decided, handed to the subcommands."""

    def __init__(self, endpoints: list[str], timeout: float, cluster: str | None, output: str,
                 ssl_context: ssl.SSLContext | None = None, token: str | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.token = token
        self.limits = limits
        self.endpoints = endpoints
        self.timeout = timeout
        self.cluster = cluster
        self.output = output
        self.ssl_context = ssl_context


def _endpoints_option(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    text_option(value)
    try:
        return [format_endpoint(host, port) for host, port in parse_endpoints(value)]
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None


def _cluster_id_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    if not value:
        raise click.BadParameter("it is empty; leave the option out to accept nodes of any cluster")
    return text_option(value)


def _token_option(ctx: click.Context, param: click.Parameter, path: Path | None) -> str | None:
    """The token in the file at ``path``, else in KVWIRE_TOKEN (unset if blank), whitespace
    around it dropped either way; never echoed, even in errors."""
    if path is not None:
        return read_token_file(path)
    return text_option(os.environ.get("KVWIRE_TOKEN", "").strip(), "KVWIRE_TOKEN") or None


def _key_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    settings = ctx.find_object(_Settings)  # the group's callback has run: its options are read
    try:
        return check_key(value, settings.limits if settings is not None else DEFAULT_LIMITS)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None


def _client_limits(max_key_bytes: int, max_value_bytes: int) -> Limits:
    """The client's limits for the nodes' key and value limits: a frame must hold the
    largest key with the largest value (kvwire.protocol.limits), and is never below
    the default frame, so that a node's HEALTH or an error always fits."""
    try:
        return Limits(max_key_bytes=max_key_bytes, max_value_bytes=max_value_bytes,
                      max_frame_bytes=max(DEFAULT_LIMITS.max_frame_bytes,
                                          max_key_bytes + max_value_bytes + FRAME_OVERHEAD_BYTES))
    except ValueError:  # only the frame can be out of range: both are at least 1
        raise click.UsageError(
            f"--max-key-bytes {max_key_bytes} with --max-value-bytes {max_value_bytes} is too large: a frame holding "
            "such a key and value would not fit the 4-byte length prefix"
            + from_environment(click.get_current_context(), ("max_key_bytes", "max_value_bytes"))) from None


class _Command(click.Command):
    """A command whose --help (or --version) to a closed stdout or a gone reader exits 4, not
    click's 1 ("key not found"): reading the command line writes nothing else."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except OSError as exc:
            raise output_failed(exc) from None


class _Group(_Command, click.Group):
    command_class = _Command


def _output_option(function: Callable) -> Callable:
    return click.option(
        "-o", "--output", type=OUTPUT_CHOICE, default=None, help="Output format (overrides the one given before the command)."
    )(function)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--endpoints",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    **env("ENDPOINTS"),
    metavar="HOST:PORT[,HOST:PORT...]",
    callback=_endpoints_option,
    help="Nodes to talk to; after a connection failure, a timeout or an UNAVAILABLE reply the next one is tried.",
)
@click.option(
    "--timeout",
    type=Seconds(min=0, min_open=True, max=86400),
    default=5.0,
    show_default=True,
    **env("TIMEOUT"),
    help="Seconds the whole command may take, connecting and failing over included.",
)
@click.option(
    "--cluster-id",
    default=None,
    **env("CLUSTER_ID"),
    callback=_cluster_id_option,
    help="Refuse nodes that belong to another cluster.",
)
@click.option(
    "--token-file",
    "token",
    type=FilePath(),
    default=None,
    **env("TOKEN_FILE"),
    callback=_token_option,
    help="Read the access token (for nodes with an auth file) from this file, whitespace around it dropped; "
         "KVWIRE_TOKEN may hold the token itself.",
)
@click.option(
    "--max-key-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMITS.max_key_bytes,
    show_default=True,
    **env("MAX_KEY_BYTES"),
    help="Refuse a key longer than this, in UTF-8 bytes, before sending it: the nodes' --max-key-bytes.",
)
@click.option(
    "--max-value-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMITS.max_value_bytes,
    show_default=True,
    **env("MAX_VALUE_BYTES"),
    help="The nodes' --max-value-bytes: above 4 MiB less a key, values as large are read from files and stdin, "
         "and taken in replies (the node refuses one over its own).",
)
@client_tls_options
@click.option("-o", "--output", type=OUTPUT_CHOICE, default="text", show_default=True, help="Output format.")
@click.version_option(package_name="kvwire")
@click.pass_context
def cli(ctx: click.Context, endpoints: list[str], timeout: float, cluster_id: str | None, token: str | None,
        max_key_bytes: int, max_value_bytes: int, output: str, **tls_options: Any) -> None:
    """Talk to kvwire nodes: get, put and delete keys, and read a node's health."""
    limits = _client_limits(max_key_bytes, max_value_bytes)
    ctx.obj = _Settings(endpoints, timeout, cluster_id, output, ssl_context=client_ssl_context(tls_options),
                        token=token, limits=limits)


@cli.command()
@click.argument("key", callback=_key_argument)
@click.option(
    "--consistency",
    type=click.Choice(["one", "quorum"]),
    default=None,
    help="quorum: linearizable (the node's default); one: the contacted node's copy, which needs no quorum but may be stale.",
)
@_output_option
@click.pass_obj
def get(settings: _Settings, key: str, consistency: str | None, output: str | None) -> None:
    """Print the value stored under KEY."""
    value, version = _run(settings, lambda client: client.get_with_version(key, consistency=consistency))
    if _format(settings, output) == "json":
        echo(json_output({"key": key, "value": value, "version": _version_json(version)}, for_people=False), as_json=True)
    else:
        echo(_shown(value))


@cli.command(epilog=PUT_EPILOG)
@click.argument("key", callback=_key_argument)
@click.argument("value", required=False)
@click.option(
    "--value-file",
    metavar="PATH",
    default=None,
    help="Read the value from the file at PATH instead (raw bytes unless --json; '-' is stdin).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help=f'Parse the value as JSON (bytes as {{"{BYTES_TAG}": "<base64>"}}); from stdin or a file it must be UTF-8.',
)
@_output_option
@click.pass_obj
def put(
    settings: _Settings, key: str, value: str | None, value_file: str | None, as_json: bool, output: str | None
) -> None:
    """Store a value under KEY: VALUE as a string, or JSON with --json.

    VALUE '-' reads the value from stdin, and --value-file PATH from a file:
    as raw bytes (stored as msgpack bin) unless --json is given. Use either
    for values too long for the command line.
    """
    if value is not None and value_file is not None:
        raise click.UsageError("give VALUE or --value-file, not both")
    if value is None and value_file is None:
        raise click.UsageError("missing the value: give VALUE, '-' to read stdin, or --value-file PATH")
    if value_file is None and value != "-":
        source = "'VALUE'"
        stored: Any = parse_json_value(value, source) if as_json else value
    else:
        path = value_file if value_file is not None else "-"
        source, raw = read_value(path, "'--value-file'" if value_file is not None else "'VALUE'", as_json=as_json,
                                 limits=settings.limits)
        stored = parse_json_value(utf8(raw, source), source) if as_json else raw
    try:
        check_value(stored)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint=source) from None
    version = _run(settings, lambda client: client.put(key, stored))
    _echo_version(settings, output, key, version, "OK")


@cli.command()
@click.argument("key", callback=_key_argument)
@_output_option
@click.pass_obj
def delete(settings: _Settings, key: str, output: str | None) -> None:
    """Delete KEY."""
    version = _run(settings, lambda client: client.delete(key))
    _echo_version(settings, output, key, version, "deleted")


@cli.command()
@_output_option
@click.pass_obj
def health(settings: _Settings, output: str | None) -> None:
    """Print the health report of the first node that answers."""
    report = _run(settings, lambda client: client.health())
    if _format(settings, output) == "json":
        echo(json_output(report, for_people=False), as_json=True)
    else:
        for name, value in _flatten(report):
            echo(f"{name}: {_shown(value)}")
    cluster = report.get("cluster")
    if isinstance(cluster, dict) and cluster.get("has_quorum") is False:
        raise click.exceptions.Exit(EXIT_UNAVAILABLE)


# --- running a call --------------------------------------------------------------------


def _run(settings: _Settings, call: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        # Every endpoint given is tried before the call fails (within --timeout): the
        # client's default of 3 attempts left a fourth node, up, untried (a probe, 2026-12-07).
        retry = RetryPolicy(attempts=max(RetryPolicy().attempts, len(settings.endpoints)))
        async with AsyncClient(settings.endpoints, timeout=settings.timeout, cluster=settings.cluster,
                               tls=settings.ssl_context, token=settings.token, limits=settings.limits,
                               retry=retry) as client:
            return await call(client)

    return asyncio.run(run())


def _format(settings: _Settings, output: str | None) -> str:
    return output if output is not None else settings.output


# --- text output -----------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A value as the text output shows it: a str as it is, anything else as JSON."""
    return value if isinstance(value, str) else json_output(value, for_people=True)


def _echo_version(settings: _Settings, output: str | None, key: str, version: Version, word: str) -> None:
    if _format(settings, output) == "json":
        echo(json_output({"key": key, "version": _version_json(version)}, for_people=False), as_json=True)
    else:
        echo(f"{word} (version {version.counter} by {version.node})")


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    lines = []
    for name, value in mapping.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            lines.extend(_flatten(value, f"{dotted}."))
        else:
            lines.append((dotted, value))
    return lines


# --- entry point -----------------------------------------------------------------------


def exit_code_for(error: KvwireError) -> int:
    """The documented exit code for an error a command ended with.

    Read from the error tree (``KvwireError.transient``), not from a list of
    classes, so that the REST bridge's 503s and these 3s cannot drift apart.
    """
    if isinstance(error, KeyNotFoundError):
        return EXIT_NOT_FOUND
    return EXIT_UNAVAILABLE if error.transient else EXIT_REFUSED


def main(argv: list[str] | None = None) -> NoReturn:
    """Run ``kvwire-cli``; always ends in ``sys.exit`` with a documented code."""
    try:
        check_stdout()
        result = cli.main(args=argv, prog_name="kvwire-cli", standalone_mode=False)
        code = result if isinstance(result, int) else EXIT_OK
        flush_stdout()
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.Abort:
        code = EXIT_INTERRUPTED  # click has turned a KeyboardInterrupt into Abort
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except KvwireError as exc:
        # One line, as promised, whatever the node's message holds.
        echo_error(f"kvwire-cli: {' '.join(_describe(exc).splitlines())}")
        code = exit_code_for(exc)
    except CommandFailed as exc:
        if str(exc):
            echo_error(f"kvwire-cli: {exc}")
        code = EXIT_REFUSED
    except Exception as exc:  # a bug of ours; still one line, as promised
        echo_error(f"kvwire-cli: unexpected error: {type(exc).__name__}: {exc}")
        code = EXIT_REFUSED
    sys.exit(code)


def _describe(error: KvwireError) -> str:
    text = str(error)
    if isinstance(error, ServerError) and not isinstance(error, KeyNotFoundError):
        # Name the wire code: "no quorum: ..." says more than the bare message.
        code = getattr(error.code, "name", str(error.code))
        text = f"{code.lower().replace('_', ' ')}: {text}"
    if error.maybe_applied is True and "applied" not in text:
        # Exit 3 reads "try again later"; a write that timed out or lost its connection
        # may have been applied, and a DELETE sent again may erase a later write.
        text += "; it may have been applied: read the key before sending it again"
    return text


if __name__ == "__main__":
    main()
