"""One line per log record, as logfmt-style text or as JSON (``--log-format``).

The fields of a line are the record's *extra* attributes: whatever a log call
passes as ``extra``, plus what a :class:`ContextFilter` puts on every record
(``node=n1`` for ``kvwire serve``):

    log.warning("peer %s DOWN", peer, extra={"peer": peer, "silent_ms": 512})

text (the default)::

    2024-05-01T12:00:00.123Z WARNING kvwire.node: peer n2 DOWN node=n1 peer=n2 silent_ms=512

json, one object per line::

    {"ts": "2024-05-01T12:00:00.123Z", "level": "WARNING", "logger": "kvwire.node",
     "msg": "peer n2 DOWN", "node": "n1", "peer": "n2", "silent_ms": 512}

Field names must not be LogRecord attributes (``name``, ``msg``, ``args``,
``module``, ``process``, ``message``...: logging raises KeyError), nor ``ts``, ``level``,
``logger``, ``exc`` or ``stack`` (kept by the JSON line; such an extra is
written as ``field_<name>``); ``node`` and ``bridge`` belong to the ContextFilter; names
starting with ``_`` are not written. A mapping value is written as
``key.sub=value`` in text and as a nested object in JSON; a value JSON can't
carry is written as its ``str``. An exception (``log.exception``,
``exc_info=``) becomes one ``exc`` field, its newlines escaped, so a record
is always exactly one line.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from typing import Any, Iterable, Mapping

LOG_FORMATS = ("text", "json")

# Every attribute a bare LogRecord has, plus those Formatter.format adds; the rest are extras.
STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
}
# Written first, in this order, on every line that has them (a ContextFilter sets them).
LEADING_FIELDS = ("node", "bridge")
# Keys of the JSON line itself; an extra of the same name is written as field_<name>.
JSON_KEYS = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})

_NEEDS_QUOTES = re.compile(r'[\s="\\]|[\x00-\x1f\x7f]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def timestamp(created: float) -> str:
    """``2024-05-01T12:00:00.123Z``: ISO 8601, UTC, milliseconds."""
    seconds = int(created)
    millis = min(int((created - seconds) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's fields: its attributes a bare LogRecord lacks, the LEADING_FIELDS first."""
    fields = {
        key: value for key, value in record.__dict__.items()
        if key not in STANDARD_ATTRIBUTES and not key.startswith("_")
    }
    leading = {key: fields.pop(key) for key in LEADING_FIELDS if key in fields}
    return {**leading, **fields}


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda match: _ESCAPES.get(match.group(), f"\\u{ord(match.group()):04x}"), text)


def logfmt_value(value: Any) -> str:
    """A value as logfmt writes it: bare when it can be, else in double quotes with
    backslashes, quotes and control characters (newlines included) escaped."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return '"' + _escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def logfmt_key(key: str) -> str:
    return _KEY_UNSAFE.sub("_", str(key)) or "_"


def _message(record: logging.LogRecord) -> str:
    """``record.getMessage()``, or a description of the broken call, never an exception:
    logging's own error report would be a multi-line traceback on stderr."""
    try:
        return record.getMessage()
    except Exception as exc:  # a log call whose arguments don't match its format
        return f"unformattable log message {record.msg!r} with arguments {record.args!r}: {exc}"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return formatter.formatException(record.exc_info).rstrip("\n")
    if record.exc_text:
        return record.exc_text.rstrip("\n")
    return None


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message key=value ...`` on one line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [timestamp(record.created), record.levelname, f"{record.name}:", _escape_controls(_message(record))]
        fields = {f"field_{key}" if key in ("exc", "stack") else key: value for key, value in extra_fields(record).items()}
        exc = _exception_text(self, record)
        if exc is not None:
            fields["exc"] = exc
        if record.stack_info:
            fields["stack"] = record.stack_info.rstrip("\n")
        parts.extend(f"{logfmt_key(key)}={logfmt_value(value)}" for key, value in _flatten(fields))
        return " ".join(parts)


def _flatten(fields: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` as ``a.b=1``: logfmt has no nesting."""
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can carry it as is (recursively), else its ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, every field, exc (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        for key, value in extra_fields(record).items():
            key = str(key)
            line[f"field_{key}" if key in JSON_KEYS else key] = _jsonable(value)
        exc = _exception_text(self, record)
        if exc is not None:
            line["exc"] = exc
        if record.stack_info:
            line["stack"] = record.stack_info.rstrip("\n")
        # ensure_ascii: a line is plain ASCII whatever the terminal's encoding, and one line.
        return json.dumps(line, ensure_ascii=True, default=str)


FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def make_formatter(log_format: str) -> logging.Formatter:
    try:
        return FORMATTERS[log_format]()
    except KeyError:
        raise ValueError(f"unknown log format {log_format!r}; expected one of {', '.join(LOG_FORMATS)}") from None


class ContextFilter(logging.Filter):
    """Puts the same fields on every record it sees, e.g. ``ContextFilter(node="n1")``.

    Attached to the handler, so it also tags records of other libraries'
    loggers (aiohttp, asyncio) that reach it. A field the log call gave
    itself is kept.
    """

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.fields = {key: value for key, value in fields.items() if value is not None}

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def make_handler(log_format: str = "text", *, stream=None, context: Mapping[str, Any] | None = None) -> logging.Handler:
    """A stderr handler writing one ``log_format`` line per record, tagged with ``context``."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(ContextFilter(**(context or {})))
    return handler


def install(level: str | int, log_format: str = "text", *, context: Mapping[str, Any] | None = None,
            stream=None) -> logging.Handler:
    """Make the root logger write one line per record to stderr (replacing its handlers).

    Python warnings and uncaught exceptions (main thread and others) become
    records too, so that every line on stderr has the format.
    """
    handler = make_handler(log_format, stream=stream, context=context)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    _log_uncaught_exceptions()
    return handler


def _log_uncaught_exceptions() -> None:
    log = logging.getLogger("kvwire")

    def excepthook(exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        log.critical("uncaught %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        log.critical("uncaught %s in %s: %s", args.exc_type.__name__, name, args.exc_value,
                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


__all__ = [
    "ContextFilter", "JsonFormatter", "LOG_FORMATS", "TextFormatter", "extra_fields", "install",
    "logfmt_value", "make_formatter", "make_handler", "timestamp",
]
