"""Update-with-start as the lock (`activities/lock.py`) and placement (`activities/placement.py`)
activities send it: the SDK's call, plus one thing it leaves to the caller.

When the call fails, the SDK also sets the error on the operation's workflow-handle future, which
nobody awaits, so asyncio would log "Future exception was never retrieved" for every failed call.
The error is the one the call raises, so it is retrieved and dropped here.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from temporalio.client import Client, WithStartWorkflowOperation

T = TypeVar("T")


async def execute_update_with_start(
    client: Client, update: Any, arg: Any, start: WithStartWorkflowOperation[Any, Any], result_type: type[T]
) -> T:
    try:
        result: T = await client.execute_update_with_start_workflow(
            update, arg, start_workflow_operation=start, result_type=result_type
        )
        return result
    except BaseException:
        handle = asyncio.ensure_future(start.workflow_handle())
        handle.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise
