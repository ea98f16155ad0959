"""deploy/: checked as far as this machine allows (no Docker, no systemd as PID 1).

The compose file is parsed and its structure checked against the other
files (Dockerfile, haproxy/kvwire.cfg, the options `kvwire serve` knows);
the Dockerfile's sources must exist; the systemd unit goes through
`systemd-analyze verify`; the healthcheck command runs against real nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvwire.cli.exit_status import CONFIG_REFUSED_STATUS, USAGE_ERROR_STATUS
from kvwire.cli.main import serve
from kvwire.testing import LocalCluster, wait_for
from kvwire.testing.node import free_port_run

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NODE_SERVICES = ["kvwire1", "kvwire2", "kvwire3"]
SERVE_VARIABLES = {param.envvar for param in serve.params if param.envvar}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def members(cluster: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in cluster.split(","))


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_has_three_nodes_and_haproxy(compose):
    assert set(compose["services"]) == {*NODE_SERVICES, "haproxy"}


def test_every_node_is_built_from_the_dockerfile_and_has_its_own_volume(compose):
    volumes = []
    for name in NODE_SERVICES:
        service = compose["services"][name]
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        [mount] = service["volumes"]
        volume, target = mount.split(":")
        assert target == service["environment"]["KVWIRE_DATA_DIR"] == "/data"
        assert volume in compose["volumes"]  # a named volume, declared
        volumes.append(volume)
    assert len(set(volumes)) == 3


def test_every_node_has_a_kvwire_cli_health_healthcheck(compose):
    for name in NODE_SERVICES:
        check = compose["services"][name]["healthcheck"]
        command = check["test"]
        assert command[0] == "CMD" and command[1] == "kvwire-cli" and command[-1] == "health"
        port = compose["services"][name]["environment"]["KVWIRE_LISTEN"].rsplit(":", 1)[1]
        assert command[command.index("--endpoints") + 1] == f"127.0.0.1:{port}"
        for field in ("interval", "timeout", "retries", "start_period"):
            assert field in check, (name, field)


def test_nodes_form_one_cluster_and_use_only_options_kvwire_serve_knows(compose):
    services = compose["services"]
    clusters = {services[name]["environment"]["KVWIRE_CLUSTER"] for name in NODE_SERVICES}
    assert len(clusters) == 1
    cluster = members(clusters.pop())
    assert sorted(cluster) == ["n1", "n2", "n3"]
    for name in NODE_SERVICES:
        env = services[name]["environment"]
        assert set(env) <= SERVE_VARIABLES, set(env) - SERVE_VARIABLES
        node_id = env["KVWIRE_NODE_ID"]
        host, port = cluster[node_id].rsplit(":", 1)
        assert host == services[name]["hostname"] == name
        assert env["KVWIRE_LISTEN"] == f"0.0.0.0:{port}"
        assert services[name]["stop_grace_period"] == "15s"  # > the node's 10 s drain
        # Every node proves the same cluster secret, mounted from one file.
        assert env["KVWIRE_CLUSTER_SECRET_FILE"] == "/run/secrets/cluster.secret"
        assert services[name]["secrets"] == [{"source": "cluster_secret", "target": "cluster.secret"}]
    assert compose["secrets"] == {"cluster_secret": {"file": "./cluster.secret"}}
    assert sorted(services[name]["environment"]["KVWIRE_NODE_ID"] for name in NODE_SERVICES) == ["n1", "n2", "n3"]


def test_every_node_joins_so_a_lost_disk_restarted_unattended_catches_up_before_it_votes(compose, tmp_path):
    """systemd (a new, empty StateDirectory) and Docker (a recreated volume) restart a node
    on an empty disk with no person acting; without --join it voted at once and could
    lose an acknowledged write (tests/test_anti_entropy.py runs that sequence on real nodes)."""
    image_env = dict(re.findall(r"(\w+)=(\S+)", dict(dockerfile_instructions())["ENV"]))
    assert image_env["KVWIRE_JOIN"] == "1"
    for name in NODE_SERVICES:  # the compose file's nodes run the image and keep it
        assert compose["services"][name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "KVWIRE_JOIN" not in compose["services"][name]["environment"]
    assert unit_settings()["Service"]["Environment"].count("KVWIRE_JOIN=1") == 1
    # The variable as both files write it switches --join on: the node says it is joining.
    port = free_port_run(2)  # n2 never starts: n1 stays joining
    log = tmp_path / "n1.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "kvwire", "serve", "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}",
             "--cluster", f"n1=127.0.0.1:{port},n2=127.0.0.1:{port + 1}", "--insecure"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("KVWIRE_")}, "KVWIRE_JOIN": "1"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: "event=joining" in log.read_text() or process.poll() is not None, timeout=30,
                 what="the node's log saying it joins, or its exit")
        assert "joining the cluster: until anti-entropy has caught this node up from every peer" in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_haproxy_runs_the_repository_config_in_front_of_the_nodes(compose):
    services = compose["services"]
    haproxy = services["haproxy"]
    assert haproxy["image"].startswith("haproxy:")
    [mount] = haproxy["volumes"]
    source, target, mode = mount.split(":")
    assert (DEPLOY / source).resolve() == ROOT / "haproxy" / "kvwire.cfg"
    assert target == "/usr/local/etc/haproxy/haproxy.cfg" and mode == "ro"
    env = haproxy["environment"]
    cluster = members(services["kvwire1"]["environment"]["KVWIRE_CLUSTER"])
    for i, name in enumerate(NODE_SERVICES, 1):
        node_env = services[name]["environment"]
        assert env[f"KVWIRE_NODE{i}"] == cluster[f"n{i}"] == f"{name}:{node_env['KVWIRE_LISTEN'].rsplit(':', 1)[1]}"
        assert env[f"KVWIRE_HTTP{i}"] == f"{name}:{node_env['KVWIRE_HTTP_LISTEN'].rsplit(':', 1)[1]}"
    published = {int(port.split(":")[-1]) for port in haproxy["ports"]}
    # Loopback only: these nodes have no tokens and no TLS (a security probe's finding).
    assert all(port.startswith("127.0.0.1:") for port in haproxy["ports"]), haproxy["ports"]
    assert published == {int(env[name].rsplit(":", 1)[1]) for name in ("KVWIRE_LB_TCP", "KVWIRE_LB_HTTP", "KVWIRE_LB_STATS")}
    assert set(haproxy["depends_on"]) == set(NODE_SERVICES)
    # Every variable it sets is one the config reads.
    config = (ROOT / "haproxy" / "kvwire.cfg").read_text()
    for name in env:
        assert f"${{{name}}}" in config or f"${{{name}[*]}}" in config, name


def test_the_haproxy_config_validates_with_the_compose_environment(compose, tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: apt-get install -y haproxy (see README)")
    env = {**os.environ, **{str(k): str(v) for k, v in compose["services"]["haproxy"]["environment"].items()}}
    env["KVWIRE_LB_SOCKET"] = str(tmp_path / "admin.sock")
    # The compose names (kvwire1...) don't resolve here: those servers start
    # disabled (init-addr none) instead of HAProxy refusing the config.
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "haproxy" / "kvwire.cfg")], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_dockerfile_copies_files_that_exist_and_everything_setup_py_needs():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    sources = []
    for name, args in instructions:
        if name == "COPY":
            *parts, _destination = args.split()
            sources += [part for part in parts if not part.startswith("--")]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context (the repository root)"
    setup = (ROOT / "setup.py").read_text()
    packages = re.search(r"find_packages\(include=\[(.*?)\]\)", setup)[1]
    top_level = {name.split(".")[0] for name in re.findall(r'"([^"]+)"', packages)}
    needed = {"setup.py", "README.md", *top_level}
    for data in re.findall(r'data_files=\[\("[^"]+", \[([^]]*)\]\)\]', setup):
        needed |= {path.split("/")[0] for path in re.findall(r'"([^"]+)"', data)}
    assert needed <= set(sources), needed - set(sources)


def test_the_dockerfile_runs_a_node_with_known_options_and_a_healthcheck():
    instructions = dict(dockerfile_instructions())  # last of each kind
    assert instructions["ENTRYPOINT"] == '["kvwire", "serve"]'
    assert "kvwire=kvwire.cli.entry:kvwire" in (ROOT / "setup.py").read_text()
    env = dict(re.findall(r"(\w+)=(\S+)", instructions["ENV"]))
    assert set(env) - {"PYTHONUNBUFFERED"} <= SERVE_VARIABLES
    exposed = {int(port) for port in instructions["EXPOSE"].split()}
    assert exposed == {int(env["KVWIRE_LISTEN"].rsplit(":", 1)[1]), int(env["KVWIRE_HTTP_LISTEN"].rsplit(":", 1)[1])}
    assert '"kvwire-cli"' in instructions["HEALTHCHECK"] and instructions["HEALTHCHECK"].endswith('"health"]')
    assert instructions["USER"] == "kvwire"
    assert (DEPLOY / "Dockerfile.dockerignore").exists()


def test_the_healthcheck_command_passes_with_quorum_and_fails_without(compose, tmp_path):
    command = compose["services"]["kvwire1"]["healthcheck"]["test"][1:]
    endpoints = command.index("--endpoints") + 1
    cli = str(Path(sys.executable).with_name("kvwire-cli"))
    with LocalCluster(3, data_dir=tmp_path, sync="off") as cluster:
        run = [cli, *command[1:]]
        run[endpoints] = cluster["n1"].address
        healthy = subprocess.run(run, capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
        cluster.kill("n2")
        cluster.kill("n3")
        cluster.wait_peers("n1", down=["n2", "n3"])
        alone = subprocess.run(run, capture_output=True, text=True, timeout=30)
        assert alone.returncode == 3, (alone.stdout, alone.stderr)


# --- systemd ----------------------------------------------------------------------------------


def unit_settings() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in (DEPLOY / "kvwire.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_the_systemd_unit_runs_kvwire_serve_and_stops_it_gently():
    unit = unit_settings()
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"][0].split()[-2:] == ["kvwire", "serve"] or service["ExecStart"][0].endswith("/kvwire serve")
    assert service["KillSignal"] == ["SIGTERM"]
    assert int(service["TimeoutStopSec"][0]) > 10  # the node drains for up to 10 s
    assert service["Restart"] == ["on-failure"]
    # Exit 1 may pass (a port held, a full disk): restarted however long that takes, not
    # given up after systemd's default of 5 starts in 10 s (a deploy probe's finding).
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    # A bad option, a refused data directory or TLS file: restarting won't help.
    assert service["RestartPreventExitStatus"][0].split() == [str(USAGE_ERROR_STATUS), str(CONFIG_REFUSED_STATUS)]
    assert service["User"] == ["kvwire"]
    for assignment in service.get("Environment", []):
        assert assignment.split("=", 1)[0] in SERVE_VARIABLES
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_systemd_unit_keeps_the_data_directory_private():
    """systemd makes a StateDirectory 0755 and re-applies that mode at every start, and
    the default umask makes the database 0644: every key readable by any local user."""
    service = unit_settings()["Service"]
    assert service["StateDirectoryMode"] == ["0700"]
    assert service["UMask"] == ["0077"]


def test_the_systemd_units_example_environment_file_is_valid_as_written():
    """An environment file's "#" starts a comment only at the start of a line: a comment
    after a value became part of it, and the node refused to start (exit 2, not restarted)."""
    examples = re.findall(r"^#\s+(KVWIRE_[A-Z_]+)=(.*)$", (DEPLOY / "kvwire.service").read_text(), re.MULTILINE)
    assert len(examples) >= 6
    for name, value in examples:
        assert name in SERVE_VARIABLES, name
        assert value and not re.search(r"\s|#", value), (name, value)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: the test command installs it (apt-get install systemd)"
    # verify wants ExecStart's binary to exist: point it at this venv's kvwire.
    text = (DEPLOY / "kvwire.service").read_text()
    assert text.count("/opt/kvwire/bin/kvwire serve") == 1
    unit = tmp_path / "kvwire.service"
    unit.write_text(text.replace("/opt/kvwire/bin/kvwire", str(Path(sys.executable).with_name("kvwire"))))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings


# --- operations guide -------------------------------------------------------------------------


def test_the_operations_guide_covers_monitoring_alerts_and_troubleshooting():
    guide = (ROOT / "docs" / "operations.md").read_text()
    headings = re.findall(r"^#+ (.+)$", guide, re.MULTILINE)
    for wanted in ("Monitoring", "Alerts", "Troubleshooting"):
        assert any(wanted in heading for heading in headings), wanted
    for topic in ("node down", "no quorum", "retry rate", "load balancer down", "writes fail", "slow failover", "false positive"):
        assert topic in guide.lower(), topic
    assert guide.count("```") >= 10  # commands to run, not just advice
