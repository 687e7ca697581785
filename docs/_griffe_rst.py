"""A Griffe extension of orchestra's documentation site (mkdocs.yml, ``extensions:``).

The package's docstrings are Google style, with Sphinx roles here and there
(``:class:`Backoff```, ``:meth:`Jobs.retry```) and ``::`` before literal blocks.
Markdown knows neither: this extension turns a role into inline code of the
name (``~a.b.C`` shows ``C``) and ``::`` into ``:``, so that the reference
pages read as the docstrings mean.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc|obj):`(~?)([^`]+)`")
_LITERAL_MARK = re.compile(r"(\S)::$", re.MULTILINE)


def _name(match: re.Match[str]) -> str:
    shorten, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if shorten else target}`"


def markdown_of(text: str) -> str:
    """The docstring ``text`` with its Sphinx roles and literal markers made Markdown."""
    return _LITERAL_MARK.sub(r"\1:", _ROLE.sub(_name, text))


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrites every loaded object's docstring with :func:`markdown_of`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
