"""Whether a SIGINT reached the entry point's handler (kvwire.cli.entry) before a
command installed its own. No imports: the entry point loads it before anything heavy.

That handler ends the process with SystemExit, which can be swallowed: a signal
handler runs wherever the main thread is, and an exception raised in a finalizer
or weakref callback (a generator the garbage collector closes) is only reported,
never propagated. A command that installs its own handling then finds the Ctrl-C
here (kvwire.cli.signals) rather than running on as if nobody had asked it to stop.
"""

received = False
# Which signal it was: serve, bridge and up take SIGTERM and SIGHUP the same way (entry.py).
signum = 2  # SIGINT's number; this module imports nothing, not even signal
