"""Hostile payloads: rows a producer inserted by SQL, unchecked by ``defer``, fail alone.

A producer role may INSERT into the job table, so a payload need not have
gone through ``defer``'s checks. Each case inserts such rows, interleaved with
well-behaved jobs deferred normally (so that one claim takes both), and runs
a real worker (:mod:`tests.faults._hostile_app`) on job threads, on the event
loop, or in child processes:

* bad rows: JSON nested 5,000 levels (arrays, objects), a number of 5,000
  digits (beyond what Python converts), and for typed definitions (an attrs
  class, a dataclass) null, numbers, strings, arrays, booleans, missing fields
  and fields of the wrong type. Each fails with an error saying its stored
  payload cannot be read or does not fit the type;
* unusual but valid rows: several megabytes, and unicode edge cases (astral
  characters, joiners, bidi overrides, BOM, noncharacters, line separators,
  escaped controls, non-ASCII and empty keys). They succeed, and what the job
  saw is what was stored;
* every well-behaved neighbour succeeds exactly once, nothing is left
  running, and the worker still runs and stops cleanly.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import psycopg
import pytest

from orchestra import Config
from tests.e2e._support import DaemonFactory, Queue
from tests.faults import _hostile
from tests.faults._hostile_jobs import (
    HOSTILE_ATTEMPTS,
    Order,
    Parcel,
    define,
    payload_channel,
)
from tests.faults._report import Report, Scale

#: Well-behaved jobs deferred after each inserted row (short battery; five in the full one).
NEIGHBOURS_PER_ROW = 2
DEEP_LEVELS = 5_000
#: Several megabytes: over defer's 1 MiB cap, which a raw INSERT does not apply.
LARGE_CHARS = 3 * 1024 * 1024
SETTLE_TIMEOUT_S = 150.0

UNREADABLE = r"^PayloadError: stored payload cannot be read"

UNICODE: dict[str, Any] = {
    "emoji": "🎉 👩\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈",
    "astral": "\U0001f600\U00010348\U0010ffff",
    "bidi": "\u202egnp.exe\u202c and \u2067isolate\u2069",
    "bom": "\ufeffstarts with a BOM",
    "noncharacters": "\ufffe\uffff\ufdd0",
    "separators": "line\u2028paragraph\u2029end",
    "combining": "e\u0301\u0301\u0301 Z\u0351\u0352\u0353",
    "zero_width": "a\u200bb\u200cc\u200dd\u2060e",
    "controls": "\u0001\u0007\u001b[31m\u001f\u007f\u0085\t\r\n",
    "literal_escape": "\\u0000 is text here, not a NUL",
    "quotes": "\"'`<>&",
    "ключ-🔑": "a non-ASCII key",
    "": "an empty key",
    "nested": [{"ä": ["ö", {"ü": "ß", "日本": "語"}]}],
}


def _deep_arrays(levels: int) -> str:
    return "[" * levels + "]" * levels


def _deep_objects(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def _type_error(type_name: str) -> str:
    return rf"^PayloadError: stored payload (does not fit .*{type_name}|cannot be read)"


@attrs.frozen
class Row:
    """A row to insert by SQL, and what its job must end as."""

    label: str
    kind: str  # echo, order or parcel
    payload_json: str
    #: None: it must succeed; otherwise a pattern every attempt's error matches.
    error: str | None = None


def rows() -> list[Row]:
    """The rows every case inserts."""
    large_order = json.dumps({"id": 7, "item": "x" * LARGE_CHARS})
    return [
        # Plain JSON definitions take any JSON value.
        Row("echo: arrays nested 5,000 levels", "echo", _deep_arrays(DEEP_LEVELS), UNREADABLE),
        Row("echo: objects nested 5,000 levels", "echo", _deep_objects(DEEP_LEVELS), UNREADABLE),
        Row("echo: a number of 5,000 digits", "echo", '{"n": ' + "9" * 5_000 + "}", UNREADABLE),
        Row("echo: several MB", "echo", json.dumps({"blob": "x" * LARGE_CHARS})),
        Row("echo: unicode edge cases", "echo", json.dumps(UNICODE, ensure_ascii=False)),
        Row("echo: null", "echo", "null"),
        Row("echo: a number", "echo", "42"),
        # An attrs payload type.
        Row("order: null", "order", "null", _type_error("Order")),
        Row("order: a number", "order", "42", _type_error("Order")),
        Row("order: a string", "order", '"an order"', _type_error("Order")),
        Row("order: an array", "order", "[1, 2]", _type_error("Order")),
        Row("order: true", "order", "true", _type_error("Order")),
        Row("order: an empty object", "order", "{}", _type_error("Order")),
        Row("order: a field missing", "order", '{"id": 1}', _type_error("Order")),
        Row(
            "order: id not a number", "order", '{"id": "seven", "item": "x"}', _type_error("Order")
        ),
        Row("order: id an object", "order", '{"id": {"a": 1}, "item": "x"}', _type_error("Order")),
        Row(
            "order: nested 5,000 levels", "order", _deep_objects(DEEP_LEVELS), _type_error("Order")
        ),
        Row("order: several MB", "order", large_order),
        Row("order: unicode", "order", json.dumps({"id": 8, "item": UNICODE["emoji"]})),
        # A dataclass payload type.
        Row("parcel: null", "parcel", "null", _type_error("Parcel")),
        Row("parcel: an array", "parcel", "[]", _type_error("Parcel")),
        Row(
            "parcel: weight not a number",
            "parcel",
            '{"id": 1, "weight_grams": "heavy", "label": "x"}',
            _type_error("Parcel"),
        ),
        Row("parcel: a field missing", "parcel", '{"id": 1, "label": "x"}', _type_error("Parcel")),
        Row(
            "parcel: unicode",
            "parcel",
            json.dumps({"id": 9, "weight_grams": 5, "label": UNICODE["bidi"]}, ensure_ascii=False),
        ),
    ]


def _result_problems(row: Row, state: _hostile.JobState) -> list[str]:
    """Whether a job that succeeded saw the payload that was stored."""
    stored = json.loads(row.payload_json)
    result = state.result
    where = f"[{row.label}] job {state.id}"
    if row.kind == "echo":
        if len(row.payload_json) <= 100_000 and result.get("echo") != stored:
            return [f"{where}: the job saw {result.get('echo')!r:.300}, not the stored payload"]
        return []
    expected = (
        {"id": stored["id"], "item_chars": len(stored["item"])}
        if row.kind == "order"
        else {"id": stored["id"], "label_chars": len(stored["label"])}
    )
    if result != expected:
        return [f"{where}: result {result!r:.300}, expected {expected!r}"]
    return []


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["thread", "async", "child"])
def test_hostile_payloads_fail_alone_and_their_neighbours_run(
    mode: str,
    config: Config,
    db: psycopg.Connection[Any],
    ledger: str,
    daemons: DaemonFactory,
    scale: Scale,
    report: Report,
) -> None:
    """Each unreadable or ill-fitting stored payload fails its job alone, with a clear
    error; valid oddities succeed as stored; neighbours in the same claims succeed once."""
    queue = Queue(db, ledger)
    definitions = define(config)
    with config.connection() as conn:  # a producer inserts rows of existing definitions
        for definition in definitions.values():
            definition.upsert(conn)
    channel = payload_channel(mode)
    inserted: dict[int, Row] = {}
    neighbours: list[int] = []
    serial = 0
    repeats = scale.pick(1, 4)
    for _ in range(repeats):
        for row in rows():
            name = f"{row.kind}-{mode}"
            job_id = _hostile.insert_raw(
                queue, name, channel, row.payload_json, max_attempts=HOSTILE_ATTEMPTS
            )
            inserted[job_id] = row
            for _ in range(scale.pick(NEIGHBOURS_PER_ROW, 5)):
                serial += 1
                neighbour = {
                    "echo": {"n": serial},
                    "order": Order(id=serial, item=f"widget {serial}"),
                    "parcel": Parcel(id=serial, weight_grams=serial, label=f"box {serial}"),
                }[row.kind]
                neighbours.append(definitions[name].defer(neighbour).id)
    ids = [*inserted, *neighbours]
    bad = [job_id for job_id, row in inserted.items() if row.error is not None]

    worker = _hostile.start_worker(daemons, mode, channel)
    why = _hostile.wait_finalized(queue, ids, worker, timeout=SETTLE_TIMEOUT_S * repeats)

    problems = [why] if why else []
    found = _hostile.states(queue, ids)
    for job_id, row in inserted.items():
        state = found[job_id]
        if row.error is None:
            problems += [f"[{row.label}] {p}" for p in _hostile.succeeded_once_problems(state)]
            if state.status == "succeeded":
                problems += _result_problems(row, state)
        elif state.status != "failed":
            problems.append(
                f"[{row.label}] job {job_id}: status {state.status!r}, expected 'failed' "
                f"(last error {state.last_error!r:.200})"
            )
        else:
            problems += [f"[{row.label}] {p}" for p in _hostile.error_problems(state, row.error)]
            if state.executions:
                problems.append(f"[{row.label}] job {job_id}: its function ran on a bad payload")
    for job_id in neighbours:
        problems += _hostile.succeeded_once_problems(found[job_id])
    problems += _hostile.stop_cleanly(worker)
    ran = [job_id for job_id in ids if job_id not in bad]
    snap, violations = _hostile.battery_checks(queue, ran)
    _hostile.record(
        report,
        snap,
        case=f"hostile-payloads-{mode}",
        job_ids=ids,
        ran=ran,
        faults=len(bad),
    )
    _hostile.fail_on(problems + violations, "\n--- worker log ---\n" + worker.log()[-6_000:])
