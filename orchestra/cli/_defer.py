"""`orchestra defer`: enqueue one job from the command line, through the app's definition.

The job is deferred through the JobDefinition that the app (--app) registers
under NAME, exactly as ``definition.defer(...)`` would from Python: the JSON
payload is structured into the definition's payload type as the worker will
structure it, then the definition converts, checks and inserts it with its own
channel, attempts and defaults. A name the app does not register is refused
(decision 0030): the database knows a definition's settings but not its payload
type, so a job deferred by name alone could hold a payload its worker cannot
read.

Everything typed is checked before anything is written: a bad option, a
payload that is not JSON or does not fit, an unknown definition or app is one
error line and exit 2. On success the job's id is the one line on stdout (with
--wait: the job's result as JSON instead), and a line for people goes to stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sys
from typing import Any

import attrs
import click
from rich.markup import escape

from orchestra import _converter, _db
from orchestra._checks import (
    DURATION_FORMS,
    TAG_MAX_LENGTH,
    TAGS_MAX,
    check_int,
    check_key,
    check_tags,
    duration_ms,
    encode_meta,
)
from orchestra._config import Config
from orchestra._database import DSN_ENV
from orchestra._definition import PRIORITY_MAX, PRIORITY_MIN, JobDefinition
from orchestra._jobs import JobHandle
from orchestra._names import escape_unprintable
from orchestra.cli._app import (
    APP_ENV,
    SCHEMA_ENV,
    _fail,
    _same_dsn,
    _source_label,
    err_console,
    handle_errors,
    main,
    queue_options,
    resolve_config,
)
from orchestra.errors import ConfigurationError, JobFailed, PayloadError, ResultTimeoutError

#: Exit code of --wait when --timeout passed before the job finished, as timeout(1) uses.
RESULT_TIMEOUT_EXIT_CODE = 124
_PRIORITY_RE = re.compile(r"[+-]?\d{1,4}", re.ASCII)


@attrs.frozen
class DeferOptions:
    """The options of ``orchestra defer``, checked: the arguments of ``definition.defer``."""

    delay_ms: int = 0
    run_at: dt.datetime | None = None
    priority: int | None = None
    unique_key: str | None = None
    dedup: bool | None = None
    resource_key: str | None = None
    wait: bool = False
    timeout_s: float | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None

    def defer_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``JobDefinition.defer`` these options stand for."""
        return {
            "delay_ms": self.delay_ms,
            "run_at": self.run_at,
            "priority": self.priority,
            "unique_key": self.unique_key,
            "dedup": self.dedup,
            "resource_key": self.resource_key,
            "tags": self.tags,
            "meta": self.meta,
        }


def parse_options(
    *,
    delay: str | None = None,
    run_at: str | None = None,
    priority: str | None = None,
    unique_key: str | None = None,
    dedup: bool = False,
    resource_key: str | None = None,
    wait: bool = False,
    timeout: str | None = None,
    tags: tuple[str, ...] = (),
    meta: str | None = None,
) -> DeferOptions:
    """The options as typed, checked; ConfigurationError naming the option otherwise."""
    if delay is not None and run_at is not None:
        raise ConfigurationError("--run-at", "give either --run-at or --delay, not both")
    if dedup and unique_key is not None:
        raise ConfigurationError("--dedup", "give either --unique-key or --dedup, not both")
    if timeout is not None and not wait:
        raise ConfigurationError("--timeout", "only goes with --wait")
    return DeferOptions(
        delay_ms=0 if delay is None else duration_ms(delay, "--delay"),
        run_at=None if run_at is None else _parse_run_at(run_at),
        priority=None if priority is None else _parse_priority(priority),
        unique_key=None if unique_key is None else check_key(unique_key, "--unique-key"),
        # Without --dedup the definition's own dedup setting applies, as in defer().
        dedup=True if dedup else None,
        resource_key=None if resource_key is None else check_key(resource_key, "--resource-key"),
        wait=wait,
        timeout_s=None if timeout is None else duration_ms(timeout, "--timeout") / 1000,
        tags=tuple(check_tags(tags, "--tag")),
        meta=None if meta is None else _parse_meta(meta),
    )


def _parse_meta(text: str) -> dict[str, Any]:
    """The JSON object of --meta, checked as defer(meta=...) checks it."""
    value = parse_payload(text, "--meta")
    if not isinstance(value, dict):
        raise ConfigurationError(
            "--meta", f"must be a JSON object such as '{{\"tenant\": 42}}', not {_json_kind(value)}"
        )
    encode_meta(value, "--meta")  # its size
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _parse_run_at(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            "--run-at", f"{text!r} is not an ISO 8601 time such as 2026-05-01T09:00:00+02:00"
        ) from None
    if value.tzinfo is None:
        raise ConfigurationError(
            "--run-at", f"{text!r} has no time zone: add one, such as +02:00 or Z"
        )
    return value


