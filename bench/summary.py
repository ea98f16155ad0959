"""The suite's ``summary.md``: the machine, the issue's targets, peers side by side, every row.

Only figures in the report are printed; a target whose runs are missing says so.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
        with open("/proc/meminfo") as meminfo:
            mem_kib = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    os_name = platform.platform()
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", os_name)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1), "os": os_name,
            "python": platform.python_version()}


# One node loaded again by the compiled generator (bench.native), as redis-benchmark
# loads redis-server: the GET target compares its row.
NATIVE_SETUP = "one node, compiled generator"
# Three nodes loaded again by the compiled generator, as wrk loads etcd: the
# quorum PUT and GET targets compare its rows when the run has them.
NATIVE_CLUSTER_SETUP = "3 nodes, compiled generator"
# REST through `kvwire bridge`, a process of its own in front of the nodes.
STANDALONE_REST_SETUP = "bridge + 3 nodes"
# REST through n1's own bridge (`kvwire serve --http-listen`), which hands requests to n1
# in its process: as `kvwire up` serves REST, and as etcd's gateway runs in its member,
# so the REST target compares its row when the run has it.
IN_NODE_REST_SETUP = "n1's own bridge, 3 nodes"


def _find(rows: list[Row], scenario: int, workload: str, *, setup: str | None = None, connections: int = 50,
          pipeline: int = 1) -> Row | None:
    for row in rows:
        if (row["scenario"], row["workload"], row["connections"], row["pipeline"]) == (scenario, workload, connections, pipeline) \
                and (setup is None or row["setup"] == setup):
            return row
    return None


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _p99(row: Row | None) -> float | None:
    return None if row is None else (row.get("latency_ms") or {}).get("p99")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def targets(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, target, measured, verdict) for each target of the performance issue (README "Against the targets")."""
    rows, failover = report["rows"], {run["via"]: run for run in report.get("failover", [])}
    # The compiled generator's row when there is one: redis-benchmark is compiled too.
    kv_get = _find(rows, 1, "get", setup=NATIVE_SETUP) or _find(rows, 1, "get", setup="one node")
    redis_get = _find(rows, 6, "get", setup="redis-server (no persistence)")
    kv_put3 = _find(rows, 2, "put", setup=NATIVE_CLUSTER_SETUP) or _find(rows, 2, "put", setup="3 nodes, direct")
    kv_get3 = _find(rows, 2, "get", setup=NATIVE_CLUSTER_SETUP) or _find(rows, 2, "get", setup="3 nodes, direct")
    kv_rest_put = _find(rows, 4, "put", setup=IN_NODE_REST_SETUP) or _find(rows, 4, "put", setup=STANDALONE_REST_SETUP)
    standalone_put = _find(rows, 4, "put", setup=STANDALONE_REST_SETUP)
    etcd_put = _find(rows, 6, "put", setup="etcd, 3 members (gateway)")
    etcd_range = _find(rows, 6, "range", setup="etcd, 3 members (gateway)")

    def ops(row: Row | None) -> float | None:
        return None if row is None else row["ops_per_s"]

    def cpu(row: Row | None) -> float | None:
        return None if row is None else row["server_cpu_us_per_op"]

    def verdict(value: float | None, passes: Callable[[float], bool]) -> str:
        return "not measured" if value is None else ("met" if passes(value) else "missed")

    def compiled(row: Row | None) -> str:
        return " (compiled generator)" if row is not None and row["setup"] in (NATIVE_SETUP, NATIVE_CLUSTER_SETUP) else ""

    def standalone(row: Row | None) -> str:
        if row is None or row is standalone_put or standalone_put is None:
            return ""
        return (f" (n1's own bridge; a standalone bridge: {_num(ops(standalone_put))}/s = "
                f"{_num(_ratio(ops(standalone_put), ops(etcd_put)), 2)}×)")

    get_ratio, cpu_ratio = _ratio(ops(kv_get), ops(redis_get)), _ratio(cpu(kv_get), cpu(redis_get))
    put_ratio, rest_ratio = _ratio(ops(kv_put3), ops(etcd_put)), _ratio(ops(kv_rest_put), ops(etcd_put))
    quorum_get_ratio = _ratio(ops(kv_get3), ops(etcd_range))
    put_p99 = _p99(kv_put3)
    client, haproxy = failover.get("client"), failover.get("haproxy")
    return [
        ("One node, 50 connections, no pipelining: GET throughput", "≥ 90% of redis-server's",
         f"{_num(ops(kv_get))} vs {_num(ops(redis_get))}/s = {_num(get_ratio and 100 * get_ratio)}%{compiled(kv_get)}",
         verdict(get_ratio, lambda r: r >= 0.9)),
        ("One node: server CPU per GET", "≤ 1.5× redis-server's",
         f"{_num(cpu(kv_get), 1)} vs {_num(cpu(redis_get), 1)} µs = {_num(cpu_ratio, 2)}×",
         verdict(cpu_ratio, lambda r: r <= 1.5)),
        ("Three nodes: quorum PUT, `--sync full`", "≥ 2× 3-member etcd's writes/s, p99 ≤ 10 ms",
         f"{_num(ops(kv_put3))} vs {_num(ops(etcd_put))}/s = {_num(put_ratio, 2)}×; "
         f"p99 {_num(put_p99, 1)} (etcd {_num(_p99(etcd_put), 1)}) ms{compiled(kv_put3)}",
         verdict(put_ratio, lambda r: r >= 2 and put_p99 is not None and put_p99 <= 10)),
        ("Three nodes: quorum GET", "≥ 4× etcd's linearizable range",
         f"{_num(ops(kv_get3))} vs {_num(ops(etcd_range))}/s = {_num(quorum_get_ratio, 2)}×{compiled(kv_get3)}",
         verdict(quorum_get_ratio, lambda r: r >= 4)),
        ("REST PUT through the bridge", "≥ 1× etcd's gateway writes/s",
         f"{_num(ops(kv_rest_put))} vs {_num(ops(etcd_put))}/s = {_num(rest_ratio, 2)}×{standalone(kv_rest_put)}",
         verdict(rest_ratio, lambda r: r >= 1)),
        ("Failover through the client", "0 failed requests",
         "not run" if client is None else f"{client['failed']} failed of {client['requests']:,}",
         verdict(None if client is None else client["failed"], lambda failed: failed == 0)),
        ("Failover through HAProxy", "longest stall under 1 s",
         "not run" if haproxy is None else f"{haproxy['longest_stall_s'] * 1000:,.0f} ms stall, {haproxy['failed']} failed",
         verdict(None if haproxy is None else haproxy["longest_stall_s"], lambda stall: stall < 1.0)),
    ]


