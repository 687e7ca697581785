"""``python -m orchestra.cli``: the same as the ``orchestra`` command."""

from orchestra.cli import main

main()
