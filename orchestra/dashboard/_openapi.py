"""The OpenAPI 3.1 document of the dashboard's JSON API (served at ``/api/openapi.json``).

Written by hand, next to the handlers it describes; a test checks that it
lists exactly the ``/api`` routes of the app, with their methods.
"""

from __future__ import annotations

from typing import Any

from orchestra import __version__
from orchestra._records import STATUSES

_TIMESTAMP = {"type": "string", "format": "date-time"}
_NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_STATUS = {"type": "string", "enum": list(STATUSES)}
_COUNTS = {
    "type": "object",
    "properties": {status: {"type": "integer"} for status in STATUSES},
    "required": list(STATUSES),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "A bad parameter."),
    "401": _json(_ref("Error"), "Credentials are required (basic auth or a bearer token)."),
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
    "description": "The job's id.",
}

_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": {"type": "string", "description": "What went wrong, for people."},
            "status": {"type": "integer", "description": "The HTTP status code."},
        }
    ),
    "Attempt": _object(
        {
            "attempt": {"type": "integer"},
            "worker_id": _NULLABLE_INT,
            "worker_name": _NULLABLE_STRING,
            "started_at": _TIMESTAMP,
            "finished_at": _TIMESTAMP,
            "outcome": {
                "type": "string",
                "enum": ["succeeded", "failed", "lost", "interrupted", "timed_out"],
            },
            "error": _NULLABLE_STRING,
            "traceback": _NULLABLE_STRING,
        }
    ),
    "Job": _object(
        {
            "id": {"type": "integer"},
            "definition": {"type": "string"},
            "channel": {"type": "string"},
            "status": _STATUS,
            "priority": {"type": "integer"},
            "payload": {"description": "The payload as stored (any JSON value)."},
            "result": {"description": "What the job function returned, once it succeeded."},
            "attempt": {"type": "integer", "description": "Attempts used so far."},
            "max_attempts": {"type": "integer"},
            "run_at": _TIMESTAMP,
            "created_at": _TIMESTAMP,
            "started_at": _NULLABLE_TIMESTAMP,
            "finalized_at": _NULLABLE_TIMESTAMP,
            "last_error": _NULLABLE_STRING,
            "unique_key": _NULLABLE_STRING,
            "resource_key": _NULLABLE_STRING,
            "locked_by": _NULLABLE_INT,
            "depends_on": {"type": "array", "items": {"type": "integer"}},
            "attempts": {
                "type": ["array", "null"],
                "items": _ref("Attempt"),
                "description": "The attempt log, oldest first (null in lists).",
            },
            "archived": {
                "type": "boolean",
                "description": "True for a finished job, read from the history (where "
                "finished jobs are kept); finished jobs can still be retried and deleted.",
            },
            "tags": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The tags it was deferred with, in order.",
            },
            "meta": {
                "type": "object",
                "description": "The metadata it was deferred with (a JSON object; {} for none).",
            },
            "progress": {
                "type": ["number", "object", "null"],
                "description": "What its running attempt last reported: a fraction from 0 to "
                '1, or an object (such as {"done": 3, "total": 10}); null until it '
                "reports. Written at most every 0.5 s, kept once the job finished.",
            },
        }
    ),
    "JobLink": _object(
        {"id": {"type": "integer"}, "definition": {"type": "string"}, "status": _STATUS}
    ),
    "GraphNode": _object(
        {
            "id": {"type": "integer"},
            "definition": {
                **_NULLABLE_STRING,
                "description": "Null when the history no longer keeps the job.",
            },
            "status": {
                "type": ["string", "null"],
                "enum": [*STATUSES, None],
                "description": "Null when the history no longer keeps the job.",
            },
            "side": {
                "type": "string",
                "enum": ["self", "upstream", "downstream"],
                "description": "The job itself, a job it depends on (directly or not), "
                "or a job that depends on it (directly or not).",
            },
            "depth": {
                "type": "integer",
                "description": "Its layer: 0 for the job, negative upstream (-1: a direct "
                "dependency), positive downstream (1: a direct dependent), along the longest "
                "path within the graph.",
            },
            "depends_on": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "The jobs of the graph it depends on (its edges).",
            },
        }
    ),
    "JobGraph": _object(
        {
            "limit": {
                "type": "integer",
                "description": "The most jobs read in each direction, the nearest first.",
            },
            "truncated": {"type": "boolean", "description": "Either direction was cut."},
            "upstream_truncated": {"type": "boolean"},
            "downstream_truncated": {"type": "boolean"},
            "nodes": {
                "type": "array",
                "items": _ref("GraphNode"),
                "description": "The job, then the jobs upstream, then downstream, each by id.",
            },
        }
    ),
    "JobDetail": {
        "allOf": [
            _ref("Job"),
            _object(
                {
                    "dependencies": {"type": "array", "items": _ref("JobLink")},
                    "dependents": {"type": "array", "items": _ref("JobLink")},
                    "graph": {
                        **_ref("JobGraph"),
                        "description": "The workflow around the job: what it depends on and "
                        "what depends on it, transitively, with the edges between them.",
                    },
                }
            ),
        ]
    },
    "JobPage": _object(
        {
            "total": {"type": "integer", "description": "Jobs matching the filters."},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "order": {"type": "string", "enum": ["asc", "desc"]},
            "q": {
                **_NULLABLE_STRING,
                "description": "The search text, when the list was searched.",
            },
            "search_window": {
                "type": "integer",
                "description": "A search looks for its text among this many of the newest "
                "unfinished jobs and as many of the newest finished ones.",
            },
            "jobs": {"type": "array", "items": _ref("Job")},
        }
    ),
    "BulkOutcome": _object(
        {
            "id": {"type": "integer"},
            "ok": {"type": "boolean", "description": "The action was taken on this job."},
            "status": {
                **_NULLABLE_STRING,
                "description": "The job's status after the action (null once deleted, or "
                "for no such job); when refused, the status that refused it.",
            },
            "error": {**_NULLABLE_STRING, "description": "Why it was refused."},
        }
    ),
    "PauseResult": _object(
        {
            "kind": {"type": "string", "enum": ["channel", "definition"]},
            "name": {"type": "string"},
            "paused": {"type": "boolean", "description": "Its state after the request."},
            "changed": {
                "type": "boolean",
                "description": "False when it already was in that state.",
            },
        }
    ),
    "BulkResult": _object(
        {
            "action": {"type": "string", "enum": ["retry", "cancel", "delete"]},
            "done": {"type": "integer"},
            "refused": {"type": "integer"},
            "jobs": {"type": "array", "items": _ref("BulkOutcome"), "description": "By id."},
        }
    ),
    "Charts": _object(
        {
            "now": _TIMESTAMP,
            "hours": {"type": "integer", "enum": [1, 6, 24]},
            "bucket_seconds": {"type": "integer"},
            "since": {**_TIMESTAMP, "description": "The start of the first bucket."},
            "definitions": {
                "type": "array",
                "description": "Jobs finalized per bucket (60 of them, oldest first), per "
                "definition with any, the busiest first.",
                "items": _object(
                    {
                        "definition": {"type": "string"},
                        "succeeded": {"type": "array", "items": {"type": "integer"}},
                        "failed": {"type": "array", "items": {"type": "integer"}},
                        "cancelled": {"type": "array", "items": {"type": "integer"}},
                        "totals": _object(
                            {
                                "succeeded": {"type": "integer"},
                                "failed": {"type": "integer"},
                                "cancelled": {"type": "integer"},
                            }
                        ),
                    }
                ),
            },
            "wait": _object(
                {
                    "buckets": {
                        "type": "array",
                        "description": "Queue wait (run_at to the start of the last attempt) "
                        "of the jobs that started in each bucket; null without any.",
                        "items": _object(
                            {
                                "start": _TIMESTAMP,
                                "started": {"type": "integer"},
                                "p50_ms": _NULLABLE_INT,
                                "p95_ms": _NULLABLE_INT,
                                "max_ms": _NULLABLE_INT,
                            }
                        ),
                    },
                    "by_definition": {
                        "type": "array",
                        "items": _object(
                            {
                                "definition": {"type": "string"},
                                "started": {"type": "integer"},
                                "p50_ms": _NULLABLE_INT,
                                "p95_ms": _NULLABLE_INT,
                                "max_ms": _NULLABLE_INT,
                                "due": {
                                    "type": "integer",
                                    "description": "Available jobs past their run time.",
                                },
                                "oldest_due_ms": {
                                    **_NULLABLE_INT,
                                    "description": "How long the oldest of them has waited.",
                                },
                            }
                        ),
                    },
                }
            ),
        }
    ),
    "Definition": _object(
        {
            "name": {"type": "string"},
            "channel": {"type": "string"},
            "num_attempts": {"type": "integer"},
            "backoff": {"type": "string"},
            "priority": {"type": "integer"},
            "repeat_interval_ms": _NULLABLE_INT,
            "cron": _NULLABLE_STRING,
            "release_interval_ms": {"type": "integer", "description": "0: no rate limit."},
            "max_concurrency": _NULLABLE_INT,
            "lock_interval_ms": {"type": "integer"},
            "timeout_interval_ms": {"type": "integer"},
            "last_repeated_at": _NULLABLE_TIMESTAMP,
            "next_tick_at": _NULLABLE_TIMESTAMP,
            "last_released_at": _NULLABLE_TIMESTAMP,
            "last_heartbeat_at": _TIMESTAMP,
            "paused": {"type": "boolean"},
            "counts": _COUNTS,
            "expected_next_tick_at": {
                **_NULLABLE_TIMESTAMP,
                "description": "next_tick_at, or computed from the schedule when missing or "
                "past (a cron expression is read in the definition's time zone when the "
                "dashboard loads it with --app, else in UTC).",
            },
            "expected_next_tick_computed": {"type": "boolean"},
        }
    ),
    "Worker": _object(
        {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["worker", "orchestrator"]},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "channel": {
                **_NULLABLE_STRING,
                "description": "The first of channels (kept for older clients).",
            },
            "channels": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "The channels a worker serves; null for an orchestrator.",
            },
            "concurrency": _NULLABLE_INT,
            "running": {"type": "integer", "description": "Jobs it runs now."},
            "started_at": _TIMESTAMP,
            "heartbeat_at": _TIMESTAMP,
            "heartbeat_age_ms": {"type": "integer"},
            "live": {"type": "boolean", "description": "Heartbeat younger than 60 s."},
            "leader": {"type": "boolean", "description": "Holds the orchestrator lease."},
        }
    ),
    "Overview": _object(
        {
            "now": _TIMESTAMP,
            "allow_actions": {"type": "boolean"},
            "counts": _object(
                {
                    "total": {"type": "integer"},
                    "by_status": _COUNTS,
                    "by_channel": {"type": "object", "additionalProperties": _COUNTS},
                }
            ),
            "throughput": _object(
                {
                    "bucket_seconds": {"type": "integer"},
                    "buckets": {
                        "type": "array",
                        "description": "Jobs finalized per minute, the last 60 minutes.",
                        "items": _object(
                            {
                                "minute": _TIMESTAMP,
                                "succeeded": {"type": "integer"},
                                "failed": {"type": "integer"},
                                "cancelled": {"type": "integer"},
                            }
                        ),
                    },
                }
            ),
            "paused_channels": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Channels whose jobs no worker claims until they are resumed.",
            },
            "workers": {"type": "array", "items": _ref("Worker")},
            "leader": {
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "holder": {"type": "string"},
                            "elected_at": _TIMESTAMP,
                            "expires_at": _TIMESTAMP,
                            "live": {"type": "boolean"},
                        }
                    ),
                ]
            },
            "database": _object(
                {
                    "oldest_transaction": {
                        "description": "What holds the oldest snapshot on the queue's database "
                        "(autovacuum cannot remove job rows that died after it); null: nothing.",
                        "oneOf": [
                            {"type": "null"},
                            _object(
                                {
                                    "kind": {
                                        "type": "string",
                                        "enum": ["session", "prepared", "replication_slot"],
                                    },
                                    "pid": _NULLABLE_INT,
                                    "state": _NULLABLE_STRING,
                                    "application_name": _NULLABLE_STRING,
                                    "user": _NULLABLE_STRING,
                                    "name": {
                                        "type": ["string", "null"],
                                        "description": "A prepared transaction's gid or a "
                                        "replication slot's name.",
                                    },
                                    "age_s": {
                                        "type": ["number", "null"],
                                        "description": "Seconds since its transaction began; "
                                        "null for a slot, or when hidden.",
                                    },
                                    "xid_age": {"type": "integer"},
                                    "hidden": {
                                        "type": "boolean",
                                        "description": "The dashboard's role may not see this "
                                        "session's details (grant it pg_monitor).",
                                    },
                                }
                            ),
                        ],
                    },
                    "holders": {"type": "integer"},
                    "job_table": _object(
                        {
                            "live_tuples": _NULLABLE_INT,
                            "dead_tuples": _NULLABLE_INT,
                            "last_autovacuum": _NULLABLE_TIMESTAMP,
                            "last_vacuum": _NULLABLE_TIMESTAMP,
                        }
                    ),
                    "transaction_warning_s": {"type": "number"},
                    "warning": {
                        "type": ["string", "null"],
                        "description": "Set when the oldest transaction is at least "
                        "transaction_warning_s old.",
                    },
                    "hint": _NULLABLE_STRING,
                }
            ),
        }
    ),
}


