"""The workers' sandbox (rtjobs/sandbox.py) against the real sandbox and dev server: runs share the compiled
code of workflow modules, never their module state, and every restriction still applies.
"""

from __future__ import annotations

import gc
import logging
import sys
import uuid
import warnings
import weakref

import pytest
import redis.asyncio
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from rtjobs.sandbox import SharedCodeFinder, SharedCodeLoader, share_workflow_code, workflow_runner

PROBE = "tests.unit.rtjobs.sandbox_probe"


@pytest.fixture
async def probe_worker(client: Client, task_queue: str) -> Worker:
    share_workflow_code((PROBE,))
    from tests.unit.rtjobs.sandbox_probe.probe import SandboxClock, SandboxCollect, SandboxProbe

    probes = [SandboxProbe, SandboxClock, SandboxCollect]
    return Worker(client, task_queue=task_queue, workflows=probes, workflow_runner=workflow_runner())


async def test_runs_share_compiled_code_but_not_module_state(
    client: Client, task_queue: str, probe_worker: Worker
) -> None:
    async with probe_worker:
        # Both runs stay open while asked, so the ids name live objects.
        handles = [
            await client.start_workflow("SandboxProbe", id=f"probe-{uuid.uuid4()}", task_queue=task_queue)
            for _ in range(2)
        ]
        first, second = [await h.query("seen") for h in handles]
        for h in handles:
            await h.signal("finish")
            await h.result()
    assert f"{PROBE}.probe" in SharedCodeLoader._codes
    assert first["code"] == second["code"]  # one compiled copy for both runs
    assert first["namespace"] != second["namespace"]  # each run imported the module afresh
    assert first["runs"] == second["runs"] == 1  # ...so no state leaked from one run into the other


async def test_restrictions_still_apply(client: Client, task_queue: str, probe_worker: Worker) -> None:
    async with probe_worker:
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow("SandboxClock", id=f"clock-{uuid.uuid4()}", task_queue=task_queue)
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.message == "RestrictedWorkflowAccessError"


def test_the_workers_share_the_product_workflow_code() -> None:
    from rtjobs.workers import build_coordination_worker  # noqa: F401 (rtjobs/workers.py wires the runner in)

    workflow_runner()
    assert any(isinstance(f, SharedCodeFinder) and f.packages == ("workflows",) for f in sys.meta_path)


async def test_io_finalizers_import_nothing_into_the_sandbox(
    client: Client, task_queue: str, probe_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """An unclosed Redis pool collected while a workflow runs: its finalizer's lazy import of
    `redis.observability.recorder` comes from the process, not a fresh copy of redis in the sandbox
    (which read `os.environ` there, refused: seen in a CI run beside a nondeterminism error).
    """
    gc.disable()  # until the workflow collects
    pool = redis.asyncio.ConnectionPool()
    pool._available_connections.append(redis.asyncio.Connection())  # as a pool that served a call
    pool.cycle = pool  # type: ignore[attr-defined]  # garbage only the cyclic collector frees
    gone = weakref.ref(pool)
    del pool
    caplog.set_level(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            async with probe_worker:
                collected = await client.execute_workflow(
                    "SandboxCollect", id=f"collect-{uuid.uuid4()}", task_queue=task_queue
                )
    finally:
        gc.enable()
    assert collected and gone() is None, "the pool was not collected in the workflow: nothing was tested"
    refused = [r.getMessage() for r in caplog.records if "restricted" in r.getMessage()]
    assert not refused, refused
    late = [str(w.message) for w in seen if "imported after initial workflow load" in str(w.message)]
    assert not [m for m in late if "redis" in m], late
