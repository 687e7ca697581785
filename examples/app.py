"""An application module for the CLI: ``orchestra daemon --role worker --app examples.app:config``.

Importing it registers the definitions; the daemon serves them. Defer from
anywhere that imports the same module: ``python -c "from examples.app import
resize; resize.defer(Resize('cat.png', 64))"``, or from a shell, through the
same definition (the JSON is structured into ``Resize``; the job's id is printed)::

    orchestra defer --app examples.app:config resize-image '{"path": "cat.png", "width": 64}'
"""

from __future__ import annotations

import os

import attrs

from orchestra import Config, JobDefinition

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "_queue"))


@attrs.frozen
class Resize:
    path: str
    width: int


def resize_image(payload: Resize) -> dict[str, object]:
    return {"path": payload.path, "width": payload.width}


resize = JobDefinition(
    config, name="resize-image", job_function=resize_image, payload_type=Resize, num_attempts=3
)
