"""``orchestra bench`` behind a transaction pooler: which connection each side takes.

With ``--transaction-pooling`` (or ``$ORCHESTRA_TRANSACTION_POOLING``) orchestra's
producers and workers go through ``--dsn`` as a transaction-pooled Config, and the
lean floor, PgQueuer and the bench's own loads through ``--listen-dsn`` (or
``$ORCHESTRA_LISTEN_DSN``), the direct connection. Nothing here connects: the
measurements are replaced by an empty run.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from orchestra import _bench
from orchestra._database import DSN_ENV, LISTEN_DSN_ENV, TRANSACTION_POOLING_ENV
from orchestra.cli import main

POOLER_DSN = "postgresql://app@127.0.0.1:1/pooled"
DIRECT_DSN = "postgresql://app@127.0.0.1:2/pooled"
SECRET = "pw-4f9c"


class _Unmeasured(_bench.Bench):
    """The bench as the command builds it, measuring nothing."""

    #: The instances the command built.
    built: list[_Unmeasured] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Unmeasured.built.append(self)

    def run(self) -> list[_bench.Figure]:
        return []


@pytest.fixture(autouse=True)
def unmeasured(monkeypatch: pytest.MonkeyPatch) -> list[_Unmeasured]:
    for variable in (TRANSACTION_POOLING_ENV, LISTEN_DSN_ENV, DSN_ENV):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(_bench, "Bench", _Unmeasured)
    _Unmeasured.built = []
    return _Unmeasured.built


def _invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["bench", "--jobs", "5000", *args], env=env)


def _assert_pooled(bench: _bench.Bench) -> None:
    assert bench.config.dsn == POOLER_DSN
    assert bench.config.transaction_pooling is True
    assert bench.config.listen_dsn == DIRECT_DSN
    assert bench.floor.dsn == DIRECT_DSN
    assert bench.direct == DIRECT_DSN
    # The worker processes build their Config from these, whatever the caller's environment.
    assert bench._worker_env() == {
        DSN_ENV: POOLER_DSN,
        TRANSACTION_POOLING_ENV: "1",
        LISTEN_DSN_ENV: DIRECT_DSN,
    }


def test_transaction_pooling_puts_orchestra_on_the_pooler_and_the_floor_on_the_listen_dsn(
    unmeasured: list[_Unmeasured],
) -> None:
    """The options: orchestra through --dsn without prepared statements, the floor direct."""
    result = _invoke(
        "--dsn", POOLER_DSN, "--transaction-pooling", "--listen-dsn", DIRECT_DSN, "--json"
    )
    assert result.exit_code == 0, result.output
    (bench,) = unmeasured
    _assert_pooled(bench)
    assert '"transaction_pooling": true' in result.stdout
    assert bench.paths() == {
        "orchestra": f"{POOLER_DSN} (transaction pooling; LISTEN at {DIRECT_DSN})",
        "floor": DIRECT_DSN,
    }


def test_the_environment_variables_turn_transaction_pooling_on_as_for_a_config(
    unmeasured: list[_Unmeasured],
) -> None:
    """$ORCHESTRA_TRANSACTION_POOLING and $ORCHESTRA_LISTEN_DSN do what the options do."""
    result = _invoke(
        "--dsn",
        POOLER_DSN,
        env={TRANSACTION_POOLING_ENV: "1", LISTEN_DSN_ENV: DIRECT_DSN},
    )
    assert result.exit_code == 0, result.output
    (bench,) = unmeasured
    _assert_pooled(bench)


def test_the_output_says_which_connection_each_side_took(unmeasured: list[_Unmeasured]) -> None:
    """The closing lines name the pooled DSN for orchestra and the direct one for the floor."""
    result = _invoke("--dsn", POOLER_DSN, "--transaction-pooling", "--listen-dsn", DIRECT_DSN)
    assert result.exit_code == 0, result.output
    assert f"orchestra through {POOLER_DSN} (transaction pooling; LISTEN at {DIRECT_DSN})" in (
        result.stderr
    )
    assert f"lean floor through {DIRECT_DSN}" in result.stderr


def test_without_transaction_pooling_every_side_uses_the_dsn(
    unmeasured: list[_Unmeasured],
) -> None:
    """The default: one DSN for all, workers told so even if their environment says otherwise."""
    result = _invoke("--dsn", POOLER_DSN)
    assert result.exit_code == 0, result.output
    (bench,) = unmeasured
    assert bench.config.transaction_pooling is False
    assert bench.floor.dsn == POOLER_DSN
    assert bench._worker_env() == {
        DSN_ENV: POOLER_DSN,
        TRANSACTION_POOLING_ENV: "0",
        LISTEN_DSN_ENV: "",
    }
    assert f"lean floor through {POOLER_DSN}" in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--transaction-pooling",), {}),
        ((), {TRANSACTION_POOLING_ENV: "yes"}),
    ],
)
def test_transaction_pooling_without_a_listen_dsn_is_refused_before_anything_connects(
    unmeasured: list[_Unmeasured], args: tuple[str, ...], env: dict[str, str]
) -> None:
    """One line naming --listen-dsn, exit 2; the unit tests' guard proves nothing connected."""
    result = _invoke("--dsn", POOLER_DSN, *args, env=env)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "--listen-dsn" in errors[0]
    assert result.stdout == ""


def test_a_bad_transaction_pooling_variable_is_refused_naming_it(
    unmeasured: list[_Unmeasured],
) -> None:
    """A value that is neither true nor false stops the command with the variable's name."""
    result = _invoke("--dsn", POOLER_DSN, env={TRANSACTION_POOLING_ENV: "maybe"})
    assert result.exit_code == 2, result.output
    assert f"${TRANSACTION_POOLING_ENV}" in result.stderr
    assert unmeasured == []


def test_a_listen_dsn_password_is_hidden_from_the_output_and_warned_about(
    unmeasured: list[_Unmeasured],
) -> None:
    """The paths printed never show the direct connection's password; argv shows it to
    other users, which the command says."""
    direct = f"postgresql://app:{SECRET}@127.0.0.1:2/pooled"
    result = _invoke("--dsn", POOLER_DSN, "--transaction-pooling", "--listen-dsn", direct, "--json")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr
    assert "--listen-dsn on the command line contains a password" in result.stderr
