"""kvwire's measuring instruments: ``kvwire bench`` (``bench.command``) loads nodes and runs the benchmark suite."""
