"""The bare baseline of the end-to-end benchmark: one workflow, one activity, one plain XADD of six fields."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

# Only temporalio is imported here: the sandbox re-imports a workflow's module for every run, so
# the baseline must be as light as workflows/ (its activity lives in bench/e2e.py).
BASELINE_WORKFLOW = "BenchBaselineJob"
BASELINE_ACTIVITY = "bench_baseline_xadd"


@workflow.defn(name=BASELINE_WORKFLOW)
class BenchBaselineJob:
    @workflow.run
    async def run(self, request: dict[str, str]) -> str:
        entry_id: str = await workflow.execute_activity(
            BASELINE_ACTIVITY,
            request["game_id"],
            start_to_close_timeout=timedelta(seconds=5),
            result_type=str,
        )
        return entry_id