def _parse_priority(text: str) -> int:
    if not _PRIORITY_RE.fullmatch(text.strip()):
        raise ConfigurationError(
            "--priority", f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, got {text!r}"
        )
    return check_int(int(text), "--priority", PRIORITY_MIN, PRIORITY_MAX)


def _refuse_constant(name: str) -> Any:
    # Python's decoder accepts NaN and Infinity; JSON (and jsonb) does not.
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    # 1e999 would be read as infinity, which jsonb cannot store either.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def parse_payload(text: str, source: str = "PAYLOAD") -> Any:
    """The JSON value of ``text``; ConfigurationError with the place of the mistake otherwise."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            source, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise ConfigurationError(source, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigurationError(source, "nested too deeply for Python's JSON decoder") from None


def require_app(name: str, app_ref: str | None) -> str:
    """The --app reference, or ConfigurationError: a job goes through the app's definition."""
    if app_ref is None:
        raise ConfigurationError(
            "NAME",
            f"definition {name!r} cannot be deferred without --app (or ${APP_ENV}): the app "
            "registers the JobDefinition, with its payload type, that the job is deferred through",
        )
    return app_ref


def find_definition(config: Config, name: str, app_ref: str) -> JobDefinition[Any]:
    """The definition the app registers under ``name``, or ConfigurationError listing the known."""
    definition = config.definitions.get(name)
    if definition is None:
        known = ", ".join(sorted(config.definitions)) or "none"
        raise ConfigurationError(
            "NAME", f"--app {app_ref} registers no definition {name!r}; it registers: {known}"
        )
    return definition


def _check_bound(ctx: click.Context, definition: JobDefinition[Any], config: Config) -> None:
    """Refuse a --dsn or --schema other than the Config the app's definition writes to.

    The definition belongs to the app's Config, as for the daemon (decision
    0027): a job deferred through it goes to that Config's queue, whatever the
    command was told.
    """
    own = definition.config
    if own is config:
        return
    why = f"which definition {definition.name!r} defers to: make them agree"
    if own.schema != config.schema:
        raise ConfigurationError(
            _source_label(ctx, "schema", SCHEMA_ENV),
            f"{config.schema!r} is not the schema of the Config that --app names "
            f"({own.schema!r}), {why}",
        )
    if not _same_dsn(own.dsn, config.dsn):
        raise ConfigurationError(
            _source_label(ctx, "dsn", DSN_ENV),
            f"{_db.redact_dsn(config.dsn)} is not the DSN of the Config that --app names "
            f"({own.redacted_dsn}), {why}",
        )


def structured(definition: JobDefinition[Any], value: Any) -> Any:
    """``value`` (plain JSON) as the definition's payload type, as its worker will read it.

    ``defer`` then converts it back and checks it, as it does any payload from
    Python; without a payload type the JSON value is the payload.
    """
    if definition.payload_type is None:
        return value
    try:
        return _converter.decode_payload(value, definition.payload_type)
    except Exception as exc:
        type_name = getattr(definition.payload_type, "__name__", repr(definition.payload_type))
        raise PayloadError(
            definition.name,
            f"does not fit {type_name}: {_converter.describe_structure_error(exc)}",
        ) from None


def _shown(text: str) -> str:
    """Text from the command line or the app, safe for rich and for a terminal."""
    return escape(escape_unprintable(text))


def _when(options: DeferOptions) -> str:
    if options.run_at is not None:
        return f", due at {options.run_at.isoformat()}"
    if options.delay_ms:
        return f", due in {options.delay_ms / 1000:g} s"
    return ""


def _report(definition: JobDefinition[Any], handle: JobHandle, options: DeferOptions) -> None:
    """The line for people on stderr: what was deferred, or which job already holds the key."""
    name = _shown(definition.name)
    if handle.deduplicated:
        key = (
            f"unique key {_shown(repr(options.unique_key))}"
            if options.unique_key is not None
            else "the unique key of this payload (dedup)"
        )
        err_console.print(
            f"deduplicated: unfinished job {handle.id} of {name} already holds {key}; "
            "nothing new was deferred"
        )
        return
    priority = definition.priority if options.priority is None else options.priority
    tagged = f", tagged {_shown(', '.join(options.tags))}" if options.tags else ""
    err_console.print(
        f"deferred job {handle.id} of {name} on channel {_shown(definition.channel)}, "
        f"priority {priority}{_when(options)}{tagged}"
    )


def _wait_for(handle: JobHandle, timeout_s: float | None) -> None:
    """Print the job's result as JSON; exit 1 if it failed, RESULT_TIMEOUT_EXIT_CODE if late."""
    if timeout_s is None:
        err_console.print(f"waiting for the result of job {handle.id} (Ctrl-C stops waiting)")
    else:
        err_console.print(f"waiting up to {timeout_s:g} s for the result of job {handle.id}")
    try:
        result = handle.result(timeout=timeout_s)
    except JobFailed as exc:
        first = (exc.error or "").strip().splitlines()
        reason = f": {first[0]}" if first else ""
        _fail(
            f"job {exc.job_id} {exc.status}{reason} "
            f"(`orchestra jobs show {exc.job_id}` has its attempts and traceback)",
            1,
        )
        return
    except ResultTimeoutError as exc:
        _fail(
            f"job {exc.job_id} is still {exc.status} after waiting {exc.timeout_s:g} s for "
            f"its result; it stays queued (`orchestra jobs show {exc.job_id}`)",
            RESULT_TIMEOUT_EXIT_CODE,
        )
        return
    click.echo(json.dumps(result, ensure_ascii=False))


