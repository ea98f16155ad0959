from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="kvwire",
    version="0.1.0",
    description="A replicated key-value store speaking length-prefixed msgpack over TCP",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The REST bridge and the load generator keep their top-level folders but
    # install as kvwire.http_bridge and kvwire.bench, so that nothing but
    # kvwire lands in site-packages (a top-level "bench" would collide).
    packages=find_packages(include=["kvwire", "kvwire.*"]) + ["kvwire.http_bridge", "kvwire.bench"],
    package_dir={"kvwire.http_bridge": "http_bridge", "kvwire.bench": "bench"},
    install_requires=[
        "uvloop>=0.19",
        "msgpack>=1.0.5",
        # The compiled codec (kvwire/protocol/compiled.py): Structs, Raw values, defstruct tags.
        "msgspec>=0.18",
        # kvwire/server/storage.py runs each group commit through aiosqlite's
        # private Connection._execute (one thread hop); checked on 0.20-0.22.
        "aiosqlite>=0.20,<0.23",
        "click>=8.1",
        "aiohttp>=3.9",
        "hdrhistogram>=0.10",  # kvwire bench's latency recorder
        "prometheus-client>=0.17",  # /metrics (kvwire/server/metrics.py, http_bridge/metrics.py)
        "cryptography>=42",  # kvwire certs: the development CA (kvwire/testing/certs.py); up --tls reads not_valid_*_utc (42)
    ],
    # `kvwire up --haproxy` finds it here after `pip install .` (kvwire/cli/haproxy.py).
    data_files=[("share/kvwire/haproxy", ["haproxy/kvwire.cfg"])],
    # The wrk scripts of `kvwire bench suite` (bench/wrk.py), the source of the
    # compiled load generator (bench/native.py builds it on first use), and the
    # bridge's cluster page (http_bridge/ui.py).
    package_data={
        "kvwire.bench": ["lua/*.lua", "c/*.c"],
        "kvwire.http_bridge": ["static/*.html", "static/*.css", "static/*.js", "static/*.svg"],
    },
    extras_require={
        "bench": ["matplotlib>=3.7"],  # the failover plot of `kvwire bench suite`
        "test": [
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "pytest-xdist>=3.5",  # .ci/run: every test but the serial ones on two workers
            "hypothesis>=6.100",
            "atheris>=2.3",  # tests/fuzz: the codec and node fuzz targets (tests/test_fuzz.py runs them briefly)
            "schemathesis>=4.0",
            "pyyaml>=6",  # tests/test_deploy_files.py parses deploy/docker-compose.yml
            "matplotlib>=3.7",  # tests/test_bench_failover.py draws the failover plot
            "selenium>=4.11",  # tests/test_ui.py drives Debian's chromium through chromium-driver
        ],
    },
    entry_points={
        "console_scripts": [
            "kvwire=kvwire.cli.entry:kvwire",
            "kvwire-cli=kvwire.cli.entry:kvwire_cli",
        ],
    },
)
