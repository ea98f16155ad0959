"""deploy/prometheus and deploy/grafana: the alert rules, their unit tests and the dashboard.

The rules go through `promtool check rules` and `promtool test rules` (promtool is in Debian's
`prometheus` package; a missing promtool is a failure, not a skip). Every metric name in a rule
expression or a dashboard query must be one a real node or a real bridge exports: a 3-node cluster
is started, written to and read from, and the names are looked up in what /metrics serves.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kvwire import Client, KeyNotFoundError
from kvwire.testing import LocalCluster, free_port, wait_for
from kvwire.testing.bridge import REST_PREFIX, BridgeProcess

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "kvwire-rules.yml"
RULE_TESTS = PROMETHEUS / "kvwire-rules.test.yml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "kvwire.json"

REQUIRED_ALERTS = {
    "KvwireNodeDown", "KvwireNoQuorum", "KvwireHighHintingRate", "KvwireHighRetryRate",
    "KvwireHighWriteLatency", "KvwireSlowFsync", "KvwireStorageFailing", "KvwireRepairFallingBehind",
}
METRIC_NAME = re.compile(r"\bkvwire_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
BRIDGE_PREFIX = "kvwire_http_"


def promtool(*args: str) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install it with `apt-get install -y prometheus` (Debian 12 ships promtool in that package)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [target["expr"] for panel in all_panels(board["panels"]) for target in panel.get("targets", []) if target.get("expr")]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def metric_names(expressions: list[str]) -> set[str]:
    return {name for expression in expressions for name in METRIC_NAME.findall(expression)}


# --- the rules ------------------------------------------------------------------------------


def test_promtool_check_rules_passes():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_scrape_config_is_valid_and_loads_the_rules():
    result = promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"kvwire", "kvwire-bridge"}


def test_one_group_with_every_required_alert():
    document = yaml.safe_load(RULES.read_text())
    assert [group["name"] for group in document["groups"]] == ["kvwire"]
    missing = REQUIRED_ALERTS - alert_names()
    assert not missing, f"alerts missing from {RULES.name}: {sorted(missing)}"


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule.get("alert", rule.get("record")))
def test_every_alert_has_for_severity_summary_and_description(rule):
    assert "alert" in rule, "only alerting rules here"
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{rule['alert']}: 'for' missing or not a duration"
    assert rule.get("labels", {}).get("severity") in {"critical", "warning"}
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip()
    assert len(annotations.get("description", "")) > 100, f"{rule['alert']}: the description should tell the operator what to check"


def test_every_alert_says_why_its_threshold():
    lines = RULES.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- alert:"):
            previous = next(text for text in reversed(lines[:number]) if text.strip())
            assert previous.strip().startswith("#"), f"no comment above {line.strip()!r} saying why its threshold"


def test_unit_tests_cover_every_alert_with_a_firing_case():
    document = yaml.safe_load(RULE_TESTS.read_text())
    assert document["rule_files"] == [RULES.name]
    firing, silent = set(), set()
    for group in document["tests"]:
        assert group.get("input_series"), "every test group has input series"
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert firing == alert_names(), (
        f"alerts without a firing test: {sorted(alert_names() - firing)}; tests for unknown alerts: {sorted(firing - alert_names())}")
    assert silent <= alert_names()
    assert len(silent) >= 4, "a few alerts should also have a case where they must not fire"


# --- the dashboard ---------------------------------------------------------------------------


def test_dashboard_is_importable_and_uses_a_datasource_variable():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_shows_what_the_issue_asks_for():
    queried = metric_names(dashboard_queries())
    wanted = {
        "kvwire_has_quorum", "kvwire_requests_total", "kvwire_request_duration_seconds_bucket", "kvwire_no_quorum_total",
        "kvwire_hedged_requests_total", "kvwire_read_write_backs_total", "kvwire_peer_last_heard_seconds",
        "kvwire_peer_pending_hints", "kvwire_peer_transitions_total", "kvwire_group_commit_rows_bucket",
        "kvwire_group_commit_duration_seconds_bucket", "kvwire_keys", "kvwire_tombstones", "kvwire_database_bytes",
        "kvwire_cache_hits_total", "kvwire_cache_misses_total", "kvwire_open_connections",
        "kvwire_http_requests_total", "kvwire_http_request_duration_seconds_bucket",
    }
    assert not wanted - queried, f"no panel queries {sorted(wanted - queried)}"
    assert any('up{job="$job"}' in query for query in dashboard_queries()), "no panel shows the nodes' scrape status"


# --- the names exist -------------------------------------------------------------------------


def exported_names(text: str) -> set[str]:
    """Every series name the exposition has samples for, plus the names a declared family will have
    (a labelled metric has no samples until its first observation, but it is exported)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(family.name)
    return names


