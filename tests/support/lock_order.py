"""Jobs of one game started one after another: each once the one before it has asked for the game's lock.

Start order among jobs started together is promised only for first workflow tasks late by less than
RTJOBS_ORDER_SETTLE_S (`tests/e2e/test_game_order.py::test_late_first_task_still_runs_first` tests that
window); a machine with a core kept busy made first tasks later than any window a test can afford. A test
about the lock itself starts each job once the previous one's request is queued at the lock, so the order
it asserts is the lock's, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle

from contract.lock import ACQUIRE_ACTIVITY

# The SDK core's marker of a local activity's result (the acquire is the job's local activity).
LOCAL_ACTIVITY_MARKER = "core_local_activity"


def local_activity_type(event: HistoryEvent) -> str | None:
    """The activity type a local activity's marker records; None for any other event or marker."""
    if event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED:
        return None
    marker = event.marker_recorded_event_attributes
    if marker.marker_name != LOCAL_ACTIVITY_MARKER:
        return None
    return str(json.loads(marker.details["data"].payloads[0].data)["activity_type"])


async def until_asked(handle: WorkflowHandle[Any, Any], timeout_s: float = 60.0) -> None:
    """Until the job's request is at its game's lock (granted or queued): its acquire has completed."""
    deadline = time.monotonic() + timeout_s
    while True:
        async for event in handle.fetch_history_events():
            if local_activity_type(event) == ACQUIRE_ACTIVITY:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{handle.id} did not ask for its game's lock within {timeout_s:g} s")
        await asyncio.sleep(0.1)
