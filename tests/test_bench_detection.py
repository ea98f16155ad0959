"""Smoke run of bench/detection.py: one round on a real cluster, figures that make sense."""

import json
import subprocess
import sys


def test_one_round_reports_every_figure():
    result = subprocess.run([sys.executable, "-m", "kvwire.bench.detection", "--rounds", "1", "--json"],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures) == {"kill_9_to_down_ms", "restart_to_up_ms", "sigstop_to_down_ms", "sigcont_to_up_ms"}
    for name, stats in figures.items():
        assert 0 < stats["min"] <= stats["median"] <= stats["max"], name


def test_bad_rounds_exit_2_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "kvwire.bench.detection", "--rounds", "0"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "Invalid value for '--rounds': 0 is not in the range 1<=x<=100" in result.stderr
    assert "Usage: python -m kvwire.bench.detection" in result.stderr and "Traceback" not in result.stderr
