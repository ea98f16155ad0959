"""Fuzz target: the sans-I/O codec, as a node receiving requests and as a client receiving replies.

For each input: the stream decodes the same in one chunk as in the input's
chunking; only ProtocolError (with a code of docs/protocol.md 7.2) comes out
besides messages, NEED_DATA and CLOSED; a fatal one is raised again on every
later call; and every message accepted encodes and decodes to an equal one.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["kvwire"]):
    from kvwire.protocol import CLOSED, Side

    from .checks import Finding, Refusal, check_round_trip, decode_all, same_outcomes
    from .frames import EOF, OTHER_HALF, plan, seed
    from .harness import Stats, main, vector_bytes, vectors

stats = Stats()


def one_input(data: bytes) -> None:
    side = Side.CLIENT if data and data[0] & OTHER_HALF else Side.NODE
    case = plan(data, side)
    stats["frames"] += case.frames
    try:
        whole = decode_all(side, case.limits, [case.stream] if case.stream else [], case.eof, case.stream)
        chunked = decode_all(side, case.limits, case.chunks, case.eof, case.stream)
        if not same_outcomes(whole, chunked):
            raise Finding(f"chunking changed the outcome: {whole!r} in one chunk, {chunked!r} in "
                          f"{len(case.chunks)}; stream {case.stream.hex()}")
        for outcome in whole:
            if type(outcome) is Refusal:
                stats["refusals"] += 1
                stats["fatal"] += outcome.fatal
            elif outcome is not CLOSED:
                stats["messages"] += 1
                check_round_trip(outcome, side, case.limits, case.stream)
    except Finding:
        raise
    except Exception as exc:  # outside kvwire's error tree: the codec's contract is broken
        raise Finding(f"{type(exc).__name__} escaped the codec ({side.value} side, eof={case.eof}, "
                      f"limits={case.limits}): {exc}; stream {case.stream.hex()}") from exc


def seeds() -> list[bytes]:
    """Every vector of the spec, replayed on the side it is meant for."""
    found = vectors()
    inputs = [seed(OTHER_HALF if vector["message"]["op"] >= 0x80 else 0, vector_bytes(vector)) for vector in found["valid"]]
    inputs += [seed((OTHER_HALF if vector["side"] == "client" else 0) | (EOF if vector["eof"] else 0), vector_bytes(vector))
               for vector in found["invalid"]]
    return inputs


def run(argv: list[str] | None = None) -> None:
    main("codec", one_input, stats, seeds(), argv)


if __name__ == "__main__":
    run()
