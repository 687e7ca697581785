"""Tags, metadata and progress without a database: their checks, and the rate limits of
progress on its way to the database (the worker's board, a child process's sender)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from orchestra import Config
from orchestra._checks import check_tags, encode_meta, encode_progress
from orchestra._definition import JobContext, JobDefinition
from orchestra._records import progress_fraction
from orchestra._worker._child import PROGRESS, ProgressSender
from orchestra._worker._progress import ProgressBoard, progress_params
from orchestra.errors import ConfigurationError


def test_tags_keep_their_order_without_repeats() -> None:
    """Any iterable of strings; the first of repeated tags stays where it was."""
    assert check_tags(("billing", "eu", "billing")) == ["billing", "eu"]
    assert check_tags(iter(["a"])) == ["a"]
    assert check_tags([]) == []


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ("billing", "tags: must be a list of strings, not str"),
        (42, "tags: must be a list of strings, not int"),
        ([""], "tags: each tag must be a non-empty string, got ''"),
        (["  "], "tags: each tag must be a non-empty string"),
        ([7], "tags: each tag must be a non-empty string, got 7"),
        (["x" * 101], "tags: each tag must be at most 100 characters, got 101"),
        (["a\nb"], "tags: must not contain control, format or line separator characters"),
        (["\u202eevil"], "tags: must not contain control, format or line separator characters"),
        ([f"t{i}" for i in range(21)], "tags: at most 20 tags, got 21"),
        ({"billing": 1}, "tags: must be a list of strings, not dict"),
        ({"billing"}, "tags: must be a list of strings, not set"),
        ([" billing"], "tags: a tag must not begin or end with spaces"),
    ],
)
def test_bad_tags_are_refused_in_one_line_naming_tags(tags: Any, message: str) -> None:
    """Each mistake is one ConfigurationError naming the argument."""
    with pytest.raises(ConfigurationError) as caught:
        check_tags(tags)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_meta_is_stored_as_compact_json() -> None:
    """A dict with string keys, as JSON text; values convert as payloads do."""
    assert encode_meta({"tenant": 42, "region": "eu"}) == '{"tenant":42,"region":"eu"}'
    assert encode_meta({}) == "{}"


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ([1, 2], "meta: must be a dict (a JSON object), not list"),
        ("{}", "meta: must be a dict (a JSON object), not str"),
        ({1: "a"}, "meta: keys must be strings, got 1"),
        ({"a": float("nan")}, "meta: the value is not JSON-serializable"),
        ({"a": "\x00"}, "meta: the value contains a NUL character"),
        ({"a": "x" * 9000}, "meta: is 9008 bytes as JSON, over the limit of 8192 bytes"),
    ],
)
def test_bad_meta_is_refused_in_one_line_naming_meta(meta: Any, message: str) -> None:
    """Each mistake is one ConfigurationError naming the argument."""
    with pytest.raises(ConfigurationError) as caught:
        encode_meta(meta)
    assert str(caught.value).startswith(message)


def test_progress_is_a_fraction_or_a_dict() -> None:
    """Numbers from 0 to 1 (stored as a float) and dicts are progress values."""
    assert encode_progress(0) == "0.0"
    assert encode_progress(1) == "1.0"
    assert encode_progress(0.25) == "0.25"
    assert encode_progress({"done": 3, "total": 10}) == '{"done":3,"total":10}'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "progress: a number must be a fraction from 0 to 1, got 1.5"),
        (-0.1, "progress: a number must be a fraction from 0 to 1, got -0.1"),
        (float("nan"), "progress: a number must be a fraction from 0 to 1, got nan"),
        (True, "progress: must be a fraction from 0 to 1 or a dict"),
        ("50%", "progress: must be a fraction from 0 to 1 or a dict"),
        ([1, 2], "progress: must be a fraction from 0 to 1 or a dict"),
        (None, "progress: must be a fraction from 0 to 1 or a dict"),
        ({"note": "x" * 3000}, "progress: is 3011 bytes as JSON, over the limit of 2048 bytes"),
    ],
)
def test_bad_progress_is_refused_naming_progress(value: Any, message: str) -> None:
    """Each mistake is one ConfigurationError naming ``progress``."""
    with pytest.raises(ConfigurationError) as caught:
        encode_progress(value)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("progress", "fraction"),
    [
        (0.3, 0.3),
        ({"done": 3, "total": 10}, 0.3),
        ({"done": 12, "total": 10}, 1.0),
        ({"done": 3, "total": 0}, None),
        ({"done": "3", "total": 10}, None),
        ({"done": True, "total": 10}, None),
        ({"stage": "upload"}, None),
        (None, None),
    ],
)
def test_a_progress_fraction_is_read_from_a_number_or_done_of_total(
    progress: Any, fraction: float | None
) -> None:
    """What the dashboard draws as a bar."""
    assert progress_fraction(progress) == fraction


def _context(definition: JobDefinition[Any], sink: Any, meta: str = "{}") -> JobContext:
    return JobContext(
        job_id=1,
        attempt=1,
        max_attempts=1,
        definition=definition,
        stop=threading.Event(),
        tags=["billing", "eu"],
        meta=meta,
        progress=sink,
    )


def test_the_context_reads_tags_and_meta_read_only(cfg: Config) -> None:
    """ctx.tags is a tuple and ctx.meta a mapping that cannot be changed."""
    definition = JobDefinition(cfg, name="d", job_function=lambda: None)
    ctx = _context(definition, None, meta='{"tenant": 42}')
    assert ctx.tags == ("billing", "eu")
    assert ctx.meta == {"tenant": 42}
    with pytest.raises(TypeError):
        ctx.meta["tenant"] = 43  # type: ignore[index]


def test_the_context_checks_progress_before_reporting_it(cfg: Config) -> None:
    """A bad value raises in the job and reaches nothing; a good one reaches the sink."""
    definition = JobDefinition(cfg, name="d", job_function=lambda: None)
    reported: list[str] = []
    ctx = _context(definition, reported.append)
    with pytest.raises(ConfigurationError, match="progress: a number must be a fraction"):
        ctx.set_progress(2)
    ctx.set_progress({"done": 1, "total": 2})
    assert reported == ['{"done":1,"total":2}']


def test_the_board_keeps_only_the_latest_value_of_each_attempt() -> None:
    """A tight loop replaces one entry; the writer takes one value per attempt."""
    board = ProgressBoard()
    wakes: list[None] = []
    board.bind(lambda: wakes.append(None))
    token = uuid.uuid4()
    sink = board.open(7, token)
    for i in range(1000):
        sink(f"{i / 1000}")
    assert len(wakes) == 1  # woken once, not once per value
    assert board.take() == {(7, token): "0.999"}
    assert board.take() == {}
    sink("1.0")
    assert len(wakes) == 2


def test_the_value_not_written_goes_with_the_end_and_later_ones_are_dropped() -> None:
    """close() hands the pending value over once; a value reported after it is ignored."""
    board = ProgressBoard()
    token = uuid.uuid4()
    sink = board.open(7, token)
    sink("0.5")
    assert board.close(7, token) == "0.5"
    sink("0.9")  # a thread of the job, after its attempt ended
    assert board.take() == {}
    assert board.close(7, token) is None


def test_the_last_value_goes_with_the_end_even_when_the_writer_already_took_it() -> None:
    """A job that reports 1.0 and returns at once: the writer may hold the value, and its
    write may miss the row the finish is busy with; the finish carries it all the same."""
    board = ProgressBoard()
    token = uuid.uuid4()
    sink = board.open(7, token)
    sink("0.9")
    sink("1.0")
    assert board.take() == {(7, token): "1.0"}  # the writer took it...
    assert board.close(7, token) == "1.0"  # ...and the finish still carries it
    assert board.put_back({(7, token): "1.0"}) is False  # the missed write is not retried


def test_values_put_back_never_overwrite_newer_ones_nor_revive_ended_attempts() -> None:
    """What a busy row kept from being written waits for the next pass, unless superseded."""
    board = ProgressBoard()
    running, newer, ended = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    board.open(1, running)
    sink_newer = board.open(2, newer)
    board.open(3, ended)
    board.close(3, ended)
    sink_newer("0.8")
    kept = board.put_back({(1, running): "0.1", (2, newer): "0.2", (3, ended): "0.3"})
    assert kept
    assert board.take() == {(1, running): "0.1", (2, newer): "0.8"}
    assert progress_params({(1, running): "0.1"}) == {
        "ids": [1],
        "tokens": [running],
        "progresses": ["0.1"],
    }


class _Pipe:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_bytes(self, frame: bytes) -> None:
        self.frames.append(frame)


def test_a_child_sends_at_most_one_progress_frame_per_interval() -> None:
    """Values that come sooner wait (the latest wins) and go with the reply."""
    pipe = _Pipe()
    sender = ProgressSender(pipe, threading.Lock(), interval_s=3600)  # type: ignore[arg-type]
    for i in range(100):
        sender(f"{i / 100}")
    assert pipe.frames == [PROGRESS + b"0.0"]
    assert sender.close() == "0.99"
    sender("1.0")  # after the reply: never on the pipe, where the next call would read it
    assert pipe.frames == [PROGRESS + b"0.0"]
    assert sender.close() is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tags": "billing"}, "tags: must be a list of strings, not str"),
        ({"tags": ["ok", ""]}, "tags: each tag must be a non-empty string"),
        ({"meta": ["tenant"]}, "meta: must be a dict (a JSON object), not list"),
    ],
)
def test_defer_refuses_bad_tags_or_meta_before_connecting(
    cfg: Config, arguments: dict[str, Any], message: str
) -> None:
    """The checks run before anything is sent: no connection is even attempted."""
    definition = JobDefinition(cfg, name="d", job_function=lambda: None)
    for defer in (
        lambda: definition.defer(None, **arguments),
        lambda: definition.defer_many([1, 2], **arguments),
    ):
        with pytest.raises(ConfigurationError) as caught:
            defer()
        assert str(caught.value).startswith(message)
