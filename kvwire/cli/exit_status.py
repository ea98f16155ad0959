"""Exit statuses of ``kvwire serve`` that say a restart cannot help.

A process manager (``kvwire up``, systemd's ``RestartPreventExitStatus``)
restarts a node that fails, except with these: the same start would fail the
same way until a person changes something.
"""

# click's status for options it refuses.
USAGE_ERROR_STATUS = 2
# sysexits.h's EX_CONFIG: the options parsed, but what they name is refused: a
# data directory of another node or cluster, a database that is damaged or can't
# be written, TLS files that don't load.
CONFIG_REFUSED_STATUS = 78

NOT_RESTARTABLE = frozenset({USAGE_ERROR_STATUS, CONFIG_REFUSED_STATUS})
