"""Fuzz targets for the codec and the node (issue 10, section 4), run with atheris.

    python -m tests.fuzz.codec -frames=1000000   # the sans-I/O codec, both sides
    python -m tests.fuzz.node -frames=200000     # a real node on real SQLite, in-process

``frames.py`` turns the fuzzer's bytes into streams of mostly well-formed
frames, ``checks.py`` holds what every target asserts, and ``harness.py`` the
command line both share. tests/test_fuzz.py runs a short pass of each in CI.
"""