@main.command("defer")
@click.argument("name", metavar="NAME")
@click.argument("payload_text", metavar="[PAYLOAD]", required=False)
@click.option(
    "--delay",
    metavar="DURATION",
    help=f"Run no sooner than this from now: {DURATION_FORMS}. Default: at once.",
)
@click.option(
    "--run-at",
    metavar="TIME",
    help="Run no sooner than this ISO 8601 time, with its time zone "
    "(2026-05-01T09:00:00+02:00, ...Z). Not with --delay.",
)
@click.option(
    "--priority",
    metavar="N",
    help=f"From {PRIORITY_MIN} to {PRIORITY_MAX}, higher runs first. Default: the definition's.",
)
@click.option(
    "--unique-key",
    metavar="KEY",
    help="Defer nothing while an unfinished job of this definition holds KEY: print that "
    "job's id instead.",
)
@click.option(
    "--dedup",
    is_flag=True,
    help="Like --unique-key, with a key derived from the payload. Default: the definition's "
    "dedup setting.",
)
@click.option(
    "--resource-key",
    metavar="KEY",
    help="At most one job per KEY runs at a time, fleet-wide.",
)
@click.option(
    "--tag",
    "tags",
    metavar="TAG",
    multiple=True,
    help=f"Tag the job (repeat for several, at most {TAGS_MAX} of at most {TAG_MAX_LENGTH} "
    "characters): `orchestra jobs list --tag` finds it.",
)
@click.option(
    "--meta",
    metavar="JSON",
    help="A JSON object stored with the job (ctx.meta), such as '{\"tenant\": 42}'.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the job to finish and print its result as JSON on stdout instead of its "
    "id. A failed or cancelled job exits 1 with its last error.",
)
@click.option(
    "--timeout",
    metavar="DURATION",
    help=f"With --wait: give up after this long ({DURATION_FORMS}) and exit "
    f"{RESULT_TIMEOUT_EXIT_CODE}; the job stays queued. Default: wait as long as it takes.",
)
@queue_options()
@click.pass_context
@handle_errors
def defer_command(
    ctx: click.Context,
    name: str,
    payload_text: str | None,
    delay: str | None,
    run_at: str | None,
    priority: str | None,
    unique_key: str | None,
    dedup: bool,
    resource_key: str | None,
    tags: tuple[str, ...],
    meta: str | None,
    wait: bool,
    timeout: str | None,
    app_ref: str | None,
    dsn: str | None,
    schema: str | None,
) -> None:
    """Defer one job of definition NAME with PAYLOAD, a JSON document ('-': read stdin).

    NAME must be registered by the app (--app): the job is deferred through
    that JobDefinition as defer() does from Python, with the same conversion
    into its payload type, checks, channel and defaults. Without PAYLOAD the
    payload is None, as defer() without one (a repeatable definition's is {}).

    Prints the job's id on stdout, and a line for people on stderr. A bad
    option, a payload that is not JSON or does not fit, or an unknown
    definition is one error line and exit 2, and nothing is written.

    \b
    orchestra defer --app myapp.jobs:config send-email '{"to": "ada@example.com"}'
    echo '{"batch": 7}' | orchestra defer notify-partner - --delay 5m --priority 10
    orchestra defer invoice '{"id": 9}' --tag billing --tag eu --meta '{"tenant": 42}'
    orchestra defer report --wait --timeout 30s    # prints the job's result
    """
    options = parse_options(
        delay=delay,
        run_at=run_at,
        priority=priority,
        unique_key=unique_key,
        dedup=dedup,
        resource_key=resource_key,
        wait=wait,
        timeout=timeout,
        tags=tags,
        meta=meta,
    )
    payload: Any = None
    if payload_text == "-":
        payload = parse_payload(sys.stdin.read(), "PAYLOAD (stdin)")
    elif payload_text is not None:
        payload = parse_payload(payload_text)
    app_ref = require_app(name, app_ref)
    with resolve_config(ctx, app_ref, dsn, schema) as config:
        definition = find_definition(config, name, app_ref)
        _check_bound(ctx, definition, config)
        try:
            value = payload if payload_text is None else structured(definition, payload)
            config.check_schema()  # SchemaNotReadyError says to run `orchestra migrate`
            handle = definition.defer(value, **options.defer_arguments())
        except PayloadError as exc:  # a payload that does not fit: bad input, not a failure
            _fail(str(exc), 2)
            return
        if options.wait:
            _report(definition, handle, options)
            _wait_for(handle, options.timeout_s)
        else:
            click.echo(str(handle.id))
            _report(definition, handle, options)
