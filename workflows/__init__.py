"""Workflows: deterministic orchestration of runtime jobs; no I/O."""

from workflows.hosts import HostRegistry
from workflows.jobs import StartRuntimeJob, StopRuntimeJob
from workflows.lock import GameLock

ALL_WORKFLOWS: list[type] = [StartRuntimeJob, StopRuntimeJob, GameLock, HostRegistry]

__all__ = ["ALL_WORKFLOWS", "GameLock", "HostRegistry", "StartRuntimeJob", "StopRuntimeJob"]
