"""``python -m orchestra``: the same as the ``orchestra`` command."""

from orchestra.cli import main

main()
