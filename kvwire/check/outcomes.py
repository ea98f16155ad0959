"""What a client learnt from an operation that failed (Jepsen's :info: indeterminate).

One rule for every history writer: the simulator's clients and ``kvwire chaos``.

An operation that was sent and then timed out or lost its connection may have
been applied, or may be applied later: ``unknown``. So may one refused with
NO_QUORUM or CONFLICT, unless the node said ``maybe_applied=False``. Any other
refusal means the operation took no effect (``fail``), unless it says
``maybe_applied=True``. Not found is an answer.
"""

from __future__ import annotations

from ..protocol import errors
from .history import Outcome

_MAYBE_APPLIED = (errors.NoQuorumError, errors.ConflictError)
_INDETERMINATE = (errors.KvwireConnectionError, TimeoutError)  # KvwireTimeoutError and ServerTimeoutError are TimeoutErrors


def outcome_of_error(exc: BaseException) -> Outcome:
    """The outcome of an operation that was sent and raised ``exc``."""
    if isinstance(exc, errors.KeyNotFoundError):
        return Outcome.NOT_FOUND
    if isinstance(exc, _INDETERMINATE):
        return Outcome.UNKNOWN
    if isinstance(exc, _MAYBE_APPLIED):
        return Outcome.FAIL if exc.maybe_applied is False else Outcome.UNKNOWN
    # Any other refusal wrote nothing, unless it says otherwise (a disk error
    # after the write went to the peers, operations.disk_error).
    return Outcome.UNKNOWN if getattr(exc, "maybe_applied", None) is True else Outcome.FAIL

