"""kvwire's measuring instruments: ``python -m bench.load`` drives load at one or more nodes."""
