"""A workflow module loaded as the product's workflow modules are: its runs say which compiled code and
which module namespace they got (while both are alive, so ids are unique), and whether a
non-deterministic call is still refused.
"""

from __future__ import annotations

import time

from temporalio import workflow
from temporalio.exceptions import ApplicationError

RUNS: list[str] = []  # module state: must start empty in every run


def helper() -> int:
    return 1


@workflow.defn(name="SandboxProbe")
class SandboxProbe:
    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        RUNS.append(workflow.info().run_id)
        await workflow.wait_condition(lambda: self._done)

    @workflow.query
    def seen(self) -> dict[str, int]:
        return {"code": id(helper.__code__), "namespace": id(globals()), "runs": len(RUNS)}

    @workflow.signal
    def finish(self) -> None:
        self._done = True


@workflow.defn(name="SandboxClock")
class SandboxClock:
    @workflow.run
    async def run(self) -> float:
        try:
            return time.time()
        except Exception as err:  # the sandbox's refusal, reported as the workflow's failure
            raise ApplicationError(type(err).__name__, non_retryable=True) from None


@workflow.defn(name="SandboxCollect")
class SandboxCollect:
    """Runs the cyclic collector from workflow code, as an allocation there may: the finalizers of garbage
    made outside (the test's) run inside the sandbox.
    """

    @workflow.run
    async def run(self) -> int:
        import gc

        return gc.collect()