def _action(verb: str, summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": f"{verb}_job",
            "parameters": [_JOB_ID],
            "requestBody": {
                "required": True,
                "description": "An empty JSON object. The JSON content type is required: a "
                "cross-site HTML form cannot send it, which protects basic-auth users.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": ok,
                **_ERRORS,
                "403": _json(_ref("Error"), "Actions are disabled (no --allow-actions)."),
                "404": _json(_ref("Error"), "No job with this id."),
                "409": _json(_ref("Error"), "The job's state does not allow it."),
                "415": _json(_ref("Error"), "The request body is not JSON."),
            },
        }
    }


def _pause(kind: str, verb: str, summary: str, missing: str | None = None) -> dict[str, Any]:
    not_found = {} if missing is None else {"404": _json(_ref("Error"), missing)}
    return {
        "post": {
            "summary": summary,
            "description": "Idempotent: `changed` is false when there was nothing to do. "
            "Workers leave a paused channel's or definition's jobs alone from their next "
            "claim on; running jobs finish. A resume wakes the channel's workers.",
            "operationId": f"{verb}_{kind}",
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "maxLength": 128},
                    "description": f"The {kind}'s name.",
                }
            ],
            "requestBody": {
                "required": True,
                "description": "An empty JSON object. The JSON content type is required: a "
                "cross-site HTML form cannot send it, which protects basic-auth users.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": _json(_ref("PauseResult"), "The state after, and whether it changed."),
                **_ERRORS,
                "403": _json(_ref("Error"), "Actions are disabled (no --allow-actions)."),
                **not_found,
                "415": _json(_ref("Error"), "The request body is not JSON."),
            },
        }
    }


