"""What the commands of ``kvwire`` share: environment variables for options, and logging."""

from __future__ import annotations

import math
import re
import ssl
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import click
from click.core import ParameterSource

from ..protocol.address import parse_endpoints, parse_host_port
from ..tls import TlsConfigError, TlsFiles, optional_client_context
from .logformat import LOG_FORMATS, install

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"])
LOG_FORMAT_CHOICES = click.Choice(list(LOG_FORMATS))


class GivenPath(click.Path):
    """A path as a ``pathlib.Path``; refuses '', which Path() would make '.', the current
    directory: ``--data-dir ''`` served from it, ``kvwire certs ''`` wrote there."""

    def __init__(self, *, file_okay: bool = True, dir_okay: bool = True) -> None:
        super().__init__(file_okay=file_okay, dir_okay=dir_okay, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():  # "  " too: surely no path meant
            self.fail("the path is empty", param, ctx)
        return super().convert(value, param, ctx)


class FilePath(GivenPath):
    """A file's path (not a directory's), as GivenPath."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False)


class Seconds(click.FloatRange):
    """A FloatRange that refuses NaN, which passes every range check (all comparisons are false),
    and says what it wants of a value that is no number (click's "is not a valid float range")."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


class Address(click.ParamType):
    """HOST:PORT (``many``: a comma-separated list of them), checked as click reads it, so
    that a refusal names its option, and its variable when the environment gave it: checked
    with the rest of the settings, ``'abc' is not HOST:PORT`` named neither. The value
    stays the text given; the command parses it again where it uses it."""

    name = "address"

    def __init__(self, *, many: bool = False) -> None:
        self.many = many

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            (parse_endpoints if self.many else parse_host_port)(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return value


class DirectoryPath(GivenPath):
    """A directory's path (not a file's), as GivenPath."""

    def __init__(self) -> None:
        super().__init__(file_okay=False)


# A quoted value in a message: '...' or "...", as repr() writes them; a quote mark
# after a letter is an apostrophe ("the node's", "its peers'"), not a quote.
_QUOTED = re.compile(r"""((?<!\w)'[^']*'(?!\w)|(?<!\w)"[^"]*"(?!\w))""")


def usage_error(message: str) -> click.UsageError:
    """A usage error for what the command's own checks refused (a config's ``__post_init__``),
    worded as the user gave the settings: a setting's field name in ``message`` becomes its
    option (``failure_timeout`` -> ``--failure-timeout``), and the settings the environment
    gave are named, so that the faulty line of an environment file can be found."""
    context = click.get_current_context()
    options = [param for param in context.command.params if isinstance(param, click.Option) and param.name]
    # One-word names ("port", "sync") are words of the message too; quoted values and
    # paths (a file named tls_cert.pem) are the user's own and stay as they are.
    renamed = {option.name: option.opts[0] for option in options if "_" in option.name}
    if renamed:
        field = re.compile(rf"(?<![^\s(])({'|'.join(map(re.escape, renamed))})(?=[\s),:;=]|\.(?!\w)|$)")
        parts = _QUOTED.split(message)
        message = "".join(part if index % 2 else field.sub(lambda match: renamed[match[1]], part)
                          for index, part in enumerate(parts))
    # The variables of the options the message names, if it names any: every variable
    # set, named after "--tls-ca /nonexistent: no such file", sent people to KVWIRE_LOG_LEVEL.
    named = [option.name for option in options
             if any(re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", message) for opt in option.opts)]
    return click.UsageError(message + from_environment(context, named or None))


def from_environment(ctx: click.Context | None, names: Iterable[str] | None = None) -> str:
    """The note ``" (settings from the environment: KVWIRE_...)"`` naming the variables that
    gave the options of ``ctx``'s command called ``names`` (any, for None); "" if none did.
    An error about such a value adds it, as it names the option of one given on the command line."""
    if ctx is None:
        return ""
    variables = [param.envvar for param in ctx.command.params
                 if isinstance(param, click.Option) and isinstance(param.envvar, str) and param.name
                 and (names is None or param.name in names)
                 and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT]
    return f" (settings from the environment: {', '.join(variables)})" if variables else ""


class EnvOption(click.Option):
    """An option that may come from an environment variable, which --help shows. A value
    refused names the variable only when the value came from it: click names it
    always, which sent people looking for an environment line that did not exist."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return click.Parameter.get_error_hint(self, ctx) + from_environment(ctx, [self.name])


def env(name: str) -> dict:
    """Keyword arguments of ``click.option`` that read it from ``KVWIRE_<name>`` and say so in --help."""
    return {"envvar": f"KVWIRE_{name}", "show_envvar": True, "cls": EnvOption}


def log_format_option():
    """``--log-format text|json`` (``KVWIRE_LOG_FORMAT``), for the commands that log."""
    return click.option(
        "--log-format", type=LOG_FORMAT_CHOICES, default="text", show_default=True,
        help="text: TIME LEVEL LOGGER: message key=value...; json: one JSON object per line.", **env("LOG_FORMAT"),
    )


def allowed_hosts_option(name: str, env_name: str):
    """The option naming the host names a plain-HTTP bridge answers for (http_bridge/hosts.py);
    its value is a tuple of names, checked where the bridge's config is built."""
    return click.option(
        name, "allowed_hosts", default="", metavar="NAME[,...]", callback=_comma_list,
        help="Host names a plain-HTTP REST API answers for besides IP addresses and localhost ('*': any); "
             "a request for another name gets 421, against DNS rebinding.  [default: none]", **env(env_name),
    )


def _comma_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def tls_file_options(*, cert: str, ca: str) -> Callable[[Callable], Callable]:
    """``--tls-cert``, ``--tls-key`` and ``--tls-ca`` (``KVWIRE_TLS_CERT``, ...), with the
    command's own help for the certificate and the CA; :func:`tls_files` reads them."""
    path = FilePath()

    def decorate(function: Callable) -> Callable:
        function = click.option("--tls-ca", type=path, default=None, metavar="PEM", help=ca, **env("TLS_CA"))(function)
        function = click.option("--tls-key", type=path, default=None, metavar="PEM",
                                help="The private key of --tls-cert (PEM, unencrypted).", **env("TLS_KEY"))(function)
        return click.option("--tls-cert", type=path, default=None, metavar="PEM", help=cert, **env("TLS_CERT"))(function)

    return decorate


def client_tls_options(function: Callable) -> Callable:
    """``--tls`` (``KVWIRE_TLS``) and the files of a client; :func:`client_ssl_context` reads them."""
    function = tls_file_options(
        cert="Client certificate (PEM) to present: nodes given --tls-ca require one. Implies --tls.",
        ca="CA (PEM) that signed the nodes' certificates; implies --tls.  [default with --tls: the system's CAs]",
    )(function)
    return click.option("--tls", is_flag=True, default=False,
                        help="Connect over TLS, checking each node's certificate and host name.", **env("TLS"))(function)


def client_ssl_context(options: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The context of :func:`client_tls_options`' choices, None for plain TCP; a bad file is a usage error."""
    try:
        files = tls_files(options) or TlsFiles()
        return optional_client_context(options["tls"], ca=files.ca, cert=files.cert, key=files.key)
    except TlsConfigError as exc:
        options_at_fault = [f"tls_{which}" for which in exc.files]
        raise click.UsageError(f"{exc}{from_environment(click.get_current_context(), options_at_fault)}") from None


def tls_files(options: Mapping[str, Any]) -> TlsFiles | None:
    """The files of :func:`tls_file_options`, checked; None when none was given. ValueError names a bad one."""
    given = {name: options[f"tls_{name}"] for name in ("cert", "key", "ca")}
    return TlsFiles(**given) if any(value is not None for value in given.values()) else None


def configure_logging(level: str, log_format: str = "text", context: Mapping[str, Any] | None = None) -> None:
    """One line per event on stderr, at ``level`` (one of ``LOG_LEVELS``) and above, as
    ``log_format`` (one of ``LOG_FORMATS``), every line carrying the fields of ``context``."""
    install(level, log_format, context=context)
