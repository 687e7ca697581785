"""MkDocs hooks of orchestra's documentation site (mkdocs.yml, ``hooks:``).

Two pages are filled in at build time so that they cannot fall behind the code:

* ``decisions/index.md``: the list of every ``decisions/NNNN-*.md`` file, with
  its title, where the page says ``<!-- decisions -->``;
* ``reference/cli.md``: the ``--help`` of every ``orchestra`` command, where the
  page says ``<!-- cli-reference -->``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

DECISIONS_MARKER = "<!-- decisions -->"
CLI_MARKER = "<!-- cli-reference -->"
HELP_WIDTH = 76  # what fits the content column of the Material theme


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the markers of the generated pages with their content."""
    if DECISIONS_MARKER in markdown:
        docs = Path(config["docs_dir"])
        markdown = markdown.replace(DECISIONS_MARKER, _decisions(docs / "decisions"))
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, _cli_reference())
    return markdown


def _decisions(folder: Path) -> str:
    lines = []
    for path in sorted(folder.glob("[0-9][0-9][0-9][0-9]-*.md")):
        first = path.read_text("utf-8").splitlines()[0] if path.stat().st_size else ""
        title = re.sub(r"^#\s*", "", first).strip() or path.stem
        lines.append(f"* [{title}]({path.name})")
    return "\n".join(lines)


def _cli_reference() -> str:
    from orchestra.cli import main  # noqa: PLC0415 (only when the page is built)

    root = click.Context(
        main, info_name="orchestra", terminal_width=HELP_WIDTH, max_content_width=HELP_WIDTH
    )
    sections = [_help_block("orchestra", root)]
    sections += _subcommands(main, root, "orchestra")
    return "\n\n".join(sections)


def _subcommands(group: click.Command, parent: click.Context, path: str) -> list[str]:
    if not isinstance(group, click.Group):
        return []
    sections = []
    for name in group.list_commands(parent):
        command = group.get_command(parent, name)
        if command is None or command.hidden:
            continue
        context = click.Context(
            command,
            info_name=name,
            parent=parent,
            terminal_width=HELP_WIDTH,
            max_content_width=HELP_WIDTH,
        )
        full = f"{path} {name}"
        sections.append(_help_block(full, context))
        sections += _subcommands(command, context, full)
    return sections


def _help_block(title: str, context: click.Context) -> str:
    level = "#" * min(2 + title.count(" "), 4)
    return f"{level} `{title}`\n\n```text\n{context.command.get_help(context)}\n```"
