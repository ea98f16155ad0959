"""schemathesis against the OpenAPI document the bridge serves, with every check, in front of a real cluster.

Its CLI runs every phase (examples, coverage, fuzzing, stateful) with a fixed
seed and at most 50 examples per operation: a few seconds per run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvwire.http_bridge import BridgeConfig, openapi_document, status_for
from kvwire.protocol import errors
from kvwire.testing import LocalCluster, error_classes, sample_error, wait_for
from rest_helpers import PREFIX, BridgeProcess, answers, http, with_http

SEED = 20261128
MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def bridges(tmp_path_factory):
    """Base URLs of a standalone bridge and of a node's own bridge, in front of 3 real nodes."""
    root = tmp_path_factory.mktemp("openapi")
    nodes = LocalCluster(3, data_dir=root / "data", sync="off")
    urls = with_http(nodes, "n3")
    with nodes:
        wait_for(lambda: answers(urls["n3"]), timeout=15, what="n3's bridge")
        with BridgeProcess(nodes.endpoints, log_path=root / "bridge.log") as standalone:
            yield {"standalone": standalone.url, "in-node": urls["n3"]}
            assert "Traceback" not in standalone.log()
        for node in nodes:
            assert "Traceback" not in node.log()


@pytest.mark.parametrize("kind", ["standalone", "in-node"])
def test_schemathesis_finds_nothing_with_every_check(bridges, kind, tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{bridges[kind]}{PREFIX}/openapi.json",
            "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
            "--request-timeout", "10",
        ],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No issues found" in result.stdout, result.stdout
    # Every documented operation was exercised (schemathesis leaves out the document's own path).
    assert "4 selected / 4 total" in result.stdout, result.stdout



# Statuses only some operations can give; any other is possible on every one.
OPERATIONS_OF_STATUS = {"404": ("get", "delete"), "406": ("get",), "409": ("delete",), "413": ("put",)}


def test_every_status_the_bridge_maps_errors_to_is_documented():
    from kvwire.http_bridge import UnrepresentableValueError

    document = openapi_document(BridgeConfig())
    kv = document["paths"]["/kv-store/v1/kv/{key}/"]
    classes = error_classes()
    assert {errors.ConflictError, errors.ServerTimeoutError, UnrepresentableValueError} <= set(classes)
    for cls in classes:
        status = str(status_for(sample_error(cls)))
        for operation in OPERATIONS_OF_STATUS.get(status, ("get", "put", "delete")):
            assert status in kv[operation]["responses"], (cls.__name__, operation, status)


def test_what_any_request_may_get_is_documented_on_every_operation():
    # The bridge answers 408 on any route (tests/test_http_bounds.py), the timeout as configured,
    # and 400 (a malformed request, a header twice) and 417 on any route too (test_http_refusals.py):
    # a REST probe found them undeclared on health and openapi.json, 417 on all but PUT.
    document = openapi_document(BridgeConfig(request_timeout=2.5))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                for status in ("400", "408", "417"):
                    assert status in operation["responses"], (path, method, status)
                assert operation["responses"]["408"] == {"$ref": "#/components/responses/RequestTimeout"}, (path, method)
    assert "within 2.5 s of its first byte" in document["components"]["responses"]["RequestTimeout"]["description"]


def test_head_a_strict_put_body_and_an_optional_retry_after_are_declared():
    document = openapi_document(BridgeConfig())
    paths = document["paths"]
    assert {"get", "head", "put", "delete"} <= set(paths["/kv-store/v1/kv/{key}/"])
    assert {"get", "head"} <= set(paths["/kv-store/v1/health/"])
    for operation in ("get", "delete"):  # a key longer than the nodes take
        assert "413" in paths["/kv-store/v1/kv/{key}/"][operation]["responses"]
    assert document["components"]["schemas"]["PutBody"]["additionalProperties"] is False
    # The 503 past --max-connections has none (README).
    assert document["components"]["responses"]["Unavailable"]["headers"]["Retry-After"]["required"] is False


def test_the_served_document_is_the_one_built_from_the_bridge_limits(bridges):
    served = http("GET", f"{bridges['standalone']}{PREFIX}/openapi.json").json
    assert served == openapi_document(BridgeConfig())
    key = served["paths"]["/kv-store/v1/kv/{key}/"]["parameters"][0]
    assert key["schema"] == {"type": "string", "minLength": 1, "maxLength": 1024}
