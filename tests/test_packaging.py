"""What `pip install .` puts in site-packages: kvwire and its dist-info, nothing else.

The REST bridge and the load generator keep their top-level folders in the
repository (http_bridge/, bench/) but install as kvwire.http_bridge and
kvwire.bench; a top-level "bench" package would collide with any other
project's. A real wheel is built with the real build backend and read back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    # Build from a copy, so that setuptools' build/ never lands in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".kvwire", "results"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheel").glob("kvwire-*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_installs_only_kvwire(tmp_path):
    names = _build_wheel(tmp_path).namelist()
    top_level = {name.split("/")[0] for name in names}
    # *.data holds data_files (haproxy/kvwire.cfg), which pip installs under
    # the prefix's share/, not into site-packages.
    assert {name for name in top_level if not name.endswith((".dist-info", ".data"))} == {"kvwire"}
    assert "kvwire/http_bridge/app.py" in names
    assert "kvwire/bench/load.py" in names
    assert "kvwire/bench/lua/wrk_report.lua" in names  # package data for `kvwire bench suite`
    assert "kvwire/bench/c/kvload.c" in names  # built by `kvwire bench --generator native`
    assert "kvwire/http_bridge/static/index.html" in names  # the bridge's cluster page
    assert any(name.endswith("/data/share/kvwire/haproxy/kvwire.cfg") for name in names)
