"""How benchmark results are shown: a table for the terminal, and figures drawn with matplotlib.

    print(failover_table([haproxy_result, client_result]))
    plot_failover([haproxy_result, client_result], Path("failover.png"))

matplotlib is imported only when a figure is drawn, so running a benchmark
does not need it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

OK_COLOR, ERROR_COLOR, P99_COLOR = "#2e7d32", "#c62828", "#6a1b9a"
KILL_COLOR, RESTART_COLOR, DOWN_SPAN_COLOR, CATCH_UP_COLOR = "#d32f2f", "#1565c0", "#ffb74d", "#90caf9"
TITLES = {"haproxy": "through HAProxy's TCP frontend (one endpoint, no retries)",
          "client": "through the kvwire client (all 3 endpoints, default RetryPolicy)",
          "rest": "REST through HAProxy's HTTP frontend (in-process bridges, L7 retries, PUT request ids)"}


def _seconds(value: float | None) -> str:
    if value is None:
        return "not seen"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _annotation(result: dict[str, Any]) -> str:
    latency = {name: "-" if value is None else f"{value:.1f} ms" for name, value in result["latency_ms"].items()}
    lines = [
        f"failed       {result['failed']:,} of {result['requests']:,}",
        *(f"  {count:,} {code.removesuffix('Error')}" for code, count in result["error_codes"].items()),
        f"stall        {_seconds(result['longest_stall_s'])}",
        f"kill->DOWN   {_seconds(result['detect_down_s'])}",
        f"restart->UP  {_seconds(result['up_s'])}",
        f"->caught up  {_seconds(result['caught_up_s'])}",
        f"p50          {latency['p50']}",
        f"p99          {latency['p99']}",
        f"max          {latency['max']}",
    ]
    cpu = result.get("cpu_cores")
    if cpu:  # the machine is shared: a busy one explains noisy latency
        lines.append(f"CPU busy     {cpu['machine']:g} of {cpu['available']} cores")
    return "\n".join(lines)


def failover_table(results: list[dict[str, Any]]) -> str:
    """One row of figures per run, then each error code with its first message."""

    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1000:.0f}"

    columns = ["via", "killed", "requests", "failed", "stall_ms", "down_ms", "up_ms", "caught_up_ms",
               "p50_ms", "p99_ms", "max_ms", "cpu_busy"]
    table = [columns]
    for r in results:
        latency = {k: "-" if v is None else f"{v:.1f}" for k, v in r["latency_ms"].items()}
        table.append([r["via"], r["killed"], r["requests"], r["failed"], ms(r["longest_stall_s"]), ms(r["detect_down_s"]),
                      ms(r["up_s"]), ms(r["caught_up_s"]), latency["p50"], latency["p99"], latency["max"],
                      f"{r['cpu_cores']['machine']}/{r['cpu_cores']['available']}"])
    lines = ["  ".join(f"{cell:<8}" if i < 2 else f"{cell:>{len(name)}}" for i, (name, cell) in enumerate(zip(columns, row)))
             for row in table]
    for r in results:
        for code, count in r["error_codes"].items():
            lines.append(f"  {r['via']}: {count} x {code}: {r['error_samples'][code][:150]}")
        if r["stale_keys_after_run"]:
            lines.append(f"  {r['via']}: {r['stale_keys_after_run']} keys still stale on {r['killed']} after the run")
    return "\n".join(lines)


def plot_failover(results: list[dict[str, Any]], path: Path) -> None:
    """One PNG; per run, requests/s (successes, errors) over p99 latency, with the kill/restart events."""
    if not results:
        raise ValueError("plot_failover needs at least one result")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MultipleLocator

    # Per run two panels on one time axis: rates above, latency below, so neither hides the other.
    figure, axes = plt.subplots(2 * len(results), 1, sharex=True, figsize=(14, 5.6 * len(results)),
                                gridspec_kw={"height_ratios": [3, 1.6] * len(results)}, layout="constrained")
    for index, result in enumerate(results):
        _draw_rates(axes[2 * index], result)
        _draw_latency(axes[2 * index + 1], result)
    axes[-1].set_xlabel("seconds since the load started")
    axes[-1].xaxis.set_major_locator(MultipleLocator(1.0))
    settings = results[0]["settings"]
    figure.suptitle(
        f"Failover timeline: {settings['rate']:g} PUT/s open loop ({settings['value_size']}-byte values, "
        f"{settings['keys']} keys), kill -9 of the serving node at {settings['kill_at']:g} s, "
        f"restart at {settings['restart_at']:g} s", fontsize=13,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _edges(result: dict[str, Any]) -> tuple[list[dict[str, Any]], float, list[float]]:
    rows, interval = result["timeline"], result["settings"]["interval"]
    return rows, interval, [row["t"] for row in rows] + [rows[-1]["t"] + interval] if rows else [0.0, interval]


def _draw_events(ax: Any, result: dict[str, Any], labels: bool) -> None:
    """Kill and restart as dashed lines; kill to DOWN, and restart to caught up, as shaded spans."""
    kill, restart, victim = result.get("kill_at"), result.get("restart_at"), result["killed"]
    if kill is not None:
        ax.axvline(kill, color=KILL_COLOR, linestyle="--", linewidth=1.3, label=f"kill -9 {victim}" if labels else None)
        if result.get("detect_down_s") is not None:
            ax.axvspan(kill, kill + result["detect_down_s"], color=DOWN_SPAN_COLOR, alpha=0.4,
                       label=f"until the survivors mark {victim} DOWN" if labels else None)
    if restart is not None:
        ax.axvline(restart, color=RESTART_COLOR, linestyle="--", linewidth=1.3, label=f"restart {victim}" if labels else None)
        if result.get("caught_up_s") is not None:
            ax.axvspan(restart, restart + result["caught_up_s"], color=CATCH_UP_COLOR, alpha=0.4,
                       label=f"until {victim} is UP and caught up" if labels else None)


def _draw_rates(ax: Any, result: dict[str, Any]) -> None:
    rows, interval, edges = _edges(result)
    ok_rate = [row["ok"] / interval for row in rows] or [0]
    error_rate = [row["errors"] / interval for row in rows] or [0]
    # Steps across each bucket, so a stall is a visible gap down to 0.
    ax.stairs(ok_rate, edges, fill=True, color=OK_COLOR, alpha=0.2)
    ax.stairs(ok_rate, edges, color=OK_COLOR, linewidth=1.1, label=f"successes/s (per {interval * 1000:.0f} ms)")
    ax.stairs(error_rate, edges, fill=True, color=ERROR_COLOR, alpha=0.9, label="errors/s")
    ax.set_ylim(0, max([*ok_rate, *error_rate, 1]) * 1.4)  # headroom for the legend
    _label_errors(ax, rows, interval)
    _draw_events(ax, result, labels=True)
    ax.set_ylabel("requests/s")
    ax.grid(alpha=0.25)
    ax.set_xlim(0, result.get("duration_s") or edges[-1])
    ax.set_title(TITLES.get(result["via"], result["via"]), loc="left", fontsize=11, fontweight="bold")
    ax.legend(loc="upper left", fontsize=8.5, ncol=3, framealpha=0.95)
    # The figures sit right of the plot, where they hide no data.
    ax.text(1.01, 1.0, _annotation(result), transform=ax.transAxes, ha="left", va="top", fontsize=9.5,
            family="monospace", bbox={"boxstyle": "round", "facecolor": "#f7f7f7", "edgecolor": "#999"})


def _draw_latency(ax: Any, result: dict[str, Any]) -> None:
    rows, interval, _ = _edges(result)
    # An empty bucket (no success) breaks the line rather than bridging the stall.
    p99 = [math.nan if row["p99_ms"] is None else row["p99_ms"] for row in rows]
    ax.plot([row["t"] + interval / 2 for row in rows], p99, color=P99_COLOR, linewidth=0.9, marker=".", markersize=3)
    ax.set_yscale("log")
    ax.set_ylim(0.3, max([10.0, *(p for p in p99 if not math.isnan(p))]) * 2)
    _draw_events(ax, result, labels=False)
    ax.set_ylabel(f"p99 ms per {interval * 1000:.0f} ms\n(log scale)", color=P99_COLOR)
    ax.grid(alpha=0.25, which="major")


def _label_errors(ax: Any, rows: list[dict[str, Any]], interval: float) -> None:
    """Write the error count over each burst of errors (buckets at most 0.5 s apart), the six largest."""
    bursts: list[list[dict[str, Any]]] = []
    for row in (row for row in rows if row["errors"]):
        if bursts and row["t"] - bursts[-1][-1]["t"] <= 0.5:
            bursts[-1].append(row)
        else:
            bursts.append([row])
    for burst in sorted(bursts, key=lambda b: -sum(row["errors"] for row in b))[:6]:
        peak = max(burst, key=lambda row: row["errors"])
        ax.annotate(f"{sum(row['errors'] for row in burst)} errors", (peak["t"] + interval / 2, peak["errors"] / interval),
                    xytext=(4, 14), textcoords="offset points", ha="left", fontsize=8, color=ERROR_COLOR,
                    fontweight="bold", arrowprops={"arrowstyle": "-", "color": ERROR_COLOR, "lw": 0.8})