def fetch_metrics(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return response.read().decode() if response.status == 200 else None
    except (OSError, urllib.error.HTTPError):
        return None


@pytest.fixture(scope="module")
def expositions(tmp_path_factory) -> dict[str, str]:
    """/metrics of a real node (n1 of a 3-node cluster, HTTP listener on) and of a real standalone bridge,
    after PUT/GET/DELETE through kvwire.Client and through the bridge."""
    data_dir = tmp_path_factory.mktemp("monitoring")
    cluster = LocalCluster(3, data_dir=data_dir)
    node = cluster["n1"]
    http = f"{node.host}:{free_port(node.host)}"
    node.extra_args += ["--http-listen", http]
    with cluster:
        with Client([node.address], timeout=5.0) as kv:
            kv.put("monitoring", {"n": 1})
            assert kv.get("monitoring") == {"n": 1}
            kv.get("monitoring", consistency="one")
            kv.delete("monitoring")
            with pytest.raises(KeyNotFoundError):
                kv.get("monitoring")
        with BridgeProcess([node.address], log_path=data_dir / "bridge.log") as bridge:
            rest = f"{bridge.url}{REST_PREFIX}/kv/monitoring-rest/"
            request = urllib.request.Request(rest, data=json.dumps({"value": 1}).encode(), method="PUT",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5.0) as response:
                assert response.status in (200, 201)
            with urllib.request.urlopen(rest, timeout=5.0) as response:
                assert response.status == 200
            bridge_url = f"{bridge.url}/metrics"
            bridge_text = fetch_metrics(bridge_url)
        node_url = f"http://{http}/metrics"
        try:
            node_text = wait_for(lambda: fetch_metrics(node_url), timeout=10.0, what=f"{node_url} answering")
        except TimeoutError:
            node_text = None
    missing = [f"the node serves no /metrics at {node_url} (--http-listen {http})"] * (node_text is None)
    missing += [f"the bridge serves no /metrics at {bridge_url}"] * (bridge_text is None)
    if missing:
        pytest.fail("; ".join(missing))
    return {"node": node_text, "bridge": bridge_text}


def test_the_node_counts_the_requests_it_answered(expositions):
    ops = {sample.labels.get("op") for family in text_string_to_metric_families(expositions["node"])
           for sample in family.samples if sample.name == "kvwire_requests_total" and sample.value > 0}
    assert {"put", "get", "delete"} <= ops


@pytest.mark.parametrize("source, expressions", [
    ("rules", [rule["expr"] for rule in rules()]),
    ("dashboard", dashboard_queries()),
])
def test_every_queried_metric_is_exported(expositions, source, expressions):
    node_names = exported_names(expositions["node"])
    bridge_names = exported_names(expositions["bridge"])
    queried = metric_names(expressions)
    assert queried, f"no kvwire_ metric found in the {source}"
    unknown = sorted(
        name for name in queried
        if name not in (bridge_names if name.startswith(BRIDGE_PREFIX) else node_names)
    )
    assert not unknown, f"the {source} query metrics no node or bridge exports: {unknown}"
