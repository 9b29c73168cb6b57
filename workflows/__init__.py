"""Workflows: deterministic orchestration of runtime jobs; no I/O."""

from workflows.jobs import StartRuntimeJob, StopRuntimeJob
from workflows.lock import GameLock

ALL_WORKFLOWS: list[type] = [StartRuntimeJob, StopRuntimeJob, GameLock]

__all__ = ["ALL_WORKFLOWS", "GameLock", "StartRuntimeJob", "StopRuntimeJob"]
