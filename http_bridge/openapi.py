"""The OpenAPI 3 document served at ``/kv-store/v1/openapi.json``.

Built from the bridge's own limits, so the document states what this bridge
accepts; the tests run schemathesis against it with every check enabled.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from kvwire.client.json_values import BASE64_PATTERN, BYTES_TAG

if TYPE_CHECKING:
    from .config import BridgeConfig

_SCHEMAS = "#/components/schemas/"
_RESPONSES = "#/components/responses/"


def openapi_document(config: BridgeConfig) -> dict[str, Any]:
    limits = config.limits
    key_parameter = {
        "name": "key",
        "in": "path",
        "required": True,
        "description": (
            "The key, percent-encoded as UTF-8 (a `/` inside a key is `%2F`, a `%` is `%25`). At most "
            f"{limits.max_key_bytes} bytes in UTF-8, so at most {limits.max_key_bytes} characters; "
            "a longer key is refused with 400."
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": limits.max_key_bytes},
    }
    consistency_parameter = {
        "name": "consistency",
        "in": "query",
        "required": False,
        "description": (
            "`quorum` (the default) is linearizable and needs a majority of the nodes; "
            "`one` answers from one node's copy, which needs no majority but may be stale."
        ),
        "schema": {"type": "string", "enum": ["one", "quorum"]},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "kvwire REST API",
            "version": _version(),
            "description": (
                "The HTTP bridge of kvwire, a replicated key-value store. Every response is JSON; "
                'every error is `{"error": "..."}`, with `"maybe_applied": true|false` when a failed '
                "write is known to be possibly applied (true) or not applied at all (false). Paths are "
                "also accepted without their trailing slash. A method a path does not take is answered 405 "
                "with `Allow`. A body is read as JSON whatever its `Content-Type` says. The same port also serves Prometheus metrics at `/metrics` and a cluster page "
                "under `/kv-store/v1/ui/`, which are not part of this API."
            ),
        },
        "paths": {
            "/kv-store/v1/kv/{key}/": {
                "parameters": [key_parameter],
                "get": {
                    "operationId": "getKey",
                    "summary": "Read a key",
                    "parameters": [consistency_parameter],
                    "responses": {
                        "200": _json_response("The value and its version.", "Entry"),
                        "404": {"$ref": _RESPONSES + "NotFound"},
                        "406": {"$ref": _RESPONSES + "NotRepresentable"},
                        "413": {"$ref": _RESPONSES + "TooLarge"},
                        **_request_refusals(),
                        **_access_failures(config),
                        **_cluster_failures(),
                    },
                },
                "head": {
                    "operationId": "headKey",
                    "summary": "A GET's status and headers, without its body",
                    "parameters": [consistency_parameter],
                    "responses": {
                        "200": {"description": "The key holds a value."},
                        "404": {"description": "No such key (or a deleted one)."},
                        "406": {"description": "The stored value is one JSON cannot carry (as for GET)."},
                        "413": {"description": "The key is too long."},
                        **_request_refusals(),
                        **_access_failures(config),
                        **_cluster_failures(),
                    },
                },
                "put": {
                    "operationId": "putKey",
                    "summary": "Create or replace a key",
                    "description": (
                        "Stored once a majority of the nodes has it durably. 201 when the key held no "
                        "value before (never written, or deleted), 200 when it replaced one, as the node "
                        "judged it with the new version: exact against writes acknowledged earlier; two "
                        "PUTs creating a key at once through different nodes may both get 201. A 503 "
                        "with no quorum means the write may or may not have been applied. Sent again with "
                        "the same Idempotency-Key (or X-Kvwire-Request-Id) within a minute, the PUT is applied "
                        "once: the repeat answers the first write's version (with 200)."
                    ),
                    "parameters": [
                        {
                            "name": header,
                            "in": "header",
                            "required": False,
                            "description": description,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                        }
                        for header, description in (
                            ("Idempotency-Key", "The write's id: repeats of this PUT with it are applied once."),
                            ("X-Kvwire-Request-Id", "Used as the write's id when there is no Idempotency-Key; "
                                                    "HAProxy's and nginx's configurations set one on every request."),
                        )
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _SCHEMAS + "PutBody"},
                                "example": {"value": {"name": "Ada", "langs": ["en", "fr"]}},
                            }
                        },
                    },
                    "responses": {
                        "200": _json_response("Replaced: the stored value and its new version.", "Entry"),
                        "201": {
                            **_json_response("Created: the stored value and its version.", "Entry"),
                            "headers": {
                                "Location": {
                                    "description": "The key's URL.",
                                    "required": True,
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        "413": {"$ref": _RESPONSES + "TooLarge"},
                        "415": {"$ref": _RESPONSES + "UnsupportedEncoding"},
                        **_request_refusals(),
                        **_access_failures(config),
                        **_cluster_failures(),
                    },
                },
                "delete": {
                    "operationId": "deleteKey",
                    "summary": "Delete a key",
                    "responses": {
                        "200": _json_response("Deleted: the version of the deletion.", "Deleted"),
                        "404": {"$ref": _RESPONSES + "NotFound"},
                        "409": {"$ref": _RESPONSES + "Conflict"},
                        "413": {"$ref": _RESPONSES + "TooLarge"},
                        **_request_refusals(),
                        **_access_failures(config),
                        **_cluster_failures(),
                    },
                },
            },
            "/kv-store/v1/health/": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "Health of the node that answers",
                    "description": (
                        "200 while the node has quorum (a majority of the nodes, itself included, is "
                        "healthy), 503 while it has not, so that a load balancer's HTTP check can act on "
                        "the status alone. A bridge inside a node (`kvwire serve --http-listen`) asks "
                        "its own node first."
                    ),
                    "responses": {
                        "200": _json_response("The node has quorum.", "Health"),
                        **_request_refusals(),
                        "401": {"$ref": _RESPONSES + "Unauthenticated"},
                        "502": {"$ref": _RESPONSES + "BadGateway"},
                        "503": {
                            "description": "The node has no quorum (its health report), or no node answered (an error).",
                            "headers": _retry_after(),
                            "content": {
                                "application/json": {
                                    "schema": {"anyOf": [{"$ref": _SCHEMAS + "Health"}, {"$ref": _SCHEMAS + "Error"}]}
                                }
                            },
                        },
                        "504": {"$ref": _RESPONSES + "GatewayTimeout"},
                        "500": {"$ref": _RESPONSES + "InternalError"},
                    },
                },
                "head": {
                    "operationId": "headHealth",
                    "summary": "The health check's status, without its body",
                    "responses": {
                        "200": {"description": "The node has quorum."},
                        "503": {"description": "The node has no quorum, or no node answered."},
                        **_request_refusals(),
                        "401": {"$ref": _RESPONSES + "Unauthenticated"},
                        "502": {"$ref": _RESPONSES + "BadGateway"},
                        "504": {"$ref": _RESPONSES + "GatewayTimeout"},
                        "500": {"$ref": _RESPONSES + "InternalError"},
                    },
                },
            },
            "/kv-store/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object", "required": ["openapi", "paths"]}}},
                        },
                        **_request_refusals(),
                        **_host_refusals(config),
                        "500": {"$ref": _RESPONSES + "InternalError"},
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(config),
            "responses": _error_responses(config),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "A token from the nodes' --auth-file, passed through to them. Needed only when the "
                        "nodes have an auth file; health never needs one."
                    ),
                }
            },
        },
        # Optional: nodes without an auth file need no token.
        "security": [{}, {"bearer": []}],
    }


def _schemas(config: BridgeConfig) -> dict[str, Any]:
    return {
        "Value": {
            "description": (
                "Any JSON value. Bytes are written as "
                f'`{{"{BYTES_TAG}": "<base64>"}}` (an object with that one member; its string must be '
                "standard base64 with padding) and map keys that are bytes appear as "
                f'`"{BYTES_TAG}:<base64>"`. Integers from -2^63 to 2^64-1 are stored exactly, other '
                "numbers as 64-bit floats. Limits: "
                f"{config.limits.max_value_bytes} bytes as encoded in msgpack (413 beyond), nesting "
                "at most 511 levels deep."
            ),
            "example": {"name": "Ada", "avatar": {BYTES_TAG: "iVBORw0KGgo="}},
        },
        "Bytes": {
            "description": "How a bytes value is written in JSON.",
            "type": "object",
            "required": [BYTES_TAG],
            "properties": {BYTES_TAG: {"type": "string", "pattern": BASE64_PATTERN}},
            "additionalProperties": False,
        },
        "Version": {
            "description": (
                "The version tag of a write: ordered by counter, then node name. Counter 1 means no "
                "earlier write of the key was acknowledged."
            ),
            "type": "object",
            "required": ["counter", "node"],
            "properties": {
                "counter": {"type": "integer", "minimum": 1},
                "node": {"type": "string", "minLength": 1, "description": (
                    "Name of the node that coordinated the write: its node id, or, after a start that may have "
                    "lost a tag (an unclean stop, a data directory that joins), its id, '@' and an incarnation; "
                    "with '!' before it when the node proposed the tag in one round trip, which ranks it below "
                    "every other tag of its counter.")},
            },
        },
        "PutBody": {
            "type": "object",
            "required": ["value"],
            "properties": {"value": {"$ref": _SCHEMAS + "Value"}},
            # A member kvwire does not keep ("ttl") is refused, not dropped unnoticed.
            "additionalProperties": False,
        },
        "Entry": {
            "type": "object",
            "required": ["key", "value", "version"],
            "properties": {
                "key": {"type": "string", "minLength": 1},
                "value": {"$ref": _SCHEMAS + "Value"},
                "version": {"$ref": _SCHEMAS + "Version"},
            },
        },
        "Deleted": {
            "type": "object",
            "required": ["key", "version"],
            "properties": {"key": {"type": "string", "minLength": 1}, "version": {"$ref": _SCHEMAS + "Version"}},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "minLength": 1, "description": "One line saying what went wrong."},
                "maybe_applied": {
                    "type": "boolean",
                    "description": (
                        "Present when the node said it of a failed write: true, some node may hold the "
                        "write and it may become visible later; false, nothing was written."
                    ),
                },
            },
        },
        "Health": {
            "description": "The answering node's health report; fields beyond those listed may appear.",
            "type": "object",
            "required": ["status", "cluster"],
            "properties": {
                "status": {
                    "type": "string",
                    "enum": ["healthy", "degraded", "unavailable"],
                    "description": (
                        "healthy: every node up and taking writes; degraded: some node down, joining or refusing "
                        "writes (this one included, which then answers 503 without quorum, while its peers may "
                        "still have one: `cluster.has_quorum` says whether this node can serve); unavailable: "
                        "no quorum as this node sees it."
                    ),
                },
                "node_id": {"type": "string"},
                "cluster_id": {"type": "string"},
                "cluster": {"$ref": _SCHEMAS + "Cluster"},
            },
        },
        "Cluster": {
            "type": "object",
            "required": [
                "replication_enabled", "total_nodes", "healthy_nodes", "unhealthy_nodes", "required_for_quorum",
                "has_quorum", "can_accept_writes", "automatic_failover_enabled", "retry_attempts", "nodes",
            ],
            "properties": {
                "replication_enabled": {"type": "boolean"},
                "total_nodes": {"type": "integer", "minimum": 1},
                "healthy_nodes": {"type": "integer", "minimum": 0},
                "unhealthy_nodes": {"type": "integer", "minimum": 0},
                "required_for_quorum": {"type": "integer", "minimum": 1},
                "has_quorum": {"type": "boolean"},
                "can_accept_writes": {"type": "boolean"},
                "automatic_failover_enabled": {"type": "boolean"},
                "retry_attempts": {"type": "integer", "minimum": 0},
                "nodes": {
                    "description": "The answering node's peers as it sees them (the node itself is counted in healthy_nodes).",
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["url", "healthy"],
                        "properties": {
                            "url": {"type": "string", "description": "The peer's host:port."},
                            "healthy": {"type": "boolean"},
                            "node_id": {"type": "string"},
                        },
                    },
                },
            },
        },
    }


def _error_responses(config: BridgeConfig) -> dict[str, Any]:
    return {
        "BadRequest": _error("Bad request: a body that is not JSON, has no `value` or a member besides it, holds "
                             "a bad bytes object or names a member twice; a malformed request line or header, or "
                             "one too long; a header given twice where one is allowed; a key too long or not UTF-8; a '#' in the request's target; "
                             "an unknown consistency; a request-id header not of 1 to 128 UTF-8 characters; a "
                             "malformed `Host` header."),
        "NotFound": _error("No such key (or a deleted one)."),
        "Unauthenticated": {
            **_error("The nodes have an auth file, and the request has no `Authorization: Bearer` token they know "
                     "(health needs none, but a token sent must be known)."),
            "headers": {"WWW-Authenticate": {"description": "`Bearer realm=\"kvwire\"`.", "schema": {"type": "string"}}},
        },
        "Forbidden": _error("The token's role does not allow this method, or its key prefix this key."),
        "MisdirectedRequest": _error(
            "The request's `Host` names neither an IP address, nor localhost, nor one of the bridge's allowed hosts "
            "(`--allowed-hosts`): a plain-HTTP bridge refuses other names, which keeps web pages from reaching it "
            "through DNS rebinding. Not checked over HTTPS, nor on health."
        ),
        "Conflict": _error(
            "The DELETE raced with a concurrent write of the same key and may or may not have taken "
            "effect (`maybe_applied` is true); read the key to find out."
        ),
        "NotRepresentable": _error("The stored value holds a float NaN or infinity, which JSON cannot carry, a map "
                                   "with a bytes key and the `$bytes:` str key it would read as, or a map whose only "
                                   "key is `$bytes`, holding base64, which JSON would show as bytes."),
        "ExpectationFailed": _error("An `Expect` header other than `100-continue`."),
        "UnsupportedEncoding": _error("A `Content-Encoding` other than gzip, deflate or identity."),
        "TooLarge": _error(
            f"The value is over {config.limits.max_value_bytes} bytes as msgpack, the body over "
            f"{config.max_body_bytes} bytes, or the key longer than the nodes take."
        ),
        "InternalError": _error("A bug in the bridge; its log has the details. Never a stack trace."),
        "BadGateway": _error("The nodes failed the request: an internal error, or a node of another cluster."),
        "Unavailable": {
            **_error(
                "The cluster cannot serve the request now: no quorum (a write then says "
                "`Failed to replicate to quorum of nodes`; `maybe_applied` true means it may still "
                "have been applied, false that it was not), or no node reachable."
            ),
            "headers": _retry_after(),
        },
        "GatewayTimeout": _error("No node answered within the bridge's timeout."),
        "RequestTimeout": _error(
            f"The request's head did not arrive whole within {config.request_timeout:g} s of its first byte, or its "
            "body stopped coming for as long; the connection is then closed."
        ),
    }


def _access_failures(config: BridgeConfig) -> dict[str, Any]:
    return {
        "401": {"$ref": _RESPONSES + "Unauthenticated"},
        "403": {"$ref": _RESPONSES + "Forbidden"},
        **_host_refusals(config),
    }


def _host_refusals(config: BridgeConfig) -> dict[str, Any]:
    """421 where a plain-HTTP bridge checks the Host (http_bridge/hosts.py)."""
    return {"421": {"$ref": _RESPONSES + "MisdirectedRequest"}} if config.checks_hosts else {}


def _cluster_failures() -> dict[str, Any]:
    return {
        "408": {"$ref": _RESPONSES + "RequestTimeout"},
        "500": {"$ref": _RESPONSES + "InternalError"},
        "502": {"$ref": _RESPONSES + "BadGateway"},
        "503": {"$ref": _RESPONSES + "Unavailable"},
        "504": {"$ref": _RESPONSES + "GatewayTimeout"},
    }


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _SCHEMAS + schema}}}}


def _error(description: str) -> dict[str, Any]:
    return _json_response(description, "Error")


def _retry_after() -> dict[str, Any]:
    # Not on the 503 a bridge past its --max-connections answers before it reads the request.
    return {"Retry-After": {"description": "Seconds after which to try again; absent from the answer to a "
                                           "connection past the bridge's --max-connections.",
                            "required": False, "schema": {"type": "integer", "minimum": 0}}}


def _request_refusals() -> dict[str, Any]:
    """What any request may get before its method's work begins: its HTTP is refused."""
    return {
        "400": {"$ref": _RESPONSES + "BadRequest"},
        "408": {"$ref": _RESPONSES + "RequestTimeout"},
        "417": {"$ref": _RESPONSES + "ExpectationFailed"},
    }


def _version() -> str:
    try:
        return metadata.version("kvwire")
    except metadata.PackageNotFoundError:
        return "0.0.0"
