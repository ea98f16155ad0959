"""What ``kvwire bench`` shows of a load run: the table on stdout, and the JSON file of ``--out``."""

from __future__ import annotations

import json
import time
from pathlib import Path


def nothing_measured(result: dict) -> str | None:
    """Why a run's figures would mean nothing (no reply in its measured window), else None.
    A run whose --requests ran out in the warm-up ended as asked, and its table says so."""
    if result["ops"] or result["errors"] or result["not_found"] or result["budget_exhausted"]:
        return None
    return (f"no reply came back in the {result['measured_s']:g} s measured ({result['unanswered']} requests "
            "unanswered), so there is nothing to report; give a longer --duration, or check the nodes")


def report_table(result: dict) -> str:
    """The result of a load run as the lines ``kvwire bench`` prints."""
    def ms(latency: dict, name: str) -> str:
        value = latency[name]
        return "-" if value is None else f"{value:.3f}"

    def percentiles(latency: dict) -> str:
        return "  ".join(f"{label} {ms(latency, name)}" for label, name in
                         (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max")))

    rate = f"open loop at {result['rate']:g}/s" if result["rate"] else "closed loop"
    measured = result.get("measured_s")
    # --requests may end the run before --duration: say what was measured, not what was asked.
    if result["budget_exhausted"] and measured is not None:
        span = f"{measured:g} s measured (of --duration {result['duration']:g})"
    else:
        span = f"{result['duration']:g} s"
    lines = [
        f"{result['workload'].upper()}, {result['connections']} connections, pipeline {result['pipeline']}, {rate}, "
        f"{result['workers']} worker(s), {result['value_size']}-byte values, {result['keys']} {result['distribution']} "
        f"keys, {span} after {result['warmup']:g} s warm-up, against {','.join(result['endpoints'])}",
        f"  throughput   {result['ops_per_s']:,} ops/s ({result['ops']:,} ops)",
        f"  errors       {result['errors']:,}" + (f" {result['error_codes']}" if result["error_codes"] else ""),
        f"  latency ms   {percentiles(result['latency_ms'])}",
    ]
    if len(result["latency_ms_by_op"]) > 1:
        for op, latency in result["latency_ms_by_op"].items():
            lines.append(f"  {op:<12} {percentiles(latency)}")
    if result["not_found"]:
        lines.append(f"  not found    {result['not_found']:,} (answers, not errors)")
    if result["server_cpu_us_per_op"] is not None:
        lines.append(f"  server CPU   {result['server_cpu_us_per_op']} us/op, {result['server_cpu_cores']} cores")
    lines.append(_cpu_line(result))
    if result["preload_s"] is not None:
        lines.append(f"  note         preloaded {result['keys']} keys in {result['preload_s']} s")
    if result["unanswered"] or result["connections_lost"]:
        lines.append(f"  note         {result['unanswered']} requests unanswered at the end, "
                     f"{result['connections_lost']} connections lost, {result['connect_failures']} reconnects refused")
    if result["late_unsent"]:
        lines.append(f"  note         the open loop fell behind: {result['late_unsent']:,} requests due were never sent; "
                     f"{result['ops_per_s']:,} of {result['rate']:g}/s reached (their latency is not in the figures)")
    if result["budget_exhausted"]:
        lines.append("  note         --requests reached" + (" in the warm-up" if not result["ops"] else ", stopped early"))
    return "\n".join(lines)


def _cpu_line(result: dict) -> str:
    if result["client_cpu_cores"] is None:
        return "  CPU          not measured: the run ended before its measured window began"
    machine = (f"{result['machine_cpu_cores']} of {result['cpu_count']} cores" if result["machine_cpu_cores"] is not None
               else f"not measured (the {result.get('measured_s', 0):g} s window is too short for /proc's clock ticks)")
    return f"  CPU          this generator {result['client_cpu_cores']} cores; whole machine {machine}"


def save_result(result: dict, directory: Path) -> Path:
    """Write ``result`` as JSON to a new file in ``directory``, named by time and workload."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%dT%H%M%S") + f"-{result['workload'].replace('/', '-')}-c{result['connections']}-p{result['pipeline']}"
    path, n = directory / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
