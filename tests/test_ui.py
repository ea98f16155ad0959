"""The cluster page (http_bridge/ui.py), in a real browser against a real 3-node cluster.

Headless Chromium from Debian drives the page (``apt-get install -y chromium
chromium-driver``, ``pip install selenium``; .ci/run installs both): the tests
fail, not skip, when any of the three is missing. Every wait polls the DOM
against a deadline. The screenshot of the page with three nodes UP is written
to the test's tmp_path; to refresh docs/ui.png, run

    KVWIRE_UI_SCREENSHOT=docs/ui.png .venv/bin/python -m pytest -q tests/test_ui.py
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from kvwire.protocol import Health, HealthReply
from kvwire.testing import LocalCluster, ScriptedNode, free_port
from kvwire.testing.bridge import BridgeProcess

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as exc:  # failed below, with the fix, in every test that needs the browser
    SELENIUM_MISSING: ImportError | None = exc
else:
    SELENIUM_MISSING = None

UI = "/kv-store/v1/ui"
NODES = ("n1", "n2", "n3")
# The page polls every 500 ms and the bridge gives each node 0.4 s to answer HEALTH.
DOWN_WITHIN_S = 2.0
UP_AFTER_READY_S = 2.0
WINDOW = (1280, 900)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Peers notice a dead node in half a second, so the peers' tables change within the test.
    with LocalCluster(3, data_dir=tmp_path_factory.mktemp("ui-cluster"), heartbeat_interval=0.1, failure_timeout=0.5) as started:
        yield started


@pytest.fixture(scope="module")
def bridge(cluster, tmp_path_factory):
    with BridgeProcess(cluster.endpoints, log_path=tmp_path_factory.mktemp("ui-bridge") / "bridge.log") as started:
        yield started


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if SELENIUM_MISSING is not None:
        pytest.fail(
            f"selenium is not installed ({SELENIUM_MISSING}); the cluster page is tested in a real browser: "
            "run `.venv/bin/pip install selenium` (CI's .ci/run installs it)", pytrace=False,
        )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", chromedriver)) if path is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found on PATH; the cluster page is tested in headless Chromium: "
            "run `apt-get install -y chromium chromium-driver` (CI's .ci/run installs them)", pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        # Nothing but the bridge is ever fetched.
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions",
    ):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager (which downloads drivers) is never run.
    service = Service(executable_path=chromedriver, log_output=str(tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        pytest.fail(f"headless Chromium did not start ({chromium}, {chromedriver}): {exc.msg or exc}", pytrace=False)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, bridge):
    """The cluster page, freshly loaded, once every node shows UP."""
    browser.get(f"{bridge.url}{UI}/")
    wait(browser, lambda: node_states(browser) == dict.fromkeys(NODES, "UP"), 15.0,
         lambda: f"every node UP; the page shows {node_states(browser)}")
    return browser


# --- helpers -----------------------------------------------------------------------------


def wait(driver, condition, timeout: float, describe):
    """Poll ``condition`` every 50 ms until it is truthy; fail saying what was awaited and what was seen."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda _: condition()
        )
    except TimeoutException:
        pytest.fail(f"not within {timeout} s: {describe()}", pytrace=False)