def _bulk(verb: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": "Jobs are taken one by one (retries lowest id first, cancels and "
            "deletes highest first); a job that is gone or whose state refuses the action is "
            "reported as refused and the others go on.",
            "operationId": f"bulk_{verb}_jobs",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _object(
                            {
                                "ids": {
                                    "type": "array",
                                    "items": {"type": "integer", "minimum": 1},
                                    "minItems": 1,
                                    "maxItems": 200,
                                }
                            }
                        )
                    }
                },
            },
            "responses": {
                "200": _json(_ref("BulkResult"), "Each job's outcome."),
                **_ERRORS,
                "403": _json(_ref("Error"), "Actions are disabled (no --allow-actions)."),
                "415": _json(_ref("Error"), "The request body is not JSON."),
            },
        }
    }


_PATHS: dict[str, Any] = {
    "/api/overview": {
        "get": {
            "summary": "Counts by status and channel, the last hour's throughput, daemons, leader",
            "operationId": "overview",
            "responses": {"200": _json(_ref("Overview"), "The overview."), **_ERRORS},
        }
    },
    "/api/jobs": {
        "get": {
            "summary": "A page of jobs, filtered by status, definition, channel and tag",
            "operationId": "list_jobs",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "schema": {"type": "array", "items": _STATUS},
                    "style": "form",
                    "explode": True,
                    "description": "Repeat for several statuses; none: every status.",
                },
                {"name": "definition", "in": "query", "schema": {"type": "string"}},
                {"name": "channel", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "tag",
                    "in": "query",
                    "schema": {"type": "string", "maxLength": 100},
                    "description": "Only jobs deferred with this tag.",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                },
                {
                    "name": "offset",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "default": 0},
                },
                {
                    "name": "order",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
                    "description": "By id: desc newest first.",
                },
                {
                    "name": "q",
                    "in": "query",
                    "schema": {"type": "string", "maxLength": 200},
                    "description": "Search: the job with this id, and the jobs whose payload "
                    "(as JSON text) or last error contains this text, case-insensitively, "
                    "among the search_window newest jobs of each table.",
                },
            ],
            "responses": {"200": _json(_ref("JobPage"), "The page of jobs."), **_ERRORS},
        }
    },
    "/api/jobs/{job_id}": {
        "get": {
            "summary": "One job with its attempt log, dependencies, dependents and workflow graph",
            "operationId": "get_job",
            "parameters": [_JOB_ID],
            "responses": {
                "200": _json(_ref("JobDetail"), "The job, unfinished or finished."),
                **_ERRORS,
                "404": _json(_ref("Error"), "No job with this id."),
            },
        }
    },
    "/api/jobs/{job_id}/retry": _action(
        "retry",
        "Run a finalized job again with a fresh attempt budget (or a backing-off one now)",
        _json(_object({"job": _ref("Job")}), "The job right after."),
    ),
    "/api/jobs/{job_id}/cancel": _action(
        "cancel",
        "Cancel a waiting, available or running job (its worker stops a running one)",
        _json(_object({"job": _ref("Job")}), "The job right after."),
    ),
    "/api/jobs/{job_id}/delete": _action(
        "delete",
        "Delete a job that is not running and that no unfinished job depends on",
        _json(_object({"deleted": {"type": "integer"}}), "The id of the deleted job."),
    ),
    "/api/jobs/bulk/retry": _bulk("retry", "Retry several jobs, each as POST /api/jobs/{id}/retry"),
    "/api/jobs/bulk/cancel": _bulk(
        "cancel", "Cancel several jobs, each as POST /api/jobs/{id}/cancel"
    ),
    "/api/jobs/bulk/delete": _bulk(
        "delete", "Delete several jobs, each as POST /api/jobs/{id}/delete"
    ),
    "/api/jobs/retry-failed": {
        "post": {
            "summary": "Retry every failed job of a definition, with fresh attempt budgets",
            "operationId": "retry_failed_jobs",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _object({"definition": {"type": "string", "maxLength": 128}})
                    }
                },
            },
            "responses": {
                "200": _json(
                    _object({"definition": {"type": "string"}, "retried": {"type": "integer"}}),
                    "How many jobs were retried.",
                ),
                **_ERRORS,
                "403": _json(_ref("Error"), "Actions are disabled (no --allow-actions)."),
                "415": _json(_ref("Error"), "The request body is not JSON."),
            },
        }
    },
    "/api/charts": {
        "get": {
            "summary": "Throughput and failures per definition, and queue wait, over time",
            "operationId": "charts",
            "parameters": [
                {
                    "name": "hours",
                    "in": "query",
                    "schema": {"type": "integer", "enum": [1, 6, 24], "default": 1},
                    "description": "The time range, in 60 buckets.",
                }
            ],
            "responses": {"200": _json(_ref("Charts"), "The charts' data."), **_ERRORS},
        }
    },
    "/api/definitions": {
        "get": {
            "summary": "Every definition with its settings, heartbeat, next tick and job counts",
            "operationId": "list_definitions",
            "responses": {
                "200": _json(
                    _object({"definitions": {"type": "array", "items": _ref("Definition")}}),
                    "The definitions, by name.",
                ),
                **_ERRORS,
            },
        }
    },
    "/api/channels/{name}/pause": _pause(
        "channel", "pause", "Stop workers from claiming a channel's jobs (it may have none yet)"
    ),
    "/api/channels/{name}/resume": _pause(
        "channel", "resume", "Let workers claim a paused channel's jobs again"
    ),
    "/api/definitions/{name}/pause": _pause(
        "definition",
        "pause",
        "Stop workers from claiming a definition's jobs; its repeat and cron ticks are skipped",
        "No definition of this name is stored.",
    ),
    "/api/definitions/{name}/resume": _pause(
        "definition",
        "resume",
        "Let workers claim a paused definition's jobs again",
        "No definition of this name is stored.",
    ),
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document."), **_ERRORS},
        }
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orchestra dashboard API",
            "version": __version__,
            "description": "Read the queue, and retry, cancel or delete jobs and pause or resume "
            "channels and definitions when the dashboard runs with --allow-actions. Errors are "
            "JSON objects with `error` and `status`.",
        },
        "paths": _PATHS,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{}, {"basic": []}, {"bearer": []}],
    }
