"""``kvwire bench scale``: one node's memory, start-up and throughput as its data grows."""

import json
import subprocess
import sys


def scale(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "kvwire", "bench", "scale", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_a_small_run_reports_memory_start_up_and_throughput_per_value_size():
    result = scale("--keys", "3000", "--value-sizes", "100,200000", "--duration", "1", "--warmup", "0", "--connections", "8",
                   "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["keys"] == 3000 and report["fill_puts_per_s"] > 0
    assert 0 < report["empty_start_s"] and 0 < report["start_s"] < 120
    # 3,000 keys move RSS by well under a MiB or two: positive and bounded, not precise.
    assert report["rss_mib"] >= report["rss_empty_mib"] > 0 and report["key_str_bytes"] > 40
    for op in ("get", "put"):
        assert report[op]["ops_per_s"] > 0 and report[op]["errors"] == 0
    big, = [size for size in report["value_sizes"] if size["value_size"] == 200_000]
    assert big["ops_per_s"] > 0 and big["errors"] == 0
    assert big["mb_per_s"] == round(big["ops_per_s"] * 200_000 / 1e6, 1)
    assert big["connections"] == 8  # at most 4 MB in flight: min(8, 20)


def test_bad_value_sizes_are_refused_with_a_clear_message():
    for sizes in ("0", "abc", "2000000", ""):
        result = scale("--keys", "1000", "--value-sizes", sizes)
        assert result.returncode == 2, (sizes, result.stderr)
        assert "--value-sizes" in result.stderr and "Traceback" not in result.stderr
