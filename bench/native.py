"""``kvwire bench --generator native``: the load run from a compiled generator.

The Python generator costs about as much CPU per request as the node it loads
(README, "Where the time goes"), and the two share the machine; redis-benchmark,
in C, costs redis-server far less. ``bench/c/kvload.c`` is this project's
counterpart: Python encodes the request frames and the HELLO, the C program
sends them closed loop and times the replies, and this module builds it (once
per source, with the machine's C compiler), runs it, and reports as ``run_load``
does. Server CPU per op stays the fair comparison either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import uvloop

from kvwire.bench.cpu import cpu_figures, machine_busy_seconds, server_cpu_seconds
from kvwire.bench.preload import preload
from kvwire.bench.settings import Settings
from kvwire.bench.workload import encode_requests, mix_name
from kvwire.protocol import ErrorCode, Hello, Op, encode, parse_host_port
from kvwire.testing.process import terminated_with_parent

SOURCE = Path(__file__).resolve().parent / "c" / "kvload.c"
_REPLY_OPS = {"get": Op.GET_REPLY, "put": Op.PUT_REPLY}
_HELLO_ID = 2**32  # no key index takes it
# kvload's error_codes key for a reply that is neither an ERROR nor the op's own reply.
_OTHER_ERROR = "256"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvwire"


def build() -> Path:
    """The compiled generator, built from ``SOURCE`` unless this source was built
    before; raises RuntimeError when there is no C compiler or it fails."""
    source = SOURCE.read_bytes()
    binary = _cache_dir() / f"kvload-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.exists():
        return binary
    chosen = os.environ.get("CC")
    compiler = shutil.which(chosen) if chosen else shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("--generator native needs a C compiler: apt-get install gcc, or set CC to one")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}.tmp")
    try:
        returncode, stderr = _compile(compiler, partial)
    except BaseException:  # interrupted (SIGTERM or Ctrl-C: bench.interrupt)
        partial.unlink(missing_ok=True)
        raise
    if returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building {SOURCE.name} with {compiler} failed:\n{stderr.strip()}")
    partial.replace(binary)  # atomic: two runs building at once both end with a whole binary
    return binary


def _compile(compiler: str, output: Path) -> tuple[int, str]:
    """Run the compiler on ``SOURCE``: its exit status and stderr. Interrupted, it is stopped
    with everything it started before this returns.

    subprocess.run would SIGKILL only the compiler's driver: its assembler went on alone,
    and the driver's temporary files stayed in TMPDIR (a test interrupting a first run
    found one). So the compiler runs in a process group of its own, with temporary files
    in a directory of ours; an interruption SIGTERMs the group (gcc's driver removes its
    files on SIGTERM) and the directory goes either way."""
    with tempfile.TemporaryDirectory(prefix="kvload-build-", ignore_cleanup_errors=True) as scratch:
        with subprocess.Popen([compiler, "-O2", "-o", str(output), str(SOURCE)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": scratch},
                              start_new_session=True, preexec_fn=terminated_with_parent()) as process:
            try:
                _, stderr = process.communicate()
            except BaseException:
                _stop_group(process)
                raise
        return process.returncode, stderr


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group ``process`` leads, wait for its leader, then SIGKILL what is left."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue


def run_native(settings: Settings, *, preloaded: bool = False) -> dict:
    """One closed-loop run of the compiled generator; the same summary as ``run_load``'s."""
    binary = build()
    (op,) = settings.mix
    value = os.urandom(settings.value_size)
    preload_s = uvloop.run(preload(settings, value)) if settings.preloads and not preloaded else None
    with tempfile.TemporaryDirectory(prefix="kvload-") as tmp:
        frames, hello = Path(tmp) / "frames", Path(tmp) / "hello"
        frames.write_bytes(b"".join(encode_requests(op, settings.keys, value, settings.consistency)))
        hello.write_bytes(encode(Hello(_HELLO_ID, token=settings.token)))
        endpoints = [str(part) for endpoint in settings.endpoints for part in parse_host_port(endpoint)]
        command = [str(binary), str(frames), str(hello), str(int(_REPLY_OPS[op])), str(settings.connections),
                   f"{settings.warmup:g}", f"{settings.duration:g}", *endpoints]
        # terminated_with_parent: a signal landing before the try below must not leave it running alone.
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=terminated_with_parent()) as process:
            try:
                deadline = time.monotonic() + settings.warmup + settings.duration + 30
                first = process.stdout.readline()
                if first.strip() != "measuring":
                    process.kill()  # first: its stderr is read to the end below
                    raise RuntimeError(f"kvload could not run: {process.stderr.read().strip() or first.strip()}")
                cpu_before = (server_cpu_seconds(settings.server_pids), machine_busy_seconds(), time.monotonic())
                # Sampled when the window ends, not after kvload's drain of the replies in flight:
                # the CPU figures are over the time sampled, as long as the window.
                ended = process.stdout.readline()
                cpu_after = (server_cpu_seconds(settings.server_pids), machine_busy_seconds(), time.monotonic())
                line = process.stdout.readline() if ended.strip() == "measured" else ""
                try:
                    process.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RuntimeError("kvload did not finish") from None
                if process.returncode != 0 or not line.strip():
                    raise RuntimeError(f"kvload failed: {process.stderr.read().strip()}")
            except BaseException:
                # Failed, or interrupted (SIGTERM or Ctrl-C: bench.interrupt): it must not run on alone.
                process.kill()
                raise
    measured = json.loads(line)
    ops, window_s = measured["ops"], measured["window_s"]
    server_cpu_s = None if cpu_before[0] is None else cpu_after[0] - cpu_before[0]
    cpu = cpu_figures(ops, window_s, server_cpu_s, measured["client_cpu_s"], cpu_after[1] - cpu_before[1],
                      sampled_s=cpu_after[2] - cpu_before[2] if window_s else None)
    latency = measured["latency_ms"] if ops else dict.fromkeys(measured["latency_ms"])
    return settings.summary() | cpu | {
        "endpoints": list(settings.endpoints),
        "workload": mix_name(settings.mix),
        "mode": "closed loop",
        "ops": ops,
        "measured_s": round(window_s, 6),
        "ops_per_s": round(ops / window_s) if window_s else 0,
        "errors": measured["errors"],
        "error_codes": _error_codes(measured),
        "not_found": measured["not_found"],
        "latency_ms": latency,
        "latency_ms_by_op": {op: latency},
        "unanswered": measured["unanswered"],
        "connections_lost": measured["connections_lost"],
        "connect_failures": measured["connect_failures"],
        "off_fast_path": 0,
        "late_unsent": 0,
        "budget_exhausted": False,
        "preload_s": None if preload_s is None else round(preload_s, 2),
    }


def _error_codes(measured: dict) -> dict[str, int]:
    """kvload's counts by code number, named as the Python generator names them."""
    names = {}
    for code, count in measured["error_codes"].items():
        if code == _OTHER_ERROR:
            name = "unexpected reply"
        else:
            try:
                name = ErrorCode(int(code)).name
            except ValueError:  # a code this client does not know yet
                name = f"code {code}"
        names[name] = names.get(name, 0) + count
    if measured["lost_in_flight"]:
        names["connection lost"] = measured["lost_in_flight"]
    return names
