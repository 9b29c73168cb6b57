"""How the workflows await: a step to its end even when the job is cancelled, or a condition for a
bounded time.

A job's wait for the game's lock and its last steps (the publish, the clean-up of a failed start, the
release) must not be cut short by a cancellation: the Lobby must still get the result, and the game's
next job the lock. The cancellation is remembered: the caller learns of it through `on_cancel`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow

T = TypeVar("T")


async def shielded(step: Awaitable[T], on_cancel: Callable[[], None] | None = None) -> T:
    """The step's result (or its own error), however many cancellations arrive while it runs.

    A step that is itself cancelled (e.g. an activity whose cancellation was requested) still raises
    `CancelledError`: only cancellations of the awaiting task are absorbed.
    """
    task = asyncio.ensure_future(step)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            if on_cancel is not None:
                on_cancel()


async def holds_within(condition: Callable[[], bool], limit: timedelta) -> bool:
    """Whether the condition came true within `limit` (a durable timer, not an error when it fires)."""
    try:
        await workflow.wait_condition(condition, timeout=limit)
    except TimeoutError:
        return False
    return True
