"""What a client learnt from an operation that raised (Jepsen's :info: indeterminate).

An operation that was sent and then timed out or lost its connection may have
been applied, or may be applied later: ``unknown``. So may one refused with
NO_QUORUM or CONFLICT, unless the node said ``maybe_applied=False``. Any other
refusal means the operation took no effect: ``fail``. Not found is an answer.
"""

from __future__ import annotations

from kvwire.check.history import Outcome
from kvwire.protocol import errors

# ConflictError and maybe_applied are newer than some nodes this may talk to.
_MAYBE_APPLIED = tuple(cls for cls in (errors.NoQuorumError, getattr(errors, "ConflictError", None)) if cls is not None)
_INDETERMINATE = (errors.KvwireConnectionError, TimeoutError)  # KvwireTimeoutError and ServerTimeoutError are TimeoutErrors


def outcome_of_error(exc: BaseException) -> Outcome:
    """The outcome of an operation that was sent and raised ``exc``."""
    if isinstance(exc, errors.KeyNotFoundError):
        return Outcome.NOT_FOUND
    if isinstance(exc, _INDETERMINATE):
        return Outcome.UNKNOWN
    if isinstance(exc, _MAYBE_APPLIED):
        return Outcome.FAIL if getattr(exc, "maybe_applied", None) is False else Outcome.UNKNOWN
    return Outcome.FAIL


def error_name(exc: BaseException) -> str:
    """A short label for counting errors: the class name, e.g. ``NoQuorumError``."""
    return type(exc).__name__
