"""The pure parts of bench/failover.py and bench/plot.py: settings, figures, the PNG. No cluster is started."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import pytest
from PIL import Image

from click.testing import CliRunner

from kvwire.bench.failover import (
    Events,
    FailoverSettings,
    _peer_entry,
    event_figures,
    failover,
)
from kvwire.bench.plot import failover_table, plot_failover

SHORT = FailoverSettings(duration=3.0, kill_at=1.0, restart_at=2.0)


def synthetic_result(via: str, settings: FailoverSettings = SHORT) -> dict:
    """30 buckets at 1,000/s with a 0.3 s stall and 12 errors after the kill."""
    rows = []
    for index in range(30):
        t = round(index * settings.interval, 6)
        stalled = 1.0 <= t < 1.3
        rows.append({"t": t, "ok": 0 if stalled else 100, "errors": 12 if t == 1.0 else 0,
                     "p99_ms": None if stalled else 2.0 + (400.0 if t == 1.3 else 0.0)})
    return {
        "via": via, "settings": asdict(settings), "killed": "n1", "survivors": ["n2", "n3"], "requests": 3000,
        "ok": 2688, "failed": 12, "error_codes": {"KvwireConnectionError": 12},
        "error_samples": {"KvwireConnectionError": "connection lost"}, "longest_stall_s": 0.3,
        "kill_at": 1.0, "restart_at": 2.0, "detect_down_s": 0.5, "up_s": 0.6, "answers_s": 0.3, "caught_up_s": 0.7,
        "detect_down_by": {"n2": 0.45, "n3": 0.5}, "up_by": {"n2": 0.6, "n3": 0.55}, "stale_keys_after_run": 0,
        "latency_ms": {"p50": 2.0, "p90": 2.0, "p99": 402.0, "p999": 402.0, "max": 402.0},
        "duration_s": 3.0, "cpu_cores": {"machine": 1.2, "driver": 0.3, "available": 2}, "timeline": rows,
    }


# --- settings ----------------------------------------------------------------------------------


def test_the_default_settings_are_the_issues_scenario():
    settings = FailoverSettings()
    assert (settings.rate, settings.duration, settings.kill_at, settings.restart_at) == (1000.0, 20.0, 5.0, 15.0)
    assert (settings.value_size, settings.keys, settings.interval) == (100, 1000, 0.1)


@pytest.mark.parametrize(("options", "message"), [
    ({"rate": 0}, "--rate must be in"),
    ({"rate": float("nan")}, "--rate must be in"),
    ({"duration": -1}, "--duration must be in"),
    ({"kill_at": 16.0}, "need 0 < --kill-at < --restart-at < --duration"),
    ({"restart_at": 20.0}, "need 0 < --kill-at < --restart-at < --duration"),
    ({"kill_at": 0}, "need 0 < --kill-at"),
    ({"kill_at": float("nan")}, "got --kill-at nan"),
    ({"interval": 0}, "--interval must be in"),
    ({"interval": 21.0}, "--interval must be in"),
    ({"keys": 0}, "--keys must be a whole number"),
    ({"keys": 10.5}, "--keys must be a whole number"),
    ({"value_size": -1}, "--value-size must be a whole number"),
    ({"max_in_flight": 0}, "--max-in-flight must be a whole number"),
    ({"timeout": 0}, "--timeout must be in"),
    ({"sync": "sometimes"}, "--sync must be off, normal or full"),
])
def test_bad_settings_raise_value_error_naming_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        FailoverSettings(**options)


def test_bad_options_exit_2_with_the_message():
    result = CliRunner().invoke(failover, ["--via", "client", "--kill-at", "16"])
    assert result.exit_code == 2
    assert "need 0 < --kill-at < --restart-at < --duration" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_importing_the_bench_does_not_import_matplotlib():
    code = "import sys, kvwire.bench.failover; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


# --- the figures -------------------------------------------------------------------------------


def test_event_figures_count_from_the_kill_and_the_restart_and_wait_for_every_survivor():
    events = Events(start=100.0, killed=105.0, restarted=115.0, down_by={"n2": 105.4, "n3": 105.55},
                    up_by={"n2": 115.9, "n3": 115.7}, answered=115.3, caught_up=116.0)
    figures = event_figures(events, ["n2", "n3"])
    assert figures["kill_at"] == 5.0 and figures["restart_at"] == 15.0
    assert figures["detect_down_s"] == pytest.approx(0.55)  # the later survivor
    assert figures["up_s"] == pytest.approx(0.9)
    assert figures["answers_s"] == pytest.approx(0.3) and figures["caught_up_s"] == pytest.approx(1.0)
    assert figures["detect_down_by"] == {"n2": pytest.approx(0.4), "n3": pytest.approx(0.55)}


def test_event_figures_are_none_until_every_survivor_saw_it():
    events = Events(start=0.0, killed=5.0, restarted=15.0, down_by={"n2": 5.5})
    figures = event_figures(events, ["n2", "n3"])
    assert figures["detect_down_s"] is None and figures["up_s"] is None and figures["caught_up_s"] is None
    assert figures["detect_down_by"] == {"n2": 0.5}
    assert event_figures(Events(start=0.0), ["n2", "n3"])["kill_at"] is None


def test_peer_entry_finds_the_peer_or_says_none():
    health = {"cluster": {"nodes": [{"node_id": "n1", "healthy": False, "pending_hints": 7}]}}
    assert _peer_entry(health, "n1")["pending_hints"] == 7
    assert _peer_entry(health, "n3") is None
    assert _peer_entry(TimeoutError("no reply"), "n1") is None


def test_the_table_shows_the_figures_and_each_error_with_its_message():
    table = failover_table([synthetic_result("haproxy")])
    header, row = table.splitlines()[:2]
    assert header.split()[:4] == ["via", "killed", "requests", "failed"]
    assert row.split()[:8] == ["haproxy", "n1", "3000", "12", "300", "500", "600", "700"]
    assert "12 x KvwireConnectionError: connection lost" in table


# --- the plot ----------------------------------------------------------------------------------


def test_plot_failover_writes_a_png_of_the_expected_size(tmp_path):
    path = tmp_path / "figures" / "failover.png"
    plot_failover([synthetic_result("haproxy"), synthetic_result("client")], path)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1400, 1120)  # 14 x 5.6 inches a run at 100 dpi
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # drawn, not blank


def test_plot_failover_copes_with_a_run_that_saw_nothing(tmp_path):
    result = synthetic_result("client")
    result.update(detect_down_s=None, up_s=None, caught_up_s=None, error_codes={}, failed=0, cpu_cores=None,
                  latency_ms=dict.fromkeys(["p50", "p90", "p99", "p999", "max"]))
    result["timeline"] = [{**row, "ok": 0, "errors": 0, "p99_ms": None} for row in result["timeline"]]
    plot_failover([result], tmp_path / "empty.png")
    with Image.open(tmp_path / "empty.png") as image:
        assert image.size == (1400, 560)


def test_plot_failover_needs_a_result(tmp_path):
    with pytest.raises(ValueError, match="at least one result"):
        plot_failover([], tmp_path / "none.png")