def _side_by_side(rows: list[Row]) -> list[str]:
    """kvwire one node beside redis-server for each shape, as ratios measured in this run."""
    lines = ["| Workload | connections × pipeline | kvwire ops/s | redis (no persistence) | ratio | redis (everysec) | ratio | "
             "CPU µs/op kvwire / redis | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for kv_op, redis_op in (("get", "get"), ("put", "set")):
        for row in (r for r in rows if r["scenario"] == 1 and r["workload"] == kv_op):
            shape = {"connections": row["connections"], "pipeline": row["pipeline"]}
            plain = _find(rows, 6, redis_op, setup="redis-server (no persistence)", **shape)
            aof = _find(rows, 6, redis_op, setup="redis-server (appendfsync everysec)", **shape)
            if plain is None and aof is None:
                continue
            lines.append(
                f"| {kv_op.upper()} | {row['connections']} × {row['pipeline']} | {_num(row['ops_per_s'])} "
                f"| {_num(plain and plain['ops_per_s'])} | {_num(_ratio(row['ops_per_s'], plain and plain['ops_per_s']), 2)} "
                f"| {_num(aof and aof['ops_per_s'])} | {_num(_ratio(row['ops_per_s'], aof and aof['ops_per_s']), 2)} "
                f"| {_num(row['server_cpu_us_per_op'], 1)} / {_num(plain and plain['server_cpu_us_per_op'], 1)} "
                f"| {_num(_ratio(row['server_cpu_us_per_op'], plain and plain['server_cpu_us_per_op']), 1)} |"
            )
    return lines if len(lines) > 2 else []


# (kvwire's scenario, setup, workload) beside (etcd's workload): the same kind of request on 3 replicas.
_ETCD_PAIRS = (
    ((2, "3 nodes, direct", "put"), "put", "quorum PUT (binary protocol)"),
    ((2, "3 nodes, direct", "get"), "range", "quorum GET (binary protocol)"),
    ((2, NATIVE_CLUSTER_SETUP, "put"), "put", "quorum PUT (binary protocol, compiled generator)"),
    ((2, NATIVE_CLUSTER_SETUP, "get"), "range", "quorum GET (binary protocol, compiled generator)"),
    ((4, STANDALONE_REST_SETUP, "put"), "put", "REST PUT through a standalone bridge"),
    ((4, STANDALONE_REST_SETUP, "get"), "range", "REST GET through a standalone bridge"),
    ((4, IN_NODE_REST_SETUP, "put"), "put", "REST PUT through n1's own bridge"),
    ((4, IN_NODE_REST_SETUP, "get"), "range", "REST GET through n1's own bridge"),
)


def _beside_etcd(rows: list[Row]) -> list[str]:
    """kvwire's 3 nodes beside 3-member etcd, as throughput and server-CPU ratios from this run."""
    lines = ["| kvwire, 3 nodes | ops/s | etcd (gateway) | ops/s | ratio | p99 ms kvwire / etcd | "
             "CPU µs/op kvwire / etcd | ratio |", "|---|---|---|---|---|---|---|---|"]
    for (scenario, setup, workload), etcd_op, label in _ETCD_PAIRS:
        kv = _find(rows, scenario, workload, setup=setup)
        etcd = _find(rows, 6, etcd_op, setup="etcd, 3 members (gateway)")
        if kv is None or etcd is None:
            continue
        lines.append(
            f"| {label} | {_num(kv['ops_per_s'])} | {etcd_op} | {_num(etcd['ops_per_s'])} "
            f"| {_num(_ratio(kv['ops_per_s'], etcd['ops_per_s']), 2)} | {_num(_p99(kv), 1)} / {_num(_p99(etcd), 1)} "
            f"| {_num(kv['server_cpu_us_per_op'])} / {_num(etcd['server_cpu_us_per_op'])} "
            f"| {_num(_ratio(kv['server_cpu_us_per_op'], etcd['server_cpu_us_per_op']), 2)} |"
        )
    return lines if len(lines) > 2 else []


def _rows_table(rows: list[Row]) -> list[str]:
    lines = ["| # | Setup | Workload | conns × pipeline | ops/s | errors | p50 | p90 | p99 | p99.9 | max (ms) | server CPU µs/op |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        latency = row.get("latency_ms") or {}
        cells = [str(row["scenario"]), row["setup"], row["workload"], f"{row['connections']} × {row['pipeline']}",
                 _num(row["ops_per_s"]), _num(row["errors"])]
        cells += [_num(latency.get(name), 2) for name in ("p50", "p90", "p99", "p999", "max")]
        cells.append(_num(row["server_cpu_us_per_op"], 1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _failover_table(runs: list[Row]) -> list[str]:
    lines = ["| Through | rate | requests | failed | longest stall | DOWN after kill | UP after restart | caught up after restart | p99 / max (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        latency = run["latency_ms"]
        lines.append(
            f"| {run['via']} | {_num(run['settings']['rate'])}/s | {run['requests']:,} | {run['failed']} "
            f"| {_num(run['longest_stall_s'] * 1000)} ms | {_num(_ms(run.get('detect_down_s')))} ms "
            f"| {_num(_ms(run.get('up_s')))} ms | {_num(_ms(run.get('caught_up_s')))} ms "
            f"| {_num(latency.get('p99'), 1)} / {_num(latency.get('max'), 1)} |"
        )
    return lines


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def render(report: dict[str, Any]) -> str:
    m = report.get("machine") or machine()
    lines = [
        f"# kvwire benchmark suite, {report['started'][:10]}",
        "",
        f"Measured {report['started']} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}. Every process (nodes, balancer, peers, load generators) shared those cores. "
        f"{report['settings']['duration']:g} s per workload ({report['settings']['warmup']:g} s of warm-up before "
        "each kvwire bench run; wrk and redis-benchmark runs have none), "
        f"{report['settings']['value_size']}-byte values, {report['settings']['keys']:,} keys, uniform.",
        "",
        f"Reproduce: `{report['command']}` ({report['seconds']:.0f} s).",
        "",
        *([f"**Interrupted by {report['interrupted']}**: the scenarios after the interruption did not run, "
           "and the targets they measure say not measured.", ""] if report.get("interrupted") else []),
        "## Targets",
        "",
        "| Measure | Target | Measured in this run | |",
        "|---|---|---|---|",
        *(f"| {measure} | {target} | {measured} | {verdict} |" for measure, target, measured, verdict in targets(report)),
    ]
    side = _side_by_side(report["rows"])
    if side:
        lines += ["", "## kvwire (one node) beside redis-server", "", *side]
    etcd = _beside_etcd(report["rows"])
    if etcd:
        lines += ["", "## kvwire (3 nodes) beside etcd (3 members)", "", *etcd]
    if report.get("failover"):
        lines += ["", "## Failover timeline", "", "![failover timeline](failover.png)", "",
                  *_failover_table(report["failover"])]
    if report["rows"]:
        lines += ["", "## Every run", "", *_rows_table(report["rows"]), "",
                  "kvwire rows are `kvwire bench` (closed loop); redis rows redis-benchmark, which reports no "
                  "p90 or p99.9; REST and etcd rows wrk, which does not correct for coordinated omission. "
                  "Server CPU is the user + system time of the server processes (all nodes, and the bridge for "
                  "REST) over the run, per request. The exact command of each run is in results.json."]
    if report.get("skipped"):
        lines += ["", "## Skipped", ""]
        lines += [f"- scenario {item['scenario']} ({item['what']}): {item['why']}" for item in report["skipped"]]
    return "\n".join(lines) + "\n"


def write_summary(report: dict[str, Any], path: Path) -> None:
    path.write_text(render(report))
