"""rtjobs: runtime jobs (start/stop game-engine containers) as Temporal workflows, results on a Redis stream.

The process-side package: the client (`rtjobs.client`), the workers' assembly (`workers`, `startup`,
`hosting`, `process`), operations (`ops`), the operator CLI (`cli`) and the development stack (`dev`,
absent from the production image). `worker.py` at the repository root composes them.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    """The installed distribution's version; in a source tree that was never installed, pyproject.toml's."""
    try:
        return version("rtjobs")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()
