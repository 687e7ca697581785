"""pytest fixtures for testing applications that use orchestra.

Installed with orchestra as a ``pytest11`` entry point, so pytest loads it by
itself (``-p no:orchestra.pytest_plugin`` turns it off;
``-p orchestra.pytest_plugin`` loads it where plugins do not load by
themselves). It provides:

* ``orchestra_config``: your application's Config. The plugin cannot know it:
  override this fixture in your ``conftest.py`` (a Config on a migrated test
  schema). Every other fixture uses it.
* ``orchestra_drain``: :func:`orchestra.testing.drain` bound to that Config:
  ``orchestra_drain(with_scheduled=True)`` runs the runnable jobs in the test's
  thread and returns a :class:`~orchestra.testing.DrainResult`.
* ``orchestra_inline``: the whole test runs inside
  :func:`orchestra.testing.inline`: every job the code under test defers runs
  before its ``defer`` returns. The fixture's value is the
  :class:`~orchestra.testing.Inline`, whose ``attempts`` list what ran.

Only the fixture names start with ``orchestra_``, so they clash with no
fixture of yours. orchestra.testing is imported when a fixture is first used,
not when pytest starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from orchestra import Config
    from orchestra.testing import DrainResult, Inline


@pytest.fixture
def orchestra_config() -> Config:
    """Your application's Config: override this fixture in your conftest.py."""
    pytest.fail(
        "orchestra_config: define a fixture of that name in your conftest.py that returns "
        "your application's Config, on a migrated schema the tests may write to",
        pytrace=False,
    )


@pytest.fixture
def orchestra_drain(orchestra_config: Config) -> Callable[..., DrainResult]:
    """:func:`orchestra.testing.drain` on ``orchestra_config``; takes drain's options."""
    from orchestra.testing import drain  # noqa: PLC0415 (not when pytest starts)

    return functools.partial(drain, orchestra_config)


@pytest.fixture
def orchestra_inline(orchestra_config: Config) -> Iterator[Inline]:
    """Run every job deferred during the test right away (:func:`orchestra.testing.inline`)."""
    from orchestra.testing import inline  # noqa: PLC0415 (not when pytest starts)

    with inline(orchestra_config) as active:
        yield active
