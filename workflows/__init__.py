"""Workflows: deterministic orchestration of runtime jobs; no I/O.

The names below load on first use (PEP 562), not when the package does: Temporal's sandbox imports a
workflow's module afresh for every workflow run it creates, package first, and an `__init__` that
imported every workflow module would make each run of one workflow compile and execute all of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workflows.host import RuntimeHost
    from workflows.hosts import RuntimeHostRegistry
    from workflows.jobs import StartRuntimeJob, StopRuntimeJob
    from workflows.lock import RuntimeGameLock
    from workflows.reconcile import RuntimeReconcile

    ALL_WORKFLOWS: list[type]

_WHERE = {
    "StartRuntimeJob": "workflows.jobs",
    "StopRuntimeJob": "workflows.jobs",
    "RuntimeGameLock": "workflows.lock",
    "RuntimeHostRegistry": "workflows.hosts",
    "RuntimeHost": "workflows.host",
    "RuntimeReconcile": "workflows.reconcile",
}

__all__ = [
    "ALL_WORKFLOWS",
    "RuntimeGameLock",
    "RuntimeHost",
    "RuntimeHostRegistry",
    "RuntimeReconcile",
    "StartRuntimeJob",
    "StopRuntimeJob",
]


def __getattr__(name: str) -> Any:
    if name == "ALL_WORKFLOWS":
        return [__getattr__(n) for n in _WHERE]
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