def node_states(driver) -> dict[str, str]:
    """``{node_id: "UP" | "DOWN" | "UNKNOWN"}`` as the page shows it, read in one go."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#nodes .node')).map(c => [c.dataset.nodeId || c.dataset.endpoint, c.dataset.state]);"
    )
    return dict(rows)


# The page redraws each card's contents on every poll, so a card is read in one script, never element by element.
CARD_SCRIPT = """
const card = document.querySelector(`#nodes .node[data-node-id="${arguments[0]}"]`);
if (!card) return null;
const text = (selector) => { const found = card.querySelector(selector); return found ? found.textContent : null; };
return {
  state: card.dataset.state, badge: text("header .badge"), error: text(".error"),
  quorum: card.querySelector("dd.quorum")?.dataset.quorum ?? null, rate: text("dd.rate"), p99: text("dd.p99"),
  peers: Array.from(card.querySelectorAll("table.peers tbody tr")).map((row) => ({
    peer: row.dataset.peer, state: row.dataset.state,
    heard: row.cells[2].textContent, hints: row.cells[3].textContent})),
};
"""


def card(driver, node_id: str) -> dict:
    """What ``node_id``'s card shows: state, badge, error, quorum, rate, p99, and its peers' rows."""
    return driver.execute_script(CARD_SCRIPT, node_id)


def peer_states(driver, node_id: str) -> dict[str, str]:
    return {row["peer"]: row["state"] for row in card(driver, node_id)["peers"]}


def rest(bridge, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    url = urllib.parse.urlsplit(bridge.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def key_browser(driver, action: str, key: str, value: str | None = None) -> tuple[str, str]:
    """Fill in the key browser, press ``action`` (get, put, delete), wait for its answer: (status, body)."""
    status = driver.find_element(By.ID, "kb-status")
    driver.execute_script("arguments[0].dataset.status = 'pending';", status)
    key_input = driver.find_element(By.ID, "kb-key")
    key_input.clear()
    key_input.send_keys(key)
    if value is not None:
        value_input = driver.find_element(By.ID, "kb-value")
        value_input.clear()
        value_input.send_keys(value)
    driver.find_element(By.ID, f"kb-{action}").click()
    wait(driver, lambda: status.get_attribute("data-status") != "pending", 10.0, lambda: f"an answer to {action} {key!r}")
    return status.get_attribute("data-status"), driver.find_element(By.ID, "kb-body").text


# --- the page ----------------------------------------------------------------------------


def test_the_page_shows_every_node_up_with_quorum_and_peers(page, bridge, tmp_path):
    summary = page.find_element(By.ID, "summary").text
    assert summary.startswith("3 of 3 nodes UP"), summary
    for node_id in NODES:
        others = {other: "UP" for other in NODES if other != node_id}
        wait(page, lambda: peer_states(page, node_id) == others, 5.0, lambda: f"{node_id}'s peers UP: {peer_states(page, node_id)}")
        shown = card(page, node_id)
        assert shown["badge"] == "UP" and shown["quorum"] == "yes", shown
        assert [row["hints"] for row in shown["peers"]] == ["0", "0"], shown
        assert all(row["heard"].endswith(("ms", " s")) for row in shown["peers"]), shown

    # Some traffic, so that the request rates and p99s have something to show.
    for number in range(60):
        status, _, _ = rest(bridge, "PUT", f"/kv-store/v1/kv/load:{number}/", json.dumps({"value": number}).encode())
        assert status in (200, 201)

    def rates() -> dict[str, tuple[str, str]]:
        return {node_id: (card(page, node_id)["rate"], card(page, node_id)["p99"]) for node_id in NODES}

    wait(page, lambda: all(rate.endswith("/s") and rate != "0 /s" and p99.endswith("ms") for rate, p99 in rates().values()),
         5.0, lambda: f"a request rate and a p99 on every node: {rates()}")

    # The key browser showing a read, for the picture.
    assert key_browser(page, "put", "user:42", '{"name": "Ada", "langs": ["en", "fr"]}')[0] in ("200", "201")
    assert key_browser(page, "get", "user:42")[0] == "200"
    png = page.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    (tmp_path / "ui.png").write_bytes(png)
    if os.environ.get("KVWIRE_UI_SCREENSHOT"):
        Path(os.environ["KVWIRE_UI_SCREENSHOT"]).write_bytes(png)


def test_the_key_browser_puts_gets_and_deletes(page):
    # A "/" and HTML in the key: percent-encoded into the path, shown as text.
    key = "ui/<b>key</b> & more"
    status, body = key_browser(page, "put", key, '{"name": "Ada", "n": [1, 2.5, null], "big": 18446744073709551615}')
    assert status == "201", body
    status, body = key_browser(page, "get", key)
    assert status == "200", body
    document = json.loads(body)
    assert document["key"] == key
    assert document["value"] == {"name": "Ada", "n": [1, 2.5, None], "big": 2**64 - 1}  # exact: the text was sent as typed
    assert key in page.find_element(By.ID, "kb-status").text
    assert page.find_elements(By.CSS_SELECTOR, "#kb-result b, #nodes b") == []  # no markup from data

    status, body = key_browser(page, "put", key, '"second"')
    assert status == "200" and json.loads(body)["value"] == "second", body
    status, body = key_browser(page, "delete", key)
    assert status == "200", body
    status, body = key_browser(page, "get", key)
    assert status == "404", body
    assert "not found" in page.find_element(By.ID, "kb-status").text
    assert "not found" in json.loads(body)["error"]

    # Refused in the page, before any request.
    status, _ = key_browser(page, "put", key, "{not json")
    assert status == ""
    assert "not JSON" in page.find_element(By.ID, "kb-status").text
    status, _ = key_browser(page, "get", "")
    assert status == "" and page.find_element(By.ID, "kb-status").text == "Enter a key."
    for dots in (".", ".."):  # a browser would resolve them as path segments and ask another URL
        status, _ = key_browser(page, "get", dots)
        assert status == "" and "cannot be named in a URL" in page.find_element(By.ID, "kb-status").text


def test_a_killed_node_shows_down_at_once_and_up_again_after_its_restart(page, cluster):
    cluster.kill("n2")
    killed = time.monotonic()
    wait(page, lambda: node_states(page) == {"n1": "UP", "n2": "DOWN", "n3": "UP"}, DOWN_WITHIN_S,
         lambda: f"n2 DOWN after kill -9; the page shows {node_states(page)}")
    print(f"n2 shown DOWN {time.monotonic() - killed:.2f} s after kill -9")
    down = card(page, "n2")
    assert down["badge"] == "DOWN" and "127.0.0.2" in down["error"], down  # why: the connection refused
    # The survivors keep quorum and, within their failure timeout, see n2 DOWN.
    assert page.find_element(By.ID, "summary").text.startswith("2 of 3 nodes UP · quorum")
    for node_id in ("n1", "n3"):
        wait(page, lambda: peer_states(page, node_id).get("n2") == "DOWN", 5.0,
             lambda: f"{node_id} seeing n2 DOWN: {peer_states(page, node_id)}")

    cluster.start("n2")
    cluster.wait_ready("n2")
    ready = time.monotonic()
    wait(page, lambda: node_states(page) == dict.fromkeys(NODES, "UP"), 15.0,
         lambda: f"n2 UP after its restart; the page shows {node_states(page)}")
    up_after = time.monotonic() - ready
    print(f"n2 shown UP {up_after:.2f} s after it was ready")
    assert up_after < UP_AFTER_READY_S, f"n2 shown UP only {up_after:.2f} s after it was ready"
    for node_id in ("n1", "n3"):
        wait(page, lambda: peer_states(page, node_id).get("n2") == "UP", 5.0,
             lambda: f"{node_id} seeing n2 UP: {peer_states(page, node_id)}")


def test_a_bridge_that_stops_answering_leaves_no_state_shown_as_current(browser, cluster, tmp_path):
    with BridgeProcess(cluster.endpoints, log_path=tmp_path / "bridge.log") as own:
        browser.get(f"{own.url}{UI}/")
        wait(browser, lambda: node_states(browser) == dict.fromkeys(NODES, "UP"), 15.0,
             lambda: f"every node UP; the page shows {node_states(browser)}")
    # The page's bridge is gone: every card, badge and the summary say so.
    wait(browser, lambda: node_states(browser) == dict.fromkeys(NODES, "UNKNOWN"), 5.0,
         lambda: f"every node UNKNOWN; the page shows {node_states(browser)}")
    assert [card(browser, node_id)["badge"] for node_id in NODES] == ["UNKNOWN"] * 3
    summary = browser.find_element(By.ID, "summary")
    assert summary.text == "Node states unknown: the bridge did not answer" and summary.get_attribute("class") == "bad"


def test_showing_the_tab_during_a_slow_poll_starts_no_second_loop(page, cluster):
    # With n3 stopped, each poll waits 0.4 s on its HEALTH: a visibilitychange then
    # finds no timer set, and must not start a loop beside the one in flight.
    cluster.pause("n3")
    try:
        wait(page, lambda: node_states(page).get("n3") == "DOWN", DOWN_WITHIN_S, lambda: f"n3 DOWN: {node_states(page)}")
        page.execute_script("performance.clearResourceTimings();")
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            page.execute_script("document.dispatchEvent(new Event('visibilitychange'));")
            time.sleep(0.05)  # the pace of the events under test, not a wait for a condition
        polls = page.execute_script(
            "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/ui/cluster')).length;")
    finally:
        cluster.resume("n3")
    # One loop polls at most every 500 ms (and here each poll takes 0.4 s): 2 s allow 5 at most.
    assert polls <= 5, f"{polls} polls in 2 s: more than one polling loop"


# --- what the bridge serves --------------------------------------------------------------


def test_the_cluster_endpoint_reports_every_node(bridge, cluster):
    status, headers, body = rest(bridge, "GET", f"{UI}/cluster")
    assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    document = json.loads(body)
    assert document["endpoints"] == cluster.endpoints
    assert [node["endpoint"] for node in document["nodes"]] == cluster.endpoints
    for node, node_id in zip(document["nodes"], NODES):
        assert node["reachable"] is True and node["node_id"] == node_id
        assert node["health"]["node_id"] == node_id
        assert node["health"]["cluster"]["has_quorum"] is True
        assert set(node["health"]["requests"]) == {"window_s", "per_s", "p99_ms"}
        assert node["latency_ms"] >= 0
    assert rest(bridge, "GET", f"{UI}/cluster/")[0] == 200

    status, headers, body = rest(bridge, "POST", f"{UI}/cluster")
    assert status == 405 and headers["content-type"].startswith("application/json")
    assert "not allowed" in json.loads(body)["error"]


def test_an_unreachable_node_is_reported_with_why(cluster, tmp_path):
    # A bridge whose second endpoint has nothing listening (and no peer lists that address: no name).
    dead = "127.0.0.9:9"
    with BridgeProcess([cluster.endpoints[0], dead], log_path=tmp_path / "bridge.log") as other:
        status, _, body = rest(other, "GET", f"{UI}/cluster")
    assert status == 200
    alive, unreachable = json.loads(body)["nodes"]
    assert alive["reachable"] is True and alive["node_id"] == "n1"
    assert unreachable == {"endpoint": dead, "node_id": None, "reachable": False, "error": unreachable["error"]}
    assert dead in unreachable["error"]


def test_a_down_node_spelled_otherwise_than_its_peers_list_it_is_still_named(cluster, tmp_path):
    # n3 as "127.3:PORT", which its peers list as 127.0.0.3:PORT: the one member id left over.
    third = cluster.endpoints[2].replace("127.0.0.3", "127.3")
    with BridgeProcess([*cluster.endpoints[:2], third], log_path=tmp_path / "bridge.log") as other:
        cluster.kill("n3")
        try:
            status, _, body = rest(other, "GET", f"{UI}/cluster")
        finally:
            cluster.start("n3")
            cluster.wait_ready("n3")
    assert status == 200
    down = json.loads(body)["nodes"][2]
    assert down["endpoint"] == third and down["reachable"] is False and down["node_id"] == "n3", down


@pytest.mark.parametrize("same_port", [False, True], ids=["other-port", "n3s-port-other-ip"])
def test_a_dead_endpoint_of_no_members_address_is_left_unnamed(cluster, tmp_path, same_port):
    """n3 alive but not among the bridge's endpoints, and a dead address in its place:
    the one member left over was n3, so the page showed the live n3 DOWN. Nodes of a real
    cluster often share a port: another IP address on n3's port is no spelling of n3's."""
    n3_port = int(cluster.endpoints[2].rsplit(":", 1)[1])
    dead = f"127.0.0.9:{n3_port}" if same_port else f"127.0.0.1:{free_port()}"
    with BridgeProcess([*cluster.endpoints[:2], dead], log_path=tmp_path / "bridge.log") as other:
        status, _, body = rest(other, "GET", f"{UI}/cluster")
    assert status == 200
    unreachable = json.loads(body)["nodes"][2]
    assert unreachable["endpoint"] == dead and unreachable["reachable"] is False
    assert unreachable["node_id"] is None, unreachable


def _odd_health(request):
    """A node's HEALTH that JSON cannot carry as it is (NaN, infinity, bytes) and whose
    peer list holds a null: the page must still draw the other nodes."""
    if isinstance(request, Health):
        return HealthReply(request.id, {"status": "healthy", "node_id": "odd", "uptime_s": float("nan"),
                                        "requests": {"per_s": float("inf")}, "blob": b"\x00\xff",
                                        "cluster": {"has_quorum": True, "nodes": [None]}})
    return None


def test_a_health_report_json_cannot_carry_fails_no_other_node(browser, cluster, tmp_path):
    """It made /ui/cluster answer 406 (to_json_text refuses NaN for stored values), and the
    page showed every node UNKNOWN; a null peer entry made the page blame the bridge."""
    with ScriptedNode(_odd_health, node_id="odd") as odd, \
            BridgeProcess([cluster.endpoints[0], odd.address], log_path=tmp_path / "bridge.log") as other:
        status, _, body = rest(other, "GET", f"{UI}/cluster")
        assert status == 200, body
        shown = json.loads(body)["nodes"][1]["health"]
        assert (shown["uptime_s"], shown["requests"]["per_s"], shown["blob"]) == ("nan", "inf", "00ff")
        browser.get(f"{other.url}{UI}/")
        wait(browser, lambda: node_states(browser).get("n1") == "UP" and node_states(browser).get("odd") == "UP",
             15.0, lambda: f"n1 and the odd node UP; the page shows {node_states(browser)}")


def test_the_page_and_its_files_are_served_with_their_types(bridge):
    # Relative, so that a proxy's path prefix stays; the query goes along.
    status, headers, _ = rest(bridge, "GET", UI)
    assert status == 308 and headers["location"] == "ui/"
    status, headers, _ = rest(bridge, "GET", f"{UI}?refresh=1")
    assert status == 308 and headers["location"] == "ui/?refresh=1"
    # As it came: decoded, %23 became a fragment.
    status, headers, _ = rest(bridge, "GET", f"{UI}?x=%23frag")
    assert status == 308 and headers["location"] == "ui/?x=%23frag"
    expected = {f"{UI}/": "text/html", f"{UI}/ui.js": "text/javascript", f"{UI}/ui.css": "text/css",
                f"{UI}/favicon.svg": "image/svg+xml"}
    for path, content_type in expected.items():
        status, headers, body = rest(bridge, "GET", path)
        assert status == 200 and headers["content-type"] == f"{content_type}; charset=utf-8", (path, headers)
        assert headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in headers["content-security-policy"]
        assert body
    # Nothing in the page comes from elsewhere.
    for path in (f"{UI}/", f"{UI}/ui.js", f"{UI}/ui.css"):
        text = rest(bridge, "GET", path)[2].decode()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text, path
    status, headers, body = rest(bridge, "GET", f"{UI}/app.py")
    assert status == 404 and json.loads(body) == {"error": f"no such path: {UI}/app.py"}
